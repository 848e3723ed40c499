"""The `build-is4` Prefect flow: one task per stage, cached on inputs + config, retried on transient errors.

Task results and cache records are stored inside the work directory (`WORK/state/prefect`), so a cache hit always
refers to outputs that exist in that work directory; deleting the work directory forgets the cache with it.
Stages resume on their own as well (journals), so a cache miss after an interruption redoes only missing work.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.tasks import exponential_backoff

import is4
from is4.config import BuildConfig, ConfigError, IngestConfig, load_config
from is4.manifests.io import ManifestError, manifest_path
from is4.pipeline.export import DEFAULT_EXPORT_DIR, export_training_layout
from is4.pipeline.ffmpeg_tools import FFmpegNotFoundError
from is4.pipeline.ingest import run_ingest
from is4.pipeline.sources import open_ingest_source
from is4.pipeline.vggsound_csv import CsvError

PREFECT_STATE_DIR = "state/prefect"
# Errors that say the run itself cannot proceed: retrying would only repeat them.
_NOT_RETRIED = (ConfigError, CsvError, FFmpegNotFoundError, ManifestError, PermissionError, ValueError)


def _sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def stage_fingerprint(stage: str, **parts: Any) -> str:
    """Cache key material for a stage: its name, the is4 version and everything its output depends on."""
    payload = json.dumps({"stage": stage, "is4": is4.__version__, **parts}, sort_keys=True, default=str)
    return f"{stage}-{hashlib.sha256(payload.encode()).hexdigest()[:32]}"


def _cache_key(_context: Any, parameters: dict[str, Any]) -> str:
    return parameters["fingerprint"]


def _retry_transient(_task: Any, _task_run: Any, state: Any) -> bool:
    exc = state.result(raise_on_failure=False)
    return not isinstance(exc, _NOT_RETRIED)


def _stage_task(name: str):
    return task(
        name=name,
        cache_key_fn=_cache_key,
        persist_result=True,
        retries=2,
        retry_delay_seconds=exponential_backoff(backoff_factor=5),
        retry_condition_fn=_retry_transient,
    )


def _summary_markdown(title: str, counts: dict[str, Any], failures: dict[str, int]) -> str:
    lines = [f"# {title}", "", "| what | count |", "| --- | --- |"]
    lines += [f"| {k} | {v} |" for k, v in counts.items()]
    if failures:
        lines += ["", "## Rejects by reason", "", "| reason | rows |", "| --- | --- |"]
        lines += [f"| {k} | {v} |" for k, v in failures.items()]
    return "\n".join(lines)


@_stage_task("ingest")
def ingest_task(
    csv_path: str, workdir: str, ingest: IngestConfig, seed: int, url_template: str | None, fingerprint: str
) -> dict[str, Any]:
    """Run the ingest stage and publish its summary artifact."""
    if url_template is not None:
        ingest = ingest.model_copy(
            update={"download": ingest.download.model_copy(update={"url_template": url_template})}
        )
    logger = get_run_logger()

    def progress(done: int, total: int, message: str) -> None:
        logger.info("ingest %d/%d %s", done, total, message)

    summary = run_ingest(csv_path, workdir, ingest, seed=seed, progress=progress).as_dict()
    counts = {k: summary[k] for k in ("rows", "selected", "ok", "failed", "invalid", "reused", "processed")}
    create_markdown_artifact(
        key="ingest-summary",
        markdown=_summary_markdown("Ingest", counts, summary["failures_by_reason"]),
        description=f"clips manifest: {summary['manifest']}",
    )
    return summary


@_stage_task("export-training-layout")
def export_task(workdir: str, fingerprint: str) -> dict[str, Any]:
    """Export frames/, audio/ and ids.csv for existing localisation trainers."""
    out, n = export_training_layout(workdir)
    create_markdown_artifact(
        key="export-summary", markdown=_summary_markdown("Training layout", {"clips": n, "directory": str(out)}, {})
    )
    return {"directory": str(out), "clips": n}


def resolve_workdir(cfg: BuildConfig, workdir: str | None) -> Path:
    """The work directory: the override, else the config's, made absolute."""
    return Path(workdir or cfg.workdir).expanduser().resolve()


@flow(name="build-is4")
def build_is4(config_path: str, workdir: str | None = None) -> dict[str, Any]:
    """Build IS4 and its training data into one work directory, stage by stage."""
    cfg = load_config(config_path)
    work = resolve_workdir(cfg, workdir)
    work.mkdir(parents=True, exist_ok=True)
    storage = work / PREFECT_STATE_DIR
    results: dict[str, Any] = {"workdir": str(work), "profile": cfg.profile}
    with open_ingest_source(cfg, work) as source:
        fingerprint = stage_fingerprint(
            "ingest",
            workdir=str(work),
            csv_sha256=_sha256_file(source.csv_path),
            seed=cfg.seed,
            # The demo server's port changes every run; it does not change what is downloaded.
            ingest=cfg.ingest.model_dump(mode="json", exclude={"download": {"url_template"}}),
            url_template=None if source.url_template else cfg.ingest.download.url_template,
        )
        # A cache hit must never stand in for outputs that were deleted: refresh when the manifest is gone.
        refresh = not manifest_path(work, "clips").is_file()
        results["ingest"] = ingest_task.with_options(result_storage=storage, refresh_cache=refresh)(
            str(source.csv_path), str(work), cfg.ingest, cfg.seed, source.url_template, fingerprint
        )
    if cfg.ingest.export_training_layout:
        clips = manifest_path(work, "clips")
        fingerprint = stage_fingerprint(
            "export", workdir=str(work), clips_sha256=_sha256_file(clips), out=DEFAULT_EXPORT_DIR
        )
        refresh = not (work / DEFAULT_EXPORT_DIR / "ids.csv").is_file()
        results["export"] = export_task.with_options(result_storage=storage, refresh_cache=refresh)(
            str(work), fingerprint
        )
    return results
