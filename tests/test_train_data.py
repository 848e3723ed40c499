"""Datasets over manifests: which clips, the export layout, the captions join, seeded views independent of order
and workers, and the torch transforms against PIL."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from is4.config import AlignmentConfig, TrainConfig
from is4.manifests.io import read_manifest, write_manifest
from is4.pipeline.ingest.export import export_training_layout
from is4.trainers import synthetic, transforms
from is4.trainers.align import AlignDataset
from is4.trainers.data import AVClips, ClipIndex, item_rng, load_phrases
from is4.trainers.method import TrainError, get_method


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    w = tmp_path_factory.mktemp("train-data")
    synthetic.write_workdir(w, 12, size=32, seconds=1.0)
    clips = read_manifest(w, "clips")
    clips.loc[0, "status"], clips.loc[0, "reason"] = "failed", "download"
    clips.loc[[1, 2], "split"] = "test"
    write_manifest(w, "clips", clips)
    return w


def test_clip_index_keeps_ok_rows_of_the_splits_and_the_id_list(work: Path, tmp_path: Path) -> None:
    clips = read_manifest(work, "clips")
    index = ClipIndex.from_workdir(work)
    assert index.ids == sorted(clips.clip_id[3:])  # failed and test rows left out, sorted
    assert index.rows[0].frame == work / clips.frame_path[3] and index.rows[0].frame.is_file()
    both = ClipIndex.from_workdir(work, ["train", "test"])
    assert len(both) == 11
    id_list = tmp_path / "vggss_10k.csv"
    id_list.write_text(f"clip_id,label\n{clips.clip_id[4]},red\n{clips.clip_id[0]},red\nnot_a_clip_000000,x\n")
    assert ClipIndex.from_workdir(work, id_list=id_list).ids == [clips.clip_id[4]]  # the failed one stays out
    with pytest.raises(TrainError, match="no training clips"):
        ClipIndex.from_workdir(work, ["val"])


def test_the_exported_layout_reads_the_same_clips(work: Path) -> None:
    out, _ = export_training_layout(work)
    exported = ClipIndex.from_export(out)
    assert exported.ids == ClipIndex.from_workdir(work).ids
    a, b = AVClips(exported)[0], AVClips(ClipIndex.from_workdir(work))[0]
    assert np.array_equal(a["frame"], b["frame"]) and np.array_equal(a["wav"], b["wav"])


def test_phrases_join_leaves_out_null_and_flagged_ones(work: Path) -> None:
    ids = ClipIndex.from_workdir(work).ids
    rows = [
        {
            "item_id": cid,
            "source": "clip",
            "image_path": None,
            "audio_path": None,
            "image_caption": "c",
            "audio_caption": "a",
            "object_phrase": phrase,
            "object_phrase_raw": phrase,
            "prompt_version": "v1",
            "flags": flags,
            "error": None,
            **{
                f"{r}_{c}": None
                for r in ("image_caption", "audio_caption", "object_phrase")
                for c in ("model", "revision", "backend")
            },
        }
        for cid, phrase, flags in [
            (ids[0], "red", None),
            (ids[1], None, "object_phrase:unparsed"),
            (ids[2], "zzz", "object_phrase:garbage"),
            (ids[3], "blue", "image_caption:empty"),
        ]
    ]
    write_manifest(work, "captions", pd.DataFrame(rows))
    phrases = load_phrases(work, ClipIndex.from_workdir(work))
    assert phrases[ids[0]] == "red" and phrases[ids[3]] == "blue"
    assert phrases[ids[1]] is None and phrases[ids[2]] is None and phrases[ids[4]] is None


def _dataset(work: Path, epoch: int = 0) -> AlignDataset:
    method = get_method(
        TrainConfig.model_validate(synthetic.tiny_train_section(None, alignment__image_size=32), strict=False), seed=7
    )
    ds = method.train_dataset(work)
    ds.set_epoch(epoch)
    return ds


def test_views_depend_on_seed_epoch_and_clip_only(work: Path) -> None:
    ds = _dataset(work)
    alone = [ds[i] for i in range(len(ds))]
    loader = DataLoader(ds, batch_size=None, sampler=list(reversed(range(len(ds)))), num_workers=2)
    in_workers = {item["index"]: item for item in loader}
    for item in alone:
        other = in_workers[item["index"]]
        assert torch.equal(item["frames"], other["frames"]) and torch.equal(item["specs"], other["specs"])
    assert alone[0]["frames"].shape == (2, 3, 32, 32)  # orig, aug
    assert not torch.equal(_dataset(work, epoch=1)[0]["frames"], alone[0]["frames"])
    assert item_rng(1, 0, "x", "v").random() == item_rng(1, 0, "x", "v").random() != item_rng(1, 1, "x", "v").random()


def test_transforms_match_pil_and_are_seeded() -> None:
    rng = np.random.default_rng(0)
    frame = (rng.random((40, 60, 3)) * 255).astype(np.uint8)
    img = transforms.to_tensor(frame)
    assert torch.equal(transforms.hflip(img, np.random.default_rng(0), p=1.0), img.flip(-1))
    small = transforms.resize(img, (20, 30))
    pil = np.asarray(Image.fromarray(frame).resize((30, 20), Image.BICUBIC)).astype(np.float32) / 255
    assert np.abs(small.permute(1, 2, 0).numpy() - pil).mean() < 0.02
    grey = transforms.grayscale(img)
    pil_grey = np.asarray(Image.fromarray(frame).convert("L")).astype(np.float32) / 255
    assert np.abs(grey[0].numpy() - pil_grey).max() < 0.01
    a = transforms.random_resized_crop(img, 16, np.random.default_rng(3))
    b = transforms.random_resized_crop(img, 16, np.random.default_rng(3))
    assert torch.equal(a, b) and a.shape == (3, 16, 16)
    jit = transforms.colour_jitter(img, np.random.default_rng(1), 0.4, 0.4, 0.4, 0.1)
    assert jit.shape == img.shape and not torch.equal(jit, img) and 0 <= jit.min() and jit.max() <= 1
    big = transforms.to_tensor((rng.random((224, 224, 3)) * 255).astype(np.uint8))
    blur = transforms.gaussian_blur(big, np.random.default_rng(2))  # sigma in [0.1, 2] px at 224
    assert blur.shape == big.shape and blur.std() < 0.9 * big.std()
    assert AlignmentConfig().views == ["orig", "aug", "conc"]
