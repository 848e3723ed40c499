"""Human review in `build-is4`: refresh the FiftyOne dataset, pause for reviewers, resume with `is4 review done`."""

from __future__ import annotations

import getpass
import uuid
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput
from prefect.settings import get_current_settings
from pydantic import Field

from is4.config import BuildConfig
from is4.flows.tasks import publish
from is4.manifests.errors import FatalError
from is4.pipeline.verification import undecided

DEFAULT_REVIEWER = getpass.getuser()
WAITING = "waiting for reviewers"


class ResumeError(FatalError, ValueError):
    """Paused builds cannot be resumed as asked (e.g. a flow run id that is not one)."""


class ReviewDone(RunInput):
    """What resumes a build paused for reviewers (the Prefect UI's form, or `is4 review done`)."""

    reviewer: str = Field(description="who finished the review")
    note: str = Field("", description="anything the next reader should know")


@task(name="review-dataset")
def review_dataset_task(workdir: str, config: BuildConfig, reviewer: str) -> dict[str, Any]:
    """Pull reviewers' tags into the manifest, then (re)build the FiftyOne dataset from the manifests."""
    from is4.annotation import review

    return review.refresh(
        Path(workdir), config.review, reviewer, annotate=config.annotate, segmenter=config.models.segmenter
    )


@task(name="review-sync")
def review_sync_task(workdir: str, config: BuildConfig, reviewer: str) -> dict[str, Any]:
    """Write the reviewers' decisions (FiftyOne tags) into the verification manifest."""
    from is4.annotation import review

    return publish("verify", "verify", review.sync(Path(workdir), config.review, reviewer))


def human_review(work: Path, cfg: BuildConfig) -> dict[str, Any]:
    """Build the review dataset and wait for reviewers; their decisions, or a `WAITING` status.

    On a Prefect server the flow pauses until `is4 review done` (or the UI's form) resumes it. An in-process run
    cannot pause (nothing but this process could resume it): it stops and says what to do; the next build finds
    every finished stage cached.
    """
    review_dataset_task(str(work), cfg, DEFAULT_REVIEWER)
    pending = undecided(work)
    if pending and get_current_settings().api.url is None:
        get_run_logger().warning("%d images wait for reviewers: `is4 review verify`, then build again", len(pending))
        return {
            "status": WAITING,
            "undecided": len(pending),
            "next": "is4 review verify; is4 review sync; is4 build (cached stages are skipped)",
        }
    reviewer = DEFAULT_REVIEWER
    if pending:
        get_run_logger().info("%d images wait for reviewers; resume with `is4 review done`", len(pending))
        done = pause_flow_run(wait_for_input=ReviewDone, timeout=cfg.review.pause_timeout_s, key="review")
        reviewer = done.reviewer
    summary = review_sync_task(str(work), cfg, reviewer)
    if undecided(work):
        summary["status"] = "undecided images remain: they are not annotated"
    return summary


def resume_paused_builds(reviewer: str, note: str = "", flow_run_id: str | None = None) -> list[str]:
    """Resume `build-is4` runs paused for reviewers (all of them, or one) with a ReviewDone input; their ids."""
    if flow_run_id is not None:
        try:
            uuid.UUID(flow_run_id)
        except ValueError:
            raise ResumeError(f"--flow-run {flow_run_id!r} is not a flow run id (a UUID)") from None
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
        runs = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=["build-is4"])), flow_run_filter=run_filter
        )
    for flow_run in runs:
        resume_flow_run(flow_run.id, run_input={"reviewer": reviewer, "note": note})
    return [str(r.id) for r in runs]
