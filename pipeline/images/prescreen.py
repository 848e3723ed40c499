"""The pre-screen stage: CLIP scores that order the human verification queue (DESIGN §3 `prescreen` table).

Every generated image should show two objects, its pair's `category_a` and `category_b`. CLIP cannot say that
directly, so each object is scored separately and the two scores are combined:

- **Presence score.** For an image with categories (a, b), `score_a` is CLIP's probability of a in a softmax over
  {a} ∪ {every category that is neither a nor b}: the other categories are distractors, and the image's second
  object b is left out so that a clearly visible b does not compete with a. Logits are `logit_scale · cosine` of
  L2-normalised embeddings, the text prompt of a category being `"a photo of a {object}"` (one object noun per
  depictable category id, as in the prompts stage). With only two categories there is no distractor and every
  score is 1.
- **both_present = min(score_a, score_b).** An image passes only if *both* objects are there, so the weaker of the
  two decides: a mean would let one very clear object hide a missing one, and a product would penalise two
  moderately clear objects twice and is not on the scale of the per-object threshold a reviewer thinks in.
- **Duplicates.** Images are visited in image_id order; each joins the group of the first earlier representative
  whose image-embedding cosine is >= `duplicate_cosine`, or founds its own group. `duplicate_group` is the
  representative's image_id.
- **Queue.** Reviewers see one image of each group first: the representatives by both_present (highest first,
  ties by image_id), then the remaining duplicates in the same order. `queue_rank` is 1..N.

Verification is written when `auto_reject_below` is set, when some image carries a generation flag, or when a
verification manifest already exists (so that the pre-screen's own earlier rows are brought up to date):

- images whose generation left a `flag` (an optional column of the images table: the generate stage writes
  `nsfw` or `black`, with a `flag_reason`) are rejected with reason `generation flag: <flag>`, followed by
  ` (<flag_reason>)` where there is one, whatever their score;
- images whose both_present is under `auto_reject_below` (strictly) are rejected with reason
  `both_present <score> < <threshold>`, the score rounded down so that the printed comparison is true;
- rejects are `source=auto, reviewer="prescreen"`, with no wall clock (`decided_at` is null unless a caller passes
  one), so two builds write the same bytes; every other image gets a `pending` row with `source=auto` and no
  reason, reviewer or decided_at (nothing has been decided).

The manifest is merged, never replaced: a row written by a human (`source=human`, any decision) is kept as it is,
whatever this stage would decide, as are rows of other automatic reviewers and rows of images not in this run. The
pre-screen's own earlier rows (and auto `pending` rows) are recomputed; an unchanged decision keeps its original
`decided_at`.

Images without an `image_path` cannot be scored: a flagged one is only rejected (it is not in the prescreen table);
an unflagged one is an error, as is a path whose file is missing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from is4.config import BuildConfig, ModelRef, PrescreenConfig
from is4.manifests.decisions import log_path
from is4.manifests.errors import FatalError
from is4.manifests.io import is_blank, manifest_path, read_manifest, write_manifest
from is4.manifests.schema import PRESCREEN
from is4.pipeline.common.models import ResolvedModel, resolve_model, torch_device_and_dtype
from is4.pipeline.images.prompts import PromptError, depictable_categories
from is4.pipeline.stage import ProgressFn, manifest_intact
from is4.pipeline.verification import ledger_intact, read_verification, update_verification

TEXT_TEMPLATE = "a photo of a {object}"
REVIEWER = "prescreen"
FLAG_COLUMN = "flag"
FLAG_REASON_COLUMN = "flag_reason"
# Cosines are computed in float64; this absorbs rounding so identical embeddings group even at a threshold of 1.
_COSINE_TOLERANCE = 1e-9


class PrescreenError(FatalError, ValueError):
    """The images, categories or model do not make a pre-screen."""


# --- pure scoring on embeddings -------------------------------------------------------------------------------


def _normalise(emb: np.ndarray, name: str) -> np.ndarray:
    emb = np.asarray(emb, dtype=np.float64)
    if emb.ndim != 2:
        raise ValueError(f"{name} must be 2-D (rows × dims), got shape {emb.shape}")
    norms = np.linalg.norm(emb, axis=1, keepdims=True)
    if np.any(norms == 0) or not np.all(np.isfinite(norms)):
        raise ValueError(f"{name} has a zero or non-finite row")
    return emb / norms


def presence_scores(image_emb: np.ndarray, text_emb: np.ndarray, pairs: np.ndarray, logit_scale: float) -> np.ndarray:
    """(N, 2) probabilities of each image's two categories, each against the categories that are not the image's.

    `pairs[i] = (a, b)` are row indices into `text_emb`. Column 0 is P(a) in a softmax over {a} ∪ (all \\ {a, b}),
    column 1 is P(b) over {b} ∪ (all \\ {a, b}); logits are `logit_scale` times the cosine of L2-normalised rows.
    """
    img = _normalise(image_emb, "image_emb")
    txt = _normalise(text_emb, "text_emb")
    if img.shape[1] != txt.shape[1]:
        raise ValueError(f"embedding widths differ: images {img.shape[1]}, texts {txt.shape[1]}")
    pairs = np.asarray(pairs)
    n, c = len(img), len(txt)
    if pairs.shape != (n, 2) or not np.issubdtype(pairs.dtype, np.integer):
        raise ValueError(f"pairs must be integer indices of shape ({n}, 2), got {pairs.dtype} {pairs.shape}")
    if n and (pairs.min() < 0 or pairs.max() >= c or np.any(pairs[:, 0] == pairs[:, 1])):
        raise ValueError(f"pairs must hold two distinct category indices in [0, {c})")
    logits = float(logit_scale) * (img @ txt.T)  # (N, C)
    rows = np.arange(n)
    scores = np.empty((n, 2), dtype=np.float64)
    for col in (0, 1):
        own, partner = pairs[:, col], pairs[:, 1 - col]
        masked = logits.copy()
        masked[rows, partner] = -np.inf  # the image's other object does not compete
        top = masked.max(axis=1, keepdims=True)
        log_norm = top[:, 0] + np.log(np.exp(masked - top).sum(axis=1))
        scores[:, col] = np.exp(logits[rows, own] - log_norm)
    return scores


def both_present(scores: np.ndarray) -> np.ndarray:
    """(N,) the weaker of each image's two presence scores: an image passes only if both objects are there."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2 or scores.shape[1] != 2:
        raise ValueError(f"scores must have shape (N, 2), got {scores.shape}")
    return scores.min(axis=1)


