"""The BLIP-2 image captioner on a tiny random BLIP-2 (offline): loading, batching, prompts and unreadable images."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw

from is4.config import ModelRef
from is4.pipeline.captions.image import Blip2Captioner, CaptionInputError
from is4.pipeline.common.models import ModelError, resolve_model
from is4.pipeline.common.tiny_models import build_tiny_blip2, tiny_opt_tokenizer
from tests.support import TinyModels

TINY = ModelRef(model_id="tiny-random:blip2")
PROMPT = "a photo of"
COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (12, 12, 12)]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory, tiny_models: TinyModels) -> Path:
    return tiny_models.install(tmp_path_factory.mktemp("work"), "blip2")


@pytest.fixture(scope="module")
def captioner(workdir: Path) -> Blip2Captioner:
    return Blip2Captioner.load(TINY, workdir)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Five images of different sizes, colours and patterns (one greyscale, one JPEG)."""
    root = tmp_path_factory.mktemp("images")
    paths = []
    for i, colour in enumerate(COLOURS):
        image = Image.new("RGB", (48 + 8 * i, 40), colour)
        ImageDraw.Draw(image).rectangle([4, 4, 16 + 5 * i, 30], fill=(255 - colour[0], 128, 40 * i))
        if i == 3:
            image = image.convert("L")
        path = root / f"image{i}.{'jpg' if i == 4 else 'png'}"
        image.save(path)
        paths.append(path)
    return paths


def test_tiny_blip2_files_are_byte_identical_across_builds(tiny_models: TinyModels, tmp_path: Path) -> None:
    first, second = tiny_models.path("blip2"), build_tiny_blip2(tmp_path / "b")
    names = sorted(p.name for p in first.iterdir())
    assert names == sorted(p.name for p in second.iterdir())
    assert {"config.json", "model.safetensors", "processor_config.json", "tokenizer.json"} <= set(names)
    for name in names:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name


def test_load_resolves_the_tiny_model_through_from_pretrained(captioner: Blip2Captioner, workdir: Path) -> None:
    resolved = resolve_model(TINY, workdir, "image_captioner")
    assert (resolved.path / "model.safetensors").is_file()
    assert (captioner.model_id, captioner.revision) == ("tiny-random:blip2", resolved.revision)
    assert type(captioner.processor.image_processor).__name__ == "BlipImageProcessorPil"
    config, processor = captioner.model.config, captioner.processor
    assert processor.num_query_tokens == config.num_query_tokens
    assert processor.tokenizer.convert_tokens_to_ids("<image>") == config.image_token_id
    assert not captioner.model.training


def test_captions_are_one_string_per_image_in_order(captioner: Blip2Captioner, images: list[Path]) -> None:
    captions = captioner.caption(images)
    assert len(captions) == len(images)
    assert all(isinstance(c, str) and c and c == c.strip() for c in captions)
    assert len(set(captions)) > 1  # the tiny model's captions follow the image
    assert captioner.caption(images[::-1]) == captions[::-1]
    assert captioner.caption([]) == []


def test_captions_do_not_depend_on_the_batch_size(captioner: Blip2Captioner, images: list[Path]) -> None:
    whole = captioner.caption(images)
    assert [captioner.caption([path])[0] for path in images] == whole
    assert [c for start in range(0, len(images), 2) for c in captioner.caption(images[start : start + 2])] == whole


def test_without_a_prompt_captions_are_what_generate_writes_by_itself(
    captioner: Blip2Captioner, images: list[Path]
) -> None:
    inputs = captioner.processor(images=[Image.open(p).convert("RGB") for p in images], return_tensors="pt")
    output = captioner.model.generate(**inputs, do_sample=False, max_new_tokens=captioner.max_new_tokens)
    prompt_length = captioner.model.config.num_query_tokens + 1  # the image tokens and the bos token
    expected = captioner.processor.batch_decode(output[:, prompt_length:], skip_special_tokens=True)
    assert captioner.caption(images) == [text.strip() for text in expected]


