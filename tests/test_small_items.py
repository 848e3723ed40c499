"""Small CLI promises: `is4 manifests` refuses a work directory that is not there, and `is4 review done` says that
it needs PREFECT_API_URL (an in-process build never pauses) instead of finding nothing to resume."""

from __future__ import annotations

import subprocess
from pathlib import Path

from typer.testing import CliRunner

from is4.cli import app
from tests.support import IS4, prefect_env


def test_manifests_of_a_missing_work_directory(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["manifests", "--workdir", str(tmp_path / "absent")])
    assert result.exit_code == 2, result.output
    assert "absent: no such work directory" in " ".join(result.output.split())  # rich wraps long lines
    (tmp_path / "file").write_text("x")
    result = CliRunner().invoke(app, ["manifests", "--workdir", str(tmp_path / "file")])
    assert result.exit_code == 2 and "file: not a directory" in " ".join(result.output.split()), result.output


def test_review_done_needs_a_prefect_server(tmp_path: Path) -> None:
    env = prefect_env(tmp_path / "prefect-home")
    result = subprocess.run([IS4, "review", "done"], capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "PREFECT_API_URL is not set" in lines[0], result.stderr
    assert "Starting temporary server" not in result.stdout + result.stderr
