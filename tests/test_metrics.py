"""IS4 metrics on hand-computable maps under both protocols, the cut values against np.sort, and the exact-k
protocol's vectorised `score` against a per-sample loop written here (the reference protocol's parity is in
test_protocol_parity.py)."""

from __future__ import annotations

import numpy as np
import pytest

from is4.pipeline.evaluation import metrics
from is4.pipeline.evaluation.metrics import (
    EXACT_K,
    REFERENCE,
    auc,
    binarise,
    binarise_adaptive,
    binarise_top_half,
    box_mask,
    fscore,
    image_success,
    iou,
    rank_values,
    resize_bilinear,
    score,
    success_curve,
)

S = 224
N_PX = S * S
HALF = N_PX // 2  # 25,088 pixels

LEFT = [0, 0, 112, 224]  # x1, y1, x2, y2
RIGHT = [112, 0, 224, 224]
TOP = [0, 0, 224, 112]
BOTTOM = [0, 112, 224, 224]


def rows_ramp(descending: bool = True) -> np.ndarray:
    """A 224×224 map whose value depends on the row only: high at the top (descending) or at the bottom."""
    r = np.arange(S, dtype=np.float32)[:, None] * np.ones((1, S), dtype=np.float32)
    return (S - 1 - r) if descending else r


def distinct_ramp(descending: bool = True) -> np.ndarray:
    """Raster order, all values distinct: high at the top-left (descending) or at the bottom-right."""
    ramp = np.arange(N_PX, dtype=np.float32).reshape(S, S)
    return ramp[::-1, ::-1].copy() if descending else ramp


def region_map(box) -> np.ndarray:
    """A map that is 0 outside `box` and varies (but stays > 0) inside it: an oracle for that box."""
    mask = box_mask([box])[0]
    ramp = np.arange(N_PX, dtype=np.float32).reshape(S, S) / N_PX
    return np.where(mask, 1.0 + ramp, 0.0).astype(np.float32)


# --- geometry -----------------------------------------------------------------------------------------------


def test_resize_bilinear_2x2_by_hand():
    src = np.array([[0.0, 1.0], [2.0, 3.0]])
    # align_corners=True: output i samples source i · (2 - 1) / (4 - 1) = 0, 1/3, 2/3, 1 (the corners are kept).
    third = np.array([0, 1 / 3, 2 / 3, 1])
    np.testing.assert_allclose(
        resize_bilinear(src.astype(np.float64), 4), third[None, :] + 2 * third[:, None], rtol=0, atol=1e-15
    )
    # align_corners=False: half-pixel centres, x = -0.25 (clamped to 0), 0.25, 0.75, 1.25 (clamped to 1).
    out = resize_bilinear(src.astype(np.float32), 4, align_corners=False)
    expected = np.array(
        [[0.0, 0.25, 0.75, 1.0], [0.5, 0.75, 1.25, 1.5], [1.5, 1.75, 2.25, 2.5], [2.0, 2.25, 2.75, 3.0]]
    )
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, expected.astype(np.float32))


def test_resize_align_corners_by_the_formula():
    src = np.random.default_rng(2).random((7, 9))
    out = resize_bilinear(src, (S, S))
    assert out.dtype == np.float64
    for r, c in [(0, 0), (223, 223), (100, 37), (5, 200)]:
        y, x = r * 6 / 223, c * 8 / 223
        y0, x0 = min(int(y), 5), min(int(x), 7)
        ly, lx = y - y0, x - x0
        value = (1 - ly) * ((1 - lx) * src[y0, x0] + lx * src[y0, x0 + 1]) + ly * (
            (1 - lx) * src[y0 + 1, x0] + lx * src[y0 + 1, x0 + 1]
        )
        assert out[r, c] == pytest.approx(value, abs=1e-14)
    assert out[0, 0] == src[0, 0] and out[-1, -1] == src[-1, -1]


