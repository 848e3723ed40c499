"""The harness on files shaped like the authors' `metadata/` (kaistmm/SSLalignment), against their evaluation loop.

The files here are small ones written for the test, reproducing each quirk of the real ones (the repository states
no licence, so nothing is copied): VGG-SS boxes that vanish when clipped, `[0, 0, 0, 0]` boxes, black masks, masks
that are not 224×224, several instances per image, id lists in the authors' forms, the Flickr XML layout.

`authors_scores` is a per-sample loop written from the public code it mirrors, with torch doing the resizing:
SSLalignment test.py `validate()` (float32 `F.interpolate(bilinear, align_corners=True)`, `utils.normalize_img`,
`np.sort(pred.flatten())[int(H*W*0.5)]`, the `gt_nums == 0` fallback to `H*W // 2`, the short name
`'_'.join(name.split('_')[:-1])`), `utils.Evaluator_iiou` (`cal_CIOU`, `finalize_cIoU`, `finalize_AUC`,
`finalize_IAUC`), `utils.Evaluator_miou` as of commit f2aab53^ (`evaluate_batch` with its `int(B / 2)` fallback,
`mask_iou` per batch of 64 with the no-object rule, `Eval_Fmeasure` over 255 thresholds, `finalize`), and
datasets_lvs.py (`load_all_bboxes`, `bbox2gtmap`, `vgg_filename`, the mask read `Image.open(f).resize((224, 224))`
then `>= 128`).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from is4.pipeline.evaluation import evaluate as ev
from is4.pipeline.evaluation import metrics
from is4.pipeline.evaluation.formats import formats_table, load_ground_truth

S = 224
TOL_PP = 1e-9


# --- the authors' loop, from their code ---------------------------------------------------------------------


def normalize_img(value):
    vmin, vmax = value.min(), value.max()
    if not (vmax - vmin) == 0:
        value = (value - vmin) / (vmax - vmin)
    return value


def cal_ciou(infer, gtmap, thres):
    infer_map = np.zeros((224, 224))
    infer_map[infer > thres] = 1
    return np.sum(infer_map * gtmap) / (np.sum(gtmap) + np.sum(infer_map * (gtmap == 0)))


def sk_auc(x, y):
    return sum((x[i] - x[i - 1]) * (y[i] + y[i - 1]) / 2 for i in range(1, len(x)))


def box_metrics(small_maps, gt_maps, names):
    """validate() + Evaluator_iiou: per instance, then finalize_cIoU / finalize_AUC / finalize_IAUC."""
    heat = F.interpolate(torch.from_numpy(small_maps)[:, None], size=(224, 224), mode="bilinear", align_corners=True)
    heat = heat.numpy()
    ciou, ciou_adap, groups, groups_adap = [], [], {}, {}
    for i, gt_map in enumerate(gt_maps):
        pred = normalize_img(heat[i, 0])
        thr = np.sort(pred.flatten())[int(pred.shape[0] * pred.shape[1] * 0.5)]
        ciou.append(cal_ciou(pred, gt_map, thr))
        gt_nums = (gt_map != 0).sum()
        if int(gt_nums) == 0:
            gt_nums = int(pred.shape[0] * pred.shape[1]) // 2
        thr = np.sort(pred.flatten())[int(pred.shape[0] * pred.shape[1]) - int(gt_nums)]
        ciou_adap.append(cal_ciou(pred, gt_map, thr))
        short = "_".join(names[i].split("/")[-1].replace(".jpg", "").split("_")[:-1])
        groups.setdefault(short, []).append(ciou[-1])
        groups_adap.setdefault(short, []).append(ciou_adap[-1])
    thr = [0.05 * i for i in range(21)]
    out = {}
    for key, values, by_image in (("", ciou, groups), ("_adaptive", ciou_adap, groups_adap)):
        out["ciou" + key] = np.sum(np.array(values) >= 0.5) / len(values) * 100
        out["auc" + key] = sk_auc(thr, [np.sum(np.array(values) >= t) / len(values) for t in thr]) * 100
        out["iiou" + key] = np.mean([np.min(np.array(v) >= 0.5) for v in by_image.values()]) * 100
        curve = [np.mean([np.min(np.array(v) >= t) for v in by_image.values()]) for t in thr]
        out["iauc" + key] = sk_auc(thr, curve) * 100
    return out


def mask_metrics(small_maps, gt_maps, adaptive: bool, batch: int = 64):
    """validate()'s `evaluate_batch` calls on the interpolated (not normalised) maps, Evaluator_miou f2aab53^."""
    miou_list, f_list = [], []
    thlist = torch.linspace(0, 1 - 1e-10, 255).numpy()
    for start in range(0, len(gt_maps), batch):
        pred = F.interpolate(
            torch.from_numpy(small_maps[start : start + batch])[:, None],
            size=(224, 224),
            mode="bilinear",
            align_corners=True,
        )
        target = torch.from_numpy(np.stack(gt_maps[start : start + batch]))
        thrs = []
        for j in range(pred.size(0)):
            gt_nums = target[j].sum()
            if gt_nums == 0:
                gt_nums = int(pred.shape[0] * pred.shape[1]) / 2
            flat = np.sort(pred[j].numpy().flatten())
            thrs.append(flat[int(224 * 224) - int(gt_nums)] if adaptive else flat[int(224 * 224 / 2)])
        preds, targets = pred.squeeze(1), target
        miou = 0.0
        for i in range(preds.size(0)):
            p = (preds[i].unsqueeze(0) > float(thrs[i])).int()
            t = targets[i].unsqueeze(0).int()
            inter, union = (p * t).sum(2).sum(1), torch.max(p, t).sum(2).sum(1)
            if t.sum() == 0:
                inter, union = ((1 - t) * (1 - p)).sum(2).sum(1), torch.tensor([224 * 224])
            miou += float(torch.sum(inter / (union + 1e-7)))
        miou_list.append(miou / preds.size(0))
        for i in range(preds.size(0)):
            if targets[i].sum() == 0:
                continue
            y_pred = (preds[i] > float(thrs[i])).float().numpy().ravel()
            y = targets[i].float().numpy().ravel()
            # _eval_pr's loop over the 255 thresholds: `y_pred >= t` is all ones at t = 0 and y_pred for 0 < t < 1
            distinct = np.stack([np.ones_like(y_pred), y_pred])
            which = (thlist > 0).astype(int)
            tp, n_pred = (distinct @ y)[which], distinct.sum(axis=1)[which]
            prec, rec = tp / (n_pred + 1e-20), tp / (y.sum() + 1e-20)
            with np.errstate(invalid="ignore"):
                f = (1 + 0.3) * prec * rec / (0.3 * prec + rec)
            f[f != f] = 0
            f_list.append(f)
    return np.sum(miou_list) / len(miou_list) * 100, np.max(np.mean(f_list, axis=0)) * 100


