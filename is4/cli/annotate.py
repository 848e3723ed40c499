"""`is4 annotate`: automatic SAM proposals for accepted images, and `refine` with annotators' clicks."""

from __future__ import annotations

import getpass
from typing import Annotated

import typer

from is4.cli._common import (
    ConfigOption,
    ReviewerOption,
    SetOption,
    WorkdirOption,
    cli_errors,
    config_and_workdir,
    console,
    run_stage,
    writing,
)

app = typer.Typer(help="SAM masks for the objects of accepted images.", invoke_without_command=True)


@app.callback()
@cli_errors
def annotate(
    ctx: typer.Context, config: ConfigOption = None, workdir: WorkdirOption = None, overrides: SetOption = None
) -> None:
    """Automatic proposals: detector boxes → SAM masks (the `annotations` manifest and reports/annotation_qa.json)."""
    if ctx.invoked_subcommand is None:
        run_stage("annotate", *config_and_workdir(config, workdir, overrides))


def parse_point(text: str) -> tuple[float, float, int]:
    """`x,y,label` in image pixels, label 1 (object) or 0 (not object)."""
    try:
        x, y, label = text.split(",")
        point = (float(x), float(y), int(label))
    except ValueError:
        raise typer.BadParameter(f"{text!r}: expected x,y,label with label 1 (object) or 0 (not object)") from None
    if point[2] not in (0, 1):
        raise typer.BadParameter(f"{text!r}: label must be 1 (object) or 0 (not object)")
    return point


def parse_box(text: str) -> list[float]:
    """`x1,y1,x2,y2` in image pixels."""
    try:
        box = [float(v) for v in text.split(",")]
    except ValueError:
        box = []
    if len(box) != 4:
        raise typer.BadParameter(f"{text!r}: expected x1,y1,x2,y2 in image pixels")
    return box


@app.command("refine")
@cli_errors
def refine(
    config: ConfigOption = None,
    workdir: WorkdirOption = None,
    instance: Annotated[
        str | None, typer.Option(help="instance id; default: every `needs-fix` sample's clicks")
    ] = None,
    point: Annotated[list[str] | None, typer.Option(help="x,y,label in image pixels (repeatable)")] = None,
    box: Annotated[str | None, typer.Option(help="x1,y1,x2,y2 in image pixels (default: the current box)")] = None,
    reviewer: ReviewerOption = getpass.getuser(),
    overrides: SetOption = None,
) -> None:
    """Re-run SAM with clicks for one instance, or for the clicks annotators left in FiftyOne."""
    from is4.annotation import review
    from is4.annotation.annotate import refine_instance

    cfg, work = config_and_workdir(config, workdir, overrides)
    with writing(cfg, work, "is4 annotate refine", []):
        if instance:
            jobs = [(instance, [parse_point(p) for p in point or []], parse_box(box) if box else None)]
        else:
            jobs = review.pending_refinements(work, cfg.review)
        for instance_id, points, job_box in jobs:
            refine_instance(work, cfg.annotate, cfg.models.segmenter, instance_id, points=points, box=job_box)
        if not instance:
            review.refresh(work, cfg.review, reviewer, annotate=cfg.annotate, segmenter=cfg.models.segmenter)
    console.print(f"refined {len(jobs)} instance(s)")
