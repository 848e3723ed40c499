"""IS4 localisation metrics on batches of heatmaps, under two protocols: `reference` (the default) and `exact-k`.

A model gives one heatmap per (image, audio) instance, scored against the instance's ground-truth region (a box, a
union or consensus of boxes, or a segmentation mask) in the 224×224 frame. All reported numbers are percentages.

**`reference`** reproduces the evaluation code the IS4 papers report (the authors' `Evaluator_iiou` + `test.py` loop
for boxes, their AVSBench-style mask evaluator for masks), so that numbers can sit next to published ones:

- cIoU binarises `pred > np.sort(pred.flat)[int(H*W/2)]`; adaptive cIoU `pred > np.sort(pred.flat)[H*W - A]`
  (A = ground-truth area, the number of non-zero ground-truth pixels);
- IoU = `sum(bin*gt) / (sum(gt) + sum(bin*(gt==0)))` (for a 0/1 region the usual IoU; for a consensus map with
  values 0, 0.5 and 1 a weighted one); a sample succeeds when IoU `>= 0.5`; cIoU is the success rate;
- AUC: `sklearn.metrics.auc` of the success rate over the thresholds `[0.05*i for i in range(21)]` (the floats
  Python makes: 0.15000000000000002, …), success at a threshold being `IoU >= threshold`. sklearn is not a
  dependency: `auc` is the trapezoid rule the way `sklearn.metrics.auc` computes it (`np.trapezoid(y, x)`, after
  checking that x is monotonic);
- IIoU / IAUC: an image succeeds only when every one of its instances does, i.e. on each image's smallest
  instance IoU (images group by the instance id minus its last `_category` part; see `evaluate`);
- mask metrics, on the same two binarisations: mIoU = mean over instances of `inter / (union + 1e-7)`; the
  F-score (β² = 0.3) of the binarised map at the 255 thresholds `linspace(0, 1 - 1e-10, 255)` (`>=`: at 0 the
  prediction is the whole frame, at every other threshold the binarised map), averaged over instances per
  threshold, then the maximum over thresholds; P = inter / |pred| (0 when nothing is predicted), R = inter / A,
  F = (1 + β²)·P·R / (β²·P + R), 0 when P = R = 0;
- the ground-truth box is `gt[int(y1):int(y2), int(x1):int(x2)] = 1` (numpy slicing of each `int()`-truncated
  coordinate: a negative one counts from the far edge, as in the reference);
- the map path (`MAP_PATHS`): by default ("validate", the authors' test.py `validate()`) a map is float32, resized
  to 224×224 as `torch.nn.functional.interpolate(bilinear, align_corners=True)` computes it (bit for bit,
  `resize_torch`), then min-max normalised in float32 before the cuts (float32 rounding may merge values: the
  reference cuts the normalised map); "lvs" (their `validate_lvs()`, used for their own checkpoints on VGG-SS)
  resizes with OpenCV's INTER_LINEAR (`resize_cv2`) and scores `1 - normalize(-map)`;
- empty regions are scored, not refused: IoU 0, the adaptive cut at H·W // 2 pixels; for masks the reference's
  no-object mIoU (pixels left out / H·W) with its own adaptive fallback (half the batch size), F-scores left out;
- mIoU averages per-batch means over batches of 64 in file order (`MIOU_MEANS`, "instance" is the plain mean).

**`exact-k`** is this project's tie-safe variant: a cut keeps exactly K pixels (those strictly above the (K+1)-th
largest value; a tied group at the cut is dropped whole, so ties never depend on pixel position), with K = half
the pixels or K = A. It is what a reader of the papers' definitions ("the top 50 % of pixels", "the top K = A
pixels") would compute. Side by side:

| | `reference` (default) | `exact-k` |
| --- | --- | --- |
| top-50 % cut | `pred > s[int(H·W/2)]`, s = the sorted map: keeps H·W/2 − 1 = 25,087 distinct pixels | `pred > s[H·W − K − 1]`, K = 25,088: exactly K |
| adaptive cut | `pred > s[H·W − A]`: A − 1 pixels (an oracle has IoU (A−1)/A, so it fails the 1.0 AUC threshold) | `pred > s[H·W − A − 1]`: exactly A pixels |
| full-frame region, top-50 % | IoU (H·W/2 − 1)/(H·W) < 0.5: no map can succeed | IoU 0.5: succeeds |
| AUC thresholds | `[0.05*i for i in range(21)]` (binary floats: an IoU of exactly 0.15 fails 0.15000000000000002) | `arange(21) / 20` (exact ratios) |
| AUC | trapezoid over the thresholds (sklearn.metrics.auc) | the same trapezoid |
| box → region | `gt[int(y1):int(y2), int(x1):int(x2)] = 1` | pixels whose centre lies in [x1, x2) × [y1, y2), clipped to the frame |
| resizing | float32 torch bilinear, `align_corners=True`, then float32 min-max | float64 bilinear, half-pixel centres |
| mIoU | mean of inter / (union + 1e-7) | mean IoU |
| F-score | max over 255 thresholds of the mean F (threshold 0: the whole frame) | mean F of the binarised map |

Both protocols share the IoU, the success rule (`>= 0.5`), the grouping into images and the minimum per image. On
integer boxes inside the frame the two box rules agree; with distinct map values the cuts differ by one pixel.

Vectorised over chunks of instances: the two cut values come from `np.partition` (numpy's SIMD quickselect) of a
copy of the chunk, at the top-50 % rank for every map at once, then at each map's adaptive rank within the part
that holds it (`rank_values`), so no map is sorted; each chunk's minima and maxima are taken once (the NaN / inf
check, the constant maps, the normalisation). `per_instance` walks over fixed-size chunks on a few threads only to
bound memory and use the cores (the results do not depend on either). Arithmetic is float64 on the maps' own values (float32 maps are compared as
float32, as the reference compares its float32 model outputs).
"""

