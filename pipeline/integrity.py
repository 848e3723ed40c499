"""Deep content checks: every file a manifest lists, hashed from its bytes, against the checksum recorded when it
was made (the manifest's own checksum column, else its stage's record `state/outputs/<stage>.json`).

The build's outputs check takes an unchanged size + mtime + inode as unchanged content; a same-size overwrite with
its mtime put back passes it. What a release ships is never taken on stat: the release stage checks its inputs
here before it builds, and `is4 manifests --deep` checks a whole work directory on demand. A damaged file is
removed, so the next `is4 build` makes it again.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from is4.manifests.io import manifest_path
from is4.manifests.schema import TABLES
from is4.pipeline.registry import REGISTRY
from is4.pipeline.stage import damaged_files, stage_record


def deep_check(work: Path, tables: Iterable[str] | None = None) -> dict[str, list[str]]:
    """Per manifest (default: every one in `work`), the files it lists that are missing or damaged (the damaged
    ones removed); only manifests with such files appear. Manifests that are missing or invalid are left out
    (`is4 manifests` reports them)."""
    writers = {}
    for stage in REGISTRY:
        for table in stage.writes:
            writers.setdefault(table, stage)
    found: dict[str, list[str]] = {}
    for table in TABLES if tables is None else tables:
        stage = writers.get(table)
        if stage is None or not manifest_path(work, table).is_file():
            continue
        record = stage_record(work, stage.name).get(table)
        damaged = damaged_files(work, table, stage.unlisted_paths, record, deep=True)
        if damaged:
            found[table] = damaged
    return found
