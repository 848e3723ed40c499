"""The benchmarks' public ground-truth formats, on small files written here: the authors' IS4 release as
distributed, VGG-SS, Flickr-SoundNet, AVSBench S4 / MS3 and VPO-SS / MS, found by name or named by --benchmark."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from is4.cli import app
from is4.pipeline.evaluation import evaluate as ev
from is4.pipeline.evaluation import metrics
from is4.pipeline.evaluation.errors import EvaluationError
from is4.pipeline.evaluation.formats import find_ground_truth, load_ground_truth

S = 224
FOREIGN = "/mnt/data2/IS3/test"  # the authors' machine


def slice_box(box) -> np.ndarray:
    gt = np.zeros((S, S), dtype=bool)
    x1, y1, x2, y2 = box
    gt[int(y1) : int(y2), int(x1) : int(x2)] = True
    return gt


def regions(truth):
    return truth.regions(0, len(truth))


def maps_for(ids, seed=0) -> dict:
    rng = np.random.default_rng(seed)
    return {iid: rng.random((S, S), dtype=np.float32) for iid in ids}


# --- the authors' IS4 -----------------------------------------------------------------------------------------

AUTHORS = {
    "accordion_cello_0_accordion": [10, 20, 120, 200],
    "accordion_cello_0_cello": [100, 5, 224, 224],
    "dog_piano_3_dog": [0, 0, 80, 90],
    "dog_piano_3_piano": [60, 50, 224, 200],
}


def authors_release(root: Path, masks_under: str = "gt_masks") -> Path:
    (root / masks_under).mkdir(parents=True)
    bbox, seg = [], []
    for iid, box in AUTHORS.items():
        entry = {"image": f"{FOREIGN}/visual_frames/{iid}.jpg", "audio": f"{FOREIGN}/audio_wav/{iid}.wav"}
        bbox.append({**entry, "gt_box": box})
        seg.append({**entry, "gt_box": f"{FOREIGN}/gt_masks/{iid}.jpg"})
        Image.fromarray(slice_box(box).astype(np.uint8) * 255).save(root / masks_under / f"{iid}.jpg", quality=100)
    (root / "synthetic3240_bbox.json").write_text(json.dumps(bbox))
    (root / "synthetic3240_seg.json").write_text(json.dumps(seg))
    return root


def test_authors_release_as_distributed(tmp_path):
    root = authors_release(tmp_path / "IS3")
    box = load_ground_truth(root)
    assert (box.benchmark, box.gt, box.source.name) == ("is4", "box", "synthetic3240_bbox.json")
    assert box.instance_ids == list(AUTHORS)
    assert box.image_ids == ["accordion_cello_0", "accordion_cello_0", "dog_piano_3", "dog_piano_3"]
    mask = load_ground_truth(root, "mask")
    full, half = regions(mask)
    assert half is None
    for row, b in zip(full, AUTHORS.values()):
        assert np.mean(row.reshape(S, S) == slice_box(b)) > 0.995
    np.savez(tmp_path / "maps.npz", **maps_for(AUTHORS))
    result = ev.evaluate(root, tmp_path / "maps.npz", "mask")
    assert result["instances"] == 4 and result["images"] == 2 and "fscore" in result
    # The folder extracted one level deeper: files are still found, by parent folder and name.
    nested = authors_release(tmp_path / "outer", masks_under="IS3/gt_masks")
    assert load_ground_truth(nested, "mask").instance_ids == list(AUTHORS)


def test_authors_release_names_missing_files(tmp_path):
    root = authors_release(tmp_path / "IS3")
    (root / "gt_masks" / "dog_piano_3_dog.jpg").unlink()
    with pytest.raises(
        EvaluationError,
        match=rf"1 of 4 mask files are not inside .*IS3 \(looked up by name\): "
        rf"{FOREIGN}/gt_masks/dog_piano_3_dog.jpg",
    ) as err:
        load_ground_truth(root, "mask")
    assert err.value.instances == ["dog_piano_3_dog"]
    (root / "is4_bbox.json").write_text((root / "synthetic3240_bbox.json").read_text())
    with pytest.raises(EvaluationError, match="several ground-truth files.*is4_bbox.json.*synthetic3240_bbox.json"):
        load_ground_truth(root)
    assert load_ground_truth(root / "is4_bbox.json").source.name == "is4_bbox.json"  # the file itself


# --- VGG-SS ---------------------------------------------------------------------------------------------------

VGGSS = [
    {"file": "--PJHxphWEs_000030", "class": "dog barking", "bbox": [[0.1, 0.2, 0.5, 0.9]]},
    {"file": "-0jeONf82dE_000021", "class": "playing cello", "bbox": [[0.0, 0.0, 0.4, 0.5], [0.3, 0.4, 1.2, 1.0]]},
]


def test_vggss_union_of_normalised_boxes(tmp_path):
    (tmp_path / "vggss.json").write_text(json.dumps(VGGSS))
    truth = load_ground_truth(tmp_path)
    assert (truth.benchmark, truth.gt, truth.image_ids) == ("vggss", "box", None)
    assert truth.instance_ids == ["--PJHxphWEs_000030", "-0jeONf82dE_000021"]
    full, half = regions(truth)
    assert half is None
    # (clip(box, 0, 1) * 224).astype(int), then the union
    expected = [slice_box([22, 44, 112, 201]), slice_box([0, 0, 89, 112]) | slice_box([67, 89, 224, 224])]
    for row, want in zip(full, expected):
        np.testing.assert_array_equal(row.reshape(S, S), want)
    maps = maps_for(truth.instance_ids)
    np.savez(tmp_path / "maps.npz", **maps)
    result = ev.evaluate(tmp_path, tmp_path / "maps.npz")
    assert result["benchmark"] == "vggss" and "images" not in result and "iiou" not in result
    stacked = np.stack([maps[i] for i in truth.instance_ids])
    head = ("benchmark", "protocol", "maps", "gt", "instances", "empty_regions", "left_out")
    assert result == {
        **{k: result[k] for k in head},
        **metrics.score(stacked, np.stack(expected), None, decimals=None),
    }

    (tmp_path / "vggss.json").write_text(json.dumps([{"file": "x", "bbox": [[0, 1]]}, VGGSS[0]]))
    with pytest.raises(EvaluationError, match=r"1 entries lack a 'file' and a 'bbox'.*entry 0 \(x\)"):
        load_ground_truth(tmp_path)
    with pytest.raises(EvaluationError, match="vggss has box ground truth only"):
        load_ground_truth(tmp_path / "vggss.json", "mask")


# --- Flickr-SoundNet -----------------------------------------------------------------------------------------


def flickr_xml(boxes) -> str:
    objects = "".join(
        f"<object><bbox><name>1</name><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin><xmax>{b[2]}</xmax>"
        f"<ymax>{b[3]}</ymax></bbox></object>"
        for b in boxes
    )
    return f"<annotation><filename>x.jpg</filename>{objects}</annotation>"


def test_flickr_annotation_consensus(tmp_path):
    (tmp_path / "Annotations").mkdir()
    (tmp_path / "Annotations" / "10000130166.xml").write_text(flickr_xml([[0, 0, 128, 256], [64, 0, 256, 256]]))
    (tmp_path / "Annotations" / "10001045.xml").write_text(flickr_xml([[10, 20, 100, 200]]))
    truth = load_ground_truth(tmp_path)
    assert (truth.benchmark, truth.instance_ids, truth.image_ids) == ("flickr", ["10000130166", "10001045"], None)
    full, half = regions(truth)
    a, b = slice_box([0, 0, 112, 224]), slice_box([56, 0, 224, 224])  # int(224 * v / 256)
    np.testing.assert_array_equal(full[0].reshape(S, S), a & b)  # two annotators agree: 1
    np.testing.assert_array_equal(half[0].reshape(S, S), a ^ b)  # one does: 0.5
    np.testing.assert_array_equal(full[1].reshape(S, S), np.zeros((S, S), bool))  # one box alone is 0.5
    np.testing.assert_array_equal(half[1].reshape(S, S), slice_box([8, 17, 87, 175]))
    # A map on the consensus region: the weighted IoU sum(bin·gt) / (sum(gt) + sum(bin·(gt == 0))).
    consensus = np.stack([(a & b) + 0.5 * (a ^ b), 0.5 * slice_box([8, 17, 87, 175])])
    maps = maps_for(truth.instance_ids, seed=3)
    np.savez(tmp_path / "maps.npz", **maps)
    scored = ev.score_file(truth, tmp_path / "maps.npz")
    expected = metrics.per_instance(np.stack([maps[i] for i in truth.instance_ids]), consensus)
    np.testing.assert_array_equal(scored.per_instance["iou"], expected["iou"])
    # The folder itself, and a broken file named.
    assert load_ground_truth(tmp_path / "Annotations").instance_ids == truth.instance_ids
    (tmp_path / "Annotations" / "broken.xml").write_text("<annotation><bbox><xmin>a</xmin></bbox>")
    with pytest.raises(EvaluationError, match="1 annotation files cannot be read: broken.xml"):
        load_ground_truth(tmp_path)


# --- AVSBench and VPO: the IS4 entry shape ------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, benchmark, gt",
    [
        ("s4_bbox.json", "avsbench-s4", "box"),
        ("avsbench_ms3_seg.json", "avsbench-ms3", "mask"),
        ("vpo_ss_bbox.json", "vpo-ss", "box"),
        ("vpo-ms_seg.json", "vpo-ms", "mask"),
    ],
)
def test_is4_shaped_benchmarks_found_by_name(tmp_path, name, benchmark, gt):
    ids = ["00001_guitar", "00002_dog"]
    boxes = [[10, 10, 100, 150], [50, 0, 224, 120]]
    if gt == "mask":
        (tmp_path / "masks").mkdir()
        for iid, box in zip(ids, boxes):
            Image.fromarray(slice_box(box).astype(np.uint8) * 255).save(tmp_path / "masks" / f"{iid}.png")
    entries = [
        {
            "image": f"/data/{benchmark}/frames/{iid}.jpg",
            "audio": f"/data/{benchmark}/wav/{iid}.wav",
            "gt_box": box if gt == "box" else f"/data/{benchmark}/masks/{iid}.png",
        }
        for iid, box in zip(ids, boxes)
    ]
    (tmp_path / name).write_text(json.dumps(entries))
    assert find_ground_truth(tmp_path)[1:] == (benchmark, gt)
    truth = load_ground_truth(tmp_path, gt)
    assert (truth.benchmark, truth.gt, truth.instance_ids, truth.image_ids) == (benchmark, gt, ids, None)
    np.testing.assert_array_equal(regions(truth)[0].reshape(2, S, S), np.stack([slice_box(b) for b in boxes]))
    np.savez(tmp_path / "maps.npz", **maps_for(ids))
    result = ev.evaluate(tmp_path / name, tmp_path / "maps.npz")
    assert result["benchmark"] == benchmark and ("miou" in result) == (gt == "mask") and "iiou" not in result


def test_benchmark_named_when_the_file_does_not_say(tmp_path):
    entries = [{"image": "frames/a_x.jpg", "audio": "wav/a_x.wav", "gt_box": [0, 0, 50, 50]}]
    (tmp_path / "test_boxes.json").write_text(json.dumps(entries))
    with pytest.raises(EvaluationError, match="does not say which benchmark.*--benchmark"):
        load_ground_truth(tmp_path / "test_boxes.json")
    assert load_ground_truth(tmp_path / "test_boxes.json", benchmark="vpo-ss").benchmark == "vpo-ss"
    (tmp_path / "vggss.json").write_text(json.dumps(VGGSS))
    (tmp_path / "s4_bbox.json").write_text(json.dumps(entries))
    with pytest.raises(EvaluationError, match="several ground-truth files of any benchmark.*s4_bbox.*vggss"):
        load_ground_truth(tmp_path)
    assert load_ground_truth(tmp_path, benchmark="avsbench-s4").benchmark == "avsbench-s4"
    with pytest.raises(EvaluationError, match="no ground truth of flickr found"):
        load_ground_truth(tmp_path, benchmark="flickr")
    with pytest.raises(EvaluationError, match="benchmark must be one of vggss, is4, flickr"):
        load_ground_truth(tmp_path, benchmark="coco")


def test_eval_command_on_vggss(tmp_path):
    (tmp_path / "vggss.json").write_text(json.dumps(VGGSS))
    np.savez(tmp_path / "maps.npz", **maps_for([e["file"] for e in VGGSS]))
    result = CliRunner().invoke(
        app,
        [
            "eval",
            "--release",
            str(tmp_path),
            "--predictions",
            str(tmp_path / "maps.npz"),
            "--benchmark",
            "vggss",
            "--output",
            str(tmp_path / "out.json"),
        ],
    )
    assert result.exit_code == 0, result.output
    header = result.output.splitlines()[1]
    assert "cIoU" in header and "IIoU" not in header
    written = json.loads((tmp_path / "out.json").read_text())
    assert written["benchmark"] == "vggss" and written["baselines"]["oracle"]["ciou"] == 100.0
