"""IS4 localisation metrics, vectorised over a batch of N instances (arrays of shape (N, 224, 224)).

A model gives one heatmap per (image, audio) instance; it is scored against the instance's ground-truth region
(a filled box or a segmentation mask) in the 224×224 image frame. Every function here works on whole batches:
there is no per-sample Python loop in the hot path (`per_instance` walks over fixed-size chunks of instances, on
a few threads, only to bound memory and use the cores; the results do not depend on either). The cost is
dominated by one sort of each map's 50,176 values, which serves both the top-50 % and the top-K cut.

Conventions (all reported numbers are percentages, rounded to 4 decimals):

- **Binarisation, top K with ties.** Let `s` be a map's N_px pixel values sorted ascending. The top-K mask keeps
  the pixels whose value is *strictly greater* than the (K+1)-th largest value, `s[N_px - K - 1]` (all pixels when
  K = N_px). So exactly K pixels are kept whenever the K-th and (K+1)-th largest values differ, and never more than
  K; when they are tied, the whole tied group is dropped (a map's tie group is never split by pixel position, so
  the rule does not depend on where pixels are). A constant map keeps nothing (the harness rejects constant
  maps). This is the `heatmap > np.sort(flat)[i]` convention of the common VGG-SS / Flickr-SoundNet evaluation code
  (e.g. LVS, i = int(N_px / 2)), with i = N_px - K - 1 so that K pixels, not K - 1, are kept when there are no
  ties.
- **cIoU**: top 50 % binarisation (K = N_px / 2 = 25,088 at 224×224); a sample succeeds when its IoU with the
  ground-truth region is >= 0.5; cIoU is the success rate. **Adaptive cIoU**: the same with K = the ground-truth
  area in pixels.
- **AUC**: area under the success-rate curve over the IoU thresholds 0, 0.05, …, 1.0 (`np.arange(21) / 20`,
  exactly representable ratios, so an IoU of 3/20 passes the 0.15 threshold), trapezoid rule over the 21 points,
  divided by the threshold range (1.0), so it lies in [0, 1]. Success at a threshold is `IoU >= threshold`.
- **IIoU / IAUC**: an *image* succeeds only when every one of its instances succeeds, i.e. when its smallest
  instance IoU passes the threshold; IIoU is the image success rate at 0.5, IAUC the AUC of the image success
  curve. Both have adaptive variants from the adaptive IoUs.
- **mIoU / F-score** (mask ground truth, AVSBench-style): mIoU is the mean over instances of the IoU between the
  binarised prediction and the mask; the F-score is the mean over instances of
  (1 + β²)·P·R / (β²·P + R) with β² = 0.3, P = |pred ∩ gt| / |pred|, R = |pred ∩ gt| / |gt|. AVSBench's maximum
  over 255 thresholds is *not* used: the prediction is binarised with the same top-50 % (`miou`, `fscore`) and
  top-K (`miou_adaptive`, `fscore_adaptive`) rules as cIoU. An empty prediction has P = 0; P = R = 0 gives F = 0.
- **IoU of two empty regions** is 0 (an empty region cannot be localised; the harness rejects empty ground truth).
- **Resizing**: `resize_bilinear` is bilinear interpolation with half-pixel centres and edge clamping, no
  anti-aliasing, i.e. `torch.nn.functional.interpolate(mode="bilinear", align_corners=False)`.
- **Boxes**: `box_mask` fills pixel (row r, column c) when x1 <= c + 0.5 < x2 and y1 <= r + 0.5 < y2 (pixel
  centres): for integer coordinates that is columns x1 … x2 - 1 and rows y1 … y2 - 1 (x2 / y2 are exclusive pixel
  edges), and anything outside the frame is clipped.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

FRAME = 224
THRESHOLDS = np.arange(21) / 20  # 0, 0.05, …, 1.0
SUCCESS_IOU = 0.5
BETA2 = 0.3
CHUNK = 16  # instances per chunk in `per_instance`: a 3 MB sorted chunk per thread stays in cache

METRIC_KEYS = ("ciou", "ciou_adaptive", "auc", "auc_adaptive", "iiou", "iiou_adaptive", "iauc", "iauc_adaptive")
MASK_METRIC_KEYS = ("miou", "fscore", "miou_adaptive", "fscore_adaptive")


# --- geometry -----------------------------------------------------------------------------------------------


def _interp_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) bilinear weights, half-pixel centres, clamped at the edges (align_corners=False)."""
    src = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
    src = np.maximum(src, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    lam = src - i0
    weights = np.zeros((n_out, n_in))
    rows = np.arange(n_out)
    np.add.at(weights, (rows, i0), 1.0 - lam)
    np.add.at(weights, (rows, i1), lam)
    return weights


def resize_bilinear(maps: np.ndarray, size: int | tuple[int, int] = FRAME) -> np.ndarray:
    """Resize (H, W) or (N, H, W) maps to `size` (int or (height, width)), bilinear as documented above.

    Computed in float64 as two matrix products (rows, then columns); returns float32. A map already at the target
    size is returned unchanged (as float32).
    """
    maps = np.asarray(maps)
    out_h, out_w = (size, size) if isinstance(size, int) else size
    in_h, in_w = maps.shape[-2:]
    if (in_h, in_w) == (out_h, out_w):
        return maps.astype(np.float32, copy=False)
    wy = _interp_matrix(in_h, out_h)
    wx = _interp_matrix(in_w, out_w)
    out = wy @ maps.astype(np.float64) @ wx.T
    return out.astype(np.float32)


def box_mask(boxes_xyxy, size: int = FRAME) -> np.ndarray:
    """Filled (N, size, size) bool masks for boxes (N, 4) `[x1, y1, x2, y2]` in pixels of the size×size frame.

    Pixel (r, c) is inside when x1 <= c + 0.5 < x2 and y1 <= r + 0.5 < y2 (x2, y2 exclusive pixel edges).
    """
    boxes = np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4)
    centres = np.arange(size) + 0.5
    x1, y1, x2, y2 = (boxes[:, i : i + 1] for i in range(4))
    in_x = (centres >= x1) & (centres < x2)  # (N, size)
    in_y = (centres >= y1) & (centres < y2)
    return in_y[:, :, None] & in_x[:, None, :]


