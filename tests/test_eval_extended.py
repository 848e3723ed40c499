"""The extended protocol (AP, max-F1, LocAcc with negative pairs) against a per-sample re-implementation.

The loop below is written from the note's §5.3 and mirrors, line by line, SLAVC (github stoneMo/SLAVC @ 05b429c):
test.py `validate()` 146–201 (bicubic `align_corners=True` to 224, `min_max_norm` with ±1/τ, the top-quarter
confidence `np.sort(scores.flatten())[-n//4:].mean()`, `--relative_prediction`: `normalize_img`, threshold
`np.sort(pred.flatten())[int(n * pred_size)]`), datasets.py `bbox2gtmap` and the `non-sounding` rows of the
`*_plus_silent.csv`, and utils.py `EvaluatorFull`: `update` (`infer[pred >= pred_thr] = 1`, the weighted IoU),
`calc_precision_recall` (TP / FP / FN), `calc_ap` (the threshold walk with step `len // 200`, the running maximum
of precision, the sum over recall steps), `finalize_stats` (F1 at `sorted(conf)[::len // 10]`,
`Precision-visible@50` at threshold −1000). None of it is imported from the production code.
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from is4.cli import app
from is4.pipeline.evaluation import extended
from is4.pipeline.evaluation.formats import load_ground_truth

TAU = 0.03


def make_extended(tmp_path, n_pos: int = 210, n_neg: int = 230, seed: int = 0):
    """A vggss.json of `n_pos` clips, a vggss_test_plus_silent.csv of `n_neg` negative rows (header, a duplicate
    row, rows with one id for both), and maps.npz (7×7 maps of cos/τ, a few 224×224 ones)."""
    rng = np.random.default_rng(seed)
    ids = [f"{'abcdefghijk'[: 11 - len(str(i))]}{i}_{i % 300:06d}" for i in range(n_pos)]
    entries = []
    for i, clip in enumerate(ids):
        boxes = []
        for _ in range(1 + i % 3):
            x1, y1 = rng.random(2) * 0.3
            w, h = 0.3 + rng.random(2) * 0.5
            boxes.append([float(x1), float(y1), float(x1 + w), float(y1 + h)])
        entries.append({"file": clip, "class": f"c{i % 7}", "bbox": boxes})
    entries[5]["bbox"] = [[1.2, 1.2, 1.5, 1.5]]  # clipped away: an empty region, scored as a failure
    (tmp_path / "vggss.json").write_text(json.dumps(entries))
    negatives = []
    for j in range(n_neg - 1):
        video = ids[j % n_pos]
        audio = video if j % 17 == 0 else ids[(j * 7 + 3) % n_pos]
        if audio == video and j % 17 != 0:
            audio = ids[(j + 1) % n_pos]
        negatives.append((video, audio))
    negatives.append(negatives[4])  # a duplicate row: scored twice, as SLAVC's loader appends it twice
    with open(tmp_path / "vggss_test_plus_silent.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["video", "audio", "label"])
        writer.writerows([(v, a, "non-sounding") for v, a in negatives])
        writer.writerow(["zzz", "yyy", "sounding"])  # not a negative: skipped
    maps = {}
    for i, clip in enumerate(ids):  # two in three peak on the first box: some succeed, some fail
        x1, y1, x2, y2 = (np.clip(np.array(entries[i]["bbox"][0]), 0, 1) * 7).astype(int)
        peak = np.zeros((7, 7), dtype=np.float32)
        peak[y1 : y2 + 1, x1 : x2 + 1] = 20 if i % 3 else 0
        maps[clip] = (rng.standard_normal((7, 7)) * 8 + peak).astype(np.float32)
    for v, a in negatives:
        maps[f"{v}/{a}"] = (rng.standard_normal((7, 7)) * 12 - 2).astype(np.float32)
    maps[ids[3]] = (rng.standard_normal((224, 224)) * 10).astype(np.float32)
    maps[ids[9]] = np.full((7, 7), 5.0, dtype=np.float32)  # constant: every pixel predicted
    np.savez(tmp_path / "maps.npz", **maps)
    return ids, entries, negatives, maps


def slavc_gt_map(bboxes):
    """datasets.py load_all_bboxes (vggss) + bbox2gtmap(format='vggss')."""
    gt_map = np.zeros([224, 224])
    for box in [(np.clip(np.array(b), 0, 1) * 224).astype(int) for b in bboxes]:
        xmin, ymin, xmax, ymax = box
        temp = np.zeros([224, 224])
        temp[ymin:ymax, xmin:xmax] = 1
        gt_map += temp
    gt_map[gt_map > 0] = 1
    return gt_map


def slavc_sample(heatmap, gt_map, relative: bool):
    """test.py validate() for one sample, then EvaluatorFull.update: (confidence, ciou)."""
    heat = torch.nn.functional.interpolate(
        torch.from_numpy(heatmap)[None, None], size=(224, 224), mode="bicubic", align_corners=True
    )
    heat = heat.data.cpu().numpy()[0, 0]
    min_max_norm = lambda x, xmin, xmax: (x - xmin) / (xmax - xmin)  # noqa: E731
    n = heat.size
    scores_av = min_max_norm(heat, -1.0 / TAU, 1.0 / TAU)
    conf_av = np.sort(scores_av.flatten())[-n // 4 :].mean()
    if relative:
        vmin, vmax = scores_av.min(), scores_av.max()
        pred_av = (scores_av - vmin) / (vmax - vmin) if vmax - vmin != 0 else scores_av
        thr_av = np.sort(pred_av.flatten())[int(n * 0.5)]
    else:
        pred_av, thr_av = scores_av, 0.5
    infer = np.zeros((224, 224))
    infer[pred_av >= thr_av] = 1
    with np.errstate(invalid="ignore"):
        ciou = np.sum(infer * gt_map) / (np.sum(gt_map) + np.sum(infer * (gt_map == 0)))
    return conf_av, ciou


def calc_precision_recall(bb_list, ciou_list, confidence_list, confidence_thr, ciou_thr=0.5):
    true_pos, false_pos, false_neg = 0, 0, 0
    for bb, ciou, confidence in zip(bb_list, ciou_list, confidence_list):
        if bb == 0:
            if confidence >= confidence_thr:
                false_pos += 1
        else:
            if confidence >= confidence_thr:
                if ciou >= ciou_thr:
                    true_pos += 1
                else:
                    false_pos += 1
            else:
                false_neg += 1
    precision = 1.0 if true_pos + false_pos == 0 else true_pos / (true_pos + false_pos)
    recall = 1.0 if true_pos + false_neg == 0 else true_pos / (true_pos + false_neg)
    return precision, recall


def slavc_metrics(bb_list, ciou_list, conf_list) -> dict:
    precision, recall, skip_thr = [], [], max(1, len(ciou_list) // 200)
    for thr in np.sort(np.array(conf_list))[:-1][::-skip_thr]:
        p, r = calc_precision_recall(bb_list, ciou_list, conf_list, thr)
        precision.append(p)
        recall.append(r)
    precision_max = [np.max(precision[i:]) for i in range(len(precision))]
    ap = sum([precision_max[i] * (recall[i + 1] - recall[i]) for i in range(len(precision_max) - 1)])
    conf_thr = list(sorted(conf_list))[:: max(1, len(conf_list) // 10)]
    pr = [calc_precision_recall(bb_list, ciou_list, conf_list, thr) for thr in conf_thr]
    f1 = [2 * r * p / (r + p) if r + p > 0 else 0.0 for p, r in pr]
    visible = [i for i, bb in enumerate(bb_list) if bb > 0]
    loc, _ = calc_precision_recall(
        [bb_list[i] for i in visible], [ciou_list[i] for i in visible], [conf_list[i] for i in visible], -1000
    )
    best = int(np.argmax(f1))
    return {
        "ap": ap * 100,
        "max_f1": max(f1) * 100,
        "f1_precision": pr[best][0] * 100,
        "f1_recall": pr[best][1] * 100,
        "loc_acc": loc * 100,
    }


def reference(ids, entries, negatives, maps, relative: bool = True) -> tuple[dict, list, list]:
    bb_list, ciou_list, conf_list = [], [], []
    for clip, entry in zip(ids, entries):
        conf, ciou = slavc_sample(maps[clip], slavc_gt_map(entry["bbox"]), relative)
        bb_list.append(len(entry["bbox"]))
        ciou_list.append(ciou)
        conf_list.append(conf)
    for v, a in negatives:
        conf, ciou = slavc_sample(maps[f"{v}/{a}"], np.zeros([224, 224]), relative)
        bb_list.append(0)
        ciou_list.append(ciou)
        conf_list.append(conf)
    return slavc_metrics(bb_list, ciou_list, conf_list), conf_list, ciou_list


@pytest.mark.parametrize("prediction", ["relative", "fixed"])
def test_extended_equals_slavc_evaluator(tmp_path, prediction):
    ids, entries, negatives, maps = make_extended(tmp_path)
    want, conf, ciou = reference(ids, entries, negatives, maps, relative=prediction == "relative")
    truth = load_ground_truth(tmp_path / "vggss.json")
    pairs = extended.read_negatives(tmp_path / "vggss_test_plus_silent.csv")
    assert pairs == negatives
    samples = extended.score_samples(truth, tmp_path / "maps.npz", pairs, prediction=prediction)
    assert samples.confidence.tolist() == [float(c) for c in conf]  # bit for bit
    n_pos = len(ids)
    assert np.array_equal(samples.iou[:n_pos], np.nan_to_num(np.array(ciou[:n_pos])))
    got = extended.extended(truth, tmp_path / "maps.npz", prediction=prediction)
    assert got["positives"] == n_pos and got["negatives"] == len(negatives)
    for key, value in want.items():
        assert got[key] == value, key  # the same float operations in the same order
    assert 0 < got["ap"] < 100 and 0 < got["loc_acc"] < 100


def test_eval_command_extended_and_its_errors(tmp_path):
    ids, entries, negatives, maps = make_extended(tmp_path, n_pos=40, n_neg=30)
    want, _, _ = reference(ids, entries, negatives, maps)
    out = tmp_path / "ext.json"
    args = ["eval", "--task", "extended", "--release", str(tmp_path / "vggss.json")]
    result = CliRunner().invoke(app, [*args, "--predictions", str(tmp_path / "maps.npz"), "--output", str(out)])
    assert result.exit_code == 0, result.output
    assert "40 positives" in result.output and "30 negative pairs" in result.output and "LocAcc" in result.output
    written = json.loads(out.read_text())
    assert {k: written[k] for k in want} == want
    del maps[f"{negatives[2][0]}/{negatives[2][1]}"]
    np.savez(tmp_path / "short.npz", **maps)
    result = CliRunner().invoke(app, [*args, "--predictions", str(tmp_path / "short.npz")])
    assert result.exit_code == 2 and f"{negatives[2][0]}/{negatives[2][1]}" in result.output
    assert "Traceback" not in result.output
    (tmp_path / "vggss_test_plus_silent.csv").write_text("video,audio,label\n")
    result = CliRunner().invoke(app, [*args, "--predictions", str(tmp_path / "maps.npz")])
    assert result.exit_code == 2 and "non-sounding" in result.output


def test_extended_flickr_consensus_equals_slavc(tmp_path):
    """Flickr: `load_all_bboxes(format='flickr')` (the first child of a <bbox> skipped, `int(224 * v / 256)`) and
    `bbox2gtmap(format='flickr')` (the count map halved, capped at 1): the weighted IoU on 0 / 0.5 / 1 maps."""
    rng = np.random.default_rng(3)
    (tmp_path / "Annotations").mkdir()
    ids, boxes_of, maps = [f"{1000 + i}" for i in range(60)], {}, {}
    for i, clip in enumerate(ids):
        boxes = []
        for _ in range(1 + i % 3):
            x1, y1 = rng.integers(0, 100, 2)
            w, h = rng.integers(80, 156, 2)
            boxes.append([int(x1), int(y1), int(x1 + w), int(y1 + h)])
        boxes_of[clip] = boxes
        body = "".join(
            f"<object><bbox><label>1</label><a>{b[0]}</a><b>{b[1]}</b><c>{b[2]}</c><d>{b[3]}</d></bbox></object>"
            for b in boxes
        )
        (tmp_path / "Annotations" / f"{clip}.xml").write_text(f"<annotation>{body}</annotation>")
        maps[clip] = (rng.standard_normal((7, 7)) * 10 + (8 if i % 2 else 0)).astype(np.float32)
    negatives = [(ids[j], ids[(j + 5) % 60]) for j in range(60)]
    (tmp_path / "flickr_test_plus_silent.csv").write_text(
        "video,audio,label\n" + "".join(f"{v},{a},non-sounding\n" for v, a in negatives)
    )
    for v, a in negatives:
        maps[f"{v}/{a}"] = (rng.standard_normal((7, 7)) * 10).astype(np.float32)
    np.savez(tmp_path / "maps.npz", **maps)

    bb_list, ciou_list, conf_list = [], [], []
    for clip in ids:
        gt_map = np.zeros([224, 224])
        for xmin, ymin, xmax, ymax in [[int(224 * v / 256) for v in b] for b in boxes_of[clip]]:
            temp = np.zeros([224, 224])
            temp[ymin:ymax, xmin:xmax] = 1
            gt_map += temp
        gt_map = gt_map / 2
        gt_map[gt_map > 1] = 1
        conf, ciou = slavc_sample(maps[clip], gt_map, relative=True)
        bb_list.append(len(boxes_of[clip]))
        ciou_list.append(ciou)
        conf_list.append(conf)
    for v, a in negatives:
        conf, ciou = slavc_sample(maps[f"{v}/{a}"], np.zeros([224, 224]), relative=True)
        bb_list.append(0)
        ciou_list.append(ciou)
        conf_list.append(conf)
    want = slavc_metrics(bb_list, ciou_list, conf_list)
    got = extended.extended(load_ground_truth(tmp_path, benchmark="flickr"), tmp_path / "maps.npz")
    assert got["negatives_file"] == "flickr_test_plus_silent.csv" and got["positives"] == 60
    assert any(0 < c < 1 and c != 0.5 for c in ciou_list)  # some IoUs weigh the half-consensus pixels
    assert {k: got[k] for k in want} == want