def bbox2gtmap(bboxes, consensus=False):
    gt_map = np.zeros([224, 224])
    for xmin, ymin, xmax, ymax in bboxes:
        temp = np.zeros([224, 224])
        temp[ymin:ymax, xmin:xmax] = 1
        gt_map += temp
    if consensus:
        gt_map = gt_map / 2
        gt_map[gt_map > 1] = 1
    else:
        gt_map[gt_map > 0] = 1
    return gt_map


# --- files shaped like the authors' ---------------------------------------------------------------------------


def small_maps(n: int, seed: int, size=(14, 14)) -> np.ndarray:
    """float32 maps at a model's resolution, with ties (a rounded share) and a wide range, as similarity maps."""
    rng = np.random.default_rng(seed)
    maps = (rng.standard_normal((n, *size)) * 30).astype(np.float32)
    maps[::3] = np.round(maps[::3])
    return maps


def write_entries(path, names, boxes_or_masks):
    entries = [
        {"image": f"/data/vpo/{name}.jpg", "audio": f"/data/vpo/{name}.wav", "gt_box": gt}
        for name, gt in zip(names, boxes_or_masks)
    ]
    path.write_text(json.dumps(entries))


def assert_close(ours: dict, theirs: dict, tol: float = TOL_PP):
    for key, value in theirs.items():
        assert ours[key] == pytest.approx(value, abs=tol), key


