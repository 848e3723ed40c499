"""A real `kill -9` of a real `is4 ingest` at a chosen point, a rerun, and the manifest of a run never killed.

The point chosen here is the one where bookkeeping used to leak into the manifest: a section is downloaded (the file
has its final name) but the clip's record is not yet in the journal. The rerun finds the file and does not fetch
it again; the manifest must still say how many attempts fetched it, exactly as the clean run does.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from is4.manifests.io import manifest_path, read_manifest
from is4.pipeline.ingest.journals import FINAL, JOURNAL
from is4.pipeline.ingest.status import ingest_status
from tests.conftest import GOOD_IDS
from tests.support import ingest_cmd, killed_at_exit, wait_until

ROWS = [f"{ytid},{start},dog barking,train" for ytid in GOOD_IDS for start in (0, 10)]


def _ingest(csv: Path, work: Path, url_template: str) -> list[str]:
    return ingest_cmd(csv, work, url_template, "--workers", "1", "--no-export")


def _final_ids(work: Path) -> set[str]:
    journal = work / JOURNAL
    if not journal.is_file():
        return set()
    out = set()
    for line in journal.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line being written
        if record.get("status") in FINAL:
            out.add(record["clip_id"])
    return out


def _kill_with_a_section_on_disk_and_no_record(command: list[str], work: Path) -> str | None:
    """Start `command`, kill -9 it as soon as a downloaded section has no record; the clip, or None if missed."""
    source_dir = work / "media/source"

    def downloaded() -> bool:
        return source_dir.is_dir() and any(not p.name.startswith(".") for p in source_dir.glob("*"))

    with killed_at_exit(subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)) as proc:
        wait_until(downloaded, proc, timeout=120, every=0.002)  # then killed, or missed: the caller tries again
    on_disk = {p.name.split(".")[0] for p in source_dir.glob("*") if not p.name.startswith(".")}
    unrecorded = sorted(on_disk - _final_ids(work))
    return unrecorded[0] if unrecorded else None


def test_a_kill_between_download_and_record_leaves_no_trace_in_the_manifest(media_server, tmp_path: Path) -> None:
    csv = tmp_path / "rows.csv"
    csv.write_text("\n".join(ROWS) + "\n")
    clean = tmp_path / "clean"
    done = subprocess.run(_ingest(csv, clean, media_server.url_template()), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr

    for attempt in range(3):  # the window is an extraction long; a kill that lands after it is tried again
        work = tmp_path / f"killed-{attempt}"
        clip = _kill_with_a_section_on_disk_and_no_record(_ingest(csv, work, media_server.url_template()), work)
        if clip is not None:
            break
    else:
        pytest.fail("no kill landed between a download and its record in 3 tries")
    assert not manifest_path(work, "clips").exists()
    (status,) = ingest_status(work)  # the section on disk is not a record: the clip is pending
    assert status.by_status["pending"] == len(ROWS) - len(_final_ids(work)) >= 1
    again = subprocess.run(_ingest(csv, work, media_server.url_template()), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    clips = read_manifest(work, "clips").set_index("clip_id")
    assert clips.loc[clip, "status"] == "ok" and clips.loc[clip, "attempts"] == 1, "the attempt that fetched it"
    assert manifest_path(work, "clips").read_bytes() == manifest_path(clean, "clips").read_bytes()
