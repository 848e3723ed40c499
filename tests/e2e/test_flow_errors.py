"""An error raised inside the flow ends in one line and exit 2, its traceback in a log file in WORK named in that
line (issue 21 item 8); `is4 manifests --deep` reports damaged files (item 6)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.support import ROOT, DemoBuild
from tests.support.demo_builds import copy

IS4 = [sys.executable, "-m", "is4.cli"]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*IS4, *args], cwd=ROOT, capture_output=True, text=True, timeout=900, env=os.environ | {"COLUMNS": "400"}
    )


def test_an_error_inside_the_flow_is_one_line_with_its_log(tmp_path: Path) -> None:
    overrides = tmp_path / "overrides.yaml"
    overrides.write_text("- a list\n- not a mapping\n")  # found by pre-flight, refused by the stage inside the flow
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"stages": ["categories"], "categories": {"overrides": str(overrides)}}))
    work = tmp_path / "work"
    done = run("build", "--config", str(config), "--workdir", str(work))
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    assert "Traceback" not in done.stdout + done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(overrides) in errors[0], done.stderr[-2000:]
    log = Path(re.search(r"\(traceback: (\S+)\)$", errors[0]).group(1))  # type: ignore[union-attr]
    assert log.is_relative_to(work / "state" / "logs") and "Traceback" in log.read_text()


@pytest.mark.timeout(1800)
def test_manifests_deep_reports_and_removes_a_same_size_damage(demo_build: DemoBuild, tmp_path: Path) -> None:
    from is4.manifests.io import read_manifest

    work = copy(demo_build.work, tmp_path / "work")
    assert run("manifests", "--workdir", str(work), "--deep").returncode == 0
    frame = work / sorted(read_manifest(work, "clips").dropna(subset=["frame_path"])["frame_path"])[0]
    st = frame.stat()
    data = bytearray(frame.read_bytes())
    data[len(data) // 2] ^= 0xFF
    frame.write_bytes(bytes(data))
    os.utime(frame, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert run("manifests", "--workdir", str(work)).returncode == 0  # the rows are fine
    done = run("manifests", "--workdir", str(work), "--deep")
    assert done.returncode == 2 and frame.relative_to(work).as_posix() in done.stdout, done.stdout[-2000:]
    assert not frame.exists()
