"""Generate-stage benchmarks: images/s by batch size, measured side by side in one run (no download needed).

1. The tiny random SD-1.x model (`tiny-random:stable-diffusion`) on the CPU, float32: batch sizes 1/4/8 through
   the stage's own `load_pipeline` and `generate_group`, with the speed-up over batch 1 and how many uint8 pixel
   values differ from the batch-1 images (float32 is not bitwise batch-invariant; that is why the stage fixes
   its batch groups).
2. With `--gpu` (where CUDA exists): the real SD-1.5 architecture (UNet 860M, VAE, CLIP ViT-L/14 text encoder)
   with random weights, built from the SD-1.5 config values written below, at 512×512 in float16 with SDPA
   attention (diffusers' default `AttnProcessor2_0`), batch sizes 1/4/8, without and with `torch.compile` of the
   UNet. The first call of each setting is a warm-up (for compile it includes compilation) and is reported apart.

Run by hand:  python benchmarks/generate.py [--images N] [--repeats R] [--size S] [--steps K]
              python benchmarks/generate.py --gpu [--gpu-steps K] [--gpu-images N]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here downloads; set before huggingface_hub is imported

import numpy as np  # noqa: E402
import torch  # noqa: E402

from is4.config import GenerateConfig, ModelRef  # noqa: E402
from is4.manifests.ids import derive_seed  # noqa: E402
from is4.pipeline.common.models import resolve_model  # noqa: E402
from is4.pipeline.common.tiny_models import tiny_clip_tokenizer  # noqa: E402
from is4.pipeline.images.generate import generate_group, load_pipeline, versions  # noqa: E402

BATCH_SIZES = (1, 4, 8)
PROMPTS = (
    "a photo of a dog and cello",
    "cat is next to acoustic guitar",
    "woman is playing a piano",
    "a photo of a alarm clock and baby",
)
NEGATIVE = "blurry, low quality, distorted, deformed, text, watermark"


def log(message: str) -> None:
    """Progress on stderr, so stdout holds only the report."""
    print(f"  .. {message}", file=sys.stderr, flush=True)


def rows(n: int) -> list[dict]:
    """n prompt rows with seeds derived from their ids, as the prompts stage makes them."""
    return [
        {
            "image_id": f"bench_{k:04d}",
            "prompt": PROMPTS[k % len(PROMPTS)],
            "negative_prompt": NEGATIVE,
            "seed": derive_seed(0, f"bench_{k:04d}"),
        }
        for k in range(n)
    ]


@dataclass
class Result:
    batch_size: int
    seconds: float  # median over repeats, for all images
    images: int
    warmup_s: float
    differing_pixels: int | None = None  # uint8 values that differ from the batch-1 images

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds


def run_all(pipe, items: list[dict], batch_size: int, cfg: GenerateConfig, device) -> np.ndarray:
    """Every row, in consecutive groups of `batch_size` (the stage's batch groups)."""
    out = []
    for k in range(0, len(items), batch_size):
        out.extend(img for img, _ in generate_group(pipe, items[k : k + batch_size], cfg, device))
    if device.type == "cuda":
        torch.cuda.synchronize()
    return np.stack(out)


def measure(pipe, items: list[dict], cfg: GenerateConfig, device, repeats: int, label: str) -> list[Result]:
    results: list[Result] = []
    reference = None
    for bs in BATCH_SIZES:
        log(f"{label}: batch size {bs} warm-up")
        start = time.perf_counter()
        run_all(pipe, items[:bs], bs, cfg, device)
        warmup = time.perf_counter() - start
        times, images = [], None
        for r in range(repeats):
            log(f"{label}: batch size {bs}, repeat {r + 1}/{repeats}")
            start = time.perf_counter()
            images = run_all(pipe, items, bs, cfg, device)
            times.append(time.perf_counter() - start)
        if reference is None:
            reference = images
        differing = int((images != reference).sum())
        results.append(Result(bs, statistics.median(times), len(items), warmup, differing))
    return results


def table(title: str, results: list[Result], pixels: int) -> list[str]:
    base = results[0].images_per_s
    lines = [
        title,
        f"  {'batch':>5}  {'images/s':>9}  {'speed-up vs 1':>13}  {'warm-up s':>9}  {'uint8 values != batch 1':>24}",
    ]
    for r in results:
        diff = f"{r.differing_pixels} of {pixels}" if r.differing_pixels is not None else "-"
        lines.append(
            f"  {r.batch_size:>5}  {r.images_per_s:>9.2f}  {r.images_per_s / base:>12.2f}x  "
            f"{r.warmup_s:>9.2f}  {diff:>24}"
        )
    return lines


# --------------------------------------------------------------------------------------------------------------
# 1. Tiny model on the CPU
# --------------------------------------------------------------------------------------------------------------


def bench_tiny(args: argparse.Namespace) -> list[str]:
    cfg = GenerateConfig(steps=args.steps, height=args.size, width=args.size, guidance_scale=7.5, safety_checker=False)
    device = torch.device("cpu")
    with tempfile.TemporaryDirectory(prefix="is4-bench-generate-") as tmp:
        log("building the tiny model")
        resolved = resolve_model(ModelRef(model_id="tiny-random:stable-diffusion"), Path(tmp), "image_generator")
        pipe = load_pipeline(resolved.path, cfg, device, torch.float32)
        items = rows(args.images)
        results = measure(pipe, items, cfg, device, args.repeats, "tiny cpu")
    pixels = args.images * args.size * args.size * 3
    title = (
        f"tiny SD-1.x, CPU float32, {args.size}x{args.size}, {args.steps} steps, {cfg.scheduler}, "
        f"{args.images} images, median of {args.repeats}, {torch.get_num_threads()} torch threads"
    )
    return table(title, results, pixels)


# --------------------------------------------------------------------------------------------------------------
# 2. SD-1.5 architecture with random weights on the GPU
# --------------------------------------------------------------------------------------------------------------

# stable-diffusion-v1-5: unet/config.json, vae/config.json, text_encoder/config.json, scheduler/scheduler_config.json
SD15_UNET = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=768,
    attention_head_dim=8,
    norm_num_groups=32,
    act_fn="silu",
    center_input_sample=False,
    downsample_padding=1,
    flip_sin_to_cos=True,
    freq_shift=0,
    mid_block_scale_factor=1,
    norm_eps=1e-5,
)
SD15_VAE = dict(
    in_channels=3,
    out_channels=3,
    latent_channels=4,
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    act_fn="silu",
    norm_num_groups=32,
    sample_size=512,
)
SD15_TEXT = dict(
    vocab_size=49408,
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    max_position_embeddings=77,
    hidden_act="quick_gelu",
    projection_dim=768,
    layer_norm_eps=1e-5,
    bos_token_id=0,
    eos_token_id=1,
    pad_token_id=1,
)
SD15_SCHEDULER = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    steps_offset=1,
    prediction_type="epsilon",
    timestep_spacing="leading",
)


