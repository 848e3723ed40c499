"""IS4 metrics on hand-computable maps, and the vectorised `score` against a per-sample loop written here."""

from __future__ import annotations

import numpy as np
import pytest

from is4.pipeline.evaluation import metrics
from is4.pipeline.evaluation.metrics import (
    THRESHOLDS,
    auc,
    binarise_top_fraction,
    binarise_top_k,
    box_mask,
    fscore,
    image_success,
    iou,
    resize_bilinear,
    score,
    success_curve,
)

S = 224
HALF = S * S // 2  # 25,088 pixels: the top-50 % K

LEFT = [0, 0, 112, 224]  # x1, y1, x2, y2
RIGHT = [112, 0, 224, 224]
TOP = [0, 0, 224, 112]
BOTTOM = [0, 112, 224, 224]


def rows_ramp(descending: bool = True) -> np.ndarray:
    """A 224×224 map whose value depends on the row only: high at the top (descending) or at the bottom."""
    r = np.arange(S, dtype=np.float32)[:, None] * np.ones((1, S), dtype=np.float32)
    return (S - 1 - r) if descending else r


def region_map(box) -> np.ndarray:
    """A map that is 0 outside `box` and varies (but stays > 0) inside it: an oracle for that box."""
    mask = box_mask([box])[0]
    ramp = np.arange(S * S, dtype=np.float32).reshape(S, S) / (S * S)
    return np.where(mask, 1.0 + ramp, 0.0).astype(np.float32)


# --- geometry -----------------------------------------------------------------------------------------------


def test_resize_bilinear_2x2_by_hand():
    # Half-pixel centres: output columns sample source x = -0.25 (clamped to 0), 0.25, 0.75, 1.25 (clamped to 1).
    out = resize_bilinear(np.array([[0.0, 1.0], [2.0, 3.0]]), 4)
    expected = np.array([[0.0, 0.25, 0.75, 1.0],
                         [0.5, 0.75, 1.25, 1.5],
                         [1.5, 1.75, 2.25, 2.5],
                         [2.0, 2.25, 2.75, 3.0]])
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, expected.astype(np.float32))


def test_resize_112_step_map_to_224_by_hand():
    small = np.zeros((112, 112), dtype=np.float32)
    small[:, :56] = 1.0  # left half high
    big = resize_bilinear(small)
    assert big.shape == (S, S)
    # Output column x samples source x/2 - 0.25: columns 0..110 stay 1, 111 → 0.75, 112 → 0.25, 113.. → 0.
    np.testing.assert_array_equal(big[0, :111], 1.0)
    assert big[0, 111] == 0.75 and big[0, 112] == 0.25
    np.testing.assert_array_equal(big[:, 113:], 0.0)
    # The top half is exactly the left half (columns 0..111): IoU 1 with the left-half box.
    pred = binarise_top_fraction(big[None])
    assert pred.sum() == HALF
    assert iou(pred, box_mask([LEFT]))[0] == 1.0


def test_resize_matches_torch_interpolate():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    for shape in [(7, 7), (14, 20), (112, 112), (300, 250)]:
        arr = rng.random(shape, dtype=np.float32)
        ref = torch.nn.functional.interpolate(torch.from_numpy(arr)[None, None], size=(S, S), mode="bilinear",
                                              align_corners=False)[0, 0].numpy()
        # torch computes source positions in float32 (errors ~2e-5 for 300 → 224); ours are float64.
        np.testing.assert_allclose(resize_bilinear(arr), ref, rtol=0, atol=1e-4)


def test_resize_same_size_is_identity():
    arr = np.random.default_rng(0).random((S, S))
    np.testing.assert_array_equal(resize_bilinear(arr), arr.astype(np.float32))


