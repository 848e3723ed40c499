"""Advisory locks (flock) in WORK/state/locks: one per manifest, for tables that several processes read, modify and
write back, and one for the work directory, held by every writing command."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from is4.manifests.errors import FatalError

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


WORKDIR_LOCK = "workdir"  # WORK/state/locks/workdir.lock: the whole work directory
_held: dict[Path, int] = {}  # lock files this process holds, with their depth (the lock is re-entrant per process)


class WorkdirBusy(FatalError):
    """Another run holds the work directory (or the same part of it)."""


def _holder_record(command: str) -> dict[str, Any]:
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "command": command,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _describe(lock: Path) -> str | None:
    """Who a held lock file says holds it, or None when it records nobody."""
    try:
        record = json.loads(lock.read_text(encoding="utf-8") or "null")
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict):
        return None
    text = f"pid {record.get('pid')} on {record.get('host')} since {record.get('started')}: {record.get('command')}"
    if record.get("host") == socket.gethostname() and not _alive(record.get("pid")):
        text += " (that pid is gone: a process it started still holds the lock)"
    return text


def _alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _held_exclusively(lock: Path) -> bool:
    """True when some process holds `lock` exclusively (its record, if any, is then current)."""
    try:
        with open(lock, "rb") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
    except BlockingIOError:
        return True
    except OSError:
        return False
    return False


def _busy(workdir: Path, what: str) -> WorkdirBusy:
    locks = sorted((workdir / LOCK_DIR).glob(f"{WORKDIR_LOCK}*.lock"))
    holders = [d for lock in locks if _held_exclusively(lock) and (d := _describe(lock))]
    who = "; ".join(holders) or "another process"
    return WorkdirBusy(f"{workdir}: {what} is in use by {who}. Wait for it to finish (or stop it), then run again")


@contextlib.contextmanager
def _flock(lock: Path, mode: int, command: str, on_busy: Callable[[], WorkdirBusy]) -> Iterator[None]:
    """Hold flock `mode` on `lock` without waiting (re-entrant within this process); an exclusive holder records
    itself in the file and clears the record on release."""
    lock = lock.resolve()
    if lock in _held:
        _held[lock] += 1
        try:
            yield
        finally:
            _held[lock] -= 1
        return
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a+", encoding="utf-8") as fh:
        try:
            fcntl.flock(fh.fileno(), mode | fcntl.LOCK_NB)
        except BlockingIOError:
            raise on_busy() from None
        _held[lock] = 1
        try:
            fh.truncate(0)  # whatever it records is stale: no one else holds it exclusively now
            if mode == fcntl.LOCK_EX:
                fh.write(json.dumps(_holder_record(command)))
            fh.flush()
            yield
        finally:
            del _held[lock]
            if mode == fcntl.LOCK_EX:
                fh.truncate(0)
                fh.flush()
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


@contextlib.contextmanager
def workdir_lock(workdir: str | Path, command: str, part: str | None = None) -> Iterator[None]:
    """Hold the work directory for one writing run, or refuse at once (`WorkdirBusy`) naming who holds it.

    Without `part`: an exclusive lock on the whole directory. With `part` (e.g. "shard 0/2 of generate": a shard
    started by hand, possibly on another machine sharing the directory): the directory's lock shared with other
    parts, and that part's exclusively; so parts run side by side, but never the same twice, nor beside a whole run.
    A killed holder's lock is released by the kernel (flock), so a lock never goes stale; the record it left says
    so when a child it started still holds the file. Re-entrant within one process.
    """
    workdir = Path(workdir)
    locks = workdir / LOCK_DIR
    whole = locks / f"{WORKDIR_LOCK}.lock"
    if part is None:
        with _flock(whole, fcntl.LOCK_EX, command, lambda: _busy(workdir, "the work directory")):
            yield
        return
    mine = locks / f"{WORKDIR_LOCK}-part-{hashlib.sha256(part.encode()).hexdigest()[:16]}.lock"
    with (
        _flock(whole, fcntl.LOCK_SH, command, lambda: _busy(workdir, "the work directory")),
        _flock(mine, fcntl.LOCK_EX, command, lambda: _busy(workdir, part)),
    ):
        yield