def test_resize_112_step_map_to_224_by_hand():
    small = np.zeros((112, 112), dtype=np.float32)
    small[:, :56] = 1.0  # left half high
    big = resize_bilinear(small, align_corners=False)
    # Output column x samples source x/2 - 0.25: columns 0..110 stay 1, 111 → 0.75, 112 → 0.25, 113.. → 0.
    np.testing.assert_array_equal(big[0, :111], 1.0)
    assert big[0, 111] == 0.75 and big[0, 112] == 0.25
    np.testing.assert_array_equal(big[:, 113:], 0.0)
    # The exact-k top half is exactly the left half (columns 0..111): IoU 1 with the left-half box.
    pred = binarise_top_half(big[None], "exact-k")
    assert pred.sum() == HALF and iou(pred, box_mask([LEFT]))[0] == 1.0


@pytest.mark.parametrize("align_corners", [True, False])
def test_resize_matches_torch_interpolate(align_corners):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    for shape in [(7, 7), (14, 20), (112, 112), (300, 250)]:
        arr = rng.random(shape, dtype=np.float32)
        ref = torch.nn.functional.interpolate(
            torch.from_numpy(arr)[None, None], size=(S, S), mode="bilinear", align_corners=align_corners
        )[0, 0].numpy()
        # torch computes float32 maps in float32 (errors ~2e-5 for 300 → 224); ours are float64.
        np.testing.assert_allclose(resize_bilinear(arr, align_corners=align_corners), ref, rtol=0, atol=1e-4)


def test_resize_same_size_is_identity():
    arr = np.random.default_rng(0).random((S, S))
    assert resize_bilinear(arr).dtype == np.float64 and np.array_equal(resize_bilinear(arr), arr)
    np.testing.assert_array_equal(resize_bilinear(arr.astype(np.float32)), arr.astype(np.float32))


def test_box_mask_slice_rule_is_numpy_slicing_of_int_coordinates():
    m = box_mask([[10, 20, 30, 60]])[0]
    rows, cols = np.nonzero(m)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (20, 59, 10, 29)
    # int() truncates: [10.9, 0, 12.99, 1] is columns 10 and 11.
    assert np.array_equal(np.nonzero(box_mask([[10.9, 0, 12.99, 1]])[0])[1], [10, 11])
    # A negative coordinate counts from the far edge, as numpy slicing does: x from -30 → 194.
    assert np.array_equal(np.unique(np.nonzero(box_mask([[-30, 0, 230, 5]])[0])[1]), np.arange(194, 224))
    assert not box_mask([[-5, 0, 50, 50]])[0].any()  # [219:50]: empty
    assert box_mask([[0, 0, 224, 224]])[0].all() and box_mask(np.zeros((0, 4))).shape == (0, S, S)


def test_box_mask_centre_rule_exclusive_edges_and_clipping():
    m = box_mask([[10, 20, 30, 60]], rule="centre")[0]
    assert m.sum() == 20 * 40 and np.array_equal(m, box_mask([[10, 20, 30, 60]])[0])
    # Fractional edges: a pixel is in when its centre is; [10.4, 10.6) holds the centre 10.5 of column 10 only.
    assert np.array_equal(np.nonzero(box_mask([[10.4, 0, 10.6, 1]], rule="centre")[0])[1], [10])
    assert np.array_equal(np.nonzero(box_mask([[0.5, 0, 10.5, 1]], rule="centre")[0])[1], np.arange(10))
    assert box_mask([[-5, -5, 300, 300]], rule="centre")[0].all()
    assert not box_mask([[300, 0, 310, 10]], rule="centre")[0].any()
    with pytest.raises(ValueError, match="box rule"):
        box_mask([[0, 0, 1, 1]], rule="round")


# --- cut values ---------------------------------------------------------------------------------------------