def test_vpo_ms_boxes_with_empty_boxes_and_several_instances_per_image(tmp_path):
    rng = np.random.default_rng(3)
    names, boxes = [], []
    for image in range(40):
        for part in ("dog", "cat", "man")[: 1 + image % 3]:
            names.append(f"v{image:03d}_{image % 5}_{part}")
            x1, y1 = rng.integers(0, 150, 2)
            boxes.append([int(x1), int(y1), int(x1 + rng.integers(5, 74)), int(y1 + rng.integers(5, 74))])
    boxes[4] = boxes[17] = [0, 0, 0, 0]  # as in ms3_box.json / vpo_ms_bbox.json
    write_entries(tmp_path / "vpo_ms_bbox.json", names, boxes)
    maps = small_maps(len(names), 1)
    np.savez(tmp_path / "maps.npz", **dict(zip(names, maps)))

    result = ev.evaluate(tmp_path, tmp_path / "maps.npz")
    gt_maps = [bbox2gtmap([[int(v) for v in b]]) for b in boxes]
    assert result["benchmark"] == "vpo-ms" and result["empty_regions"] == 2 and result["images"] == 40
    assert_close(result, box_metrics(maps, gt_maps, [f"{n}.jpg" for n in names]))

    # The option leaves them out, and says so.
    kept = ev.evaluate(tmp_path, tmp_path / "maps.npz", empty="exclude")
    keep = [i for i in range(len(names)) if i not in (4, 17)]
    assert kept["instances"] == len(names) - 2 and kept["left_out"] == 2 and kept["empty_regions"] == 0
    assert_close(kept, box_metrics(maps[keep], [gt_maps[i] for i in keep], [f"{names[i]}.jpg" for i in keep]))


@pytest.mark.parametrize("adaptive", [False, True])
def test_s4_masks_of_any_size_per_batch_miou(tmp_path, adaptive):
    rng = np.random.default_rng(5)
    (tmp_path / "masks").mkdir()
    names, refs, gt_maps = [], [], []
    for i in range(130):  # three test batches: 64, 64, 2
        name = f"clip{i // 5:03d}_{i % 5 + 1}"
        mask = np.zeros((96, 128), dtype=np.uint8)  # not 224×224: read and resized as the authors read it
        if i not in (7, 70, 129):  # black masks, as in ms3_seg.json
            y, x = rng.integers(0, 60), rng.integers(0, 90)
            mask[y : y + rng.integers(8, 36), x : x + rng.integers(8, 38)] = 255
        Image.fromarray(mask).save(tmp_path / "masks" / f"{name}.png")
        names.append(name)
        refs.append(f"/data/s4/masks/{name}.png")
        gts = np.array(Image.open(tmp_path / "masks" / f"{name}.png").resize((224, 224)))
        gts[gts < 128] = 0
        gts[gts >= 128] = 1
        gt_maps.append(gts)
    write_entries(tmp_path / "s4_seg.json", names, refs)
    maps = small_maps(len(names), 2, size=(7, 7))
    np.savez(tmp_path / "maps.npz", **dict(zip(names, maps)))

    result = ev.evaluate(tmp_path, tmp_path / "maps.npz", gt="mask")
    assert result["benchmark"] == "avsbench-s4" and result["empty_regions"] == 3 and result["miou_mean"] == "batch"
    suffix = "_adaptive" if adaptive else ""
    miou, fscore = mask_metrics(maps, gt_maps, adaptive)
    # their inter / (union + 1e-7) is float32 arithmetic: agreement to float32 rounding
    assert result["miou" + suffix] == pytest.approx(miou, abs=1e-4)
    assert result["fscore" + suffix] == pytest.approx(fscore, abs=1e-4)
    # five frames per clip: the short name groups them (IIoU over clips), as the authors' loop does
    assert result["images"] == 26
    assert_close(result, box_metrics(maps, gt_maps, [f"{n}.jpg" for n in names]))

    # The per-instance mean is a named option, and differs.
    instance = metrics.get_protocol("reference", miou_mean="instance")
    plain = ev.evaluate(tmp_path, tmp_path / "maps.npz", gt="mask", protocol=instance)
    per = ev.score_file(load_ground_truth(tmp_path, "mask"), tmp_path / "maps.npz", instance).per_instance
    assert plain["miou" + suffix] == pytest.approx(np.mean(per["miou" + suffix]) * 100, abs=1e-9)
    assert plain["miou" + suffix] != result["miou" + suffix]


