"""SAM refinement latency: one click on the cached image embedding against a full forward pass, in one run.

The real SAM architectures (ViT-B; ViT-H with `--vit-h`) are built from their `SamConfig` values (written below,
as in the released checkpoints) with random weights, so nothing is downloaded; latency does not depend on the
weight values. For each architecture, on one synthetic image:

- full pass: preprocessing (resize to 1024, normalise, pad), vision encoder, prompt encoder, mask decoder and
  mask post-processing — what every click would cost without a cached embedding;
- cached click: `SamBackend.predict` with the embedding in memory (prompt encoder + mask decoder +
  post-processing) — what a refinement click costs in the annotate stage;
- disk click: the same from a fresh backend whose embedding comes from `WORK/state/sam-embeddings` (a click in a
  new process, e.g. after a restart of the review session).

Each figure is the median of `--repeats` runs after one warm-up. The click prompt is a box and two clicks (one
positive, one negative), single-mask output, as `refine_instance` asks for several clicks.

Run by hand:  python benchmarks/sam.py [--vit-h] [--size 512] [--repeats 5] [--device cpu] [--threads N]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here downloads

import numpy as np  # noqa: E402
import torch  # noqa: E402

from is4.annotation.sam import SamBackend  # noqa: E402

# Vision encoder sizes of the released checkpoints (facebook/sam-vit-base, -huge); the prompt encoder and the mask
# decoder are the same for all sizes (transformers' defaults: width 256, two-way transformer of depth 2).
ARCHS = {
    "vit-b": {
        "hidden_size": 768,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "global_attn_indexes": [2, 5, 8, 11],
    },
    "vit-h": {
        "hidden_size": 1280,
        "num_hidden_layers": 32,
        "num_attention_heads": 16,
        "global_attn_indexes": [7, 15, 23, 31],
    },
}


def log(message: str) -> None:
    print(f"  .. {message}", file=sys.stderr, flush=True)


def build(arch: str, device: torch.device):
    from transformers import SamConfig, SamImageProcessorPil, SamModel, SamProcessor, SamVisionConfig

    torch.manual_seed(0)
    vision = SamVisionConfig(
        **ARCHS[arch],
        output_channels=256,
        image_size=1024,
        patch_size=16,
        window_size=14,
        mlp_ratio=4.0,
        num_pos_feats=128,
    )
    model = SamModel(SamConfig(vision_config=vision.to_dict())).to(device).eval()
    return model, SamProcessor(image_processor=SamImageProcessorPil())


def timed(fn, repeats: int, sync) -> float:
    fn()  # warm-up
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench(arch: str, size: int, repeats: int, device: torch.device, work: Path) -> dict:
    from PIL import Image

    log(f"{arch}: building with random weights")
    model, processor = build(arch, device)
    params = sum(p.numel() for p in model.parameters())
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, size=(size, size, 3), dtype=np.uint8))
    box = [size * 0.2, size * 0.25, size * 0.7, size * 0.8]
    points = [(size * 0.45, size * 0.5, 1), (size * 0.3, size * 0.35, 0)]
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def full_pass():
        inputs = processor(
            images=image,
            input_boxes=[[box]],
            input_points=[[[p[:2] for p in points]]],
            input_labels=[[[p[2] for p in points]]],
            return_tensors="pt",
        )
        with torch.inference_mode():
            out = model(
                pixel_values=inputs["pixel_values"].to(device),
                input_boxes=inputs["input_boxes"].float().to(device),
                input_points=inputs["input_points"].float().to(device),
                input_labels=inputs["input_labels"].to(device),
                multimask_output=False,
            )
        processor.post_process_masks(
            out.pred_masks.float().cpu(), inputs["original_sizes"], inputs["reshaped_input_sizes"]
        )

    def backend(cache_size: int = 4) -> SamBackend:
        return SamBackend(
            model,
            processor,
            model_id=f"random:{arch}",
            revision="random",
            workdir=work,
            cache_size=cache_size,
            device=device,
            dtype=torch.float32,
        )

    sha = hashlib.sha256(f"bench-{arch}-{size}".encode()).hexdigest()
    warm = backend()

    def click():
        warm.predict("bench", image, sha, box=box, points=points, multimask=False)

    def disk_click():
        backend().predict("bench", image, sha, box=box, points=points, multimask=False)

    log(f"{arch}: full pass x{repeats + 1}")
    full = timed(full_pass, repeats, sync)
    start = time.perf_counter()
    click()  # computes and stores the embedding
    sync()
    first = time.perf_counter() - start
    log(f"{arch}: cached clicks x{repeats + 1}")
    cached = timed(click, repeats, sync)
    log(f"{arch}: disk-cache clicks x{repeats + 1}")
    disk = timed(disk_click, repeats, sync)
    return {"arch": arch, "params": params, "full": full, "first": first, "cached": cached, "disk": disk}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--vit-h", action="store_true", help="also measure the ViT-H architecture (636M params)")
    parser.add_argument("--size", type=int, default=512, help="side of the square test image (SD output: 512)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    archs = ["vit-b"] + (["vit-h"] if args.vit_h else [])
    with tempfile.TemporaryDirectory(prefix="is4-sam-bench-") as tmp:
        results = [bench(a, args.size, args.repeats, device, Path(tmp)) for a in archs]

    import transformers

    print(
        f"SAM refinement latency — {args.size}×{args.size} image, box + 2 clicks, single mask, float32, "
        f"median of {args.repeats}"
    )
    print(
        f"device {device}, torch {torch.__version__} ({torch.get_num_threads()} threads), transformers "
        f"{transformers.__version__}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"
    )
    print()
    header = (
        f"{'arch':<6} {'params':>8} {'full pass':>11} {'1st click':>11} {'cached click':>13} "
        f"{'disk click':>11} {'full/cached':>12}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        print(
            f"{r['arch']:<6} {r['params'] / 1e6:>7.1f}M {r['full'] * 1e3:>9.1f}ms {r['first'] * 1e3:>9.1f}ms "
            f"{r['cached'] * 1e3:>11.1f}ms {r['disk'] * 1e3:>9.1f}ms {r['full'] / r['cached']:>11.1f}×"
        )
    print()
    print("full pass: preprocess + vision encoder + prompt encoder + mask decoder + post-process (no cache);")
    print("1st click: the first SamBackend.predict of the image (encoder run + embedding saved to disk);")
    print("cached click: embedding in memory; disk click: fresh backend, embedding loaded from disk.")


if __name__ == "__main__":
    main()
