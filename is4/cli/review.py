"""`is4 review`: FiftyOne review sessions (verify, sync) and resuming builds paused for reviewers (done)."""

from __future__ import annotations

import getpass
from pathlib import Path
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
    print_summary,
)

app = typer.Typer(help="Human verification and mask review in FiftyOne review sessions.", no_args_is_help=True)


def _review_config(
    config: Path | None,
    workdir: Path | None,
    overrides: list[str] | None,
    address: str | None = None,
    port: int | None = None,
):
    cfg, work = config_and_workdir(config, workdir, overrides)
    overrides = {k: v for k, v in (("address", address), ("port", port)) if v is not None}
    return cfg.review.model_copy(update=overrides), work, cfg


@app.command("verify")
@cli_errors
def verify(
    config: ConfigOption = None,
    workdir: WorkdirOption = None,
    view: Annotated[
        str,
        typer.Option(help="saved view: to-verify, accepted, rejected, conflicts, to-annotate, annotated, needs-fix"),
    ] = "to-verify",
    reviewer: ReviewerOption = getpass.getuser(),
    address: Annotated[str | None, typer.Option(help="App address (default: the config's, 127.0.0.1)")] = None,
    port: Annotated[int | None, typer.Option(help="App port (default: the config's)")] = None,
    overrides: SetOption = None,
) -> None:
    """Open the FiftyOne App on a saved view of this build (tag samples `accept` / `reject:<reason>`)."""
    from is4.annotation import review

    rcfg, work, cfg = _review_config(config, workdir, overrides, address, port)
    review.refresh(work, rcfg, reviewer, annotate=cfg.annotate, segmenter=cfg.models.segmenter)
    console.print(f"FiftyOne App on http://{rcfg.address}:{rcfg.port}, view {view!r}; Ctrl-C to stop")
    review.launch(work, rcfg, view, wait=True)


@app.command("predictions")
@cli_errors
def predictions(
    release: Annotated[Path, typer.Option(help="the release directory (or its ground-truth file)")],
    predictions: Annotated[Path, typer.Option(help=".npz with one heatmap per instance id (`is4 predict`)")],
    name: Annotated[
        str | None, typer.Option(help="the run's name, its field in the dataset (default: the file's stem)")
    ] = None,
    gt: Annotated[str, typer.Option(help="ground truth the IoUs are computed on: box or mask")] = "box",
    protocol: Annotated[str, typer.Option(help="reference (default) or exact-k, as in `is4 eval`")] = "reference",
    show: Annotated[bool, typer.Option("--app", help="then open the App on the `failures` view")] = False,
    config: ConfigOption = None,
    workdir: WorkdirOption = None,
    address: Annotated[str | None, typer.Option(help="App address (default: the config's, 127.0.0.1)")] = None,
    port: Annotated[int | None, typer.Option(help="App port (default: the config's)")] = None,
) -> None:
    """Load a model's heatmaps into the release's predictions dataset (one field per run) beside the ground truth,
    with saved views `failures`, `interactive-failures` and `by-category`."""
    from rich.table import Table

    from is4.annotation import review

    rcfg, work, _ = _review_config(config, workdir, address, port)
    result = review.load_predictions(release, predictions, rcfg, run=name, workdir=work, gt=gt, protocol=protocol)
    rows = result["per_category"]
    table = Table(title=f"per category ({result['dataset']})")
    for column in rows[0] if rows else []:
        table.add_column(column, justify="left" if column == "category" else "right")
    for row in rows:
        table.add_row(*("-" if v is None else str(v) for v in row.values()))
    console.print(table)
    console.print(
        f"run {result['run']!r}: {len(result['failures'])} of {result['summary']['instances']} instances with "
        f"IoU < 0.5, {len(result['interactive_failures'])} images where one object's sound lights up another"
    )
    url = review.dataset_url(result["dataset"], rcfg, "failures")
    if not show:
        console.print(f"to look at it, add --app (the App then serves {url})")
        return
    review.launch(work, rcfg, "failures", wait=True, dataset=result["dataset"])


@app.command("sync")
@cli_errors
def sync(
    config: ConfigOption = None,
    workdir: WorkdirOption = None,
    reviewer: ReviewerOption = getpass.getuser(),
    overrides: SetOption = None,
) -> None:
    """Write reviewers' decisions (FiftyOne tags) into the `verification` manifest."""
    from is4.annotation import review

    rcfg, work, _ = _review_config(config, workdir, overrides)
    print_summary("review sync", review.sync(work, rcfg, reviewer))


@app.command("done")
@cli_errors
def done(
    reviewer: ReviewerOption = getpass.getuser(),
    note: Annotated[str, typer.Option(help="a note for the build's record")] = "",
    flow_run: Annotated[str | None, typer.Option(help="resume only this flow run id")] = None,
) -> None:
    """Resume `build-is4` runs paused for reviewers (on the Prefect server in PREFECT_API_URL)."""
    from prefect.settings import get_current_settings

    from is4.flows.review import ResumeError, resume_paused_builds

    if not get_current_settings().api.url:
        raise ResumeError(
            "PREFECT_API_URL is not set: `is4 review done` resumes builds paused on a Prefect server "
            "(`is4 serve`); an in-process `is4 build` does not pause, it stops: run it again after "
            "`is4 review sync`"
        )
    resumed = resume_paused_builds(reviewer, note, flow_run)
    console.print(f"resumed {len(resumed)} paused build(s): {', '.join(resumed) or '-'}")
    if not resumed:
        raise typer.Exit(code=1)
