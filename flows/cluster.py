"""Sharded stages as subflows on the configured task runner: local threads, or Dask through `prefect-dask`.

A sharded stage (one whose declaration names a merge, `Stage.merge`) is one subflow of `build-is4` named after the
stage: it maps one cached `stage_task` per `Shard(i, n)` over the runner, waits for every shard, then runs the
stage's merge in the flow process (the one writer of the stage's manifest). The Dask cluster exists only while that subflow runs, never
across the human-review pause. The graph stays flat: the flow submits the shards, nothing waits inside a worker.
When every shard is a cache hit, the stage's manifest is intact and was written with this provenance (the cache's
rule), so nothing is merged and the stage reports `cached` only: a cache hit's summary holds the first run's counts
and process, not this run's.

`execution.runner: dask` needs the `[cluster]` extra. With `execution.dask.address` set, the workers are other
processes (often other machines): they reach the Prefect API only through the URL in the task's settings, so a
build without `PREFECT_API_URL` is refused. Before mapping, every worker reports its project and library versions
(`Client.run`); a worker that differs (or cannot import the project) fails the stage, named.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.context import FlowRunContext
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from is4.config import BuildConfig
from is4.flows.tasks import StageRunner, publish
from is4.manifests.errors import FatalError
from is4.pipeline.registry import stage as declared
from is4.pipeline.stage import Stage

# Worker facts compared against the flow's before any shard is mapped.
_CHECKED = ("is4", "torch", "diffusers", "transformers", "prefect", "python")


class ClusterError(FatalError, RuntimeError):
    """The configured cluster cannot run this build (no Prefect API for remote workers, mismatched workers)."""


def environment_facts() -> dict[str, str]:
    """The versions that must agree between the flow and every worker (they decide the bytes and the pickles)."""
    import platform

    import diffusers
    import prefect
    import torch
    import transformers

    import is4

    return {
        "is4": is4.__version__,
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "prefect": prefect.__version__,
        "python": platform.python_version(),
    }


def configured_api_url() -> str | None:
    """The Prefect API the user configured (environment, else the active profile); None means Prefect's temporary
    in-process server, which inside a flow run also shows up as `PREFECT_API_URL` but no other machine can reach."""
    from prefect.context import get_settings_context

    url = os.environ.get("PREFECT_API_URL")
    if url:
        return url
    settings = get_settings_context().profile.settings
    return next((str(v) for k, v in settings.items() if getattr(k, "name", None) == "PREFECT_API_URL" and v), None)


def require_api(cfg: BuildConfig) -> None:
    """Refuse `runner: dask` with a scheduler address but no `PREFECT_API_URL` (remote records would be lost)."""
    if cfg.execution.runner == "dask" and cfg.execution.dask.address and not configured_api_url():
        raise ClusterError(
            f"execution.dask.address is {cfg.execution.dask.address} but PREFECT_API_URL is not set: workers on "
            "other machines need one real Prefect server (start `prefect server start` and export its URL)"
        )


def make_task_runner(cfg: BuildConfig, n_shards: int) -> TaskRunner:
    """The task runner of a sharded subflow: threads (`runner: local`) or a `DaskTaskRunner`."""
    ex = cfg.execution
    if ex.runner == "local":
        return ThreadPoolTaskRunner(max_workers=n_shards)
    try:
        from prefect_dask import DaskTaskRunner
    except ImportError as exc:
        raise ClusterError(
            f"execution.runner is dask but prefect-dask is not installed ({exc}): pip install 'is4-builder[cluster]'"
        ) from None
    if ex.dask.address:
        return DaskTaskRunner(address=ex.dask.address)
    return DaskTaskRunner(
        cluster_class="distributed.LocalCluster",
        cluster_kwargs={
            "n_workers": ex.dask.n_workers,
            "threads_per_worker": ex.dask.threads_per_worker,
            "processes": True,
            "dashboard_address": None,
            "host": "127.0.0.1",
        },
    )


def check_workers(client: Any, expected: dict[str, str]) -> list[str]:
    """Every worker's versions against `expected`; raises ClusterError naming the first worker that differs."""
    reports = client.run(environment_facts, on_error="return")
    if not reports:
        raise ClusterError(f"the Dask cluster at {client.scheduler.address} has no workers")
    for address, facts in sorted(reports.items()):
        if isinstance(facts, BaseException):
            raise ClusterError(f"Dask worker {address} cannot run the project's code: {type(facts).__name__}: {facts}")
        wrong = {k: (facts.get(k), expected[k]) for k in _CHECKED if facts.get(k) != expected[k]}
        if wrong:
            what = ", ".join(f"{k} {got} (flow: {want})" for k, (got, want) in wrong.items())
            raise ClusterError(f"Dask worker {address} has a different environment: {what}")
    return sorted(reports)


