"""The evaluation harness end to end on a tiny hand-made release (boxes, JPEG masks), the baselines, the outputs
and the `is4 eval` command."""

from __future__ import annotations

import json
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageDraw
from typer.testing import CliRunner

from is4.cli import app
from is4.pipeline.evaluation import evaluate as ev
from is4.pipeline.evaluation import metrics
from is4.pipeline.evaluation.evaluate import EvaluationError, EvaluationWarning
from is4.pipeline.evaluation.formats import load_ground_truth

S = 224
# Two images, two objects each: boxes (x1, y1, x2, y2) and, for the masks, ellipses inscribed in those boxes.
INSTANCES = {
    "img0001_dog": [0, 0, 112, 224],
    "img0001_cat": [112, 0, 224, 224],
    "img0002_bird": [0, 0, 224, 112],
    "img0002_car": [20, 130, 200, 220],
}
IDS = list(INSTANCES)


def ellipse(box) -> np.ndarray:
    img = Image.new("L", (S, S), 0)
    x1, y1, x2, y2 = box
    if x1 < x2 and y1 < y2:  # malformed boxes of the error tests get a blank mask
        ImageDraw.Draw(img).ellipse([x1, y1, x2 - 1, y2 - 1], fill=255)
    return np.asarray(img) > 127


def make_release(root: Path, instances=INSTANCES) -> Path:
    (root / "gt_masks").mkdir(parents=True)
    bbox, seg = [], []
    for iid, box in instances.items():
        entry = {"image": f"visual_frames/{iid}.jpg", "audio": f"audio_wav/{iid}.wav"}
        bbox.append({**entry, "gt_box": box})
        seg.append({**entry, "gt_box": f"gt_masks/{iid}.jpg"})
        Image.fromarray(ellipse(box).astype(np.uint8) * 255).save(root / "gt_masks" / f"{iid}.jpg", quality=95)
    (root / "is4_bbox.json").write_text(json.dumps(bbox))
    (root / "is4_seg.json").write_text(json.dumps(seg))
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
    return {iid: region_map(metrics.box_mask([box])[0]) for iid, box in INSTANCES.items()}


def regions(truth) -> np.ndarray:
    full, half = truth.regions(0, len(truth))
    return (full if half is None else full | half).reshape(-1, S, S)


# --- ground truth -------------------------------------------------------------------------------------------


def test_load_ground_truth_boxes(release):
    truth = load_ground_truth(release, "box")
    assert (truth.benchmark, truth.gt, truth.instance_ids) == ("is4", "box", IDS)
    assert truth.image_ids == ["img0001", "img0001", "img0002", "img0002"]  # the id less its last _category
    masks = regions(truth)
    assert masks.shape == (4, S, S) and masks.dtype == bool
    assert masks.sum(axis=(1, 2)).tolist() == truth.areas().tolist() == [112 * 224, 112 * 224, 224 * 112, 180 * 90]
    assert np.array_equal(masks[3], metrics.box_mask([[20, 130, 200, 220]])[0])
    assert load_ground_truth(release).gt == "box"  # box ground truth unless masks are asked for


def test_load_ground_truth_jpeg_masks(release):
    truth = load_ground_truth(release, "mask")
    assert truth.instance_ids == IDS and truth.image_ids[2] == "img0002" and truth.gt == "mask"
    for mask, box in zip(regions(truth), INSTANCES.values()):
        drawn = ellipse(box)
        assert np.mean(mask == drawn) > 0.995  # JPEG only blurs the outline
        assert mask.sum() == pytest.approx(drawn.sum(), rel=0.02)


