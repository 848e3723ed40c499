"""Atomic file writes: write to a temporary sibling, fsync, then rename over the target."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# mkstemp creates files 0600; finished files get the permissions an ordinary write would give them.
_FILE_MODE = 0o666 & ~_current_umask()


# What `atomic_path` names its temporary files: `.<target name>.tmp-<8 random characters><suffix>`.
_TEMPORARY = re.compile(r"\..+\.tmp-[a-z0-9_]{8}(\.[^/]*)?")


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str], suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside `target`; on success it is fsynced and renamed onto `target`.

    On any exception the temporary file is removed and `target` is left as it was, so a reader never sees a
    half-written file. `suffix` (default: the target's own suffix) lets tools that infer the format from the file
    name (ffmpeg, PIL) write the temporary file.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    # Hidden name (leading dot) so directory scans never mistake a temporary file for a finished one.
    fd, tmp_name = tempfile.mkstemp(
        prefix=f".{target.name}.tmp-", suffix=target.suffix if suffix is None else suffix, dir=target.parent
    )
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(target: str | os.PathLike[str], data: bytes) -> None:
    """Write `data` to `target` atomically."""
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def atomic_write_json(target: str | os.PathLike[str], data: object) -> None:
    """Write `data` as indented JSON with sorted keys and a final newline, atomically (a report that diffs well)."""
    atomic_write_bytes(target, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())


def replace_directory(staging: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
    """Put the finished directory `staging` in place of `target` by renames (same file system).

    A reader sees the old tree or the new one, never a half-written one; the old tree is removed afterwards.
    """
    staging, target = Path(staging), Path(target)
    old = target.with_name(f".{target.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        target.rename(old)
    staging.rename(target)
    shutil.rmtree(old, ignore_errors=True)


def remove_temporaries(directory: str | os.PathLike[str]) -> list[Path]:
    """Remove the temporary files `atomic_path` left in `directory` (not below it) when its writer was killed
    (SIGKILL skips the cleanup); return them. Only for a caller that knows no writer is alive there."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    removed = [p for p in sorted(directory.iterdir()) if _TEMPORARY.fullmatch(p.name) and p.is_file()]
    for path in removed:
        path.unlink(missing_ok=True)
    return removed
