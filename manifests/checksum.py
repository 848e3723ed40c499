"""File checksums for provenance, cache keys and release sums."""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any


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