VGGSS = [
    {"file": "gklbB7TYoK4_000030", "class": "dog barking", "bbox": [[0.1, 0.2, 0.6, 0.9]]},
    {"file": "fdFk48aKQ_c_000239", "class": "cat purring", "bbox": [[0.3, 0.1, 0.5, 0.4], [0.6, 0.5, 0.95, 1.2]]},
    {"file": "M1P1xla8rg0_000000", "class": "train horn", "bbox": [[1.02, 0.1, 1.3, 0.5]]},  # vanishes when clipped
    {"file": "1F3_bvIT0ig_000000", "class": "dog barking", "bbox": [[0.0, 0.0, 0.45, 0.5]]},
]


def test_vggss_subsets_from_the_authors_id_lists(tmp_path):
    (tmp_path / "vggss.json").write_text(json.dumps(VGGSS))
    # ours_vggss.txt names clips as `<ytid>_<start ms>_<end ms>`; the heard / unheard csvs as vggss.json does
    (tmp_path / "ours_vggss.txt").write_text(
        "gklbB7TYoK4_30000_40000\nfdFk48aKQ_c_239000_249000\n1F3_bvIT0ig_0_10000\n"
    )
    (tmp_path / "vggss_heard_test.csv").write_text("gklbB7TYoK4_000030\n1F3_bvIT0ig_000000\nnot-a-clip_000001\n")
    ids = [e["file"] for e in VGGSS]
    maps = small_maps(len(ids), 4)
    np.savez(tmp_path / "maps.npz", **dict(zip(ids, maps)))
    gt_maps = {
        e["file"]: bbox2gtmap([(np.clip(np.array(b), 0, 1) * 224).astype(int) for b in e["bbox"]]) for e in VGGSS
    }

    everything = ev.evaluate(tmp_path, tmp_path / "maps.npz")
    assert everything["instances"] == 4 and everything["empty_regions"] == 1 and "iiou" not in everything
    ours = ev.evaluate(tmp_path, tmp_path / "maps.npz", ids="auto")  # the authors' default: ours_vggss.txt
    assert ours["instances"] == 3 and ours["left_out"] == 1 and ours["empty_regions"] == 0
    picked = [0, 1, 3]
    want = box_metrics(maps[picked], [gt_maps[ids[i]] for i in picked], [f"{ids[i]}_x.mp4" for i in picked])
    assert_close(ours, {k: v for k, v in want.items() if not k.startswith("i")})
    with pytest.warns(ev.EvaluationWarning, match="1 of 3 ids are not in vggss.json.*not-a-clip_000001"):
        heard = ev.evaluate(tmp_path, tmp_path / "maps.npz", ids=tmp_path / "vggss_heard_test.csv")
    assert heard["instances"] == 2