# --- binarisation -------------------------------------------------------------------------------------------


def _as_batch(maps: np.ndarray) -> np.ndarray:
    maps = np.asarray(maps)
    if maps.ndim != 3:
        raise ValueError(f"expected maps of shape (N, H, W), got {maps.shape}")
    return maps


def _check_k(k, n: int, n_px: int) -> np.ndarray:
    k = np.asarray(k)
    if k.dtype.kind not in "iu" and not (k.dtype.kind == "f" and np.all(k == np.round(k))):
        raise ValueError("k must hold whole numbers of pixels")
    k = np.broadcast_to(k.astype(np.int64), (n,))
    if k.size and (k.min() < 0 or k.max() > n_px):
        raise ValueError(f"k must lie in [0, {n_px}] (pixels per map)")
    return k


def _top_k_rows(flat: np.ndarray, ordered: np.ndarray, k: np.ndarray) -> np.ndarray:
    """(n, P) bool: per row of `flat`, the values strictly above the (k+1)-th largest (`ordered`: rows sorted)."""
    n, n_px = flat.shape
    idx = n_px - k - 1  # ascending rank of the (k+1)-th largest value
    thr = ordered[np.arange(n), np.maximum(idx, 0)]  # in the maps' dtype: no up-casting of the comparison
    pred = flat > thr[:, None]
    pred[idx < 0] = True  # k = all pixels
    return pred


def binarise_top_k(maps: np.ndarray, k) -> np.ndarray:
    """(N, H, W) bool: per map, the pixels whose value is strictly greater than its (k+1)-th largest value.

    `k` is an int or an (N,) array of pixel counts in [0, H*W]. Exactly k pixels are kept unless the k-th and
    (k+1)-th largest values are tied, in which case that whole tied group is dropped (see the module docstring).
    """
    maps = _as_batch(maps)
    n, h, w = maps.shape
    flat = maps.reshape(n, h * w)
    k = _check_k(k, n, h * w)
    return _top_k_rows(flat, np.sort(flat, axis=1), k).reshape(n, h, w)


def binarise_top_fraction(maps: np.ndarray, fraction: float = 0.5) -> np.ndarray:
    """(N, H, W) bool: the top `fraction` of each map's pixels, K = round(fraction · H · W), ties as in top-K."""
    maps = _as_batch(maps)
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must lie in [0, 1], got {fraction}")
    n_px = maps.shape[1] * maps.shape[2]
    return binarise_top_k(maps, int(round(fraction * n_px)))


# --- per-instance scores ------------------------------------------------------------------------------------


def _row_count(mask: np.ndarray) -> np.ndarray:
    """(n,) int64 number of True values per row of an (n, P) bool array (a byte sum: faster than count_nonzero)."""
    n_px = mask.shape[1]
    acc = np.uint16 if n_px < 2**16 else np.int64
    return mask.view(np.uint8).sum(axis=1, dtype=acc).astype(np.int64)


