"""Caption-stage benchmarks: items/s batched against one at a time, per backend, measured side by side in one run.

Each backend runs through the stage's own batching (`run_in_batches` over the backend's `caption`) on the same items
at batch size 1 and at `--batch` (default 8); the report gives items/s, the speed-up of the batched run and whether
both gave the same texts (greedy decoding: they should, in float32).

1. Tiny random models on the CPU, float32 (`tiny-random:blip2`, `tiny-random:qwen2-audio`, `tiny-random:mistral`):
   BLIP-2 on images, Qwen2-Audio on 10-s clips, the object-phrase LLM on caption pairs with the paper's prompt.
2. With `--gpu` (where CUDA exists): the real-size architectures with random weights, built from the published
   configs' values written below — BLIP-2 OPT-2.7b (ViT-g 224², 32 query tokens), Qwen2-Audio-7B (Whisper-large
   encoder + 7B decoder), Mistral-7B-Instruct-v0.2 — in bfloat16. Random weights rarely emit an end token, so every
   answer runs to `max_new_tokens`: the figures are for full-length answers. `--layers N` builds them with N layers
   per stack instead (a quick check of the code path, e.g. `--gpu --device cpu --layers 1`).

Run by hand:  python benchmarks/captions.py [--items N] [--batch B] [--repeats R] [--max-new-tokens T]
              python benchmarks/captions.py --gpu [--gpu-items N] [--layers N] [--device cuda]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here downloads; set before huggingface_hub is imported

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from scipy.io import wavfile  # noqa: E402

from is4.config import ModelRef  # noqa: E402
from is4.pipeline.captions.audio import Qwen2AudioCaptioner  # noqa: E402
from is4.pipeline.captions.image import Blip2Captioner  # noqa: E402
from is4.pipeline.captions.object_phrase import TransformersPhraser  # noqa: E402
from is4.pipeline.common.batching import run_in_batches  # noqa: E402
from is4.pipeline.common.llm import ChatLM  # noqa: E402
from is4.pipeline.common.models import ResolvedModel, resolve_model  # noqa: E402

SR = 16000
CAPTION_PAIRS = (
    ("a man playing a cello on a stage", "a cello is being played with a bow"),
    ("a dog sitting on the grass in a park", "a dog barks several times while birds chirp"),
    ("two people cooking in a kitchen", "water runs and dishes clatter"),
    ("a red car on a road with trees behind it", "an engine revs and accelerates"),
)


def log(message: str) -> None:
    """Progress on stderr, so stdout holds only the report."""
    print(f"  .. {message}", file=sys.stderr, flush=True)


def make_inputs(root: Path, n: int) -> tuple[list[Path], list[Path], list[tuple[str, str]]]:
    """n images (224×224, different colours and a bar), n 10-s clips (different tones in noise), n caption pairs."""
    rng = np.random.default_rng(0)
    images, clips = [], []
    t = np.arange(10 * SR) / SR
    for k in range(n):
        pixels = np.full((224, 224, 3), rng.integers(0, 256, 3), np.uint8)
        pixels[80 + k % 64 : 120 + k % 64, 40:184] = rng.integers(0, 256, 3)
        images.append(root / f"image_{k:03d}.png")
        Image.fromarray(pixels).save(images[-1])
        audio = 0.3 * np.sin(2 * np.pi * (220 + 37 * k) * t) + 0.05 * rng.standard_normal(t.size)
        clips.append(root / f"clip_{k:03d}.wav")
        wavfile.write(clips[-1], SR, (audio * 32767).astype(np.int16))
    pairs = [CAPTION_PAIRS[k % len(CAPTION_PAIRS)] for k in range(n)]
    return images, clips, pairs


@dataclass
class Result:
    backend: str
    items: int
    single_s: float
    batched_s: float
    batch: int
    same_text: bool

    def line(self) -> str:
        single, batched = self.items / self.single_s, self.items / self.batched_s
        return (
            f"  {self.backend:<34} {single:>10.2f} {batched:>12.2f} {batched / single:>9.2f}x   "
            f"{'yes' if self.same_text else 'NO'}"
        )


def measure(name: str, captioner, inputs: list, batch: int, repeats: int, device: torch.device) -> Result:
    """Median wall time of captioning all inputs one at a time and in batches of `batch` (after one warm-up each)."""

    def run(size: int) -> tuple[float, list]:
        start = time.perf_counter()
        outcome = run_in_batches(inputs, captioner.caption, size)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if outcome.failed:
            raise RuntimeError(f"{name}: {len(outcome.failed)} items failed: {outcome.errors[outcome.failed[0]]}")
        return time.perf_counter() - start, outcome.outputs

    timings = {}
    texts = {}
    for size in (1, batch):
        log(f"{name}: batch {size} warm-up")
        run_in_batches(inputs[:size], captioner.caption, size)
        times = []
        for r in range(repeats):
            log(f"{name}: batch {size}, repeat {r + 1}/{repeats}")
            seconds, texts[size] = run(size)
            times.append(seconds)
        timings[size] = statistics.median(times)
    return Result(name, len(inputs), timings[1], timings[batch], batch, texts[1] == texts[batch])


def report(title: str, results: list[Result], batch: int) -> list[str]:
    header = f"  {'backend':<34} {'items/s b=1':>10} {f'items/s b={batch}':>12} {'speed-up':>10}   same text"
    return [title, header, *(r.line() for r in results)]


# --------------------------------------------------------------------------------------------------------------
# 1. Tiny models on the CPU
# --------------------------------------------------------------------------------------------------------------


def bench_tiny(args: argparse.Namespace) -> list[str]:
    device = torch.device("cpu")
    with tempfile.TemporaryDirectory(prefix="is4-bench-captions-") as tmp:
        work = Path(tmp)
        images, clips, pairs = make_inputs(work, args.items)
        tokens = args.max_new_tokens
        log("building the tiny models")
        blip2 = Blip2Captioner.load(ModelRef(model_id="tiny-random:blip2"), work, max_new_tokens=tokens)
        qwen = Qwen2AudioCaptioner.load(ModelRef(model_id="tiny-random:qwen2-audio"), work, max_new_tokens=tokens)
        phraser = TransformersPhraser.load(ModelRef(model_id="tiny-random:mistral"), work, max_new_tokens=tokens)
        results = [
            measure("tiny BLIP-2 (images)", blip2, images, args.batch, args.repeats, device),
            measure("tiny Qwen2-Audio (10-s clips)", qwen, clips, args.batch, args.repeats, device),
            measure("tiny Mistral (object phrase)", phraser, pairs, args.batch, args.repeats, device),
        ]
    title = (
        f"tiny random models, CPU float32, {args.items} items, {tokens} new tokens, median of {args.repeats}, "
        f"{torch.get_num_threads()} torch threads"
    )
    return report(title, results, args.batch)


# --------------------------------------------------------------------------------------------------------------
# 2. Real-size architectures with random weights
# --------------------------------------------------------------------------------------------------------------


def _random(model_cls, config, device: torch.device, dtype: torch.dtype):
    """A model of `config` with random weights, built directly on `device` in `dtype`."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        torch.manual_seed(0)
        with torch.device(device):
            return model_cls(config).eval()
    finally:
        torch.set_default_dtype(previous)