def test_a_prompt_is_continued_not_echoed(workdir: Path, images: list[Path]) -> None:
    prompted = Blip2Captioner.load(TINY, workdir, prompt=PROMPT, max_new_tokens=12)
    captions = prompted.caption(images)
    assert len(captions) == len(images) and all(captions)
    assert all(len(c) <= 12 for c in captions)  # one character per token, the prompt not included
    assert not any(c.startswith(PROMPT) for c in captions)
    assert captions != Blip2Captioner.load(TINY, workdir, max_new_tokens=12).caption(images)
    assert [prompted.caption([path])[0] for path in images] == captions


def test_an_unreadable_image_is_named_before_the_model_runs(
    captioner: Blip2Captioner, images: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    calls = []
    monkeypatch.setattr(captioner.model, "generate", lambda **kwargs: calls.append(kwargs))
    with pytest.raises(CaptionInputError, match="broken.png"):
        captioner.caption([images[0], broken])
    with pytest.raises(CaptionInputError, match="missing.png"):
        captioner.caption([tmp_path / "missing.png"])
    assert calls == []


def test_settings_record_what_changes_the_captions(captioner: Blip2Captioner, workdir: Path) -> None:
    assert captioner.settings() == {
        "prompt": None,
        "max_new_tokens": 30,
        "dtype": "float32",
        "device": "cpu",
        "decoding": "greedy",
    }
    assert Blip2Captioner.load(TINY, workdir, prompt=PROMPT).settings()["prompt"] == PROMPT
    assert Blip2Captioner.load(TINY, workdir, prompt=PROMPT).settings() != captioner.settings()


def test_a_checkpoint_that_cannot_load_is_a_model_error(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ModelError, match=re.escape(f"cannot load image captioner {tmp_path}")):
        Blip2Captioner.load(ModelRef(model_id=str(tmp_path)), tmp_path)


def test_processor_and_model_must_agree_on_the_image_tokens(captioner: Blip2Captioner, workdir: Path) -> None:
    from transformers import Blip2Processor

    processor = Blip2Processor.from_pretrained(captioner.resolved.path)
    processor.num_query_tokens = None  # an old checkpoint revision: the processor writes no image tokens
    with pytest.raises(ModelError, match="tiny-random:blip2.*image tokens"):
        Blip2Captioner(captioner.model, processor, captioner.resolved)


def test_an_encoder_decoder_language_model_returns_only_new_tokens(
    captioner: Blip2Captioner, images: list[Path]
) -> None:
    """BLIP-2 with Flan-T5: `generate` returns the decoder's tokens, without the prompt, and all of them are kept."""
    from transformers import Blip2Config, Blip2ForConditionalGeneration, Blip2Processor, BlipImageProcessorPil, T5Config

    tokenizer = tiny_opt_tokenizer()
    processor = Blip2Processor(
        image_processor=BlipImageProcessorPil(size={"height": 32, "width": 32}), tokenizer=tokenizer, num_query_tokens=4
    )
    torch.manual_seed(0)
    text = T5Config(
        vocab_size=len(tokenizer),
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=1,
        num_heads=4,
        initializer_factor=20.0,
        pad_token_id=1,
        eos_token_id=2,
        decoder_start_token_id=1,
    )
    config = Blip2Config(
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 4,
            "image_size": 32,
            "patch_size": 8,
        },
        qformer_config={
            "vocab_size": 32,
            "hidden_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 4,
            "intermediate_size": 64,
            "encoder_hidden_size": 32,
        },
        text_config=text.to_dict(),
        num_query_tokens=4,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
    )
    model = Blip2ForConditionalGeneration(config).eval()
    t5_captioner = Blip2Captioner(model, processor, captioner.resolved, prompt=PROMPT, max_new_tokens=5)
    inputs = processor(
        images=[Image.open(p).convert("RGB") for p in images], text=[PROMPT] * len(images), return_tensors="pt"
    )
    output = model.generate(**inputs, do_sample=False, max_new_tokens=5)
    assert output.shape[1] <= 6  # the decoder start token and at most 5 new tokens
    expected = [text.strip() for text in processor.batch_decode(output, skip_special_tokens=True)]
    assert any(expected)
    assert t5_captioner.caption(images) == expected