def _counts(pred: np.ndarray, gt: np.ndarray):
    n = pred.shape[0]
    pred, gt = pred.reshape(n, -1), gt.reshape(n, -1)
    return _row_count(pred & gt), _row_count(pred), _row_count(gt)


def _iou_from_counts(inter, n_pred, n_gt) -> np.ndarray:
    union = n_pred + n_gt - inter
    return np.divide(inter, union, out=np.zeros(inter.shape, dtype=np.float64), where=union > 0)


def _fscore_from_counts(inter, n_pred, n_gt, beta2: float) -> np.ndarray:
    zeros = np.zeros(inter.shape, dtype=np.float64)
    precision = np.divide(inter, n_pred, out=zeros.copy(), where=n_pred > 0)
    recall = np.divide(inter, n_gt, out=zeros.copy(), where=n_gt > 0)
    denom = beta2 * precision + recall
    return np.divide((1.0 + beta2) * precision * recall, denom, out=zeros, where=denom > 0)


def iou(pred_masks: np.ndarray, gt_masks: np.ndarray) -> np.ndarray:
    """(N,) float64 IoU of bool masks (N, H, W); 0 where both are empty."""
    pred, gt = np.asarray(pred_masks, dtype=bool), np.asarray(gt_masks, dtype=bool)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction masks {pred.shape} and ground truth {gt.shape} differ in shape")
    return _iou_from_counts(*_counts(pred, gt))


def fscore(pred: np.ndarray, gt: np.ndarray, beta2: float = BETA2) -> np.ndarray:
    """(N,) float64 F-beta of bool masks: (1 + β²)·P·R / (β²·P + R), 0 when P = R = 0."""
    pred, gt = np.asarray(pred, dtype=bool), np.asarray(gt, dtype=bool)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction masks {pred.shape} and ground truth {gt.shape} differ in shape")
    return _fscore_from_counts(*_counts(pred, gt), beta2)


def _score_chunk(flat: np.ndarray, gt: np.ndarray, beta2: float) -> dict[str, np.ndarray]:
    """Per-instance scores of one chunk of (n, P) maps and bool masks: one sort serves both binarisations."""
    n, n_px = flat.shape
    ordered = np.sort(flat, axis=1)
    if flat.dtype.kind == "f" and not (np.isfinite(ordered[:, 0]).all() and np.isfinite(ordered[:, -1]).all()):
        raise ValueError("maps hold NaN or infinite values")  # sorting puts NaN / inf at the ends
    area = _row_count(gt)
    out = {"gt_area": area}
    for suffix, k in (("", np.full(n, int(round(0.5 * n_px)))), ("_adaptive", area)):
        pred = _top_k_rows(flat, ordered, k)
        n_pred = _row_count(pred)
        inter = _row_count(np.logical_and(pred, gt, out=pred))
        out["iou" + suffix] = _iou_from_counts(inter, n_pred, area)
        out["fscore" + suffix] = _fscore_from_counts(inter, n_pred, area, beta2)
    return out


def per_instance(maps: np.ndarray, gt_masks: np.ndarray, *, beta2: float = BETA2, chunk: int = CHUNK,
                 workers: int | None = None) -> dict[str, np.ndarray]:
    """Per-instance IoU and F-score (N,) for the top-50 % and the adaptive top-K binarisations.

    Keys: `iou`, `iou_adaptive`, `fscore`, `fscore_adaptive`, `gt_area`. The batch is scored in chunks of
    `chunk` instances (bounding memory) on `workers` threads (default: the CPU count, at most 8; NumPy releases
    the GIL while sorting and counting). Results do not depend on `chunk` or `workers`.
    """
    maps = _as_batch(maps)
    gt_masks = np.asarray(gt_masks, dtype=bool)
    if maps.shape != gt_masks.shape:
        raise ValueError(f"maps {maps.shape} and ground-truth masks {gt_masks.shape} differ in shape")
    if maps.dtype.kind not in "biuf":
        raise ValueError(f"maps must be real numbers, got dtype {maps.dtype}")
    n, h, w = maps.shape
    flat_maps, flat_gt = maps.reshape(n, h * w), gt_masks.reshape(n, h * w)
    keys = ("iou", "iou_adaptive", "fscore", "fscore_adaptive")
    out = {key: np.zeros(n) for key in keys}
    out["gt_area"] = np.zeros(n, dtype=np.int64)

    def run(start: int) -> None:
        stop = min(start + chunk, n)
        for key, values in _score_chunk(flat_maps[start:stop], flat_gt[start:stop], beta2).items():
            out[key][start:stop] = values

    starts = range(0, n, chunk)
    workers = min(8, os.cpu_count() or 1) if workers is None else workers
    if workers <= 1 or len(starts) <= 1:
        for start in starts:
            run(start)
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(run, starts))  # list(): re-raise the first error
    return out


