"""A paper's tables in one command: `is4 eval --suite <name>` runs every protocol of a paper's tables that the
inputs allow and prints the tables shaped as the paper prints them, with the published figures beside ours.

A suite is declared data (`SUITES`): a list of tables, each a list of columns; a column is one benchmark's `Run`
(a declared format of `formats.FORMATS`, a declared task of `tasks.TASKS`, its ground truth, id list and protocol
options) and the metrics the paper prints for it. Rows are the paper's: "ours" (one per feature kind for the
embeddings tasks, and the chance level for retrieval), then the published figures of the chosen method(s) from
`is4/data/published_figures.csv` (columns `method, variant, paper, table, benchmark, protocol, metric, value,
source`: each figure as the paper prints it, with the table it comes from). Adding a suite is one `Suite(...)` in
`SUITES` (and its figures in the CSV): docs/architecture.md, "Adding a suite".

Inputs (`run_suite`): a folder of benchmark files (the authors' `metadata/` layout or a release built here: each
column's ground truth is found by `formats.find_ground_truth`, its id list beside it), a predictions folder with
one `.npz` of maps per benchmark named by the format (`vggss.npz`, `flickr.npz`, `is4.npz`, `avsbench-s4.npz`, …;
the extended and robust columns read their negative maps from the same file) and an embeddings folder likewise
(`vggss.npz`, as `is4 embed` writes). A column whose inputs are absent is skipped and says why; one whose inputs
are bad fails with the one-line reason, and the other columns still run. Each run is scored once, however many
tables show it.
"""

from __future__ import annotations

import csv
import importlib
import io
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from is4.pipeline.evaluation import metrics
from is4.pipeline.evaluation.errors import EvaluationError
from is4.pipeline.evaluation.formats import GroundTruth, find_ground_truth, load_ground_truth
from is4.pipeline.evaluation.tasks import LABELS, TASK, Task

FIGURES_FILE = "published_figures.csv"
FIGURE_COLUMNS = ("method", "variant", "paper", "table", "benchmark", "protocol", "metric", "value", "source")
ALL_METHODS = "all"
EMPTY_CELL = "-"
# How a metric is printed (scale from our percent to the paper's unit, decimals); the rest: percent, 2 decimals.
DISPLAY = {
    "alignment": (1.0, 4),
    "magnitude_mean": (1.0, 2),
    "magnitude_std": (1.0, 2),
    "g_miou": (1.0, 3),
    "g_f": (1.0, 3),
    "g_fpr": (0.01, 3),
}
METRIC_LABELS = {**LABELS, "magnitude_mean": "magnitude", "magnitude_std": "± std"}


@dataclass(frozen=True)
class Run:
    """One protocol run: `task` on `benchmark`'s ground truth (`gt`, else the task's), restricted to the id list
    `ids` (a file name looked up beside the ground truth; when it is absent the run is skipped, or with
    `ids_optional` scored on every instance), under `protocol` with its `maps` path and `threshold`."""

    benchmark: str
    task: str
    gt: str | None = None
    ids: str | None = None
    ids_optional: bool = False
    protocol: str = metrics.DEFAULT_PROTOCOL
    maps: str | None = None
    threshold: float | None = None

    @property
    def name(self) -> str:
        """A readable id: benchmark, task, then the options that differ from the defaults."""
        parts = [self.benchmark, self.task]
        parts += [f"gt={self.gt}"] if self.gt else []
        parts += [f"ids={self.ids}"] if self.ids else []
        parts += [self.protocol] if self.protocol != metrics.DEFAULT_PROTOCOL else []
        parts += [f"maps={self.maps}"] if self.maps else []
        parts += [f"threshold={self.threshold}"] if self.threshold is not None else []
        return " ".join(parts)


@dataclass(frozen=True)
class Column:
    """A group of the paper's columns: `label` over the `metrics` of `run`; `key` names it in the figures CSV."""

    key: str
    label: str
    run: Run
    metrics: tuple[str, ...]


@dataclass(frozen=True)
class SuiteTable:
    """One table of a paper: `number` as the paper numbers it, its `title`, its column groups, a `note`."""

    number: str
    title: str
    columns: tuple[Column, ...]
    note: str = ""


@dataclass(frozen=True)
class Suite:
    """A paper's tables: `paper` is the figures CSV's paper key, `citation` how it is printed, `method` the method
    whose published figures are shown by default."""

    name: str
    paper: str
    citation: str
    method: str
    tables: tuple[SuiteTable, ...]


