"""Heatmaps and embeddings of a model on a benchmark's instances, written as the `.npz` files `is4 eval` reads.

One float32 map per instance of `load_ground_truth(release, gt)`, keyed by instance id, written atomically with
`np.savez_compressed`. Frames and wavs are found as the release lays them out (`visual_frames/{id}.jpg`,
`audio_wav/{id}.wav`, also where the authors' files put them, through the harness's `FileFinder`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from is4.manifests.atomic import atomic_path
from is4.pipeline.evaluation.formats import FileFinder, load_ground_truth
from is4.trainers.data import read_frame, read_wav
from is4.trainers.method import TrainError, TrainMethod


def release_inputs(release: str | Path, gt: str = "box") -> list[tuple[str, Path, Path]]:
    """(instance id, frame, wav) for every instance of the benchmark, in ground-truth order."""
    release = Path(release)
    truth = load_ground_truth(release, gt)
    finder = FileFinder(release if release.is_dir() else release.parent)
    out = []
    for iid in truth.instance_ids:
        frame, wav = finder.find(f"visual_frames/{iid}.jpg"), finder.find(f"audio_wav/{iid}.wav")
        if frame is None or wav is None:
            raise TrainError(
                f"{release}: instance {iid}: no {'visual_frames' if frame is None else 'audio_wav'} file for it"
            )
        out.append((iid, frame, wav))
    return out


def _batches(method: TrainMethod, model: nn.Module, release, gt: str, batch_size: int, device, progress):
    """(instance ids, collated batch on `device`) over the benchmark's instances, the model in eval mode."""
    device = device or next(model.parameters()).device
    items = release_inputs(release, gt)
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(items), batch_size):
            chunk = items[start : start + batch_size]
            inputs = []
            for iid, frame_path, wav_path in chunk:
                where = f"{release}: instance {iid}"
                wav, rate = read_wav(wav_path, where)
                try:
                    inputs.append(method.eval_item(read_frame(frame_path, where), wav, rate))
                except ValueError as exc:
                    raise TrainError(f"{where}: {exc}") from None
            batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in method.collate(inputs).items()}
            yield [iid for iid, _, _ in chunk], batch
            if progress:
                progress(min(start + batch_size, len(items)), len(items))
    finally:
        model.train(was_training)


@torch.no_grad()
def write_heatmaps(
    method: TrainMethod,
    model: nn.Module,
    release: str | Path,
    out: str | Path,
    *,
    gt: str = "box",
    batch_size: int = 16,
    device: torch.device | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> int:
    """Write `out` (.npz, instance id -> float32 map) for every instance of `release`; returns the count."""
    maps: dict[str, np.ndarray] = {}
    for ids, batch in _batches(method, model, release, gt, batch_size, device, progress):
        heat = method.heatmaps(model, batch).float().cpu().numpy()
        maps.update({iid: np.ascontiguousarray(m, dtype=np.float32) for iid, m in zip(ids, heat)})
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(fh, **maps)
    return len(maps)


@torch.no_grad()
def write_embeddings(
    method: TrainMethod,
    model: nn.Module,
    release: str | Path,
    out: str | Path,
    *,
    batch_size: int = 16,
    device: torch.device | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> list[str]:
    """Write `out`, the embeddings file `is4 eval --task retrieval / alignment` reads: `ids` and, per kind the
    method gives (`TrainMethod.embeddings`), `audio/<kind>` and `image/<kind>` float32 (N, D). Returns the kinds."""
    ids: list[str] = []
    parts: dict[str, tuple[list[np.ndarray], list[np.ndarray]]] = {}
    for batch_ids, batch in _batches(method, model, release, "box", batch_size, device, progress):
        ids += batch_ids
        for kind, (audio, image) in method.embeddings(model, batch).items():
            got = parts.setdefault(kind, ([], []))
            got[0].append(audio.float().cpu().numpy())
            got[1].append(image.float().cpu().numpy())
    arrays: dict[str, np.ndarray] = {"ids": np.array(ids)}
    for kind, (audio, image) in parts.items():
        arrays[f"audio/{kind}"] = np.concatenate(audio).astype(np.float32)
        arrays[f"image/{kind}"] = np.concatenate(image).astype(np.float32)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(fh, **arrays)
    return sorted(parts)
