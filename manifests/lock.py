"""An exclusive lock per manifest, for tables that several processes read, modify and write back."""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterator
from pathlib import Path

LOCK_DIR = "state/locks"


@contextlib.contextmanager
def manifest_lock(workdir: str | Path, table: str) -> Iterator[None]:
    """Hold an exclusive advisory lock (flock) on `table` of `workdir` for a read-modify-write of the manifest."""
    lock = Path(workdir) / LOCK_DIR / f"{table}.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a+b") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