# --- the declared suites --------------------------------------------------------------------------------------

_BOX = ("ciou", "auc", "ciou_adaptive", "auc_adaptive")
_CIOU_AUC = ("ciou", "auc")
_EXT = ("ap", "max_f1", "loc_acc")
_RET = ("a2i_r1", "a2i_r5", "a2i_r10", "i2a_r1", "i2a_r5", "i2a_r10")
_SEG = ("miou", "fscore", "miou_adaptive", "fscore_adaptive")
_ROBUST = ("miou", "fscore", "g_miou", "g_f", "g_fpr")

VGGSS = Run("vggss", "localisation")
VGGSS_LVS = Run("vggss", "localisation", ids="ours_vggss.txt", maps="lvs")
FLICKR = Run("flickr", "localisation", ids="flickr_test.csv", ids_optional=True)
EXT_FLICKR = Run("flickr", "extended", ids="flickr_test.csv", ids_optional=True)
EXT_VGGSS = Run("vggss", "extended")
RETRIEVAL = Run("vggss", "retrieval")


def _box(benchmark: str) -> Run:
    return Run(benchmark, "localisation", gt="box")


def _mask(benchmark: str) -> Run:
    return Run(benchmark, "segmentation", gt="mask")


_T_LOCALISATION = SuiteTable(
    "2",
    "VGG-SS and Flickr-SoundNet: cIoU and AUC (+ adaptive)",
    (
        Column("vggss", "VGG-SS", VGGSS, _BOX),
        Column("vggss-lvs", "VGG-SS (4,655, lvs)", VGGSS_LVS, _BOX),
        Column("flickr", "Flickr", FLICKR, _BOX),
    ),
    "The authors scored their own checkpoints on VGG-SS with validate_lvs() on the 4,655 clips of "
    "ours_vggss.txt (the 'VGG-SS (4,655, lvs)' columns), the other methods with validate() on all clips.",
)
_T_RETRIEVAL = SuiteTable(
    "5", "Cross-modal retrieval on VGG-SS: Recall@1/5/10 (%)", (Column("vggss", "VGG-SS", RETRIEVAL, _RET),)
)

