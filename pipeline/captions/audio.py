"""Audio captions for the caption stage: Qwen2-Audio through transformers, or GAMA through its authors' code.

`load_audio_captioner` picks the backend configured in `captions.audio`. Both captioners take a list of wav paths and
return one caption per clip, in order, from greedy decoding; the caller sizes the batches (and halves them on
out-of-memory). Unreadable or empty audio raises `CaptionInputError` naming the file before any model runs.

GAMA (github.com/Sreyan88/GAMA) ships outside transformers, with a patched transformers and peft of its own, so it runs
in the user's GAMA environment: `GamaCaptioner` starts `pipeline/captions/gama_driver.py` with that environment's interpreter and
talks to it in JSON lines (see the driver's docstring for the protocol).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import struct
import subprocess
import tempfile
import weakref
from pathlib import Path

import numpy as np
from scipy.io import wavfile
from scipy.signal import resample_poly

from is4.config import AudioCaptionConfig, GamaConfig, ModelRef
from is4.pipeline.captions.image import CaptionInputError
from is4.pipeline.common.llm import prepare_tokenizer_for_generation
from is4.pipeline.common.models import LoadedModel, ModelError, ResolvedModel, file_revision, load_pretrained

ROLE = "audio_captioner"
PROMPT_FORMAT = "<|audio_bos|><|AUDIO|><|audio_eos|>{prompt}"  # Qwen2-Audio-7B's captioning prompt
GAMA_URL = "https://github.com/Sreyan88/GAMA"
GAMA_DRIVER = Path(__file__).with_name("gama_driver.py")
GAMA_SAMPLING_RATE = 16000
GAMA_CHECKPOINT_FILE = "pytorch_model.bin"
GAMA_INSTALL_HINT = (
    f"install GAMA as its README says ({GAMA_URL}: a Python 3.10 environment with `pip install -r requirements.txt`, "
    "`pip install -e hf-dev-train/transformers-main` and `pip install -e peft-main`), download "
    "Llama-2-7b-chat-hf-qformer and a stage-4 or stage-5 checkpoint from the authors' drive, and set "
    "captions.audio.gama.repo, .base_model, .python and models.audio_captioner.model_id (the checkpoint)"
)
_STDERR_TAIL_CHARS = 4000


def read_audio(path: str | Path, sampling_rate: int) -> np.ndarray:
    """A wav file as mono float32 samples in [-1, 1] at `sampling_rate` (resampled only where the file's rate differs).

    Integer samples are scaled by their full scale (int16 by 32768), channels are averaged. Raises
    `CaptionInputError` naming the file when it cannot be read or holds no samples.
    """
    try:
        rate, samples = wavfile.read(path)
    except (OSError, ValueError, EOFError, struct.error) as exc:
        raise CaptionInputError(f"{path}: unreadable audio ({exc})") from None
    if samples.size == 0:
        raise CaptionInputError(f"{path}: empty audio (no samples)")
    if samples.dtype.kind == "f":
        audio = samples.astype(np.float32)
    elif samples.dtype.kind in "iu":
        half_scale = float(2 ** (8 * samples.dtype.itemsize - 1))
        offset = half_scale if samples.dtype.kind == "u" else 0.0
        audio = ((samples.astype(np.float64) - offset) / half_scale).astype(np.float32)
    else:
        raise CaptionInputError(f"{path}: unsupported sample type {samples.dtype}")
    if audio.ndim == 2:
        audio = audio.mean(axis=1)
    if rate != sampling_rate:
        divisor = math.gcd(int(rate), sampling_rate)
        audio = resample_poly(audio, sampling_rate // divisor, int(rate) // divisor).astype(np.float32)
    return audio


class Qwen2AudioCaptioner(LoadedModel):
    """Qwen2-Audio (`Qwen2AudioForConditionalGeneration`) captions with greedy decoding in left-padded batches.

    The prompt is the base model's captioning format, `<|audio_bos|><|AUDIO|><|audio_eos|>{prompt}`, with the prompt
    Qwen2-Audio-7B documents for captions ("Generate the caption in English:"), not a chat template. The base model
    (Qwen/Qwen2-Audio-7B) is the captioner this backend targets, and a chat template would not tell it from the
    Instruct model: every Qwen2-Audio processor has the Instruct (ChatML) template, transformers supplying it where a
    checkpoint saves none.

    The processor pads (or cuts) every clip's features to 30 s and expands `<|AUDIO|>` to one token per 40 ms of the
    clip's own audio, so prompts differ in length only by their audio; left padding keeps every prompt's end in the
    last column and `generate` derives positions from the attention mask, so in float32 a caption does not depend on
    its batch.
    """

    backend = "qwen2-audio"

    def __init__(self, model, processor, resolved: ResolvedModel, *, prompt: str, max_new_tokens: int):
        self.model = model
        self.processor = processor
        prepare_tokenizer_for_generation(processor.tokenizer)
        self.resolved = resolved
        self.prompt = prompt
        self.max_new_tokens = max_new_tokens

    @classmethod
    def load(
        cls,
        ref: ModelRef,
        workdir: str | Path,
        *,
        prompt: str = "Generate the caption in English:",
        max_new_tokens: int = 48,
    ) -> Qwen2AudioCaptioner:
        """Resolve `ref` (Hub id at a revision, local directory or `tiny-random:qwen2-audio`) and load it."""
        from transformers import AutoProcessor, Qwen2AudioForConditionalGeneration

        loaded = load_pretrained(ref, workdir, ROLE, Qwen2AudioForConditionalGeneration, AutoProcessor)
        return cls(loaded.model, loaded.processor, loaded.resolved, prompt=prompt, max_new_tokens=max_new_tokens)

    @property
    def sampling_rate(self) -> int:
        return self.processor.feature_extractor.sampling_rate

    @property
    def text(self) -> str:
        """The exact text before the processor expands `<|AUDIO|>`: the audio first, then the instruction."""
        return PROMPT_FORMAT.format(prompt=self.prompt)

    def settings(self) -> dict:
        return {
            "prompt": self.prompt,
            "prompt_format": PROMPT_FORMAT,
            "max_new_tokens": self.max_new_tokens,
            "dtype": str(self.model.dtype).removeprefix("torch."),
            "device": str(self.model.device),
            "decoding": "greedy",
            "sampling_rate": self.sampling_rate,
        }

    def caption(self, audio_paths: list[Path]) -> list[str]:
        """One caption per clip, in order, from one batched greedy `generate`: new text only, special tokens dropped."""
        import torch

        clips = [read_audio(path, self.sampling_rate) for path in audio_paths]
        if not clips:
            return []
        inputs = self.processor(
            text=[self.text] * len(clips),
            audio=clips,
            sampling_rate=self.sampling_rate,
            padding=True,
            return_tensors="pt",
        ).to(self.model.device, dtype=self.model.dtype)  # casts the float features only, not the token ids
        tokenizer = self.processor.tokenizer
        with torch.inference_mode():
            output = self.model.generate(
                **inputs,
                do_sample=False,
                num_beams=1,
                max_new_tokens=self.max_new_tokens,
                pad_token_id=tokenizer.pad_token_id,
            )
        new_tokens = output[:, inputs["input_ids"].shape[1] :]
        return [text.strip() for text in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]


def _gama_interpreter(python: Path) -> Path | None:
    """GAMA's interpreter as configured: a path, or a bare command name looked up on PATH."""
    if len(python.parts) == 1:
        found = shutil.which(str(python))
        return Path(found) if found else None
    return python if python.is_file() else None


def _gama_checkpoint(ref: ModelRef) -> Path:
    """The checkpoint file `ref.model_id` names: `pytorch_model.bin` itself, or the checkpoint directory holding it."""
    checkpoint = Path(ref.model_id).expanduser()
    return checkpoint / GAMA_CHECKPOINT_FILE if checkpoint.is_dir() else checkpoint


def gama_checkpoint_revision(ref: ModelRef) -> str:
    """The revision of the GAMA checkpoint `ref.model_id` names: a hash of the file's content."""
    checkpoint = _gama_checkpoint(ref)
    if not checkpoint.is_file():
        raise ModelError(f"GAMA checkpoint (models.audio_captioner.model_id) not found: {checkpoint}")
    return file_revision(checkpoint)


class GamaCaptioner(LoadedModel):
    """GAMA captions computed by the authors' code, in a driver process running GAMA's environment.

    The driver loads the model once (at `load`) and captions each `caption` call's clips one by one, as the authors'
    inference scripts do; `close` (or leaving a `with` block, or garbage collection) ends it.
    """

    backend = "gama"

    def __init__(
        self,
        process: subprocess.Popen,
        stderr_log,
        resolved: ResolvedModel,
        ref: ModelRef,
        gama: GamaConfig,
        *,
        max_new_tokens: int,
    ):
        self.process = process
        self.stderr_log = stderr_log
        self.resolved = resolved
        self.ref = ref
        self.gama = gama
        self.max_new_tokens = max_new_tokens
        self._finalizer = weakref.finalize(self, _stop_driver, process, stderr_log)

    @classmethod
    def load(cls, ref: ModelRef, workdir: str | Path, gama: GamaConfig, *, max_new_tokens: int = 48) -> GamaCaptioner:
        """Check GAMA's files, start the driver in GAMA's environment and wait until it has loaded the model.

        `ref.model_id` is the GAMA checkpoint (`pytorch_model.bin`, or the checkpoint directory holding it); its
        revision is the file's content hash. `workdir` is unused: nothing is built or cached for GAMA.
        """
        checkpoint = _gama_checkpoint(ref)
        python = _gama_interpreter(gama.python)
        missing = [
            f"{what} {path}"
            for what, path, present in (
                (
                    "checkout with utils/prompter.py (captions.audio.gama.repo)",
                    gama.repo,
                    (gama.repo / "utils" / "prompter.py").is_file(),
                ),
                ("base model directory (captions.audio.gama.base_model)", gama.base_model, gama.base_model.is_dir()),
                ("checkpoint (models.audio_captioner.model_id)", checkpoint, checkpoint.is_file()),
                ("Python interpreter (captions.audio.gama.python)", gama.python, python is not None),
            )
            if not present
        ]
        if missing:
            raise ModelError(
                f"GAMA is not installed where configured; missing: {'; '.join(missing)}. "
                f"To use backend gama, {GAMA_INSTALL_HINT}"
            )
        resolved = ResolvedModel(ref.model_id, checkpoint, gama_checkpoint_revision(ref))
        command = [
            str(python),
            str(GAMA_DRIVER),
            "--repo",
            str(gama.repo.resolve()),
            "--base-model",
            str(gama.base_model.resolve()),
            "--checkpoint",
            str(checkpoint.resolve()),
            "--device",
            ref.device,
            "--dtype",
            ref.dtype,
        ]
        stderr_log = tempfile.TemporaryFile()
        process = subprocess.Popen(
            command,
            cwd=gama.repo,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr_log,
            text=True,
            encoding="utf-8",
        )
        captioner = cls(process, stderr_log, resolved, ref, gama, max_new_tokens=max_new_tokens)
        try:
            captioner._read_reply("starting")
        except BaseException:
            captioner.close()
            raise
        return captioner

    def settings(self) -> dict:
        return {
            "prompt": self.gama.prompt,
            "prompt_template": "alpaca_short",
            "max_new_tokens": self.max_new_tokens,
            "dtype": self.ref.dtype,
            "device": self.ref.device,
            "decoding": "greedy",
            "sampling_rate": GAMA_SAMPLING_RATE,
            "base_model": str(self.gama.base_model),
            "repo": str(self.gama.repo),
        }

    def caption(self, audio_paths: list[Path]) -> list[str]:
        """One caption per clip, in order; the clips are checked here first, then captioned by the driver."""
        for path in audio_paths:
            read_audio(path, GAMA_SAMPLING_RATE)
        if not audio_paths:
            return []
        request = {
            "audio_paths": [str(Path(path).resolve()) for path in audio_paths],
            "prompt": self.gama.prompt,
            "max_new_tokens": self.max_new_tokens,
        }
        try:
            self.process.stdin.write(json.dumps(request) + "\n")
            self.process.stdin.flush()
        except (BrokenPipeError, OSError, ValueError):
            raise self._failure("captioning", "the GAMA driver is not running") from None
        captions = self._read_reply("captioning")["captions"]
        if len(captions) != len(audio_paths):
            raise self._failure("captioning", f"{len(captions)} captions for {len(audio_paths)} clips")
        return captions

    def close(self) -> None:
        """End the driver (it exits at the end of its input) and drop its log."""
        self._finalizer()

    def _read_reply(self, doing: str) -> dict:
        line = self.process.stdout.readline()
        if not line:
            raise self._failure(doing, f"the GAMA driver exited (status {self.process.wait()})")
        try:
            reply = json.loads(line)
        except json.JSONDecodeError:
            raise self._failure(doing, f"the GAMA driver wrote {line.strip()[:200]!r}, not JSON") from None
        if "error" in reply:
            raise self._failure(doing, reply["error"])
        return reply

    def _failure(self, doing: str, reason: str) -> ModelError:
        log = self.stderr_log
        if log.closed:
            return ModelError(f"GAMA failed while {doing}: {reason}")
        size = os.fstat(log.fileno()).st_size
        start = max(0, size - _STDERR_TAIL_CHARS)
        tail = os.pread(log.fileno(), size - start, start).decode("utf-8", errors="replace").strip()
        stderr = f"\n--- GAMA driver stderr (last {_STDERR_TAIL_CHARS} bytes) ---\n{tail}" if tail else ""
        return ModelError(f"GAMA failed while {doing}: {reason}{stderr}")


def _stop_driver(process: subprocess.Popen, stderr_log) -> None:
    """Close the driver's input (it exits at end of input), wait a little, kill it if it is still running."""
    try:
        process.stdin.close()
    except OSError:
        pass
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    process.stdout.close()
    stderr_log.close()


def load_audio_captioner(ref: ModelRef | None, workdir: str | Path, cfg: AudioCaptionConfig):
    """The captioner `cfg.backend` names: transformers → `Qwen2AudioCaptioner`, gama → `GamaCaptioner`."""
    if ref is None:
        raise ModelError(f"models.{ROLE} is not configured")
    if cfg.backend == "gama":
        if cfg.gama is None:
            raise ModelError(f"captions.audio.gama is not configured, and backend gama needs it: {GAMA_INSTALL_HINT}")
        return GamaCaptioner.load(ref, workdir, cfg.gama, max_new_tokens=cfg.max_new_tokens)
    return Qwen2AudioCaptioner.load(ref, workdir, prompt=cfg.prompt, max_new_tokens=cfg.max_new_tokens)
