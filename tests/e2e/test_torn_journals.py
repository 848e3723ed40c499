"""A torn last journal line means that item is not done: `is4 build` redoes it (issue 21 item 3).

A kill in the middle of a journal write leaves a partial last line. The shard's Prefect cache still said "done", so
the merge rebuilt the manifest without the item (generate, ingest: exit 2 on every rerun; caption: exit 0 with an
empty phrase). Now a journaled stage whose journal ends in a torn line is not intact: the line is cut off and the
stage's resume logic redoes the item, ending with the bytes of a clean build. Every journaled stage (ingest,
generate, caption), run as one shard each (two shards: not yet tested).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from is4.manifests.journal import Journal, cut_torn_tail
from is4.pipeline.registry import REGISTRY
from tests.support import DEMO, DemoBuild, prefect_env, tree
from tests.support.demo_builds import build

pytestmark = pytest.mark.timeout(3600)
JOURNALED = {s.name: s.journals for s in REGISTRY if s.journals}


def test_cut_torn_tail(tmp_path: Path) -> None:
    path = tmp_path / "j.jsonl"
    journal = Journal(path, "id")
    journal.append({"id": "a", "v": 1})
    journal.append({"id": "b", "v": 2})
    whole = path.read_bytes()
    assert not cut_torn_tail(path) and path.read_bytes() == whole
    path.write_bytes(whole[:-7])  # the second record torn
    assert cut_torn_tail(path)
    assert path.read_bytes() == whole[: whole.index(b"\n") + 1]
    assert journal.load() == {"a": {"id": "a", "v": 1}}
    path.write_bytes(whole[:-1])  # only the newline lost: the record is whole and stays
    assert not cut_torn_tail(path) and journal.load()["b"] == {"id": "b", "v": 2}
    assert not cut_torn_tail(tmp_path / "missing.jsonl")


def tear(path: Path) -> str:
    """Cut the last record of a journal in the middle, as a kill during its write would; returns that record."""
    data = path.read_bytes()
    start = data.rstrip(b"\n").rfind(b"\n") + 1
    last = data[start:]
    path.write_bytes(data[: start + len(last) // 2])
    return last.decode()[:80]


def test_torn_journal_lines_are_redone_to_a_clean_builds_bytes(demo_build: DemoBuild) -> None:
    # In the clean build's own directory, not a copy: a copy's path misses every cache key, so every stage would run
    # again whatever its journals say, and the stale cache hit this is about would never happen.
    config, work, before = DEMO, demo_build.work, demo_build.tree
    torn = {}
    for name, patterns in JOURNALED.items():
        journals = [p for pattern in patterns for p in sorted(work.glob(pattern)) if p.stat().st_size]
        assert journals, f"{name}: no journal written"
        # The last journal of the stage (the last role of the captions).
        torn[name] = tear(journals[-1])
    done = build(config, work, prefect_env(demo_build.prefect_home))
    assert done.returncode == 0, done.stderr[-3000:]
    assert tree(work) == before, torn
    for patterns in JOURNALED.values():
        for pattern in patterns:
            for path in work.glob(pattern):
                assert not cut_torn_tail(path), f"{path} still torn"
    assert os.path.exists(work / "releases" / "is4-0.1.0.tar.gz")