SUITES: tuple[Suite, ...] = (
    Suite(
        "tpami",
        "tpami",
        'TPAMI\'25 "Toward Interactive Sound Source Localization"',
        "alignment",
        (
            _T_LOCALISATION,
            SuiteTable(
                "3",
                "IS4, VPO and AVSBench S4 boxes: cIoU and AUC (+ adaptive)",
                tuple(
                    Column(b, label, _box(b), _BOX)
                    for b, label in (("is4", "IS4"), ("vpo-ss", "VPO-SS"), ("vpo-ms", "VPO-MS"), ("avsbench-s4", "S4"))
                ),
                "ADE20K is not a benchmark this project reads.",
            ),
            SuiteTable(
                "4",
                "Extended Flickr / VGG-SS: AP, max-F1, LocAcc",
                (
                    Column("extended-flickr", "Ext. Flickr", EXT_FLICKR, _EXT),
                    Column("extended-vggss", "Ext. VGG-SS", EXT_VGGSS, _EXT),
                ),
            ),
            _T_RETRIEVAL,
            SuiteTable(
                "6",
                "Cross-modal alignment: magnitude (mean ± std) and alignment",
                (
                    Column(
                        "pairs", "pairs", Run("vggss", "alignment"), ("magnitude_mean", "magnitude_std", "alignment")
                    ),
                ),
                "The paper computes them on training pairs; ours are on the pairs of the embeddings file given for "
                "VGG-SS.",
            ),
            SuiteTable(
                "7",
                "IIoU and IAUC on images with several instances",
                (
                    Column("is4", "IS4", _box("is4"), ("iiou", "iauc", "iiou_adaptive", "iauc_adaptive")),
                    Column("vpo-ms", "VPO-MS", _box("vpo-ms"), ("iiou", "iauc", "iiou_adaptive", "iauc_adaptive")),
                ),
            ),
            SuiteTable(
                "14",
                "AVSBench S4 / MS3 masks: mIoU and F (+ adaptive)",
                (
                    Column("avsbench-s4", "S4", _mask("avsbench-s4"), _SEG),
                    Column("avsbench-ms3", "MS3", _mask("avsbench-ms3"), _SEG),
                ),
            ),
            SuiteTable(
                "15",
                "IS4 and VPO masks: cIoU, AUC, mIoU, F",
                tuple(
                    Column(b, label, _mask(b), ("ciou", "auc", "miou", "fscore"))
                    for b, label in (("is4", "IS4"), ("vpo-ss", "VPO-SS"), ("vpo-ms", "VPO-MS"))
                ),
            ),
        ),
    ),
    Suite(
        "iccv23",
        "iccv23",
        'ICCV\'23 "Sound Source Localization is All about Cross-Modal Alignment"',
        "alignment",
        (
            SuiteTable("1", "VGG-SS and Flickr-SoundNet: cIoU and AUC", _T_LOCALISATION.columns),
            SuiteTable("2", _T_RETRIEVAL.title, _T_RETRIEVAL.columns),
        ),
    ),
    Suite(
        "jsa",
        "jsa",
        'CVPR\'25 "Improving Sound Source Localization with Joint Slot Attention on Image and Audio" (JSA)',
        "jsa",
        (
            SuiteTable(
                "1",
                "VGG-SS and Flickr-SoundNet, fixed threshold θ = 0.6: cIoU and AUC",
                (
                    Column("vggss", "VGG-SS", Run("vggss", "localisation", protocol="fixed"), _CIOU_AUC),
                    Column(
                        "flickr",
                        "Flickr",
                        Run("flickr", "localisation", ids="flickr_test.csv", ids_optional=True, protocol="fixed"),
                        _CIOU_AUC,
                    ),
                ),
                "The comparators' rows are the figures JSA Table 1 lists for them.",
            ),
            SuiteTable(
                "2",
                "Open-set VGG-SS, Heard / Unheard 110 classes, fixed threshold θ = 0.6: cIoU and AUC",
                (
                    Column(
                        "vggss-heard",
                        "Heard 110",
                        Run("vggss", "localisation", ids="vggss_heard_test.csv", protocol="fixed"),
                        _CIOU_AUC,
                    ),
                    Column(
                        "vggss-unheard",
                        "Unheard 110",
                        Run("vggss", "localisation", ids="vggss_unheard_test.csv", protocol="fixed"),
                        _CIOU_AUC,
                    ),
                ),
                "The protocol trains on the heard classes only (train.id_list vggss_heard.txt).",
            ),
            SuiteTable(
                "3",
                "AVSBench S4: mIoU and F",
                (Column("avsbench-s4", "S4", _mask("avsbench-s4"), ("miou", "fscore")),),
                "JSA's own mIoU / F procedure is unpublished; ours is the reference (AVSBench) one.",
            ),
            SuiteTable("4", "Cross-modal retrieval on VGG-SS: Recall@1/5/10 (%)", _T_RETRIEVAL.columns),
            SuiteTable(
                "8",
                "AVSBench MS3: mIoU and F",
                (Column("avsbench-ms3", "MS3", _mask("avsbench-ms3"), ("miou", "fscore")),),
            ),
        ),
    ),
    Suite(
        "acl",
        "acl",
        'ACL-SSL "Hearing and Seeing Through CLIP" (journal version)',
        "acl",
        (
            SuiteTable("1", "VGG-SS and Flickr-SoundNet: cIoU and AUC (+ adaptive)", _T_LOCALISATION.columns[::2]),
            SuiteTable(
                "3",
                "Extended Flickr / VGG-SS: AP, max-F1, LocAcc",
                (
                    Column("extended-flickr", "Ext. Flickr", EXT_FLICKR, _EXT),
                    Column("extended-vggss", "Ext. VGG-SS", EXT_VGGSS, _EXT),
                ),
            ),
            SuiteTable(
                "4",
                "Extended Flickr: precision and recall at the max-F1 point",
                (Column("extended-flickr", "Ext. Flickr", EXT_FLICKR, ("f1_precision", "f1_recall")),),
            ),
            SuiteTable(
                "5",
                "AVSBench-Robust: positive mIoU, F; G-mIoU, G-F, G-FPR",
                (
                    Column("avsbench-s4", "S4", Run("avsbench-s4", "robust", gt="mask"), _ROBUST),
                    Column("avsbench-ms3", "MS3", Run("avsbench-ms3", "robust", gt="mask"), _ROBUST),
                ),
                "G-FPR is printed as a fraction, as in the paper; the per-condition figures are in the JSON.",
            ),
            SuiteTable(
                "6",
                "Segmentation masks: mIoU and F (+ adaptive)",
                tuple(
                    Column(b, label, _mask(b), _SEG)
                    for b, label in (
                        ("is4", "IS4"),
                        ("vpo-ss", "VPO-SS"),
                        ("vpo-ms", "VPO-MS"),
                        ("avsbench-s4", "S4"),
                        ("avsbench-ms3", "MS3"),
                    )
                ),
            ),
            SuiteTable(
                "7",
                "IIoU and IAUC on IS4 and VPO-MS",
                (
                    Column("is4", "IS4", _box("is4"), ("iiou", "iauc")),
                    Column("vpo-ms", "VPO-MS", _box("vpo-ms"), ("iiou", "iauc")),
                ),
            ),
        ),
    ),
)
SUITE = {s.name: s for s in SUITES}


