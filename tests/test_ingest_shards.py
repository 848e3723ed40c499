"""Sharded ingest: each shard takes its slice of the selection into its own journal; one merge writes the manifest.

Real yt-dlp and ffmpeg against the loopback `MediaServer`; the merged `clips.parquet` must be byte-identical to a run
in one process, whatever the shard count and whichever journals a clip appears in.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from is4.config import BuildConfig, DownloadConfig, IngestConfig
from is4.manifests.io import manifest_path, read_manifest
from is4.manifests.journal import Journal
from is4.pipeline.ingest.ingest import IngestIncomplete, ingest_stage, merge_ingest, run_ingest
from is4.pipeline.ingest.journals import JOURNAL, load_records, shard_journal
from is4.pipeline.shard import Shard
from tests.conftest import GOOD_IDS, MISSING_ID, PRIVATE_ID
from tests.support import ingest_cmd

ROWS = [
    f"{GOOD_IDS[0]},0,dog barking,train",
    f"{MISSING_ID},0,dog barking,train",
    f"{GOOD_IDS[1]},7,playing cello,train",
    "bad id!,0,dog barking,train",
    f"{GOOD_IDS[2]},13,cat meowing,test",
    f"{PRIVATE_ID},0,dog barking,train",
    f"{GOOD_IDS[0]},10,dog barking,train",
]
MEDIA = ("frames", "audio", "spec", "mel")


def _build_cfg(server) -> BuildConfig:
    download = DownloadConfig(
        url_template=server.url_template(), workers=2, retries=0, retry_backoff_s=0.01, socket_timeout_s=2
    )
    return BuildConfig(ingest=IngestConfig(download=download))


def _media(work: Path) -> dict[str, bytes]:
    return {f"{sub}/{p.name}": p.read_bytes() for sub in MEDIA for p in sorted((work / "media" / sub).iterdir())}


def test_three_shards_and_a_merge_give_the_bytes_of_one_run(media_server, tmp_path: Path) -> None:
    csv = tmp_path / "rows.csv"
    csv.write_text("\n".join(ROWS) + "\n")
    cfg = _build_cfg(media_server)
    provenance = {"stage": "ingest", "config_sha256": "x"}
    one, three = tmp_path / "one", tmp_path / "three"
    whole = ingest_stage(one, cfg, provenance, csv_path=csv)
    assert whole["complete"] and whole["manifest"] and "shard" not in whole

    shards = [ingest_stage(three, cfg, provenance, csv_path=csv, shard=Shard(i, 3)) for i in range(3)]
    assert not manifest_path(three, "clips").exists(), "a shard never writes the manifest"
    assert sorted(p.name for p in (three / "state/ingest").iterdir()) == [f"shard-{i}-of-3.jsonl" for i in range(3)]
    assert not (three / JOURNAL).exists()
    assert [s["selected"] for s in shards] == [2, 2, 2] and sum(s["processed"] for s in shards) == 6
    assert [s["shard"] for s in shards] == ["0/3", "1/3", "2/3"] and all(s["manifest"] is None for s in shards)
    merged = merge_ingest(three, cfg, provenance, shards, csv_path=csv)
    assert (merged["ok"], merged["failed"], merged["invalid"]) == (whole["ok"], whole["failed"], whole["invalid"])
    assert (merged["processed"], merged["reused"]) == (6, 0), "the shards' work, not the merge's"
    hits = [{**s, "cached": True} if s["shard"] == "1/3" else s for s in shards]  # a cache hit did nothing now
    again = merge_ingest(three, cfg, provenance, hits, csv_path=csv)
    assert (again["processed"], again["reused"]) == (4, 2)
    assert manifest_path(three, "clips").read_bytes() == manifest_path(one, "clips").read_bytes()
    assert _media(three) == _media(one)
    clips = read_manifest(three, "clips")
    assert "shard" not in str(clips.attrs) and len(clips) == len(ROWS)


def test_merge_refuses_while_a_shard_has_not_run(media_server, tmp_path: Path) -> None:
    csv = tmp_path / "rows.csv"
    csv.write_text("\n".join(ROWS) + "\n")
    cfg = _build_cfg(media_server)
    work = tmp_path / "work"
    shards = [ingest_stage(work, cfg, {}, csv_path=csv, shard=Shard(i, 3)) for i in (0, 2)]
    with pytest.raises(IngestIncomplete, match=r"2 of 6 clips have no final record"):
        merge_ingest(work, cfg, {}, [shards[0], {}, shards[1]], csv_path=csv)  # shard 1/3 never ran
    assert not manifest_path(work, "clips").exists()
    # A rerun with another layout redoes only the missing slice: the others' journals are read.
    again = run_ingest(csv, work, cfg.ingest, merge=False)
    assert (again.reused, again.processed) == (4, 2) and again.manifest is None
    merge_ingest(work, cfg, {}, [again.as_dict()], csv_path=csv)
    assert len(read_manifest(work, "clips")) == len(ROWS)


def _write(work: Path, name: str, records: list[dict]) -> None:
    journal = Journal(work / name, key_field="clip_id")
    for record in records:
        journal.append(record)


def _ok(clip_id: str, attempts: int = 1) -> dict:
    paths = {k: f"media/{k}/{clip_id}" for k in ("frame_path", "audio_path", "spec_path", "mel_path")}
    return {"clip_id": clip_id, "status": "ok", "retryable": False, "attempts": attempts, **paths}


def test_precedence_between_journals_is_by_outcome_then_layout_never_by_file_name(tmp_path: Path) -> None:
    work = tmp_path / "work"
    for clip_id in ("a", "b"):  # clip a's and b's files are there, clip c's are not
        for key in ("frame_path", "audio_path", "spec_path", "mel_path"):
            (work / f"media/{key}").mkdir(parents=True, exist_ok=True)
            (work / f"media/{key}/{clip_id}").write_bytes(b"x")
    retry = {"status": "failed", "retryable": True, "attempts": 3, "reason": "timeout: x"}
    gone = {"status": "failed", "retryable": False, "attempts": 1, "reason": "not-found: x"}
    # The legacy journal sorts first, shard-9 last: neither position may decide.
    _write(work, JOURNAL, [{"clip_id": "a", **retry}, _ok("b", attempts=2), {"clip_id": "c", **retry}])
    _write(work, shard_journal(Shard(9, 10)), [_ok("a"), {"clip_id": "b", **retry}, _ok("c")])
    _write(work, shard_journal(Shard(0, 10)), [{"clip_id": "c", **gone}, {"clip_id": "d", **retry}])
    _write(
        work, shard_journal(Shard(1, 2)), [{"clip_id": "d", "status": "downloaded", "retryable": True, "attempts": 1}]
    )
    records = load_records(work)
    assert records["a"]["status"] == "ok"  # ok with its files beats a retryable failure
    assert records["b"]["attempts"] == 2  # ... wherever it is
    assert records["c"] == {"clip_id": "c", **gone}  # permanent failure beats ok-with-files-missing
    # Equals: the current layout's journal wins, whichever it is.
    assert load_records(work, current=[shard_journal(Shard(1, 2))])["d"]["status"] == "downloaded"
    assert load_records(work, current=[shard_journal(Shard(0, 10))])["d"]["status"] == "failed"


def test_is4_ingest_shards_by_hand_then_one_run_writes_the_manifest_fetching_nothing(
    media_server, tmp_path: Path
) -> None:
    csv = tmp_path / "rows.csv"
    csv.write_text("\n".join(ROWS[:3]) + "\n")
    work = tmp_path / "work"
    command = ingest_cmd(csv, work, media_server.url_template(), "--no-export")
    for shard in ("0/2", "1/2"):
        done = subprocess.run([*command, "--shard", shard], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        assert f"shard {shard} done" in done.stdout and not manifest_path(work, "clips").exists()
    bad = subprocess.run([*command, "--shard", "2/2"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "2/2" in bad.stderr and "Traceback" not in bad.stderr
    fetched = media_server.requests
    merged = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert merged.returncode == 0, merged.stderr
    assert media_server.requests == fetched, "every clip came from a shard's journal"
    clips = read_manifest(work, "clips")
    assert sorted(clips["status"]) == ["failed", "ok", "ok"]
