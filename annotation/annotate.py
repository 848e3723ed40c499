"""The annotate stage: accepted images → one SAM mask and box per sounding object; click refinement; QA report.

Automatic proposals (`run_annotate`). For every image whose verification decision is `accept` and each of its two
categories (`category_a`, `category_b`), the detector (OWLv2) is asked for "a photo of a {noun}" (the noun of the
category in the categories manifest, as the prompts stage uses it). Its best box with a score of at least
`cfg.detector_threshold` prompts SAM; without one (or without a detector) the whole image `[0, 0, W, H]` is the
prompt and `detector_score` stays null. With `annotate.clip_to_box` the mask keeps only its pixels inside the
prompt box (`clip_to_box`). SAM's mask is written as `media/masks/{instance_id}.png` (mode L, 255 =
object, image resolution, byte-deterministic PNG) and its tight box (`mask_to_box`, pixel edges, x2/y2 exclusive)
is the annotation's `bbox_xyxy`. `instance_id = {image_id}_{category}`.

Resume. Rows already in the annotations manifest are kept when their mask file is present; a `refined` row is
never replaced. Rows of images that are no longer accepted are dropped from the manifest (their files stay).
The manifest is rewritten every `FLUSH_EVERY` images and at the end, each time under the manifest's lock as a
read-modify-write that never replaces a row refined meanwhile, so `refine_instance` may run alongside.

Refinement (`refine_instance`). SAM runs again on the cached image embedding with the reviewer's clicks and the
instance's current prompt box (or a new box). The first refinement keeps the automatic mask as
`media/masks/auto/{instance_id}.png`; the final mask is replaced and the row updated (method refined, clicks,
prompt box, box and area of the new mask, SAM score, IoU of the automatic mask with the final one), all under the
manifest lock with atomic file writes.

QA (`qa_report`) summarises how much the reviewers had to fix: `WORK/reports/annotation_qa.json`.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from is4.annotation.sam import SamBackend, SamError, check_prompt, mask_iou, mask_to_box
from is4.config import AnnotateConfig, BuildConfig, ModelRef
from is4.manifests.atomic import atomic_write_bytes, atomic_write_json
from is4.manifests.errors import FatalError
from is4.manifests.ids import FILE_ID_RE
from is4.manifests.io import is_blank, manifest_path, read_manifest, read_provenance, write_manifest
from is4.manifests.lock import manifest_lock
from is4.manifests.schema import ANNOTATIONS, CATEGORIES, IMAGES, VERIFICATION
from is4.pipeline.images.prompts import PromptError, depictable_categories
from is4.pipeline.stage import ProgressFn

MASK_DIR = "media/masks"
AUTO_MASK_DIR = "media/masks/auto"
REPORT_PATH = "reports/annotation_qa.json"
QUERY_TEMPLATE = "a photo of a {noun}"
FIXED_BELOW_IOU = 0.9  # a refined object whose automatic mask had a lower IoU with the final one was "fixed"
FLUSH_EVERY = 25  # images between manifest checkpoints
PNG_COMPRESS_LEVEL = 6
COLUMNS = list(ANNOTATIONS.column_names + ANNOTATIONS.optional_names)


class AnnotateError(FatalError, ValueError):
    """The annotate stage cannot run on this work directory or instance."""


# --------------------------------------------------------------------------------------------------------------------
# Paths, masks, rows
# --------------------------------------------------------------------------------------------------------------------


def instance_id_of(image_id: str, category: str) -> str:
    """`{image_id}_{category}`, checked to be usable as a file name."""
    iid = f"{image_id}_{category}"
    if not FILE_ID_RE.fullmatch(iid):
        raise AnnotateError(f"instance id {iid!r} is not usable as a file name ([A-Za-z0-9_.-], no leading dot)")
    return iid


def mask_path(instance_id: str) -> str:
    """The final mask of an instance, relative to the work directory."""
    return f"{MASK_DIR}/{instance_id}.png"


def auto_mask_path(instance_id: str) -> str:
    """Where the automatic mask of a refined instance is kept, relative to the work directory."""
    return f"{AUTO_MASK_DIR}/{instance_id}.png"


def encode_mask(mask: np.ndarray) -> bytes:
    """A boolean HxW mask as a byte-deterministic 8-bit greyscale PNG (255 = object, 0 = background)."""
    from PIL import Image

    arr = np.where(np.asarray(mask, dtype=bool), 255, 0).astype(np.uint8)
    if arr.ndim != 2:
        raise AnnotateError(f"a mask must be 2-D, got shape {arr.shape}")
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL, optimize=False)
    return buf.getvalue()


def read_mask(path: str | Path) -> np.ndarray:
    """A mask PNG as a boolean HxW array (pixel value >= 128 is object)."""
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("L")) >= 128


def _clean(value: Any) -> Any:
    """Manifest cells as plain Python values: NA/NaN → None, arrays → lists of float, numpy scalars → Python."""
    if isinstance(value, (np.ndarray, list, tuple)):
        return [float(v) for v in value]
    if is_blank(value):
        return None
    if isinstance(value, np.generic):
        return value.item()
    return value


def _read_rows(workdir: Path) -> dict[str, dict[str, Any]]:
    """The annotations manifest as {instance_id: row}; empty when it does not exist yet."""
    if not manifest_path(workdir, ANNOTATIONS.name).is_file():
        return {}
    frame = read_manifest(workdir, ANNOTATIONS)
    rows = {}
    for rec in frame.to_dict("records"):
        row = {c: _clean(rec.get(c)) for c in COLUMNS}
        rows[row["instance_id"]] = row
    return rows


def _same_settings(workdir: Path, provenance: Mapping[str, Any] | None) -> bool:
    """True when the existing manifest's automatic masks were made with this run's settings and models (its
    provenance's config and models); otherwise they are made again (a threshold or a model changed)."""
    if provenance is None or not manifest_path(workdir, ANNOTATIONS.name).is_file():
        return True
    stored = read_provenance(workdir, ANNOTATIONS.name)
    wanted = json.loads(json.dumps(dict(provenance), sort_keys=True, default=str))
    return all(stored.get(k) == wanted.get(k) for k in ("config", "models"))


def _write_rows(workdir: Path, rows: dict[str, dict[str, Any]], provenance: dict[str, Any]) -> Path:
    frame = pd.DataFrame([rows[k] for k in sorted(rows)], columns=COLUMNS)
    return write_manifest(workdir, ANNOTATIONS, frame, provenance)


def _load_image(workdir: Path, image_path: str | None, image_id: str):
    """(PIL RGB image, sha256 of the file's bytes) of an image of the images manifest."""
    from PIL import Image

    if not image_path:
        raise AnnotateError(f"image {image_id}: no image_path in the images manifest")
    path = workdir / image_path
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise AnnotateError(f"image {image_id}: {path} does not exist") from None
    with Image.open(io.BytesIO(data)) as im:
        image = im.convert("RGB")
    return image, hashlib.sha256(data).hexdigest()


def _finite_box(value: Any) -> list[float] | None:
    if value is None:
        return None
    box = [float(v) for v in value]
    return box if len(box) == 4 and all(math.isfinite(v) for v in box) else None


# --------------------------------------------------------------------------------------------------------------------
# Inputs of the stage
# --------------------------------------------------------------------------------------------------------------------


def clip_to_box(mask: np.ndarray, box: Sequence[float]) -> np.ndarray:
    """The mask's pixels whose centre lies inside box (x1, y1, x2, y2, image pixels); the rest set to False."""
    mask = np.asarray(mask, dtype=bool)
    h, w = mask.shape
    x1, y1, x2, y2 = (float(v) for v in box)
    cols = (np.arange(w) + 0.5 >= x1) & (np.arange(w) + 0.5 <= x2)
    rows = (np.arange(h) + 0.5 >= y1) & (np.arange(h) + 0.5 <= y2)
    return mask & rows[:, None] & cols[None, :]


def accepted_images(workdir: str | Path) -> pd.DataFrame:
    """Rows of the images manifest whose verification decision is `accept`, sorted by image_id."""
    workdir = Path(workdir)
    verification = read_manifest(workdir, VERIFICATION)
    images = read_manifest(workdir, IMAGES)
    accepted = set(verification.loc[verification["decision"] == "accept", "image_id"])
    missing = sorted(accepted - set(images["image_id"]))
    if missing:
        raise AnnotateError(
            f"{len(missing)} accepted image(s) are not in the images manifest (e.g. {missing[0]!r}); "
            "re-run the generate stage or the verification sync"
        )
    rows = images[images["image_id"].isin(accepted)]
    return rows.sort_values("image_id", ignore_index=True)


def category_nouns(workdir: str | Path) -> dict[str, str]:
    """{category id: object noun} from the categories manifest (the noun the prompts used)."""
    try:
        return {cid: cat.noun for cid, cat in depictable_categories(read_manifest(workdir, CATEGORIES)).items()}
    except PromptError as exc:
        raise AnnotateError(f"categories manifest: {exc}") from exc


def detector_query(noun: str) -> str:
    """The detector's text query for an object noun."""
    return QUERY_TEMPLATE.format(noun=noun)


# --------------------------------------------------------------------------------------------------------------------
# The stage
# --------------------------------------------------------------------------------------------------------------------


def run_annotate(
    workdir: str | Path,
    cfg: AnnotateConfig,
    segmenter: ModelRef,
    detector: ModelRef | None,
    *,
    progress: ProgressFn | None = None,
    provenance: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Annotate every object of every accepted image that is not annotated yet (see the module docstring).

    Models are loaded only when there is something to annotate. Returns a summary: images, instances (rows of the
    manifest), new, kept, dropped, fallback_boxes (new instances prompted with the whole image), empty_masks,
    segmenter/detector ids and revisions (None when not loaded) and the manifest path.
    """
    from is4.annotation.grounding import Detector

    workdir = Path(workdir)
    images = accepted_images(workdir)
    nouns = category_nouns(workdir)
    wanted: dict[str, list[tuple[str, str]]] = {}  # image_id → [(instance_id, category)]
    for rec in images.to_dict("records"):
        cats = []
        for cat in (rec["category_a"], rec["category_b"]):
            if cat not in nouns:
                raise AnnotateError(f"image {rec['image_id']}: category {cat!r} is not a depictable category")
            cats.append((instance_id_of(rec["image_id"], cat), cat))
        wanted[rec["image_id"]] = cats

    existing = _read_rows(workdir)
    same = _same_settings(workdir, provenance)
    keep = {
        iid
        for iid, row in existing.items()
        if row["image_id"] in wanted
        and (
            row.get("method") == "refined"  # a person's clicks outlive any setting
            or (same and row.get("mask_path") and (workdir / row["mask_path"]).is_file())
        )
    }
    todo = [rec for rec in images.to_dict("records") if any(iid not in keep for iid, _ in wanted[rec["image_id"]])]
    accepted_ids = set(wanted)
    dropped = sum(1 for row in existing.values() if row["image_id"] not in accepted_ids)

    sam: SamBackend | None = None
    det: Detector | None = None
    if todo:
        sam = SamBackend.load(segmenter, workdir, cfg.embedding_cache)
        if detector is not None:
            det = Detector.load(detector, workdir)
    provenance = {
        **(provenance or {}),
        "segmenter_revision": sam.revision if sam else None,
        "detector_revision": det.revision if det else None,
        "query_template": QUERY_TEMPLATE,
    }
    if not todo and existing and not dropped:
        provenance = read_provenance(workdir, ANNOTATIONS.name)  # nothing changes: keep the file as it is

    new_rows: dict[str, dict[str, Any]] = {}
    pending: dict[str, dict[str, Any]] = {}
    fallback = empty = 0
    path = manifest_path(workdir, ANNOTATIONS.name)
    if progress:
        progress(0, len(todo), f"{len(todo)} images to annotate, {len(keep)} instances kept")
    for n, rec in enumerate(todo, start=1):
        image_id = rec["image_id"]
        image, sha = _load_image(workdir, rec.get("image_path"), image_id)
        todo_here = [(iid, cat) for iid, cat in wanted[image_id] if iid not in keep]
        boxes: list[tuple[list[float], float] | None] = [None] * len(todo_here)
        if det is not None:
            queries = [detector_query(nouns[cat]) for _, cat in todo_here]
            boxes = det.detect(image, queries, threshold=cfg.detector_threshold)
        for (iid, cat), found in zip(todo_here, boxes):
            if found is None:
                prompt_box, score = [0.0, 0.0, float(image.width), float(image.height)], None
                fallback += 1
            else:
                prompt_box, score = found
            mask, sam_score = sam.predict(
                image_id, image, sha, box=prompt_box, multimask=cfg.multimask, mask_threshold=cfg.mask_threshold
            )
            if cfg.clip_to_box:
                mask = clip_to_box(mask, prompt_box)
            rel = mask_path(iid)
            atomic_write_bytes(workdir / rel, encode_mask(mask))
            area = int(mask.sum())
            empty += area == 0
            row = {c: None for c in COLUMNS}
            row.update(
                {
                    "instance_id": iid,
                    "image_id": image_id,
                    "category": cat,
                    "mask_path": rel,
                    "bbox_xyxy": mask_to_box(mask),
                    "method": "auto",
                    "model_id": sam.model_id,
                    "model_revision": sam.revision,
                    "detector_id": det.model_id if det else None,
                    "detector_revision": det.revision if det else None,
                    "detector_score": score,
                    "prompt_box_xyxy": [float(v) for v in prompt_box],
                    "sam_score": sam_score,
                    "area": area,
                }
            )
            new_rows[iid] = pending[iid] = row
        if n % FLUSH_EVERY == 0:
            path = _merge_and_write(workdir, pending, accepted_ids, provenance)
            pending = {}
        if progress:
            progress(n, len(todo), f"{image_id}: {len(todo_here)} instance(s)")
    if pending or dropped or not path.is_file():
        path = _merge_and_write(workdir, pending, accepted_ids, provenance)
    final = _read_rows(workdir)
    return {
        "images": len(wanted),
        "instances": len(final),
        "new": len(new_rows),
        "kept": len(keep),
        "dropped": dropped,
        "fallback_boxes": fallback,
        "empty_masks": empty,
        "segmenter_id": sam.model_id if sam else None,
        "segmenter_revision": sam.revision if sam else None,
        "detector_id": det.model_id if det else None,
        "detector_revision": det.revision if det else None,
        "embedding_stats": dict(sam.stats) if sam else None,
        "manifest": str(path),
    }


def _merge_and_write(
    workdir: Path, new_rows: dict[str, dict[str, Any]], accepted_ids: set[str], provenance: dict[str, Any]
) -> Path:
    """Read-modify-write under the lock: add `new_rows` (never over a refined row), drop non-accepted images."""
    with manifest_lock(workdir, ANNOTATIONS.name):
        rows = _read_rows(workdir)
        for iid, row in new_rows.items():
            old = rows.get(iid)
            if old is not None and old.get("method") == "refined":
                continue
            rows[iid] = row
        rows = {iid: row for iid, row in rows.items() if row["image_id"] in accepted_ids}
        return _write_rows(workdir, rows, provenance)


# --------------------------------------------------------------------------------------------------------------------
# Refinement
# --------------------------------------------------------------------------------------------------------------------


def refine_instance(
    workdir: str | Path,
    cfg: AnnotateConfig,
    segmenter: ModelRef,
    instance_id: str,
    *,
    points: Sequence[Sequence[float]],
    box: Sequence[float] | None = None,
    backend: Any = None,
) -> dict[str, Any]:
    """Re-run SAM for one instance with clicks and update its mask and manifest row (see the module docstring).

    `points` is the complete click set of this refinement, `(x, y, label)` in image pixels (1 positive, 0
    negative); it replaces the clicks of an earlier refinement. The box prompt is `box` when given, else the
    instance's current prompt box (the detector's box, or the whole image). SAM proposes three masks only for a
    single click (`cfg.multimask`); several clicks are unambiguous and get one mask, as SAM's authors advise.
    `backend` is anything with `SamBackend.predict`'s signature (default: `SamBackend.load(segmenter, …)`; pass
    a loaded one to keep its embedding cache warm across clicks). Returns the updated row.
    """
    workdir = Path(workdir)
    try:
        new_box, pts = check_prompt(box, points) if (box is not None or points) else (None, [])
    except SamError as exc:
        raise AnnotateError(f"{instance_id}: {exc}") from exc
    if not pts and new_box is None:
        raise AnnotateError(f"{instance_id}: a refinement needs at least one click or a new box")
    row = _read_rows(workdir).get(instance_id)
    if row is None:
        raise AnnotateError(f"instance {instance_id!r} is not in the annotations manifest")
    images = read_manifest(workdir, IMAGES)
    match = images[images["image_id"] == row["image_id"]]
    if match.empty:
        raise AnnotateError(f"{instance_id}: image {row['image_id']!r} is not in the images manifest")
    image, sha = _load_image(workdir, match.iloc[0]["image_path"], row["image_id"])
    prompt_box = (
        new_box or _finite_box(row.get("prompt_box_xyxy")) or [0.0, 0.0, float(image.width), float(image.height)]
    )
    if backend is None:
        backend = SamBackend.load(segmenter, workdir, cfg.embedding_cache)
    mask, score = backend.predict(
        row["image_id"],
        image,
        sha,
        box=prompt_box,
        points=pts,
        multimask=cfg.multimask and len(pts) <= 1,
        mask_threshold=cfg.mask_threshold,
    )
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != (image.height, image.width):
        raise AnnotateError(
            f"{instance_id}: the segmenter returned a {mask.shape} mask for a {image.height}×{image.width} image"
        )

    with manifest_lock(workdir, ANNOTATIONS.name):
        rows = _read_rows(workdir)
        row = rows.get(instance_id)
        if row is None:
            raise AnnotateError(f"instance {instance_id!r} left the annotations manifest during the refinement")
        final_rel = row.get("mask_path") or mask_path(instance_id)
        auto_rel = row.get("auto_mask_path") or auto_mask_path(instance_id)
        if not (workdir / auto_rel).is_file():
            # First refinement: the current final mask is the automatic one. (If the copy exists but the row does
            # not name it, an earlier refinement stopped after copying it; that copy is the automatic mask.)
            try:
                atomic_write_bytes(workdir / auto_rel, (workdir / final_rel).read_bytes())
            except FileNotFoundError:
                raise AnnotateError(f"{instance_id}: its mask {final_rel} is missing; re-run annotate") from None
        auto = read_mask(workdir / auto_rel)
        if auto.shape != mask.shape:
            raise AnnotateError(f"{instance_id}: the automatic mask is {auto.shape}, the image {mask.shape}")
        atomic_write_bytes(workdir / final_rel, encode_mask(mask))
        row.update(
            {
                "mask_path": final_rel,
                "method": "refined",
                "points": json.dumps([[x, y, label] for x, y, label in pts]),
                "prompt_box_xyxy": [float(v) for v in prompt_box],
                "bbox_xyxy": mask_to_box(mask),
                "sam_score": float(score),
                "auto_mask_path": auto_rel,
                "auto_iou": mask_iou(auto, mask),
                "area": int(mask.sum()),
                "model_id": getattr(backend, "model_id", row.get("model_id")),
                "model_revision": getattr(backend, "revision", row.get("model_revision")),
            }
        )
        rows[instance_id] = row
        _write_rows(workdir, rows, read_provenance(workdir, ANNOTATIONS.name))
    return dict(row)


# --------------------------------------------------------------------------------------------------------------------
# QA report
# --------------------------------------------------------------------------------------------------------------------


def qa_report(workdir: str | Path) -> dict[str, Any]:
    """Annotation QA numbers, also written to `WORK/reports/annotation_qa.json`.

    instances, images, refined, auto; auto_iou_mean / auto_iou_min over refined instances (IoU of the automatic
    mask with the final one; None when nothing was refined); objects_fixed (refined with auto_iou < 0.9);
    fallback_boxes (instances whose automatic prompt was the whole image: no detector score); empty_masks.
    """
    workdir = Path(workdir)
    rows = list(_read_rows(workdir).values())
    refined = [r for r in rows if r.get("method") == "refined"]
    ious = [r["auto_iou"] for r in refined if r.get("auto_iou") is not None]
    report = {
        "instances": len(rows),
        "images": len({r["image_id"] for r in rows}),
        "refined": len(refined),
        "auto": len(rows) - len(refined),
        "auto_iou_mean": float(np.mean(ious)) if ious else None,
        "auto_iou_min": float(np.min(ious)) if ious else None,
        "objects_fixed": sum(1 for v in ious if v < FIXED_BELOW_IOU),
        "fixed_below_iou": FIXED_BELOW_IOU,
        "fallback_boxes": sum(1 for r in rows if r.get("detector_score") is None),
        "empty_masks": sum(1 for r in rows if r.get("area") == 0),
    }
    atomic_write_json(workdir / REPORT_PATH, report)
    return report


def annotate_stage(
    work: Path, cfg: BuildConfig, provenance: dict[str, Any], *, progress: ProgressFn | None = None
) -> dict[str, Any]:
    """The annotate stage as the CLI and the flow run it: automatic proposals, then the QA report."""
    summary = run_annotate(
        work, cfg.annotate, cfg.models.segmenter, cfg.models.detector, progress=progress, provenance=provenance
    )
    summary["qa"] = qa_report(work)
    return summary