# --- published figures ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Figure:
    """One published figure, as printed (`printed`) and as a number (`value`), with the table it comes from."""

    method: str
    variant: str
    paper: str
    table: str
    benchmark: str
    protocol: str
    metric: str
    value: float
    printed: str
    source: str


def read_figures(text: str | None = None) -> list[Figure]:
    """The published figures (default: the shipped `is4/data/published_figures.csv`)."""
    if text is None:
        text = resources.files("is4").joinpath("data", FIGURES_FILE).read_text(encoding="utf-8")
    reader = csv.DictReader(io.StringIO(text))
    if tuple(reader.fieldnames or ()) != FIGURE_COLUMNS:
        raise EvaluationError(f"{FIGURES_FILE}: expected the columns {', '.join(FIGURE_COLUMNS)}")
    figures = []
    for line, row in enumerate(reader, start=2):
        try:
            value = float(row["value"])
        except ValueError:
            raise EvaluationError(f"{FIGURES_FILE} line {line}: value {row['value']!r} is not a number") from None
        figures.append(Figure(**{k: row[k] for k in FIGURE_COLUMNS if k != "value"}, value=value, printed=row["value"]))
    return figures


# --- running the columns -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    """The options a suite passes to every run it makes (the CLI's)."""

    empty: str = "score"
    miou_mean: str | None = None
    confidence: str = "slavc"
    prediction: str = "relative"
    fpr_rule: str = "logit"


@dataclass
class Outcome:
    """What became of one run: "ok" with its `result`, "skipped" (inputs absent) or "failed", and why."""

    status: str
    result: dict = field(default_factory=dict)
    reason: str = ""
    notes: list[str] = field(default_factory=list)


def _find_ids(truth_file: Path, root: Path, name: str) -> Path | None:
    folder = truth_file if truth_file.is_dir() else truth_file.parent
    for place in (folder, folder.parent, root):
        if (place / name).is_file():
            return place / name
    return None


class SkipRun(Exception):
    """A run's inputs are absent: it is skipped, with the reason (what a task's scorer raises)."""


def _scorer(task: Task) -> Callable[[GroundTruth, Path, metrics.Protocol, Options], dict]:
    """The task's declared suite scorer (`Task.scorer`, "module:function"), imported on use."""
    module, _, name = task.scorer.partition(":")
    return getattr(importlib.import_module(module), name)


def score_maps(truth: GroundTruth, path: Path, protocol: metrics.Protocol, options: Options) -> dict:
    """Localisation / segmentation: the file's maps of the ground truth's instances (its other maps serve the other
    runs: not warned about)."""
    from is4.pipeline.evaluation.evaluate import score_source
    from is4.pipeline.evaluation.predictions import NpzMaps
    from is4.pipeline.evaluation.robust import ConditionMaps

    with NpzMaps(path) as source:
        return score_source(truth, ConditionMaps(source, None, truth.instance_ids), protocol, name=str(path)).summary


def score_extended(truth: GroundTruth, path: Path, protocol: metrics.Protocol, options: Options) -> dict:
    """Extended: the positives' maps and the negative pairs' beside the ground truth (skipped without them)."""
    from is4.pipeline.evaluation import extended
    from is4.pipeline.evaluation.predictions import NpzMaps

    try:
        negatives = extended.find_negatives(truth)
    except EvaluationError as exc:
        raise SkipRun(str(exc)) from None
    with NpzMaps(path) as source:
        keys = set(source.keys())
    if not any(extended.negative_key(v, a) in keys for v, a in extended.read_negatives(negatives)):
        raise SkipRun(f"{path.name} holds no map of a negative pair of {negatives.name} (keys `<video>/<audio>`)")
    return extended.extended(truth, path, negatives, confidence=options.confidence, prediction=options.prediction)


