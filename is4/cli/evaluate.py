"""`is4 eval`: score heatmaps on a benchmark beside the reference baselines."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from is4.cli._common import cli_errors, console
from is4.manifests.inputs import check_readable
from is4.pipeline.evaluation.extended import PREDICTIONS as EXTENDED_PREDICTIONS
from is4.pipeline.evaluation.extended import RANGE_NOTES as EXTENDED_RANGES
from is4.pipeline.evaluation.formats import BENCHMARKS, EMPTY_RULES, FORMATS
from is4.pipeline.evaluation.metrics import MAP_PATHS, MIOU_MEANS
from is4.pipeline.evaluation.robust import FPR_RULES
from is4.pipeline.evaluation.suites import SUITE
from is4.pipeline.evaluation.tasks import TASK

_DEFAULT_IDS = "; ".join(f"{f.name}: {f.default_ids}" for f in FORMATS if f.default_ids)


@cli_errors
def evaluate(
    release_dir: Annotated[
        Path,
        typer.Option(
            "--release",
            help="a release directory, the authors' IS4 folder, or a benchmark's ground-truth file or folder",
        ),
    ],
    predictions: Annotated[
        Path | None,
        typer.Option(help=".npz with one heatmap per instance id (localisation, segmentation, extended, robust)"),
    ] = None,
    task: Annotated[
        str,
        typer.Option(help=f"{', '.join(TASK)} (segmentation: localisation with --gt mask)"),
    ] = "localisation",
    embeddings: Annotated[
        Path | None,
        typer.Option(
            help=".npz of `ids`, `audio`, `image` (or `audio/<kind>`, `image/<kind>`) for retrieval, alignment"
        ),
    ] = None,
    benchmark: Annotated[
        str | None,
        typer.Option(help=f"{', '.join(BENCHMARKS)} (default: what the file names say)"),
    ] = None,
    gt: Annotated[
        str | None,
        typer.Option(help="ground truth: box (the papers' tables) or mask (default: box, or what the file holds)"),
    ] = None,
    protocol: Annotated[
        str,
        typer.Option(
            help="reference (the IS3 / IS4 authors' evaluation code, the default), exact-k (cuts keep exactly K "
            "pixels, tie-safe) or fixed (JSA's: pixels >= --threshold of the min-max normalised bicubic map)"
        ),
    ] = "reference",
    ids: Annotated[
        str | None,
        typer.Option(
            help="score only the instances an id list names (one id a line, or a CSV's first field); "
            f"'auto': the authors' default list beside the ground truth ({_DEFAULT_IDS})"
        ),
    ] = None,
    empty: Annotated[
        str,
        typer.Option(
            help=f"{' or '.join(EMPTY_RULES)}: instances whose region is empty (a box clipped away, [0, 0, 0, 0], "
            "a black mask) are scored as failures as the authors score them (default), or left out"
        ),
    ] = "score",
    maps: Annotated[
        str | None,
        typer.Option(help="; ".join(f"{k}: {v}" for k, v in MAP_PATHS.items()) + " (default: the protocol's)"),
    ] = None,
    threshold: Annotated[
        float | None, typer.Option(help="the fixed protocol's threshold θ (default 0.6, JSA's official code)")
    ] = None,
    miou_mean: Annotated[
        str | None,
        typer.Option("--miou-mean", help="; ".join(f"{k}: {v}" for k, v in MIOU_MEANS.items())),
    ] = None,
    negatives: Annotated[
        Path | None,
        typer.Option(help="extended: the negative pairs, a `*_plus_silent.csv` (default: beside the ground truth)"),
    ] = None,
    confidence: Annotated[
        str,
        typer.Option(
            help="extended: the maps' fixed range for the confidence; "
            + "; ".join(f"{k}: {v}" for k, v in EXTENDED_RANGES.items())
        ),
    ] = "slavc",
    prediction: Annotated[
        str,
        typer.Option(help="extended: " + "; ".join(f"{k}: {v}" for k, v in EXTENDED_PREDICTIONS.items())),
    ] = "relative",
    fpr_rule: Annotated[
        str, typer.Option("--fpr-rule", help="robust: " + "; ".join(f"{k}: {v}" for k, v in FPR_RULES.items()))
    ] = "logit",
    output: Annotated[
        Path | None, typer.Option(help="write the metrics (and the baselines') as JSON here, at full precision")
    ] = None,
    per_instance: Annotated[
        Path | None, typer.Option("--per-instance", help="write per-instance IoUs as Parquet here")
    ] = None,
    baselines: Annotated[
        bool, typer.Option(help="score the random, centre and oracle baselines beside the model")
    ] = True,
    suite: Annotated[
        str | None,
        typer.Option(
            help=f"{', '.join(SUITE)}: a paper's tables in one run; --release is then a folder of benchmark files, "
            "--predictions / --embeddings folders of <benchmark>.npz"
        ),
    ] = None,
    method: Annotated[
        str | None,
        typer.Option(help="--suite: whose published figures to print beside ours (default: the paper's; 'all')"),
    ] = None,
    markdown: Annotated[Path | None, typer.Option(help="--suite: write the tables as Markdown here")] = None,
) -> None:
    """Score a model on a benchmark: heatmaps (cIoU, AUC, IIoU, IAUC; + mIoU, F-score for masks) beside baselines,
    or embeddings (retrieval Recall@K beside chance; alignment and magnitude); `--suite`: a paper's tables."""
    from is4.pipeline.evaluation import evaluate as ev
    from is4.pipeline.evaluation import metrics
    from is4.pipeline.evaluation.formats import load_ground_truth

    try:
        rules = metrics.get_protocol(protocol, map_path=maps, miou_mean=miou_mean, threshold=threshold)
    except ValueError as exc:
        raise ev.EvaluationError(f"--protocol / --maps / --miou-mean / --threshold: {exc}") from None
    if suite is not None:
        from is4.pipeline.evaluation.suites import Options

        options = Options(empty, miou_mean, confidence, prediction, fpr_rule)
        _suite(suite, release_dir, predictions, embeddings, method, options, output, markdown)
        return
    if task not in TASK:
        raise ev.EvaluationError(f"--task must be one of {', '.join(TASK)}, not {task!r}")
    files = {"--predictions": predictions, "--embeddings": embeddings, "--negatives": negatives}
    check_readable({"--release": release_dir, **files, "--ids": None if ids in (None, "auto") else ids})
    if task in ("retrieval", "alignment"):
        if embeddings is None:
            raise ev.EvaluationError(f"--task {task} needs --embeddings FILE")
        _embedding_task(task, load_ground_truth(release_dir, benchmark=benchmark, ids=ids), embeddings, output)
        return
    if predictions is None:
        raise ev.EvaluationError(f"--task {task} needs --predictions FILE")
    if task == "extended":
        truth = load_ground_truth(release_dir, "box", benchmark=benchmark, ids=ids, empty=empty)
        _extended(truth, predictions, negatives, confidence, prediction, output)
        return
    if task in ("segmentation", "robust"):
        gt = "mask"
    if task == "robust":
        truth = load_ground_truth(release_dir, gt, benchmark=benchmark, protocol=rules, ids=ids, empty=empty)
        _robust(truth, predictions, rules, fpr_rule, output)
        return
    truth = load_ground_truth(release_dir, gt, benchmark=benchmark, protocol=rules, ids=ids, empty=empty)
    scored = ev.score_file(truth, predictions, rules)
    reference = {}
    if baselines:
        reference = ev.shipped_baselines(truth, rules) or {
            kind: base.summary for kind, base in ev.score_baselines(truth, rules).items()
        }
    rows = {"model": scored.summary, **reference}
    notes = [f"{len(truth.empty)} empty regions scored as failures"] if truth.empty else []
    notes += [f"{len(truth.excluded)} instances left out"] if truth.excluded else []
    console.print(
        f"{truth.benchmark} {truth.gt} ground truth ({truth.source}), protocol {rules.name}, maps {rules.map_path}"
        + "".join(f"; {note}" for note in notes),
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


def _embedding_task(task: str, truth, embeddings: Path, output: Path | None) -> None:
    """Retrieval or alignment on the ground truth's instances: print the table, write the JSON."""
    from is4.pipeline.evaluation import retrieval

    result = retrieval.retrieval(truth, embeddings) if task == "retrieval" else retrieval.alignment(truth, embeddings)
    table = retrieval.format_retrieval(result) if task == "retrieval" else retrieval.format_alignment(result)
    head = f"{truth.benchmark}: {task} over {len(truth)} instances ({truth.source})"
    if task == "retrieval":
        head += f", {result['classes']} classes"
    _report(task, head, table, result, output)


def _report(task: str, head: str, table: str, result: dict, output: Path | None) -> None:
    """Print a task's heading and table verbatim; write its result (with the task's name) as JSON to `output`."""
    console.print(head, soft_wrap=True, highlight=False, markup=False)
    console.print(table, soft_wrap=True, highlight=False, markup=False)
    if output:
        from is4.manifests.atomic import atomic_write_json

        atomic_write_json(output, {"task": task, **result})


def _extended(truth, predictions: Path, negatives: Path | None, confidence: str, prediction: str, output) -> None:
    """The extended protocol on the ground truth's positives and the negative pairs: print the table, write JSON."""
    from is4.pipeline.evaluation import extended

    result = extended.extended(truth, predictions, negatives, confidence=confidence, prediction=prediction)
    head = (
        f"{truth.benchmark} extended: {result['positives']} positives ({truth.source}) + {result['negatives']} "
        f"negative pairs ({result['negatives_file']}), confidence {confidence}, prediction {prediction}"
    )
    _report("extended", head, extended.format_extended(result), result, output)


def _robust(truth, predictions: Path, rules, fpr_rule: str, output: Path | None) -> None:
    """The AVSBench-Robust metrics on the ground truth's masks: print the table, write the JSON."""
    from is4.pipeline.evaluation import robust

    result = robust.robust(truth, predictions, rules, fpr_rule=fpr_rule)
    head = (
        f"{truth.benchmark} robust: {result['instances']} instances ({truth.source}), negative conditions "
        f"{', '.join(result['conditions'])}, protocol {rules.name}, FPR rule {fpr_rule}"
    )
    _report("robust", head, robust.format_robust(result), result, output)


def _suite(name: str, release_dir: Path, predictions, embeddings, method, options, output, markdown) -> None:
    """Run a suite: print its tables, write the JSON and the Markdown; exit 2 naming the runs that failed."""
    from is4.manifests.atomic import atomic_write_bytes, atomic_write_json
    from is4.pipeline.evaluation import suites
    from is4.pipeline.evaluation.errors import EvaluationError

    report = suites.run_suite(
        name, release_dir, predictions=predictions, embeddings=embeddings, method=method, options=options
    )
    console.print(suites.format_suite(report), soft_wrap=True, highlight=False, markup=False)
    if output:
        atomic_write_json(output, report)
    if markdown:
        atomic_write_bytes(markdown, suites.markdown_suite(report).encode())
    failed = suites.failures(report)
    if failed:
        raise EvaluationError(f"{len(failed)} runs of the suite failed: " + "; ".join(failed))
