"""Trainer benchmarks, measured side by side in one run on synthetic colour-disc / tone data (no download).

1. The data loader alone (the alignment method's views: anchor + SimCLR frames, two spectrogram windows): samples/s
   with 1 against 2 loader workers (batch 24, the tiny CPU config).
2. A training step (loader + forward + backward + Adam through the engine, `is4 train`'s code): samples/s with 1
   against 2 loader workers.
3. With `--gpu` (where CUDA exists): the released sizes (two ResNet-18s of width 64, 224x224 frames, 257x299
   spectrograms, all 9 view pairs) at batch 128, a step on random tensors in AMP (fp16 autocast + GradScaler)
   against float32; the first steps are warm-up and not counted.

4. `--method acl`: tiny CPU ACL steps with the caption loss against without it; with `--gpu`, the real sizes
   (CLIPSeg ViT-B/16 at 352, BEATs over 10 s, batch 8 per GPU as in the code) in AMP against float32, an estimate of
   20 epochs of VGG-SS 144k on 2 GPUs, and the vision tower once per image (ours) against once per audio (the code).

5. `--method jsa`: the loader alone and whole training steps of JSA beside the alignment method's, same clips,
   batch, frame size and threads (tiny CPU trunks); with `--gpu`, the paper's sizes (two ResNet-18s, 224x224 frames,
   257x501 spectrograms, 5 slot iterations, decoders) at batch 256 in AMP against float32 (AdamW), and an estimate of
   an epoch of VGGSound 144k on one GPU.

Run by hand:  python benchmarks/train.py [--clips N] [--steps K]
              python benchmarks/train.py --gpu [--gpu-steps K] [--gpu-batch B]
              python benchmarks/train.py --method acl [--gpu]
              python benchmarks/train.py --method jsa [--gpu] [--gpu-batch 256]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from is4.config import AlignmentConfig, TrainConfig
from is4.trainers import synthetic
from is4.trainers.align import AlignModel
from is4.trainers.engine import GlobalBatchSampler, train
from is4.trainers.method import get_method


def _cfg(**over) -> TrainConfig:
    return TrainConfig.model_validate(synthetic.tiny_train_section(None, **over), strict=False)


def loader_rate(cfg: TrainConfig, work: Path, steps: int) -> float:
    """Samples/s of `cfg`'s method's loader alone."""
    method = get_method(cfg, 0)
    ds = method.train_dataset(work)
    sampler = GlobalBatchSampler(len(ds), cfg.batch_size, 1, 0, 0, steps)
    loader = DataLoader(ds, batch_sampler=sampler, num_workers=cfg.num_workers, collate_fn=method.collate)
    t0 = time.perf_counter()
    n = sum(len(next(iter(b.values()))) for b in loader)
    return n / (time.perf_counter() - t0)


def epoch_seconds(cfg: TrainConfig, work: Path, run_dir: Path) -> float:
    """Seconds of `cfg`'s training epoch through the engine (`is4 train`'s code), checkpoint time excluded."""
    return train(cfg, work, seed=0, run_dir=run_dir, progress=False)["last"]["seconds"]


def step_rate(work: Path, workers: int, steps: int) -> float:
    """Samples/s of whole training steps (one epoch of `steps` steps, checkpoint time excluded)."""
    with tempfile.TemporaryDirectory() as run:
        seconds = epoch_seconds(_cfg(num_workers=workers, epochs=1, max_steps_per_epoch=steps), work, Path(run) / "r")
    return steps * 24 / seconds


def gpu_steps(
    model: torch.nn.Module, opt: torch.optim.Optimizer, batch: dict, steps: int, amp: bool
) -> tuple[float, float]:
    """(seconds per training step of `model` on `batch` after 3 warm-up steps, peak GPU memory in GiB), in AMP (fp16
    autocast + GradScaler) or float32."""
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    torch.cuda.reset_peak_memory_stats()
    for i in range(steps + 3):
        if i == 3:
            torch.cuda.synchronize()
            t0 = time.perf_counter()
        with torch.autocast("cuda", enabled=amp):
            loss = model(batch)["loss"]
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / steps, torch.cuda.max_memory_allocated() / 2**30


def gpu(steps: int, batch: int) -> None:
    """The released model sizes at `batch` on CUDA: AMP against float32."""
    cfg = AlignmentConfig()
    dev = torch.device("cuda")
    frames = torch.randn(batch, 3, 3, 224, 224, device=dev)
    specs = torch.randn(batch, 3, 1, 257, 299, device=dev)
    for amp in (False, True):
        torch.manual_seed(0)
        model = AlignModel(cfg).to(dev)
        opt = torch.optim.Adam(model.parameters(), lr=1e-4)
        per_step, peak = gpu_steps(model, opt, {"frames": frames, "specs": specs}, steps, amp)
        rate = batch / per_step
        print(f"gpu {'AMP fp16' if amp else 'float32 '} batch {batch}: {rate:8.1f} samples/s, peak {peak:.1f} GiB")


# --- `--method acl` ----------------------------------------------------------------------------------------------


def _acl_section(caption: bool, **over) -> dict:
    """A tiny ACL `train` section (tiny CLIPSeg / BEATs, 64-px frames, 1-s clips) for the CPU."""
    acl = {**synthetic.TINY_ACL, "caption_loss": caption}
    return {
        "method": "acl",
        "epochs": 1,
        "batch_size": 8,
        "lr": 1e-4,
        "weight_decay": 1e-4,
        "num_workers": 0,
        "device": "cpu",
        "cpu_threads": 1,
        "acl": acl,
        **over,
    }


def acl_cpu(clips: int, steps: int) -> None:
    """Tiny CPU training steps through the engine (1 torch thread): ACL with the caption loss against without it."""
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        ids = synthetic.write_workdir(work, clips, size=64, seconds=1.0)
        synthetic.write_captions(work, ids)
        steps = min(steps, clips // 8)
        for caption in (False, True):
            cfg = TrainConfig.model_validate(_acl_section(caption, max_steps_per_epoch=steps), strict=False)
            seconds = epoch_seconds(cfg, work, work / f"run-{caption}")
            print(
                f"acl tiny CPU, batch 8, caption loss {'on ' if caption else 'off'}: {seconds / steps:6.3f} s/step "
                f"({steps * 8 / seconds:6.1f} samples/s)"
            )


def acl_gpu(steps: int, batch: int) -> None:
    """Real sizes on CUDA (random weights): CLIPSeg rd64 (CLIP ViT-B/16) at 352 and BEATs (12 x 768) over 10-s
    fbanks, batch `batch` per process as in the code; AMP against float32, and the vision tower run once per
    image (ours) against once per audio (the public code's force_comb loop)."""
    from transformers import CLIPSegConfig, CLIPSegForImageSegmentation

    from is4.config import ACLConfig
    from is4.pipeline.common.tiny_models import tiny_clip_tokenizer
    from is4.trainers.acl import ACLModel, audio_frames
    from is4.trainers.beats import BEATs, BEATsConfig

    dev = torch.device("cuda")
    tokenizer = tiny_clip_tokenizer()  # only the prompt's ids matter for the timing
    clipseg = CLIPSegConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "max_position_embeddings": 128,
            "bos_token_id": 0,
            "eos_token_id": 1,
            "pad_token_id": 1,
        },
        vision_config={"patch_size": 16},
        extract_layers=[3, 6, 9],
        reduce_dim=64,
        use_complex_transposed_convolution=True,
    )
    beats = BEATsConfig(deep_norm=True, relative_position_embedding=True, gru_rel_pos=True)
    cfg = ACLConfig(caption_loss=True)
    images = torch.randn(batch, 3, cfg.image_size, cfg.image_size, device=dev)
    fbank = torch.randn(batch, audio_frames(cfg), 128, device=dev) - 5
    phrases = ["dog", "cat", "guitar", None] * (batch // 4) + ["dog"] * (batch % 4)
    keys = torch.arange(batch, device=dev)
    for amp in (False, True):
        torch.manual_seed(0)
        model = ACLModel(cfg, CLIPSegForImageSegmentation(clipseg), tokenizer, BEATs(beats)).to(dev).train()
        opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4, weight_decay=1e-4)
        batch_in = {"image": images, "fbank": fbank, "phrase": phrases, "noise_key": keys}
        per_step, peak = gpu_steps(model, opt, batch_in, steps, amp)
        epoch_h = 144_000 / (2 * batch) * per_step / 3600  # VGG-SS 144k over 2 GPUs
        print(
            f"acl gpu {'AMP fp16' if amp else 'float32 '} batch {batch}/GPU: {per_step:.3f} s/step, peak "
            f"{peak:.1f} GiB; 20 epochs of 144k clips on 2 GPUs ~ {20 * epoch_h:.1f} h"
        )
    with torch.no_grad(), torch.autocast("cuda"):
        audio = model.encode_audio(fbank)
        for once in (True, False):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(steps):
                if once:
                    model.ground(model.vision(images)[0], audio, cfg.image_size)
                else:
                    for n in range(batch):  # the code: the tower again for every audio
                        model.ground(model.vision(images)[0], audio[n : n + 1], cfg.image_size)
            torch.cuda.synchronize()
            label = "once per image (ours)" if once else "once per audio (code)"
            print(f"acl gpu grounding forward, vision tower {label}: {(time.perf_counter() - t0) / steps:.3f} s")