def score_retrieval(truth: GroundTruth, path: Path, protocol: metrics.Protocol, options: Options) -> dict:
    """Retrieval: Recall@K of the file's embeddings."""
    from is4.pipeline.evaluation import retrieval

    return retrieval.retrieval(truth, path)


def score_alignment(truth: GroundTruth, path: Path, protocol: metrics.Protocol, options: Options) -> dict:
    """Alignment and magnitude of the file's embeddings."""
    from is4.pipeline.evaluation import retrieval

    return retrieval.alignment(truth, path)


def score_robust(truth: GroundTruth, path: Path, protocol: metrics.Protocol, options: Options) -> dict:
    """Robust: the positives' maps and the negative conditions' (skipped without them)."""
    from is4.pipeline.evaluation import robust
    from is4.pipeline.evaluation.predictions import NpzMaps

    with NpzMaps(path) as source:
        if not robust.conditions_of(source.keys(), truth.instance_ids):
            raise SkipRun(f"{path.name} holds no map under a negative audio condition (keys `<condition>/<id>`)")
    return robust.robust(truth, path, protocol, fpr_rule=options.fpr_rule)


def run_one(run: Run, release: Path, inputs: dict[str, Path | None], options: Options) -> Outcome:
    """Score one run on the benchmark files under `release` with the input file of its task's kind
    (`inputs[Task.reads]` / `<benchmark>.npz`)."""
    task = TASK[run.task]
    gt = run.gt or (None if task.gt == "any" else task.gt)
    try:
        truth_file, _, _ = find_ground_truth(release, gt, run.benchmark)
    except EvaluationError as exc:
        if "no ground truth of" not in str(exc):
            return Outcome("failed", reason=str(exc))
        return Outcome("skipped", reason=f"no {run.benchmark}{f' {gt}' if gt else ''} ground truth in {release}")
    folder = inputs.get(task.reads)
    if folder is None:
        return Outcome("skipped", reason=f"no --{task.reads} folder")
    path = folder / f"{run.benchmark}.npz"
    if not path.is_file():
        return Outcome("skipped", reason=f"no {path}")
    notes = []
    ids = None
    if run.ids:
        ids = _find_ids(truth_file, release, run.ids)
        if ids is None and not run.ids_optional:
            return Outcome("skipped", reason=f"no {run.ids} beside {truth_file}")
        if ids is None:
            notes.append(f"no {run.ids} beside {truth_file}: every instance scored")
    try:
        protocol = metrics.get_protocol(
            run.protocol, map_path=run.maps, miou_mean=options.miou_mean, threshold=run.threshold
        )
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            truth = load_ground_truth(
                release, gt, benchmark=run.benchmark, protocol=protocol, ids=ids, empty=options.empty
            )
            result = _scorer(task)(truth, path, protocol, options)
    except SkipRun as skip:
        return Outcome("skipped", reason=str(skip))
    except (EvaluationError, ValueError, OSError) as exc:
        return Outcome("failed", reason=str(exc))
    notes += [str(w.message) for w in caught]
    if truth.empty and task.reads == "predictions":
        notes.append(f"{len(truth.empty)} empty regions scored as failures")
    return Outcome("ok", result=result, notes=notes)


# --- the tables ----------------------------------------------------------------------------------------------


def _ours_rows(column: Column, outcome: Outcome) -> list[tuple[str, dict[str, float]]]:
    """(row name, {metric: value in percent}) of our result for a column: one row, or one per feature kind and
    the chance level for the embeddings tasks."""
    if outcome.status != "ok":
        return []
    result = outcome.result
    if TASK[column.run.task].reads != "embeddings":
        return [("ours", {m: result[m] for m in column.metrics if m in result})]
    rows = [
        (f"ours ({kind})", {m: scores[m] for m in column.metrics if m in scores})
        for kind, scores in result.items()
        if isinstance(scores, dict) and kind != "chance"
    ]
    if "chance" in result:
        chance = {m: result["chance"][m.split("_")[-1]] for m in column.metrics if m.split("_")[-1] in result["chance"]}
        rows.append(("chance", chance))
    return rows