def sd15_random_pipeline(device: torch.device, dtype: torch.dtype):
    """StableDiffusionPipeline with the SD-1.5 architecture and random weights, built on the GPU (no download)."""
    from diffusers import AutoencoderKL, DPMSolverMultistepScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    with torch.device(device):
        unet = UNet2DConditionModel(**SD15_UNET)
        vae = AutoencoderKL(**SD15_VAE)
        text_encoder = CLIPTextModel(CLIPTextConfig(**SD15_TEXT))
    # The character-level tiny tokenizer (ids < 600, valid for the 49408 vocabulary), padded to SD's 77 tokens so
    # the text encoder and cross-attention see SD-1.5's sequence length.
    tokenizer = tiny_clip_tokenizer()
    tokenizer.model_max_length = 77
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=DPMSolverMultistepScheduler(**SD15_SCHEDULER),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe = pipe.to(device=device, dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def bench_gpu(args: argparse.Namespace) -> list[str]:
    if not torch.cuda.is_available():
        return ["--gpu: no CUDA device here; GPU part skipped"]
    device = torch.device("cuda")
    cfg = GenerateConfig(steps=args.gpu_steps, height=512, width=512, guidance_scale=7.5, safety_checker=False)
    lines = [f"GPU           : {torch.cuda.get_device_name(device)}"]
    items = rows(args.gpu_images)
    for compiled in (False, True):
        log(f"building SD-1.5 (random weights), compile={compiled}")
        pipe = sd15_random_pipeline(device, torch.float16)
        processors = sorted({type(p).__name__ for p in pipe.unet.attn_processors.values()})
        if compiled:
            pipe.unet = torch.compile(pipe.unet)
        label = "compile" if compiled else "eager"
        results = measure(pipe, items, cfg, device, args.repeats, f"sd15 {label}")
        title = (
            f"SD-1.5 architecture, random weights, {device} float16, 512x512, {args.gpu_steps} steps, "
            f"{cfg.scheduler}, attention {'/'.join(processors)}, UNet {label}, {len(items)} images, "
            f"median of {args.repeats}"
        )
        lines += ["", *table(title, results, len(items) * 512 * 512 * 3)]
        del pipe
        torch.cuda.empty_cache()
    return lines


def machine_facts() -> list[str]:
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    v = versions()
    return [
        f"cpu count     : {os.cpu_count()} (usable by this process: {affinity})",
        f"python        : {platform.python_version()} on {platform.platform()}",
        f"versions      : torch {v['torch']}, diffusers {v['diffusers']}, transformers {v['transformers']}",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=16, help="tiny part: images per measurement (multiple of 8)")
    parser.add_argument("--size", type=int, default=64, help="tiny part: image height and width")
    parser.add_argument("--steps", type=int, default=10, help="tiny part: sampling steps")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--gpu", action="store_true", help="also run the SD-1.5 architecture on the GPU")
    parser.add_argument("--gpu-steps", type=int, default=25)
    parser.add_argument("--gpu-images", type=int, default=16)
    args = parser.parse_args()
    if args.images % max(BATCH_SIZES) or args.gpu_images % max(BATCH_SIZES) or args.repeats < 1:
        parser.error(f"--images and --gpu-images must be multiples of {max(BATCH_SIZES)}; --repeats at least 1")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()

    lines = ["generate benchmark", *machine_facts(), "", *bench_tiny(args)]
    if args.gpu:
        lines += ["", *bench_gpu(args)]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
