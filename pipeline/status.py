"""Where a work directory stands, stage by stage (`is4 stages --workdir`), read without changing anything.

A stage is `cached` when its outputs were recorded and the flow holds a result under the key this config and these
inputs give (`stage.cache_key`): the next build reuses it. It is `stale` when it has outputs but no result under
that key (its config section, models, seed or input manifests changed since), `not run` when it has no outputs,
and `off` when the config's `stages` leave it out. Ingest's key includes its csv, known only once the run opens its
source (a demo server, a download): a `stale` ingest means "will be checked again", which costs no downloads.
"""

from __future__ import annotations

from pathlib import Path

from is4.config import BuildConfig
from is4.manifests.io import manifest_path
from is4.pipeline.registry import REGISTRY
from is4.pipeline.stage import OUTPUTS_DIR, PREFECT_STATE_DIR, Stage, cache_key

CACHED, STALE, NOT_RUN, OFF = "cached", "stale", "not run", "off"


def _has_outputs(work: Path, stage: Stage) -> bool:
    if (work / OUTPUTS_DIR / f"{stage.name}.json").is_file():
        return True
    return bool(stage.writes) and all(manifest_path(work, table).is_file() for table in stage.writes)


def stage_status(cfg: BuildConfig, workdir: str | Path) -> list[tuple[str, str]]:
    """(stage, status) for every stage of `build-is4` in order, status one of cached, stale, not run, off."""
    work = Path(workdir)
    rows = []
    for stage in REGISTRY:
        if stage.name not in cfg.stages:
            rows.append((stage.name, OFF))
        elif not _has_outputs(work, stage):
            rows.append((stage.name, NOT_RUN))
        else:
            key = cache_key(stage.provenance(cfg, work), work)
            rows.append((stage.name, CACHED if (work / PREFECT_STATE_DIR / key).is_file() else STALE))
    return rows
