"""Helpers for tests that run real demo builds and compare what they made, byte for byte."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from tests.support import DEMO, ROOT


def build_cmd(config: Path, work: Path) -> list[str]:
    return [sys.executable, "-m", "is4.cli", "build", "--config", str(config), "--workdir", str(work)]


def build(config: Path, work: Path, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`is4 build` in a subprocess (this checkout's code), output captured; `env` (default: ours) as for the
    session's demo build (`prefect_env(demo_build.prefect_home)`)."""
    return subprocess.run(
        build_cmd(config, work),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=2400,
        env={**(env if env is not None else os.environ), "COLUMNS": "400"},
    )


def copy(src: Path, dst: Path) -> Path:
    """A copy of a work directory that keeps the export's hard links (`cp -a`; copytree does not)."""
    subprocess.run(["cp", "-a", str(src), str(dst)], check=True)
    return dst


def variant(tmp: Path, name: str, change: dict[str, Any]) -> Path:
    """configs/demo.yaml with `change`'s sections merged into it (one level deep), written to `tmp/name.yaml`.

    Its overrides file is named relative to `tmp` (a config's relative paths are read from its folder), so that the
    build, run in the repository, reads it as `configs/category_overrides.yaml` as the demo config does: the path
    is part of the categories stage's config, and an absolute one would make every stage from categories on run
    again."""
    cfg = yaml.safe_load(DEMO.read_text(encoding="utf-8"))
    overrides = DEMO.parent / cfg["categories"]["overrides"]
    cfg["categories"]["overrides"] = os.path.relpath(overrides, tmp)
    for section, values in change.items():
        cfg[section] = {**cfg.get(section, {}), **values} if isinstance(values, dict) else values
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path
