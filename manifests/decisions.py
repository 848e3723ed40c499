"""The append-only decision log: every verification decision ever committed, one JSON line each, in order.

The verification manifest is a projection of this log (the last record of each image), so a deleted or damaged
manifest is rebuilt from it and no decision, human or automatic, is lost or invented. Records are appended in one
write and one fsync per commit; a torn last line (a writer killed mid-append, before it committed anything) is cut
off by the next append and ignored on reading. Any other unreadable line is damage and stops the reader.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from is4.manifests.errors import FatalError

LOG_PATH = "decisions/verification.jsonl"  # beside manifests/, never under state/ (caches one may delete)


class DecisionLogError(FatalError, ValueError):
    """The decision log is damaged (a line that is not a record) or missing where decisions were made."""


def log_path(workdir: str | Path) -> Path:
    """`WORK/decisions/verification.jsonl`."""
    return Path(workdir) / LOG_PATH


def _plain(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).isoformat() if value.tzinfo else value.isoformat()
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        return value.item()  # numpy scalars
    return value


def _committed_bytes(data: bytes) -> bytes:
    """`data` without a torn last line (everything after the last newline)."""
    return data[: data.rfind(b"\n") + 1]


def read_log(workdir: str | Path) -> list[dict[str, Any]] | None:
    """Every committed record in order, or None when there is no log."""
    path = log_path(workdir)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    records = []
    for number, line in enumerate(_committed_bytes(data).splitlines(), start=1):
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            record = None
        if not isinstance(record, dict) or not isinstance(record.get("image_id"), str):
            raise DecisionLogError(
                f"{path}: line {number} is not a decision record: restore the file from a backup or from a "
                f"release's {LOG_PATH} (the log it was built from)"
            )
        records.append(record)
    return records


def append_records(workdir: str | Path, records: Iterable[dict[str, Any]]) -> int:
    """Durably append `records` (one write, one fsync) after cutting a torn last line; how many were written.

    The caller holds the verification lock (`manifests.lock.manifest_lock`), so appends never interleave.
    """
    lines = [
        json.dumps({k: _plain(v) for k, v in r.items()}, sort_keys=True, ensure_ascii=False) + "\n" for r in records
    ]
    if not lines:
        return 0
    path = log_path(workdir)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "ab+") as fh:
        size = fh.seek(0, os.SEEK_END)
        if size:
            fh.seek(size - 1)
            if fh.read(1) != b"\n":  # a torn line: rare, so reading the whole file is fine
                fh.seek(0)
                fh.truncate(len(_committed_bytes(fh.read())))
        fh.write("".join(lines).encode("utf-8"))
        fh.flush()
        os.fsync(fh.fileno())
    return len(lines)
