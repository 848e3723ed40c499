"""The generate stage: `prompts` manifest → Stable Diffusion images → `images` manifest, sharded and resumable.

Writes `media/images/{image_id}.png`, one resume journal per shard (`state/generate/shard-{i}-of-{n}.jsonl`) and
`manifests/images.parquet`. Why images are generated in fixed batch groups, how resume and shards keep the bytes
of one uninterrupted run, and how flags work: docs/architecture.md, "Image stages". In short: float32 batched
inference is not bitwise batch-invariant (measured on the tiny SD-1.x model, CPU, torch 2.13, diffusers 0.42: up
to 1.7e-6 between batch 1 and 4, 2 of 49,152 uint8 values flipped; float64 invariant), so rows sorted by
`image_id` are cut into fixed groups of `cfg.batch_size`, each always one batch with one generator per image;
a group is skipped only when all its images have a journal record with their sha256 and the group fingerprint
(the generation settings and the group's members), else it is recomputed whole.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

import is4
from is4.config import BuildConfig, GenerateConfig, ModelRef
from is4.manifests.atomic import atomic_write_bytes
from is4.manifests.checksum import json_sha256, sha256_if_exists
from is4.manifests.errors import FatalError
from is4.manifests.ids import FILE_ID_RE
from is4.manifests.io import read_manifest, write_manifest
from is4.manifests.journal import Journal
from is4.manifests.lock import manifest_lock
from is4.manifests.schema import IMAGES, PROMPTS
from is4.pipeline.common.models import ModelError, resolve_model, torch_device_and_dtype
from is4.pipeline.shard import JOURNAL_GLOB, Shard
from is4.pipeline.stage import ProgressFn

ROLE = "image_generator"
IMAGE_DIR = "media/images"
JOURNAL_DIR = "state/generate"
PNG_COMPRESS_LEVEL = 6
NSFW_REASON = "safety checker: nsfw_content_detected (diffusers returned a black image)"
_IMPORT_LOCK = threading.RLock()


class GenerateError(FatalError, ValueError):
    """The generate stage cannot run with this config or prompt set."""


@dataclass
class GenerateSummary:
    """What one shard run of the generate stage produced."""

    shard: str  # "i/n"
    groups: int  # batch groups that belong to this shard
    groups_run: int  # of those, groups that had to be (re)computed
    generated: int  # images written by this run
    reused: int  # images of this shard kept from earlier runs
    flagged: int  # images of this shard flagged nsfw or black
    images: int | None  # rows of the rebuilt manifest (all shards); None when the merge is left to `merge_images`
    pending: int | None  # prompt rows without a valid image yet (other shards still to run)
    manifest: str | None
    model_revision: str
    settings: dict[str, Any] | None = None  # the generation settings, for `merge_images` (only when not merged)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# ------------------------------------------------------------------------------------------------------------------
# Groups, scheduler
# ------------------------------------------------------------------------------------------------------------------


def image_path(image_id: str) -> str:
    """The PNG of an image, relative to the work directory."""
    if not isinstance(image_id, str) or not FILE_ID_RE.fullmatch(image_id):
        raise GenerateError(f"image id {image_id!r} is not usable as a file name ([A-Za-z0-9_.-], no leading dot)")
    return f"{IMAGE_DIR}/{image_id}.png"


def batch_groups(prompts: pd.DataFrame, batch_size: int) -> list[list[dict[str, Any]]]:
    """Rows sorted by image_id, cut into consecutive groups of `batch_size` (the last may be shorter)."""
    rows = sorted(_prompt_records(prompts), key=lambda r: r["image_id"])
    return [rows[k : k + batch_size] for k in range(0, len(rows), batch_size)]


def _prompt_records(prompts: pd.DataFrame) -> list[dict[str, Any]]:
    out = []
    for rec in prompts.to_dict("records"):
        rec = {k: (None if _is_missing(v) else v) for k, v in rec.items()}
        rec["seed"] = int(rec["seed"])
        out.append(rec)
    return out


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA


def scheduler_class(name: str) -> type:
    """The diffusers scheduler class called `name`; a clear error for anything else."""
    with _IMPORT_LOCK:  # diffusers imports its classes lazily, which is not thread-safe (shards run in threads)
        return _scheduler_class(name)


def _scheduler_class(name: str) -> type:
    import diffusers

    cls = getattr(diffusers, name, None) if isinstance(name, str) and name.isidentifier() else None
    if not (isinstance(cls, type) and issubclass(cls, diffusers.SchedulerMixin)):
        known = sorted(
            n
            for n in dir(diffusers)
            if n.endswith("Scheduler")
            and isinstance(getattr(diffusers, n, None), type)
            and issubclass(getattr(diffusers, n), diffusers.SchedulerMixin)
        )
        raise GenerateError(
            f"generate.scheduler {name!r} is not a diffusers scheduler class; known: {', '.join(known)}"
        )
    return cls


def versions() -> dict[str, str]:
    """Versions of the libraries that determine the pixels and the PNG bytes."""
    import diffusers
    import PIL
    import torch
    import transformers

    return {
        "diffusers": diffusers.__version__,
        "is4": is4.__version__,
        "pillow": PIL.__version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }


# ------------------------------------------------------------------------------------------------------------------
# Pipeline
# ------------------------------------------------------------------------------------------------------------------


def load_pipeline(path: Path, cfg: GenerateConfig, device, dtype):
    """The Stable Diffusion pipeline of a local model directory, set up for `cfg` on `device` in `dtype`."""
    import torch

    with _IMPORT_LOCK:
        from diffusers import StableDiffusionPipeline
    scheduler_cls = scheduler_class(cfg.scheduler)
    kwargs: dict[str, Any] = {}
    if not cfg.safety_checker:
        kwargs = {"safety_checker": None, "requires_safety_checker": False}
    try:
        # `dtype` is diffusers 0.42's name for the deprecated `torch_dtype` (same behaviour, no FutureWarning).
        pipe = StableDiffusionPipeline.from_pretrained(path, dtype=dtype, **kwargs)
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise ModelError(f"cannot load a Stable Diffusion pipeline from {path}: {exc}") from exc
    pipe.scheduler = scheduler_cls.from_config(pipe.scheduler.config)
    pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    if cfg.compile:
        pipe.unet = torch.compile(pipe.unet)
    return pipe


def _settings(cfg: GenerateConfig, pipe, model_id: str, revision: str, device, dtype) -> dict[str, Any]:
    """Everything besides the group's rows that the pixels depend on (also the manifest's provenance columns)."""
    config = {k: v for k, v in dict(pipe.scheduler.config).items() if k != "_diffusers_version"}
    return {
        "model_id": model_id,
        "model_revision": revision,
        "scheduler": type(pipe.scheduler).__name__,
        # Python's json writes -inf (DPMSolver's lambda_min_clipped) as -Infinity, which json.loads reads back.
        "scheduler_config": json.dumps(config, sort_keys=True, default=str),
        "steps": cfg.steps,
        "guidance_scale": float(cfg.guidance_scale),
        "height": cfg.height,
        "width": cfg.width,
        "dtype": str(dtype).removeprefix("torch."),
        "device": str(device),
        "compile": cfg.compile,
        "safety_checker": pipe.safety_checker is not None,
    }


def group_fingerprint(settings: dict[str, Any], group: list[dict[str, Any]]) -> str:
    """sha256 of the settings and the group's members: equal fingerprints mean equal pixels."""
    members = [[r["image_id"], r["prompt"], r.get("negative_prompt"), r["seed"]] for r in group]
    return json_sha256({"settings": settings, "members": members})


