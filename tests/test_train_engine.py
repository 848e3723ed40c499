"""The training engine: DDP parity under real torchrun, resume == uninterrupted, checkpoints, predict -> eval,
and bad inputs giving one clear line."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from is4.cli import app
from is4.config import TrainConfig
from is4.manifests.io import read_manifest, write_manifest
from is4.trainers import synthetic
from is4.trainers.engine import load_checkpoint, train
from is4.trainers.method import TrainError
from is4.trainers.torchrun import torchrun_command
from tests.support import IS4, ROOT


def _section(**over) -> dict:
    # Group norm: the model's output does not depend on how the batch is split, so parity can be exact-ish.
    base = synthetic.tiny_train_section(
        None,
        epochs=2,
        max_steps_per_epoch=3,
        batch_size=8,
        alignment__norm="group",
        alignment__width=8,
        alignment__image_size=32,
    )
    base.update(over)
    return base


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    w = tmp_path_factory.mktemp("train-engine")
    synthetic.write_workdir(w, 48, size=48)
    synthetic.write_release(w / "release", 4)
    return w


def _cfg(**over) -> TrainConfig:
    return TrainConfig.model_validate(_section(**over), strict=False)


def _states(run: Path) -> dict:
    return load_checkpoint(run / "checkpoints" / "last.pt")


def test_resume_equals_uninterrupted(work: Path, tmp_path: Path) -> None:
    straight = train(_cfg(epochs=2), work, seed=3, run_dir=tmp_path / "straight", progress=False)
    train(_cfg(epochs=1), work, seed=3, run_dir=tmp_path / "resumed", progress=False)
    with pytest.raises(TrainError, match="already has checkpoints"):
        train(_cfg(epochs=2), work, seed=3, run_dir=tmp_path / "resumed", progress=False)
    resumed = train(
        _cfg(epochs=2, num_workers=2), work, seed=3, run_dir=tmp_path / "resumed", resume=True, progress=False
    )
    a, b = _states(tmp_path / "straight"), _states(tmp_path / "resumed")
    assert a["epoch"] == b["epoch"] == 1
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    for key, value in a["optimiser"]["state"].items():
        assert all(torch.equal(value[k], b["optimiser"]["state"][key][k]) for k in value)
    assert straight["last"]["loss"] == resumed["last"]["loss"]
    assert (tmp_path / "straight" / "metrics.jsonl").read_text().count("\n") == 2
    # the epoch-1 model differs from the epoch-0 one (training moved the weights)
    first = load_checkpoint(tmp_path / "straight" / "checkpoints" / "epoch-0.pt")["model"]
    assert any(not torch.equal(first[k], a["model"][k]) for k in first if k.endswith("weight"))
    # a changed setting is refused, naming it
    with pytest.raises(TrainError, match="lr differ"):
        train(_cfg(epochs=3, lr=0.01), work, seed=3, run_dir=tmp_path / "resumed", resume=True, progress=False)


def test_ddp_two_gloo_ranks_equal_one_process_with_the_full_batch(work: Path, tmp_path: Path) -> None:
    section = _section(epochs=1, max_steps_per_epoch=3, num_workers=0)
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump({"seed": 5, "train": section}))
    single = train(
        TrainConfig.model_validate(section, strict=False), work, seed=5, run_dir=tmp_path / "one", progress=False
    )
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        torchrun_command(config, 2, workdir=work, run_dir=tmp_path / "two"),
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    one, two = _states(tmp_path / "one"), _states(tmp_path / "two")
    diffs = {k: (one["model"][k] - two["model"][k]).abs().max().item() for k in one["model"]}
    # float32 sums in another order: equal to 1e-5 (an unsynchronised or per-rank-negative run is off by ~1e-2)
    assert max(diffs.values()) < 1e-5, sorted(diffs.items(), key=lambda kv: -kv[1])[:3]
    record = json.loads((tmp_path / "two" / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["replica_max_diff"] == 0.0  # both ranks hold the same parameters
    assert abs(record["loss"] - single["last"]["loss"]) < 1e-4
    moved = load_checkpoint(tmp_path / "two" / "checkpoints" / "last.pt")["optimiser"]["state"]
    assert moved, "the optimiser stepped"


def test_predict_writes_what_eval_reads(work: Path, tmp_path: Path) -> None:
    release = work / "release"
    train(
        _cfg(epochs=1, eval={"release": str(release), "metric": "ciou_adaptive"}),
        work,
        seed=0,
        run_dir=tmp_path / "run",
        progress=False,
    )
    record = json.loads((tmp_path / "run" / "metrics.jsonl").read_text())
    assert 0.0 <= record["ciou_adaptive"] <= 100.0 and "iiou_adaptive" in record
    assert (tmp_path / "run" / "checkpoints" / "best.pt").is_file()
    runner = CliRunner()
    out = tmp_path / "maps.npz"
    res = runner.invoke(app, ["predict", "--run", str(tmp_path / "run"), "--release", str(release), "--out", str(out)])
    assert res.exit_code == 0, res.output
    ids = [Path(e["image"]).stem for e in json.loads((release / "is4_bbox.json").read_text())]
    with np.load(out) as maps:
        assert sorted(maps.files) == sorted(ids)
        assert maps[ids[0]].dtype == np.float32 and maps[ids[0]].shape == (4, 4)  # 32 px / 8
        assert np.ptp(maps[ids[0]]) > 0
    # the epoch's eval hook and predict wrote the same maps (same checkpoint, same inputs)
    with np.load(out) as a, np.load(tmp_path / "run" / "predictions" / "epoch-0.npz") as b:
        assert all(np.array_equal(a[k], b[k]) for k in ids)
    res = runner.invoke(
        app, ["eval", "--release", str(release), "--predictions", str(out), "--output", str(tmp_path / "scores.json")]
    )
    assert res.exit_code == 0, res.output
    scores = json.loads((tmp_path / "scores.json").read_text())
    assert scores["ciou_adaptive"] == pytest.approx(record["ciou_adaptive"])


def _one_line_error(args: list[str]) -> str:
    """Run the real `is4` (as a user does) and return its one error line."""
    res = subprocess.run(
        [IS4, *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=os.environ | {"COLUMNS": "400"},
    )
    assert res.returncode == 2, res.stdout + res.stderr
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), res.stderr
    return lines[0]


def _config(tmp_path: Path, **over) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"train": _section(**over)}))
    return path


def test_bad_inputs_give_one_clear_line(work: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    synthetic.write_workdir(broken, 10, size=32)
    clips = read_manifest(broken, "clips")
    victim = clips.iloc[3]
    (broken / victim.frame_path).unlink()
    line = _one_line_error(["train", "--config", str(_config(tmp_path, batch_size=8)), "--workdir", str(broken)])
    assert victim.clip_id in line and "row 4" in line and "cannot read frame" in line

    empty = tmp_path / "empty"
    write_manifest(empty, "clips", clips.iloc[:0])
    line = _one_line_error(["train", "--config", str(_config(tmp_path)), "--workdir", str(empty)])
    assert "no training clips" in line

    line = _one_line_error(["train", "--config", str(_config(tmp_path)), "--workdir", str(work), "--method", "nope"])
    assert "unknown training method 'nope'" in line and "alignment" in line

    line = _one_line_error(["train", "--config", str(_config(tmp_path)), "--workdir", str(tmp_path / "nowhere")])
    assert "no clips manifest" in line

    line = _one_line_error(["train", "--config", str(_config(tmp_path, batch_size=500)), "--workdir", str(work)])
    assert "fewer than train.batch_size 500" in line

    line = _one_line_error(
        [
            "predict",
            "--run",
            str(tmp_path / "norun"),
            "--release",
            str(work / "release"),
            "--out",
            str(tmp_path / "m.npz"),
        ]
    )
    assert f"--run {tmp_path / 'norun'}: does not exist" in line  # checked before anything is loaded

    pickled = tmp_path / "evil" / "checkpoints" / "best.pt"
    pickled.parent.mkdir(parents=True)
    torch.save({"format": "is4-train/1", "x": object()}, pickled)
    line = _one_line_error(
        [
            "predict",
            "--run",
            str(tmp_path / "evil"),
            "--release",
            str(work / "release"),
            "--out",
            str(tmp_path / "m.npz"),
        ]
    )
    assert "not a loadable checkpoint" in line
