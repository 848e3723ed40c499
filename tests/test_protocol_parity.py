"""The default protocol against an independent re-implementation of the reference evaluation, written here.

`reference_scores` is a per-sample Python loop in plain numpy, written from the published description of the
reference code (issue 11): `np.sort` twice per map, `pred > sorted[int(H*W/2)]` and `pred > sorted[H*W - gt_area]`,
IoU = sum(bin*gt) / (sum(gt) + sum(bin*(gt==0))), the trapezoid of the success rate over `[0.05*i for i in
range(21)]`, images grouped by the instance id less its last `_category` part with each image's minimum, boxes as
`gt[int(y1):int(y2), int(x1):int(x2)] = 1`, mIoU = inter / (union + 1e-7), and the F-measure (β² = 0.3) of the
binarised map at 255 thresholds `linspace(0, 1 - 1e-10, 255)` (`>=`), averaged over instances per threshold, then
the maximum. The harness must agree to 1e-9 percentage points, through the array API and through the files.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from is4.pipeline.evaluation import evaluate as ev
from is4.pipeline.evaluation import metrics
from is4.pipeline.evaluation.formats import load_ground_truth

H = W = 224
TOLERANCE_PP = 1e-9

# Borderline boxes first (full frame, one pixel, exactly half, fractional and off-frame coordinates), then ordinary.
BORDERLINE = [
    [0, 0, 224, 224],
    [100, 100, 101, 101],
    [0, 0, 112, 224],
    [0, 0, 224, 112],
    [112, 0, 224, 224],
    [10.7, 3.2, 100.9, 50.5],
    [0, 0, 224, 223],
    [-30, 0, 230, 40],
    [223, 223, 224, 224],
    [5.99, 5.99, 6.01, 7.5],
]


# --- the reference, from its description -------------------------------------------------------------------


def ref_box(box) -> np.ndarray:
    gt = np.zeros((H, W))
    x1, y1, x2, y2 = box
    gt[int(y1) : int(y2), int(x1) : int(x2)] = 1
    return gt


def ref_binarise(pred: np.ndarray, thr) -> np.ndarray:
    infer = np.zeros((H, W))
    infer[pred > thr] = 1
    return infer


def ref_iou(infer: np.ndarray, gt: np.ndarray) -> float:
    return np.sum(infer * gt) / (np.sum(gt) + np.sum(infer * (gt == 0)))


def ref_auc(x, y) -> float:
    """sklearn.metrics.auc for an increasing x: the trapezoid rule."""
    return sum((x[i] - x[i - 1]) * (y[i] + y[i - 1]) / 2 for i in range(1, len(x)))


def ref_fscore_curve(infer: np.ndarray, gt: np.ndarray) -> np.ndarray:
    curve = []
    for t in np.linspace(0, 1 - 1e-10, 255):
        y = (infer >= t).astype(np.float64)
        tp = (y * gt).sum()
        prec, rec = tp / (y.sum() + 1e-20), tp / (gt.sum() + 1e-20)
        f = (1 + 0.3) * prec * rec / (0.3 * prec + rec) if (0.3 * prec + rec) > 0 else 0.0
        curve.append(0.0 if f != f else f)
    return np.array(curve)


def reference_scores(maps, gts, instance_ids, masks: bool = False) -> tuple[dict, dict]:
    per: dict[str, list] = {"iou": [], "iou_adaptive": [], "miou": [], "miou_adaptive": [], "f": [], "f_adaptive": []}
    for pred, gt in zip(maps, gts):
        thr = np.sort(pred.flatten())[int(pred.shape[0] * pred.shape[1] / 2)]
        gt_nums = int((gt != 0).sum())
        thr_adaptive = np.sort(pred.flatten())[int(pred.shape[0] * pred.shape[1] - gt_nums)]
        for suffix, t in (("", thr), ("_adaptive", thr_adaptive)):
            infer = ref_binarise(pred, t)
            per["iou" + suffix].append(ref_iou(infer, gt))
            if masks:
                inter = (infer * gt).sum()
                union = np.maximum(infer, gt).sum()
                per["miou" + suffix].append(inter / (union + 1e-7))
                per["f" + suffix].append(ref_fscore_curve(infer, gt))
    x = [0.05 * i for i in range(21)]
    out = {}
    for suffix in ("", "_adaptive"):
        ious = np.array(per["iou" + suffix])
        images: dict[str, float] = {}
        for iid, value in zip(instance_ids, ious):
            image = "_".join(iid.split("_")[:-1])
            images[image] = min(images.get(image, np.inf), value)
        image_ious = np.array(list(images.values()))
        out["ciou" + suffix] = 100 * np.sum(ious >= 0.5) / len(ious)
        out["auc" + suffix] = 100 * ref_auc(x, [np.sum(ious >= t) / len(ious) for t in x])
        out["iiou" + suffix] = 100 * np.sum(image_ious >= 0.5) / len(image_ious)
        out["iauc" + suffix] = 100 * ref_auc(x, [np.sum(image_ious >= t) / len(image_ious) for t in x])
        if masks:
            out["miou" + suffix] = 100 * sum(per["miou" + suffix]) / len(ious)
            out["fscore" + suffix] = 100 * float((sum(per["f" + suffix]) / len(ious)).max())
    return out, per


# --- test data ----------------------------------------------------------------------------------------------


def make_maps(n: int, seed: int) -> np.ndarray:
    """Continuous, quantised and tied float32 maps, in turn."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:H, 0:W]
    maps = np.zeros((n, H, W), dtype=np.float32)
    for i in range(n):
        kind = i % 6
        if kind == 0:  # continuous noise
            maps[i] = rng.random((H, W), dtype=np.float32)
        elif kind == 1:  # quantised: 8 levels, huge ties at both cuts
            maps[i] = np.floor(rng.random((H, W)) * 8) / 8
        elif kind == 2:  # a smooth blob
            cy, cx, sd = rng.uniform(0, H), rng.uniform(0, W), rng.uniform(15, 80)
            maps[i] = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sd**2))
        elif kind == 3:  # exactly half the pixels tied at 0: the cut value sits on the tie
            flat = rng.random(H * W).astype(np.float32) + 1
            flat[rng.permutation(H * W)[: H * W // 2]] = 0
            maps[i] = flat.reshape(H, W)
        elif kind == 4:  # a map of four values in quadrant blocks
            maps[i] = np.kron(rng.integers(0, 4, (2, 2)), np.ones((112, 112))).astype(np.float32)
        else:  # a few distinct values plus tiny noise on some pixels
            maps[i] = np.round(rng.random((H, W)), 1) + (rng.random((H, W)) < 0.1) * np.float32(1e-3)
    return maps


def make_boxes(n: int, seed: int) -> list[list[float]]:
    rng = np.random.default_rng(seed)
    boxes = [list(map(float, b)) if isinstance(b[0], float) else b for b in BORDERLINE]
    while len(boxes) < n:
        x1, y1 = rng.integers(0, 200, 2)
        w, h = rng.integers(2, 224, 2)
        boxes.append([int(x1), int(y1), int(min(x1 + w, 224)), int(min(y1 + h, 224))])
    return boxes[:n]


def with_signal(maps: np.ndarray, boxes) -> np.ndarray:
    """Every other image's two maps raised inside their boxes (ties kept), so that some instances succeed."""
    out = maps.copy()
    for i, box in enumerate(boxes):
        if (i // 2) % 2 == 0:
            out[i] += ref_box(box).astype(np.float32)
    return out


def instance_ids(n: int) -> list[str]:
    return [f"cat{i // 2}_dog{i // 2}_{i // 2}_{'cat' if i % 2 == 0 else 'dog'}{i // 2}" for i in range(n)]


def assert_parity(ours: dict, reference: dict) -> None:
    assert set(ours) == set(reference)
    for key, value in reference.items():
        assert abs(ours[key] - value) <= TOLERANCE_PP, (key, ours[key], value)


# --- tests --------------------------------------------------------------------------------------------------


def test_box_rasterisation_is_the_reference_slice():
    boxes = make_boxes(30, seed=1)
    got = metrics.box_mask(boxes)
    for box, mask in zip(boxes, got):
        np.testing.assert_array_equal(mask, ref_box(box) == 1, err_msg=str(box))


def test_box_metrics_equal_the_reference_loop():
    n = 48
    boxes, ids = make_boxes(n, seed=4), instance_ids(n)
    maps = with_signal(make_maps(n, seed=3), boxes)
    expected, per = reference_scores(maps, [ref_box(b) for b in boxes], ids)
    images = [iid.rsplit("_", 1)[0] for iid in ids]
    ours = metrics.score(maps, metrics.box_mask(boxes), images, decimals=None)
    assert_parity(ours, expected)
    scores = metrics.per_instance(maps, metrics.box_mask(boxes))
    np.testing.assert_array_equal(scores["iou"], per["iou"])
    np.testing.assert_array_equal(scores["iou_adaptive"], per["iou_adaptive"])
    # The data exercises both outcomes and both rules' differences: not trivially 0 or 100.
    assert 0 < expected["ciou"] < 100 and 0 < expected["iiou_adaptive"] < 100 and 0 < expected["iauc"] < 100
    assert ours != metrics.score(maps, metrics.box_mask(boxes), images, protocol="exact-k", decimals=None)


def test_mask_metrics_equal_the_reference_loop():
    n = 18
    rng = np.random.default_rng(5)
    maps = make_maps(n, seed=6)
    yy, xx = np.mgrid[0:H, 0:W]
    gts = []
    for _ in range(n):  # ellipses of every size, from a few pixels to more than the frame
        cy, cx = rng.uniform(0, H, 2)
        ry, rx = rng.uniform(2, 200, 2)
        gts.append((((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1).astype(np.float64))
    gts[0][:] = 1  # a full-frame mask
    ids = instance_ids(n)
    expected, _ = reference_scores(maps, gts, ids, masks=True)
    images = [iid.rsplit("_", 1)[0] for iid in ids]
    ours = metrics.score(maps, np.array(gts) == 1, images, with_mask_metrics=True, decimals=None)
    assert_parity(ours, expected)
    assert 0 < expected["fscore"] < 100 and 0 < expected["miou_adaptive"] < 100


def test_fscore_maximum_can_come_from_the_whole_frame():
    # A bad map on large regions: F of the whole frame (threshold 0) beats F of the binarised map.
    gts = [np.ones((H, W)), np.zeros((H, W))]
    gts[1][:200] = 1
    maps = np.stack([np.arange(H * W, dtype=np.float32).reshape(H, W)] * 2)
    maps[1] = maps[1][::-1]  # high at the bottom, where the region is not
    expected, _ = reference_scores(maps, gts, ["a_x", "a_y"], masks=True)
    ours = metrics.score(maps, np.array(gts) == 1, ["a", "a"], with_mask_metrics=True, decimals=None)
    assert_parity(ours, expected)
    frame_f = np.mean([1.3 * g.mean() / (0.3 * g.mean() + 1) for g in gts])
    assert ours["fscore"] == pytest.approx(100 * frame_f, abs=1e-9)


def test_union_and_consensus_regions_equal_the_reference_formula():
    # VGG-SS: the union of boxes (0 / 1); Flickr: the consensus map (count / 2, capped at 1: 0, 0.5, 1).
    n = 12
    maps, rng = make_maps(n, seed=8), np.random.default_rng(9)
    gts = []
    for i in range(n):
        count = np.zeros((H, W))
        for _ in range(rng.integers(1, 4)):
            x1, y1 = rng.integers(0, 150, 2)
            count[y1 : y1 + rng.integers(10, 120), x1 : x1 + rng.integers(10, 120)] += 1
        gts.append(np.minimum(count / 2, 1) if i % 2 else (count > 0).astype(np.float64))
    ids = [f"clip{i}_x" for i in range(n)]  # one instance per image
    expected, per = reference_scores(maps, gts, ids)
    scores = metrics.per_instance(maps, np.array(gts))
    np.testing.assert_array_equal(scores["iou"], per["iou"])
    np.testing.assert_array_equal(scores["iou_adaptive"], per["iou_adaptive"])
    ours = metrics.score(maps, np.array(gts), None, decimals=None)
    assert_parity(ours, {k: v for k, v in expected.items() if not k.startswith("i")})


def _write_release(root, boxes, ids, masks=None):
    root.mkdir()
    entries = [
        {
            "image": f"/mnt/authors/IS4/visual_frames/{iid}.jpg",
            "audio": f"/mnt/authors/IS4/audio_wav/{iid}.wav",
            "gt_box": box,
        }
        for iid, box in zip(ids, boxes)
    ]
    (root / "synthetic3240_bbox.json").write_text(json.dumps(entries))
    if masks is not None:
        (root / "gt_masks").mkdir()
        for iid, mask in zip(ids, masks):
            Image.fromarray((mask * 255).astype(np.uint8)).save(root / "gt_masks" / f"{iid}.png")
        seg = [dict(e, gt_box=f"/mnt/authors/IS4/gt_masks/{iid}.png") for e, iid in zip(entries, ids)]
        (root / "synthetic3240_seg.json").write_text(json.dumps(seg))
    return root


def test_the_harness_on_files_equals_the_reference_loop(tmp_path):
    """The authors' file layout (absolute foreign paths), an .npz, 224×224 maps: the whole path to the numbers."""
    n = 30
    boxes, ids = make_boxes(n, seed=12), instance_ids(n)
    maps = with_signal(make_maps(n, seed=11), boxes)
    masks = [ref_box(b) for b in boxes]
    release = _write_release(tmp_path / "IS4", boxes, ids, masks)
    np.savez(tmp_path / "maps.npz", **dict(zip(ids, maps)))
    for gt in ("box", "mask"):
        if gt == "box":
            with pytest.warns(ev.EvaluationWarning, match="1 boxes reach outside the 224×224 frame"):
                truth = load_ground_truth(release, gt)
        else:
            truth = load_ground_truth(release, gt)
        assert truth.benchmark == "is4" and truth.gt == gt
        scored = ev.score_file(truth, tmp_path / "maps.npz")
        ours = metrics.summarise(scored.per_instance, truth.image_ids, with_mask_metrics=gt == "mask", decimals=None)
        expected, per = reference_scores(maps, masks, ids, masks=gt == "mask")
        assert_parity(ours, expected)
        np.testing.assert_array_equal(scored.per_instance["iou"], per["iou"])
        head = ("benchmark", "protocol", "maps", "gt", "instances", "empty_regions", "left_out", "images")
        head += ("miou_mean",) if gt == "mask" else ()
        assert scored.summary == {**{k: scored.summary[k] for k in head}, **ours}