def generate_group(pipe, group: list[dict[str, Any]], cfg: GenerateConfig, device) -> list[tuple[np.ndarray, bool]]:
    """One batch: (uint8 HxWx3 image, nsfw hit) per row, each image's noise drawn from its own seeded generator."""
    import torch

    generators = [torch.Generator(device=device).manual_seed(r["seed"]) for r in group]
    with torch.inference_mode():
        out = pipe(
            prompt=[r["prompt"] for r in group],
            # A missing negative prompt is the empty string, exactly what diffusers uses for None.
            negative_prompt=[r.get("negative_prompt") or "" for r in group],
            generator=generators,
            num_inference_steps=cfg.steps,
            guidance_scale=cfg.guidance_scale,
            height=cfg.height,
            width=cfg.width,
            output_type="np",
        )
    # diffusers' own float→uint8 conversion (VaeImageProcessor.numpy_to_pil).
    images = (out.images * 255).round().astype("uint8")
    nsfw = out.nsfw_content_detected or [False] * len(group)
    return [(images[k], bool(nsfw[k])) for k in range(len(group))]


def encode_png(image: np.ndarray) -> bytes:
    """Byte-deterministic PNG: no timestamp or text chunks, fixed compression level."""
    from PIL import Image

    buf = BytesIO()
    Image.fromarray(image, mode="RGB").save(buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL, optimize=False)
    return buf.getvalue()


# ------------------------------------------------------------------------------------------------------------------
# Journal records and the manifest
# ------------------------------------------------------------------------------------------------------------------


def load_records(workdir: Path) -> list[tuple[Path, dict[str, dict[str, Any]]]]:
    """The latest record per image of every shard journal under `state/generate/`, journals in name order."""
    return [(p, Journal(p, "image_id").load()) for p in sorted((workdir / JOURNAL_DIR).glob(f"{JOURNAL_GLOB}.jsonl"))]


