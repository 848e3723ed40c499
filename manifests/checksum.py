"""File checksums for provenance, cache keys and release sums."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from is4.manifests.atomic import atomic_write_bytes


def sha256_file(path: str | os.PathLike[str]) -> str:
    """The sha256 hex digest of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def json_sha256(value: Any) -> str:
    """The sha256 hex digest of `value` as canonical JSON (sorted keys; non-JSON values by their `str`)."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def sha256_if_exists(path: str | os.PathLike[str]) -> str | None:
    """`sha256_file`, or None when there is no such file."""
    try:
        return sha256_file(path)
    except FileNotFoundError:
        return None


HASH_CACHE_DIR = "state/file-hashes"


class HashCache:
    """sha256 of files under a work directory, remembered by size, mtime and inode
    (`WORK/state/file-hashes/<scope>.json`, one file per manifest so that a check loads only what it needs).

    A file whose stat is unchanged is not read again; any write (in place or by replacement) changes its stat and
    so its hash is recomputed. `save` writes the cache atomically; concurrent savers only cost a later re-hash.
    """

    def __init__(self, workdir: str | os.PathLike[str], scope: str, *, deep: bool = False) -> None:
        """`deep`: hash every file from its bytes, whatever is remembered (what ships is never taken on stat)."""
        self.workdir = Path(workdir)
        self.deep = deep
        self.path = self.workdir / HASH_CACHE_DIR / f"{scope}.json"
        try:
            loaded = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            loaded = {}
        self._entries: dict[str, list[Any]] = loaded if isinstance(loaded, dict) else {}
        self._changed = False

    def sha256(self, rel: str) -> str | None:
        """The sha256 of `WORK/rel`, or None when it is not a file."""
        try:
            st = os.stat(self.workdir / rel)
        except OSError:
            return None
        key = [st.st_size, st.st_mtime_ns, st.st_ino]
        entry = self._entries.get(rel)
        if not self.deep and isinstance(entry, list) and len(entry) == 4 and entry[:3] == key:
            return entry[3]
        try:
            digest = sha256_file(self.workdir / rel)
        except (IsADirectoryError, FileNotFoundError):
            return None
        self._entries[rel] = [*key, digest]
        self._changed = True
        return digest

    def remember(self, rel: str, digest: str) -> None:
        """Record `digest` as the sha256 of `WORK/rel` as it is now (just written and hashed by the caller)."""
        st = os.stat(self.workdir / rel)
        self._entries[rel] = [st.st_size, st.st_mtime_ns, st.st_ino, digest]
        self._changed = True

    def save(self) -> None:
        """Write the cache if anything was hashed since it was loaded."""
        if self._changed:
            atomic_write_bytes(self.path, json.dumps(self._entries, sort_keys=True).encode())
            self._changed = False
