"""Caption wav files with GAMA (https://github.com/Sreyan88/GAMA) through the authors' code, in GAMA's environment.

`GamaCaptioner` runs `<GAMA python> gama_driver.py --repo R --base-model B --checkpoint C --device D --dtype T` with
the GAMA checkout as working directory (the authors' `Prompter` reads `templates/` relative to it). This file imports
nothing from IS4: it runs under GAMA's interpreter, with GAMA's patched transformers and peft.

Protocol, one JSON object per line. Once the model is loaded the driver writes `{"ready": true, "checkpoint_tensors":
n, "unexpected_keys": m}`, or `{"error": "..."}` and exits with status 1. Then, for each request read from stdin,
`{"audio_paths": [absolute paths], "prompt": "...", "max_new_tokens": n}`, it writes `{"captions": [...]}` (in order)
or `{"error": "..."}`. It exits at the end of stdin. Anything else written to stdout (the authors' prints included)
goes to stderr instead.

What it mirrors from the authors' inference scripts (`inference_gradio_gama.py`, `gama_inf_single_audio.py`):
`LlamaTokenizer` and GAMA's `LlamaForCausalLM` (audio encoder and Q-Former built in) from the base model directory
(`Llama-2-7b-chat-hf-qformer`), wrapped by `get_peft_model` in their LoRA config (r=8, alpha=16, q_proj/v_proj, no
dropout), the checkpoint loaded with `load_state_dict(strict=False)`, pad/bos/eos ids 0/1/2, the `alpaca_short` prompt
from `utils.prompter.Prompter`, their `load_audio` features (below) and `generate(input_ids=..., audio_input=...)`
one clip at a time. Differences: decoding is greedy (they sample at temperature 0.1, top-p 0.95) so captions are
reproducible, and only the new tokens are decoded, special tokens skipped (they slice the decoded string).
"""

from __future__ import annotations

import os
import sys

# Run as a script, this file's folder (IS4's `pipeline/`) heads sys.path, where names such as `models` or `evaluate`
# would shadow the packages of GAMA's environment.
if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
    del sys.path[0]

import argparse
import inspect
import json

SAMPLE_RATE = 16000
TARGET_FRAMES = 1024  # 10.24 s of 10-ms frames
FBANK_MEAN, FBANK_STD = -5.081, 4.4849  # GAMA's normalisation: (fbank + 5.081) / 4.4849
LORA = {
    "r": 8,
    "lora_alpha": 16,
    "target_modules": ["q_proj", "v_proj"],
    "lora_dropout": 0.0,
    "bias": "none",
    "task_type": "CAUSAL_LM",
}
INSTALL = (
    "install GAMA's environment as its README says: pip install -r requirements.txt; "
    "pip install -e hf-dev-train/transformers-main; pip install -e peft-main"
)


class DriverError(Exception):
    """A failure to report to `GamaCaptioner` as `{"error": ...}`."""


def load_fbank(path: str, torch, torchaudio):
    """GAMA's `load_audio`: Kaldi fbank (128 bins, 10-ms shift, Hanning) of the mean-removed 16-kHz waveform,
    zero-padded or cut to 1024 frames, then normalised; shape (1024, 128)."""
    waveform, sr = torchaudio.load(path)
    if sr != SAMPLE_RATE:
        waveform = torchaudio.functional.resample(waveform, sr, SAMPLE_RATE)
        sr = SAMPLE_RATE
    waveform = waveform - waveform.mean()
    fbank = torchaudio.compliance.kaldi.fbank(
        waveform,
        htk_compat=True,
        sample_frequency=sr,
        use_energy=False,
        window_type="hanning",
        num_mel_bins=128,
        dither=0.0,
        frame_shift=10,
    )
    missing = TARGET_FRAMES - fbank.shape[0]
    if missing > 0:
        fbank = torch.nn.ZeroPad2d((0, 0, 0, missing))(fbank)
    elif missing < 0:
        fbank = fbank[:TARGET_FRAMES, :]
    return (fbank - FBANK_MEAN) / FBANK_STD


