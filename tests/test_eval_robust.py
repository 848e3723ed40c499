"""The AVSBench-Robust metrics against a re-implementation written from their definitions.

FPR is written from AVSBench-Robust's `calculate_FPR` (github jiali-home/AVSBench-Robust @ 67c0f2e,
training_evaluation/code/AVSegFormer/scripts/s4/test.py 15–40: `torch.sigmoid(pred)`, `(pred > 0.5)`, the
activated pixels over H·W, averaged over samples), on maps resized as the authors' SSL evaluator resizes them
(float32 `F.interpolate(bilinear, align_corners=True)`); G-mIoU / G-F / G-FPR from ACL-SSL §4.1 as the note's §7
states them: the harmonic mean of the positive score and (1 − the negative score), the mean FPR over the
negatives. The per-condition mIoU and F are the segmentation task's (tested against the authors' loop in
tests/test_eval_authors.py), here compared with `is4 eval --task segmentation` on the condition's maps alone.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from typer.testing import CliRunner

from is4.cli import app
from is4.pipeline.evaluation import evaluate as ev
from is4.pipeline.evaluation import robust
from is4.pipeline.evaluation.formats import load_ground_truth

CONDITIONS = ("silence", "noise", "offscreen")


def make_robust(tmp_path, n: int = 40, seed: int = 0):
    """An s4_seg.json of `n` frames (masks of 96×128, one black), and robust.npz: each frame's map under its own
    audio (peaked on the object) and under three negative conditions (logits around −2: few pixels above 0)."""
    rng = np.random.default_rng(seed)
    (tmp_path / "masks").mkdir()
    names, entries, boxes = [], [], []
    for i in range(n):
        name = f"clip{i // 5:03d}_{i % 5 + 1}"
        mask = np.zeros((96, 128), dtype=np.uint8)
        y, x, h, w = int(rng.integers(0, 50)), int(rng.integers(0, 80)), int(rng.integers(10, 40)), 40
        if i != 6:
            mask[y : y + h, x : x + w] = 255
        Image.fromarray(mask).save(tmp_path / "masks" / f"{name}.png")
        names.append(name)
        boxes.append((y, x, h, w))
        entries.append({"image": f"/d/s4/{name}.jpg", "audio": f"/d/s4/{name}.wav", "gt_box": f"/d/masks/{name}.png"})
    (tmp_path / "s4_seg.json").write_text(json.dumps(entries))
    maps = {}
    for i, (name, (y, x, h, w)) in enumerate(zip(names, boxes)):
        peak = np.zeros((12, 16), dtype=np.float32)
        peak[y // 8 : (y + h) // 8 + 1, x // 8 : (x + w) // 8 + 1] = 4
        maps[name] = (rng.standard_normal((12, 16)) + peak).astype(np.float32)
        for c, condition in enumerate(CONDITIONS):
            shift = -2.0 - c
            maps[robust.condition_key(condition, name)] = (
                rng.standard_normal((12, 16)) * 1.5 + shift + (peak if i % 2 else 0)
            ).astype(np.float32)
    # a 224×224 map (not resized) with values at 0 and tiny ones, where float32's sigmoid rounds to 0.5
    tiny = np.array([0.0, 1e-8, 3e-8, 6e-8, 1e-7, 2e-7, -1e-8, 1e-4, -1e-4, 2e-3], dtype=np.float32)
    maps[robust.condition_key("noise", names[2])] = np.resize(tiny, (224, 224))
    np.savez(tmp_path / "robust.npz", **maps)
    return names, maps


def fpr_loop(maps: list[np.ndarray]) -> float:
    shares = []
    for m in maps:
        pred = F.interpolate(torch.from_numpy(m)[None, None], size=(224, 224), mode="bilinear", align_corners=True)
        binary = (torch.sigmoid(pred[0]) > 0.5).int()
        shares.append(float(binary.sum()) / (224 * 224))
    return float(np.mean(shares)) * 100


def harmonic_from_the_note(pos: float, neg: float) -> float:
    p, q = pos / 100, 1 - neg / 100
    return 2 * p * q / (p + q) * 100


def test_robust_equals_the_definitions(tmp_path):
    names, maps = make_robust(tmp_path)
    truth = load_ground_truth(tmp_path, "mask")
    result = robust.robust(truth, tmp_path / "robust.npz")
    assert result["conditions"] == sorted(CONDITIONS) and result["instances"] == len(names)

    np.savez(tmp_path / "positive.npz", **{n: maps[n] for n in names})
    positive = ev.evaluate(tmp_path, tmp_path / "positive.npz", gt="mask")
    assert result["miou"] == positive["miou"] and result["fscore"] == positive["fscore"]
    for condition in CONDITIONS:
        np.savez(tmp_path / f"{condition}.npz", **{n: maps[robust.condition_key(condition, n)] for n in names})
        alone = ev.evaluate(tmp_path, tmp_path / f"{condition}.npz", gt="mask")
        assert result[condition]["miou"] == alone["miou"] and result[condition]["fscore"] == alone["fscore"]
        want = fpr_loop([maps[robust.condition_key(condition, n)] for n in names])
        assert result[condition]["fpr"] == pytest.approx(want, abs=1e-9)
        assert 0 < result[condition]["fpr"] < 50

    neg_miou = float(np.mean([result[c]["miou"] for c in CONDITIONS]))
    neg_f = float(np.mean([result[c]["fscore"] for c in CONDITIONS]))
    assert result["g_miou"] == pytest.approx(harmonic_from_the_note(positive["miou"], neg_miou), abs=1e-9)
    assert result["g_f"] == pytest.approx(harmonic_from_the_note(positive["fscore"], neg_f), abs=1e-9)
    assert result["g_fpr"] == pytest.approx(np.mean([result[c]["fpr"] for c in CONDITIONS]), abs=1e-12)

    # maps already in [0, 1]: the named option counts the pixels above 0.5
    prob = robust.robust(truth, tmp_path / "robust.npz", fpr_rule="probability")
    assert prob["silence"]["fpr"] < result["silence"]["fpr"]


def test_eval_command_robust_and_its_errors(tmp_path):
    names, maps = make_robust(tmp_path, n=20)
    out = tmp_path / "r.json"
    args = ["eval", "--task", "robust", "--release", str(tmp_path)]
    result = CliRunner().invoke(app, [*args, "--predictions", str(tmp_path / "robust.npz"), "--output", str(out)])
    assert result.exit_code == 0, result.output
    assert "noise, offscreen, silence" in result.output and "G-" in result.output
    written = json.loads(out.read_text())
    assert written["task"] == "robust" and written["g_fpr"] == pytest.approx(
        np.mean([written[c]["fpr"] for c in CONDITIONS])
    )

    del maps[robust.condition_key("noise", names[3])]
    np.savez(tmp_path / "short.npz", **maps)
    result = CliRunner().invoke(app, [*args, "--predictions", str(tmp_path / "short.npz")])
    assert result.exit_code == 2 and "(noise): no map for 1 of 20 instances" in result.output
    assert names[3] in result.output and "Traceback" not in result.output
    np.savez(tmp_path / "plain.npz", **{n: maps[n] for n in names})
    result = CliRunner().invoke(app, [*args, "--predictions", str(tmp_path / "plain.npz")])
    assert result.exit_code == 2 and "no maps under negative audio conditions" in result.output