def test_ground_truth_errors_name_instances(tmp_path):
    rel = make_release(tmp_path / "b")
    entries = json.loads((rel / "is4_bbox.json").read_text())
    entries[3]["gt_box"] = [50, 10, "40", 30]  # not a number
    (rel / "is4_bbox.json").write_text(json.dumps(entries))
    with pytest.raises(EvaluationError, match=r"img0002_car \[50, 10, '40', 30\]") as err:
        load_ground_truth(rel, "box")
    assert err.value.instances == ["img0002_car"]

    # An empty region (x1 > x2, or nothing inside the frame) is read and counted, as the authors read it.
    outside = dict(INSTANCES, img0001_cat=[300, 0, 310, 20], img0002_car=[50, 10, 40, 30])
    with pytest.warns(EvaluationWarning, match="reach outside"):
        truth = load_ground_truth(make_release(tmp_path / "c", outside), "box")
    assert truth.empty == ["img0001_cat", "img0002_car"] and len(truth) == 4
    with pytest.warns(EvaluationWarning, match="reach outside"):
        kept = load_ground_truth(make_release(tmp_path / "c2", outside), "box", empty="exclude")
    assert kept.instance_ids == ["img0001_dog", "img0002_bird"] and kept.excluded == ["img0001_cat", "img0002_car"]

    rel = make_release(tmp_path / "d")
    Image.new("L", (100, 100), 255).save(rel / "gt_masks" / "img0001_dog.jpg")  # any size is read, resized to 224
    assert regions(load_ground_truth(rel, "mask"))[0].all()
    (rel / "gt_masks" / "img0001_dog.jpg").write_bytes(b"not an image")
    with pytest.raises(EvaluationError, match=r"img0001_dog \(cannot read gt_masks/img0001_dog.jpg"):
        load_ground_truth(rel, "mask")
    (rel / "gt_masks" / "img0001_cat.jpg").unlink()
    with pytest.raises(EvaluationError, match="1 of 4 mask files are not inside .* by name.*img0001_cat.jpg"):
        load_ground_truth(rel, "mask")

    with pytest.raises(EvaluationError, match="gt must be one of box, mask"):
        load_ground_truth(rel, "polygon")
    with pytest.raises(EvaluationError, match="expected box ground truth, but entries hold mask"):
        load_ground_truth(rel / "is4_seg.json", "box")

    rel = make_release(tmp_path / "e")
    entries = json.loads((rel / "is4_bbox.json").read_text())
    (rel / "is4_bbox.json").write_text(json.dumps(entries + entries[:1]))
    with pytest.raises(EvaluationError, match="1 instances are listed twice: img0001_dog"):
        load_ground_truth(rel, "box")
    (rel / "is4_bbox.json").write_text(json.dumps(entries))
    (rel / "visual_frames").mkdir()
    Image.new("RGB", (256, 256)).save(rel / "visual_frames" / "img0001_dog.jpg")
    with pytest.raises(EvaluationError, match="frames are 256×256"):
        load_ground_truth(rel, "box")
    Image.new("RGB", (S, S)).save(rel / "visual_frames" / "img0001_dog.jpg")
    assert load_ground_truth(rel, "box").instance_ids == IDS


# --- evaluate -----------------------------------------------------------------------------------------------


def test_oracle_npz_scores(release, tmp_path):
    path = save(tmp_path / "oracle.npz", box_oracle())
    exact = ev.evaluate(release, path, gt="box", protocol="exact-k")
    assert (exact["benchmark"], exact["protocol"], exact["gt"], exact["instances"], exact["images"]) == (
        "is4",
        "exact-k",
        "box",
        4,
        2,
    )
    assert all(exact[key] == 100.0 for key in metrics.METRIC_KEYS)
    assert "miou" not in exact
    ref = ev.evaluate(release, path)  # the default: the reference protocol
    assert ref["protocol"] == "reference"
    assert ref["ciou"] == ref["iiou"] == ref["ciou_adaptive"] == ref["iiou_adaptive"] == 100.0
    assert ref["auc_adaptive"] == pytest.approx(97.5, abs=1e-9)  # IoU (A - 1) / A fails only the last threshold, 1.0


def test_model_ignoring_sound_end_to_end(release, tmp_path):
    oracle = box_oracle()
    swapped = {
        "img0001_dog": oracle["img0001_cat"],
        "img0001_cat": oracle["img0001_dog"],
        "img0002_bird": oracle["img0002_car"],
        "img0002_car": oracle["img0002_bird"],
    }
    result = ev.evaluate(release, save(tmp_path / "swapped.npz", swapped))
    assert result["ciou"] == 0.0 and result["iiou"] == 0.0
    # One map per image whatever the sound: it finds one of the two objects.
    same = {
        "img0001_dog": oracle["img0001_dog"],
        "img0001_cat": oracle["img0001_dog"],
        "img0002_bird": oracle["img0002_car"],
        "img0002_car": oracle["img0002_car"],
    }
    result = ev.evaluate(release, save(tmp_path / "same.npz", same))
    assert result["ciou"] == 50.0 and result["ciou_adaptive"] == 50.0
    assert result["iiou"] == 0.0 and result["iiou_adaptive"] == 0.0


