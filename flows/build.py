"""The `build-is4` Prefect flow: one task per stage, cached on inputs + config, retried on transient errors.

Task results and cache records are stored inside the work directory (`WORK/state/prefect`), so a cache hit always
refers to outputs that exist in that work directory; deleting the work directory forgets the cache with it, and a
stage whose output is missing runs again whatever its cache says. Stages resume on their own as well (journals),
so a cache miss after an interruption redoes only missing work.
"""

from __future__ import annotations

import getpass
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task, unmapped
from prefect.artifacts import create_markdown_artifact
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput
from prefect.settings import get_current_settings
from prefect.tasks import exponential_backoff
from pydantic import Field

import is4
from is4.config import BuildConfig, ConfigError, IngestConfig, ModelRef, load_config
from is4.manifests.checksum import json_sha256, sha256_if_exists
from is4.manifests.io import ManifestError, manifest_path, read_manifest
from is4.manifests.schema import TABLES
from is4.pipeline import stages
from is4.pipeline.ingest.export import DEFAULT_EXPORT_DIR, export_training_layout
from is4.pipeline.common.ffmpeg_tools import FFmpegNotFoundError
from is4.pipeline.ingest.run import run_ingest
from is4.pipeline.ingest.sources import open_ingest_source
from is4.pipeline.verification import auto_verify, undecided
from is4.pipeline.ingest.vggsound_csv import CsvError

PREFECT_STATE_DIR = "state/prefect"
DEFAULT_REVIEWER = getpass.getuser()
# Errors that say the run itself cannot proceed: retrying would only repeat them.
_NOT_RETRIED = (ConfigError, CsvError, FFmpegNotFoundError, ManifestError, PermissionError, ValueError)
_ARTIFACT_ROWS = 50


def stage_fingerprint(stage: str, **parts: Any) -> str:
    """Cache key for a stage: its name, the is4 version and everything its output depends on."""
    return f"{stage}-{json_sha256({'stage': stage, 'is4': is4.__version__, **parts})[:32]}"


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


def _publish(stage: str, summary: dict[str, Any]) -> dict[str, Any]:
    create_markdown_artifact(key=f"{stage}-summary", markdown=summary_markdown(stage, summary))
    return summary


@_stage_task("ingest")
def ingest_task(
    csv_path: str, workdir: str, ingest: IngestConfig, seed: int, url_template: str | None, fingerprint: str
) -> dict[str, Any]:
    """Download, validate and extract the clips of a VGGSound csv."""
    if url_template is not None:
        ingest = ingest.model_copy(
            update={"download": ingest.download.model_copy(update={"url_template": url_template})}
        )
    logger = get_run_logger()

    def progress(done: int, total: int, message: str) -> None:
        logger.info("ingest %d/%d %s", done, total, message)

    return _publish("ingest", run_ingest(csv_path, workdir, ingest, seed=seed, progress=progress).as_dict())


@_stage_task("export-training-layout")
def export_task(workdir: str, fingerprint: str) -> dict[str, Any]:
    """Export frames/, audio/ and ids.csv for existing localisation trainers."""
    out, n = export_training_layout(workdir)
    return _publish("export", {"clips": n, "directory": str(out)})


@_stage_task("categories")
def categories_task(workdir: str, config: BuildConfig, fingerprint: str) -> dict[str, Any]:
    """VGG-SS labels → sounding objects."""
    return _publish("categories", stages.categories_stage(Path(workdir), config))


@_stage_task("prompts")
def prompts_task(workdir: str, config: BuildConfig, fingerprint: str) -> dict[str, Any]:
    """Category pairs × templates × styles."""
    return _publish("prompts", stages.prompts_stage(Path(workdir), config))


@_stage_task("generate")
def generate_task(workdir: str, config: BuildConfig, shards: int, shard: int, fingerprint: str) -> dict[str, Any]:
    """Stable Diffusion images for shard `shard` of `shards`."""
    summary = stages.generate_stage(Path(workdir), config, shard=(shard, shards))
    create_markdown_artifact(key=f"generate-summary-shard-{shard}-of-{shards}",
                             markdown=summary_markdown(f"generate {shard}/{shards}", summary))
    return summary


@_stage_task("prescreen")
def prescreen_task(workdir: str, config: BuildConfig, fingerprint: str) -> dict[str, Any]:
    """CLIP scores that order the verification queue."""
    return _publish("prescreen", stages.prescreen_stage(Path(workdir), config))


