"""Training you can watch: every run writes its resolved config, an overlay sheet per evaluated epoch and TensorBoard
event files whose values are the ones in metrics.jsonl (read back with TensorBoard's own reader)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from is4.config import TrainConfig
from is4.pipeline.evaluation.evaluate import score_file
from is4.pipeline.evaluation.formats import load_ground_truth
from is4.trainers import synthetic
from is4.trainers.engine import train
from is4.trainers.method import get_method
from is4.trainers.overlays import SHEET_ROWS, overlay_sheet
from is4.trainers.registry import METHODS


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, Path, TrainConfig]:
    work = tmp_path_factory.mktemp("watch")
    synthetic.write_workdir(work, 32, size=48)
    release = synthetic.write_release(work / "release", 5)
    section = synthetic.tiny_train_section(
        release, epochs=2, max_steps_per_epoch=2, batch_size=8, alignment__width=8, alignment__image_size=32
    )
    cfg = TrainConfig.model_validate(section, strict=False)
    train(cfg, work, seed=0, run_dir=work / "run", progress=False)
    return work / "run", release, cfg


def test_the_resolved_config_is_in_the_run(run) -> None:
    path, _, cfg = run
    written = yaml.safe_load((path / "config.yaml").read_text())
    resolved = get_method(cfg, 0).cfg  # the optimiser settings the config leaves unset are the method's
    assert written == {"seed": 0, "train": resolved.model_dump(mode="json")}
    assert written["train"]["lr"] is not None and written["train"]["weight_decay"] is not None
    assert written["train"]["alignment"]["proj_dim"] == cfg.alignment.proj_dim  # defaults are filled in


def test_an_overlay_sheet_per_evaluated_epoch(run) -> None:
    path, release, cfg = run
    for epoch in (0, 1):
        sheet = (path / "overlays" / f"epoch-{epoch}.png").read_bytes()
        truth = load_ground_truth(release, "box")
        scored = score_file(truth, path / "predictions" / f"epoch-{epoch}.npz")
        assert sheet == overlay_sheet(release, path / "predictions" / f"epoch-{epoch}.npz", scored)  # same bytes
        with Image.open(io.BytesIO(sheet)) as im:
            width, height = im.size
        assert (width, height) == (528, int(2.3 * min(SHEET_ROWS, len(truth)) * 80))  # 3 panels a row, 8 rows
    first, second = ((path / "overlays" / f"epoch-{e}.png").read_bytes() for e in (0, 1))
    assert first != second  # the maps moved between epochs and the sheet shows it


def test_tensorboard_holds_the_metrics_and_the_overlays(run) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    path, _, cfg = run
    history = [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]
    events = EventAccumulator(str(path / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    tags = events.Tags()
    assert {"train/loss", "lr", "time/epoch_seconds", f"eval/{cfg.eval.metric}"} <= set(tags["scalars"])
    for tag, key in (("train/loss", "loss"), ("lr", "lr"), (f"eval/{cfg.eval.metric}", cfg.eval.metric)):
        logged = [(e.step, e.value) for e in events.Scalars(tag)]
        assert [s for s, _ in logged] == [h["step"] for h in history]
        assert np.allclose([v for _, v in logged], [h[key] for h in history], rtol=1e-6)
    images = events.Images("eval/overlays")
    assert [i.step for i in images] == [h["step"] for h in history]
    with (
        Image.open(io.BytesIO(images[-1].encoded_image_string)) as logged,
        Image.open(path / "overlays" / "epoch-1.png") as sheet,
    ):
        assert logged.size == sheet.size


def test_train_help_lists_the_methods() -> None:
    from is4.cli import app

    result = CliRunner().invoke(app, ["train", "--help"], terminal_width=200)
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    assert all(name in text for name in METHODS) and {"alignment", "acl", "jsa"} <= set(METHODS)