def test_rank_values_equal_np_sort_on_any_values():
    rng = np.random.default_rng(0)
    wide = rng.standard_normal((4, N_PX))
    wide[:, 0], wide[:, 1] = -1.7e308, 1.7e308  # a range float bins cannot hold
    outliers = rng.standard_normal((4, N_PX)).astype(np.float32)
    outliers[:, :100] = 1e30  # almost every value in the lowest bin
    constant = np.full((3, N_PX), 3.0, dtype=np.float32)
    constant[1, 5] = 4.0
    cases = [
        rng.random((5, N_PX), dtype=np.float32),
        np.floor(rng.random((5, N_PX)) * 6).astype(np.float32),  # six values: huge ties
        outliers,
        wide,
        constant,
        rng.random((3, N_PX)) * 1e-310,  # subnormal
        rng.integers(-5, 5, (3, N_PX)),
        np.exp(rng.standard_normal((3, N_PX)) * 10).astype(np.float32),  # heavy-tailed
        rng.random((2, 10)),  # a tiny row
    ]
    for x in cases:
        n, p = x.shape
        ranks = [np.full(n, p // 2), rng.integers(0, p, n), np.zeros(n, int), np.full(n, p - 1)]
        ordered = np.sort(x, axis=1)
        for rank, got in zip(ranks, rank_values(x, ranks)):
            np.testing.assert_array_equal(got, ordered[np.arange(n), rank], err_msg=str(x.dtype))
    with pytest.raises(ValueError, match="NaN"):
        rank_values(np.array([[1.0, np.nan, 2.0]]), [np.array([0])])
    with pytest.raises(ValueError, match="ranks"):
        rank_values(np.zeros((1, 4)), [np.array([4])])


def test_rank_values_per_row_ranks_in_any_order_equal_np_sort():
    """The first rank differs by row (each row partitioned alone), later ranks fall on either side of the ones
    already placed, repeat them, or sit at the ends: every value is still np.sort's."""
    rng = np.random.default_rng(1)
    cases = [
        rng.random((6, N_PX), dtype=np.float32),
        np.floor(rng.random((6, N_PX)) * 3).astype(np.float32),  # three values: the ranks fall inside ties
        rng.standard_normal((6, 50)),
    ]
    for x in cases:
        n, p = x.shape
        first = rng.integers(0, p, n)
        ranks = [first, rng.integers(0, p, n), first, np.full(n, p - 1), np.zeros(n, int), rng.integers(0, p, n)]
        ordered = np.sort(x, axis=1)
        for rank, got in zip(ranks, rank_values(x, ranks)):
            np.testing.assert_array_equal(got, ordered[np.arange(n), rank], err_msg=str(x.dtype))


# --- binarisation -------------------------------------------------------------------------------------------


def test_top_half_cut_keeps_one_pixel_less_under_the_reference():
    maps = distinct_ramp()[None]
    # reference: pred > s[int(N/2)] keeps N/2 - 1 distinct pixels; exact-k keeps exactly N/2.
    assert binarise_top_half(maps).sum() == HALF - 1
    assert binarise_top_half(maps, "exact-k").sum() == HALF
    assert iou(binarise_top_half(maps, "exact-k"), box_mask([TOP]))[0] == 1.0
    assert iou(binarise_top_half(maps), box_mask([TOP]))[0] == (HALF - 1) / HALF


def test_adaptive_cut_keeps_area_minus_one_under_the_reference():
    gt = box_mask([[40, 50, 70, 100]])  # 30 × 50 = 1,500 pixels
    values = np.random.default_rng(1).permutation(N_PX).astype(np.float32).reshape(1, S, S)
    values[gt] += N_PX  # every gt pixel above every other pixel
    assert binarise_adaptive(values, [1500], "exact-k").sum() == 1500
    assert binarise_adaptive(values, [1500]).sum() == 1499
    ref = score(values, gt, ["img"])
    assert ref["ciou_adaptive"] == 100.0 and ref["auc_adaptive"] == pytest.approx(97.5)  # fails only 1.0
    exact = score(values, gt, ["img"], protocol="exact-k")
    assert exact["ciou_adaptive"] == 100.0 and exact["auc_adaptive"] == 100.0
    assert ref["ciou"] == exact["ciou"] == 0.0  # 1,500 / 25,088 < 0.5


def test_full_frame_region_fails_the_reference_top_half_whatever_the_map():
    gt = box_mask([[0, 0, 224, 224]] * 3)
    maps = np.stack([distinct_ramp(), rows_ramp(), np.random.default_rng(2).random((S, S), dtype=np.float32)])
    ious = metrics.per_instance(maps, gt)["iou"]
    assert (ious < 0.5).all() and ious[0] == (HALF - 1) / N_PX
    np.testing.assert_array_equal(metrics.per_instance(maps, gt, protocol="exact-k")["iou"][[0, 2]], [0.5, 0.5])


def test_ties_at_the_cut():
    maps = np.zeros((3, 10, 10), dtype=np.float32)
    maps[:, 0, :] = 1.0  # 10 pixels of value 1, 90 of value 0
    # exact-k, K = 10: the 11th largest is 0 → the ten 1s; K = 15: still the ten 1s; K = 5: the 6th largest is 1
    # → the tied group of 1s is dropped, nothing is kept.
    assert binarise(maps, 100 - np.array([10, 15, 5]) - 1).sum(axis=(1, 2)).tolist() == [10, 10, 0]
    # Position does not matter: the same values shuffled keep the same number of pixels.
    shuffled = np.random.default_rng(0).permuted(maps.reshape(3, -1), axis=1).reshape(3, 10, 10)
    assert binarise(shuffled, 100 - np.array([10, 15, 5]) - 1).sum(axis=(1, 2)).tolist() == [10, 10, 0]
    # reference top half of 100 pixels: s[50] = 0 → the ten 1s.
    assert binarise_top_half(maps).sum(axis=(1, 2)).tolist() == [10, 10, 10]
    assert binarise_top_half(np.full((1, 8, 8), 3.0)).sum() == 0  # a constant map keeps nothing


def test_binarise_edge_cases():
    maps = np.random.default_rng(0).random((2, 8, 8))
    assert binarise(maps, -1).all() and binarise(maps, 63).sum() == 0
    assert binarise_adaptive(maps, [64, 64], "exact-k").all()
    assert binarise_adaptive(maps, [64, 64]).sum(axis=(1, 2)).tolist() == [63, 63]
    with pytest.raises(ValueError):
        binarise(maps, 64)
    with pytest.raises(ValueError):
        binarise_adaptive(maps, [0, 3])
    with pytest.raises(ValueError):
        binarise_top_half(maps[0])  # not a batch
    with pytest.raises(ValueError, match="protocol must be one of reference, exact-k"):
        binarise_top_half(maps, "sorted")


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


def test_consensus_iou_by_hand():
    # A 4×4 frame: the consensus map has 1 on two pixels and 0.5 on two; the map keeps its top half (8 pixels
    # under exact-k) = the first two rows, covering one 1 and one 0.5 pixel.
    gt = np.zeros((1, 4, 4))
    gt[0, 0, 0], gt[0, 3, 3], gt[0, 1, 1], gt[0, 2, 2] = 1, 1, 0.5, 0.5
    maps = np.arange(16, dtype=np.float32)[::-1].reshape(1, 4, 4).copy()
    got = metrics.per_instance(maps, gt, protocol="exact-k")
    # sum(bin·gt) = 1.5; sum(gt) = 3; bin outside the region: 8 − 2 = 6 → 1.5 / 9.
    assert got["iou"][0] == 1.5 / 9 and got["gt_area"][0] == 4
    with pytest.raises(ValueError, match="only 0, 0.5 and 1"):
        metrics.per_instance(maps, gt * 0.3)


# --- aggregation --------------------------------------------------------------------------------------------


def test_success_curve_and_auc_by_hand():
    curve = success_curve([0.0, 0.5, 1.0], EXACT_K.thresholds)
    # threshold 0: all three; 0.05 … 0.5 (10 points): two; 0.55 … 1.0 (10 points): one.
    np.testing.assert_allclose(curve, [1.0] + [2 / 3] * 10 + [1 / 3] * 10, rtol=1e-15)
    # Trapezoids: (1 + 2/3)/2·0.05 + 9·(2/3)·0.05 + (2/3 + 1/3)/2·0.05 + 9·(1/3)·0.05 = 31/60
    assert auc(curve, EXACT_K.thresholds) == pytest.approx(31 / 60, abs=1e-12)
    assert auc(np.ones(21), REFERENCE.thresholds) == pytest.approx(1.0)
    assert auc(np.zeros(21), REFERENCE.thresholds) == 0.0
    assert auc([0.0, 1.0], [1.0, 0.0]) == 0.5  # a decreasing x, as sklearn allows
    with pytest.raises(ValueError, match="neither increasing nor decreasing"):
        auc([0, 1, 0], [0, 1, 0.5])
    assert list(REFERENCE.thresholds) == [0.05 * i for i in range(21)]
    assert list(EXACT_K.thresholds) == [i / 20 for i in range(21)]


def test_reference_thresholds_are_the_floats_of_0_05_times_i():
    # 0.05 * 3 = 0.15000000000000002: an IoU of exactly 0.15 fails it under the reference, passes under exact-k.
    assert success_curve([0.15], REFERENCE.thresholds)[3] == 0.0
    assert success_curve([0.15], EXACT_K.thresholds)[3] == 1.0
    assert success_curve([0.5], [0.5])[0] == 1.0
    assert success_curve([np.nextafter(0.5, 0)], [0.5])[0] == 0.0
    assert success_curve([], REFERENCE.thresholds).tolist() == [0.0] * 21


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
    for protocol in ("reference", "exact-k"):
        result = score(maps, gt, ["a", "a", "b", "b"], protocol=protocol)
        assert result["ciou"] == 75.0 and result["iiou"] == 50.0, protocol


def test_no_image_ids_no_image_metrics():
    result = score(rows_ramp()[None], box_mask([TOP]), None)
    assert set(result) == {"ciou", "ciou_adaptive", "auc", "auc_adaptive"}


# --- whole-batch scenarios ----------------------------------------------------------------------------------


def two_object_images():
    """Two images with two disjoint objects each: (maps of each object as an oracle, gt masks, image ids)."""
    boxes = [LEFT, RIGHT, TOP, BOTTOM]
    oracle = np.stack([region_map(b) for b in boxes])
    return oracle, box_mask(boxes), ["img1", "img1", "img2", "img2"]


def test_oracle_scores():
    oracle, gt, images = two_object_images()
    exact = score(oracle, gt, images, with_mask_metrics=True, protocol="exact-k")
    assert set(exact) == set(metrics.METRIC_KEYS + metrics.MASK_METRIC_KEYS)
    assert all(value == 100.0 for value in exact.values()), exact
    ref = score(oracle, gt, images, with_mask_metrics=True, decimals=None)
    # Half-frame regions: both cuts keep A - 1 region pixels; IoU (A-1)/A passes every threshold but 1.0.
    a = HALF
    assert ref["ciou"] == ref["iiou"] == ref["ciou_adaptive"] == 100.0
    assert ref["auc"] == pytest.approx(100 * (1 - 0.05 / 2), abs=1e-9)
    assert ref["miou"] == pytest.approx(100 * (a - 1) / (a + 1e-7), abs=1e-9)
    f = 1.3 * 1 * ((a - 1) / a) / (0.3 + (a - 1) / a)
    assert ref["fscore"] == pytest.approx(100 * f, abs=1e-9)


def test_anti_oracle_other_objects_mask_fails_every_image():
    oracle, gt, images = two_object_images()
    swapped = oracle[[1, 0, 3, 2]]  # each instance gets the OTHER object of its image
    for protocol in ("reference", "exact-k"):
        result = score(swapped, gt, images, with_mask_metrics=True, protocol=protocol)
        assert result["ciou"] == 0.0 and result["iiou"] == 0.0 and result["miou"] == 0.0
        assert result["ciou_adaptive"] == 0.0 and result["iiou_adaptive"] == 0.0


def test_model_ignoring_sound_gets_half_the_instances_and_no_image():
    oracle, gt, images = two_object_images()
    ignoring = oracle[[0, 0, 3, 3]]  # the same map for both sounds of an image
    result = score(ignoring, gt, images, with_mask_metrics=True, protocol="exact-k")
    assert result["ciou"] == 50.0 and result["ciou_adaptive"] == 50.0
    assert result["iiou"] == 0.0 and result["iiou_adaptive"] == 0.0
    assert result["miou"] == 50.0
    # Per instance the curve is 1 at threshold 0 and 1/2 after; per image 1 at 0 and 0 after.
    assert result["auc"] == pytest.approx(100 * (0.05 * 0.75 + 0.95 * 0.5), abs=1e-4)
    assert result["iauc"] == pytest.approx(100 * 0.05 / 2, abs=1e-4)


def test_dtypes_score_alike():
    # Integer maps are scored on their exact values; a float32 map scores the same as the same values in float64.
    maps = np.random.default_rng(4).integers(0, 1000, (4, S, S))
    gt = box_mask([LEFT, TOP, [10, 10, 50, 90], [0, 0, 224, 224]])
    expected = score(maps.astype(np.float64), gt, None, decimals=None)
    assert score(maps, gt, None, decimals=None) == expected
    assert score(maps.astype(np.float32), gt, None, decimals=None) == expected


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
    # An empty region is no error: the reference scores it as a failure (IoU 0 at both cuts).
    empty = score(rows_ramp()[None], np.zeros((1, S, S), dtype=bool), None, decimals=None)
    assert empty["ciou"] == 0.0 and empty["ciou_adaptive"] == 0.0
    assert empty["auc"] == pytest.approx(2.5)  # only the threshold 0 succeeds: 0.05 · (1 + 0) / 2


# --- exact-k: vectorised against a per-sample loop ----------------------------------------------------------


def loop_score(maps, gt_masks, image_ids, with_mask_metrics):
    """The exact-k metrics one sample at a time, straight from the definitions."""
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
def test_exact_k_score_equals_per_sample_loop(with_mask_metrics):
    maps, gt, images = random_batch(60, seed=7)
    expected, per = loop_score(maps, gt, images, with_mask_metrics)
    assert score(maps, gt, images, with_mask_metrics=with_mask_metrics, protocol="exact-k") == expected
    for chunk, workers in [(16, 2), (7, 1), (1000, None)]:  # several chunks (the last partial), threads or not
        got = metrics.per_instance(maps, gt, protocol="exact-k", chunk=chunk, workers=workers)
        for key, values in per.items():
            assert np.array_equal(got[key], np.array(values)), (key, chunk, workers)
    # The score is not trivially 0 or 100 on this data: the comparison exercises both outcomes.
    assert 0 < expected["auc"] < 100 and 0 < expected["auc_adaptive"] < 100


def test_chunks_and_threads_do_not_change_the_reference_scores():
    maps, gt, _ = random_batch(40, seed=13)
    first = metrics.per_instance(maps, gt, chunk=16, workers=1)
    for chunk, workers in [(3, 2), (40, 4)]:
        got = metrics.per_instance(maps, gt, chunk=chunk, workers=workers)
        assert all(np.array_equal(got[k], first[k]) for k in first), (chunk, workers)