@_stage_task("verify-auto")
def verify_auto_task(workdir: str, fingerprint: str) -> dict[str, Any]:
    """The automatic policy that stands in for reviewers (demo profile): pending images are accepted."""
    return _publish("verify", auto_verify(Path(workdir), now=datetime.now(UTC)))


@task(name="review-dataset")
def review_dataset_task(workdir: str, config: BuildConfig, reviewer: str) -> dict[str, Any]:
    """Pull reviewers' tags into the manifest, then (re)build the FiftyOne dataset from the manifests."""
    from is4.annotation import review

    return review.refresh(Path(workdir), config.review, reviewer, annotate=config.annotate,
                          segmenter=config.models.segmenter)


@task(name="review-sync")
def review_sync_task(workdir: str, config: BuildConfig, reviewer: str) -> dict[str, Any]:
    """Write the reviewers' decisions (FiftyOne tags) into the verification manifest."""
    from is4.annotation import review

    return _publish("verify", review.sync(Path(workdir), config.review, reviewer))


@_stage_task("annotate")
def annotate_task(workdir: str, config: BuildConfig, fingerprint: str) -> dict[str, Any]:
    """SAM masks for both objects of every accepted image, from detector boxes."""
    from is4.annotation.annotate import annotate_stage

    return _publish("annotate", annotate_stage(workdir, config))


@_stage_task("match")
def match_task(workdir: str, config: BuildConfig, fingerprint: str) -> dict[str, Any]:
    """A VGGSound clip of its category for every annotated object."""
    return _publish("match", stages.match_stage(Path(workdir), config))


@_stage_task("caption")
def caption_task(workdir: str, config: BuildConfig, fingerprint: str) -> dict[str, Any]:
    """Image caption, audio caption and sounding-object phrase per item (cached per item as well)."""
    return _publish("caption", stages.caption_stage(Path(workdir), config))


@flow(name="caption")
def caption_flow(workdir: str, config: BuildConfig) -> dict[str, Any]:
    """The LLM-guidance captions as a subflow of `build-is4` (left out when `caption` is not in `stages`)."""
    work = Path(workdir)
    fingerprint = stage_fingerprint(
        "caption", workdir=workdir, captions=config.captions.model_dump(mode="json"),
        models={role: _model_key(getattr(config.models, role))
                for role in ("image_captioner", "audio_captioner", "object_phrase")},
        # the sources are named after the manifests they read (clips, instances)
        **{f"{table}_sha256": sha256_if_exists(manifest_path(work, table)) for table in config.captions.sources},
    )
    return _StageRunner(work)(caption_task, outputs_intact(work, "captions"), workdir, config,
                              fingerprint=fingerprint)


@_stage_task("release")
def release_task(workdir: str, config: BuildConfig, fingerprint: str) -> dict[str, Any]:
    """The packaged, verified release."""
    return _publish("release", stages.release_stage(Path(workdir), config))


class ReviewDone(RunInput):
    """What resumes a build paused for reviewers (the Prefect UI's form, or `is4 review done`)."""

    reviewer: str = Field(description="who finished the review")
    note: str = Field("", description="anything the next reader should know")


def resolve_workdir(cfg: BuildConfig, workdir: str | None) -> Path:
    """The work directory: the override, else the config's, made absolute."""
    return Path(workdir or cfg.workdir).expanduser().resolve()


def outputs_intact(work: Path, table: str, skip_columns: tuple[str, ...] = ()) -> bool:
    """True when a manifest exists, validates, and every file it lists (but `skip_columns`) is present."""
    try:
        frame = read_manifest(work, table)
    except ManifestError:
        return False
    columns = [c for c in TABLES[table].path_columns if c not in skip_columns]
    return all((work / p).is_file() for c in columns if c in frame.columns for p in frame[c].dropna())


