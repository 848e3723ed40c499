"""One Prefect task for every stage: cached on the stage's declared key, retried on transient errors, summarised.

Results and cache records live in the work directory (`WORK/state/prefect`), so a cache hit always refers to
outputs of that work directory; a stage whose outputs are not intact runs again whatever its cache says (its own
journals then redo only what is missing).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task, unmapped
from prefect.artifacts import create_markdown_artifact
from prefect.tasks import exponential_backoff

from is4.config import BuildConfig
from is4.manifests.errors import FatalError
from is4.pipeline.registry import stage as declared
from is4.pipeline.shard import Shard
from is4.pipeline.stage import PREFECT_STATE_DIR, Stage, cache_key, provenance_current

# Errors that say the run itself cannot proceed: retrying would only repeat them.
NOT_RETRIED = (
    FatalError,
    PermissionError,
    FileNotFoundError,
    NotADirectoryError,
    IsADirectoryError,
    FileExistsError,
    MemoryError,
)
_ARTIFACT_ROWS = 50


def summary_markdown(title: str, summary: dict[str, Any]) -> str:
    """A stage summary as markdown: scalars in one table, each mapping (e.g. rejects by reason) in its own."""
    lines = [f"# {title}", "", "| what | value |", "| --- | --- |"]
    lines += [f"| {k} | {v} |" for k, v in summary.items() if not isinstance(v, dict)]
    for name, mapping in summary.items():
        if isinstance(mapping, dict) and mapping:
            lines += ["", f"## {name}", "", "| key | value |", "| --- | --- |"]
            items = list(mapping.items())
            lines += [f"| {k} | {v} |" for k, v in items[:_ARTIFACT_ROWS]]
            if len(items) > _ARTIFACT_ROWS:
                lines.append(f"| … | {len(items) - _ARTIFACT_ROWS} more |")
    return "\n".join(lines)


def publish(key: str, title: str, summary: dict[str, Any]) -> dict[str, Any]:
    """Attach a summary to the run as a markdown artifact (`<key>-summary`) and return it."""
    create_markdown_artifact(key=f"{key}-summary", markdown=summary_markdown(title, summary))
    return summary


def _cache_key(_context: Any, parameters: dict[str, Any]) -> str:
    return parameters["fingerprint"]


def _retry_transient(_task: Any, _task_run: Any, state: Any) -> bool:
    return not isinstance(state.result(raise_on_failure=False), NOT_RETRIED)


def worker_identity() -> dict[str, Any]:
    """Where a task runs: the process id and, inside a Dask worker, the worker's address (else None)."""
    address = None
    try:
        from distributed import get_worker

        address = get_worker().address
    except (ImportError, ValueError):
        pass
    return {"pid": os.getpid(), "worker": address}


def pin_torch_threads(config: BuildConfig) -> None:
    """`torch.set_num_threads(execution.torch_threads)` when set: float32 CPU bytes depend on the thread count, and
    Dask workers start with `OMP_NUM_THREADS=1` while the flow process does not."""
    threads = config.execution.torch_threads
    if threads is not None:
        import torch

        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)


@task(
    cache_key_fn=_cache_key,
    persist_result=True,
    retries=2,
    retry_delay_seconds=exponential_backoff(backoff_factor=5),
    retry_condition_fn=_retry_transient,
)
def stage_task(
    name: str,
    workdir: str,
    config: BuildConfig,
    provenance: dict[str, Any],
    fingerprint: str,
    label: str,
    options: dict[str, Any],
) -> dict[str, Any]:
    """Run one declared stage (or one shard of it, `label` e.g. `generate 0/2`) and publish its summary."""
    logger = get_run_logger()
    pin_torch_threads(config)

    def progress(done: int, total: int, message: str) -> None:
        logger.info("%s %d/%d %s", label, done, total, message)

    summary = declared(name).run(Path(workdir), config, provenance, progress=progress, **options)
    summary = {**summary, **worker_identity()}  # where it ran: in the summary and artifact, never in a manifest
    return publish(re.sub(r"[^a-z0-9]+", "-", label.lower()), label, summary)


def _summary(state: Any) -> dict[str, Any]:
    """A finished task's summary; a cache hit's (the first run's counts, not this run's) marked `cached: True`."""
    summary = state.result()
    return {**summary, "cached": True} if state.name == "Cached" else summary


class StageRunner:
    """Runs stage tasks with this build's result storage, refreshing any whose outputs are not intact."""

    def __init__(self, work: Path, cfg: BuildConfig) -> None:
        self.work, self.cfg = work, cfg
        self.storage = work / PREFECT_STATE_DIR

    def _task(self, stage: Stage, provenance: dict[str, Any]):
        # A cache hit must never stand in for outputs that were deleted, damaged, or rewritten by another config.
        fresh = stage.outputs_intact(self.work, self.cfg) and provenance_current(self.work, stage, provenance)
        return stage_task.with_options(name=stage.name, result_storage=self.storage, refresh_cache=not fresh)

    def __call__(self, stage: Stage, provenance: dict[str, Any] | None = None, **options: Any) -> dict[str, Any]:
        """Run `stage` once; `provenance` replaces the declared one (ingest's csv is known only at run time).

        A cache hit returns the first run's summary marked `cached: True` (its counts are not this run's)."""
        provenance = provenance or stage.provenance(self.cfg, self.work)
        state = self._task(stage, provenance)(
            stage.name,
            str(self.work),
            self.cfg,
            provenance,
            cache_key(provenance, self.work),
            stage.name,
            options,
            return_state=True,
        )
        return _summary(state)

    def shards(
        self, stage: Stage, n: int, provenance: dict[str, Any] | None = None, **options: Any
    ) -> list[dict[str, Any]]:
        """One task run per shard `Shard(i, n)` with `merge=False`, concurrently (Prefect `.map` on the flow's task
        runner), each with its own key (the shard, never in the stage's provenance); `options` go to every shard;
        results in order."""
        provenance = provenance or stage.provenance(self.cfg, self.work)
        shards = [Shard(i, n) for i in range(n)]
        futures = self._task(stage, provenance).map(
            unmapped(stage.name),
            unmapped(str(self.work)),
            unmapped(self.cfg),
            unmapped(provenance),
            # One shard: the whole stage's key and label (its `<stage>-summary` artifact), as an unsharded run.
            [cache_key(provenance, self.work, **({} if s.whole else {"shard": str(s)})) for s in shards],
            [stage.name if s.whole else f"{stage.name} {s}" for s in shards],
            [{"shard": s, "merge": False, **options} for s in shards],
        )
        futures.wait()
        return [_summary(future.state) for future in futures]