def test_box_mask_exclusive_edges_and_clipping():
    m = box_mask([[10, 20, 30, 60]])[0]
    rows, cols = np.nonzero(m)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (20, 59, 10, 29)
    assert m.sum() == 20 * 40
    # Fractional edges: a pixel is in when its centre is; [10.4, 10.6) holds the centre 10.5 of column 10 only.
    assert np.array_equal(np.nonzero(box_mask([[10.4, 0, 10.6, 1]])[0])[1], [10])
    # An edge exactly on a pixel centre: the centre on x1 is in, the centre on x2 is out.
    assert np.array_equal(np.nonzero(box_mask([[0.5, 0, 10.5, 1]])[0])[1], np.arange(10))
    assert box_mask([[-5, -5, 300, 300]])[0].all()
    assert not box_mask([[300, 0, 310, 10]])[0].any()
    assert box_mask(np.zeros((0, 4))).shape == (0, S, S)


# --- binarisation -------------------------------------------------------------------------------------------


def test_top_half_equal_to_gt_half_gives_iou_1():
    pred = binarise_top_fraction(rows_ramp()[None])
    assert pred.sum() == HALF
    assert iou(pred, box_mask([TOP]))[0] == 1.0


def test_quarter_box_with_map_peaked_elsewhere_gives_iou_0():
    gt = box_mask([[0, 0, 112, 112]])  # top-left quarter
    maps = rows_ramp(descending=False)[None]  # high at the bottom
    assert iou(binarise_top_fraction(maps), gt)[0] == 0.0
    assert iou(binarise_top_k(maps, [gt.sum()]), gt)[0] == 0.0
    result = score(maps, gt, ["img"])
    assert result["ciou"] == 0.0 and result["ciou_adaptive"] == 0.0
    assert result["auc"] == pytest.approx(100 * 0.05 / 2)  # the curve is 1 at threshold 0 and 0 after


def test_adaptive_top_k_keeps_exactly_the_gt_area():
    gt = box_mask([[40, 50, 70, 100]])  # 30 × 50 = 1,500 pixels
    k = int(gt.sum())
    assert k == 1500
    rng = np.random.default_rng(1)
    values = rng.permutation(S * S).astype(np.float32).reshape(1, S, S)  # distinct values: no ties
    values[gt] += S * S  # every gt pixel above every other pixel
    pred = binarise_top_k(values, [k])
    assert pred.sum() == k
    assert iou(pred, gt)[0] == 1.0
    assert iou(binarise_top_fraction(values), gt)[0] == k / HALF
    result = score(values, gt, ["img"])
    assert result["ciou_adaptive"] == 100.0 and result["auc_adaptive"] == 100.0
    assert result["ciou"] == 0.0  # 1,500 / 25,088 < 0.5


def test_ties_drop_the_whole_group_at_the_cut():
    maps = np.zeros((3, 10, 10), dtype=np.float32)
    maps[:, 0, :] = 1.0  # 10 pixels of value 1, 90 of value 0
    # k = 10: the 11th largest value is 0 → the ten 1s; k = 15: still the ten 1s (the 0s tie at the cut);
    # k = 5: the 6th largest is 1 → the tied group of 1s is dropped, nothing is kept.
    kept = binarise_top_k(maps, [10, 15, 5]).sum(axis=(1, 2))
    assert kept.tolist() == [10, 10, 0]
    # Position does not matter: the same values shuffled keep the same number of pixels.
    shuffled = np.random.default_rng(0).permuted(maps.reshape(3, -1), axis=1).reshape(3, 10, 10)
    assert binarise_top_k(shuffled, [10, 15, 5]).sum(axis=(1, 2)).tolist() == [10, 10, 0]


def test_ciou_success_is_iou_at_least_one_half():
    # The top half of a row ramp is the top 112 rows. A gt box of the top 56 rows: IoU 56/112 = 0.5 → success;
    # of the top 55 rows: IoU 55/112 ≈ 0.491 → failure.
    maps = np.stack([rows_ramp(), rows_ramp()])
    result = score(maps, box_mask([[0, 0, 224, 56], [0, 0, 224, 55]]), ["a", "b"])
    assert result["ciou"] == 50.0 and result["iiou"] == 50.0
    np.testing.assert_array_equal(metrics.per_instance(maps, box_mask([[0, 0, 224, 56], [0, 0, 224, 55]]))["iou"],
                                  [0.5, 55 / 112])