# --- `--method jsa` ----------------------------------------------------------------------------------------------


def _jsa_cfg(**over) -> TrainConfig:
    """The alignment test's tiny CPU section with `method: jsa` and a JSA trunk of the same size (64 px, 8x8 tokens)."""
    jsa = {"image_size": 64, "width": 16, "blocks": [1, 1, 0, 0], "strides": [1, 2, 1, 1], "dim": 32}
    section = synthetic.tiny_train_section(None, method="jsa", jsa={**jsa, "audio_seconds": 1.0, "fn_k": 4}, **over)
    return TrainConfig.model_validate(section, strict=False)


def jsa_cpu(clips: int, steps: int) -> None:
    """JSA beside the alignment method on the same synthetic clips: loader samples/s and training-step samples/s."""
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        synthetic.write_workdir(work, clips)
        steps = min(steps, clips // 24)
        for name, make in (("alignment", _cfg), ("jsa", _jsa_cfg)):
            loader = loader_rate(make(num_workers=1), work, steps)
            cfg = make(num_workers=1, epochs=1, max_steps_per_epoch=steps)
            seconds = epoch_seconds(cfg, work, work / f"run-{name}")
            print(
                f"{name:9s} tiny CPU, batch 24, 1 worker: loader {loader:7.1f} samples/s, training step "
                f"{seconds / steps:6.3f} s ({steps * 24 / seconds:6.1f} samples/s)"
            )


def jsa_gpu(steps: int, batch: int) -> None:
    """The paper's sizes on CUDA at `batch`: AMP (fp16 autocast + GradScaler) against float32, AdamW 5e-5 / 1e-2."""
    from is4.config import JSAConfig
    from is4.trainers.jsa import JSAModel, parameter_counts

    dev = torch.device("cuda")
    frames = torch.randn(batch, 3, 224, 224, device=dev)
    specs = torch.randn(batch, 1, 257, 501, device=dev)
    keys = torch.arange(batch, device=dev)
    for amp in (False, True):
        torch.manual_seed(0)
        model = JSAModel(JSAConfig()).to(dev).train()
        opt = torch.optim.AdamW(model.parameters(), lr=5e-5, weight_decay=1e-2)
        per_step, peak = gpu_steps(model, opt, {"frame": frames, "spec": specs, "mask_key": keys}, steps, amp)
        print(
            f"jsa gpu {'AMP fp16' if amp else 'float32 '} batch {batch}: {batch / per_step:8.1f} samples/s "
            f"({per_step:.3f} s/step), peak {peak:.1f} GiB; an epoch of 144k clips ~ "
            f"{144_000 / batch * per_step / 60:.1f} min (model only, {parameter_counts(model)['training']:,} params)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=240)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--gpu", action="store_true")
    parser.add_argument("--gpu-steps", type=int, default=20)
    parser.add_argument("--gpu-batch", type=int, default=None, help="default 128 (alignment), 256 (jsa, the paper's)")
    parser.add_argument("--method", choices=("alignment", "acl", "jsa"), default="alignment")
    args = parser.parse_args()
    if args.method == "jsa":
        if args.gpu:
            if not torch.cuda.is_available():
                sys.exit("--gpu: no CUDA device here")
            jsa_gpu(args.gpu_steps, args.gpu_batch or 256)
        else:
            print(f"torch {torch.__version__}, {os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.1f}")
            jsa_cpu(args.clips, args.steps)
        return
    if args.method == "acl":
        if args.gpu:
            if not torch.cuda.is_available():
                sys.exit("--gpu: no CUDA device here")
            acl_gpu(args.gpu_steps, min(args.gpu_batch or 8, 8))
        else:
            print(f"torch {torch.__version__}, {os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.1f}")
            acl_cpu(min(args.clips, 48), args.steps)
        return
    if args.gpu:
        if not torch.cuda.is_available():
            sys.exit("--gpu: no CUDA device here")
        gpu(args.gpu_steps, args.gpu_batch or 128)
        return
    print(f"torch {torch.__version__}, {os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        synthetic.write_workdir(work, args.clips)
        steps = min(args.steps, args.clips // 24)
        rates = {w: loader_rate(_cfg(num_workers=w), work, steps) for w in (1, 2)}
        print(
            f"loader alone  : 1 worker {rates[1]:7.1f} samples/s, 2 workers {rates[2]:7.1f} ({rates[2] / rates[1]:.2f}x)"
        )
        rates = {w: step_rate(work, w, steps) for w in (1, 2)}
        print(
            f"training step : 1 worker {rates[1]:7.1f} samples/s, 2 workers {rates[2]:7.1f} ({rates[2] / rates[1]:.2f}x)"
        )


if __name__ == "__main__":
    main()
