"""Extended Flickr / VGG-SS (TPAMI Table 4, ACL-SSL Tables 3–4): AP, max-F1 and LocAcc over positives and negatives.

The extended test set is a benchmark's positives (its ground truth, e.g. `vggss.json` or Flickr's annotations,
optionally an id list) plus the negative pairs of `<benchmark>_test_plus_silent.csv` (header `video,audio,label`;
the rows labelled `non-sounding`: the frame of `video` with the audio of `audio`, no sounding object). Each pair
gets a confidence and, for a positive, an IoU; the metrics are SLAVC's `EvaluatorFull` (github stoneMo/SLAVC,
utils.py) on them, the per-sample steps its test.py `validate()`:

- **map**: the model's map at its own resolution, float32, resized by torch's bicubic `align_corners=True` to
  224×224, then normalised with fixed bounds: `(x - lo) / (hi - lo)` in float32 (`RANGES`: SLAVC's `slavc` is
  ±1/τ, τ = 0.03, for maps of cos/τ; `cosine` ±1; `unit` [0, 1], the documented choice for maps without a fixed
  range: min-max or sigmoid maps);
- **confidence**: `np.sort(scores.flat)[-n // 4:].mean()`, the float32 mean of the top quarter (bit for bit);
- **prediction** (`PREDICTIONS`): `relative` (SLAVC's `--relative_prediction`, its README's example and the IS4
  authors' commented-out code): the scores min-max normalised per map, pixels `>= sorted[int(n * 0.5)]`; `fixed`
  (SLAVC's test scripts): pixels `>= 0.5` of the scores;
- **IoU**: `sum(infer * gt) / (sum(gt) + sum(infer * (gt == 0)))` on the benchmark's region (0/0 fails);
- **counts** at a confidence threshold t: a positive with c >= t is a TP when IoU >= 0.5, else an FP; with c < t
  an FN; a negative with c >= t is an FP. Precision = TP / (TP + FP) (1 without detections), recall = TP / (TP +
  FN) (1 without positives);
- **AP** (`AP-all@50`): thresholds `np.sort(c)[:-1][::-max(1, N // 200)]`, precision made monotone (`max` of the
  rest), AP = Σ p_max[i] · (r[i + 1] − r[i]) summed in order;
- **max-F1** (`F1-all@50`, whose maximum the tables print at one decimal): F1 = 2rp / (r + p) (0 when r + p = 0)
  at the thresholds `sorted(c)[::max(1, N // 10)]`; the precision and recall at its first maximum are kept
  (ACL-SSL Table 4);
- **LocAcc** (`Precision-visible@50`): the precision over the positives at threshold −1000, i.e. their share with
  IoU >= 0.5.

Predictions file: one `.npz` holding a map for every positive under its instance id (as `localisation`) and for
every negative pair under `<video>/<audio>` (`negative_key`). All in percent.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from is4.pipeline.evaluation import metrics
from is4.pipeline.evaluation.errors import EvaluationError, few
from is4.pipeline.evaluation.formats import GroundTruth
from is4.pipeline.evaluation.predictions import NpzMaps

TAU = 0.03
RANGES = {
    "slavc": (-1.0 / TAU, 1.0 / TAU),
    "cosine": (-1.0, 1.0),
    "unit": (0.0, 1.0),
}
RANGE_NOTES = {
    "slavc": "±1/τ, τ = 0.03: maps of cos/τ (SLAVC's test.py)",
    "cosine": "±1: maps of cosine similarity (this project's alignment method)",
    "unit": "[0, 1]: maps without a fixed range, min-max or sigmoid (ACL, JSA)",
}
PREDICTIONS = {
    "relative": "per-map min-max of the scores, pixels >= their median (SLAVC --relative_prediction)",
    "fixed": "pixels >= 0.5 of the fixed-range scores (SLAVC's test scripts)",
}
NEGATIVE_LABEL = "non-sounding"
CHUNK = 64
IOU_SUCCESS = 0.5
LOC_ACC_THRESHOLD = -1000.0  # SLAVC's `calc_precision_recall(..., -1000, ...)` for Precision-visible


def negative_key(video: str, audio: str) -> str:
    """The predictions-file key of a negative pair: the frame of `video` with the audio of `audio`."""
    return f"{video}/{audio}"


def negatives_name(benchmark: str) -> str:
    """The negatives file SLAVC and the IS4 authors ship for a benchmark (`vggss_test_plus_silent.csv`)."""
    return f"{benchmark}_test_plus_silent.csv"


def read_negatives(path: str | Path) -> list[tuple[str, str]]:
    """(video, audio) of each `non-sounding` row of a `*_plus_silent.csv` (other rows, the header, are skipped as
    SLAVC's loader skips them); every row is kept, duplicates included."""
    path = Path(path)
    try:
        rows = list(csv.reader(path.read_text(encoding="utf-8").splitlines()))
    except (OSError, UnicodeDecodeError) as exc:
        raise EvaluationError(f"{path}: cannot read the negatives: {exc}") from None
    short = [i + 1 for i, row in enumerate(rows) if row and len(row) < 3]
    if short:
        raise EvaluationError(f"{path}: rows {few(short)} have fewer than 3 fields (video,audio,label)")
    pairs = [(row[0].strip(), row[1].strip()) for row in rows if row and row[2].strip() == NEGATIVE_LABEL]
    if not pairs:
        raise EvaluationError(f"{path}: no row labelled {NEGATIVE_LABEL!r}")
    return pairs


def find_negatives(truth: GroundTruth) -> Path:
    """`<benchmark>_test_plus_silent.csv` beside the ground truth (its folder or the one above)."""
    folder = truth.source if truth.source.is_dir() else truth.source.parent
    name = negatives_name(truth.benchmark)
    for place in (folder, folder.parent):
        if (place / name).is_file():
            return place / name
    raise EvaluationError(f"{folder}: no {name} here; name the negatives with --negatives FILE")


def resize_bicubic(maps: np.ndarray) -> np.ndarray:
    """(n, h, w) float32 maps → (n, 224·224) float32, as torch's `interpolate(bicubic, align_corners=True)`."""
    import torch

    batch = torch.from_numpy(np.ascontiguousarray(maps, dtype=np.float32)[:, None])
    with torch.no_grad():
        out = torch.nn.functional.interpolate(
            batch, size=(metrics.FRAME, metrics.FRAME), mode="bicubic", align_corners=True
        )
    return out.numpy().reshape(len(maps), -1)


def confidence_and_prediction(scores: np.ndarray, prediction: str) -> tuple[np.ndarray, np.ndarray]:
    """(confidence (n,) float32, binary prediction (n, P) bool) of (n, P) float32 fixed-range scores.

    One sort gives both the top quarter (its float32 mean sums in the order of SLAVC's
    `np.sort(...)[-n//4:].mean()`) and the median of the relative cut: min-max normalising is non-decreasing, so
    the normalised map's k-th smallest value is the normalised k-th smallest score."""
    n, n_px = scores.shape
    ordered = np.sort(scores, axis=1)
    conf = ordered[:, n_px + (-n_px) // 4 :].mean(axis=1)  # SLAVC's `[-n//4:]`
    if prediction == "fixed":
        return conf, scores >= np.float32(0.5)
    lo, hi = ordered[:, :1], ordered[:, -1:]
    span = np.where(hi == lo, np.float32(1), hi - lo)
    median = ordered[:, int(n_px * 0.5), None]  # SLAVC's `[int(n * pred_size)]`
    normalised = np.subtract(scores, lo)
    normalised /= span  # utils.normalize_img
    infer = normalised >= (median - lo) / span
    constant = np.flatnonzero(hi[:, 0] == lo[:, 0])
    infer[constant] = True  # normalize_img leaves a constant map as it is: every pixel reaches its median
    return conf, infer


def region_iou(infer: np.ndarray, full: np.ndarray, half: np.ndarray | None) -> np.ndarray:
    """(n,) `sum(infer·gt) / (sum(gt) + sum(infer·(gt == 0)))` for regions 1 on `full`, 0.5 on `half`; 0/0 → 0."""
    n_pred = infer.sum(axis=1)
    inter_full = (infer & full).sum(axis=1)
    inter_half = 0 if half is None else (infer & half).sum(axis=1)
    gt_sum = full.sum(axis=1) + (0.0 if half is None else 0.5 * half.sum(axis=1))
    denom = gt_sum + (n_pred - inter_full - inter_half)
    weighted = inter_full + 0.5 * inter_half
    return np.divide(weighted, denom, out=np.zeros(len(infer)), where=denom > 0)


@dataclass
class Samples:
    """Per pair: `keys` (instance id or `video/audio`), `positive`, `confidence` (float32), `iou` (0 for negatives)."""

    keys: list[str]
    positive: np.ndarray
    confidence: np.ndarray
    iou: np.ndarray


def _read_chunk(source: NpzMaps, keys: list[str], name: str) -> list[np.ndarray]:
    maps, bad = [], []
    for key in keys:
        try:
            arr = np.asarray(source.read(key))
        except ValueError as exc:
            bad.append(f"{key} (unreadable: {exc})")
            continue
        if arr.ndim != 2 or 0 in arr.shape or arr.dtype.kind not in "biuf":
            bad.append(f"{key} (shape {arr.shape}, dtype {arr.dtype}: not a 2-D map of real numbers)")
        elif not np.isfinite(arr).all():
            bad.append(f"{key} (NaN/inf values)")
        else:
            maps.append(arr.astype(np.float32))
    if bad:
        raise EvaluationError(f"{name}: {len(bad)} maps cannot be scored: {few(bad)}")
    return maps


def score_samples(
    truth: GroundTruth,
    predictions: str | Path,
    negatives: list[tuple[str, str]],
    *,
    confidence: str = "slavc",
    prediction: str = "relative",
    workers: int | None = None,
) -> Samples:
    """Confidence and IoU of every positive of `truth` and every negative pair, from the predictions `.npz`."""
    if confidence not in RANGES:
        raise EvaluationError(f"confidence range must be one of {', '.join(RANGES)}, not {confidence!r}")
    if prediction not in PREDICTIONS:
        raise EvaluationError(f"prediction must be one of {', '.join(PREDICTIONS)}, not {prediction!r}")
    lo, hi = RANGES[confidence]
    lo32, span32 = np.float32(lo), np.float32(hi - lo)
    keys = list(truth.instance_ids) + [negative_key(v, a) for v, a in negatives]
    n_pos = len(truth)
    with NpzMaps(predictions) as source:
        have = set(source.keys())
        missing = [k for k in dict.fromkeys(keys) if k not in have]
        if missing:
            raise EvaluationError(f"{predictions}: no map for {len(missing)} of {len(keys)} pairs: {few(missing)}")
        conf = np.zeros(len(keys), dtype=np.float32)
        iou = np.zeros(len(keys))

        def run(start: int) -> None:
            stop = min(start + CHUNK, len(keys))
            maps = _read_chunk(source, keys[start:stop], str(predictions))
            shapes = {m.shape for m in maps}
            resized = (
                resize_bicubic(np.stack(maps))
                if len(shapes) == 1
                else np.concatenate([resize_bicubic(m[None]) for m in maps])
            )
            scores = np.subtract(resized, lo32, out=resized)  # resized is torch's fresh output: scaled in place
            scores /= span32
            c, infer = confidence_and_prediction(scores, prediction)
            conf[start:stop] = c
            pos_stop = min(stop, n_pos)
            if start < pos_stop:
                full, half = truth.regions(start, pos_stop)
                rows = pos_stop - start
                iou[start:pos_stop] = region_iou(infer[:rows], full, None if half is None else half)

        metrics.map_chunks(run, len(keys), CHUNK, workers)
    positive = np.arange(len(keys)) < n_pos
    return Samples(keys, positive, conf, iou)


def _counts(positive: np.ndarray, success: np.ndarray, conf: np.ndarray, thresholds: np.ndarray):
    """(precision, recall) at each confidence threshold, as `EvaluatorFull.calc_precision_recall`."""
    thr = np.asarray(thresholds, dtype=conf.dtype)

    def at_or_above(values: np.ndarray) -> np.ndarray:
        ordered = np.sort(values)
        return ordered.size - np.searchsorted(ordered, thr, side="left")

    tp = at_or_above(conf[positive & success])
    wrong_place = at_or_above(conf[positive & ~success])
    fp = wrong_place + at_or_above(conf[~positive])
    fn = int(np.count_nonzero(positive)) - tp - wrong_place  # the positives below the threshold
    precision = np.where(tp + fp == 0, 1.0, tp / np.maximum(tp + fp, 1))
    recall = np.where(tp + fn == 0, 1.0, tp / np.maximum(tp + fn, 1))
    return precision, recall


def summarise(samples: Samples) -> dict[str, float]:
    """{ap, max_f1, f1_precision, f1_recall, loc_acc} in percent, as SLAVC's `EvaluatorFull` computes them."""
    conf, positive = samples.confidence, samples.positive
    success = samples.iou >= IOU_SUCCESS
    n = conf.size
    ordered = np.sort(conf)
    walk = ordered[:-1][:: -max(1, n // 200)]
    p, r = _counts(positive, success, conf, walk)
    p_max = np.maximum.accumulate(p[::-1])[::-1]
    ap = sum((p_max[:-1] * (r[1:] - r[:-1])).tolist())
    p10, r10 = _counts(positive, success, conf, ordered[:: max(1, n // 10)])
    both = r10 + p10
    f1 = np.where(both > 0, 2 * r10 * p10 / np.where(both > 0, both, 1.0), 0.0)
    best = int(np.argmax(f1))
    # Precision-visible@50: the positives alone at threshold -1000 (1 when there are none)
    loc, _ = _counts(positive[positive], success[positive], conf[positive], np.array([LOC_ACC_THRESHOLD]))
    return {
        "ap": float(ap) * 100.0,
        "max_f1": float(f1[best]) * 100.0,
        "f1_precision": float(p10[best]) * 100.0,
        "f1_recall": float(r10[best]) * 100.0,
        "loc_acc": float(loc[0]) * 100.0,
    }


def extended(
    truth: GroundTruth,
    predictions: str | Path,
    negatives: str | Path | None = None,
    *,
    confidence: str = "slavc",
    prediction: str = "relative",
) -> dict:
    """{"benchmark", "positives", "negatives", "negatives_file", "confidence", "prediction", ap, max_f1,
    f1_precision, f1_recall, loc_acc} for the positives of `truth` and the negative pairs of `negatives`
    (default: `find_negatives`), at full precision in percent."""
    path = find_negatives(truth) if negatives is None else Path(negatives)
    pairs = read_negatives(path)
    samples = score_samples(truth, predictions, pairs, confidence=confidence, prediction=prediction)
    head = {
        "benchmark": truth.benchmark,
        "positives": len(truth),
        "negatives": len(pairs),
        "negatives_file": path.name,
        "confidence": confidence,
        "prediction": prediction,
    }
    return {**head, **summarise(samples)}


def format_extended(result: dict) -> str:
    """A text table of `extended` output: pairs and the five metrics, percent, two decimals."""
    keys = ("ap", "max_f1", "loc_acc", "f1_precision", "f1_recall")
    labels = ("AP", "max-F1", "LocAcc", "P@max-F1", "R@max-F1")
    head = ["", "positives", "negatives", *labels]
    row = ["model", str(result["positives"]), str(result["negatives"]), *(f"{result[k]:.2f}" for k in keys)]
    widths = [max(len(a), len(b)) for a, b in zip(head, row)]
    return "\n".join(
        "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths)))
        for line in (head, row)
    )
