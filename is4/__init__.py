"""IS4 builder: the reproducible pipeline behind the IS4 benchmark.

The public API, for notebooks and scripts (each name is imported on first use, so `import is4` stays light: no
torch, Prefect or FiftyOne until a call needs them)::

    from is4 import load_config, build, read_manifest, load_release, evaluate
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# name -> (module, attribute)
_API: dict[str, tuple[str, str]] = {
    "BuildConfig": ("is4.config", "BuildConfig"),
    "load_config": ("is4.config", "load_config"),
    "build": ("is4.api", "build"),
    "read_manifest": ("is4.manifests.io", "read_manifest"),
    "stage_status": ("is4.pipeline.status", "stage_status"),
    "load_release": ("is4.pipeline.release.hf", "load_as_hf_dataset"),
    "verify_release": ("is4.pipeline.release.archive", "verify_release"),
    "evaluate": ("is4.pipeline.evaluation.evaluate", "evaluate"),
}

__all__ = [
    "BuildConfig",
    "__version__",
    "build",
    "evaluate",
    "load_config",
    "load_release",
    "read_manifest",
    "stage_status",
    "verify_release",
]

if TYPE_CHECKING:
    from is4.api import build
    from is4.config import BuildConfig, load_config
    from is4.manifests.io import read_manifest
    from is4.pipeline.evaluation.evaluate import evaluate
    from is4.pipeline.release.archive import verify_release
    from is4.pipeline.release.hf import load_as_hf_dataset as load_release
    from is4.pipeline.status import stage_status


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module 'is4' has no attribute {name!r}")
    module, attribute = _API[name]
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