def test_top_k_edge_cases():
    maps = np.random.default_rng(0).random((2, 8, 8))
    assert binarise_top_k(maps, 0).sum() == 0
    assert binarise_top_k(maps, 64).all()
    assert binarise_top_fraction(np.full((1, 8, 8), 3.0)).sum() == 0  # constant map: nothing ranks above
    assert binarise_top_fraction(maps, 0.25).sum(axis=(1, 2)).tolist() == [16, 16]
    with pytest.raises(ValueError):
        binarise_top_k(maps, 65)
    with pytest.raises(ValueError):
        binarise_top_k(maps, [1.5, 2])
    with pytest.raises(ValueError):
        binarise_top_fraction(maps[0])  # not a batch


# --- per-instance scores ------------------------------------------------------------------------------------


def test_iou_and_fscore_by_hand():
    pred = np.zeros((3, 4, 4), dtype=bool)
    gt = np.zeros((3, 4, 4), dtype=bool)
    pred[0, 0, :2] = True  # 2 predicted pixels
    gt[0, 0, 1:4] = True  # 3 gt pixels, 1 shared
    gt[1, 0, 0] = True  # empty prediction
    # instance 2: both empty
    np.testing.assert_array_equal(iou(pred, gt), [1 / 4, 0.0, 0.0])
    # P = 1/2, R = 1/3: F = 1.3 · (1/6) / (0.3 · 1/2 + 1/3) = 13/29
    np.testing.assert_allclose(fscore(pred, gt), [13 / 29, 0.0, 0.0], rtol=1e-15)
    np.testing.assert_allclose(fscore(pred, gt, beta2=1.0), [2 * (1 / 6) / (5 / 6), 0.0, 0.0], rtol=1e-15)
    with pytest.raises(ValueError):
        iou(pred, gt[:2])


# --- aggregation --------------------------------------------------------------------------------------------


def test_success_curve_and_auc_by_hand():
    curve = success_curve([0.0, 0.5, 1.0])
    # threshold 0: all three; 0.05 … 0.5 (10 points): two; 0.55 … 1.0 (10 points): one.
    np.testing.assert_allclose(curve, [1.0] + [2 / 3] * 10 + [1 / 3] * 10, rtol=1e-15)
    # Trapezoids: (1 + 2/3)/2·0.05 + 9·(2/3)·0.05 + (2/3 + 1/3)/2·0.05 + 9·(1/3)·0.05 = 31/60
    assert auc(curve, THRESHOLDS) == pytest.approx(31 / 60, abs=1e-12)
    assert auc(np.ones(21)) == pytest.approx(1.0)
    assert auc(np.zeros(21)) == 0.0
    assert THRESHOLDS.tolist() == [i / 20 for i in range(21)]


def test_success_is_iou_at_least_threshold_exactly():
    assert success_curve([0.15])[3] == 1.0  # 0.15 >= 3/20: no 0.15000000000000002 threshold
    assert success_curve([0.5], [0.5])[0] == 1.0
    assert success_curve([np.nextafter(0.5, 0)], [0.5])[0] == 0.0
    assert success_curve([]).tolist() == [0.0] * 21


def test_image_success_needs_every_instance():
    ious = [0.9, 0.3, 0.7, 0.6, 0.5]
    images = ["a", "a", "b", "b", "c"]
    assert image_success(ious, images, 0.5).tolist() == [False, True, True]
    assert image_success(ious, images, 0.65).tolist() == [False, False, False]
    assert image_success(ious, images, 0.0).tolist() == [True, True, True]


