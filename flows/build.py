"""The `build-is4` Prefect flow: the declared stages in order, each a cached task (`flows/tasks.py`).

Most stages run through one uniform path: a sharded stage (`Stage.merge`) as a subflow of shards and its merge on
the configured task runner (`flows/cluster.py`), any other as one task. The few that really differ have a hook here:
ingest opens its source (the demo's loopback server lives only as long as the stage) and exports the training
layout, verify applies the automatic policy or pauses for reviewers, annotate refreshes the review dataset.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger

from is4.config import BuildConfig, load_config
from is4.flows.cluster import require_api, run_sharded
from is4.flows.review import DEFAULT_REVIEWER, WAITING, human_review, review_dataset_task
from is4.flows.tasks import StageRunner
from is4.pipeline.ingest.sources import open_ingest_source
from is4.pipeline.registry import EXPORT, REGISTRY
from is4.pipeline.stage import Stage, record_outputs, remove_orphaned_temporaries

Hook = Callable[[StageRunner, Stage], dict[str, Any]]


def resolve_workdir(cfg: BuildConfig, workdir: str | None) -> Path:
    """The work directory: the override, else the config's, made absolute."""
    return Path(workdir or cfg.workdir).expanduser().resolve()


def _uniform(run: StageRunner, stage: Stage) -> dict[str, Any]:
    return {stage.name: run_sharded(run, stage) if stage.sharded else run(stage)}


def _ingest(run: StageRunner, stage: Stage) -> dict[str, Any]:
    with open_ingest_source(run.cfg, run.work) as source:
        provenance = stage.provenance(run.cfg, run.work, files={"csv": source.csv_path})
        results = {
            stage.name: run_sharded(
                run, stage, provenance, csv_path=str(source.csv_path), url_template=source.url_template
            )
        }
    if run.cfg.ingest.export_training_layout:
        results[EXPORT.name] = run(EXPORT)
    return results


def _verify(run: StageRunner, stage: Stage) -> dict[str, Any]:
    if run.cfg.review.mode == "auto":
        return _uniform(run, stage)
    return {stage.name: human_review(run.work, run.cfg)}


def _annotate(run: StageRunner, stage: Stage) -> dict[str, Any]:
    results = _uniform(run, stage)
    if run.cfg.review.mode == "human":
        review_dataset_task(str(run.work), run.cfg, DEFAULT_REVIEWER)  # annotators see the masks
    return results


HOOKS: dict[str, Hook] = {"ingest": _ingest, "verify": _verify, "annotate": _annotate}


@flow(name="build-is4")
def build_is4(config_path: str, workdir: str | None = None, overrides: list[str] | None = None) -> dict[str, Any]:
    """Build IS4 and its training data into one work directory, stage by stage (config `stages`); `overrides` are
    `key.path=value` settings applied over the file (`is4 build --set`)."""
    cfg = load_config(config_path, overrides or ())
    require_api(cfg)  # before any stage: a dask build that would lose its records refuses at once
    work = resolve_workdir(cfg, workdir)
    work.mkdir(parents=True, exist_ok=True)
    run = StageRunner(work, cfg)
    results: dict[str, Any] = {"workdir": str(work), "profile": cfg.profile}
    planned = [stage for stage in REGISTRY if stage.name in cfg.stages]
    for number, stage in enumerate(planned, start=1):
        get_run_logger().info("build-is4 stage %d/%d: %s", number, len(planned), stage.name)
        results |= HOOKS.get(stage.name, _uniform)(run, stage)
        record_outputs(work, stage)  # also after a sharded stage's merge: what `outputs_intact` checks next
        remove_orphaned_temporaries(work, stage)  # a killed shard's half-written file (the build holds WORK alone)
        if results.get("verify", {}).get("status") == WAITING:
            break  # later stages need the reviewers' decisions
    return results