def duplicate_groups(image_emb: np.ndarray, threshold: float) -> list[int]:
    """The representative index of each image, grouping greedily in the order given.

    Image i joins the group of the first earlier representative whose cosine with it is >= `threshold`; if none
    is, i represents a new group (and is its own representative).
    """
    emb = _normalise(image_emb, "image_emb") if len(image_emb) else np.zeros((0, 1))
    reps: list[int] = []
    groups: list[int] = []
    for i, vec in enumerate(emb):
        if reps:
            close = np.flatnonzero(emb[reps] @ vec >= threshold - _COSINE_TOLERANCE)
            if close.size:
                groups.append(reps[close[0]])
                continue
        reps.append(i)
        groups.append(i)
    return groups


def queue_order(both: Sequence[float], groups: Sequence[int], image_ids: Sequence[str]) -> np.ndarray:
    """(N,) review ranks 1..N: group representatives first, then duplicates, each by both_present desc, image_id."""
    both = np.asarray(both, dtype=np.float64)
    n = len(both)
    if len(groups) != n or len(image_ids) != n:
        raise ValueError("both, groups and image_ids must have the same length")
    order = sorted(range(n), key=lambda i: (groups[i] != i, -both[i], image_ids[i]))
    ranks = np.empty(n, dtype=np.int64)
    ranks[order] = np.arange(1, n + 1)
    return ranks


# --- the model ------------------------------------------------------------------------------------------------


def _features(output: Any) -> Any:
    """The projected embeddings from `get_*_features` (a tensor in older transformers, an output object in newer)."""
    return output if hasattr(output, "shape") else output.pooler_output


