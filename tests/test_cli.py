"""The `is4` command line as a user runs it: exit status and messages."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import yaml

from is4.manifests.io import read_manifest
from tests.conftest import GOOD_IDS, MISSING_ID
from tests.support import IS4


def _is4(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [IS4, *args], capture_output=True, text=True, timeout=300, env=os.environ | (env or {}) | {"COLUMNS": "200"}
    )


def test_completed_run_exits_zero_even_with_rejected_rows(media_server, tmp_path: Path) -> None:
    csv = tmp_path / "in.csv"
    csv.write_text(f"{GOOD_IDS[0]},0,dog barking,train\n{MISSING_ID},0,dog barking,train\nbad,0,dog barking,x\n")
    result = _is4(
        "ingest", "--csv", str(csv), "--workdir", str(tmp_path / "w"), "--url-template", media_server.url_template()
    )
    assert result.returncode == 0, result.stderr
    assert "not-found: 1" in result.stdout and "invalid-ytid: 1" in result.stdout
    clips = read_manifest(tmp_path / "w", "clips")
    assert sorted(clips["status"]) == ["failed", "invalid", "ok"]
    assert (tmp_path / "w/exports/vggsound/ids.csv").read_text().count("\n") == 2  # header + the ok clip


def test_unreadable_csv_is_a_clear_error(tmp_path: Path) -> None:
    result = _is4("ingest", "--csv", str(tmp_path / "nope.csv"), "--workdir", str(tmp_path / "w"))
    assert result.returncode == 2
    assert "nope.csv: no such csv file" in result.stderr


def test_unwritable_workdir_is_a_clear_error(tmp_path: Path) -> None:
    csv = tmp_path / "in.csv"
    csv.write_text(f"{GOOD_IDS[0]},0,dog barking,train\n")
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    result = _is4("ingest", "--csv", str(csv), "--workdir", str(blocker / "work"))
    assert result.returncode == 2
    assert "a-file/work" in result.stderr


def test_missing_ffmpeg_is_a_clear_error(tmp_path: Path) -> None:
    csv = tmp_path / "in.csv"
    csv.write_text(f"{GOOD_IDS[0]},0,dog barking,train\n")
    result = _is4(
        "ingest", "--csv", str(csv), "--workdir", str(tmp_path / "w"), env={"IS4_FFMPEG": str(tmp_path / "no-ffmpeg")}
    )
    assert result.returncode == 2
    assert "no-ffmpeg" in result.stderr and "not an executable" in result.stderr
    assert not (tmp_path / "w/manifests").exists()


def test_bad_config_names_the_key(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump({"ingest": {"download": {"workers": 0}, "extrac": {}}}))
    result = _is4("build", "--config", str(config))
    assert result.returncode == 2
    assert "ingest.download.workers" in result.stderr and "ingest.extrac" in result.stderr


def test_manifests_command_validates(tmp_path: Path, media_server) -> None:
    csv = tmp_path / "in.csv"
    csv.write_text(f"{GOOD_IDS[0]},0,dog barking,train\n")
    work = tmp_path / "w"
    assert (
        _is4(
            "ingest",
            "--csv",
            str(csv),
            "--workdir",
            str(work),
            "--no-export",
            "--url-template",
            media_server.url_template(),
        ).returncode
        == 0
    )
    good = _is4("manifests", "--workdir", str(work))
    assert good.returncode == 0 and "clips" in good.stdout and "valid" in good.stdout
    (work / "manifests/clips.parquet").write_bytes(b"garbage")
    bad = _is4("manifests", "--workdir", str(work))
    assert bad.returncode == 2 and "not a readable Parquet file" in bad.stdout