def blip2_opt_2_7b(work: Path, device: torch.device, dtype: torch.dtype, layers: int | None, tokens: int):
    """Salesforce/blip2-opt-2.7b's architecture (config.json values), with the tiny model's tokenizer."""
    from transformers import (
        Blip2Config,
        Blip2ForConditionalGeneration,
        Blip2Processor,
        Blip2QFormerConfig,
        Blip2VisionConfig,
        OPTConfig,
    )

    tiny = resolve_model(ModelRef(model_id="tiny-random:blip2"), work, "image_captioner")
    processor = Blip2Processor.from_pretrained(tiny.path)
    processor.num_query_tokens = 32
    processor.image_processor.size = {"height": 224, "width": 224}
    image_token = processor.tokenizer.convert_tokens_to_ids(processor.image_token.content)
    config = Blip2Config(
        vision_config=Blip2VisionConfig(
            hidden_size=1408,
            intermediate_size=6144,
            num_hidden_layers=layers or 39,
            num_attention_heads=16,
            image_size=224,
            patch_size=14,
        ).to_dict(),
        qformer_config=Blip2QFormerConfig(
            hidden_size=768,
            num_hidden_layers=layers or 12,
            num_attention_heads=12,
            intermediate_size=3072,
            encoder_hidden_size=1408,
        ).to_dict(),
        text_config=OPTConfig(
            vocab_size=50272,
            hidden_size=2560,
            num_hidden_layers=layers or 32,
            ffn_dim=10240,
            num_attention_heads=32,
            max_position_embeddings=2048,
            word_embed_proj_dim=2560,
            pad_token_id=1,
            bos_token_id=2,
            eos_token_id=2,
        ).to_dict(),
        num_query_tokens=32,
        image_token_index=image_token,
    )
    model = _random(Blip2ForConditionalGeneration, config, device, dtype)
    resolved = ResolvedModel("random:blip2-opt-2.7b", tiny.path, "random")
    return Blip2Captioner(model, processor, resolved, max_new_tokens=tokens)


