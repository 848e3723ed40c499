"""The public Python API behind `from is4 import ...` (notebooks, scripts): the same calls the `is4` commands make."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

# Libraries whose warnings (missing optional packages, deprecations) a build's user cannot act on.
_QUIET = ("py.warnings", "transformers", "diffusers", "accelerate", "torchvision", "absl", "huggingface_hub")


@contextmanager
def third_party_to_log(path: Path) -> Iterator[None]:
    """Send Python warnings and the model libraries' log records to `path` instead of the terminal, and hide their
    download/loading progress bars, for the block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    # transformers and diffusers log through handlers of their own once imported: replace those too.
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    libraries = (transformers_logging, diffusers_logging)
    bars = [library.is_progress_bar_enabled() for library in libraries]
    for library in libraries:
        library.get_logger()  # configures the library's root logger (its default handler) before it is saved
    saved = [(logging.getLogger(n), logging.getLogger(n).handlers[:], logging.getLogger(n).propagate) for n in _QUIET]
    for library in libraries:
        library.disable_default_handler()
        library.disable_progress_bar()  # "Loading pipeline components…": the stages log their own progress
    for logger, _, _ in saved:
        logger.handlers, logger.propagate = [handler], False
    logging.captureWarnings(True)
    try:
        yield
    finally:
        logging.captureWarnings(False)
        for library, bar in zip(libraries, bars):
            if bar:
                library.enable_progress_bar()
        # The handler lists as they were, in their order (re-enabling a default handler would append it last).
        for logger, handlers, propagate in saved:
            logger.handlers, logger.propagate = handlers, propagate
        handler.close()


def build(config: str | Path, workdir: str | Path | None = None, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Run the whole `build-is4` flow in-process, as `is4 build` does; returns each stage's summary by name.

    `overrides` are `key.path=value` settings over the config file (`--set`). The work directory (default: the
    config's `workdir`) is checked and locked for the run; the Prefect API is PREFECT_API_URL's, else a temporary
    local one, its records in `WORK/state/prefect/server.db`. The whole log (tracebacks and third-party warnings
    included) goes to `WORK/state/logs/build-<time>-<pid>.log`, returned as `log`; an error ends in one
    `BuildFailed` line naming it.
    """
    from is4.config import load_config
    from is4.flows.cluster import require_api
    from is4.manifests.lock import workdir_lock
    from is4.pipeline.preflight import preflight

    config = Path(config)
    cfg = load_config(config, overrides)  # fail fast, before Prefect starts its local API
    require_api(cfg)  # a Dask cluster elsewhere cannot reach a temporary server on this machine's loopback
    work = preflight(cfg, Path(workdir or cfg.workdir).expanduser().resolve(), None)
    from is4.flows.build import build_is4
    from is4.flows.logs import build_log
    from is4.flows.server import prefect_api
    from is4.flows.tasks import PREFECT_STATE_DIR

    with workdir_lock(work, "is4 build"), build_log(work) as log, third_party_to_log(log):
        with prefect_api(work / PREFECT_STATE_DIR / "server.db"):
            results = build_is4(config_path=str(config.resolve()), workdir=str(work), overrides=list(overrides) or None)
    return {**results, "log": str(log)}