def test_image_with_one_failing_instance_fails_in_score():
    gt = box_mask([TOP, BOTTOM, TOP, BOTTOM])
    good_top, good_bottom = rows_ramp(), rows_ramp(descending=False)
    maps = np.stack([good_top, good_bottom, good_top, good_top])  # image "b": its bottom instance fails
    result = score(maps, gt, ["a", "a", "b", "b"])
    assert result["ciou"] == 75.0
    assert result["iiou"] == 50.0


# --- whole-batch scenarios ----------------------------------------------------------------------------------


def two_object_images():
    """Two images with two disjoint objects each: (maps of each object as an oracle, gt masks, image ids)."""
    boxes = [LEFT, RIGHT, TOP, BOTTOM]
    oracle = np.stack([region_map(b) for b in boxes])
    return oracle, box_mask(boxes), ["img1", "img1", "img2", "img2"]


def test_oracle_scores_100():
    oracle, gt, images = two_object_images()
    result = score(oracle, gt, images, with_mask_metrics=True)
    assert set(result) == set(metrics.METRIC_KEYS + metrics.MASK_METRIC_KEYS)
    assert all(value == 100.0 for value in result.values()), result


def test_anti_oracle_other_objects_mask_fails_every_image():
    oracle, gt, images = two_object_images()
    swapped = oracle[[1, 0, 3, 2]]  # each instance gets the OTHER object of its image
    result = score(swapped, gt, images, with_mask_metrics=True)
    assert result["ciou"] == 0.0 and result["iiou"] == 0.0 and result["miou"] == 0.0
    assert result["ciou_adaptive"] == 0.0 and result["iiou_adaptive"] == 0.0


def test_model_ignoring_sound_gets_half_the_instances_and_no_image():
    oracle, gt, images = two_object_images()
    # The same map for both sounds of an image: object 1 of img1, object 2 of img2.
    ignoring = oracle[[0, 0, 3, 3]]
    result = score(ignoring, gt, images, with_mask_metrics=True)
    assert result["ciou"] == 50.0 and result["ciou_adaptive"] == 50.0
    assert result["iiou"] == 0.0 and result["iiou_adaptive"] == 0.0
    assert result["miou"] == 50.0
    # Per instance the curve is 1 at threshold 0 and 1/2 after; per image 1 at 0 and 0 after.
    assert result["auc"] == pytest.approx(100 * (0.05 * 0.75 + 0.95 * 0.5), abs=1e-4)
    assert result["iauc"] == pytest.approx(100 * 0.05 / 2, abs=1e-4)


def test_oracle_for_a_region_larger_than_half():
    # 3/4 of the image: the top half can only cover 2/3 of it (IoU 2/3 passes 0.5), the adaptive top-K all of it.
    gt = box_mask([[0, 0, 224, 168]])
    oracle = region_map([0, 0, 224, 168])[None]
    result = score(oracle, gt, ["img"], with_mask_metrics=True)
    assert result["ciou"] == 100.0 and result["iiou"] == 100.0
    assert result["miou"] == pytest.approx(100 * 2 / 3, abs=1e-4)
    assert result["ciou_adaptive"] == result["miou_adaptive"] == result["fscore_adaptive"] == 100.0


def test_score_rejects_bad_input():
    gt = box_mask([TOP])
    bad = rows_ramp()[None].copy()
    bad[0, 5, 5] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        score(bad, gt, ["a"])
    with pytest.raises(ValueError, match="shape"):
        score(rows_ramp()[None], box_mask([TOP, TOP]), ["a"])
    with pytest.raises(ValueError, match="image ids"):
        score(rows_ramp()[None], gt, ["a", "b"])


# --- vectorised against a per-sample loop -------------------------------------------------------------------