# --- aggregation --------------------------------------------------------------------------------------------


def success_curve(ious, thresholds=THRESHOLDS) -> np.ndarray:
    """(T,) fraction of IoUs >= each threshold (0 for an empty list)."""
    ious = np.asarray(ious, dtype=np.float64).reshape(-1)
    thresholds = np.asarray(thresholds, dtype=np.float64).reshape(-1)
    if ious.size == 0:
        return np.zeros(thresholds.shape)
    return (ious[:, None] >= thresholds[None, :]).mean(axis=0)


def auc(curve, thresholds=THRESHOLDS) -> float:
    """Trapezoid area under `curve` over `thresholds`, divided by the threshold range (so in [0, 1])."""
    curve = np.asarray(curve, dtype=np.float64).reshape(-1)
    thresholds = np.asarray(thresholds, dtype=np.float64).reshape(-1)
    if curve.shape != thresholds.shape or curve.size < 2:
        raise ValueError("curve and thresholds need the same length, at least 2")
    span = thresholds[-1] - thresholds[0]
    if span <= 0:
        raise ValueError("thresholds must increase")
    return float(np.trapezoid(curve, thresholds) / span)


def image_min_iou(ious, image_index) -> tuple[np.ndarray, np.ndarray]:
    """(images, min_iou): the distinct image ids (sorted, as `np.unique`) and each image's smallest instance IoU."""
    ious = np.asarray(ious, dtype=np.float64).reshape(-1)
    image_index = np.asarray(image_index).reshape(-1)
    if ious.shape != image_index.shape:
        raise ValueError(f"{ious.size} IoUs but {image_index.size} image ids")
    images, inverse = np.unique(image_index, return_inverse=True)
    minima = np.full(images.shape, np.inf)
    np.minimum.at(minima, inverse, ious)
    return images, minima


def image_success(ious, image_index, threshold: float = SUCCESS_IOU) -> np.ndarray:
    """Per image (in `np.unique(image_index)` order): True when EVERY instance of the image has IoU >= threshold."""
    _, minima = image_min_iou(ious, image_index)
    return minima >= threshold


def _pct(value: float) -> float:
    return round(float(value) * 100.0, 4)


def summarise(instance_scores: dict, image_ids: Sequence, *, with_mask_metrics: bool = False,
              thresholds=THRESHOLDS) -> dict[str, float]:
    """The metric dict (percent, 4 decimals) from `per_instance` output and the instances' image ids."""
    result: dict[str, float] = {}
    for suffix in ("", "_adaptive"):
        ious = instance_scores["iou" + suffix]
        _, image_ious = image_min_iou(ious, image_ids)
        result["ciou" + suffix] = _pct(np.mean(ious >= SUCCESS_IOU))
        result["auc" + suffix] = _pct(auc(success_curve(ious, thresholds), thresholds))
        result["iiou" + suffix] = _pct(np.mean(image_ious >= SUCCESS_IOU))
        result["iauc" + suffix] = _pct(auc(success_curve(image_ious, thresholds), thresholds))
        if with_mask_metrics:
            result["miou" + suffix] = _pct(np.mean(ious))
            result["fscore" + suffix] = _pct(np.mean(instance_scores["fscore" + suffix]))
    order = METRIC_KEYS + (MASK_METRIC_KEYS if with_mask_metrics else ())
    return {key: result[key] for key in order}


def score(maps: np.ndarray, gt_masks: np.ndarray, image_ids: Sequence, *, with_mask_metrics: bool = False,
          thresholds=THRESHOLDS, workers: int | None = None) -> dict[str, float]:
    """All IS4 metrics for (N, H, W) heatmaps against (N, H, W) bool ground truth, in percent (4 decimals).

    Keys: ciou, ciou_adaptive, auc, auc_adaptive, iiou, iiou_adaptive, iauc, iauc_adaptive, and with
    `with_mask_metrics` also miou, fscore, miou_adaptive, fscore_adaptive. `image_ids` (N,) groups instances into
    images for IIoU / IAUC. `workers`: threads for `per_instance` (default: the CPU count, at most 8).
    """
    maps = _as_batch(maps)
    if len(image_ids) != maps.shape[0]:
        raise ValueError(f"{maps.shape[0]} maps but {len(image_ids)} image ids")
    if maps.shape[0] == 0:
        raise ValueError("nothing to score: no instances")
    scores = per_instance(maps, gt_masks, workers=workers)
    return summarise(scores, image_ids, with_mask_metrics=with_mask_metrics, thresholds=thresholds)
