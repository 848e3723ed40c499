"""The ACL trainer through the engine on the synthetic colour-disc / tone work directory (with a captions manifest):
the loss falls, the caption term acts only through items with a usable phrase, 2 gloo ranks give the weights of one
process, and a resumed run the weights of an uninterrupted one."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
import torch
import yaml

from is4.config import ACLConfig, TrainConfig
from is4.trainers import engine, synthetic
from is4.trainers.torchrun import torchrun_command
from tests.support import TinyModels

N_CLIPS = 48


def make_work(root, tiny_models: TinyModels, usable: bool = True, n_clips: int = N_CLIPS):
    ids = synthetic.write_workdir(root, n_clips, size=64, seconds=1.0)
    synthetic.write_captions(root, ids, all_flagged=not usable)
    return tiny_models.install(root, "clipseg", "beats")  # in place before two ranks could both build them


@pytest.fixture(scope="module")
def work(tmp_path_factory, tiny_models: TinyModels):
    return make_work(tmp_path_factory.mktemp("acl-train"), tiny_models)


def acl_cfg(**overrides) -> ACLConfig:
    return ACLConfig(**{**synthetic.TINY_ACL, "caption_loss": True, **overrides})


def train_cfg(acl: ACLConfig, **overrides) -> TrainConfig:
    base = {
        "method": "acl",
        "epochs": 2,
        "batch_size": 8,
        "max_steps_per_epoch": 2,
        "num_workers": 0,
        "device": "cpu",
        "cpu_threads": 1,  # tiny models: more threads only spin on a shared machine
        "lr": 1e-3,
        "weight_decay": 1e-4,
        "acl": acl,
    }
    return TrainConfig(**{**base, **overrides})


def history(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def weights(run) -> dict[str, torch.Tensor]:
    state = engine.load_checkpoint(run / "checkpoints" / "last.pt")["model"]
    assert set(state) == {"audio_proj", "masker_i"}  # ACL checkpoints keep only the trainable parts
    return {f"{part}.{k}": v for part, sub in state.items() for k, v in sub.items()}


def test_loss_falls_and_caption_masked_count_is_logged(work, tmp_path):
    cfg = train_cfg(acl_cfg(), epochs=3, max_steps_per_epoch=3, batch_size=8, lr=1e-2)
    summary = engine.train(cfg, work, seed=0, run_dir=tmp_path / "run", progress=False)
    records = history(tmp_path / "run")
    assert summary["steps_per_epoch"] == 3 and len(records) == 3
    first, last = records[0], records[-1]
    assert last["caption"] < 0.8 * first["caption"]  # the audio tokens learn the colour phrases' text embeddings
    assert last["loss"] < first["loss"]
    # 8 null (i % 6 == 5) and 7 flagged (i % 7 == 3) clips, one of them both: 14 of 48 are masked
    masked = sum(1 for i in range(N_CLIPS) if i % 6 == 5 or i % 7 == 3)
    assert masked == 14 and 0 < first["caption_masked"] < 8


def test_caption_term_trains_only_through_items_with_phrases(work, tmp_path_factory, tiny_models: TinyModels):
    """With no usable phrase, `caption_loss: true` trains exactly like `caption_loss: false`; with phrases it does
    not."""
    unusable = make_work(tmp_path_factory.mktemp("acl-flagged"), tiny_models, usable=False, n_clips=16)
    runs = {}
    for name, root, caption in (("off", unusable, False), ("flagged", unusable, True), ("on", work, True)):
        run = tmp_path_factory.mktemp(f"run-{name}")
        engine.train(train_cfg(acl_cfg(caption_loss=caption), epochs=1), root, seed=0, run_dir=run, progress=False)
        runs[name] = weights(run)
    for key, value in runs["off"].items():
        assert torch.equal(value, runs["flagged"][key]), key
    assert not torch.equal(runs["on"]["audio_proj.fc2.weight"], runs["off"]["audio_proj.fc2.weight"])


def test_two_gloo_ranks_match_one_process_and_resume_matches_straight(work, tmp_path):
    """Global batch 8 as 2 ranks x 4 (through the DDP wrapper, gathered negatives) gives one process's weights; a run
    stopped after epoch 1 and resumed gives the uninterrupted run's weights bit for bit."""
    acl = acl_cfg(fga_dropout=0.0)  # dropout masks are drawn per process; the mask noise is keyed by clip ids
    cfg = train_cfg(acl)
    engine.train(cfg, work, seed=0, run_dir=tmp_path / "one", progress=False)
    config = {"workdir": str(work), "seed": 0, "train": cfg.model_dump(mode="json")}
    (tmp_path / "ddp.yaml").write_text(yaml.safe_dump(config))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        torchrun_command(tmp_path / "ddp.yaml", 2), env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    one, two = weights(tmp_path / "one"), weights(engine.default_run_dir(work, cfg, 0))
    assert one["masker_i.w"].item() != acl.mask_init_w  # it trained
    for key, value in one.items():  # Adam turns float-summation noise of near-zero gradients into ~1e-5 steps
        assert torch.allclose(value, two[key], atol=0.2 * cfg.lr, rtol=0), key
    for a, b in zip(history(tmp_path / "one"), history(engine.default_run_dir(work, cfg, 0)), strict=True):
        for term in ("loss", "acl_i", "acl_f", "area_reg", "caption", "caption_masked"):
            assert a[term] == pytest.approx(b[term], rel=1e-4), term  # a mask pixel may flip at 0.5

    engine.train(cfg.model_copy(update={"epochs": 1}), work, seed=0, run_dir=tmp_path / "cut", progress=False)
    engine.train(cfg, work, seed=0, run_dir=tmp_path / "cut", resume=True, progress=False)
    resumed = weights(tmp_path / "cut")
    for key, value in one.items():
        assert torch.equal(value, resumed[key]), (key, (value - resumed[key]).abs().max().item())