def _cell(metric: str, value: float | None) -> str:
    if value is None:
        return EMPTY_CELL
    scale, decimals = DISPLAY.get(metric, (1.0, 2))
    return f"{value * scale:.{decimals}f}"


def build_table(
    suite: Suite, table: SuiteTable, outcomes: dict[Run, Outcome], figures: list[Figure], methods: set[str] | None
) -> dict:
    """One table as data: its columns (group label, metric, label), its rows ("ours" rows, then the published
    ones of `methods`, None: all) with values and printed cells, and its notes (runs skipped or failed)."""
    columns = [(c.key, c.label, m, METRIC_LABELS.get(m, m)) for c in table.columns for m in c.metrics]
    rows: dict[str, dict] = {}
    for column in table.columns:
        for name, values in _ours_rows(column, outcomes[column.run]):
            row = rows.setdefault(name, {"name": name, "kind": "ours", "values": {}, "cells": {}, "source": "this run"})
            for metric, value in values.items():
                row["values"][f"{column.key} {metric}"] = value
                row["cells"][f"{column.key} {metric}"] = _cell(metric, value)
    for fig in figures:
        if fig.paper != suite.paper or fig.table != table.number or (methods is not None and fig.method not in methods):
            continue
        name = f"{fig.method} ({fig.variant})" if fig.variant else fig.method
        row = rows.setdefault(name, {"name": name, "kind": "published", "values": {}, "cells": {}, "sources": []})
        row["values"][f"{fig.benchmark} {fig.metric}"] = fig.value
        row["cells"][f"{fig.benchmark} {fig.metric}"] = fig.printed
        row.setdefault("protocols", {})[f"{fig.benchmark} {fig.metric}"] = fig.protocol
        if fig.source not in row["sources"]:
            row["sources"].append(fig.source)
    for row in rows.values():
        if row["kind"] == "published":
            row["source"] = "; ".join(row.pop("sources"))
    notes = [table.note] if table.note else []
    seen = set()
    for column in table.columns:
        outcome = outcomes[column.run]
        if column.run in seen:
            continue
        seen.add(column.run)
        if outcome.status != "ok":
            notes.append(f"{column.label}: {outcome.status}: {outcome.reason}")
        notes += [f"{column.label}: {note}" for note in outcome.notes]
    return {
        "paper": suite.paper,
        "table": table.number,
        "title": f"{suite.citation}, Table {table.number}: {table.title}",
        "columns": [{"benchmark": k, "label": lab, "metric": m, "metric_label": ml} for k, lab, m, ml in columns],
        "rows": list(rows.values()),
        "notes": notes,
    }


def run_suite(
    name: str,
    release: str | Path,
    *,
    predictions: str | Path | None = None,
    embeddings: str | Path | None = None,
    method: str | None = None,
    options: Options | None = None,
    figures: list[Figure] | None = None,
) -> dict:
    """Run the suite `name` (see the module docstring): {"suite", "citation", "release", "methods", "runs":
    {run name: {"status", "reason", "notes", "result"}}, "tables": [build_table output]} at full precision.

    `method`: whose published figures are shown (default: the suite's; "all": every method's)."""
    if name not in SUITE:
        raise EvaluationError(f"the suite must be one of {', '.join(SUITE)}, not {name!r}")
    suite = SUITE[name]
    release = Path(release)
    if not release.is_dir():
        raise EvaluationError(f"{release}: a suite reads a folder of benchmark files, not a file")
    inputs = {"predictions": _folder(predictions, "--predictions"), "embeddings": _folder(embeddings, "--embeddings")}
    if inputs["predictions"] is None and inputs["embeddings"] is None:
        raise EvaluationError("a suite needs --predictions DIR and/or --embeddings DIR (one <benchmark>.npz each)")
    options = options or Options()
    figures = read_figures() if figures is None else figures
    chosen = method or suite.method
    known = sorted({f.method for f in figures if f.paper == suite.paper})
    if chosen != ALL_METHODS and chosen not in known:
        raise EvaluationError(
            f"--method: {suite.name}'s figures are of {', '.join(known)} (or {ALL_METHODS}), not {chosen!r}"
        )
    methods = None if chosen == ALL_METHODS else {chosen}
    outcomes: dict[Run, Outcome] = {}
    for table in suite.tables:
        for column in table.columns:
            if column.run not in outcomes:
                outcomes[column.run] = run_one(column.run, release, inputs, options)
    return {
        "suite": suite.name,
        "citation": suite.citation,
        "release": str(release),
        "methods": chosen,
        "runs": {
            run.name: {"status": o.status, "reason": o.reason, "notes": o.notes, "result": o.result}
            for run, o in outcomes.items()
        },
        "tables": [build_table(suite, t, outcomes, figures, methods) for t in suite.tables],
    }


