"""The public Python API behind `from is4 import ...` (notebooks, scripts): the same calls the `is4` commands make."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any


def build(config: str | Path, workdir: str | Path | None = None, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Run the whole `build-is4` flow in-process, as `is4 build` does; returns each stage's summary by name.

    `overrides` are `key.path=value` settings over the config file (`--set`). The work directory (default: the
    config's `workdir`) is checked and locked for the run; the Prefect API is PREFECT_API_URL's, else a temporary
    local one.
    """
    from is4.config import load_config
    from is4.flows.cluster import require_api
    from is4.manifests.lock import workdir_lock
    from is4.pipeline.preflight import preflight

    config = Path(config)
    cfg = load_config(config, overrides)  # fail fast, before Prefect starts its local API
    require_api(cfg)  # a Dask cluster elsewhere cannot reach a temporary server on this machine's loopback
    work = preflight(cfg, Path(workdir or cfg.workdir).expanduser().resolve(), None)
    with workdir_lock(work, "is4 build"):
        from is4.flows.build import build_is4
        from is4.flows.server import prefect_api

        with prefect_api():
            return build_is4(config_path=str(config.resolve()), workdir=str(work), overrides=list(overrides) or None)
