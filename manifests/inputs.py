"""The input files and folders a command names, checked before its first step: a missing or unreadable one is one
error naming it, not a failure after minutes of work."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from is4.manifests.errors import FatalError


class InputError(FatalError):
    """An input a command names is missing or unreadable."""


def check_readable(inputs: Mapping[str, str | Path | None]) -> None:
    """That every named input (by label, e.g. `--release` or `train.id_list`; None: not given) can be read: a file
    opened and its first byte read, a folder listed. InputError names the first that cannot, and why."""
    for label, path in inputs.items():
        if path is None:
            continue
        path = Path(path).expanduser()
        try:
            if path.is_dir():
                os.listdir(path)
            else:
                with path.open("rb") as handle:
                    handle.read(1)
        except OSError as exc:
            why = "does not exist" if isinstance(exc, FileNotFoundError) else (exc.strerror or str(exc)).lower()
            raise InputError(f"{label} {path}: {why}") from None
