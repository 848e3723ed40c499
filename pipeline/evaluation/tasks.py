"""The evaluation tasks, declared: what each scores, from which inputs, with which metrics and table labels.

A task names its inputs (what the user passes), the ground truth it reads (`gt`, see `formats.Format.gt`) and its
metrics as (key, table label) pairs in table order; `evaluate.format_table` and the README's table
(`tasks_table()`) derive from `TASKS`, a format lists the tasks it supports (`formats.Format.tasks`) and `is4 eval
--suite` scores a run with the task's `scorer`. Adding a task is one `Task(...)` here and its scoring function
(docs/architecture.md, "Adding a benchmark or a task").
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Task:
    """One evaluation task: `inputs` (what the user gives), `gt` (box or mask ground truth; "any": only the
    instance ids and their classes), `metrics` as
    (key in the result, column label) pairs, in percent, in table order; `scorer`: "module:function" of what a suite
    run of the task calls, `(truth, path, protocol, suites.Options) -> result`, imported on use (it raises
    `suites.SkipRun` when the file holds none of the task's inputs); `reads`: the file kind it scores ("predictions",
    maps, or "embeddings")."""

    name: str
    inputs: str
    gt: str
    metrics: tuple[tuple[str, str], ...]
    summary: str
    scorer: str
    reads: str = "predictions"


_BOX = (
    ("ciou", "cIoU"),
    ("ciou_adaptive", "cIoU-adap"),
    ("auc", "AUC"),
    ("auc_adaptive", "AUC-adap"),
    ("iiou", "IIoU"),
    ("iiou_adaptive", "IIoU-adap"),
    ("iauc", "IAUC"),
    ("iauc_adaptive", "IAUC-adap"),
)
TASKS: tuple[Task, ...] = (
    Task(
        "localisation",
        "`--predictions`: an `.npz` of one heatmap per instance id",
        "box",
        _BOX,
        "success rate (IoU ≥ 0.5) at the top-50 % and the adaptive cut, AUC over IoU thresholds; IIoU / IAUC per image",
        scorer="is4.pipeline.evaluation.suites:score_maps",
    ),
    Task(
        "segmentation",
        "`--predictions`: an `.npz` of one heatmap per instance id, `--gt mask`",
        "mask",
        _BOX + (("miou", "mIoU"), ("fscore", "F"), ("miou_adaptive", "mIoU-adap"), ("fscore_adaptive", "F-adap")),
        "the localisation metrics on the mask, plus mIoU and the F-score (β² = 0.3) at both cuts",
        scorer="is4.pipeline.evaluation.suites:score_maps",
    ),
    Task(
        "retrieval",
        "`--embeddings`: an `.npz` of `ids`, `audio`, `image` (or `audio/<kind>`, `image/<kind>`)",
        "any",
        tuple((f"{d}_r{k}", f"{d.upper().replace('2', '→')} R@{k}") for d in ("a2i", "i2a") for k in (1, 5, 10)),
        "Recall@K, a hit = one of the top K (cosine) has the query's class; chance level printed beside",
        scorer="is4.pipeline.evaluation.suites:score_retrieval",
        reads="embeddings",
    ),
    Task(
        "extended",
        "`--predictions`: an `.npz` of one map per positive id and per negative pair `<video>/<audio>`; "
        "`--negatives` (default `<benchmark>_test_plus_silent.csv` beside the ground truth)",
        "box",
        (
            ("ap", "AP"),
            ("max_f1", "max-F1"),
            ("loc_acc", "LocAcc"),
            ("f1_precision", "P@max-F1"),
            ("f1_recall", "R@max-F1"),
        ),
        "Extended Flickr / VGG-SS with negative pairs, as SLAVC's EvaluatorFull: AP and max-F1 over confidence "
        "thresholds, LocAcc = success rate on the positives",
        scorer="is4.pipeline.evaluation.suites:score_extended",
    ),
    Task(
        "alignment",
        "`--embeddings`, as retrieval",
        "any",
        (("alignment", "alignment"), ("magnitude_mean", "magnitude"), ("magnitude_std", "magnitude std")),
        "mean positive-pair cosine; modality-gap norm, mean ± std over pairs",
        scorer="is4.pipeline.evaluation.suites:score_alignment",
        reads="embeddings",
    ),
    Task(
        "robust",
        "`--predictions`: an `.npz` of one map per instance id (its own audio) and per `<condition>/<instance id>` "
        "(negative audio: e.g. `silence`, `noise`, `offscreen`), `--gt mask`",
        "mask",
        (("miou", "mIoU"), ("fscore", "F"), ("g_miou", "G-mIoU"), ("g_f", "G-F"), ("g_fpr", "G-FPR")),
        "AVSBench-Robust (ACL-SSL Table 5): mIoU and F on the positives; per negative condition mIoU, F and FPR (share "
        "of pixels activated); G-mIoU / G-F = harmonic mean of the positive score and 100 − the conditions' mean, "
        "G-FPR = their mean FPR",
        scorer="is4.pipeline.evaluation.suites:score_robust",
    ),
)
TASK = {t.name: t for t in TASKS}
LABELS = {key: label for task in TASKS for key, label in task.metrics}


def tasks_table() -> str:
    """The declared tasks as the Markdown table of README "Scoring a model"."""
    lines = ["| task | inputs | ground truth | metrics | what |", "| --- | --- | --- | --- | --- |"]
    for t in TASKS:
        labels = ", ".join(label for _, label in t.metrics)
        lines.append(f"| {t.name} | {t.inputs} | {t.gt} | {labels} | {t.summary} |")
    return "\n".join(lines)