def _folder(path: str | Path | None, option: str) -> Path | None:
    if path is None:
        return None
    path = Path(path)
    if not path.is_dir():
        raise EvaluationError(f"{option} {path}: a suite reads a folder of <benchmark>.npz files")
    return path


def failures(report: dict) -> list[str]:
    """`run: reason` for every run of a `run_suite` report that failed."""
    return [f"{name}: {run['reason']}" for name, run in report["runs"].items() if run["status"] == "failed"]


# --- text and Markdown ---------------------------------------------------------------------------------------


def _grid(table: dict) -> tuple[list[str], list[str], list[list[str]]]:
    """(group header, metric header, body) cells of a table: the row name, one cell per column, the source."""
    groups, labels, previous = [""], [""], None
    for col in table["columns"]:
        groups.append(col["label"] if col["label"] != previous else "")
        labels.append(col["metric_label"])
        previous = col["label"]
    groups.append("")
    labels.append("source")
    body = []
    for row in table["rows"]:
        cells = [row["cells"].get(f"{c['benchmark']} {c['metric']}", EMPTY_CELL) for c in table["columns"]]
        body.append([row["name"], *cells, row["source"]])
    return groups, labels, body


def format_suite(report: dict) -> str:
    """The report's tables as text: a title, a two-line header (benchmark over its metrics, then the metrics),
    rows, then the notes."""
    blocks = []
    for table in report["tables"]:
        groups, labels, body = _grid(table)
        text = [table["title"]]
        if body:
            widths = [max(len(line[i]) for line in [labels, *body]) for i in range(len(labels))]
            starts = [i for i, g in enumerate(groups) if g] + [len(groups)]
            for start, stop in zip(starts, starts[1:]):  # a benchmark's label spans its metrics' columns
                span = sum(widths[start:stop]) + 2 * (stop - start - 1)
                widths[stop - 1] += max(0, len(groups[start]) - span)
            head = [" " * widths[0]]
            for start, stop in zip(starts, starts[1:]):
                head.append(groups[start].ljust(sum(widths[start:stop]) + 2 * (stop - start - 1)))

            def fmt(cells, widths=widths):
                last = len(cells) - 1
                return "  ".join(
                    c.ljust(w) if i in (0, last) else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))
                ).rstrip()

            text += ["  ".join(head).rstrip(), fmt(labels), "  ".join("-" * w for w in widths)]
            text += [fmt(cells) for cells in body]
        else:
            text.append("(no rows: nothing of ours ran and the paper's figures here are not in the shipped CSV)")
        text += [f"  note: {note}" for note in table["notes"]]
        blocks.append("\n".join(text))
    return "\n\n".join(blocks)


def _md(text: str) -> str:
    return text.replace("|", "\\|")


def markdown_suite(report: dict) -> str:
    """The report as Markdown: one section per table (title, the table with 'benchmark metric' headers, notes)."""
    out = [f"# {report['citation']}: `is4 eval --suite {report['suite']}`", ""]
    out.append(f"Benchmarks: `{report['release']}`; published figures: {report['methods']}.")
    for table in report["tables"]:
        groups, labels, body = _grid(table)
        header, label = [], ""
        for group, metric in zip(groups, labels):
            label = group or label
            header.append(f"{label} {metric}".strip() if metric != "source" else "source")
        header[0] = ""
        out += ["", f"## {_md(table['title'])}", ""]
        out.append("| " + " | ".join(_md(h) for h in header) + " |")
        out.append("| --- |" + " ---: |" * (len(header) - 2) + " --- |")
        out += ["| " + " | ".join(_md(c) for c in cells) + " |" for cells in body]
        if table["notes"]:
            out.append("")
            out += [f"- {_md(note)}" for note in table["notes"]]
    return "\n".join(out) + "\n"
