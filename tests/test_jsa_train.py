"""JSA through the engine on the synthetic colour-disc / tone data: 2 gloo ranks under torchrun train like one process
(the false-negative mask on the gathered batch included), a resumed run equals an uninterrupted one bit for bit, the
demo config's `--method jsa` trains, predicts and scores through the CLI, and it learns to localise where a
shuffled-audio control does not."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from is4.cli import app
from is4.config import TrainConfig
from is4.trainers import engine, synthetic

ROOT = Path(__file__).resolve().parents[1]


def _section(**over) -> dict:
    # Group norm: the output does not depend on how the batch is split; fn_k 3 of 8 so the mask has entries.
    jsa = {
        "image_size": 32,
        "width": 8,
        "blocks": [1, 1, 0, 0],
        "strides": [1, 2, 1, 1],
        "norm": "group",
        "dim": 16,
        "iterations": 2,
        "audio_seconds": 0.5,
        "fn_k": 3,
    }
    base = {
        "method": "jsa",
        "epochs": 2,
        "batch_size": 8,
        "max_steps_per_epoch": 3,
        "lr": 1e-3,
        "num_workers": 0,
        "device": "cpu",
        "cpu_threads": 1,
        "jsa": jsa,
    }
    return {**base, **over}


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    w = tmp_path_factory.mktemp("jsa-train")
    synthetic.write_workdir(w, 32, size=32, seconds=1.0)
    return w


def _model(run: Path) -> dict[str, torch.Tensor]:
    return engine.load_checkpoint(run / "checkpoints" / "last.pt")["model"]


def _history(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_two_gloo_ranks_equal_one_process_false_negative_mask_included(work: Path, tmp_path: Path) -> None:
    section = _section()
    engine.train(
        TrainConfig.model_validate(section, strict=False), work, seed=0, run_dir=tmp_path / "one", progress=False
    )
    (tmp_path / "ddp.yaml").write_text(yaml.safe_dump({"seed": 0, "train": section}))
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "is4.cli",
        "train",
        "--config",
        str(tmp_path / "ddp.yaml"),
        "--workdir",
        str(work),
        "--run-dir",
        str(tmp_path / "two"),
    ]
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    one, two = _model(tmp_path / "one"), _model(tmp_path / "two")
    # Tensors that add the same value to both slots, which a softmax over the slots cancels, get float noise as their
    # gradient, and AdamW turns noise into lr-sized steps of either sign: the slot queries' biases, the slot
    # LayerNorm's bias before them, and each decoder's alpha-logit bias (the last output). Everything else is equal
    # to float summation order.
    noise = {k: slice(None) for k in one if k.endswith(("to_q.bias", "norm_slots.bias"))}
    noise |= {k: slice(-1, None) for k in ("img_decoder.mlp.6.bias", "aud_decoder.mlp.6.bias")}
    diffs = {}
    for key in one:
        diff = (one[key].float() - two[key].float()).abs()
        if key in noise:
            assert float(diff[noise[key]].max()) <= 6 * section["lr"], key  # 6 steps
            diff[noise[key]] = 0
        diffs[key] = float(diff.max()) if diff.numel() else 0.0
    print("DDP max |1 process - 2 ranks|:", max(diffs.values()))
    assert max(diffs.values()) < 1e-5, sorted(diffs.items(), key=lambda kv: -kv[1])[:5]
    first = engine.load_checkpoint(tmp_path / "one" / "checkpoints" / "epoch-0.pt")["model"]
    assert any(not torch.equal(first[k], one[k]) for k in one)  # it trained
    for a, b in zip(_history(tmp_path / "one"), _history(tmp_path / "two"), strict=True):
        assert a["fn_masked"] > 0  # the mask excluded pairs, on the 8-item global batch in both runs
        for term in ("loss", "ctr", "match", "div", "recon", "fn_masked"):
            assert a[term] == pytest.approx(b[term], rel=1e-4, abs=1e-6), term
        assert b["replica_max_diff"] == 0.0
    # AdamW with jsa's decoupled weight decay stepped (the method's optimiser)
    ckpt = engine.load_checkpoint(tmp_path / "one" / "checkpoints" / "last.pt")
    assert ckpt["config"]["optimizer"] == "adamw" and ckpt["config"]["weight_decay"] == 0.01


def test_resumed_equals_uninterrupted(work: Path, tmp_path: Path) -> None:
    cfg = TrainConfig.model_validate(_section(jsa={**_section()["jsa"], "norm": "batch"}), strict=False)
    engine.train(cfg, work, seed=4, run_dir=tmp_path / "straight", progress=False)
    engine.train(cfg.model_copy(update={"epochs": 1}), work, seed=4, run_dir=tmp_path / "cut", progress=False)
    engine.train(cfg, work, seed=4, run_dir=tmp_path / "cut", resume=True, progress=False)
    straight, resumed = _model(tmp_path / "straight"), _model(tmp_path / "cut")
    for key, value in straight.items():
        assert torch.equal(value, resumed[key]), key
    assert _history(tmp_path / "straight") == [
        {**h, "seconds": s["seconds"]} for h, s in zip(_history(tmp_path / "cut"), _history(tmp_path / "straight"))
    ]


def test_demo_config_trains_predicts_and_scores_jsa(work: Path, tmp_path: Path) -> None:
    demo = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())
    release = synthetic.write_release(tmp_path / "release", 2)
    train = {**demo["train"], "epochs": 1, "eval": {"release": str(release)}}
    config = tmp_path / "demo-jsa.yaml"
    config.write_text(yaml.safe_dump({"seed": 0, "train": train}))
    runner = CliRunner()
    run = tmp_path / "run"
    args = ["train", "--config", str(config), "--workdir", str(work), "--method", "jsa", "--run-dir", str(run)]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    record = _history(run)[-1]
    assert {"ctr", "match", "div", "recon", "ciou_adaptive", "iiou_adaptive"} <= set(record)
    maps = tmp_path / "maps.npz"
    res = runner.invoke(app, ["predict", "--run", str(run), "--release", str(release), "--out", str(maps)])
    assert res.exit_code == 0, res.output
    size = demo["train"]["jsa"].get("heatmap_size", 224)
    with np.load(maps) as m:
        assert len(m.files) == 4 and {v.shape for v in m.values()} == {(size, size)}
        assert all(float(v.min()) == 0.0 and float(v.max()) == pytest.approx(1.0) for v in m.values())
    res = runner.invoke(
        app, ["eval", "--release", str(release), "--predictions", str(maps), "--output", str(tmp_path / "s.json")]
    )
    assert res.exit_code == 0, res.output
    scores = json.loads((tmp_path / "s.json").read_text())
    assert scores["ciou_adaptive"] == pytest.approx(record["ciou_adaptive"])


def _learn(root: Path, shuffle: bool, release: Path) -> dict:
    """6 epochs x 20 steps of 24 single-disc clips (64 px, 8x8 tokens, 0.5-s audio, 3 iterations) with the code's
    loss scaling (`jsa_official`: MSE means, detached reconstruction target) and no augmentation (colour names the
    tone); scores of the last epoch only (no selection on the test release)."""
    synthetic.write_workdir(root / "work", 480, distractor_p=0.0, shuffle_tones=shuffle)
    jsa = {
        "preset": "jsa_official",
        "augment": "none",
        "image_size": 64,
        "width": 16,
        "blocks": [1, 1, 0, 0],
        "strides": [1, 2, 1, 1],
        "dim": 32,
        "iterations": 3,
        "audio_seconds": 0.5,
        "fn_k": 4,
    }
    section = synthetic.tiny_train_section(
        release, method="jsa", epochs=6, lr=1e-3, jsa=jsa, eval={"release": str(release), "every": 6}
    )
    engine.train(
        TrainConfig.model_validate(section, strict=False), root / "work", seed=0, run_dir=root / "run", progress=False
    )
    return _history(root / "run")[-1]


def test_it_learns_to_localise_and_a_shuffled_control_does_not(tmp_path: Path) -> None:
    from is4.pipeline.evaluation import evaluate as ev
    from is4.pipeline.evaluation.formats import load_ground_truth

    release = synthetic.write_release(tmp_path / "release", 24)
    truth = load_ground_truth(release, "box")
    # IIoU is defined here: 24 images of two discs, each disc an instance with its own tone
    assert truth.image_ids is not None and Counter(truth.image_ids) == {f"img{n:03d}": 2 for n in range(24)}
    centre = ev.score_baselines(truth)["centre"].summary
    keys = ("ciou_adaptive", "auc_adaptive", "iiou_adaptive")
    learned = _learn(tmp_path / "learned", False, release)
    control = _learn(tmp_path / "control", True, release)
    print("learned", {k: learned[k] for k in keys}, "control", {k: control[k] for k in keys}, "centre", centre)
    # Measured (seed 0): learned cIoU 20.8 / AUC 28.0, control 0.0 / 2.8, centre 6.25 / 16.6. IIoU is 0 for all three
    # and no margin on it is asserted: JSA's one cross-modal map, ca (audio query x image keys), is trained only by
    # L_match towards the image target map ia, which does not see the audio, so an audio-blind ca = ia is its
    # optimum; the learned ca puts more mass on the sounding disc's box than on the other disc's for 52 % of the
    # instances (chance 50 %). Distractor frames (distractor_p 0.5), iqr_alpha 1 (ca alone), shared slot weights,
    # 5 iterations, 15 epochs and weight_match x 64 all left IIoU at 0 (docs/architecture.md, JSA method).
    assert learned["auc_adaptive"] >= centre["auc_adaptive"] + 6
    assert learned["ciou_adaptive"] >= centre["ciou_adaptive"] + 8
    assert control["auc_adaptive"] < centre["auc_adaptive"] and control["ciou_adaptive"] <= centre["ciou_adaptive"]
