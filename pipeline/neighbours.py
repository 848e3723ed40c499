"""The `neighbours` stage: for every training clip, its k most similar training clips per modality.

The alignment method's v_conc / a_conc positives (IS4 paper, "semantically similar samples", k = 1000): image
embeddings of the centre frames from a CLIP model (`neighbours.image_encoder`, `get_image_features`) and audio
embeddings of the wavs from an Audio Spectrogram Transformer (`neighbours.audio_encoder`, its pooled output; the
paper's Wav2CLIP is not loadable offline, AST is the documented stand-in), both resolved like every other model.
Exact top-k by cosine, computed `chunk` rows at a time; ties broken by the lower clip index, the clip itself
excluded. Embeddings are cached per batch under `WORK/state/neighbours/<modality>-<key>/` (key = encoder, revision,
clip ids and file sizes), so a killed run resumes and a rerun with the same inputs recomputes only the top-k.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from is4.config import BuildConfig, ModelRef, NeighboursConfig
from is4.manifests.atomic import atomic_path
from is4.manifests.checksum import json_sha256
from is4.manifests.errors import FatalError
from is4.manifests.io import read_manifest, write_manifest
from is4.pipeline.stage import ProgressFn

STATE_DIR = "state/neighbours"
CACHE_BATCH = 256  # clips per cached embedding file


class NeighboursError(FatalError, ValueError):
    """The neighbours stage cannot run (no clips, unreadable media); the message names the clip."""


def top_k(emb: np.ndarray, k: int, chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """(indices (N, k'), cosines (N, k')) of each row's k' = min(k, N - 1) most similar other rows, sorted by
    falling cosine, ties by index; `emb` rows are L2-normalised here; `chunk` rows of the matrix at a time."""
    emb = np.asarray(emb, dtype=np.float32)
    emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    n = len(emb)
    kk = min(k, n - 1)
    idx = np.zeros((n, kk), dtype=np.int64)
    sim = np.zeros((n, kk), dtype=np.float32)
    for start in range(0, n, chunk):
        block = emb[start : start + chunk] @ emb.T
        rows = np.arange(len(block))
        block[rows, start + rows] = -np.inf
        part = (
            np.sort(np.argpartition(-block, kk - 1, axis=1)[:, :kk], axis=1)
            if kk < n - 1
            else np.sort(np.argsort(-block, axis=1, kind="stable")[:, :kk], axis=1)
        )
        vals = np.take_along_axis(block, part, axis=1)
        order = np.argsort(-vals, axis=1, kind="stable")
        idx[start : start + len(block)] = np.take_along_axis(part, order, axis=1)
        sim[start : start + len(block)] = np.take_along_axis(vals, order, axis=1)
    return idx, sim


def _image_encoder(ref: ModelRef, work: Path) -> Callable[[list[Path]], np.ndarray]:
    import torch
    from PIL import Image
    from transformers import CLIPModel, CLIPProcessor

    from is4.pipeline.common.models import load_pretrained
    from is4.pipeline.images.prescreen import _features

    pre = load_pretrained(ref, work, "neighbours_image", CLIPModel, CLIPProcessor)

    @torch.no_grad()
    def encode(files: list[Path]) -> np.ndarray:
        images = []
        for f in files:
            with Image.open(f) as im:
                images.append(im.convert("RGB"))
        pixels = pre.processor(images=images, return_tensors="pt")["pixel_values"].to(pre.device, pre.dtype)
        return _features(pre.model.get_image_features(pixel_values=pixels)).float().cpu().numpy()

    return encode


def _audio_encoder(ref: ModelRef, work: Path) -> Callable[[list[Path]], np.ndarray]:
    import torch
    from scipy.io import wavfile
    from transformers import ASTFeatureExtractor, ASTModel

    from is4.pipeline.common.models import load_pretrained

    pre = load_pretrained(ref, work, "neighbours_audio", ASTModel, ASTFeatureExtractor)
    rate = pre.processor.sampling_rate

    @torch.no_grad()
    def encode(files: list[Path]) -> np.ndarray:
        waves = []
        for f in files:
            sr, data = wavfile.read(f)
            if sr != rate:
                raise NeighboursError(f"{f}: {sr} Hz audio, the audio encoder takes {rate} Hz")
            data = data[:, 0] if data.ndim == 2 else data
            waves.append(data.astype(np.float32) / 32768.0 if data.dtype == np.int16 else data.astype(np.float32))
        inputs = pre.processor(waves, sampling_rate=rate, return_tensors="pt")
        out = pre.model(input_values=inputs["input_values"].to(pre.device, pre.dtype))
        return out.pooler_output.float().cpu().numpy()

    return encode


def embed(
    work: Path,
    modality: str,
    files: list[Path],
    ids: list[str],
    make_encoder: Callable[[], Callable],
    resolved,
    batch_size: int,
    progress: ProgressFn | None = None,
) -> np.ndarray:
    """(N, D) embeddings of `files`, cached per CACHE_BATCH clips (a rerun or a resumed run reuses them; the model
    is loaded only when some part is missing)."""
    key = json_sha256(
        {
            "model": resolved.model_id,
            "revision": resolved.revision,
            "ids": ids,
            "sizes": [f.stat().st_size for f in files],
        }
    )[:16]
    cache = work / STATE_DIR / f"{modality}-{key}"
    cache.mkdir(parents=True, exist_ok=True)
    parts, encoder = [], None
    for start in range(0, len(files), CACHE_BATCH):
        part = cache / f"{start:09d}.npy"
        if part.is_file():
            parts.append(np.load(part, allow_pickle=False))
        else:
            chunk = files[start : start + CACHE_BATCH]
            encoder = encoder or make_encoder()
            emb = np.concatenate([encoder(chunk[i : i + batch_size]) for i in range(0, len(chunk), batch_size)])
            with atomic_path(part) as tmp, open(tmp, "wb") as fh:
                np.save(fh, emb.astype(np.float32))
            parts.append(emb.astype(np.float32))
        if progress:
            progress(min(start + CACHE_BATCH, len(files)), len(files), f"{modality} embeddings")
    return np.concatenate(parts)


def run_neighbours(
    work: Path,
    cfg: NeighboursConfig,
    image_ref: ModelRef | None,
    audio_ref: ModelRef | None,
    *,
    provenance: dict[str, Any] | None = None,
    progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """Write the neighbours manifest for the ok clips of `cfg.splits` (an empty one when the stage is off)."""
    from is4.pipeline.common.models import ModelError, resolve_model

    columns = ["clip_id", "modality", "neighbours", "similarities", "encoder", "encoder_revision"]
    if not cfg.enabled:
        write_manifest(work, "neighbours", pd.DataFrame(columns=columns), {**(provenance or {}), "enabled": False})
        return {"enabled": False, "rows": 0}
    clips = read_manifest(work, "clips")
    ok = clips[(clips["status"] == "ok") & clips["split"].isin(cfg.splits)].sort_values("clip_id")
    if len(ok) < 2:
        raise NeighboursError(f"{work}: {len(ok)} ok clips in splits {cfg.splits}; neighbours need at least 2")
    ids = ok["clip_id"].tolist()
    rows, facts = [], {}
    for modality, column, ref, make in (
        ("image", "frame_path", image_ref, _image_encoder),
        ("audio", "audio_path", audio_ref, _audio_encoder),
    ):
        if ref is None:
            raise ModelError(f"neighbours.{modality}_encoder is not configured (neighbours.enabled is on)")
        files = [work / p for p in ok[column]]
        missing = next((cid for cid, f in zip(ids, files) if not f.is_file()), None)
        if missing:
            raise NeighboursError(f"{work / 'manifests' / 'clips.parquet'}: clip {missing}: no {column} file")
        resolved = resolve_model(ref, work, f"neighbours_{modality}")
        emb = embed(work, modality, files, ids, lambda r=ref, m=make: m(r, work), resolved, cfg.batch_size, progress)
        idx, sim = top_k(emb, cfg.k, cfg.chunk)
        facts[f"{modality}_encoder"] = {"model": resolved.model_id, "revision": resolved.revision}
        for i, cid in enumerate(ids):
            rows.append(
                {
                    "clip_id": cid,
                    "modality": modality,
                    "neighbours": [ids[j] for j in idx[i]],
                    "similarities": sim[i].tolist(),
                    "encoder": resolved.model_id,
                    "encoder_revision": resolved.revision,
                }
            )
    write_manifest(work, "neighbours", pd.DataFrame(rows, columns=columns), {**(provenance or {}), **facts})
    return {"enabled": True, "clips": len(ids), "k": min(cfg.k, len(ids) - 1), "rows": len(rows)}


def neighbours_stage(
    work: Path, cfg: BuildConfig, provenance: dict[str, Any], *, progress: ProgressFn | None = None
) -> dict[str, Any]:
    """The stage entry (see the module docstring)."""
    return run_neighbours(
        work,
        cfg.neighbours,
        cfg.neighbours.image_encoder,
        cfg.neighbours.audio_encoder,
        provenance=provenance,
        progress=progress,
    )
