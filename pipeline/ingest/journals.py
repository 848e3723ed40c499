"""The ingest journals of a work directory, one per writer, read together with a fixed precedence.

A run of the whole selection writes `state/ingest.jsonl` (the legacy single journal); shard i of n writes
`state/ingest/shard-{i}-of-{n}.jsonl`, so no two processes ever append to one file. Within one journal its last
record of a clip wins (it is the newest). When several journals have a record of one clip (the shard count changed
between runs), the best one wins, never the last file read: an ok clip whose files are all present, then a
permanent failure, then the rest (retryable failures, sections downloaded but not extracted); between equals the
journal of the current layout, then the smallest canonical JSON text.

Record statuses: `ok` and `failed` are final; `downloaded` is written just before a downloaded section takes its
final name, so a rerun that finds the section knows how many attempts it took (the manifest then does not depend on
where a kill landed).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from is4.manifests.journal import Journal
from is4.pipeline.shard import JOURNAL_GLOB, Shard

JOURNAL = "state/ingest.jsonl"  # the journal of a run over the whole selection
SHARD_DIR = "state/ingest"
OUTPUT_KEYS = ("frame_path", "audio_path", "spec_path", "mel_path")
FINAL = ("ok", "failed")


def shard_journal(shard: Shard) -> str:
    """The journal (relative to WORK) that the run of `shard` writes; the whole run's is `JOURNAL`."""
    return JOURNAL if shard.whole else f"{SHARD_DIR}/{shard.journal_name()}"


def layout_journals(shards: int) -> tuple[str, ...]:
    """The journals a run split into `shards` writes (a 1-shard run may also have the shard form of older runs)."""
    if shards == 1:
        return (JOURNAL, f"{SHARD_DIR}/{Shard().journal_name()}")
    return tuple(shard_journal(Shard(i, shards)) for i in range(shards))


def all_journals(workdir: Path) -> list[str]:
    """Every ingest journal present in `workdir`, in name order."""
    found = [JOURNAL] if (workdir / JOURNAL).is_file() else []
    return found + sorted(
        p.relative_to(workdir).as_posix() for p in (workdir / SHARD_DIR).glob(f"{JOURNAL_GLOB}.jsonl")
    )


def finished(record: dict[str, Any] | None, workdir: Path, extract_fp: str | None = None) -> bool:
    """A record a rerun keeps: a permanent failure, or an ok clip whose files are all present.

    `extract_fp` None accepts any extraction fingerprint (`is4 ingest --status` does not know the config).
    """
    if record is None:
        return False
    if record["status"] == "failed":
        return not record["retryable"]
    if record["status"] != "ok" or (extract_fp is not None and record.get("extract_fingerprint") != extract_fp):
        return False
    return all((workdir / record[k]).is_file() for k in OUTPUT_KEYS)


def _rank(record: dict[str, Any], workdir: Path, extract_fp: str | None) -> int:
    if record["status"] == "ok" and finished(record, workdir, extract_fp):
        return 0
    return 1 if finished(record, workdir, extract_fp) else 2


def load_records(
    workdir: Path, extract_fp: str | None = None, current: Iterable[str] = ()
) -> dict[str, dict[str, Any]]:
    """The winning record of every clip over all journals of `workdir` (see the module docstring)."""
    current = set(current)
    best: dict[str, tuple[int, bool, dict[str, Any]]] = {}
    for name in all_journals(workdir):
        for clip_id, record in Journal(workdir / name, key_field="clip_id").load().items():
            key = (_rank(record, workdir, extract_fp), name not in current)
            held = best.get(clip_id)
            if held is None or key < held[:2] or (key == held[:2] and _canonical(record) < _canonical(held[2])):
                best[clip_id] = (*key, record)
    return {clip_id: record for clip_id, (_, _, record) in best.items()}


def _canonical(record: dict[str, Any]) -> str:
    return json.dumps(record, sort_keys=True)