class Gama:
    """GAMA's model, tokenizer and prompter, loaded as the authors' inference scripts load them."""

    def __init__(self, repo: str, base_model: str, checkpoint: str, device: str, dtype: str):
        sys.path.insert(0, repo)
        try:
            from utils.prompter import Prompter
        except ImportError as exc:
            raise DriverError(
                f"cannot import GAMA's utils.prompter from {repo} ({exc}); is it a checkout of "
                "https://github.com/Sreyan88/GAMA?"
            ) from None
        try:
            import peft
            import torch
            import torchaudio
            import transformers
        except ImportError as exc:
            raise DriverError(f"{sys.executable} lacks {exc.name or exc}: {INSTALL}") from None
        if "audio_input" not in inspect.signature(transformers.LlamaForCausalLM.forward).parameters:
            raise DriverError(
                f"the transformers of {sys.executable} ({transformers.__file__}) is not GAMA's patched "
                f"one (its LlamaForCausalLM takes no audio_input): {INSTALL}"
            )
        self.torch, self.torchaudio, self.transformers = torch, torchaudio, transformers
        self.device, self.dtype = torch.device(device), getattr(torch, dtype)
        self.prompter = Prompter("alpaca_short")
        self.tokenizer = transformers.LlamaTokenizer.from_pretrained(base_model)
        model = transformers.LlamaForCausalLM.from_pretrained(
            base_model, device_map={"": device}, torch_dtype=self.dtype
        )
        model = peft.get_peft_model(model, peft.LoraConfig(**LORA))
        state_dict = torch.load(checkpoint, map_location="cpu", weights_only=True)  # tensors only: no pickled code
        result = model.load_state_dict(state_dict, strict=False)
        self.checkpoint_tensors, self.unexpected_keys = len(state_dict), len(result.unexpected_keys)
        if state_dict and self.unexpected_keys == self.checkpoint_tensors:
            raise DriverError(
                f"none of the {self.checkpoint_tensors} tensors of {checkpoint} belong to GAMA's model "
                f"(e.g. {result.unexpected_keys[0]!r}); is it a GAMA checkpoint?"
            )
        # As the authors do ("unwind broken decapoda-research config"): pad = unk = 0, bos = 1, eos = 2.
        model.config.pad_token_id = self.tokenizer.pad_token_id = 0
        model.config.bos_token_id = 1
        model.config.eos_token_id = 2
        self.model = model.eval()

    def caption(self, audio_path: str, instruction: str, max_new_tokens: int) -> str:
        """GAMA's answer to `instruction` about one clip, greedy, without the prompt and special tokens."""
        torch = self.torch
        prompt = self.prompter.generate_prompt(instruction, None)
        input_ids = self.tokenizer(prompt, return_tensors="pt")["input_ids"].to(self.device)
        audio = load_fbank(audio_path, torch, self.torchaudio).unsqueeze(0).to(self.device, self.dtype)
        config = self.transformers.GenerationConfig(
            do_sample=False,
            num_beams=1,
            max_new_tokens=max_new_tokens,
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=0,
            num_return_sequences=1,
        )
        with torch.no_grad():
            output = self.model.generate(
                input_ids=input_ids,
                audio_input=audio,
                generation_config=config,
                return_dict_in_generate=True,
                max_new_tokens=max_new_tokens,
            )
        new_tokens = output.sequences[0][input_ids.shape[1] :]
        return self.tokenizer.decode(new_tokens, skip_special_tokens=True).strip()


def serve(gama: Gama, requests, reply) -> None:
    """Answer each JSON request line until the end of `requests`."""
    for line in requests:
        if not line.strip():
            continue
        try:
            request = json.loads(line)
            captions = [
                gama.caption(path, request["prompt"], int(request["max_new_tokens"])) for path in request["audio_paths"]
            ]
        except Exception as exc:  # the authors' code raises anything; report it and keep serving
            reply({"error": f"{exc.__class__.__name__}: {exc}"})
        else:
            reply({"captions": captions})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", required=True)
    parser.add_argument("--base-model", required=True)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    args = parser.parse_args(argv)
    # Keep stdout for the protocol alone: file descriptor 1 (prints, C extensions) now goes to stderr.
    protocol = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    def reply(message: dict) -> None:
        protocol.write(json.dumps(message) + "\n")
        protocol.flush()

    try:
        gama = Gama(args.repo, args.base_model, args.checkpoint, args.device, args.dtype)
    except Exception as exc:
        message = str(exc) if isinstance(exc, DriverError) else f"{exc.__class__.__name__}: {exc}"
        reply({"error": f"loading GAMA failed: {message}"})
        return 1
    reply({"ready": True, "checkpoint_tensors": gama.checkpoint_tensors, "unexpected_keys": gama.unexpected_keys})
    serve(gama, sys.stdin, reply)
    return 0


if __name__ == "__main__":
    sys.exit(main())