def clip_embeddings(
    resolved: ResolvedModel, ref: ModelRef, texts: list[str], image_files: list[Path], batch_size: int
) -> tuple[np.ndarray, np.ndarray, float]:
    """(image embeddings, text embeddings, logit scale) from the CLIP checkpoint at `resolved.path`."""
    import torch
    from PIL import Image
    from transformers import CLIPModel, CLIPProcessor

    device, dtype = torch_device_and_dtype(ref)
    model = CLIPModel.from_pretrained(resolved.path).to(device=device, dtype=dtype).eval()
    processor = CLIPProcessor.from_pretrained(resolved.path)
    text_parts, image_parts = [], []
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            batch = processor(
                text=texts[start : start + batch_size], padding=True, truncation=True, return_tensors="pt"
            )
            out = model.get_text_features(**{k: v.to(device) for k, v in batch.items()})
            text_parts.append(_features(out).float().cpu().numpy())
        for start in range(0, len(image_files), batch_size):
            images = []
            for file in image_files[start : start + batch_size]:
                with Image.open(file) as im:
                    images.append(im.convert("RGB"))
            pixels = processor(images=images, return_tensors="pt")["pixel_values"].to(device=device, dtype=dtype)
            image_parts.append(_features(model.get_image_features(pixel_values=pixels)).float().cpu().numpy())
        scale = float(model.logit_scale.exp().float().item())
    width = model.config.projection_dim
    text_emb = np.concatenate(text_parts).astype(np.float64) if text_parts else np.zeros((0, width))
    image_emb = np.concatenate(image_parts).astype(np.float64) if image_parts else np.zeros((0, width))
    return image_emb, text_emb, scale


# --- the stage ------------------------------------------------------------------------------------------------


def _generation_flag(value: Any) -> str | None:
    """The flag text of a cell of the optional `flag` column, or None where there is no flag."""
    if is_blank(value) or value is False:
        return None
    text = str(value).strip()
    return text or None


def _floor(value: float, digits: int = 6) -> str:
    return f"{math.floor(value * 10**digits) / 10**digits:.{digits}f}"


