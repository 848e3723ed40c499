"""Helpers for tests that run real demo builds and compare what they made, byte for byte."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "configs" / "demo.yaml"
SHIPPED = ("manifests", "media", "releases", "exports", "reports")  # what a build makes for users


def build_cmd(config: Path, work: Path) -> list[str]:
    return [sys.executable, "-m", "is4.cli", "build", "--config", str(config), "--workdir", str(work)]


def build(config: Path, work: Path) -> subprocess.CompletedProcess[str]:
    """`is4 build` in a subprocess (this checkout's code), output captured."""
    return subprocess.run(
        build_cmd(config, work),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=2400,
        env=os.environ | {"COLUMNS": "400"},
    )


def tree(work: Path) -> dict[str, str]:
    """sha256 of every file under the work directory's user-facing folders (`SHIPPED`)."""
    out = {}
    for top in SHIPPED:
        for path in sorted((work / top).rglob("*")):
            if path.is_file():
                out[path.relative_to(work).as_posix()] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def copy(src: Path, dst: Path) -> Path:
    """A copy of a work directory that keeps the export's hard links (`cp -a`; copytree does not)."""
    subprocess.run(["cp", "-a", str(src), str(dst)], check=True)
    return dst


def variant(tmp: Path, name: str, change: dict[str, Any]) -> Path:
    """configs/demo.yaml with `change`'s sections merged into it (one level deep), written to `tmp/name.yaml`.

    Its relative paths stay as written (`build` runs in the repository): the overrides' path is part of the
    categories stage's config, so an absolute one would make every stage from categories on run again."""
    cfg = yaml.safe_load(DEMO.read_text(encoding="utf-8"))
    for section, values in change.items():
        cfg[section] = {**cfg.get(section, {}), **values} if isinstance(values, dict) else values
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path