def check_resources(client: Any, stage: str, resources: dict[str, float] | None) -> None:
    """Refuse a stage whose `execution.resources` no worker offers (Dask would wait for such a worker forever)."""
    if not resources:
        return
    offered = [w.get("resources") or {} for w in client.scheduler_info()["workers"].values()]
    if not any(all(have.get(k, 0) >= v for k, v in resources.items()) for have in offered):
        wanted = " ".join(f"{k}={v:g}" for k, v in resources.items())
        raise ClusterError(
            f"execution.resources.{stage} asks for {wanted} but no Dask worker offers it "
            f"(start workers with `dask worker ... --resources {wanted}`)"
        )


@contextlib.contextmanager
def _annotated(cfg: BuildConfig, stage: Stage) -> Iterator[None]:
    resources = cfg.execution.resources.get(stage.name)  # type: ignore[call-overload]
    if cfg.execution.runner == "dask" and resources:
        import dask

        with dask.annotate(resources=dict(resources)):
            yield
    else:
        yield


@task(name="merge")
def merge_task(
    name: str,
    workdir: str,
    config: BuildConfig,
    provenance: dict[str, Any],
    shards: list[dict[str, Any]],
    options: dict[str, Any],
) -> dict[str, Any]:
    """The one writer of a sharded stage's manifest, after all its shards: publishes the merged summary (naming the
    shards that were cache hits: their counts are their first run's)."""
    summary = declared(name).load_merge()(Path(workdir), config, provenance, shards, **options)
    cached = [s.get("shard", "0/1") for s in shards if s.get("cached")]
    title = f"{name} (merged" + (f"; cached shards {', '.join(cached)}: counts of their first run)" if cached else ")")
    return publish(f"{name}-merged", title, {**summary, **({"cached_shards": cached} if cached else {})})


@flow(name="sharded-stage")
def sharded_flow(
    name: str, workdir: str, config: BuildConfig, provenance: dict[str, Any], options: dict[str, Any]
) -> dict[str, Any]:
    """Map the stage's shards over this subflow's task runner, then merge them in the flow process."""
    stage = declared(name)
    n = config.execution.shards_of(name)
    run = StageRunner(Path(workdir), config)
    workers: list[str] = []
    if config.execution.runner == "dask":
        context = FlowRunContext.get()
        client = context.task_runner.client  # type: ignore[union-attr]
        workers = check_workers(client, environment_facts())
        check_resources(client, name, config.execution.resources.get(name))  # type: ignore[call-overload]
    with _annotated(config, stage):
        shards = run.shards(stage, n, provenance, **options)
    if all(s.get("cached") for s in shards):  # outputs intact and of this provenance: nothing ran, nothing to merge
        return {"cached": True, "shards": n, "workers": workers}
    return {
        **merge_task(name, workdir, config, provenance, shards, options),
        "shards": n,
        "placement": [
            {"cached": True} if s.get("cached") else {k: s.get(k) for k in ("pid", "worker")} for s in shards
        ],
        "workers": workers,
    }


def run_sharded(
    run: StageRunner, stage: Stage, provenance: dict[str, Any] | None = None, **options: Any
) -> dict[str, Any]:
    """Run a sharded stage as a subflow named after it, on the configured runner (checked before it starts)."""
    require_api(run.cfg)
    n = run.cfg.execution.shards_of(stage.name)
    subflow = sharded_flow.with_options(name=stage.name, task_runner=make_task_runner(run.cfg, n))
    return subflow(stage.name, str(run.work), run.cfg, provenance or stage.provenance(run.cfg, run.work), options)