def _valid_record(
    workdir: Path,
    image_id: str,
    fingerprint: str,
    journals: list[tuple[Path, dict[str, dict[str, Any]]]],
    hashes: dict[str, str | None],
) -> dict[str, Any] | None:
    """The first record (journal name order) of a finished image: ok, current fingerprint, PNG with its sha256."""
    for _, records in journals:
        rec = records.get(image_id)
        if not rec or rec.get("status") != "ok" or rec.get("fingerprint") != fingerprint:
            continue
        rel = rec.get("image_path")
        if rel != image_path(image_id):
            continue
        if rel not in hashes:
            hashes[rel] = sha256_if_exists(workdir / rel)
        if hashes[rel] is not None and hashes[rel] == rec.get("sha256"):
            return rec
    return None


def flag_for(record: dict[str, Any], black_threshold: float) -> tuple[str | None, str | None]:
    """(flag, reason) of a finished image: `nsfw` before `black`, None when neither."""
    if record.get("nsfw"):
        return "nsfw", NSFW_REASON
    mean = record["mean_pixel"]
    if mean < black_threshold:
        return "black", f"mean pixel value {mean:.4f} < black_threshold {black_threshold:g}"
    return None, None


def _manifest_frame(
    groups: list[list[dict[str, Any]]],
    settings: dict[str, Any],
    fingerprints: list[str],
    cfg: GenerateConfig,
    workdir: Path,
    hashes: dict[str, str | None],
) -> pd.DataFrame:
    journals = load_records(workdir)
    rows = []
    for g, group in enumerate(groups):
        for r in group:
            rec = _valid_record(workdir, r["image_id"], fingerprints[g], journals, hashes)
            if rec is None:
                continue
            flag, reason = flag_for(rec, cfg.black_threshold)
            rows.append(
                {
                    **{k: r.get(k) for k in PROMPTS.column_names},
                    **settings,
                    "batch_group": g,
                    "batch_size": cfg.batch_size,
                    "versions": json.dumps(rec["versions"], sort_keys=True),
                    "image_path": rec["image_path"],
                    "sha256": rec["sha256"],
                    "mean_pixel": rec["mean_pixel"],
                    "flag": flag,
                    "flag_reason": reason,
                }
            )
    return pd.DataFrame(rows, columns=list(IMAGES.column_names + IMAGES.optional_names))


# ------------------------------------------------------------------------------------------------------------------
# The stage
# ------------------------------------------------------------------------------------------------------------------


def run_generate(
    workdir: str | Path,
    cfg: GenerateConfig,
    model: ModelRef,
    *,
    shard: Shard = Shard(),
    progress: ProgressFn | None = None,
    provenance: Mapping[str, Any] | None = None,
    merge: bool = True,
) -> GenerateSummary:
    """Generate this shard's batch groups of the `prompts` manifest, then rebuild the `images` manifest.

    Resumes from the journals of earlier runs (any shard layout). Flagged images are kept and recorded; only
    problems with the run itself (no prompts manifest, bad config, model not loadable) raise. With `merge=False`
    only this shard's journal is written: one `merge_images` after all shards writes the manifest (the flow).
    """
    import torch

    workdir = Path(workdir)
    scheduler_class(cfg.scheduler)  # fail before loading anything
    prompts = read_manifest(workdir, PROMPTS)
    groups = batch_groups(prompts, cfg.batch_size)
    for group in groups:
        for r in group:
            image_path(r["image_id"])
    device, dtype = torch_device_and_dtype(model)
    resolved = resolve_model(model, workdir, ROLE)
    pipe = load_pipeline(resolved.path, cfg, device, dtype)
    settings = _settings(cfg, pipe, resolved.model_id, resolved.revision, device, dtype)
    fingerprints = [group_fingerprint(settings, group) for group in groups]
    run_versions = versions()

    mine = shard.interleaved(range(len(groups)))
    journal = Journal(workdir / JOURNAL_DIR / shard.journal_name(), "image_id")
    journals = load_records(workdir)
    hashes: dict[str, str | None] = {}
    total = sum(len(groups[g]) for g in mine)
    done = generated = reused = flagged = groups_run = 0
    if progress:
        progress(0, total, f"shard {shard}: {len(mine)} groups")
    for g in mine:
        group, fingerprint = groups[g], fingerprints[g]
        finished = {r["image_id"]: _valid_record(workdir, r["image_id"], fingerprint, journals, hashes) for r in group}
        if all(finished.values()):
            reused += len(group)
            flagged += sum(flag_for(rec, cfg.black_threshold)[0] is not None for rec in finished.values())
            done += len(group)
            if progress:
                progress(done, total, f"group {g}: reused")
            continue
        groups_run += 1
        for r, (image, nsfw) in zip(group, generate_group(pipe, group, cfg, device)):
            if finished[r["image_id"]] is not None:  # kept: recomputed only because its group was incomplete
                reused += 1
                flagged += flag_for(finished[r["image_id"]], cfg.black_threshold)[0] is not None
                continue
            data = encode_png(image)
            rel = image_path(r["image_id"])
            atomic_write_bytes(workdir / rel, data)
            digest = hashlib.sha256(data).hexdigest()
            hashes[rel] = digest
            record = {
                "image_id": r["image_id"],
                "status": "ok",
                "image_path": rel,
                "sha256": digest,
                "fingerprint": fingerprint,
                "batch_group": g,
                "shard": str(shard),
                "nsfw": nsfw,
                "mean_pixel": round(float(image.mean(dtype=np.float64)), 4),
                "versions": run_versions,
                "torch_threads": torch.get_num_threads(),
            }
            journal.append(record)
            generated += 1
            flagged += flag_for(record, cfg.black_threshold)[0] is not None
        done += len(group)
        if progress:
            progress(done, total, f"group {g}: generated")

    images = pending = manifest = None
    if merge:
        frame, manifest = _write_images_manifest(workdir, cfg, prompts, settings, provenance)
        images, pending = len(frame), len(prompts) - len(frame)
    return GenerateSummary(
        shard=str(shard),
        groups=len(mine),
        groups_run=groups_run,
        generated=generated,
        reused=reused,
        flagged=flagged,
        images=images,
        pending=pending,
        manifest=None if manifest is None else str(manifest),
        model_revision=resolved.revision,
        settings=None if merge else settings,
    )


