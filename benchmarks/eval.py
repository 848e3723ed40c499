"""Scoring speed: `metrics.score` and the whole `is4 eval` command against the reference per-sample loop, in one run.

Data (not timed): an IS4-sized batch, by default 3,240 images × 2 instances = 6,480 float32 224×224 maps of
uniform noise, against IS4-like boxes (two objects per image, sides of 20–224 px, about 5 % of them full-frame),
with instance ids `{a}_{b}_{n}_{a|b}` as in IS4; the boxes are written as an `is4_bbox.json`, the maps as an
uncompressed `.npz` (`np.savez`), in a temporary directory.

Timed, best of `--repeats` by the wall clock, each row also with its CPU seconds (every thread of this process, or
the `is4` process's own) and both ratios to the loop ("× loop" by the wall clock, "× CPU" by CPU seconds: on a
shared machine the wall clock moves with the other load, CPU seconds much less):

- **reference loop**: the reference evaluation's semantics one sample at a time, as its test loop does it: the
  map min-max normalised in float32 (`utils.normalize_img`), the ground-truth box as `gt[int(y1):int(y2), int(x1):int(x2)] = 1`, `np.sort` of the map twice (the top-50 % cut
  `pred > s[int(H*W/2)]` and the adaptive `pred > s[H*W - area]`), IoU = sum(bin·gt) / (sum(gt) + sum(bin·(gt==0))),
  then in Python the success rates, the trapezoid AUC over `[0.05*i for i in range(21)]` and the per-image minimum;
- `metrics.score` on the maps in memory (the default protocol), on 1 thread and on `--threads`;
- the whole command in a fresh process, `is4 eval --release DIR --predictions maps.npz --output scores.json`:
  start-up, reading and checking the 6,480 maps from the `.npz` (streamed), scoring, writing; with
  `--no-baselines`, as it runs by default on a folder without `baselines.json` (scoring the random, centre and
  oracle baselines too: the authors' release), and on one with it (a release this builder made).

All must give the same numbers (in memory and in the command's full-precision JSON, to 1e-9 percentage points); the
command's peak resident memory is printed beside the size of all maps in float64. Goals (issue 11): scoring ≥ 10×
and the whole command ≥ 5× faster than the reference loop.

Retrieval (`--clips`, default VGG-SS's 5,158 clips in 221 classes, 512-d embeddings): `retrieval._hits` in both
directions against a per-query loop of the protocol's semantics (normalise, one dot product per pool item, a stable
argsort, the label check), same hit counts required; goal ≥ 10×. `--only retrieval` skips the localisation part.

Extended protocol (`--pairs`, default Extended VGG-SS's 10,316: 5,158 positives with 1–3 VGG-SS boxes, 5,158
negative pairs; 7×7 float32 maps of cos/τ as SLAVC's model gives them, written as an `.npz` with a vggss.json and a
`vggss_test_plus_silent.csv`): `extended.extended` (reading the maps from the `.npz`, bicubic resizing, confidences,
IoUs, AP / max-F1 / LocAcc) against a per-sample loop of SLAVC's semantics (torch's bicubic per map, `np.sort` for
the confidence and for the relative cut, the ground-truth map, the IoU; then `EvaluatorFull`'s Python loops for
AP, the 10-threshold F1 and Precision-visible), same numbers required; goal ≥ 10×. `--only extended` runs it alone.

Run by hand:  python benchmarks/eval.py [--images 3240] [--repeats 1] [--seed 0] [--threads N] [--clips 5158]
              [--pairs 10316] [--only localisation|retrieval|extended]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from is4.pipeline.evaluation import metrics

S = metrics.FRAME
IS4 = str(Path(sys.executable).parent / "is4")
KEYS = metrics.METRIC_KEYS


def log(message: str) -> None:
    print(f"  .. {message}", file=sys.stderr, flush=True)


def make_data(n_images: int, seed: int):
    """(maps (2n, 224, 224) float32, boxes (2n, 4) int, instance ids)."""
    rng = np.random.default_rng(seed)
    n = 2 * n_images
    maps = rng.random((n, S, S), dtype=np.float32)
    size = rng.integers(20, S + 1, (n, 2))
    corner = (rng.random((n, 2)) * (S - size + 1)).astype(int)
    boxes = np.c_[corner, corner + size]
    boxes[rng.random(n) < 0.05] = [0, 0, S, S]
    ids = [f"c{i // 2 % 50}_d{i // 2 % 37}_{i // 2}_{'c' if i % 2 == 0 else 'd'}{i // 2 % 50}" for i in range(n)]
    return maps, boxes, ids


def reference_loop(maps, boxes, ids) -> dict:
    """The reference semantics, one sample at a time (see the module docstring); percent, full precision."""
    n_px = S * S
    ious: dict[str, list[float]] = {"": [], "_adaptive": []}
    for pred, (x1, y1, x2, y2) in zip(maps, boxes.tolist()):
        lo, hi = pred.min(), pred.max()
        pred = (pred - lo) / (hi - lo) if hi != lo else pred  # utils.normalize_img, in float32 as the authors'
        gt = np.zeros((S, S))
        gt[int(y1) : int(y2), int(x1) : int(x2)] = 1
        gt_nums = int((gt != 0).sum())
        for suffix, index in (("", int(n_px / 2)), ("_adaptive", n_px - gt_nums)):
            thr = np.sort(pred.flatten())[index]
            infer = np.zeros((S, S))
            infer[pred > thr] = 1
            ious[suffix].append(np.sum(infer * gt) / (np.sum(gt) + np.sum(infer * (gt == 0))))
    x = [0.05 * i for i in range(21)]

    def area(values):
        y = [sum(v >= t for v in values) / len(values) for t in x]
        return sum((x[i] - x[i - 1]) * (y[i] + y[i - 1]) / 2 for i in range(1, len(x)))

    out = {}
    for suffix, values in ious.items():
        worst: dict[str, float] = {}
        for iid, value in zip(ids, values):
            image = "_".join(iid.split("_")[:-1])
            worst[image] = min(worst.get(image, np.inf), value)
        per_image = list(worst.values())
        out["ciou" + suffix] = 100 * sum(v >= 0.5 for v in values) / len(values)
        out["auc" + suffix] = 100 * area(values)
        out["iiou" + suffix] = 100 * sum(v >= 0.5 for v in per_image) / len(per_image)
        out["iauc" + suffix] = 100 * area(per_image)
    return out


@dataclass(frozen=True)
class Timing:
    """Seconds of one run: wall clock, and CPU (every thread of this process, or the child command's)."""

    wall: float
    cpu: float


def timed(fn, repeats: int) -> tuple[Timing, Any]:
    """(the fastest run's Timing, its result) of `repeats` calls of `fn`."""
    best, result = Timing(float("inf"), float("inf")), None
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        result = fn()
        run = Timing(time.perf_counter() - wall, time.process_time() - cpu)
        best = min(best, run, key=lambda t: t.wall)
    return best, result


def ratios(base: Timing, t: Timing) -> str:
    """`base` over `t`, wall clock and CPU, as the tables print them."""
    return f"{base.wall / t.wall:>8.1f}×{base.cpu / t.cpu:>7.1f}×"


TIMES = f"{'seconds':>9}{'CPU s':>8}"
RATIOS = f"{'× loop':>9}{'× CPU':>8}"


def _peak_kib(pid: int) -> int:
    """The process's peak resident memory so far (VmHWM, KiB; Linux), 0 where it cannot be read."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    return next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:")), 0)


def run_command(args: list[str]) -> tuple[Timing, int]:
    """(Timing, peak resident KiB after exec, sampled every 10 ms) of one `is4` process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.Popen([IS4, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = 0
    while proc.poll() is None:
        peak = max(peak, _peak_kib(proc.pid))
        time.sleep(0.01)
    seconds = time.perf_counter() - start
    if proc.returncode:
        sys.exit(f"is4 {' '.join(args)} failed: {proc.stderr.read().decode()}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return Timing(seconds, cpu), peak


def in_memory(maps, boxes, ids, threads: int, repeats: int) -> tuple[dict, list[tuple[str, Timing, str]], bool]:
    """(reference numbers, timing rows, same) for the reference loop and `metrics.score` on maps in memory."""
    gt = metrics.box_mask(boxes)
    images = [iid.rsplit("_", 1)[0] for iid in ids]
    log("reference per-sample loop")
    t_ref, ref = timed(functools.partial(reference_loop, maps, boxes, ids), repeats)
    rows, same = [("reference loop (np.sort ×2 per map)", t_ref, "")], True
    for workers in sorted({1, threads}):
        log(f"metrics.score, {workers} thread(s)")
        run = functools.partial(metrics.score, maps, gt, images, workers=workers, decimals=None)
        t, got = timed(run, repeats)
        diff = max(abs(got[k] - ref[k]) for k in KEYS)
        same &= diff <= 1e-9
        rows.append((f"metrics.score, {workers} thread{'s' if workers > 1 else ''}", t, f"max |Δ| {diff:.1e} pp"))
    return ref, rows, same


def whole_command(tmp: Path, maps, boxes, ids, repeats: int, ref: dict) -> tuple[list, bool, int, float]:
    """(timing rows, same, peak KiB, .npz MiB) for `is4 eval` on the maps written as an .npz in `tmp`."""
    release, npz = tmp / "IS4", tmp / "maps.npz"
    release.mkdir()
    entries = [
        {"image": f"visual_frames/{iid}.jpg", "audio": f"audio_wav/{iid}.wav", "gt_box": box}
        for iid, box in zip(ids, boxes.tolist())
    ]
    (release / "is4_bbox.json").write_text(json.dumps(entries))
    log(f"writing {npz.name} ({len(ids)} maps)")
    np.savez(npz, **dict(zip(ids, maps)))
    rows, same, peak = [], True, 0
    for label, extra in (
        ("is4 eval, whole command, --no-baselines", ["--no-baselines"]),
        ("is4 eval, whole command, with baselines", []),
        ("is4 eval, whole command, with the release's baselines.json", []),
    ):
        if "baselines.json" in label:  # as a built release ships them (scored once, at build time; not timed)
            from is4.pipeline.evaluation.evaluate import BASELINES_FILE, baseline_scores
            from is4.pipeline.evaluation.metrics import DEFAULT_PROTOCOL, REFERENCE

            (release / BASELINES_FILE).write_text(
                json.dumps(
                    {"protocol": DEFAULT_PROTOCOL, "maps": REFERENCE.map_path, "scores": baseline_scores(release)}
                )
            )
        log(label)
        out = tmp / "scores.json"
        command = ["eval", "--release", str(release), "--predictions", str(npz), "--output", str(out), *extra]
        best, label_peak = Timing(float("inf"), float("inf")), 0
        for _ in range(repeats):
            run, rss = run_command(command)
            best, label_peak = min(best, run, key=lambda t: t.wall), max(label_peak, rss)
        written = json.loads(out.read_text())
        ok = all(abs(written[k] - ref[k]) <= 1e-9 for k in KEYS)
        same &= ok
        peak = max(peak, label_peak)
        rows.append((label, best, f"JSON {'equal' if ok else 'DIFFERENT'}, peak {label_peak / 1024:.0f} MiB"))
    return rows, same, peak, npz.stat().st_size / 2**20


def retrieval_speed(n_clips: int, seed: int, repeats: int) -> bool:
    """Print retrieval's timing against the per-query loop; True when both give the same hit counts."""
    from is4.pipeline.evaluation import retrieval

    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 221, n_clips)
    centres = rng.standard_normal((221, 512))
    audio = centres[labels] + rng.standard_normal((n_clips, 512)) * 2
    image = centres[labels] + rng.standard_normal((n_clips, 512)) * 2

    def loop():
        hits = np.zeros(3, dtype=np.int64)
        for queries, pool in ((audio, image), (image, audio)):
            pool_n = pool / np.linalg.norm(pool, axis=1, keepdims=True)
            for q in range(n_clips):
                sims = pool_n @ (queries[q] / np.linalg.norm(queries[q]))
                ranked = np.argsort(-sims, kind="stable")
                hits += [bool((labels[ranked[:k]] == labels[q]).any()) for k in retrieval.KS]
        return hits

    def vectorised():
        a = audio / np.linalg.norm(audio, axis=1, keepdims=True)
        v = image / np.linalg.norm(image, axis=1, keepdims=True)
        return retrieval._hits(a, v, labels) + retrieval._hits(v, a, labels)

    log(f"retrieval over {n_clips} clips: per-query loop")
    t_loop, want = timed(loop, repeats)
    log("retrieval: vectorised")
    t_vec, got = timed(vectorised, repeats)
    same = bool((want == got).all())
    print(f"retrieval: {n_clips} clips, 512-d, a2i + i2a R@1/5/10")
    print(f"{'':<44}{TIMES}{RATIOS}")
    print(f"{'per-query loop (stable argsort per query)':<44}{t_loop.wall:>9.2f}{t_loop.cpu:>8.2f}")
    print(
        f"{'retrieval._hits':<44}{t_vec.wall:>9.2f}{t_vec.cpu:>8.2f}{ratios(t_loop, t_vec)}  "
        f"hits {'equal' if same else 'DIFFERENT'}"
    )
    return same


def _slavc_loop(truth_entries, pairs, maps) -> dict:
    """SLAVC's test.py + EvaluatorFull semantics, one sample at a time (relative prediction, ±1/τ range)."""
    import torch

    bb_list, ciou_list, conf_list = [], [], []
    for boxes, key in [(e["bbox"], e["file"]) for e in truth_entries] + [([], f"{v}/{a}") for v, a in pairs]:
        heat = torch.nn.functional.interpolate(
            torch.from_numpy(maps[key])[None, None], size=(S, S), mode="bicubic", align_corners=True
        ).numpy()[0, 0]
        n = heat.size
        scores = (heat - (-1.0 / 0.03)) / (1.0 / 0.03 - (-1.0 / 0.03))
        conf = np.sort(scores.flatten())[-n // 4 :].mean()
        lo, hi = scores.min(), scores.max()
        pred = (scores - lo) / (hi - lo) if hi != lo else scores
        infer = np.zeros((S, S))
        infer[pred >= np.sort(pred.flatten())[int(n * 0.5)]] = 1
        gt = np.zeros((S, S))
        for x1, y1, x2, y2 in [(np.clip(np.array(b), 0, 1) * S).astype(int) for b in boxes]:
            gt[y1:y2, x1:x2] = 1
        with np.errstate(invalid="ignore"):
            ciou_list.append(np.sum(infer * gt) / (np.sum(gt) + np.sum(infer * (gt == 0))))
        bb_list.append(len(boxes))
        conf_list.append(conf)

    n_all = len(conf_list)

    def pr(bbs, cious, confs, thr):
        tp = fp = fn = 0
        for bb, ciou, c in zip(bbs, cious, confs):
            if bb == 0:
                fp += c >= thr
            elif c >= thr:
                tp, fp = (tp + 1, fp) if ciou >= 0.5 else (tp, fp + 1)
            else:
                fn += 1
        return (1.0 if tp + fp == 0 else tp / (tp + fp)), (1.0 if tp + fn == 0 else tp / (tp + fn))

    walk = [pr(bb_list, ciou_list, conf_list, t) for t in np.sort(np.array(conf_list))[:-1][:: -max(1, n_all // 200)]]
    p_max = [max(p for p, _ in walk[i:]) for i in range(len(walk))]
    ap = sum(p_max[i] * (walk[i + 1][1] - walk[i][1]) for i in range(len(walk) - 1))
    f1 = [
        2 * r * p / (r + p) if r + p > 0 else 0.0
        for p, r in (pr(bb_list, ciou_list, conf_list, t) for t in sorted(conf_list)[:: max(1, n_all // 10)])
    ]
    vis = [i for i, bb in enumerate(bb_list) if bb > 0]
    loc, _ = pr([bb_list[i] for i in vis], [ciou_list[i] for i in vis], [conf_list[i] for i in vis], -1000)
    return {"ap": 100 * ap, "max_f1": 100 * max(f1), "loc_acc": 100 * loc}


def extended_speed(n_pairs: int, seed: int, repeats: int) -> bool:
    """Print the extended protocol's timing against the per-sample SLAVC loop; True when both agree exactly."""
    import torch

    from is4.pipeline.evaluation import extended
    from is4.pipeline.evaluation.formats import load_ground_truth

    rng = np.random.default_rng(seed)
    n_pos = n_pairs // 2
    ids = [f"{i:011d}_{i % 300:06d}" for i in range(n_pos)]
    entries = []
    maps = {}
    for i, clip in enumerate(ids):
        corner = rng.random((1 + i % 3, 2)) * 0.5
        boxes = np.c_[corner, corner + 0.2 + rng.random(corner.shape) * 0.5].tolist()
        entries.append({"file": clip, "class": f"c{i % 221}", "bbox": boxes})
        x1, y1, x2, y2 = (np.clip(np.array(boxes[0]), 0, 1) * 7).astype(int)
        peak = np.zeros((7, 7), dtype=np.float32)
        peak[y1 : y2 + 1, x1 : x2 + 1] = 15 if i % 3 else 0
        maps[clip] = (rng.standard_normal((7, 7)) * 8 + peak).astype(np.float32)
    pairs = [(ids[j], ids[(j * 7 + 3) % n_pos]) for j in range(n_pairs - n_pos)]
    for v, a in pairs:
        maps[f"{v}/{a}"] = (rng.standard_normal((7, 7)) * 10).astype(np.float32)
    with tempfile.TemporaryDirectory(prefix="is4-eval-bench-ext-") as tmp:
        root = Path(tmp)
        (root / "vggss.json").write_text(json.dumps(entries))
        (root / "vggss_test_plus_silent.csv").write_text(
            "video,audio,label\n" + "".join(f"{v},{a},non-sounding\n" for v, a in pairs)
        )
        np.savez(root / "maps.npz", **maps)
        truth = load_ground_truth(root / "vggss.json")
        log(f"extended protocol over {n_pairs} pairs: per-sample SLAVC loop")
        t_loop, want = timed(functools.partial(_slavc_loop, entries, pairs, maps), repeats)
        log("extended protocol: extended.extended (from the .npz)")
        t_vec, got = timed(functools.partial(extended.extended, truth, root / "maps.npz"), repeats)
    assert want is not None and got is not None
    threads = torch.get_num_threads()
    same = all(got[k] == want[k] for k in want)
    print(
        f"extended protocol: {n_pos} positives + {len(pairs)} negatives, 7×7 maps, AP / max-F1 / LocAcc "
        f"(the loop's torch resize on torch's default {threads} intra-op threads)"
    )
    print(f"{'':<44}{TIMES}{RATIOS}")
    print(f"{'per-sample SLAVC loop (np.sort ×2 per map)':<44}{t_loop.wall:>9.2f}{t_loop.cpu:>8.2f}")
    print(
        f"{'extended.extended, from the .npz':<44}{t_vec.wall:>9.2f}{t_vec.cpu:>8.2f}{ratios(t_loop, t_vec)}  "
        f"{'equal' if same else 'DIFFERENT'}: " + ", ".join(f"{k} {got[k]:.4f}" for k in want)
    )
    return same


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=3240, help="images (two instances each); default 3240")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each method; the best is reported")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="threads of the vectorised score (0: CPU count, ≤ 8)")
    parser.add_argument("--clips", type=int, default=5158, help="retrieval pool size; default 5158 (VGG-SS)")
    parser.add_argument("--pairs", type=int, default=10316, help="extended pairs; default 10316 (Extended VGG-SS)")
    parser.add_argument("--only", choices=("localisation", "retrieval", "extended"), default=None)
    args = parser.parse_args()
    threads = args.threads or min(8, os.cpu_count() or 1)
    if args.only in (None, "extended") and not extended_speed(args.pairs, args.seed, args.repeats):
        sys.exit(1)
    if args.only in (None, "retrieval") and not retrieval_speed(args.clips, args.seed, args.repeats):
        sys.exit(1)
    if args.only in ("retrieval", "extended"):
        return

    log(f"making {2 * args.images} random 224×224 maps and IS4-like boxes")
    maps, boxes, ids = make_data(args.images, args.seed)
    n = len(maps)
    ref, rows, same = in_memory(maps, boxes, ids, threads, args.repeats)
    with tempfile.TemporaryDirectory(prefix="is4-eval-bench-") as tmp:
        command_rows, command_same, peak, npz_mb = whole_command(Path(tmp), maps, boxes, ids, args.repeats, ref)
    rows += command_rows
    same &= command_same
    t_ref = rows[0][1]

    print(
        f"IS4 scoring: {n} instances ({args.images} images × 2), 224×224 float32 noise maps, IS4-like boxes, "
        "the 8 box metrics, reference protocol"
    )
    print(f"python {platform.python_version()}, numpy {np.__version__}, {os.cpu_count()} CPUs, best of {args.repeats}")
    print()
    print(f"{'method':<44}{TIMES}{'instances/s':>13}{RATIOS}  check")
    for name, t, note in rows:
        print(f"{name:<44}{t.wall:>9.2f}{t.cpu:>8.2f}{n / t.wall:>13.0f}{ratios(t_ref, t)}  {note}")
    print()
    print(
        f"maps: {npz_mb:.0f} MiB in the .npz (float32), {n * S * S * 8 / 2**20:.0f} MiB if all held in float64; "
        f"command peak memory {peak / 1024:.0f} MiB"
    )
    print(f"same numbers: {'yes' if same else 'NO'}")
    print("reference: " + ", ".join(f"{k} {ref[k]:.4f}" for k in KEYS))
    if not same:
        sys.exit(1)


if __name__ == "__main__":
    main()