def test_flickr_xml_as_the_authors_read_it(tmp_path):
    folder = tmp_path / "Annotations"
    folder.mkdir()
    layouts = {  # the first child of <bbox> is skipped, the next four are x1, y1, x2, y2 whatever their names
        "10000130166": [[12, 30, 140, 200], [20, 40, 150, 230]],
        "2401957951": [[0, 0, 256, 128]],
        "3012435981": [[100, 90, 200, 250], [90, 80, 210, 256], [95, 100, 190, 240]],
    }
    for name, boxes in layouts.items():
        objects = "".join(
            "<object><bbox><label>1</label>" + "".join(f"<v>{v}</v>" for v in box) + "</bbox></object>" for box in boxes
        )
        (folder / f"{name}.xml").write_text(f"<annotation><filename>{name}</filename>{objects}</annotation>")
    (tmp_path / "flickr_test.csv").write_text("10000130166,202\n3012435981,17\n")
    maps = small_maps(3, 6)
    np.savez(tmp_path / "maps.npz", **dict(zip(layouts, maps)))

    result = ev.evaluate(folder, tmp_path / "maps.npz", ids="auto")
    assert result["benchmark"] == "flickr" and result["instances"] == 2 and "iiou" not in result
    gt_maps = [bbox2gtmap([[int(224 * v / 256) for v in b] for b in layouts[n]], consensus=True) for n in layouts]
    want = box_metrics(maps[[0, 2]], [gt_maps[0], gt_maps[2]], ["a.jpg", "b.jpg"])
    assert_close(result, {k: v for k, v in want.items() if not k.startswith("i")})


# --- resizing: torch's and OpenCV's, bit for bit ----------------------------------------------------------------


@pytest.mark.parametrize("shape", [(14, 14), (7, 7), (28, 28), (13, 17), (1, 5), (224, 224)])
def test_resize_equals_torch_bit_for_bit(shape):
    maps = small_maps(64, 9, size=shape)
    want = F.interpolate(torch.from_numpy(maps)[:, None], size=(S, S), mode="bilinear", align_corners=True)[:, 0]
    np.testing.assert_array_equal(metrics.resize_torch(maps), want.numpy())


def cv2_linear_loop(src: np.ndarray, size: int) -> np.ndarray:
    """One pixel at a time, from OpenCV imgproc/src/resize.cpp (`resizeGeneric_`, `HResizeLinear`,
    `VResizeLinear`) for float32 INTER_LINEAR: fx = (float)((dx + 0.5) * scale - 0.5), sx = floor(fx); along x a
    source index outside [0, W - 1) takes that border pixel alone; along y the two rows are clamped, weights kept."""
    h, w = src.shape
    out = np.zeros((size, size), dtype=np.float32)
    rows = np.zeros((h, size), dtype=np.float32)
    for dx in range(size):
        fx = np.float32((dx + 0.5) * (w / size) - 0.5)
        sx = int(np.floor(fx))
        fx = np.float32(fx - np.float32(sx))
        if sx < 0:
            sx, fx = 0, np.float32(0)
        if sx >= w - 1:
            sx, fx = w - 1, np.float32(0)
        a0, a1 = np.float32(1) - fx, fx
        for y in range(h):
            rows[y, dx] = src[y, sx] * a0 + src[y, min(sx + 1, w - 1)] * a1
    for dy in range(size):
        fy = np.float32((dy + 0.5) * (h / size) - 0.5)
        sy = int(np.floor(fy))
        fy = np.float32(fy - np.float32(sy))
        b0, b1 = np.float32(1) - fy, fy
        r0, r1 = rows[min(max(sy, 0), h - 1)], rows[min(max(sy + 1, 0), h - 1)]
        out[dy] = r0 * b0 + r1 * b1
    return out


@pytest.mark.parametrize("shape", [(14, 14), (7, 9)])
def test_cv2_linear_path_equals_a_loop_written_from_resize_cpp(shape):
    for m in small_maps(3, 10, size=shape):
        np.testing.assert_array_equal(metrics.resize_cv2(m), cv2_linear_loop(m, S))