def qwen2_audio_7b(work: Path, device: torch.device, dtype: torch.dtype, layers: int | None, tokens: int):
    """Qwen/Qwen2-Audio-7B's architecture (config.json values), with the tiny model's processor."""
    from transformers import AutoProcessor, Qwen2AudioConfig, Qwen2AudioForConditionalGeneration

    tiny = resolve_model(ModelRef(model_id="tiny-random:qwen2-audio"), work, "audio_captioner")
    processor = AutoProcessor.from_pretrained(tiny.path)
    config = Qwen2AudioConfig(
        audio_config={
            "model_type": "qwen2_audio_encoder",
            "d_model": 1280,
            "encoder_layers": layers or 32,
            "encoder_attention_heads": 20,
            "encoder_ffn_dim": 5120,
            "num_mel_bins": 128,
            "max_source_positions": 1500,
        },
        text_config={
            "model_type": "qwen2",
            "vocab_size": 156032,
            "hidden_size": 4096,
            "intermediate_size": 11008,
            "num_hidden_layers": layers or 32,
            "num_attention_heads": 32,
            "num_key_value_heads": 32,
            "max_position_embeddings": 8192,
            "rope_theta": 10000.0,
        },
        audio_token_index=processor.tokenizer.convert_tokens_to_ids("<|AUDIO|>"),
    )
    model = _random(Qwen2AudioForConditionalGeneration, config, device, dtype)
    resolved = ResolvedModel("random:qwen2-audio-7b", tiny.path, "random")
    return Qwen2AudioCaptioner(
        model, processor, resolved, prompt="Generate the caption in English:", max_new_tokens=tokens
    )


def mistral_7b(work: Path, device: torch.device, dtype: torch.dtype, layers: int | None, tokens: int):
    """mistralai/Mistral-7B-Instruct-v0.2's architecture (config.json values), with the tiny model's tokenizer."""
    from transformers import AutoTokenizer, MistralConfig, MistralForCausalLM

    tiny = resolve_model(ModelRef(model_id="tiny-random:mistral"), work, "object_phrase")
    tokenizer = AutoTokenizer.from_pretrained(tiny.path)
    config = MistralConfig(
        vocab_size=32000,
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=layers or 32,
        num_attention_heads=32,
        num_key_value_heads=8,
        max_position_embeddings=32768,
        rope_theta=1e6,
        sliding_window=None,
        bos_token_id=1,
        eos_token_id=2,
    )
    model = _random(MistralForCausalLM, config, device, dtype)
    resolved = ResolvedModel("random:mistral-7b-instruct-v0.2", tiny.path, "random")
    ref = ModelRef(model_id=resolved.model_id, dtype=str(dtype).removeprefix("torch."), device=str(device))
    return TransformersPhraser(ChatLM(model, tokenizer, resolved), ref, max_new_tokens=tokens)


def bench_real_size(args: argparse.Namespace) -> list[str]:
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        return ["--gpu: no CUDA device here; the real-size part is skipped"]
    dtype = torch.bfloat16
    lines = [f"device        : {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}"]
    results = []
    with tempfile.TemporaryDirectory(prefix="is4-bench-captions-gpu-") as tmp:
        work = Path(tmp)
        images, clips, pairs = make_inputs(work, args.gpu_items)
        for name, build, inputs in (
            ("BLIP-2 OPT-2.7b (images)", blip2_opt_2_7b, images),
            ("Qwen2-Audio-7B (10-s clips)", qwen2_audio_7b, clips),
            ("Mistral-7B (object phrase)", mistral_7b, pairs),
        ):
            log(f"building {name} with random weights")
            captioner = build(work, device, dtype, args.layers, args.max_new_tokens)
            results.append(measure(name, captioner, inputs, args.batch, args.repeats, device))
            if device.type == "cuda":
                results[-1].backend += f", peak {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB"
                torch.cuda.reset_peak_memory_stats(device)
            del captioner
            if device.type == "cuda":
                torch.cuda.empty_cache()
    layers = f"{args.layers} layer(s) per stack" if args.layers else "all layers"
    title = (
        f"real-size architectures, random weights, {device} bfloat16, {layers}, {args.gpu_items} items, "
        f"{args.max_new_tokens} new tokens, median of {args.repeats}"
    )
    return lines + report(title, results, args.batch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=16)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--gpu", action="store_true", help="also the real-size architectures (random weights)")
    parser.add_argument("--gpu-items", type=int, default=32)
    parser.add_argument("--layers", type=int, default=None, help="layers per stack of the real-size models")
    parser.add_argument("--device", default="cuda", help="device of the real-size part")
    args = parser.parse_args()
    lines = [f"torch         : {torch.__version__}", ""]
    lines += bench_tiny(args)
    if args.gpu:
        lines += ["", *bench_real_size(args)]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