def run_prescreen(
    workdir: str | Path,
    cfg: PrescreenConfig,
    model: ModelRef | None,
    *,
    decided_at: datetime | None = None,
    provenance: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Score the images manifest with CLIP, write the prescreen manifest and (see module doc) merge verification."""
    workdir = Path(workdir)
    if decided_at is not None:
        if decided_at.tzinfo is None or decided_at.utcoffset() is None:
            raise PrescreenError(f"decided_at must be timezone-aware (it is stored in UTC), got {decided_at!r}")
        decided_at = decided_at.astimezone(UTC)
    images = read_manifest(workdir, "images").sort_values("image_id", ignore_index=True)
    categories = read_manifest(workdir, "categories")
    try:
        known = depictable_categories(categories)
    except PromptError as exc:
        raise PrescreenError(str(exc)) from None
    class_ids = sorted(known)
    index = {cid: i for i, cid in enumerate(class_ids)}
    unknown = sorted((set(images["category_a"]) | set(images["category_b"])) - set(index))
    if unknown:
        raise PrescreenError(f"images use category id(s) that are not depictable categories: {', '.join(unknown)}")

    flags = (
        [_generation_flag(v) for v in images[FLAG_COLUMN]] if FLAG_COLUMN in images.columns else [None] * len(images)
    )
    flag_reasons = (
        [_generation_flag(v) for v in images[FLAG_REASON_COLUMN]]
        if FLAG_REASON_COLUMN in images.columns
        else [None] * len(images)
    )
    scored_rows, files = [], []
    for i, row in enumerate(images.itertuples(index=False)):
        if not isinstance(row.image_path, str):
            if flags[i] is None:
                raise PrescreenError(f"image {row.image_id}: no image_path and no generation flag")
            continue
        file = workdir / row.image_path
        if not file.is_file():
            raise PrescreenError(f"image {row.image_id}: {file} does not exist")
        scored_rows.append(i)
        files.append(file)
    scored = images.iloc[scored_rows].reset_index(drop=True)

    resolved = resolve_model(model, workdir, "prescreen")
    texts = [TEXT_TEMPLATE.format(object=known[cid].noun) for cid in class_ids]
    image_emb, text_emb, scale = clip_embeddings(resolved, model, texts, files, cfg.batch_size)
    pairs = np.array(
        [[index[a], index[b]] for a, b in zip(scored["category_a"], scored["category_b"])], dtype=np.int64
    ).reshape(-1, 2)
    scores = presence_scores(image_emb, text_emb, pairs, scale)
    both = both_present(scores)
    ids = scored["image_id"].tolist()
    groups = duplicate_groups(image_emb, cfg.duplicate_cosine)
    ranks = queue_order(both, groups, ids)
    prescreen = pd.DataFrame(
        {
            "image_id": ids,
            "score_a": scores[:, 0],
            "score_b": scores[:, 1],
            "both_present": both,
            "duplicate_group": [ids[g] for g in groups],
            "queue_rank": ranks,
            "model_id": resolved.model_id,
            "model_revision": resolved.revision,
        },
        columns=list(PRESCREEN.column_names),
    )
    facts = {"model_revision": resolved.revision, "text_template": TEXT_TEMPLATE, "categories": class_ids}
    prescreen_path = write_manifest(workdir, PRESCREEN, prescreen, {**(provenance or {}), **facts})

    summary: dict[str, Any] = {
        "images": len(images),
        "scored": len(scored),
        "groups": len(set(groups)),
        "auto_rejected": 0,
        "pending": 0,
        "human_kept": 0,
        "model_id": resolved.model_id,
        "model_revision": resolved.revision,
        "prescreen_manifest": str(prescreen_path),
        "verification_manifest": None,
    }
    threshold = cfg.auto_reject_below
    if not _writes_ledger(workdir, threshold, flags):
        return summary

    score_of = dict(zip(ids, both))
    auto_rows: dict[str, dict[str, Any]] = {}
    for image_id, flag, flag_reason in zip(images["image_id"], flags, flag_reasons):
        base = {"image_id": image_id, "source": "auto"}
        score = score_of.get(image_id)
        if flag is not None:
            reason = f"generation flag: {flag}" + (f" ({flag_reason})" if flag_reason else "")
        elif threshold is not None and score is not None and score < threshold:
            reason = f"both_present {_floor(score)} < {threshold}"
        else:
            auto_rows[image_id] = {**base, "decision": "pending", "reason": None, "reviewer": None, "decided_at": None}
            continue
        auto_rows[image_id] = {
            **base,
            "decision": "reject",
            "reason": reason,
            "reviewer": REVIEWER,
            "decided_at": decided_at,
        }
    verification_path, verification, kept = update_verification(workdir, auto_rows.values(), REVIEWER)
    kept_ids = set(kept)
    applied = [row["decision"] for image_id, row in auto_rows.items() if image_id not in kept_ids]
    sources = dict(zip(verification["image_id"], verification["source"]))
    summary.update(
        auto_rejected=applied.count("reject"),
        pending=applied.count("pending"),
        human_kept=sum(sources[i] == "human" for i in kept),
        verification_manifest=str(verification_path),
    )
    return summary


def _writes_ledger(workdir: Path, threshold: float | None, flags: Sequence[str | None]) -> bool:
    """Whether the pre-screen writes verification rows: rejects configured, flagged images, or a ledger exists."""
    return (
        threshold is not None
        or any(flags)
        or log_path(workdir).is_file()
        or manifest_path(workdir, "verification").is_file()
    )


def prescreen_intact(work: Path, cfg: BuildConfig) -> bool:
    """Its manifest is intact and, where it writes verification rows, every image has its row in an intact ledger."""
    if not manifest_intact(work, "prescreen"):
        return False
    try:
        images = read_manifest(work, "images")
        flags = [_generation_flag(v) for v in images[FLAG_COLUMN]] if FLAG_COLUMN in images.columns else []
        if not _writes_ledger(work, cfg.prescreen.auto_reject_below, flags):
            return True
        ledger = read_verification(work)
    except FatalError:  # the stage itself says what is wrong (e.g. how to restore the decision log)
        return False
    return ledger is not None and ledger_intact(work) and set(images["image_id"]) <= set(ledger["image_id"])


def prescreen_stage(
    work: Path, cfg: BuildConfig, provenance: dict[str, Any], *, progress: ProgressFn | None = None
) -> dict[str, Any]:
    """CLIP scores that order the verification queue; automatic rejects where configured."""
    return run_prescreen(work, cfg.prescreen, cfg.models.prescreen, provenance=provenance)