def loop_score(maps, gt_masks, image_ids, with_mask_metrics):
    """The metrics one sample at a time, straight from the definitions."""
    n_px = maps.shape[1] * maps.shape[2]
    per = {key: [] for key in ("iou", "iou_adaptive", "fscore", "fscore_adaptive")}
    for m, g in zip(maps, gt_masks):
        flat, gt = m.ravel(), g.ravel()
        ordered = np.sort(flat)
        for suffix, k in (("", n_px // 2), ("_adaptive", int(gt.sum()))):
            threshold = ordered[n_px - k - 1] if k < n_px else -np.inf
            pred = flat > threshold
            inter = int(np.sum(pred & gt))
            union = int(np.sum(pred | gt))
            per["iou" + suffix].append(inter / union if union else 0.0)
            p = inter / pred.sum() if pred.sum() else 0.0
            r = inter / gt.sum() if gt.sum() else 0.0
            per["fscore" + suffix].append((1.3 * p * r) / (0.3 * p + r) if (0.3 * p + r) > 0 else 0.0)
    out = {}
    thresholds = [i / 20 for i in range(21)]

    def rate(values, t):
        return sum(1 for v in values if v >= t) / len(values)

    def area(values):
        curve = [rate(values, t) for t in thresholds]
        return sum((thresholds[i] - thresholds[i - 1]) * (curve[i] + curve[i - 1]) / 2 for i in range(1, 21))

    for suffix in ("", "_adaptive"):
        ious = per["iou" + suffix]
        worst: dict = {}
        for image, value in zip(image_ids, ious):
            worst[image] = min(worst.get(image, np.inf), value)
        image_ious = list(worst.values())
        out["ciou" + suffix] = round(100 * rate(ious, 0.5), 4)
        out["auc" + suffix] = round(100 * area(ious), 4)
        out["iiou" + suffix] = round(100 * rate(image_ious, 0.5), 4)
        out["iauc" + suffix] = round(100 * area(image_ious), 4)
        if with_mask_metrics:
            out["miou" + suffix] = round(100 * sum(ious) / len(ious), 4)
            out["fscore" + suffix] = round(100 * sum(per["fscore" + suffix]) / len(ious), 4)
    return out, per


def random_batch(n: int, seed: int):
    rng = np.random.default_rng(seed)
    maps = rng.random((n, S, S), dtype=np.float32)
    # A third of the maps take only 6 values (many ties at the cut), a third are smooth blobs, a third noise.
    maps[: n // 3] = np.floor(maps[: n // 3] * 6)
    yy, xx = np.mgrid[0:S, 0:S]
    for i in range(n // 3, 2 * n // 3):
        cy, cx, sd = rng.uniform(0, S), rng.uniform(0, S), rng.uniform(20, 90)
        maps[i] = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sd**2))
    corner = rng.integers(0, 180, (n, 2))
    size = rng.integers(8, 170, (n, 2))
    gt = box_mask(np.c_[corner, np.minimum(corner + size, S)])
    return maps, gt, [f"img{i // 2}" for i in range(n)]


@pytest.mark.parametrize("with_mask_metrics", [False, True])
def test_vectorised_score_equals_per_sample_loop(with_mask_metrics):
    maps, gt, images = random_batch(60, seed=7)
    expected, per = loop_score(maps, gt, images, with_mask_metrics)
    assert score(maps, gt, images, with_mask_metrics=with_mask_metrics) == expected
    for chunk, workers in [(16, 2), (7, 1), (1000, None)]:  # several chunks (the last partial), threads or not
        got = metrics.per_instance(maps, gt, chunk=chunk, workers=workers)
        for key, values in per.items():
            assert np.array_equal(got[key], np.array(values)), (key, chunk, workers)
    # The score is not trivially 0 or 100 on this data: the comparison exercises both outcomes.
    assert 0 < expected["auc"] < 100 and 0 < expected["auc_adaptive"] < 100


def test_vectorised_binarisation_equals_loop_with_ties():
    maps, gt, _ = random_batch(12, seed=11)
    k = gt.reshape(12, -1).sum(axis=1)
    got = binarise_top_k(maps, k)
    for i in range(12):
        ordered = np.sort(maps[i].ravel())
        threshold = ordered[S * S - k[i] - 1]
        assert np.array_equal(got[i], maps[i] > threshold)
    assert np.array_equal(binarise_top_fraction(maps), binarise_top_k(maps, HALF))
