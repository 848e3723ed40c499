"""The caption stage on tiny random BLIP-2, Qwen2-Audio and Mistral: manifest, caching, failures, OOM back-off."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image
from scipy.io import wavfile

from is4.config import BuildConfig, parse_config
from is4.manifests.io import manifest_path, read_manifest, read_provenance, write_manifest
from is4.manifests.schema import CLIPS, INSTANCES
from is4.pipeline.captions.caption import CaptionError, collect_items, run_captions, text_flag
from is4.pipeline.captions.object_phrase import PROMPT_VERSION
from is4.pipeline.common.llm import normalise_phrase
from tests.support import IS4, TinyModels

SR = 16000
TRAIN = ("clipA_000010", "clipB_000020", "clipC_000030")
COLOURS = {
    "clipA_000010": (255, 0, 0),
    "clipB_000020": (0, 200, 0),
    "clipC_000030": (20, 20, 220),
    "clipD_000040": (250, 250, 0),
    "clipE_000050": (0, 0, 0),
}
TONES = {
    "clipA_000010": 440.0,
    "clipB_000020": 880.0,
    "clipC_000030": 1320.0,
    "clipD_000040": 660.0,
    "clipE_000050": 220.0,
}


def _config(**captions) -> BuildConfig:
    return parse_config(
        {
            "captions": {
                "image": {"batch_size": 4, "max_new_tokens": 8},
                "audio": {"batch_size": 4, "max_new_tokens": 8},
                "object_phrase": {"batch_size": 4, "max_new_tokens": 8},
                **captions,
            },
            "models": {
                "image_captioner": {"model_id": "tiny-random:blip2"},
                "audio_captioner": {"model_id": "tiny-random:qwen2-audio"},
                "object_phrase": {"model_id": "tiny-random:mistral"},
            },
        }
    )


def _clip_row(row: int, clip_id: str, split: str, status: str = "ok") -> dict:
    record = {name: None for name in CLIPS.column_names}
    ytid, start = clip_id.rsplit("_", 1)
    record.update(
        row=row,
        clip_id=clip_id,
        ytid=ytid,
        start_sec=int(start),
        label="playing cello",
        split=split,
        status=status,
        retryable=False,
        attempts=1,
    )
    if status == "ok":
        record.update(frame_path=f"media/frames/{clip_id}.jpg", audio_path=f"media/audio/{clip_id}.wav")
    else:
        record.update(reason="download failed: HTTP Error 404")
    return record


def _write_media(work: Path, clip_id: str) -> None:
    (work / "media/frames").mkdir(parents=True, exist_ok=True)
    (work / "media/audio").mkdir(parents=True, exist_ok=True)
    image = np.zeros((48, 64, 3), np.uint8)
    image[:, :32] = COLOURS[clip_id]
    image[:, 32:] = np.array(COLOURS[clip_id])[::-1]
    Image.fromarray(image).save(work / f"media/frames/{clip_id}.jpg", quality=95)
    t = np.arange(2 * SR) / SR
    wavfile.write(
        work / f"media/audio/{clip_id}.wav", SR, (0.3 * np.sin(2 * np.pi * TONES[clip_id] * t) * 32767).astype(np.int16)
    )


def _make_work(root: Path) -> Path:
    """Three train clips and one test clip with media, and one failed clip."""
    rows = [_clip_row(i + 1, c, "train") for i, c in enumerate(TRAIN)]
    rows += [_clip_row(4, "clipD_000040", "test"), _clip_row(5, "clipE_000050", "train", status="failed")]
    for clip_id in (*TRAIN, "clipD_000040"):
        _write_media(root, clip_id)
    write_manifest(root, "clips", pd.DataFrame(rows, columns=list(CLIPS.column_names)))
    return root


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory, tiny_models: TinyModels) -> Path:
    """The session's tiny models (built once), copied into each test's work directory."""
    return tiny_models.install(tmp_path_factory.mktemp("built"), "blip2", "qwen2-audio", "mistral") / "models"


@pytest.fixture
def work(tmp_path: Path, models_dir: Path) -> Path:
    shutil.copytree(models_dir, tmp_path / "models")
    return _make_work(tmp_path)


def test_manifest_has_every_train_clip_with_captions_phrase_and_provenance(work: Path) -> None:
    summary = run_captions(work, _config())
    frame = read_manifest(work, "captions")
    assert frame["item_id"].tolist() == list(TRAIN)  # ok train clips only: not the test clip, not the failed one
    assert set(frame["source"]) == {"clip"}
    assert frame["image_path"].tolist() == [f"media/frames/{c}.jpg" for c in TRAIN]
    assert frame["image_caption"].map(lambda s: isinstance(s, str)).all()
    assert frame["audio_caption"].map(lambda s: isinstance(s, str)).all()
    assert frame["object_phrase_raw"].map(lambda s: isinstance(s, str)).all()
    for row in frame.itertuples():
        assert row.object_phrase == normalise_phrase(row.object_phrase_raw)
        expected_flags = [
            f"{role}:{flag}"
            for role, flag in (
                ("image_caption", text_flag(row.image_caption)),
                ("audio_caption", text_flag(row.audio_caption)),
            )
            if flag
        ]
        if row.object_phrase is None:
            expected_flags.append("object_phrase:unparsed")
        elif text_flag(row.object_phrase) == "garbage":
            expected_flags.append("object_phrase:garbage")
        assert (row.flags.split(",") if isinstance(row.flags, str) else []) == expected_flags
    assert set(frame["image_caption_model"]) == {"tiny-random:blip2"}
    assert set(frame["image_caption_backend"]) == {"blip2"}
    assert set(frame["audio_caption_model"]) == {"tiny-random:qwen2-audio"}
    assert set(frame["audio_caption_backend"]) == {"qwen2-audio"}
    assert set(frame["object_phrase_model"]) == {"tiny-random:mistral"}
    assert set(frame["object_phrase_backend"]) == {"transformers"}
    assert all(
        r.startswith("sha256:")
        for col in ("image_caption_revision", "audio_caption_revision", "object_phrase_revision")
        for r in frame[col]
    )
    assert set(frame["prompt_version"]) == {PROMPT_VERSION}
    assert frame["error"].isna().all()
    assert summary["items"] == 3
    assert summary["image_caption"]["captioned"] == summary["audio_caption"]["captioned"] == 3
    provenance = read_provenance(work, "captions")
    assert provenance["prompt_version"] == PROMPT_VERSION
    assert provenance["model_identities"]["audio_caption"]["backend"] == "qwen2-audio"


def test_rerun_reuses_every_caption_without_loading_a_model(work: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run_captions(work, _config())
    first = manifest_path(work, "captions").read_bytes()

    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded although nothing changed")

    monkeypatch.setattr("is4.pipeline.captions.image.Blip2Captioner.load", no_loading)
    monkeypatch.setattr("is4.pipeline.captions.audio.load_audio_captioner", no_loading)
    monkeypatch.setattr("is4.pipeline.captions.object_phrase.load_phraser", no_loading)
    summary = run_captions(work, _config())
    assert {role: summary[role]["cached"] for role in ("image_caption", "audio_caption", "object_phrase")} == {
        "image_caption": 3,
        "audio_caption": 3,
        "object_phrase": 3,
    }
    assert manifest_path(work, "captions").read_bytes() == first


def test_a_changed_frame_is_captioned_again_and_nothing_else(work: Path) -> None:
    run_captions(work, _config())
    Image.new("RGB", (64, 48), (123, 45, 67)).save(work / f"media/frames/{TRAIN[1]}.jpg")
    summary = run_captions(work, _config())
    assert (summary["image_caption"]["captioned"], summary["image_caption"]["cached"]) == (1, 2)
    assert (summary["audio_caption"]["captioned"], summary["audio_caption"]["cached"]) == (0, 3)


def test_changed_settings_recaption_every_item(work: Path) -> None:
    run_captions(work, _config())
    summary = run_captions(work, _config(image={"batch_size": 4, "max_new_tokens": 9}))
    assert summary["image_caption"]["captioned"] == 3
    assert summary["audio_caption"]["cached"] == 3


def test_batch_size_does_not_change_a_single_byte(
    work: Path, tmp_path_factory: pytest.TempPathFactory, models_dir: Path
) -> None:
    run_captions(work, _config())
    other = tmp_path_factory.mktemp("batch1")
    shutil.copytree(models_dir, other / "models")
    _make_work(other)
    one = {"batch_size": 1, "max_new_tokens": 8}
    run_captions(other, _config(image=one, audio=one, object_phrase=one))
    columns = ["item_id", "image_caption", "audio_caption", "object_phrase_raw", "object_phrase"]
    pd.testing.assert_frame_equal(read_manifest(work, "captions")[columns], read_manifest(other, "captions")[columns])


def test_out_of_memory_halves_the_batch_and_gives_the_same_captions(
    work: Path, tmp_path_factory, models_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from is4.pipeline.captions.image import Blip2Captioner

    reference = tmp_path_factory.mktemp("reference")
    shutil.copytree(models_dir, reference / "models")
    _make_work(reference)
    run_captions(reference, _config())

    real_caption = Blip2Captioner.caption
    batch_sizes: list[int] = []

    def small_memory(self, paths):
        batch_sizes.append(len(paths))
        if len(paths) > 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB")
        return real_caption(self, paths)

    monkeypatch.setattr(Blip2Captioner, "caption", small_memory)
    summary = run_captions(work, _config())
    assert batch_sizes == [3, 2, 1, 1, 1]  # one batch of 3 fails, halved to 2 (fails), then 1 by 1
    assert summary["image_caption"]["batch_size"] == 1 and summary["image_caption"]["halvings"] == 2
    assert (
        read_manifest(work, "captions")["image_caption"].tolist()
        == read_manifest(reference, "captions")["image_caption"].tolist()
    )


def test_an_item_that_fails_twice_is_recorded_and_retried_on_the_next_run(
    work: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from is4.pipeline.captions.image import Blip2Captioner

    real_caption = Blip2Captioner.caption
    bad = work / f"media/frames/{TRAIN[0]}.jpg"

    def failing(self, paths):
        if bad in paths:
            raise RuntimeError("cuDNN error: CUDNN_STATUS_EXECUTION_FAILED")
        return real_caption(self, paths)

    monkeypatch.setattr(Blip2Captioner, "caption", failing)
    summary = run_captions(work, _config())
    frame = read_manifest(work, "captions").set_index("item_id")
    assert summary["image_caption"]["failed"] == 1 and summary["errors"] == 1
    assert frame.loc[TRAIN[0], "error"] == "image_caption: RuntimeError: cuDNN error: CUDNN_STATUS_EXECUTION_FAILED"
    assert pd.isna(frame.loc[TRAIN[0], "image_caption"]) and pd.isna(frame.loc[TRAIN[0], "object_phrase_raw"])
    assert frame.loc[TRAIN[1], "image_caption"] is not None and pd.isna(frame.loc[TRAIN[1], "error"])

    monkeypatch.setattr(Blip2Captioner, "caption", real_caption)
    summary = run_captions(work, _config())
    assert (summary["image_caption"]["captioned"], summary["image_caption"]["cached"]) == (1, 2)
    assert read_manifest(work, "captions")["error"].isna().all()


def test_a_missing_audio_file_is_recorded_and_the_rest_goes_on(work: Path) -> None:
    (work / f"media/audio/{TRAIN[2]}.wav").unlink()
    summary = run_captions(work, _config())
    frame = read_manifest(work, "captions").set_index("item_id")
    error = frame.loc[TRAIN[2], "error"]
    assert error.startswith(f"audio_caption: cannot read media/audio/{TRAIN[2]}.wav")
    assert isinstance(frame.loc[TRAIN[2], "image_caption"], str)
    assert pd.isna(frame.loc[TRAIN[2], "object_phrase_raw"])
    assert frame.loc[list(TRAIN[:2]), "object_phrase_raw"].notna().all()
    assert summary["audio_caption"]["captioned"] == 2


def test_a_corrupt_audio_file_fails_that_item_with_its_name(work: Path) -> None:
    (work / f"media/audio/{TRAIN[0]}.wav").write_bytes(b"RIFF\x00\x00not a wav")
    run_captions(work, _config())
    error = read_manifest(work, "captions").set_index("item_id").loc[TRAIN[0], "error"]
    assert error.startswith("audio_caption: CaptionInputError") and f"{TRAIN[0]}.wav" in error


def test_instances_are_captioned_with_their_image_and_matched_audio(work: Path) -> None:
    (work / "media/images").mkdir(parents=True)
    Image.new("RGB", (64, 64), (10, 200, 30)).save(work / "media/images/cat_dog_0.png")
    instances = pd.DataFrame(
        [
            {
                "instance_id": f"cat_dog_0_{c}",
                "image_id": "cat_dog_0",
                "category": c,
                "clip_id": TRAIN[i],
                "audio_path": f"media/audio/{TRAIN[i]}.wav",
                "image_path": "media/images/cat_dog_0.png",
            }
            for i, c in enumerate(("cat", "dog"))
        ]
    )
    write_manifest(work, INSTANCES, instances)
    summary = run_captions(work, _config(sources=["clips", "instances"], splits=["train", "test"]))
    frame = read_manifest(work, "captions").set_index("item_id")
    assert sorted(frame.index) == sorted([*TRAIN, "clipD_000040", "cat_dog_0_cat", "cat_dog_0_dog"])
    assert frame.loc["cat_dog_0_cat", "source"] == "instance"
    assert frame.loc["cat_dog_0_dog", "audio_path"] == f"media/audio/{TRAIN[1]}.wav"
    # the same image and the same audio give the same captions, whichever item they belong to, asked once
    assert frame.loc["cat_dog_0_cat", "audio_caption"] == frame.loc[TRAIN[0], "audio_caption"]
    assert frame.loc["cat_dog_0_cat", "image_caption"] == frame.loc["cat_dog_0_dog", "image_caption"]
    assert summary["image_caption"]["captioned"] == 6 and summary["image_caption"]["distinct_inputs"] == 5
    assert summary["audio_caption"]["captioned"] == 6 and summary["audio_caption"]["distinct_inputs"] == 4


def test_an_id_shared_by_a_clip_and_an_instance_is_an_error(work: Path) -> None:
    write_manifest(
        work,
        INSTANCES,
        pd.DataFrame(
            [
                {
                    "instance_id": TRAIN[0],
                    "image_id": "x",
                    "category": "cat",
                    "clip_id": TRAIN[0],
                    "audio_path": f"media/audio/{TRAIN[0]}.wav",
                    "image_path": f"media/frames/{TRAIN[0]}.jpg",
                }
            ]
        ),
    )
    with pytest.raises(CaptionError, match=TRAIN[0]):
        collect_items(work, _config(sources=["clips", "instances"]).captions)


def test_unconfigured_models_are_named(work: Path) -> None:
    from is4.pipeline.common.models import ModelError

    cfg = _config().model_copy(update={"models": _config().models.model_copy(update={"audio_captioner": None})})
    with pytest.raises(ModelError, match="models.audio_captioner is not configured"):
        run_captions(work, cfg)


@pytest.mark.parametrize(
    ("text", "flag"),
    [
        ("a man playing a cello on a stage", None),
        ("", "empty"),
        ("   ", "empty"),
        (None, "empty"),
        ("!!! ... ???", "garbage"),
        ("12 34 5678", "garbage"),
        ("aaaaaaaaaaaaaaa", "garbage"),
        ("dog dog dog dog dog a", "garbage"),
        ("#$%&a@!*(", "garbage"),
        ("a dog barks, a dog barks", None),
    ],
)
def test_text_flag(text: str | None, flag: str | None) -> None:
    assert text_flag(text) == flag


def test_is4_caption_command(work: Path, tmp_path: Path) -> None:
    config = tmp_path / "captions.yaml"
    config.write_text(yaml.safe_dump(_config().model_dump(mode="json", include={"captions", "models"})))
    env = os.environ | {"COLUMNS": "200", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [IS4, "caption", "--config", str(config), "--workdir", str(work)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    assert "captioned: 3, cached: 0, failed: 0" in done.stdout
    assert len(read_manifest(work, "captions")) == 3

    without_llm = _config().model_dump(mode="json", include={"captions", "models"})
    without_llm["models"]["object_phrase"] = None
    config.write_text(yaml.safe_dump(without_llm))
    failed = subprocess.run(
        [IS4, "caption", "--config", str(config), "--workdir", str(work)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert failed.returncode == 2
    assert "models.object_phrase is not configured" in failed.stderr


def test_raw_answers_are_kept_normalised_and_flagged(work: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from is4.pipeline.captions.object_phrase import TransformersPhraser

    answers = {
        TRAIN[0]: "The answer is: Cello.",
        TRAIN[1]: "#$%&a@!*(",
        TRAIN[2]: "I cannot determine the primary object from the given captions.",
    }
    asked: list[tuple[str, str]] = []

    def fixed_answers(self, pairs):
        asked.extend(pairs)
        return [answers[TRAIN[len(asked) - len(pairs) + k]] for k in range(len(pairs))]

    monkeypatch.setattr(TransformersPhraser, "caption", fixed_answers)
    run_captions(work, _config(object_phrase={"batch_size": 1, "max_new_tokens": 8}))
    frame = read_manifest(work, "captions").set_index("item_id")
    assert asked == list(
        zip(frame.loc[list(TRAIN), "image_caption"], frame.loc[list(TRAIN), "audio_caption"], strict=True)
    )
    assert frame.loc[list(TRAIN), "object_phrase_raw"].tolist() == [answers[c] for c in TRAIN]
    assert frame.loc[TRAIN[0], "object_phrase"] == "cello"
    assert "object_phrase" not in str(frame.loc[TRAIN[0], "flags"])
    assert frame.loc[TRAIN[1], "object_phrase"] == "#$%&a@"  # normalised: trailing punctuation dropped
    assert "object_phrase:garbage" in frame.loc[TRAIN[1], "flags"].split(",")
    assert pd.isna(frame.loc[TRAIN[2], "object_phrase"])
    assert "object_phrase:unparsed" in frame.loc[TRAIN[2], "flags"].split(",")
