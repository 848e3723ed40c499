"""Scoring speed: the vectorised `metrics.score` against a straightforward per-sample loop, in one run.

Both score the same random batch the size of IS4 (by default 3,240 images × 2 instances = 6,480 heatmaps of
224×224, float32 uniform noise, against random boxes) with every metric (cIoU, AUC, IIoU, IAUC, mIoU, F-score,
and the adaptive variants). The loop scores one sample at a time the textbook way (sort the map, threshold it,
count the overlap), then aggregates in Python; it is checked to give exactly the same numbers. Figures are the
best of `--repeats` runs. Data generation is not timed.

Run by hand:  python benchmarks/eval.py [--images 3240] [--repeats 1] [--seed 0] [--threads N]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import numpy as np

from is4.pipeline.evaluation import metrics

S = metrics.FRAME


def log(message: str) -> None:
    print(f"  .. {message}", file=sys.stderr, flush=True)


def make_batch(n_images: int, seed: int):
    rng = np.random.default_rng(seed)
    n = 2 * n_images
    maps = rng.random((n, S, S), dtype=np.float32)
    corner = rng.integers(0, S - 16, (n, 2))
    size = rng.integers(16, 160, (n, 2))
    gt = metrics.box_mask(np.c_[corner, np.minimum(corner + size, S)])
    image_ids = np.repeat(np.arange(n_images), 2)
    return maps, gt, image_ids


def loop_score(maps, gt_masks, image_ids) -> dict:
    """One sample at a time: sort, threshold, overlap; then Python aggregation (same conventions as metrics)."""
    n_px = S * S
    thresholds = [i / 20 for i in range(21)]
    ious = {"": [], "_adaptive": []}
    fs = {"": [], "_adaptive": []}
    for m, g in zip(maps, gt_masks):
        flat, gt = m.ravel(), g.ravel()
        ordered = np.sort(flat)
        area = int(gt.sum())
        for suffix, k in (("", n_px // 2), ("_adaptive", area)):
            pred = flat > (ordered[n_px - k - 1] if k < n_px else -np.inf)
            inter = int(np.count_nonzero(pred & gt))
            n_pred = int(np.count_nonzero(pred))
            union = n_pred + area - inter
            ious[suffix].append(inter / union if union else 0.0)
            p = inter / n_pred if n_pred else 0.0
            r = inter / area if area else 0.0
            fs[suffix].append(1.3 * p * r / (0.3 * p + r) if 0.3 * p + r > 0 else 0.0)

    def rate(values, t):
        return sum(v >= t for v in values) / len(values)

    def area_under(values):
        curve = [rate(values, t) for t in thresholds]
        return sum((thresholds[i] - thresholds[i - 1]) * (curve[i] + curve[i - 1]) / 2 for i in range(1, 21))

    out = {}
    for suffix in ("", "_adaptive"):
        worst: dict = {}
        for image, value in zip(image_ids.tolist(), ious[suffix]):
            worst[image] = min(worst.get(image, 1.0), value)
        per_image = list(worst.values())
        out["ciou" + suffix] = round(100 * rate(ious[suffix], 0.5), 4)
        out["auc" + suffix] = round(100 * area_under(ious[suffix]), 4)
        out["iiou" + suffix] = round(100 * rate(per_image, 0.5), 4)
        out["iauc" + suffix] = round(100 * area_under(per_image), 4)
        out["miou" + suffix] = round(100 * sum(ious[suffix]) / len(ious[suffix]), 4)
        out["fscore" + suffix] = round(100 * sum(fs[suffix]) / len(fs[suffix]), 4)
    return out


def timed(fn, repeats: int):
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=3240, help="images (two instances each); default 3240")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each method; the best is reported")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="threads of the vectorised score (0: CPU count, ≤ 8)")
    args = parser.parse_args()

    log(f"making {2 * args.images} random 224×224 maps and boxes")
    maps, gt, image_ids = make_batch(args.images, args.seed)
    threads = args.threads or min(8, os.cpu_count() or 1)
    log("per-sample loop")
    t_loop, loop = timed(lambda: loop_score(maps, gt, image_ids), args.repeats)
    log("vectorised score, 1 thread")
    t_vec1, vec1 = timed(lambda: metrics.score(maps, gt, image_ids, with_mask_metrics=True, workers=1),
                         args.repeats)
    log(f"vectorised score, {threads} threads")
    t_vec, vec = timed(lambda: metrics.score(maps, gt, image_ids, with_mask_metrics=True, workers=threads),
                       args.repeats)
    loop = {key: loop[key] for key in vec}
    same = vec == loop and vec1 == loop

    n = len(maps)
    print(f"IS4 scoring: {n} instances ({args.images} images × 2), 224×224 float32 maps, all 12 metrics")
    print(f"python {platform.python_version()}, numpy {np.__version__}, {os.cpu_count()} CPUs, "
          f"best of {args.repeats}")
    print()
    rows = [("per-sample loop", t_loop), ("vectorised, 1 thread", t_vec1), (f"vectorised, {threads} threads", t_vec)]
    print(f"{'method':<26}{'seconds':>10}{'instances/s':>14}{'speed-up':>10}")
    for name, seconds in rows:
        print(f"{name:<26}{seconds:>10.2f}{n / seconds:>14.0f}{t_loop / seconds:>9.2f}×")
    print()
    print(f"same numbers: {'yes' if same else 'NO'}")
    print("metrics: " + ", ".join(f"{k} {v:.2f}" for k, v in vec.items()))
    if not same:
        sys.exit(1)


if __name__ == "__main__":
    main()
