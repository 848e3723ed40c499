"""The evaluation harness end to end on a tiny hand-made release (boxes, JPEG masks, instances manifest)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageDraw

from is4.pipeline.evaluation import evaluate as ev
from is4.pipeline.evaluation import metrics
from is4.pipeline.evaluation.evaluate import EvaluationError, EvaluationWarning

S = 224
# Two images, two objects each: boxes (x1, y1, x2, y2) and, for the masks, ellipses inscribed in those boxes.
INSTANCES = {
    "img0001_dog": ("img0001", [0, 0, 112, 224]),
    "img0001_cat": ("img0001", [112, 0, 224, 224]),
    "img0002_bird": ("img0002", [0, 0, 224, 112]),
    "img0002_car": ("img0002", [20, 130, 200, 220]),
}
IDS = list(INSTANCES)


def ellipse(box) -> np.ndarray:
    img = Image.new("L", (S, S), 0)
    x1, y1, x2, y2 = box
    if x1 < x2 and y1 < y2:  # malformed boxes of the error tests get a blank mask
        ImageDraw.Draw(img).ellipse([x1, y1, x2 - 1, y2 - 1], fill=255)
    return np.asarray(img) > 127


def make_release(root: Path, instances=INSTANCES, manifest_ids=None) -> Path:
    (root / "gt_masks").mkdir(parents=True)
    (root / "manifests").mkdir()
    bbox, seg = [], []
    for iid, (_, box) in instances.items():
        entry = {"image": f"visual_frames/{iid}.jpg", "audio": f"audio_wav/{iid}.wav"}
        bbox.append({**entry, "gt_box": box})
        seg.append({**entry, "gt_box": f"gt_masks/{iid}.jpg"})
        Image.fromarray(ellipse(box).astype(np.uint8) * 255).save(root / "gt_masks" / f"{iid}.jpg", quality=95)
    (root / "is4_bbox.json").write_text(json.dumps(bbox))
    (root / "is4_seg.json").write_text(json.dumps(seg))
    ids = list(instances) if manifest_ids is None else manifest_ids
    pd.DataFrame({
        "instance_id": ids,
        "image_id": [instances[i][0] for i in ids],
        "category": [i.split("_")[1] for i in ids],
    }).to_parquet(root / "manifests" / "instances.parquet", index=False)
    return root


@pytest.fixture()
def release(tmp_path) -> Path:
    return make_release(tmp_path / "IS4")


def region_map(mask: np.ndarray) -> np.ndarray:
    """0 outside the region, 1 + a small ramp inside: an oracle map for that region."""
    ramp = np.linspace(0, 0.5, S * S, dtype=np.float32).reshape(S, S)
    return np.where(mask, 1.0 + ramp, 0.0).astype(np.float32)


def save(path: Path, maps: dict) -> Path:
    np.savez(path, **maps)
    return path


def box_oracle() -> dict:
    return {iid: region_map(metrics.box_mask([box])[0]) for iid, (_, box) in INSTANCES.items()}


# --- ground truth -------------------------------------------------------------------------------------------


def test_load_ground_truth_boxes(release):
    ids, images, masks = ev.load_ground_truth(release, "box")
    assert ids == IDS
    assert images == ["img0001", "img0001", "img0002", "img0002"]
    assert masks.shape == (4, S, S) and masks.dtype == bool
    assert masks.sum(axis=(1, 2)).tolist() == [112 * 224, 112 * 224, 224 * 112, 180 * 90]
    assert np.array_equal(masks[3], metrics.box_mask([[20, 130, 200, 220]])[0])


def test_load_ground_truth_jpeg_masks(release):
    ids, images, masks = ev.load_ground_truth(release, "mask")
    assert ids == IDS and images[2] == "img0002"
    for i, (_, box) in enumerate(INSTANCES.values()):
        drawn = ellipse(box)
        assert np.mean(masks[i] == drawn) > 0.995  # JPEG only blurs the outline
        assert masks[i].sum() == pytest.approx(drawn.sum(), rel=0.02)


def test_ground_truth_errors_name_instances(tmp_path):
    rel = make_release(tmp_path / "a", manifest_ids=IDS[:3])
    with pytest.raises(EvaluationError, match="img0002_car") as err:
        ev.load_ground_truth(rel, "box")
    assert err.value.instances == ["img0002_car"]

    bad = dict(INSTANCES, img0002_car=("img0002", [50, 10, 40, 30]))  # x1 > x2
    with pytest.raises(EvaluationError, match=r"img0002_car \[50, 10, 40, 30\]"):
        ev.load_ground_truth(make_release(tmp_path / "b", bad), "box")

    outside = dict(INSTANCES, img0001_cat=("img0001", [300, 0, 310, 20]))  # nothing inside the frame
    with pytest.raises(EvaluationError, match="empty ground-truth region.*img0001_cat"):
        ev.load_ground_truth(make_release(tmp_path / "c", outside), "box")

    rel = make_release(tmp_path / "d")
    Image.new("L", (100, 100), 255).save(rel / "gt_masks" / "img0001_dog.jpg")
    with pytest.raises(EvaluationError, match=r"img0001_dog \(gt_masks/img0001_dog.jpg is 100×100"):
        ev.load_ground_truth(rel, "mask")
    (rel / "gt_masks" / "img0001_cat.jpg").unlink()
    with pytest.raises(EvaluationError, match="2 masks cannot be used.*img0001_cat"):
        ev.load_ground_truth(rel, "mask")

    with pytest.raises(EvaluationError, match="gt must be one of"):
        ev.load_ground_truth(rel, "polygon")

    rel = make_release(tmp_path / "e")
    (rel / "visual_frames").mkdir()
    Image.new("RGB", (256, 256)).save(rel / "visual_frames" / "img0001_dog.jpg")
    with pytest.raises(EvaluationError, match="frames are 256×256"):
        ev.load_ground_truth(rel, "box")
    Image.new("RGB", (S, S)).save(rel / "visual_frames" / "img0001_dog.jpg")
    assert ev.load_ground_truth(rel, "box")[0] == IDS


# --- evaluate -----------------------------------------------------------------------------------------------


def test_oracle_npz_scores_100_on_boxes(release, tmp_path):
    result = ev.evaluate(release, save(tmp_path / "oracle.npz", box_oracle()), gt="box")
    assert result["gt"] == "box" and result["instances"] == 4 and result["images"] == 2
    assert all(result[key] == 100.0 for key in metrics.METRIC_KEYS)
    assert "miou" not in result


def test_model_ignoring_sound_end_to_end(release, tmp_path):
    oracle = box_oracle()
    swapped = {"img0001_dog": oracle["img0001_cat"], "img0001_cat": oracle["img0001_dog"],
               "img0002_bird": oracle["img0002_car"], "img0002_car": oracle["img0002_bird"]}
    result = ev.evaluate(release, save(tmp_path / "swapped.npz", swapped))
    assert result["ciou"] == 0.0 and result["iiou"] == 0.0
    # One map per image whatever the sound: it finds one of the two objects.
    same = {"img0001_dog": oracle["img0001_dog"], "img0001_cat": oracle["img0001_dog"],
            "img0002_bird": oracle["img0002_car"], "img0002_car": oracle["img0002_car"]}
    result = ev.evaluate(release, save(tmp_path / "same.npz", same))
    assert result["ciou"] == 50.0 and result["ciou_adaptive"] == 50.0
    assert result["iiou"] == 0.0 and result["iiou_adaptive"] == 0.0


def test_low_resolution_predictions_are_resized(release, tmp_path):
    small = np.zeros((112, 112), dtype=np.float32)
    small[:, :56] = 1.0  # left half: the dog's box
    maps = {iid: np.random.default_rng(i).random((112, 112)) for i, iid in enumerate(IDS)}
    maps["img0001_dog"] = small
    path = save(tmp_path / "small.npz", maps)
    loaded = ev.load_predictions(path, IDS)
    assert loaded.shape == (4, S, S) and loaded.dtype == np.float32
    np.testing.assert_array_equal(loaded[0], metrics.resize_bilinear(small))
    pred = metrics.binarise_top_fraction(loaded[:1])
    assert metrics.iou(pred, metrics.box_mask([INSTANCES["img0001_dog"][1]]))[0] == 1.0


def test_errors_name_the_instances(release, tmp_path):
    good = box_oracle()

    missing = {k: v for k, v in good.items() if k != "img0002_bird"}
    with pytest.raises(EvaluationError, match="no map for 1 of 4 instances: img0002_bird") as err:
        ev.evaluate(release, save(tmp_path / "missing.npz", missing))
    assert err.value.instances == ["img0002_bird"]

    cases = {
        "not 2-D": {"img0001_cat": np.zeros((1, S, S), dtype=np.float32)},
        "NaN/inf": {"img0002_car": np.where(good["img0002_car"] > 1.2, np.nan, good["img0002_car"])},
        "constant": {"img0001_dog": np.full((14, 14), 0.5)},
        "not real numbers": {"img0002_bird": np.array([["a", "b"], ["c", "d"]])},
    }
    for kind, override in cases.items():
        path = save(tmp_path / f"{kind.split()[0].replace('/', '')}.npz", {**good, **override})
        with pytest.raises(EvaluationError, match=kind) as err:
            ev.evaluate(release, path)
        (iid,) = override
        assert iid in str(err.value) and err.value.instances == [iid], kind

    inf = dict(good, img0001_dog=np.where(good["img0001_dog"] > 0, np.inf, 0.0))
    with pytest.raises(EvaluationError, match=r"NaN/inf values: img0001_dog"):
        ev.evaluate(release, save(tmp_path / "inf.npz", inf))

    # Several problems at once: all are reported.
    both = dict(good, img0001_dog=np.ones((S, S)), img0001_cat=np.zeros(S))
    with pytest.raises(EvaluationError, match="not 2-D: img0001_cat.*constant.*img0001_dog"):
        ev.evaluate(release, save(tmp_path / "both.npz", both))


def test_many_missing_instances_listed_with_a_count():
    ids = [f"img{i:04d}_dog" for i in range(9)]
    with pytest.raises(EvaluationError, match=r"no map for 8 of 9 instances: img0001_dog, .*, img0005_dog, … \(3 more\)"):
        ev.prepare_maps({"img0000_dog": np.eye(4)}, ids)


def test_extra_maps_warn_and_are_ignored(release, tmp_path):
    maps = dict(box_oracle(), other_instance=np.eye(4))
    with pytest.warns(EvaluationWarning, match="ignoring 1 maps.*other_instance"):
        result = ev.evaluate(release, save(tmp_path / "extra.npz", maps))
    assert result["ciou"] == 100.0


def test_unreadable_predictions(release, tmp_path):
    np.save(tmp_path / "single.npy", np.eye(4))
    with pytest.raises(EvaluationError, match="expected an .npz"):
        ev.evaluate(release, tmp_path / "single.npy")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(EvaluationError, match="cannot read predictions"):
        ev.evaluate(release, tmp_path / "junk.npz")
    with pytest.raises(EvaluationError, match="cannot read predictions"):
        ev.evaluate(release, tmp_path / "absent.npz")


# --- baselines and the table --------------------------------------------------------------------------------


def test_baseline_scores(release):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        scores = ev.baseline_scores(release)
    assert list(scores) == ["box", "mask"]
    for gt, by_name in scores.items():
        assert list(by_name) == ["random", "centre", "oracle"]
        oracle = by_name["oracle"]
        keys = metrics.METRIC_KEYS + (metrics.MASK_METRIC_KEYS if gt == "mask" else ())
        assert [k for k in oracle if k in keys] == list(keys)
        assert all(oracle[k] == 100.0 for k in keys), (gt, oracle)
        for name in ("random", "centre"):
            assert all(0.0 <= by_name[name][k] < 100.0 for k in ("ciou", "auc", "iauc")), (gt, name)
    # The centre prior's top half is a disc of half the image: a half-image box overlaps it by
    # at most 1/3 in IoU, so it never reaches 0.5 on the box ground truth.
    assert scores["box"]["centre"]["ciou"] == 0.0


def test_oracle_maps_for_large_regions():
    # Regions of 1/4, 3/4 and all of the image. The smoothed interior is a plateau: without the raster
    # tie-breaker a top-half cut through the 3/4 region would drop the whole plateau and keep nothing.
    boxes = [[0, 0, 112, 112], [0, 0, 224, 168], [0, 0, 224, 224]]
    gt = metrics.box_mask(boxes)
    oracle = ev.oracle_maps(gt)
    assert oracle.dtype == np.float32
    assert (oracle[~gt] == 0).all() and (oracle[gt] > 1).all()
    assert oracle[0, 56, 56] > oracle[0, 0, 56]  # the interior ranks above the outline
    interior = oracle[1, 8:160, 8:216]  # the smoothed plateau (farther than 4σ from the outline): all distinct
    assert len(np.unique(interior)) == interior.size
    ious = metrics.per_instance(oracle, gt)
    # Top half: the 1/4 region alone (the 0 background ties at the cut and is dropped), half of the image
    # inside the 3/4 region (IoU 2/3) and inside the whole image (IoU 1/2): all pass 0.5.
    np.testing.assert_allclose(ious["iou"], [1.0, 2 / 3, 0.5], rtol=0, atol=1e-12)
    np.testing.assert_array_equal(ious["iou_adaptive"], [1.0, 1.0, 1.0])
    result = metrics.score(oracle, gt, ["a", "b", "c"], with_mask_metrics=True)
    assert result["ciou"] == result["iiou"] == result["auc_adaptive"] == result["miou_adaptive"] == 100.0


def test_written_baselines_evaluate_like_baseline_scores(release, tmp_path):
    written = ev.write_baseline_predictions(release, tmp_path / "baselines")
    assert sorted(written) == ["centre", "oracle_box", "oracle_mask", "random"]
    with np.load(written["random"]) as archive:
        assert sorted(archive.files) == sorted(IDS)
        assert archive["img0001_dog"].shape == (ev.RANDOM_GRID, ev.RANDOM_GRID)
    scores = ev.baseline_scores(release)
    for gt in ("box", "mask"):
        assert ev.evaluate(release, written["random"], gt) == scores[gt]["random"]
        assert ev.evaluate(release, written["centre"], gt) == scores[gt]["centre"]
        assert ev.evaluate(release, written[f"oracle_{gt}"], gt) == scores[gt]["oracle"]
    # The random baseline is seeded: the same maps every time.
    again = ev.write_baseline_predictions(release, tmp_path / "again")
    with np.load(written["random"]) as a, np.load(again["random"]) as b:
        assert all(np.array_equal(a[k], b[k]) for k in IDS)


def test_format_table(release, tmp_path):
    single = ev.evaluate(release, save(tmp_path / "oracle.npz", box_oracle()))
    table = ev.format_table(single)
    lines = table.splitlines()
    assert "cIoU" in lines[0] and "IAUC-adap" in lines[0] and "mIoU" not in lines[0]
    assert lines[2].split()[:4] == ["model", "box", "4", "2"] and lines[2].split()[4] == "100.00"

    table = ev.format_table(ev.baseline_scores(release))
    names = [line.split()[0] for line in table.splitlines()[2:]]
    assert names == ["box/random", "box/centre", "box/oracle", "mask/random", "mask/centre", "mask/oracle"]
    assert "F-adap" in table.splitlines()[0]
    assert table.splitlines()[4].rstrip().endswith("-")  # box rows have no mask metrics