def test_low_resolution_predictions_are_resized(release, tmp_path):
    small = np.zeros((8, 8), dtype=np.float32)
    small[:, :4] = 1.0  # left half: the dog's box
    maps = {iid: np.random.default_rng(i).random((112, 112)) for i, iid in enumerate(IDS)}
    maps["img0001_dog"] = small
    path = save(tmp_path / "small.npz", maps)
    truth = load_ground_truth(release)
    for protocol, align in (("reference", True), ("exact-k", False)):
        scored = ev.score_file(truth, path, protocol)
        resized = metrics.resize_bilinear(small, align_corners=align)
        expected = metrics.per_instance(resized[None], regions(truth)[:1], protocol=protocol)
        assert scored.per_instance["iou"][0] == expected["iou"][0], protocol
    # align_corners=True: the step spreads over columns 96…127, the top half is columns 0…111 minus the cut's ties.
    assert 0.9 < ev.score_file(truth, path).per_instance["iou"][0] < 1.0


def test_errors_name_the_instances(release, tmp_path):
    good = box_oracle()

    missing = {k: v for k, v in good.items() if k != "img0002_bird"}
    with pytest.raises(EvaluationError, match="no map for 1 of 4 instances: img0002_bird") as err:
        ev.evaluate(release, save(tmp_path / "missing.npz", missing))
    assert err.value.instances == ["img0002_bird"]

    cases = {
        "not 2-D": {"img0001_cat": np.zeros((1, S, S), dtype=np.float32)},
        "NaN/inf": {"img0002_car": np.where(good["img0002_car"] > 1.2, np.nan, good["img0002_car"])},
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
    both = dict(good, img0001_dog=np.full((S, S), np.nan), img0001_cat=np.zeros(S))
    with pytest.raises(EvaluationError, match="NaN/inf.*img0001_dog.*not 2-D: img0001_cat"):
        ev.evaluate(release, save(tmp_path / "both.npz", both))


def test_constant_maps_are_scored_with_a_warning(release, tmp_path):
    maps = dict(box_oracle(), img0001_dog=np.full((14, 14), 0.5))
    with pytest.warns(EvaluationWarning, match="1 maps are constant.*img0001_dog"):
        scored = ev.score_file(load_ground_truth(release), save(tmp_path / "constant.npz", maps))
    assert scored.per_instance["iou"][0] == 0.0 and scored.summary["ciou"] == 75.0


def test_many_missing_instances_listed_with_a_count(tmp_path):
    ids = {f"img{i:04d}_dog": [0, 0, 10, 10] for i in range(9)}
    truth = load_ground_truth(make_release(tmp_path / "r", ids))
    with pytest.raises(
        EvaluationError, match=r"no map for 8 of 9 instances: img0001_dog, .*, img0005_dog, … \(3 more\)"
    ):
        ev.score_file(truth, save(tmp_path / "one.npz", {"img0000_dog": np.eye(4)}))


def test_extra_maps_warn_and_are_ignored(release, tmp_path):
    maps = dict(box_oracle(), other_instance=np.eye(4))
    with pytest.warns(EvaluationWarning, match="ignoring 1 maps.*other_instance"):
        result = ev.evaluate(release, save(tmp_path / "extra.npz", maps))
    assert result["ciou"] == 100.0


def test_compressed_and_stored_archives_score_alike(release, tmp_path):
    maps = {iid: np.random.default_rng(i).random((S, S)).astype(np.float32) for i, iid in enumerate(IDS)}
    maps["img0002_car"] = np.asfortranarray(maps["img0002_car"])
    stored = ev.evaluate(release, save(tmp_path / "stored.npz", maps))
    np.savez_compressed(tmp_path / "compressed.npz", **maps)
    assert ev.evaluate(release, tmp_path / "compressed.npz") == stored


def test_mixed_dtypes_in_one_archive(release, tmp_path):
    # float32, float64, integer and bool maps in one archive: each is scored on its exact values (a chunk holding a
    # float64 map is scored in float64), so the numbers equal those of the same values all in float64.
    rng = np.random.default_rng(5)
    maps = {
        "img0001_dog": rng.random((S, S)).astype(np.float32),
        "img0001_cat": rng.random((S, S)),
        "img0002_bird": rng.integers(0, 7, (S, S)),
        "img0002_car": rng.random((S, S)) < 0.3,
    }
    mixed = ev.score_file(load_ground_truth(release), save(tmp_path / "mixed.npz", maps))
    wide = ev.score_file(
        load_ground_truth(release), save(tmp_path / "wide.npz", {k: v.astype(np.float64) for k, v in maps.items()})
    )
    assert mixed.summary == wide.summary
    assert all(np.array_equal(mixed.per_instance[k], wide.per_instance[k]) for k in mixed.per_instance)


def test_unreadable_predictions(release, tmp_path):
    np.save(tmp_path / "single.npy", np.eye(4))
    with pytest.raises(EvaluationError, match="expected an .npz"):
        ev.evaluate(release, tmp_path / "single.npy")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(EvaluationError, match="cannot read predictions"):
        ev.evaluate(release, tmp_path / "junk.npz")
    with pytest.raises(EvaluationError, match="cannot read predictions"):
        ev.evaluate(release, tmp_path / "absent.npz")
    # A flipped byte inside a stored map: its CRC-32 no longer matches.
    path = save(tmp_path / "corrupt.npz", box_oracle())
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo("img0002_bird.npy")
    data = bytearray(path.read_bytes())
    data[info.header_offset + 30 + len(info.filename) + 40 + 200] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(EvaluationError, match=r"unreadable: img0002_bird \(.*CRC-32"):
        ev.evaluate(release, path)


# --- baselines, the table and the per-instance file ---------------------------------------------------------


def test_baseline_scores(release):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        scores = ev.baseline_scores(release, protocol="exact-k")
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
    reference = ev.baseline_scores(release)  # the default protocol: an oracle's adaptive AUC stops at 97.5
    assert reference["box"]["oracle"]["ciou"] == 100.0 and reference["box"]["oracle"]["auc_adaptive"] == pytest.approx(
        97.5, abs=1e-9
    )


def test_oracle_maps_for_large_regions():
    # Regions of 1/4, 3/4 and all of the image; the values inside are distinct, 0 outside.
    gt = metrics.box_mask([[0, 0, 112, 112], [0, 0, 224, 168], [0, 0, 224, 224]])
    oracle = ev.oracle_maps(gt)
    assert oracle.dtype == np.float32 and (oracle[~gt] == 0).all() and (oracle[gt] >= 1).all()
    assert len(np.unique(oracle[2])) == S * S
    exact = metrics.per_instance(oracle, gt, protocol="exact-k")
    # exact-k top half: the 1/4 region alone (the 0 background ties at the cut and is dropped), half of the image
    # inside the 3/4 region (IoU 2/3) and inside the whole image (IoU 1/2): all pass 0.5.
    np.testing.assert_allclose(exact["iou"], [1.0, 2 / 3, 0.5], rtol=0, atol=1e-12)
    np.testing.assert_array_equal(exact["iou_adaptive"], [1.0, 1.0, 1.0])
    reference = metrics.per_instance(oracle, gt)
    n = S * S
    np.testing.assert_allclose(reference["iou"], [1.0, (n / 2 - 1) / (0.75 * n), (n / 2 - 1) / n], rtol=1e-15)
    np.testing.assert_allclose(
        reference["iou_adaptive"], [(a - 1) / a for a in (n / 4, 0.75 * n)] + [(n - 1) / n], rtol=1e-15
    )


def test_baseline_sorted_values_are_the_sorted_maps(release):
    truth = load_ground_truth(release, "mask")
    for kind in ("centre", "oracle"):
        source = ev.BaselineMaps(kind, truth, metrics.REFERENCE)
        for iid in IDS:
            np.testing.assert_array_equal(source.sorted_map(iid), np.sort(source.read(iid).ravel()), err_msg=kind)
    assert ev.BaselineMaps("random", truth, metrics.REFERENCE).sorted_map(IDS[0]) is None


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
    single = ev.evaluate(release, save(tmp_path / "oracle.npz", box_oracle()), protocol="exact-k")
    lines = ev.format_table(single).splitlines()
    assert "cIoU" in lines[0] and "IAUC-adap" in lines[0] and "mIoU" not in lines[0]
    assert lines[2].split()[:4] == ["model", "box", "4", "2"] and lines[2].split()[4] == "100.00"

    table = ev.format_table(ev.baseline_scores(release))
    names = [line.split()[0] for line in table.splitlines()[2:]]
    assert names == ["box/random", "box/centre", "box/oracle", "mask/random", "mask/centre", "mask/oracle"]
    assert "F-adap" in table.splitlines()[0]
    assert table.splitlines()[4].rstrip().endswith("-")  # box rows have no mask metrics


def test_per_instance_parquet(release, tmp_path):
    truth = load_ground_truth(release, "mask")
    scored = ev.score_file(truth, save(tmp_path / "oracle.npz", box_oracle()))
    ev.write_per_instance(tmp_path / "a.parquet", scored)
    ev.write_per_instance(tmp_path / "b.parquet", scored)
    assert (tmp_path / "a.parquet").read_bytes() == (tmp_path / "b.parquet").read_bytes()
    table = pd.read_parquet(tmp_path / "a.parquet")
    assert list(table.columns) == [
        "instance_id",
        "image_id",
        "gt_area",
        "iou",
        "iou_adaptive",
        "miou",
        "miou_adaptive",
        "fscore",
        "fscore_adaptive",
    ]
    assert table["instance_id"].tolist() == IDS and table["image_id"].tolist()[:2] == ["img0001", "img0001"]
    np.testing.assert_array_equal(table["iou"], scored.per_instance["iou"])
    assert (table["iou"] > 0).all() and (table["iou"] < 1).all()  # ellipse masks against box oracles
    import pyarrow.parquet as pq

    facts = json.loads(pq.read_schema(tmp_path / "a.parquet").metadata[b"is4.evaluation"])
    assert facts == {"benchmark": "is4", "gt": "mask", "ground_truth": "is4_seg.json", "protocol": "reference"}


# --- the command ---------------------------------------------------------------------------------------------


def test_eval_command_prints_baselines_and_writes_outputs(release, tmp_path):
    predictions = save(tmp_path / "oracle.npz", box_oracle())
    out, per = tmp_path / "scores.json", tmp_path / "per.parquet"
    result = CliRunner().invoke(
        app,
        [
            "eval",
            "--release",
            str(release),
            "--predictions",
            str(predictions),
            "--output",
            str(out),
            "--per-instance",
            str(per),
            "--protocol",
            "exact-k",
        ],
    )
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert "is4 box ground truth" in lines[0] and "protocol exact-k" in lines[0]
    assert [line.split()[0] for line in lines[3:]] == ["model", "random", "centre", "oracle"]
    written = json.loads(out.read_text())
    assert written["ciou"] == 100.0 and written["protocol"] == "exact-k"
    assert set(written["baselines"]) == {"random", "centre", "oracle"}
    assert written["baselines"]["oracle"]["iauc"] == 100.0
    assert pd.read_parquet(per)["instance_id"].tolist() == IDS

    result = CliRunner().invoke(
        app,
        [
            "eval",
            "--release",
            str(release),
            "--predictions",
            str(predictions),
            "--gt",
            "mask",
            "--no-baselines",
            "--output",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    assert [line.split()[0] for line in result.output.splitlines()[3:]] == ["model"]
    written = json.loads(out.read_text())
    assert "baselines" not in written and written["gt"] == "mask" and written["protocol"] == "reference"

    result = CliRunner().invoke(
        app, ["eval", "--release", str(release), "--predictions", str(predictions), "--protocol", "sorted"]
    )
    assert (
        result.exit_code == 2
        and "--protocol / --maps / --miou-mean / --threshold: protocol must be one of reference, exact-k"
        in (result.output)
    )


def test_eval_command_subsets_reports_empty_regions_and_quotes_messages_verbatim(release, tmp_path):
    predictions = save(tmp_path / "oracle.npz", box_oracle())
    entries = json.loads((release / "is4_bbox.json").read_text())
    entries[1]["gt_box"] = [0, 0, 0, 0]  # an empty region, as in the authors' ms3_box.json
    (release / "is4_bbox.json").write_text(json.dumps(entries))
    (tmp_path / "ids.txt").write_text("img0001_dog\nimg0001_cat\nimg0002_car\n")
    out = tmp_path / "scores.json"
    args = ["eval", "--release", str(release), "--predictions", str(predictions), "--output", str(out)]
    result = CliRunner().invoke(app, [*args, "--ids", str(tmp_path / "ids.txt"), "--no-baselines"])
    assert result.exit_code == 0, result.output
    assert "1 empty regions scored as failures; 1 instances left out" in result.output.splitlines()[0]
    written = json.loads(out.read_text())
    assert (written["instances"], written["empty_regions"], written["left_out"]) == (3, 1, 1)
    assert written["ciou_adaptive"] == pytest.approx(200 / 3, abs=1e-12)  # full precision: 66.66666666666667
    assert written["ciou_adaptive"] != round(written["ciou_adaptive"], 4)

    result = CliRunner().invoke(app, [*args, "--empty", "exclude", "--maps", "lvs", "--no-baselines"])
    assert result.exit_code == 0, result.output
    written = json.loads(out.read_text())
    assert (written["instances"], written["left_out"], written["maps"]) == (3, 1, "lvs")

    entries[1]["gt_box"] = [0, 0, None, 10]
    (release / "is4_bbox.json").write_text(json.dumps(entries))
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    assert "boxes are not [x1, y1, x2, y2] (four finite numbers): img0001_cat [0, 0, None, 10]" in result.output
