"""Audio captioners: Qwen2-Audio on a tiny random model (offline), the backend choice, and GAMA's driver protocol
(against a fake GAMA checkout and environment, since GAMA itself cannot run here)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.io import wavfile

from is4.config import AudioCaptionConfig, GamaConfig, ModelRef
from is4.pipeline.captions.audio import (
    GAMA_DRIVER,
    CaptionInputError,
    GamaCaptioner,
    Qwen2AudioCaptioner,
    gama_checkpoint_revision,
    load_audio_captioner,
    read_audio,
)
from is4.pipeline.common.models import ModelError
from is4.pipeline.common.tiny_models import build_tiny_qwen2_audio
from tests.support import TinyModels

RATE = 16000


def _write_wav(path: Path, audio: np.ndarray, rate: int = RATE) -> Path:
    wavfile.write(path, rate, (np.clip(audio, -1, 1) * 32767).astype(np.int16))
    return path


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Four clips of different sounds and lengths (2-4 s), so their prompts differ in length and get padded."""
    root = tmp_path_factory.mktemp("clips")
    rng = np.random.default_rng(0)

    def tone(freq: float, seconds: float) -> np.ndarray:
        return 0.5 * np.sin(2 * np.pi * freq * np.arange(int(seconds * RATE)) / RATE)

    sounds = {
        "tone440": tone(440, 2.0),
        "noise": rng.normal(0, 0.3, 3 * RATE),
        "tone1500": tone(1500, 4.0),
        "chord": tone(300, 2.5) + tone(2000, 2.5) * 0.5,
    }
    return [_write_wav(root / f"{name}.wav", audio) for name, audio in sounds.items()]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory, tiny_models: TinyModels) -> Path:
    return tiny_models.install(tmp_path_factory.mktemp("work"), "qwen2-audio")


@pytest.fixture(scope="module")
def captioner(workdir: Path) -> Qwen2AudioCaptioner:
    return Qwen2AudioCaptioner.load(ModelRef(model_id="tiny-random:qwen2-audio"), workdir, max_new_tokens=8)


# --- the tiny model -------------------------------------------------------------------------------------------------


def test_tiny_qwen2_audio_files_are_byte_identical_across_builds(tiny_models: TinyModels, tmp_path: Path) -> None:
    first, second = tiny_models.path("qwen2-audio"), build_tiny_qwen2_audio(tmp_path / "b")
    names = sorted(p.name for p in first.iterdir())
    assert names == sorted(p.name for p in second.iterdir())
    assert {"config.json", "model.safetensors", "tokenizer.json", "processor_config.json"} <= set(names)
    for name in names:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name


def test_processor_expands_the_audio_token_to_one_per_40_ms(captioner: Qwen2AudioCaptioner) -> None:
    processor, config = captioner.processor, captioner.model.config
    assert processor.audio_token_id == config.audio_token_id
    audio = [np.zeros(2 * RATE, np.float32), np.zeros(10 * RATE, np.float32)]
    inputs = processor(text=[captioner.text] * 2, audio=audio, sampling_rate=RATE, padding=True, return_tensors="pt")
    assert inputs["input_features"].shape == (2, 128, 3000)  # Whisper features, padded to 30 s
    assert (inputs["input_ids"] == config.audio_token_id).sum(-1).tolist() == [50, 250]
    assert inputs["attention_mask"][0, :200].sum() == 0  # the shorter prompt is padded on the left


# --- Qwen2AudioCaptioner --------------------------------------------------------------------------------------------


def test_load_resolves_the_tiny_model_and_reports_its_settings(captioner: Qwen2AudioCaptioner) -> None:
    assert captioner.backend == "qwen2-audio"
    assert captioner.model_id == "tiny-random:qwen2-audio"
    assert captioner.revision.startswith("sha256:")
    assert captioner.text == "<|audio_bos|><|AUDIO|><|audio_eos|>Generate the caption in English:"
    assert captioner.processor.tokenizer.padding_side == "left"
    assert not captioner.model.training
    assert captioner.settings() == {
        "prompt": "Generate the caption in English:",
        "prompt_format": "<|audio_bos|><|AUDIO|><|audio_eos|>{prompt}",
        "max_new_tokens": 8,
        "dtype": "float32",
        "device": "cpu",
        "decoding": "greedy",
        "sampling_rate": RATE,
    }