def _write_images_manifest(
    workdir: Path,
    cfg: GenerateConfig,
    prompts: pd.DataFrame,
    settings: dict[str, Any],
    provenance: Mapping[str, Any] | None,
) -> tuple[pd.DataFrame, Path]:
    """Rebuild the `images` manifest from every shard's journal (the rows whose image is valid under `settings`)."""
    groups = batch_groups(prompts, cfg.batch_size)
    fingerprints = [group_fingerprint(settings, group) for group in groups]
    # The shard never enters the manifest: every shard writes the same provenance.
    facts = {"revision": settings["model_revision"]}
    # Serialise the rebuilds of concurrently finishing shards, so the last to finish sees every journal.
    with manifest_lock(workdir, "images"):
        frame = _manifest_frame(groups, settings, fingerprints, cfg, workdir, {})
        manifest = write_manifest(workdir, IMAGES, frame, {**(provenance or {}), **facts})
    return frame, manifest


def merge_images(
    workdir: str | Path, cfg: GenerateConfig, settings: dict[str, Any], provenance: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The one writer after all shards ran with `merge=False`: the `images` manifest; its row counts."""
    workdir = Path(workdir)
    prompts = read_manifest(workdir, PROMPTS)
    frame, manifest = _write_images_manifest(workdir, cfg, prompts, settings, provenance)
    return {"images": len(frame), "pending": len(prompts) - len(frame), "manifest": str(manifest)}


def generate_stage(
    work: Path,
    cfg: BuildConfig,
    provenance: dict[str, Any],
    *,
    shard: Shard = Shard(),
    progress: ProgressFn | None = None,
    merge: bool = True,
) -> dict[str, Any]:
    """Images for one shard of the prompts; the images manifest covers every finished shard (unless `merge=False`:
    then `merge_stage` writes it once all shards ran)."""
    if cfg.models.image_generator is None:
        raise ModelError("models.image_generator is not configured (the generate stage needs it)")
    summary = run_generate(
        work,
        cfg.generate,
        cfg.models.image_generator,
        shard=shard,
        progress=progress,
        provenance=provenance,
        merge=merge,
    ).as_dict()
    if merge:
        summary.pop("settings")
    return summary


def merge_stage(
    work: Path, cfg: BuildConfig, provenance: dict[str, Any], shards: list[dict[str, Any]]
) -> dict[str, Any]:
    """The images manifest after every shard ran (`merge=False`), with the shards' totals."""
    settings = [s["settings"] for s in shards]
    if not settings or any(s != settings[0] for s in settings):
        raise GenerateError(
            "the shards of this generate run used different settings (model, scheduler, device); "
            "run them again with one config"
        )
    merged = merge_images(work, cfg.generate, settings[0], provenance)
    totals = {k: sum(s[k] for s in shards) for k in ("groups_run", "generated", "reused", "flagged")}
    return {**totals, **merged, "model_revision": settings[0]["model_revision"]}
