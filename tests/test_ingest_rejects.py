"""Hostile rows and files that ingest must settle once: a junk file served as a video, a 10,000-character field."""

from __future__ import annotations

from pathlib import Path

import pytest

from is4.config import DownloadConfig, IngestConfig
from is4.manifests.io import read_manifest
from is4.pipeline.ingest.ingest import run_ingest
from tests.conftest import CORRUPT_ID, GOOD_IDS


def _cfg(server) -> IngestConfig:
    return IngestConfig(
        download=DownloadConfig(
            url_template=server.url_template(), workers=1, retries=2, retry_backoff_s=0.01, socket_timeout_s=2
        )
    )


def test_a_junk_file_served_as_a_video_is_a_permanent_failure_that_no_rerun_fetches(
    media_server, tmp_path: Path
) -> None:
    csv = tmp_path / "junk.csv"
    csv.write_text(f"{CORRUPT_ID},0,dog barking,train\n")
    work = tmp_path / "work"
    first = run_ingest(csv, work, _cfg(media_server))
    clip = read_manifest(work, "clips").iloc[0]
    assert clip["status"] == "failed" and not clip["retryable"]
    assert clip["reason"].startswith("corrupt-source: ") and "media probe: " in clip["reason"]
    assert clip["attempts"] == 1, "a permanent failure is not retried within the run"
    assert first.failures_by_reason == {"corrupt-source": 1}
    before = media_server.requests
    again = run_ingest(csv, work, _cfg(media_server))
    assert (again.processed, again.reused) == (0, 1) and media_server.requests == before


@pytest.mark.parametrize("column", ["label", "ytid", "split"])
def test_a_10000_character_field_is_stored_once_and_its_reject_reason_stays_short(
    media_server, tmp_path: Path, column: str
) -> None:
    huge = "x" * 10_000
    fields = {"ytid": GOOD_IDS[0], "start": "0", "label": "dog barking", "split": "train"} | {column: huge}
    csv = tmp_path / "huge.csv"
    csv.write_text(",".join(fields.values()) + "\n")
    run_ingest(csv, tmp_path / "work", _cfg(media_server))
    row = read_manifest(tmp_path / "work", "clips").iloc[0]
    assert row["status"] == "invalid"
    holding = [name for name, value in row.items() if isinstance(value, str) and huge[:200] in value]
    assert holding == [column], "the value is kept once, in its own column"
    assert row[column] == huge
    assert len(row["reason"]) < 200 and "(10000 characters)" in row["reason"]
