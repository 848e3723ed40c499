"""One rule for relative paths in a config, and `is4 train` / `predict` / `eval` checking their inputs before the
first step (issue 21 item 7).

`train.eval.release: work/demo/releases/is4-0.1.0` was resolved against the current directory even with
`--workdir W`: from the repository it scored another work directory's release (which also picked `best.pt`); from
elsewhere it failed after a whole epoch. Now a path in a config file is relative to the file's folder, and the few
settings that name something inside the work directory (`train.eval.release`, `review.database_dir`) to WORK; every
input is read before any model is built.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from is4.cli import app
from is4.config import load_config
from is4.trainers import synthetic
from tests.support import DEMO, ROOT


def _config(folder: Path, data: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "build.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def test_relative_paths_are_read_from_the_config_files_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = {
        "workdir": "../work",
        "ingest": {"csv": "data/vggsound.csv", "subset": {"id_list": "/abs/ids.txt"}},
        "categories": {"overrides": "overrides.yaml"},
        "match": {"exclude_clip_lists": ["lists/a.txt", "~/b.txt"]},
        "captions": {"audio": {"backend": "gama", "gama": {"repo": "GAMA", "base_model": "m", "python": "python3"}}},
        "review": {"database_dir": "state/db"},
        "train": {"eval": {"release": "releases/r"}, "alignment": {"pretrained_vision": "weights/r18.pt"}},
    }
    path = _config(tmp_path / "project" / "configs", data)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    configs = tmp_path / "project" / "configs"
    cfg = load_config(path, ["ingest.download.cookies_file=cookies.txt"])
    assert cfg.workdir == tmp_path / "project" / "work"
    assert cfg.ingest.csv == configs / "data" / "vggsound.csv"
    assert cfg.ingest.subset.id_list == Path("/abs/ids.txt")  # absolute: as written
    assert cfg.categories.overrides == configs / "overrides.yaml"
    assert cfg.match.exclude_clip_lists == [configs / "lists" / "a.txt", Path("~/b.txt")]
    gama = cfg.captions.audio.gama
    assert gama is not None and gama.repo == configs / "GAMA" and gama.python == Path("python3")  # a command
    assert cfg.train.alignment.pretrained_vision == configs / "weights" / "r18.pt"
    # Inside WORK, whichever work directory the run uses: left for the run to resolve.
    assert cfg.review.database_dir == Path("state/db") and cfg.train.eval.release == Path("releases/r")
    assert cfg.ingest.download.cookies_file == Path("cookies.txt")  # --set: a command-line value, as written

    monkeypatch.chdir(tmp_path / "project")  # inside the current directory: relative to it (stable provenance)
    cfg = load_config(path)
    assert cfg.workdir == Path("work") and cfg.categories.overrides == Path("configs/overrides.yaml")


def test_the_demo_config_reads_the_same_files_from_anywhere(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(ROOT)
    here = load_config("configs/demo.yaml")
    assert here.workdir == Path("work/demo") and here.categories.overrides == Path("configs/category_overrides.yaml")
    monkeypatch.chdir(tmp_path)
    there = load_config(DEMO)
    overrides = there.categories.overrides
    assert there.workdir == ROOT / "work" / "demo" and overrides is not None and overrides.is_file()


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    w = tmp_path_factory.mktemp("train-inputs") / "w"
    synthetic.write_workdir(w, 16, size=32)
    synthetic.write_release(w / "releases" / "r", 4)
    return w


def _section(**over) -> dict:
    section = synthetic.tiny_train_section(
        None, epochs=1, max_steps_per_epoch=1, batch_size=8, alignment__width=8, alignment__image_size=32
    )
    return {**section, "eval": {"release": "releases/r", "batch_size": 4}, **over}


def test_train_with_workdir_scores_that_workdirs_release_from_anywhere(work: Path, tmp_path: Path) -> None:
    config = _config(tmp_path / "configs", {"seed": 0, "train": _section()})
    cwd = tmp_path / "cwd"  # another release where the current directory would put it: never scored
    synthetic.write_release(cwd / "releases" / "r", 2, seed=7)
    run = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-m", "is4.cli", "train", "--config", str(config), "--workdir", str(work), "--run", str(run)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
        env=os.environ | {"COLUMNS": "400", "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    with np.load(run / "predictions" / "epoch-0.npz") as maps:
        scored = sorted(maps.files)
    assert scored == _instances(work / "releases" / "r") != _instances(cwd / "releases" / "r")


def _instances(release: Path) -> list[str]:
    return sorted(Path(e["image"]).stem for e in json.loads((release / "is4_bbox.json").read_text()))


def _one_error_line(stderr: str, *names: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    for name in names:
        assert name in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize(
    ("what", "over", "named"),
    [
        ("release", {"eval": {"release": "releases/none"}}, "releases/none"),
        ("weights", {"alignment": {"pretrained_vision": "/nowhere/r18.pt", "width": 8}}, "/nowhere/r18.pt"),
        ("id list", {"id_list": "/nowhere/ids.txt"}, "/nowhere/ids.txt"),
    ],
)
def test_train_checks_every_input_before_the_first_step(
    work: Path, tmp_path: Path, what: str, over: dict, named: str
) -> None:
    config = _config(tmp_path, {"seed": 0, "train": {**_section(), **over}})
    run = tmp_path / "run"
    args = ["train", "--config", str(config), "--workdir", str(work), "--run", str(run)]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "400"})
    assert result.exit_code == 2, (what, result.output)
    _one_error_line(result.stderr, named)
    assert not run.exists()  # no checkpoint, no epoch: nothing ran


def test_train_checks_its_release_before_the_first_step(tmp_path: Path) -> None:
    work = tmp_path / "w"  # no release here (and no manifests): the release is what must be named
    done = subprocess.run(
        [sys.executable, "-m", "is4.cli", "train", "--config", str(DEMO), "--workdir", str(work)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        env=os.environ | {"COLUMNS": "400", "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 2, done.stderr[-2000:]
    line = _one_error_line(done.stderr, str(work / "releases" / "is4-0.1.0"))
    assert line.startswith("error: train.eval.release:") and "Traceback" not in done.stderr
    assert not (work / "runs").exists()  # nothing trained, no run directory


@pytest.mark.parametrize("missing", ["--release", "--run", "--weights"])
def test_predict_names_a_missing_input_before_loading_a_model(work: Path, tmp_path: Path, missing: str) -> None:
    (tmp_path / "run").mkdir()
    given = {"--release": str(work / "releases" / "r"), "--run": str(tmp_path / "run")}
    if missing == "--weights":  # instead of a run: authors'-format weights shaped by a config
        del given["--run"]
        given["--config"] = str(_config(tmp_path, {"train": _section()}))
    given[missing] = str(tmp_path / "absent")
    args = ["predict", "--out", str(tmp_path / "maps.npz")]
    args += [arg for option, value in given.items() if value is not None for arg in (option, value)]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "400"})
    assert result.exit_code == 2, result.output
    _one_error_line(result.stderr, missing, str(tmp_path / "absent"))
    assert not (tmp_path / "maps.npz").exists()


@pytest.mark.parametrize("missing", ["--release", "--predictions", "--ids"])
def test_eval_names_a_missing_input(work: Path, tmp_path: Path, missing: str) -> None:
    maps = tmp_path / "maps.npz"
    np.savez(maps, x=np.zeros((2, 2), np.float32))
    given = {"--release": str(work / "releases" / "r"), "--predictions": str(maps), "--ids": None}
    given[missing] = str(tmp_path / "absent")
    args = ["eval", *(arg for option, value in given.items() if value is not None for arg in (option, value))]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "400"})
    assert result.exit_code == 2, result.output
    _one_error_line(result.stderr, missing, str(tmp_path / "absent"))
