"""`is4 eval`: score heatmaps on a benchmark beside the reference baselines."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from is4.cli._common import cli_errors, console


@cli_errors
def evaluate(
    release_dir: Annotated[
        Path,
        typer.Option(
            "--release",
            help="a release directory, the authors' IS4 folder, or a benchmark's ground-truth file or folder",
        ),
    ],
    predictions: Annotated[Path, typer.Option(help=".npz with one heatmap per instance id")],
    benchmark: Annotated[
        str | None,
        typer.Option(
            help="is4, vggss, flickr, avsbench-s4, avsbench-ms3, vpo-ss or vpo-ms (default: what the file names say)"
        ),
    ] = None,
    gt: Annotated[
        str | None,
        typer.Option(help="ground truth: box (the papers' tables) or mask (default: box, or what the file holds)"),
    ] = None,
    protocol: Annotated[
        str,
        typer.Option(
            help="reference (the papers' evaluation code, the default) or exact-k "
            "(cuts keep exactly K pixels, tie-safe)"
        ),
    ] = "reference",
    output: Annotated[Path | None, typer.Option(help="write the metrics (and the baselines') as JSON here")] = None,
    per_instance: Annotated[
        Path | None, typer.Option("--per-instance", help="write per-instance IoUs as Parquet here")
    ] = None,
    baselines: Annotated[
        bool, typer.Option(help="score the random, centre and oracle baselines beside the model")
    ] = True,
) -> None:
    """Score heatmaps on a benchmark: cIoU, AUC, IIoU, IAUC (+ mIoU, F-score for masks) in percent, beside baselines."""
    from is4.pipeline.evaluation import evaluate as ev
    from is4.pipeline.evaluation import metrics
    from is4.pipeline.evaluation.formats import load_ground_truth

    try:
        rules = metrics.get_protocol(protocol)
    except ValueError as exc:
        raise ev.EvaluationError(f"--protocol: {exc}") from None
    truth = load_ground_truth(release_dir, gt, benchmark=benchmark, protocol=rules)
    scored = ev.score_file(truth, predictions, rules)
    reference = {}
    if baselines:
        reference = ev.shipped_baselines(truth, rules) or {
            kind: base.summary for kind, base in ev.score_baselines(truth, rules).items()
        }
    rows = {"model": scored.summary, **reference}
    console.print(
        f"{truth.benchmark} {truth.gt} ground truth ({truth.source}), protocol {rules.name}",
        soft_wrap=True,
        highlight=False,
        markup=False,
    )
    console.print(ev.format_table(rows), soft_wrap=True, highlight=False, markup=False)
    if output:
        from is4.manifests.atomic import atomic_write_json

        baseline_rows = {"baselines": reference} if reference else {}
        atomic_write_json(output, {**scored.summary, **baseline_rows})
    if per_instance:
        ev.write_per_instance(per_instance, scored)