def test_captions_are_one_per_clip_in_order_and_do_not_depend_on_the_batch(
    captioner: Qwen2AudioCaptioner, clips: list[Path]
) -> None:
    whole = captioner.caption(clips)
    assert len(whole) == len(clips) and all(isinstance(text, str) for text in whole)
    assert len(set(whole)) > 1  # the clips get different captions, so their order is checked below
    assert [captioner.caption([clip])[0] for clip in clips] == whole
    assert captioner.caption(clips[:2]) + captioner.caption(clips[2:]) == whole
    assert captioner.caption(clips[::-1]) == whole[::-1]
    assert captioner.caption([]) == []


@pytest.mark.parametrize("content", [b"", b"RIFF not really a wave file", None], ids=["empty", "corrupt", "no-samples"])
def test_bad_audio_raises_caption_input_error_before_the_model_runs(
    captioner: Qwen2AudioCaptioner,
    clips: list[Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    content: bytes | None,
) -> None:
    bad = tmp_path / "bad.wav"
    if content is None:
        _write_wav(bad, np.zeros(0))
    else:
        bad.write_bytes(content)
    monkeypatch.setattr(captioner.model, "generate", lambda **_: pytest.fail("the model ran"))
    with pytest.raises(CaptionInputError, match="bad.wav"):
        captioner.caption([clips[0], bad])


def test_read_audio_scales_mixes_and_resamples(tmp_path: Path) -> None:
    stereo = np.stack([np.full(800, 16384, np.int16), np.zeros(800, np.int16)], axis=1)
    wavfile.write(tmp_path / "stereo8k.wav", 8000, stereo)
    audio = read_audio(tmp_path / "stereo8k.wav", RATE)
    assert audio.dtype == np.float32 and audio.shape == (1600,)
    assert audio[400:1200] == pytest.approx(0.25, abs=1e-3)  # (0.5 + 0) / 2, away from the edges of the resampling
    wavfile.write(tmp_path / "u8.wav", RATE, np.array([0, 128, 255], np.uint8))
    assert read_audio(tmp_path / "u8.wav", RATE).tolist() == pytest.approx([-1.0, 0.0, 127 / 128])
    with pytest.raises(CaptionInputError, match="missing.wav: unreadable audio"):
        read_audio(tmp_path / "missing.wav", RATE)


# --- choosing the backend -------------------------------------------------------------------------------------------


def test_load_audio_captioner_picks_the_transformers_backend(workdir: Path) -> None:
    captioner = load_audio_captioner(
        ModelRef(model_id="tiny-random:qwen2-audio"),
        workdir,
        AudioCaptionConfig(prompt="Describe the sound:", max_new_tokens=5),
    )
    assert isinstance(captioner, Qwen2AudioCaptioner)
    assert captioner.settings()["prompt"] == "Describe the sound:"
    assert captioner.settings()["max_new_tokens"] == 5


def test_load_audio_captioner_errors_clearly(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="models.audio_captioner is not configured"):
        load_audio_captioner(None, tmp_path, AudioCaptionConfig())
    with pytest.raises(ModelError, match="captions.audio.gama is not configured"):
        load_audio_captioner(ModelRef(model_id=str(tmp_path)), tmp_path, AudioCaptionConfig(backend="gama"))


def test_gama_with_missing_files_names_each_of_them(tmp_path: Path) -> None:
    gama = GamaConfig(repo=tmp_path / "GAMA", base_model=tmp_path / "llama", python=tmp_path / "env/bin/python")
    cfg = AudioCaptionConfig(backend="gama", gama=gama)
    with pytest.raises(ModelError) as error:
        load_audio_captioner(ModelRef(model_id=str(tmp_path / "ckpt.bin")), tmp_path, cfg)
    message = str(error.value)
    for path in ("GAMA", "llama", "env/bin/python", "ckpt.bin"):
        assert str(tmp_path / path) in message
    assert "https://github.com/Sreyan88/GAMA" in message
    with pytest.raises(ModelError, match="GAMA checkpoint .* not found: .*ckpt.bin"):
        gama_checkpoint_revision(ModelRef(model_id=str(tmp_path / "ckpt.bin")))


# --- GAMA: the driver against a fake checkout and environment ------------------------------------------------------

# The authors' `utils/prompter.py` and `templates/alpaca_short.json` (reduced), and stand-ins for the packages of
# GAMA's environment: its patched transformers (a LlamaForCausalLM taking `audio_input`), peft and torchaudio.
FAKE_REPO = {
    "utils/prompter.py": """
import json
import os.path as osp

print("fake prompter imported")  # the authors' code prints; it must not reach the protocol


class Prompter:
    def __init__(self, template_name=""):
        with open(osp.join("templates", f"{template_name}.json")) as fp:  # relative to the checkout, as theirs
            self.template = json.load(fp)

    def generate_prompt(self, instruction, input=None):
        return self.template["prompt_no_input"].format(instruction=instruction)
""",
    "templates/alpaca_short.json": json.dumps(
        {"prompt_no_input": "### Instruction:\n{instruction}\n\n### Response:\n"}
    ),
}
FAKE_ENVIRONMENT = {
    "peft/__init__.py": """
class LoraConfig:
    def __init__(self, **kwargs):
        self.kwargs = kwargs


def get_peft_model(model, config):
    model.lora = config.kwargs
    return model
""",
    "torchaudio/__init__.py": """
import numpy as np
import torch
from scipy.io import wavfile

from . import compliance


def load(path):
    rate, samples = wavfile.read(path)
    return torch.from_numpy(samples.astype(np.float32) / 32768)[None], rate
""",
    "torchaudio/compliance/__init__.py": "from . import kaldi\n",
    "torchaudio/compliance/kaldi.py": """
import torch


def fbank(waveform, *, sample_frequency, num_mel_bins, frame_shift, **kwargs):
    hop = int(sample_frequency * frame_shift / 1000)
    frames = waveform[0, : waveform.shape[1] // hop * hop].reshape(-1, hop)
    return torch.log(frames.pow(2).mean(dim=1, keepdim=True) + 1e-10).repeat(1, num_mel_bins)
""",
    "transformers/__init__.py": """
from types import SimpleNamespace

import torch


class GenerationConfig:
    def __init__(self, **kwargs):
        self.__dict__.update(kwargs)


class LlamaTokenizer:
    pad_token_id = None

    @classmethod
    def from_pretrained(cls, path):
        return cls()

    def __call__(self, text, return_tensors=None):
        return {"input_ids": torch.tensor([[1] + [ord(c) for c in text]])}

    def decode(self, ids, skip_special_tokens=False):
        return "".join(chr(i) for i in ids.tolist() if not (skip_special_tokens and i < 3))


class LlamaForCausalLM:
    @classmethod
    def from_pretrained(cls, path, device_map=None, torch_dtype=None):
        model = cls()
        model.config = SimpleNamespace()
        return model

    def forward(self, input_ids=None, audio_input=None):
        raise NotImplementedError

    def load_state_dict(self, state_dict, strict=True):
        unexpected = [key for key in state_dict if not key.startswith("base_model.")]
        return SimpleNamespace(missing_keys=[], unexpected_keys=unexpected)

    def eval(self):
        return self

    def generate(self, input_ids, audio_input, generation_config, return_dict_in_generate, max_new_tokens):
        assert generation_config.do_sample is False and self.lora["r"] == 8 and self.config.eos_token_id == 2
        assert audio_input.shape == (1, 1024, 128)
        prompt = "".join(chr(i) for i in input_ids[0, 1:].tolist())
        if "FAIL" in prompt:
            raise RuntimeError("fake generation failure")
        answer = [ord(c) for c in f"[{prompt.splitlines()[1]}] level {audio_input.mean().item():.3f}"]
        new = torch.tensor([answer[:max_new_tokens] + [2]])
        return SimpleNamespace(sequences=torch.cat([input_ids, new], dim=1))
""",
}


def _fake_gama(root: Path, *, patched_transformers: bool = True, checkpoint_keys=("base_model.model.w",)):
    """A fake GAMA checkout (with its environment's packages inside), base model and checkpoint; the GamaConfig
    using this interpreter, and the checkpoint's ModelRef."""
    files = FAKE_REPO | {
        name: text
        for name, text in FAKE_ENVIRONMENT.items()
        if patched_transformers or not name.startswith("transformers/")
    }
    for name, text in files.items():
        (root / "GAMA" / name).parent.mkdir(parents=True, exist_ok=True)
        (root / "GAMA" / name).write_text(text)
    (root / "llama").mkdir()
    checkpoint = root / "stage5" / "pytorch_model.bin"
    checkpoint.parent.mkdir()
    torch.save({key: torch.zeros(2) for key in checkpoint_keys}, checkpoint)
    gama = GamaConfig(
        repo=root / "GAMA",
        base_model=root / "llama",
        python=Path(sys.executable),
        prompt="Describe the audio in detail.",
    )
    return gama, ModelRef(model_id=str(checkpoint.parent))


def test_driver_reports_a_checkout_without_gamas_code(tmp_path: Path) -> None:
    args = ["--repo", str(tmp_path), "--base-model", str(tmp_path), "--checkpoint", str(tmp_path / "c.bin")]
    done = subprocess.run(
        [sys.executable, str(GAMA_DRIVER), *args], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1
    (line,) = done.stdout.splitlines()
    assert "cannot import GAMA's utils.prompter from " + str(tmp_path) in json.loads(line)["error"]


def test_gama_captions_in_order_through_the_driver(tmp_path: Path, clips: list[Path]) -> None:
    gama, ref = _fake_gama(tmp_path)
    cfg = AudioCaptionConfig(backend="gama", gama=gama, max_new_tokens=64)
    with load_audio_captioner(ref, tmp_path, cfg) as captioner:
        assert isinstance(captioner, GamaCaptioner) and captioner.backend == "gama"
        checkpoint = Path(ref.model_id) / "pytorch_model.bin"
        assert captioner.revision == "sha256:" + hashlib.sha256(checkpoint.read_bytes()).hexdigest()[:32]
        assert gama_checkpoint_revision(ModelRef(model_id=str(checkpoint))) == captioner.revision
        assert captioner.settings()["prompt"] == "Describe the audio in detail."
        captions = captioner.caption(clips)
        assert len(captions) == len(clips) and len(set(captions)) == len(clips)
        assert all(text.startswith("[Describe the audio in detail.] level ") for text in captions)
        assert captioner.caption(clips[::-1]) == captions[::-1]
        assert captioner.caption([]) == []
        with pytest.raises(CaptionInputError, match="bad.wav"):
            (tmp_path / "bad.wav").write_bytes(b"")
            captioner.caption([clips[0], tmp_path / "bad.wav"])
        captioner.gama = gama.model_copy(update={"prompt": "FAIL"})
        with pytest.raises(ModelError, match="fake generation failure"):
            captioner.caption(clips[:1])
        captioner.gama = gama
        assert captioner.caption(clips[:1]) == captions[:1]  # the driver keeps serving after a failed request
        process = captioner.process
    assert process.returncode == 0


@pytest.mark.parametrize(
    ("fake", "message"),
    [
        ({"patched_transformers": False}, "is not GAMA's patched one"),
        ({"checkpoint_keys": ("decoder.weight",)}, "none of the 1 tensors"),
    ],
    ids=["stock-transformers", "foreign-checkpoint"],
)
def test_gama_load_failures_carry_the_driver_error_and_its_stderr(tmp_path: Path, fake: dict, message: str) -> None:
    gama, ref = _fake_gama(tmp_path, **fake)
    with pytest.raises(ModelError, match=message) as error:
        GamaCaptioner.load(ref, tmp_path, gama)
    assert "fake prompter imported" in str(error.value)  # the authors' prints went to stderr, not the protocol
