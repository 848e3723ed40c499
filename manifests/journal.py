"""An append-only JSON-lines journal of per-item results, so a killed stage resumes where it stopped.

Each finished item is one line, written and fsynced under a lock after the item's files are in place. On load the
last record for a key wins, and a torn last line (the process died mid-write) is ignored.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any


class Journal:
    """Per-item results of one stage in `path`, keyed by `key_field`."""

    def __init__(self, path: str | Path, key_field: str) -> None:
        self.path = Path(path)
        self.key_field = key_field
        self._lock = threading.Lock()

    def load(self) -> dict[str, dict[str, Any]]:
        """The latest record of every key."""
        records: dict[str, dict[str, Any]] = {}
        if not self.path.is_file():
            return records
        with open(self.path, encoding="utf-8") as fh:
            for line in fh:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue  # torn write from a killed run
                if isinstance(record, dict) and self.key_field in record:
                    records[record[self.key_field]] = record
        return records

    def append(self, record: dict[str, Any]) -> None:
        """Durably add one record."""
        line = json.dumps(record, sort_keys=True) + "\n"
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as fh:
                # A torn line left by a killed writer would swallow this record: start on a fresh line.
                if fh.tell() and not self._ends_with_newline():
                    fh.write("\n")
                fh.write(line)
                fh.flush()
                os.fsync(fh.fileno())

    def _ends_with_newline(self) -> bool:
        with open(self.path, "rb") as fh:
            fh.seek(-1, os.SEEK_END)
            return fh.read(1) == b"\n"


def cut_torn_tail(path: str | Path) -> bool:
    """Remove a torn last line (a killed writer's partial record, no valid JSON after the last newline) from the
    journal at `path`; True when there was one. Its item is then simply not done, and the stage redoes it."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return False
    start = data.rfind(b"\n") + 1
    tail = data[start:]
    if not tail.strip():
        return False
    try:
        json.loads(tail)
        return False  # a whole record whose newline was lost: `append` starts the next one on a fresh line
    except ValueError:
        pass
    with open(path, "r+b") as fh:
        fh.truncate(start)
        os.fsync(fh.fileno())
    return True
