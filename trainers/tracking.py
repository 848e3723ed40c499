"""What a run shows while it trains: TensorBoard event files always, Weights & Biases when `train.logger: wandb`.

`RunLogger(run, cfg, config, start_step)` writes `RUN/tensorboard/` through `torch.utils.tensorboard`: per epoch
(at its last global step) the training terms as `train/<term>`, `lr`, `time/epoch_seconds`, the scores of the eval
hook as `eval/<metric>` and the overlay sheet as the image `eval/overlays`. A resumed run purges the events after
the checkpoint's step, so curves never double back. With `train.logger: wandb` the same values also go to a W&B
run (project `train.wandb_project`, run id = the run directory's name, resumed when it exists, files under
`RUN/wandb/`); `wandb` is the optional extra `is4-builder[wandb]` and is imported only then.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from is4.config import TrainConfig
from is4.trainers.method import TrainError

_NOT_LOGGED = ("epoch", "step", "lr", "seconds")


class RunLogger:
    """TensorBoard (and optionally W&B) for one run; only the main process makes one."""

    def __init__(self, run: Path, cfg: TrainConfig, config: dict[str, Any], start_step: int = 0):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(run / "tensorboard"), purge_step=start_step or None)
        self.wandb: Any = None
        if cfg.logger == "wandb":
            try:
                import wandb  # pyright: ignore[reportMissingImports] - the optional [wandb] extra
            except ImportError:
                raise TrainError(
                    "train.logger: wandb needs the wandb package: pip install 'is4-builder[wandb]'"
                ) from None
            self.wandb = wandb.init(
                project=cfg.wandb_project, id=run.name, name=run.name, dir=str(run), config=config, resume="allow"
            )

    def log_epoch(self, record: dict[str, Any], scores: dict[str, float], sheet_png: bytes | None) -> None:
        """One epoch: its record (losses, lr, seconds), the eval scores and the overlay sheet (PNG bytes)."""
        step = int(record["step"])
        values = {f"train/{k}": float(v) for k, v in record.items() if k not in _NOT_LOGGED and k not in scores}
        values["lr"] = float(record["lr"])
        values["time/epoch_seconds"] = float(record["seconds"])
        values.update({f"eval/{k}": float(v) for k, v in scores.items()})
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)
        image = None
        if sheet_png is not None:
            with Image.open(io.BytesIO(sheet_png)) as im:
                image = np.asarray(im.convert("RGB"))
            self.writer.add_image("eval/overlays", image, step, dataformats="HWC")
        self.writer.flush()
        if self.wandb is not None:
            import wandb  # pyright: ignore[reportMissingImports]

            payload: dict[str, Any] = {**values, "epoch": int(record["epoch"])}
            if image is not None:
                payload["eval/overlays"] = wandb.Image(image)
            self.wandb.log(payload, step=step)

    def close(self) -> None:
        self.writer.close()
        if self.wandb is not None:
            self.wandb.finish()
