"""The neighbours stage: exact top-k (against brute force, ties, chunking), the manifest it writes with the tiny
encoders, resume from cached embeddings, and the trainer reading it for the conc positives."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from is4.config import ModelRef, NeighboursConfig, TrainConfig
from is4.manifests.io import manifest_path, read_manifest, read_provenance
from is4.pipeline import neighbours as nb
from is4.trainers import synthetic
from is4.trainers.data import ClipIndex, load_neighbours
from is4.trainers.engine import train
from is4.trainers.method import TrainError

IMAGE = ModelRef(model_id="tiny-random:clip")
AUDIO = ModelRef(model_id="tiny-random:ast")


def _brute(emb: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    e = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    sims = e @ e.T
    idx, val = [], []
    for i, row in enumerate(sims):
        order = sorted((j for j in range(len(row)) if j != i), key=lambda j: (-row[j], j))[:k]
        idx.append(order)
        val.append(row[order])
    return np.array(idx), np.array(val, dtype=np.float32)


@pytest.mark.parametrize("chunk", [1, 7, 1000])
def test_top_k_is_exact(chunk: int) -> None:
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((40, 8)).astype(np.float32)
    emb[5] = emb[9] = emb[13]  # exact ties: broken by the lower index
    idx, sim = nb.top_k(emb, 6, chunk)
    ref_idx, ref_sim = _brute(emb, 6)
    assert np.array_equal(idx, ref_idx)
    assert np.allclose(sim, ref_sim, atol=1e-6)
    assert list(idx[5][:2]) == [9, 13] and list(idx[9][:2]) == [5, 13]
    full, _ = nb.top_k(emb, 100, chunk)  # k above N - 1: every other row
    assert full.shape == (40, 39) and all(i not in row for i, row in enumerate(full))


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    w = tmp_path_factory.mktemp("neighbours")
    synthetic.write_workdir(w, 30, size=32, seconds=1.0)
    return w


def test_stage_writes_the_manifest_and_resumes(work: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = NeighboursConfig(enabled=True, k=4, batch_size=8)
    summary = nb.run_neighbours(work, cfg, IMAGE, AUDIO, provenance={"stage": "neighbours"})
    assert summary == {"enabled": True, "clips": 30, "k": 4, "rows": 60}
    table = read_manifest(work, "neighbours")
    ids = sorted(read_manifest(work, "clips")["clip_id"])
    assert sorted(set(table["clip_id"])) == ids and set(table["modality"]) == {"image", "audio"}
    for row in table.itertuples():
        assert len(row.neighbours) == 4 and row.clip_id not in row.neighbours
        assert list(row.similarities) == sorted(row.similarities, reverse=True)
    assert set(table.loc[table.modality == "audio", "encoder"]) == {"tiny-random:ast"}
    assert read_provenance(work, "neighbours")["image_encoder"]["revision"].startswith("sha256:")
    first = manifest_path(work, "neighbours").read_bytes()
    # a rerun reads the cached embeddings: the encoders are never called, the bytes are the same
    caches = sorted((work / nb.STATE_DIR).iterdir())
    assert [c.name.split("-")[0] for c in caches] == ["audio", "image"]

    def refuse(*_a, **_k):
        raise AssertionError("a model was loaded on a cached run")

    monkeypatch.setattr(nb, "_image_encoder", refuse)
    monkeypatch.setattr(nb, "_audio_encoder", refuse)
    nb.run_neighbours(work, cfg, IMAGE, AUDIO, provenance={"stage": "neighbours"})
    assert manifest_path(work, "neighbours").read_bytes() == first
    # a missing cached part is recomputed (resume after a kill)
    monkeypatch.undo()
    next((work / nb.STATE_DIR).glob("image-*/*.npy")).unlink()
    nb.run_neighbours(work, cfg, IMAGE, AUDIO, provenance={"stage": "neighbours"})
    assert manifest_path(work, "neighbours").read_bytes() == first


def test_the_trainer_reads_the_neighbours(work: Path, tmp_path: Path) -> None:
    nb.run_neighbours(work, NeighboursConfig(enabled=True, k=4), IMAGE, AUDIO)
    index = ClipIndex.from_workdir(work)
    per = load_neighbours(work, index)
    assert all(len(v["image"]) == 4 and len(v["audio"]) == 4 for v in per.values())
    section = synthetic.tiny_train_section(
        None,
        epochs=1,
        max_steps_per_epoch=1,
        batch_size=6,
        neighbours=True,
        alignment__views=["orig", "aug", "conc"],
        alignment__image_size=32,
    )
    summary = train(
        TrainConfig.model_validate(section, strict=False), work, seed=0, run_dir=tmp_path / "r", progress=False
    )
    # 3 x 3 view pairs: each InfoNCE over a batch of 6 starts near ln 6
    assert summary["last"]["sl"] == pytest.approx(9 * np.log(6), rel=0.25)
    # conc without the manifest's rows for these clips is refused, naming the clip
    synthetic.write_workdir(tmp_path / "other", 8, size=32, seconds=1.0, seed=4)
    nb.run_neighbours(tmp_path / "other", NeighboursConfig(enabled=False), None, None)
    with pytest.raises(TrainError, match="has no image neighbours"):
        load_neighbours(tmp_path / "other", ClipIndex.from_workdir(tmp_path / "other"))