from __future__ import annotations

import bisect
import dataclasses
import functools
import os
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

FRAME = 224
SUCCESS_IOU = 0.5
BETA2 = 0.3
CHUNK = 16  # instances per chunk in `per_instance`: a 3 MB chunk per thread stays in cache

METRIC_KEYS = ("ciou", "ciou_adaptive", "auc", "auc_adaptive", "iiou", "iiou_adaptive", "iauc", "iauc_adaptive")
MASK_METRIC_KEYS = ("miou", "fscore", "miou_adaptive", "fscore_adaptive")
PER_INSTANCE_KEYS = ("iou", "iou_adaptive", "miou", "miou_adaptive", "fscore", "fscore_adaptive", "fscore_frame")

FSCORE_THRESHOLDS = np.linspace(0, 1 - 1e-10, 255)  # the reference F-measure's thresholds on a binarised map


MAP_PATHS = {
    "validate": "float32 `interpolate(bilinear, align_corners=True)` as torch computes it, then min-max in float32 "
    "(the authors' test.py validate())",
    "lvs": "float32 OpenCV INTER_LINEAR resize, then 1 - normalize(-map) in float32 (the authors' validate_lvs(), "
    "their own checkpoints on VGG-SS)",
    "exact": "bilinear in float64 on the map's own values, no normalisation (exact-k)",
    "jsa": "float32 torch bicubic (align_corners=False), then min-max in float32 (JSA's test_model.py; fixed)",
}
MIOU_MEANS = {
    "batch": "mean of per-batch means over batches of 64 in file order (the authors' test loader)",
    "instance": "mean over instances",
}
MIOU_BATCH = 64  # the authors' test loader's batch size


@dataclass(frozen=True)
class Protocol:
    """One set of scoring rules (see the module docstring for the two that exist)."""

    name: str
    thresholds: tuple[float, ...]  # AUC thresholds
    align_corners: bool  # bilinear resizing of maps that are not FRAME × FRAME (map path "exact")
    box_rule: str  # "slice" (reference) or "centre" (exact-k), see `box_mask`
    keep_k: bool  # True: a cut keeps exactly K pixels; False: `pred > s[int(N/2)]` / `s[N - A]`
    miou_eps: float  # inter / (union + eps)
    fscore_max: bool  # True: max over FSCORE_THRESHOLDS of the mean F; False: mean F of the binarised map
    map_path: str = "validate"  # how a map is resized and normalised before the cuts: a key of MAP_PATHS
    miou_mean: str = "batch"  # how mIoU averages: a key of MIOU_MEANS
    threshold: float | None = None  # "fixed": keep the pixels >= threshold of the normalised map; no adaptive cut

    def top_half_index(self, n_px: int) -> int:
        """Ascending rank of the top-50 % cut value: the map keeps `pred > sorted[index]`."""
        return n_px - int(round(n_px / 2)) - 1 if self.keep_k else int(n_px / 2)

    def adaptive_index(self, n_px: int, area: np.ndarray) -> np.ndarray:
        """Ascending rank of the adaptive cut value for ground-truth areas `area` (-1: keep every pixel); an empty
        region (area 0) is cut as the reference cuts it, at half the pixels (`H·W // 2`)."""
        area = np.asarray(area, dtype=np.int64)
        area = np.where(area == 0, n_px // 2, area)
        return n_px - area - (1 if self.keep_k else 0)


REFERENCE = Protocol(
    "reference",
    tuple(0.05 * i for i in range(21)),
    align_corners=True,
    box_rule="slice",
    keep_k=False,
    miou_eps=1e-7,
    fscore_max=True,
)
EXACT_K = Protocol(
    "exact-k",
    tuple((np.arange(21) / 20).tolist()),
    align_corners=False,
    box_rule="centre",
    keep_k=True,
    miou_eps=0.0,
    fscore_max=False,
    map_path="exact",
    miou_mean="instance",
)
FIXED = Protocol(
    "fixed",
    tuple(0.05 * i for i in range(21)),
    align_corners=False,
    box_rule="slice",
    keep_k=False,
    miou_eps=1e-7,
    fscore_max=True,
    map_path="jsa",
    miou_mean="instance",
    threshold=0.6,
)
PROTOCOLS = {p.name: p for p in (REFERENCE, EXACT_K, FIXED)}
DEFAULT_PROTOCOL = REFERENCE.name


def get_protocol(
    protocol: str | Protocol,
    *,
    map_path: str | None = None,
    miou_mean: str | None = None,
    threshold: float | None = None,
) -> Protocol:
    """The Protocol named `protocol` (or `protocol` itself), with the named options changed; ValueError naming the
    known ones otherwise."""
    if not isinstance(protocol, Protocol):
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}, not {protocol!r}")
        protocol = PROTOCOLS[protocol]
    if map_path is not None and map_path not in MAP_PATHS:
        raise ValueError(f"map path must be one of {', '.join(MAP_PATHS)}, not {map_path!r}")
    if miou_mean is not None and miou_mean not in MIOU_MEANS:
        raise ValueError(f"mIoU mean must be one of {', '.join(MIOU_MEANS)}, not {miou_mean!r}")
    if threshold is not None and protocol.threshold is None:
        raise ValueError(f"a threshold applies to the fixed protocol only, not {protocol.name!r}")
    if threshold is not None and not 0.0 <= threshold <= 1.0:
        raise ValueError(f"the threshold must lie in [0, 1] (the map is min-max normalised), not {threshold}")
    return dataclasses.replace(
        protocol,
        map_path=map_path or protocol.map_path,
        miou_mean=miou_mean or protocol.miou_mean,
        threshold=protocol.threshold if threshold is None else threshold,
    )


