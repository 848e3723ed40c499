"""`is4 train` scores the release of its own work directory and checks it before the first step (issue 21 item 7).

`train.eval.release: work/demo/releases/is4-0.1.0` was resolved against the current directory even with
`--workdir W`: from the repository it scored another work directory's release (which also picked `best.pt`); from
elsewhere it failed after a whole epoch. A path inside the config's `workdir` now follows `--workdir`, and the release
is read before any model is built.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from is4.config import BuildConfig, in_workdir
from tests.support import DEMO, ROOT


def test_paths_inside_the_configs_workdir_follow_the_run_workdir() -> None:
    cfg = BuildConfig(workdir=Path("work/demo"))
    assert in_workdir(cfg, Path("work/demo/releases/is4-0.1.0"), Path("/data/w")) == Path("/data/w/releases/is4-0.1.0")
    assert in_workdir(cfg, Path("work/other/r"), Path("/data/w")) == Path("work/other/r")  # not inside: as written
    assert in_workdir(cfg, Path("/abs/r"), Path("/data/w")) == Path("/abs/r")
    assert in_workdir(cfg, Path("work/demo/r"), Path("work/demo")) == Path("work/demo/r")  # no --workdir: unchanged


def test_train_checks_its_release_before_the_first_step(tmp_path: Path) -> None:
    work = tmp_path / "w"  # no release here (and no manifests): the release is what must be named
    done = subprocess.run(
        [sys.executable, "-m", "is4.cli", "train", "--config", str(DEMO), "--workdir", str(work)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env=os.environ | {"COLUMNS": "400"},
    )
    assert done.returncode == 2, done.stderr[-2000:]
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: train.eval.release:"), done.stderr[-2000:]
    assert str(work / "releases" / "is4-0.1.0") in lines[0]
    assert not (work / "runs").exists()  # nothing trained, no run directory