class _StageRunner:
    """Runs stage tasks with this build's result storage, refreshing any whose outputs are not intact."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.storage = work / PREFECT_STATE_DIR

    def __call__(self, stage_task: Callable[..., dict[str, Any]], intact: bool, *args: Any,
                 fingerprint: str) -> dict[str, Any]:
        # A cache hit must never stand in for outputs that were deleted.
        runnable = stage_task.with_options(result_storage=self.storage, refresh_cache=not intact)
        return runnable(*args, fingerprint=fingerprint)

    def map(self, stage_task: Callable[..., dict[str, Any]], intact: bool, *args: Any,
            fingerprints: list[str], **mapped: list[Any]) -> list[dict[str, Any]]:
        """One task run per element of the `mapped` lists (e.g. shards), concurrently; their results in order."""
        runnable = stage_task.with_options(result_storage=self.storage, refresh_cache=not intact)
        futures = runnable.map(*(unmapped(a) for a in args), fingerprint=fingerprints, **mapped)
        return [future.result() for future in futures]


def _ingest(run: _StageRunner, cfg: BuildConfig, results: dict[str, Any]) -> None:
    work = run.work
    with open_ingest_source(cfg, work) as source:
        fingerprint = stage_fingerprint(
            "ingest",
            workdir=str(work),
            csv_sha256=sha256_if_exists(source.csv_path),
            seed=cfg.seed,
            # The demo server's port changes every run; it does not change what is downloaded.
            ingest=cfg.ingest.model_dump(mode="json", exclude={"download": {"url_template"}}),
            url_template=None if source.url_template else cfg.ingest.download.url_template,
        )
        # Downloaded sections may be deleted to save disk: the extracted media is what must be there.
        results["ingest"] = run(
            ingest_task, outputs_intact(work, "clips", skip_columns=("source_path",)),
            str(source.csv_path), str(work), cfg.ingest, cfg.seed, source.url_template, fingerprint=fingerprint,
        )
    if cfg.ingest.export_training_layout:
        fingerprint = stage_fingerprint("export", workdir=str(work),
                                        clips_sha256=sha256_if_exists(manifest_path(work, "clips")))
        results["export"] = run(export_task, (work / DEFAULT_EXPORT_DIR / "ids.csv").is_file(), str(work),
                                fingerprint=fingerprint)


@flow(name="build-is4")
def build_is4(config_path: str, workdir: str | None = None) -> dict[str, Any]:
    """Build IS4 and its training data into one work directory, stage by stage (config `stages`)."""
    cfg = load_config(config_path)
    work = resolve_workdir(cfg, workdir)
    work.mkdir(parents=True, exist_ok=True)
    run = _StageRunner(work)
    results: dict[str, Any] = {"workdir": str(work), "profile": cfg.profile}
    if "ingest" in cfg.stages:
        _ingest(run, cfg, results)
    if "categories" in cfg.stages:
        overrides = Path(cfg.categories.overrides) if cfg.categories.overrides else None
        fingerprint = stage_fingerprint(
            "categories", workdir=str(work), categories=cfg.categories.model_dump(mode="json"),
            overrides_sha256=sha256_if_exists(overrides) if overrides else None,
            llm=cfg.models.object_phrase.model_dump() if cfg.categories.llm_proposals and cfg.models.object_phrase
            else None,
        )
        results["categories"] = run(categories_task, outputs_intact(work, "categories"), str(work), cfg,
                                    fingerprint=fingerprint)
    if "prompts" in cfg.stages:
        fingerprint = stage_fingerprint(
            "prompts", workdir=str(work), seed=cfg.seed, prompts=cfg.prompts.model_dump(mode="json"),
            categories_sha256=sha256_if_exists(manifest_path(work, "categories")),
        )
        results["prompts"] = run(prompts_task, outputs_intact(work, "prompts"), str(work), cfg,
                                 fingerprint=fingerprint)
    if "generate" in cfg.stages:
        results["generate"] = _generate(run, cfg)
    if "prescreen" in cfg.stages:
        fingerprint = stage_fingerprint(
            "prescreen", workdir=str(work), prescreen=cfg.prescreen.model_dump(mode="json"),
            model=_model_key(cfg.models.prescreen), images_sha256=sha256_if_exists(manifest_path(work, "images")),
            categories_sha256=sha256_if_exists(manifest_path(work, "categories")),
        )
        results["prescreen"] = run(prescreen_task, outputs_intact(work, "prescreen"), str(work), cfg,
                                   fingerprint=fingerprint)
    if "verify" in cfg.stages and not _verify(run, cfg, results):
        return results  # waiting for reviewers: later stages need their decisions
    if "annotate" in cfg.stages:
        fingerprint = stage_fingerprint(
            "annotate", workdir=str(work), annotate=cfg.annotate.model_dump(mode="json"),
            segmenter=_model_key(cfg.models.segmenter), detector=_model_key(cfg.models.detector),
            images_sha256=sha256_if_exists(manifest_path(work, "images")),
            verification_sha256=sha256_if_exists(manifest_path(work, "verification")),
        )
        results["annotate"] = run(annotate_task, outputs_intact(work, "annotations"), str(work), cfg,
                                  fingerprint=fingerprint)
        if cfg.review.mode == "human":
            review_dataset_task(str(work), cfg, DEFAULT_REVIEWER)  # annotators see the masks
    if "match" in cfg.stages:
        fingerprint = stage_fingerprint(
            "match", workdir=str(work), seed=cfg.seed, match=cfg.match.model_dump(mode="json"),
            excluded_sha256=[sha256_if_exists(Path(p)) for p in cfg.match.exclude_clip_lists],
            **{f"{t}_sha256": sha256_if_exists(manifest_path(work, t))
               for t in ("annotations", "clips", "categories", "verification")},
        )
        results["match"] = run(match_task, outputs_intact(work, "instances"), str(work), cfg, fingerprint=fingerprint)
    if "caption" in cfg.stages:
        results["caption"] = caption_flow(str(work), cfg)
    if "release" in cfg.stages:
        archive = work / "releases" / f"is4-{cfg.release.version}.tar.gz"
        fingerprint = stage_fingerprint(
            "release", workdir=str(work), release=cfg.release.model_dump(mode="json"),
            config=cfg.model_dump(mode="json"),
            **{f"{t}_sha256": sha256_if_exists(manifest_path(work, t))
               for t in ("instances", "annotations", "images", "clips", "categories", "verification")},
        )
        results["release"] = run(release_task, archive.is_file(), str(work), cfg, fingerprint=fingerprint)
    return results


def _verify(run: _StageRunner, cfg: BuildConfig, results: dict[str, Any]) -> bool:
    """Decide every image: the automatic policy, or human reviewers (pausing for them on a Prefect server).

    Returns False when the build has to stop and wait for reviewers (an in-process run cannot pause: nothing but
    this process could resume it).
    """
    work = run.work
    if cfg.review.mode == "auto":
        fingerprint = stage_fingerprint("verify-auto", workdir=str(work),
                                        images_sha256=sha256_if_exists(manifest_path(work, "images")),
                                        prescreen_sha256=sha256_if_exists(manifest_path(work, "prescreen")))
        results["verify"] = run(verify_auto_task, not undecided(work), str(work), fingerprint=fingerprint)
        return True
    review_dataset_task(str(work), cfg, DEFAULT_REVIEWER)
    pending = undecided(work)
    if pending and get_current_settings().api.url is None:
        get_run_logger().warning("%d images wait for reviewers: `is4 review verify`, then build again", len(pending))
        results["verify"] = {"status": "waiting for reviewers", "undecided": len(pending),
                             "next": "is4 review verify; is4 review sync; is4 build (cached stages are skipped)"}
        return False
    reviewer = DEFAULT_REVIEWER
    if pending:
        get_run_logger().info("%d images wait for reviewers; resume with `is4 review done`", len(pending))
        done = pause_flow_run(wait_for_input=ReviewDone, timeout=cfg.review.pause_timeout_s, key="review")
        reviewer = done.reviewer
    results["verify"] = review_sync_task(str(work), cfg, reviewer)
    if undecided(work):
        results["verify"]["status"] = "undecided images remain: they are not annotated"
    return True


def _model_key(ref: ModelRef | None) -> dict[str, Any] | None:
    return ref.model_dump(mode="json") if ref else None


def _generate(run: _StageRunner, cfg: BuildConfig) -> dict[str, Any]:
    """Map the generate task over `generate.shards` disjoint shards; the last to finish writes the full manifest."""
    work, n = run.work, cfg.generate.shards
    common = {"workdir": str(work), "generate": cfg.generate.model_dump(mode="json"),
              "model": _model_key(cfg.models.image_generator),
              "prompts_sha256": sha256_if_exists(manifest_path(work, "prompts"))}
    fingerprints = [stage_fingerprint("generate", shard=f"{i}/{n}", **common) for i in range(n)]
    shards = run.map(generate_task, outputs_intact(work, "images"), str(work), cfg, n,
                     fingerprints=fingerprints, shard=list(range(n)))
    return {"shards": n, "generated": sum(s["generated"] for s in shards),
            "reused": sum(s["reused"] for s in shards), "flagged": sum(s["flagged"] for s in shards),
            "images": max(s["images"] for s in shards), "model_revision": shards[0]["model_revision"]}


def resume_paused_builds(reviewer: str, note: str = "", flow_run_id: str | None = None) -> list[str]:
    """Resume `build-is4` runs paused for reviewers (all of them, or one) with a ReviewDone input; their ids."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterId,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.flow_runs import resume_flow_run

    run_filter = FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED])))
    if flow_run_id:
        run_filter.id = FlowRunFilterId(any_=[flow_run_id])
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["build-is4"])),
                                     flow_run_filter=run_filter)
    for flow_run in runs:
        resume_flow_run(flow_run.id, run_input={"reviewer": reviewer, "note": note})
    return [str(r.id) for r in runs]