# --- geometry -----------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=64)
def _axis_weights(n_in: int, n_out: int, align_corners: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(i0, i1, lam): output position o samples (1 - lam) · in[i0] + lam · in[i1] along one axis."""
    out = np.arange(n_out, dtype=np.float64)
    if align_corners:
        src = out * ((n_in - 1) / (n_out - 1)) if n_out > 1 else np.zeros(n_out)
    else:
        src = np.maximum((out + 0.5) * (n_in / n_out) - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    return i0, i1, src - i0


def resize_bilinear(maps: np.ndarray, size: int | tuple[int, int] = FRAME, *, align_corners: bool = True) -> np.ndarray:
    """Resize (H, W) or (N, H, W) maps to `size` (int or (height, width)) by bilinear interpolation, no
    anti-aliasing, as `torch.nn.functional.interpolate(mode="bilinear", align_corners=...)`.

    Separable, along the width then the height, in float64 (torch computes float32 maps in float32, so the two
    agree to about 1e-6 of the value range). Returns float64 for float64 input, float32 otherwise; a map already at
    `size` is returned unchanged in that dtype.
    """
    maps = np.asarray(maps)
    out_h, out_w = (size, size) if isinstance(size, int) else size
    in_h, in_w = maps.shape[-2:]
    dtype = np.float64 if maps.dtype == np.float64 else np.float32
    if (in_h, in_w) == (out_h, out_w):
        return maps.astype(dtype, copy=False)
    x0, x1, lx = _axis_weights(in_w, out_w, align_corners)
    y0, y1, ly = _axis_weights(in_h, out_h, align_corners)
    src = maps.astype(np.float64, copy=False)
    rows = src[..., x0] * (1.0 - lx) + src[..., x1] * lx  # (..., in_h, out_w)
    shape = (*maps.shape[:-2], out_h, out_w)
    top = np.take(rows, y0, axis=-2, out=scratch("resize_top", shape, np.float64))
    top *= (1.0 - ly)[:, None]
    bottom = np.take(rows, y1, axis=-2, out=scratch("resize_bottom", shape, np.float64))
    bottom *= ly[:, None]
    top += bottom  # (1 - ly) · upper row + ly · lower row, as torch orders it
    return top.astype(dtype)


def _fma32(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """float32 `a * b + c` rounded once, as a fused multiply-add: the product of two float32 values is exact in
    float64, so only the sum rounds (twice, float64 then float32: different from one rounding in about 2**-29 of
    cases)."""
    return (a.astype(np.float64) * b + c).astype(np.float32)


@functools.lru_cache(maxsize=64)
def _torch_axis(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(i0, i1, lambda0, lambda1) of torch's bilinear `align_corners=True` along one axis, in float32 as
    ATen's UpSample.h computes them (`area_pixel_compute_scale`, `guard_index_and_lambda`)."""
    f32 = np.float32
    scale = f32(f32(n_in - 1) / f32(n_out - 1)) if n_out > 1 else f32(0)
    real = scale * np.arange(n_out, dtype=f32)
    i0 = np.minimum(np.floor(real).astype(np.int64), n_in - 1)
    lam1 = np.clip(real - i0.astype(f32), f32(0), f32(1)).astype(f32)
    return i0, i0 + (i0 < n_in - 1), (f32(1) - lam1).astype(f32), lam1


def resize_torch(maps: np.ndarray, size: int = FRAME) -> np.ndarray:
    """`torch.nn.functional.interpolate(maps, size, mode="bilinear", align_corners=True)` on float32 maps
    (H, W) or (N, H, W), bit for bit as torch's CPU kernel computes it: along the width, then the height, each step
    `fma(v0, lambda0, v1 * lambda1)` in float32 (the contraction its compiled kernel makes)."""
    maps = np.asarray(maps, dtype=np.float32)
    x0, x1, lx0, lx1 = _torch_axis(maps.shape[-1], size)
    y0, y1, ly0, ly1 = _torch_axis(maps.shape[-2], size)
    rows = _fma32(maps[..., x0], lx0, maps[..., x1] * lx1)  # every input row along the width, once
    wide = np.multiply(rows[..., y0, :], ly0[:, None], dtype=np.float64)  # `_fma32` of the two rows, in place
    wide += rows[..., y1, :] * ly1[:, None]
    return wide.astype(np.float32)


@functools.lru_cache(maxsize=64)
def _cv2_axis(n_in: int, n_out: int, clamp: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(i0, i1, w0, w1) of OpenCV's INTER_LINEAR along one axis (imgproc resize.cpp `resizeGeneric`): source
    position `(float)((d + 0.5) * (n_in / n_out)⁻¹ - 0.5)`, weights `1 - f`, `f` in float32; indices clamped to the
    axis. Along the width (`clamp`) a position before the first or at / after the last pixel takes that pixel
    with weight 1; along the height the rows are clamped but the weights are kept."""
    scale = 1.0 / (n_out / n_in)
    pos = ((np.arange(n_out) + 0.5) * scale - 0.5).astype(np.float32)
    i0 = np.floor(pos).astype(np.int64)
    frac = (pos - i0.astype(np.float32)).astype(np.float32)
    if clamp:
        low, high = i0 < 0, i0 >= n_in - 1
        frac[low | high] = 0
        i0 = np.where(low, 0, np.where(high, n_in - 1, i0))
    i1 = np.clip(i0 + 1, 0, n_in - 1)
    i0 = np.clip(i0, 0, n_in - 1)
    return i0, i1, (np.float32(1) - frac).astype(np.float32), frac


def resize_cv2(maps: np.ndarray, size: int = FRAME) -> np.ndarray:
    """`cv2.resize(map, (size, size), interpolation=cv2.INTER_LINEAR)` on float32 maps (H, W) or (N, H, W): each
    row along the width (`S[x0]·w0 + S[x1]·w1`, a border pixel copied), then two rows combined (`R0·b0 + R1·b1`),
    in float32 without fused multiply-adds (OpenCV is not installed here: written from its resize.cpp)."""
    maps = np.asarray(maps, dtype=np.float32)
    x0, x1, wx0, wx1 = _cv2_axis(maps.shape[-1], size, True)
    y0, y1, wy0, wy1 = _cv2_axis(maps.shape[-2], size, False)
    rows = maps[..., x0] * wx0 + maps[..., x1] * wx1
    return rows[..., y0, :] * wy0[:, None] + rows[..., y1, :] * wy1[:, None]


def resize_bicubic_torch(maps: np.ndarray, size: int = FRAME) -> np.ndarray:
    """`torch.nn.functional.interpolate(maps, size, mode="bicubic", align_corners=False)` on float32 (H, W) or
    (N, H, W) maps, computed by torch itself (JSA's official test code resizes so)."""
    import torch

    maps = np.asarray(maps, dtype=np.float32)
    batch = torch.from_numpy(maps.reshape(-1, 1, *maps.shape[-2:]).copy())
    with torch.no_grad():
        out = torch.nn.functional.interpolate(batch, size=(size, size), mode="bicubic", align_corners=False)
    return out.numpy().reshape(*maps.shape[:-2], size, size)


def resize_map(arr: np.ndarray, protocol: Protocol, size: int = FRAME) -> np.ndarray:
    """One map (H, W) resized to size × size as `protocol.map_path` says (float32, float64 for "exact")."""
    if protocol.map_path == "jsa":
        return resize_bicubic_torch(arr, size)
    if protocol.map_path == "validate":
        return resize_torch(arr, size)
    if protocol.map_path == "lvs":
        return resize_cv2(arr, size)
    return resize_bilinear(arr, size, align_corners=protocol.align_corners)


def normalise_values(values: np.ndarray, lo, hi, map_path: str, out: np.ndarray | None = None) -> np.ndarray:
    """Values of maps whose minimum and maximum are `lo` and `hi` (broadcast against `values`) as the map path
    scores them: float32 min-max `(v - lo) / (hi - lo)` ("validate", "jsa"), float32 `1 - normalize(-v)` ("lvs"),
    unchanged ("exact"). A constant map stays as it is, as the reference's `normalize_img` leaves it. Element by
    element (into `out` where given); both are non-decreasing, so they only merge values float32 cannot tell apart."""
    if map_path == "exact":
        return values
    v = np.asarray(values, dtype=np.float32)
    lo, hi = np.asarray(lo, dtype=np.float32), np.asarray(hi, dtype=np.float32)
    if map_path == "lvs":
        v, lo, hi = np.negative(v, out=out), -hi, -lo  # min(-x) = -max(x): negation is exact
    constant = hi == lo
    out = np.subtract(v, np.where(constant, np.float32(0), lo), out=out)
    out /= np.where(constant, np.float32(1), hi - lo)
    return np.subtract(np.float32(1), out, out=out) if map_path == "lvs" else out


def normalise_rows(flat: np.ndarray, map_path: str, bounds: tuple | None = None) -> np.ndarray:
    """(n, P) maps as the map path scores them (`normalise_values` with each row's minimum and maximum: `bounds`,
    (n,) each, where the caller has them for float32 rows), in a reused per-thread buffer (valid until the
    thread's next call)."""
    if map_path == "exact":
        return flat
    if bounds is None or np.asarray(flat).dtype != np.float32:
        x = np.asarray(flat, dtype=np.float32)
        bounds = x.min(axis=1), x.max(axis=1)
    x = np.asarray(flat)
    lo, hi = (np.asarray(b)[:, None] for b in bounds)
    return normalise_values(x, lo, hi, map_path, out=scratch("normalised", x.shape, np.float32))


def _slice_bounds(values: np.ndarray, size: int) -> np.ndarray:
    """Python slice bounds of `int()`-truncated coordinates on an axis of `size`: negative counts from the end."""
    v = np.trunc(np.clip(values, -4 * size, 4 * size)).astype(np.int64)
    v = np.where(v < 0, v + size, v)
    return np.clip(v, 0, size)


def box_extent(boxes_xyxy, size: int = FRAME, rule: str = "slice") -> tuple[np.ndarray, np.ndarray]:
    """(in_y, in_x): (N, size) bool rows and columns covered by boxes (N, 4) `[x1, y1, x2, y2]` (see `box_mask`)."""
    boxes = np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4)
    pixels = np.arange(size)
    if rule == "slice":
        x1, y1, x2, y2 = (_slice_bounds(boxes[:, i : i + 1], size) for i in range(4))
        return (pixels >= y1) & (pixels < y2), (pixels >= x1) & (pixels < x2)
    if rule == "centre":
        centres = pixels + 0.5
        x1, y1, x2, y2 = (boxes[:, i : i + 1] for i in range(4))
        return (centres >= y1) & (centres < y2), (centres >= x1) & (centres < x2)
    raise ValueError(f"box rule must be 'slice' or 'centre', not {rule!r}")


def box_mask(boxes_xyxy, size: int = FRAME, rule: str = "slice") -> np.ndarray:
    """Filled (N, size, size) bool masks for boxes (N, 4) `[x1, y1, x2, y2]` in pixels of the size×size frame.

    `rule="slice"` (reference): `gt[int(y1):int(y2), int(x1):int(x2)] = 1` with numpy's slicing rules.
    `rule="centre"` (exact-k): pixel (r, c) is inside when x1 <= c + 0.5 < x2 and y1 <= r + 0.5 < y2 (x2, y2
    exclusive pixel edges; anything outside the frame is clipped).
    """
    in_y, in_x = box_extent(boxes_xyxy, size, rule)
    return in_y[:, :, None] & in_x[:, None, :]


# --- cut values ---------------------------------------------------------------------------------------------

_SCRATCH = threading.local()
SCRATCH_MAX = 32 * 2**20  # bytes: larger temporaries are allocated afresh, not kept


def scratch(name: str, shape: tuple[int, ...], dtype) -> np.ndarray:
    """A reusable per-thread buffer for a chunk-sized temporary (uninitialised). Reusing it instead of allocating
    a few MB per chunk avoids the allocator mapping fresh pages for every chunk (measured: 2× faster overall)."""
    buffers = _SCRATCH.__dict__
    size = int(np.prod(shape))
    if size * np.dtype(dtype).itemsize > SCRATCH_MAX:
        return np.empty(shape, dtype=dtype)
    buf = buffers.get((name, np.dtype(dtype)))
    if buf is None or buf.size < size:
        buf = buffers[(name, np.dtype(dtype))] = np.empty(size, dtype=dtype)
    return buf[:size].reshape(shape)


def rank_values(flat: np.ndarray, ranks: Sequence[np.ndarray]) -> list[np.ndarray]:
    """For each (n,) array of ascending ranks, the (n,) values `np.sort(row)[rank]` of the rows of `flat` (n, P).

    No row is sorted: a copy of the rows is partitioned (`np.partition`: a SIMD quickselect) at the first rank, for
    every row at once when it is the same for all; each further rank partitions only the stretch between the
    positions already placed that holds it. Exact for any values; NaN / inf raise ValueError.
    """
    flat = np.asarray(flat)
    n, n_px = flat.shape
    x = flat if flat.dtype.kind == "f" else flat.astype(np.float64)  # integers: exact up to 2**53
    ranks = [np.broadcast_to(np.asarray(r, dtype=np.int64), (n,)) for r in ranks]
    if any(r.size and (r.min() < 0 or r.max() >= n_px) for r in ranks):
        raise ValueError(f"ranks must lie in [0, {n_px - 1}]")
    if n and not (np.isfinite(x.min(axis=1)).all() and np.isfinite(x.max(axis=1)).all()):
        raise ValueError("maps hold NaN or infinite values")  # min / max propagate NaN
    return _partition_values(x, ranks)


def _partition_values(x: np.ndarray, ranks: list[np.ndarray]) -> list[np.ndarray]:
    """`rank_values` of finite float rows `x` (n, P) for ranks already checked, each (n,)."""
    n, n_px = x.shape
    out = [np.empty(n, dtype=x.dtype) for _ in ranks]
    if n == 0 or not ranks:
        return out
    part = scratch("partition", x.shape, x.dtype)
    np.copyto(part, x)
    first = ranks[0]
    if (first == first[0]).all():
        part.partition(int(first[0]), axis=1)
    else:
        for row in range(n):
            part[row].partition(int(first[row]))
    out[0][:] = part[np.arange(n), first]
    for row in range(n):
        placed = [int(first[row])]  # sorted positions whose values are final
        for r, o in zip(ranks[1:], out[1:]):
            k = int(r[row])
            i = bisect.bisect_left(placed, k)
            if i == len(placed) or placed[i] != k:  # partition the stretch between the placed neighbours
                start = placed[i - 1] + 1 if i > 0 else 0
                stop = placed[i] if i < len(placed) else n_px
                part[row, start:stop].partition(k - start)
                placed.insert(i, k)
            o[row] = part[row, k]
    return out


def binarise(maps: np.ndarray, index) -> np.ndarray:
    """(N, H, W) bool: per map, `map > np.sort(map.flat)[index]` (index an int or (N,) array; -1 keeps all)."""
    maps = _as_batch(maps)
    n, h, w = maps.shape
    flat = maps.reshape(n, h * w)
    index = np.broadcast_to(np.asarray(index, dtype=np.int64), (n,))
    if n and (index.min() < -1 or index.max() >= h * w):
        raise ValueError(f"index must lie in [-1, {h * w - 1}]")
    (thr,) = rank_values(flat, [np.maximum(index, 0)])
    pred = flat > thr[:, None]
    pred[index < 0] = True
    return pred.reshape(n, h, w)


def binarise_top_half(maps: np.ndarray, protocol: str | Protocol = DEFAULT_PROTOCOL) -> np.ndarray:
    """(N, H, W) bool: the top-50 % binarisation of each map under `protocol` (cIoU's)."""
    maps = _as_batch(maps)
    return binarise(maps, get_protocol(protocol).top_half_index(maps.shape[1] * maps.shape[2]))


def binarise_adaptive(maps: np.ndarray, areas, protocol: str | Protocol = DEFAULT_PROTOCOL) -> np.ndarray:
    """(N, H, W) bool: the adaptive binarisation of each map for ground-truth areas `areas` (N,) under `protocol`."""
    maps = _as_batch(maps)
    areas = np.asarray(areas, dtype=np.int64)
    n_px = maps.shape[1] * maps.shape[2]
    if areas.size and (areas.min() < 1 or areas.max() > n_px):
        raise ValueError(f"areas must lie in [1, {n_px}]")
    return binarise(maps, get_protocol(protocol).adaptive_index(n_px, areas))


# --- per-instance scores ------------------------------------------------------------------------------------


def _as_batch(maps: np.ndarray) -> np.ndarray:
    maps = np.asarray(maps)
    if maps.ndim != 3:
        raise ValueError(f"expected maps of shape (N, H, W), got {maps.shape}")
    return maps


def _row_count(mask: np.ndarray) -> np.ndarray:
    """(n,) int64 number of True values per row of an (n, P) bool array (a byte sum: faster than count_nonzero)."""
    acc = np.uint16 if mask.shape[1] < 2**16 else np.int64
    return mask.view(np.uint8).sum(axis=1, dtype=acc).astype(np.int64)


def _fscore_from_counts(inter, n_pred, n_gt, beta2: float = BETA2) -> np.ndarray:
    zeros = np.zeros(np.shape(inter), dtype=np.float64)
    precision = np.divide(inter, n_pred, out=zeros.copy(), where=np.asarray(n_pred) > 0)
    recall = np.divide(inter, n_gt, out=zeros.copy(), where=np.asarray(n_gt) > 0)
    denom = beta2 * precision + recall
    return np.divide((1.0 + beta2) * precision * recall, denom, out=zeros, where=denom > 0)


def iou(pred_masks: np.ndarray, gt_masks: np.ndarray) -> np.ndarray:
    """(N,) float64 IoU of bool masks (N, H, W); 0 where both are empty."""
    pred, gt = np.asarray(pred_masks, dtype=bool), np.asarray(gt_masks, dtype=bool)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction masks {pred.shape} and ground truth {gt.shape} differ in shape")
    n = pred.shape[0]
    pred, gt = pred.reshape(n, -1), gt.reshape(n, -1)
    inter = _row_count(pred & gt)
    union = _row_count(pred | gt)
    return np.divide(inter, union, out=np.zeros(n), where=union > 0)


def fscore(pred: np.ndarray, gt: np.ndarray, beta2: float = BETA2) -> np.ndarray:
    """(N,) float64 F-beta of bool masks: (1 + β²)·P·R / (β²·P + R), 0 when P = R = 0."""
    pred, gt = np.asarray(pred, dtype=bool), np.asarray(gt, dtype=bool)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction masks {pred.shape} and ground truth {gt.shape} differ in shape")
    n = pred.shape[0]
    pred, gt = pred.reshape(n, -1), gt.reshape(n, -1)
    return _fscore_from_counts(_row_count(pred & gt), _row_count(pred), _row_count(gt), beta2)


def split_regions(gt: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """(full, half) bool masks of a ground-truth array: bool / 0-1 regions, or consensus maps of 0, 0.5 and 1."""
    gt = np.asarray(gt)
    if gt.dtype == bool:
        return gt, None
    values = np.unique(gt)
    if not np.isin(values, (0.0, 0.5, 1.0)).all():
        raise ValueError(f"ground truth must be bool or hold only 0, 0.5 and 1, found {values[:5].tolist()}")
    half = gt == 0.5
    return gt == 1, (half if half.any() else None)


def _cut_counts(maps, thr, index, full, half) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(predicted pixels, intersection, weighted intersection) per row of `maps > thr` (index < 0: every pixel)."""
    pred = np.greater(maps, thr[:, None], out=scratch("pred", maps.shape, bool))
    pred[index < 0] = True
    n_pred = _row_count(pred)
    if half is None:
        inter = _row_count(np.logical_and(pred, full, out=pred))
        return n_pred, inter, inter.astype(np.float64)
    inter_half = _row_count(pred & half)
    inter_full = _row_count(np.logical_and(pred, full, out=pred))
    return n_pred, inter_full + inter_half, inter_full + 0.5 * inter_half


def _cuts(flat, cuts: dict, full, half, map_path: str, select, bounds=None) -> list[tuple]:
    """(predicted pixels, intersection, weighted intersection) per cut of `cuts` (suffix: (n,) index) of the rows
    of `flat` normalised as `map_path` says, cut at the values `select(maps, ranks)` gives (`rank_values`)."""
    maps = normalise_rows(flat, map_path, bounds)
    ranks = [np.maximum(index, 0) for index in cuts.values()]
    values = select(maps, ranks) if select else _partition_values(maps, ranks)
    return [_cut_counts(maps, thr, index, full, half) for index, thr in zip(cuts.values(), values)]


def score_rows(
    flat: np.ndarray,
    full: np.ndarray,
    half: np.ndarray | None,
    protocol: str | Protocol,
    beta2: float = BETA2,
    select=None,
    mask_empty_area: np.ndarray | None = None,
    mask_metrics: bool = False,
    bounds: tuple[np.ndarray, np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """Per-instance scores of (n, P) maps against their regions: `full` (n, P) bool where the ground truth is 1 and
    `half` (n, P) bool where it is 0.5 (a consensus map) or None. The maps are normalised as the protocol's map path
    says (`normalise_rows`) before the box cuts; `select(maps, ranks)` gives the cut values of the normalised maps
    (default `rank_values`; a caller that knows its maps' sorted values may pass a faster equivalent). With `mask_metrics`
    the mask metrics cut the maps as they are (the reference mask evaluator takes the resized, unnormalised maps).

    Keys: `gt_area` (non-zero ground-truth pixels), and for the top-50 % and the adaptive (`_adaptive`) cut:
    `iou` (the weighted IoU of the module docstring), `miou` (inter / (union + eps) of the region), `fscore` (F of
    the binarised map); `fscore_frame`: F of the whole frame as the prediction (the reference F's threshold 0).

    An empty region is scored as the reference scores it: IoU 0; the adaptive cut at half the pixels; mIoU of the
    complement, `(pixels left out) / (H·W + eps)`, its adaptive cut keeping `mask_empty_area` pixels (the mask
    evaluator's own fallback, default H·W // 2); F-scores NaN (the F-measure leaves such instances out).
    `bounds`: each row's (min, max) where the caller has computed them. NaN / inf raise ValueError.
    """
    protocol = get_protocol(protocol)
    flat = np.asarray(flat)
    n, n_px = flat.shape
    if protocol.map_path != "exact":
        flat = flat.astype(np.float32, copy=False)
    elif flat.dtype.kind != "f":
        flat = flat.astype(np.float64)  # integers: exact up to 2**53
    if bounds is None or np.asarray(bounds[0]).dtype != flat.dtype:
        bounds = flat.min(axis=1), flat.max(axis=1)
    if not (np.isfinite(bounds[0]).all() and np.isfinite(bounds[1]).all()):
        raise ValueError("maps hold NaN or infinite values")  # min / max propagate NaN
    region = full if half is None else full | half
    area = _row_count(region)
    empty = area == 0
    n_full = area if half is None else _row_count(full)
    gt_sum = n_full + (0.0 if half is None else 0.5 * (area - n_full))
    cuts = {"": np.full(n, protocol.top_half_index(n_px)), "_adaptive": protocol.adaptive_index(n_px, area)}
    out: dict[str, np.ndarray] = {"gt_area": area}
    if protocol.threshold is not None:  # fixed: `map >= θ` on the normalised map, one cut, for every metric
        cuts = {"": np.zeros(n, dtype=np.int64)}
        below = np.nextafter(np.float32(protocol.threshold), np.float32(-np.inf))
        select = lambda _maps, _ranks: [np.full(n, below, dtype=np.float32)]  # noqa: E731  `> below` is `>= θ`
    raw = mask_metrics and protocol.map_path != "exact" and protocol.threshold is None
    passes = [(_cuts(flat, cuts, full, half, protocol.map_path, select, bounds), True, not raw)]
    if raw:  # the mask metrics cut the maps as they are (float32 under every map path but "exact")
        passes.append((_cuts(flat, cuts, full, half, "exact", None), False, True))
    for counts, boxes, masks in passes:
        for suffix, (n_pred, inter, weighted) in zip(cuts, counts):
            if boxes:  # sum(bin * gt) / (sum(gt) + sum(bin * (gt == 0))): sums of 0, 0.5 and 1, exact in float64
                denom = gt_sum + (n_pred - inter)
                out["iou" + suffix] = np.divide(weighted, denom, out=np.zeros(n), where=denom > 0)
            if masks:
                out["miou" + suffix] = inter / ((n_pred + area - inter) + protocol.miou_eps)
                out["fscore" + suffix] = _fscore_from_counts(inter, n_pred, area, beta2)
                out["miou" + suffix][empty] = (n_px - n_pred[empty]) / (n_px + protocol.miou_eps)
                out["fscore" + suffix][empty] = np.nan
    out["fscore_frame"] = _fscore_from_counts(area, np.full(n, n_px), area, beta2)
    out["fscore_frame"][empty] = np.nan
    rows = np.flatnonzero(empty)
    if (
        rows.size and "miou_adaptive" in out
    ):  # the mask evaluator's adaptive cut of an empty region keeps its own number of pixels
        keep = np.full(rows.size, n_px // 2) if mask_empty_area is None else np.asarray(mask_empty_area)[rows]
        index = np.clip(n_px - keep.astype(np.int64), 0, n_px - 1)
        mask_maps = flat[rows] if raw else normalise_rows(flat[rows], protocol.map_path)
        (thr,) = rank_values(mask_maps, [index])
        n_pred = _row_count(mask_maps > thr[:, None])
        out["miou_adaptive"][rows] = (n_px - n_pred) / (n_px + protocol.miou_eps)
    return out


def per_instance(
    maps: np.ndarray,
    gt: np.ndarray,
    *,
    protocol: str | Protocol = DEFAULT_PROTOCOL,
    beta2: float = BETA2,
    chunk: int = CHUNK,
    workers: int | None = None,
    mask_metrics: bool = True,
) -> dict[str, np.ndarray]:
    """Per-instance scores (N,) of (N, H, W) maps against (N, H, W) ground truth (bool, or 0 / 0.5 / 1); without
    `mask_metrics` the mask scores come from the box cuts (the reference cuts the raw maps for them: a second pass).

    Keys as `score_rows`. The batch is scored in chunks of `chunk` instances (bounding memory) on `workers`
    threads (default: the CPU count, at most 8; NumPy releases the GIL in the heavy loops). Results do not depend
    on `chunk` or `workers`.
    """
    maps = _as_batch(maps)
    gt = np.asarray(gt)
    if maps.shape != gt.shape:
        raise ValueError(f"maps {maps.shape} and ground-truth masks {gt.shape} differ in shape")
    if maps.dtype.kind not in "biuf":
        raise ValueError(f"maps must be real numbers, got dtype {maps.dtype}")
    protocol = get_protocol(protocol)
    n, h, w = maps.shape
    flat_maps, flat_gt = maps.reshape(n, h * w), gt.reshape(n, h * w)
    out = {key: np.zeros(n) for key in PER_INSTANCE_KEYS}
    out["gt_area"] = np.zeros(n, dtype=np.int64)
    fallback = mask_empty_area(n, protocol, h * w)

    def run(start: int) -> None:
        stop = min(start + chunk, n)
        full, half = split_regions(flat_gt[start:stop])
        rows = score_rows(
            flat_maps[start:stop],
            full,
            half,
            protocol,
            beta2,
            mask_empty_area=fallback[start:stop],
            mask_metrics=mask_metrics,
        )
        for key, values in rows.items():
            out[key][start:stop] = values

    map_chunks(run, n, chunk, workers)
    return out


def map_chunks(run, n: int, chunk: int, workers: int | None) -> None:
    """Call `run(start)` for each chunk start in range(0, n, chunk), on `workers` threads (default: CPUs, ≤ 8)."""
    starts = range(0, n, chunk)
    workers = min(8, os.cpu_count() or 1) if workers is None else workers
    if workers <= 1 or len(starts) <= 1:
        for start in starts:
            run(start)
        return
    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(run, starts))  # list(): re-raise the first error


# --- aggregation --------------------------------------------------------------------------------------------


def success_curve(values, thresholds) -> np.ndarray:
    """(T,) fraction of `values` >= each threshold (count / n, as the reference; 0 for an empty list)."""
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    thresholds = np.asarray(thresholds, dtype=np.float64).reshape(-1)
    if values.size == 0:
        return np.zeros(thresholds.shape)
    return np.count_nonzero(values[:, None] >= thresholds[None, :], axis=0) / values.size


def auc(curve, thresholds) -> float:
    """Area under `curve` over `thresholds` by the trapezoid rule, as `sklearn.metrics.auc(thresholds, curve)`.

    Like sklearn: x must be monotonic (a decreasing x gives the area with its sign flipped back) and have at least
    two points; the area is `np.trapezoid(curve, thresholds)`, not normalised (the thresholds span 0 … 1 here).
    """
    curve = np.asarray(curve, dtype=np.float64).reshape(-1)
    x = np.asarray(thresholds, dtype=np.float64).reshape(-1)
    if curve.shape != x.shape or x.size < 2:
        raise ValueError("curve and thresholds need the same length, at least 2")
    dx = np.diff(x)
    direction = 1.0
    if np.any(dx < 0):
        if not np.all(dx <= 0):
            raise ValueError(f"thresholds are neither increasing nor decreasing: {x.tolist()}")
        direction = -1.0
    return float(direction * np.trapezoid(curve, x))


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


def _mean_fscore(scores: dict, suffix: str, protocol: Protocol) -> float:
    kept = ~np.isnan(scores["fscore" + suffix])  # empty regions are left out, as the reference F-measure does
    if not kept.any():
        return float("nan")
    binarised = float(np.mean(scores["fscore" + suffix][kept]))
    if not protocol.fscore_max:
        return binarised
    # A binarised map thresholded at t >= 0: the whole frame at t = 0, the binarised map itself for 0 < t <= 1.
    curve = np.where(FSCORE_THRESHOLDS > 0, binarised, float(np.mean(scores["fscore_frame"][kept])))
    return float(curve.max())


def batch_sizes(n: int, protocol: str | Protocol) -> np.ndarray:
    """(n,) the size of the test batch each instance falls in (file order): MIOU_BATCH for "batch" mIoU (the last
    batch smaller), n otherwise."""
    protocol = get_protocol(protocol)
    if protocol.miou_mean != "batch":
        return np.full(n, n)
    index = np.arange(n)
    return np.minimum(MIOU_BATCH, n - (index // MIOU_BATCH) * MIOU_BATCH)


def mask_empty_area(n: int, protocol: str | Protocol, n_px: int = FRAME * FRAME) -> np.ndarray:
    """(n,) pixels the adaptive mask cut keeps on an empty region: the reference mask evaluator's fallback, half
    its batch's size (`int(B * 1 / 2)`, B = the batch's size, as it reads the batch tensor's shape), or H·W // 2."""
    protocol = get_protocol(protocol)
    if protocol.miou_mean != "batch":
        return np.full(n, n_px // 2)
    return batch_sizes(n, protocol) // 2


def mean_miou(values, protocol: str | Protocol) -> float:
    """mIoU from per-instance values: the mean of per-batch means over batches of MIOU_BATCH in order ("batch",
    the reference's `sum(batch means) / number of batches`) or the plain mean ("instance")."""
    values = np.asarray(values, dtype=np.float64)
    if get_protocol(protocol).miou_mean != "batch":
        return float(np.mean(values))
    starts = np.arange(0, values.size, MIOU_BATCH)
    sums = np.add.reduceat(values, starts)
    return float(np.sum(sums / np.minimum(MIOU_BATCH, values.size - starts)) / starts.size)


def summarise(
    instance_scores: dict,
    image_ids: Sequence | None,
    *,
    protocol: str | Protocol = DEFAULT_PROTOCOL,
    with_mask_metrics: bool = False,
    decimals: int | None = 4,
) -> dict[str, float]:
    """The metric dict in percent from `per_instance` output; `image_ids` (N,) groups instances into images for
    IIoU / IAUC (None: no image-level metrics). `decimals=None` keeps full precision."""
    protocol = get_protocol(protocol)
    thresholds = protocol.thresholds
    result: dict[str, float] = {}
    for suffix in ("",) if protocol.threshold is not None else ("", "_adaptive"):
        ious = np.asarray(instance_scores["iou" + suffix], dtype=np.float64)
        result["ciou" + suffix] = np.count_nonzero(ious >= SUCCESS_IOU) / ious.size
        result["auc" + suffix] = auc(success_curve(ious, thresholds), thresholds)
        if image_ids is not None:
            _, image_ious = image_min_iou(ious, image_ids)
            result["iiou" + suffix] = np.count_nonzero(image_ious >= SUCCESS_IOU) / image_ious.size
            result["iauc" + suffix] = auc(success_curve(image_ious, thresholds), thresholds)
        if with_mask_metrics:
            result["miou" + suffix] = mean_miou(instance_scores["miou" + suffix], protocol)
            result["fscore" + suffix] = _mean_fscore(instance_scores, suffix, protocol)
    order = METRIC_KEYS + (MASK_METRIC_KEYS if with_mask_metrics else ())
    percent = {key: float(result[key]) * 100.0 for key in order if key in result}
    return percent if decimals is None else {key: round(value, decimals) for key, value in percent.items()}


def score(
    maps: np.ndarray,
    gt: np.ndarray,
    image_ids: Sequence | None,
    *,
    with_mask_metrics: bool = False,
    protocol: str | Protocol = DEFAULT_PROTOCOL,
    workers: int | None = None,
    decimals: int | None = 4,
) -> dict[str, float]:
    """All metrics for (N, H, W) heatmaps against (N, H, W) ground truth, in percent (`decimals`, None: all).

    Keys: ciou, ciou_adaptive, auc, auc_adaptive, then (with `image_ids`, which group instances into images)
    iiou, iiou_adaptive, iauc, iauc_adaptive, and with `with_mask_metrics` miou, fscore, miou_adaptive,
    fscore_adaptive. `workers`: threads for `per_instance` (default: the CPU count, at most 8).
    """
    maps = _as_batch(maps)
    if image_ids is not None and len(image_ids) != maps.shape[0]:
        raise ValueError(f"{maps.shape[0]} maps but {len(image_ids)} image ids")
    if maps.shape[0] == 0:
        raise ValueError("nothing to score: no instances")
    scores = per_instance(maps, gt, protocol=protocol, workers=workers, mask_metrics=with_mask_metrics)
    return summarise(scores, image_ids, protocol=protocol, with_mask_metrics=with_mask_metrics, decimals=decimals)
