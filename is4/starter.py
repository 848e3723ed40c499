"""`is4 init DIR`: the example configs shipped in the package (`is4/configs`), written into a new project directory."""

from __future__ import annotations

import importlib.resources
from pathlib import Path

from is4.manifests.errors import Is4Error

STARTER_FILES = ("configs/demo.yaml", "configs/paper.yaml", "configs/category_overrides.yaml")


def write_starter(directory: str | Path, force: bool = False) -> list[Path]:
    """Write the shipped demo and paper configs (and the category overrides they name) under `directory`; returns
    the written paths. An existing file is kept unless `force`: Is4Error names it."""
    root = Path(directory)
    package = importlib.resources.files("is4")
    targets = [root / rel for rel in STARTER_FILES]
    existing = [str(t) for t in targets if t.exists()]
    if existing and not force:
        raise Is4Error(f"{', '.join(existing)}: already there (--force overwrites)")
    for rel, target in zip(STARTER_FILES, targets):
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(package.joinpath(rel).read_bytes())
    return targets