def test_lvs_map_path_scores_one_minus_normalised_negative(tmp_path):
    names = [f"img{i:03d}_{c}" for i in range(12) for c in ("a", "b")]
    rng = np.random.default_rng(11)
    boxes = [[int(x), int(y), int(x) + 60, int(y) + 50] for x, y in rng.integers(0, 160, (len(names), 2))]
    write_entries(tmp_path / "vpo_ms_bbox.json", names, boxes)
    maps = small_maps(len(names), 12)
    np.savez(tmp_path / "maps.npz", **dict(zip(names, maps)))
    result = ev.evaluate(tmp_path, tmp_path / "maps.npz", protocol=metrics.get_protocol("reference", map_path="lvs"))
    assert result["maps"] == "lvs"
    ciou = []
    for m, box in zip(maps, boxes):
        pred = 1 - normalize_img(-cv2_linear_loop(m, S))  # validate_lvs(), its VGG-SS branch
        ciou.append(cal_ciou(pred, bbox2gtmap([box]), np.sort(pred.flatten())[int(S * S / 2)]))
    assert result["ciou"] == pytest.approx(np.mean(np.array(ciou) >= 0.5) * 100, abs=TOL_PP)


def test_readme_lists_the_declared_formats_and_tasks():
    from pathlib import Path

    from is4.pipeline.evaluation.formats import FORMATS
    from is4.pipeline.evaluation.tasks import TASK, tasks_table

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    assert formats_table() in readme and tasks_table() in readme
    for fmt in FORMATS:
        assert set(fmt.tasks) <= set(TASK), fmt.name
        assert {TASK[t].gt for t in fmt.tasks} - {"any"} <= set(fmt.gt), fmt.name


# --- JSA's fixed-threshold protocol --------------------------------------------------------------------------


def test_fixed_threshold_protocol_equals_the_jsa_loop(tmp_path):
    """JSA test_model.py 160–193 and utils.py 22–41: bicubic (align_corners=False) to 224, `normalize_img`,
    `pred >= 0.6`, IoU as cal_CIOU, cIoU = finalize_AP50 (IoU >= 0.5), AUC over 0.05·i."""
    names = [f"img{i:03d}_{c}" for i in range(30) for c in ("a", "b")]
    rng = np.random.default_rng(13)
    boxes = [[int(x), int(y), int(x) + int(w), int(y) + int(w)] for x, y, w in rng.integers(0, 120, (len(names), 3))]
    write_entries(tmp_path / "vpo_ms_bbox.json", names, boxes)
    maps = small_maps(len(names), 14, size=(7, 7))
    np.savez(tmp_path / "maps.npz", **dict(zip(names, maps)))
    heat = F.interpolate(torch.from_numpy(maps)[:, None], size=(S, S), mode="bicubic", align_corners=False).numpy()
    for theta in (0.6, 0.3):
        ious = []
        for m, box in zip(heat[:, 0], boxes):
            pred = normalize_img(m)
            infer = (pred >= theta).astype(np.float64)
            gt = bbox2gtmap([box])
            ious.append(np.sum(infer * gt) / (np.sum(gt) + np.sum(infer * (gt == 0))))
        thr = [0.05 * i for i in range(21)]
        rules = metrics.get_protocol("fixed", threshold=None if theta == 0.6 else theta)
        result = ev.evaluate(tmp_path, tmp_path / "maps.npz", protocol=rules)
        assert result["protocol"] == "fixed" and "ciou_adaptive" not in result
        assert result["ciou"] == pytest.approx(np.mean(np.array(ious) >= 0.5) * 100, abs=TOL_PP)
        want_auc = sk_auc(thr, [np.sum(np.array(ious) >= t) / len(ious) for t in thr]) * 100
        assert result["auc"] == pytest.approx(want_auc, abs=TOL_PP)
    with pytest.raises(ValueError, match="fixed protocol only"):
        metrics.get_protocol("reference", threshold=0.5)
