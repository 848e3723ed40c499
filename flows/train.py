"""The `train` Prefect flow: `is4 train` as a flow run (one process, or `nproc` torchrun ranks), with the per-epoch
metrics and overlay sheets published as artifacts; `serve_train` / `deploy_train` make a deployment a (GPU) work pool can run.

`is4 serve-train --config FILE [--name NAME]` serves it to the API in PREFECT_API_URL; `is4 deploy-train --config
FILE --work-pool POOL` registers it with a work pool whose workers run it where the GPUs are (the project must be
installed there; the flow runs from this source tree).
"""

from __future__ import annotations

import base64
import json
import subprocess
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from is4.config import load_config
from is4.manifests.errors import FatalError
from is4.trainers.engine import default_run_dir
from is4.trainers.engine import train as run_training
from is4.trainers.torchrun import torchrun_command


class TrainFlowError(FatalError, RuntimeError):
    """The torchrun ranks of a training flow run failed."""


def _torchrun(config_path: str, workdir: Path, run: Path, method: str | None, resume: bool, nproc: int) -> None:
    cmd = torchrun_command(config_path, nproc, workdir=workdir, run_dir=run, method=method, resume=resume)
    done = subprocess.run(cmd, check=False)
    if done.returncode:
        raise TrainFlowError(f"torchrun with {nproc} ranks exited with status {done.returncode} (see its log)")


def publish_metrics(run: Path) -> list[dict]:
    """The run's per-epoch metrics as a table artifact (`train-metrics`) and its summary as markdown."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    create_table_artifact(key="train-metrics", table=rows, description=f"per-epoch losses and scores of {run}")
    last = rows[-1] if rows else {}
    lines = [f"# Training run `{run}`", "", "| key | value |", "| --- | --- |"]
    lines += [f"| {k} | {v} |" for k, v in last.items()]
    create_markdown_artifact(key="train-summary", markdown="\n".join(lines))
    return rows


def publish_overlays(run: Path) -> list[Path]:
    """Each overlay sheet of the run (`overlays/epoch-N.png`) as a markdown artifact `train-overlays`, one version
    per epoch: the PNG embedded as a `data:` URI (Prefect's image artifact takes only a URL the UI can fetch, and a
    run directory is not served) and its path."""
    sheets = sorted((run / "overlays").glob("epoch-*.png"), key=lambda p: int(p.stem.removeprefix("epoch-")))
    for sheet in sheets:
        encoded = base64.b64encode(sheet.read_bytes()).decode("ascii")
        markdown = (
            f"# {run.name}, {sheet.stem}\n\nImage, map, ground truth and IoU of the first instances "
            f"(`{sheet}`):\n\n![{sheet.stem}](data:image/png;base64,{encoded})\n"
        )
        create_markdown_artifact(key="train-overlays", markdown=markdown, description=f"{sheet.stem} of {run}")
    return sheets


@flow(name="train")
def train_flow(
    config_path: str,
    workdir: str | None = None,
    method: str | None = None,
    run_dir: str | None = None,
    resume: bool = False,
    nproc: int = 1,
) -> dict[str, Any]:
    """Train on a work directory's manifests; `nproc > 1` runs torchrun ranks on this machine."""
    cfg = load_config(config_path)
    work = Path(workdir or cfg.workdir)
    tcfg = cfg.train.model_copy(update={"method": method}) if method else cfg.train
    run = Path(run_dir) if run_dir else default_run_dir(work, tcfg, cfg.seed)
    logger = get_run_logger()
    logger.info("training %s on %s into %s (%d process(es))", tcfg.method, work, run, nproc)
    if nproc > 1:
        _torchrun(config_path, work, run, method, resume, nproc)
        summary: dict[str, Any] = {"run": str(run)}
    else:
        summary = run_training(tcfg, work, seed=cfg.seed, run_dir=run, resume=resume, progress=False)
    summary["epochs_logged"] = len(publish_metrics(run))
    summary["overlay_sheets"] = len(publish_overlays(run))
    return summary


def serve_train(config_path: str, name: str = "default", **parameters: Any) -> None:
    """Serve a `train/<name>` deployment against PREFECT_API_URL (runs until stopped)."""
    train_flow.serve(name=name, parameters={"config_path": str(Path(config_path).resolve()), **parameters})


def deploy_train(config_path: str, work_pool: str, name: str = "default", **parameters: Any) -> None:
    """Register a `train/<name>` deployment with `work_pool` (its workers pull this source tree and run it)."""
    source = Path(__file__).resolve().parents[1]
    train_flow.from_source(source=str(source), entrypoint="flows/train.py:train_flow").deploy(
        name=name, work_pool_name=work_pool, parameters={"config_path": str(Path(config_path).resolve()), **parameters}
    )
