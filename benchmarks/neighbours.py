"""Neighbours-stage benchmarks, measured in one run, extrapolated to VGGSound-144K.

1. Embedding clips/s per modality through the stage's own `embed`: the tiny random encoders, and with
   `--real-sizes` the real architectures with random weights (CLIP ViT-B/16 vision tower, AST base at 10 s),
   built from transformers' default configs (no download).
2. Exact top-k (k = 1000) over N random 512-d embeddings, `chunk` rows at a time, for two N: seconds and peak
   scratch memory; the top-k is O(N^2), so 144k is extrapolated from the larger N, and compared with the O(N^2)
   prediction from the smaller one (a check that the fit holds).

Run by hand:  python benchmarks/neighbours.py [--clips N] [--real-sizes] [--sizes 2000 8000]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

from is4.config import ModelRef
from is4.pipeline import neighbours as nb
from is4.pipeline.common.models import resolve_model
from is4.trainers import synthetic

TARGET = 144_000
K = 1000


def embed_rate(work: Path, modality: str, ref: ModelRef, files: list[Path], ids: list[str]) -> float:
    """Clips/s of `embed` (model load excluded)."""
    make = nb._image_encoder if modality == "image" else nb._audio_encoder
    encoder = make(ref, work)
    resolved = resolve_model(ref, work, f"neighbours_{modality}")
    t0 = time.perf_counter()
    nb.embed(work / "bench", modality, files, ids, lambda: encoder, resolved, 16)
    return len(files) / (time.perf_counter() - t0)


def _real_models(root: Path) -> tuple[ModelRef, ModelRef]:
    import torch
    from transformers import (
        ASTConfig,
        ASTFeatureExtractor,
        ASTModel,
        CLIPConfig,
        CLIPImageProcessor,
        CLIPModel,
        CLIPProcessor,
    )

    from is4.pipeline.common.tiny_models import tiny_clip_tokenizer

    torch.manual_seed(0)
    clip_dir, ast_dir = root / "clip-b16", root / "ast-base"
    CLIPModel(CLIPConfig(vision_config={"patch_size": 16, "image_size": 224})).save_pretrained(clip_dir)
    CLIPProcessor(image_processor=CLIPImageProcessor(), tokenizer=tiny_clip_tokenizer()).save_pretrained(clip_dir)
    ASTModel(ASTConfig()).save_pretrained(ast_dir)
    ASTFeatureExtractor().save_pretrained(ast_dir)
    return ModelRef(model_id=str(clip_dir)), ModelRef(model_id=str(ast_dir))


def topk_cost(n: int, chunk: int) -> tuple[float, float]:
    """(seconds, measured peak GiB of numpy allocations) of the exact top-k over n random 512-d rows."""
    emb = np.random.default_rng(0).standard_normal((n, 512)).astype(np.float32)
    tracemalloc.start()
    t0 = time.perf_counter()
    nb.top_k(emb, K, chunk)
    seconds = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return seconds, peak / 2**30


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=64)
    parser.add_argument("--real-sizes", action="store_true")
    parser.add_argument("--sizes", type=int, nargs=2, default=[2000, 8000])
    parser.add_argument("--chunk", type=int, default=1024)
    args = parser.parse_args()
    print(f"{os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        ids = synthetic.write_workdir(work, args.clips, size=224, seconds=10.0)
        files = {
            "image": [work / f"media/frames/{c}.jpg" for c in ids],
            "audio": [work / f"media/audio/{c}.wav" for c in ids],
        }
        refs = {"tiny": (ModelRef(model_id="tiny-random:clip"), ModelRef(model_id="tiny-random:ast"))}
        if args.real_sizes:
            refs["real sizes"] = _real_models(work / "real")
        for name, (image_ref, audio_ref) in refs.items():
            for modality, ref in (("image", image_ref), ("audio", audio_ref)):
                rate = embed_rate(work, modality, ref, files[modality], ids)
                print(
                    f"embed {modality:5s} ({name:10s}): {rate:8.1f} clips/s -> 144k clips in "
                    f"{TARGET / rate / 3600:7.2f} h"
                )
    small, large = args.sizes
    t_small, _ = topk_cost(small, args.chunk)
    t_large, mem = topk_cost(large, args.chunk)
    predicted = t_small * (large / small) ** 2
    print(
        f"top-{K} exact: N={small}: {t_small:.2f} s; N={large}: {t_large:.2f} s (O(N^2) from N={small} predicts "
        f"{predicted:.2f} s); measured peak {mem:.3f} GiB at chunk {args.chunk}"
    )
    t_target = t_large * (TARGET / large) ** 2
    # At a fixed chunk every large buffer (the chunk x N block and its sort copies, the (N, k) outputs) grows
    # linearly in N: the measured peak scales to 144k.
    print(
        f"144k clips, 2 modalities: top-k {2 * t_target / 3600:.2f} h, peak memory ~{mem * TARGET / large:.2f} GiB "
        f"at chunk {args.chunk}"
    )


if __name__ == "__main__":
    main()
