"""The review dataset of a build: built from its manifests, with saved views, and kept up to date (`refresh`).

One persistent dataset per build: a sample per generated image (`filepath` = the PNG's absolute path) with its
prompt fields, pre-screen scores, current decision (`decision`, `decision_reason`, `decision_source`, `reviewer`,
`decided_at`, also shown as tags), masks, the clicks of refined masks and `annotated_objects` (its rows in the
annotations manifest), and after match `audio_a` / `audio_b` (the absolute paths of the clips matched to the two
objects, played by the plugin's audio panel). Saved views: `to-verify` (no decision tag and decision pending, by
`queue_rank`), `accepted`, `rejected`, `conflicts` (both tags), `to-annotate` (accepted, fewer annotation rows
than its two objects: what the annotate stage does next), `annotated` (accepted, both objects annotated),
`needs-fix` (tagged `needs-fix`, or accepted with fewer masks than annotations: an empty SAM mask, which match
leaves out of the release with its whole image; it leaves the view once a refinement gives it a mask).

The App shows on each tile the decision tags, the masks (a colour per category, so the two objects differ) and both
categories (the dataset's default active fields and colour scheme).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from PIL import Image

from is4.config import AnnotateConfig, ModelRef, ReviewConfig
from is4.manifests.io import read_manifest

from .clicks import BOXES_FIELD, CLICKS_FIELD, MASKS_FIELD, _clicks_from_points, _mask_detection, reload_masks
from .connect import INFO_KEY, ReviewError, _absolute, _load, connect, dataset_name
from .sync import sync
from .tags import ACCEPT_TAG, NEEDS_FIX_TAG, REJECT_TAG, _manifest_or_none, _rows_by, _utc, decision_tags, tag_decision

logger = logging.getLogger(__name__)

SAVED_VIEWS = ("to-verify", "accepted", "rejected", "conflicts", "to-annotate", "annotated", "needs-fix")

_STRING_FIELDS = (
    "image_id",
    "prompt",
    "category_a",
    "category_b",
    "style",
    "template",
    "model_id",
    "model_revision",
    "duplicate_group",
    "decision",
    "decision_reason",
    "decision_source",
    "reviewer",
    "audio_a",
    "audio_b",
)
_INT_FIELDS = ("seed", "queue_rank", "annotated_objects")
_FLOAT_FIELDS = ("score_a", "score_b", "both_present")
_IMAGE_COLUMNS = ("prompt", "category_a", "category_b", "style", "template", "seed", "model_id", "model_revision")
_PRESCREEN_COLUMNS = ("score_a", "score_b", "both_present", "duplicate_group", "queue_rank")


def _declare_fields(fo: Any, dataset: Any) -> None:
    for name in _STRING_FIELDS:
        dataset.add_sample_field(name, fo.StringField)
    for name in _INT_FIELDS:
        dataset.add_sample_field(name, fo.IntField)
    for name in _FLOAT_FIELDS:
        dataset.add_sample_field(name, fo.FloatField)
    dataset.add_sample_field("decided_at", fo.DateTimeField)
    for name, doc in ((MASKS_FIELD, fo.Detections), (BOXES_FIELD, fo.Detections), (CLICKS_FIELD, fo.Keypoints)):
        dataset.add_sample_field(name, fo.EmbeddedDocumentField, embedded_doc_type=doc)


def _save_views(fo: Any, dataset: Any) -> None:
    from fiftyone import ViewField as F

    has_accept = F("tags").contains(ACCEPT_TAG)
    has_reject = F("tags").filter(F().re_match(f"^{REJECT_TAG}(:|$)")).length() > 0
    # Both objects have an annotations row: the annotate stage has nothing left to do for the image (an empty mask
    # is its own row, and sends the image to needs-fix rather than back to to-annotate).
    both_annotated = F("annotated_objects") >= 2
    # An annotation whose mask is empty has no detection (`clicks._mask_detection`), so fewer masks than annotations
    # means an object match will leave out; the mask reload after a refinement takes the image out again.
    empty_mask = F("annotated_objects") > F(f"{MASKS_FIELD}.detections").length()
    accepted = dataset.match(has_accept & ~has_reject)
    views = {
        "to-verify": (
            dataset.match(~has_accept & ~has_reject & (F("decision") == "pending")).sort_by("queue_rank"),
            "images still to accept or reject, in queue order",
        ),
        "accepted": (accepted, "tagged accept"),
        "rejected": (dataset.match(has_reject & ~has_accept), "tagged reject:<reason>"),
        "conflicts": (dataset.match(has_accept & has_reject), "tagged both accept and reject: fix the tags"),
        "to-annotate": (accepted.match(~both_annotated), "accepted, an object without annotation: annotate does next"),
        "annotated": (accepted.match(both_annotated), "accepted, both objects annotated"),
        "needs-fix": (
            dataset.match(F("tags").contains(NEEDS_FIX_TAG) | (has_accept & ~has_reject & empty_mask)),
            "masks to refine from the clicks, and accepted images with an empty mask (left out of the release)",
        ),
    }
    for name, (view, description) in views.items():
        dataset.save_view(name, view, description=description, overwrite=True)


def _show(fo: Any, dataset: Any) -> None:
    """The App's defaults for the dataset: tags, masks and both categories on the tiles, a colour per category."""
    dataset.app_config.active_fields = fo.ActiveFields(paths=["tags", MASKS_FIELD, "category_a", "category_b"])
    dataset.app_config.color_scheme = fo.ColorScheme(color_by="value", opacity=0.5)
    dataset.save()


def _clip_paths(workdir: Path) -> dict[str, dict[str, str]]:
    """{image_id: {category: absolute audio path}} from the instances manifest (empty before match)."""
    out: dict[str, dict[str, str]] = {}
    for row in _rows_by(_manifest_or_none(workdir, "instances"), "instance_id").values():
        if row.get("audio_path"):
            out.setdefault(row["image_id"], {})[row["category"]] = str((workdir / row["audio_path"]).resolve())
    return out


def _set_audio(dataset: Any, workdir: Path) -> None:
    """Set `audio_a` / `audio_b` from the instances manifest (None where no clip is matched)."""
    clips = _clip_paths(workdir)
    ids, image_ids, cats_a, cats_b = dataset.values(["id", "image_id", "category_a", "category_b"])
    for field, cats in (("audio_a", cats_a), ("audio_b", cats_b)):
        values = {s: clips.get(i, {}).get(c) for s, i, c in zip(ids, image_ids, cats)}
        if values:
            dataset.set_values(field, values, key_field="id")


def _unsynced(dataset: Any) -> list[str]:
    """image_ids whose decision tags differ from the decision they were last synced with."""
    out = []
    for image_id, tags, decision, reason in zip(*dataset.values(["image_id", "tags", "decision", "decision_reason"])):
        base = (decision or "pending", reason)
        if tag_decision(tags or [], base) != base:
            out.append(image_id)
    return out


def build_dataset(
    workdir: str | Path,
    cfg: ReviewConfig,
    *,
    overwrite: bool = False,
    discard_unsynced: bool = False,
    annotate: AnnotateConfig | None = None,
    segmenter: ModelRef | None = None,
) -> str:
    """Build the persistent review dataset of this build from its manifests and return its name.

    `overwrite` rebuilds an existing dataset (decisions, masks and refinement clicks come back from the manifests);
    it refuses while the old one has decision tags that were never synced, unless `discard_unsynced`.
    `annotate`/`segmenter` are stored with the dataset for the `refine_masks` operator.
    """
    workdir = Path(workdir).resolve()
    fo = connect(cfg, workdir)
    name = dataset_name(workdir, cfg)
    if fo.dataset_exists(name):
        if not overwrite:
            raise ReviewError(f"FiftyOne dataset {name!r} exists; pass overwrite=True to rebuild it from manifests")
        unsynced = _unsynced(fo.load_dataset(name))
        if unsynced and not discard_unsynced:
            raise ReviewError(
                f"dataset {name!r} has unsynced decision tags on {len(unsynced)} image(s) "
                f"({', '.join(unsynced[:5])}{', …' if len(unsynced) > 5 else ''}): run sync first"
            )

    images = read_manifest(workdir, "images").sort_values("image_id", ignore_index=True)
    prescreen = _rows_by(_manifest_or_none(workdir, "prescreen"), "image_id")
    verification = _rows_by(_manifest_or_none(workdir, "verification"), "image_id")
    annotations: dict[str, list[dict[str, Any]]] = {}
    for row in _rows_by(_manifest_or_none(workdir, "annotations"), "instance_id").values():
        annotations.setdefault(row["image_id"], []).append(row)

    samples = []
    for image in _rows_by(images, "image_id").values():
        if not image.get("image_path"):
            continue  # nothing to show (a flagged image that was never written)
        file = workdir / image["image_path"]
        if not file.is_file():
            raise ReviewError(f"image {image['image_id']}: {file} does not exist")
        with Image.open(file) as im:
            width, height = im.size
            channels = len(im.getbands())
        image_id = image["image_id"]
        verdict = verification.get(image_id, {})
        decision = verdict.get("decision") or "pending"
        reason = verdict.get("reason")
        rows = sorted(annotations.get(image_id, []), key=lambda r: r["instance_id"])
        detections = [d for d in (_mask_detection(fo, workdir, r, width, height) for r in rows) if d is not None]
        sample = fo.Sample(
            filepath=str(file),
            tags=decision_tags(decision, reason),
            metadata=fo.ImageMetadata(
                size_bytes=file.stat().st_size,
                mime_type="image/png",
                width=width,
                height=height,
                num_channels=channels,
            ),
            image_id=image_id,
            **{c: image.get(c) for c in _IMAGE_COLUMNS},
            **{c: prescreen.get(image_id, {}).get(c) for c in _PRESCREEN_COLUMNS},
            decision=decision,
            decision_reason=reason,
            decision_source=verdict.get("source"),
            reviewer=verdict.get("reviewer"),
            decided_at=_utc(verdict.get("decided_at")),
            annotated_objects=len(rows),
        )
        sample[MASKS_FIELD] = fo.Detections(detections=detections)
        clicks = _clicks_from_points(fo, rows, width, height)
        if clicks is not None:
            sample[CLICKS_FIELD] = clicks
        samples.append(sample)

    dataset = fo.Dataset(name, persistent=True, overwrite=overwrite)
    _declare_fields(fo, dataset)
    if samples:
        dataset.add_samples(samples)
    dataset.info[INFO_KEY] = {
        "workdir": str(workdir),
        # With the database made absolute, so that the App server (another working directory) finds the same one.
        "review": _absolute(cfg, workdir).model_dump(mode="json"),
        "annotate": annotate.model_dump(mode="json") if annotate is not None else None,
        "segmenter": segmenter.model_dump(mode="json") if segmenter is not None else None,
    }
    dataset.save()
    _set_audio(dataset, workdir)
    _show(fo, dataset)
    _save_views(fo, dataset)
    logger.info("review dataset %s: %d samples", name, len(samples))
    return name


def _annotation_counts(workdir: Path) -> dict[str, int]:
    """Rows of each image in the annotations manifest (none when it does not exist yet)."""
    counts: dict[str, int] = {}
    for row in _rows_by(_manifest_or_none(workdir, "annotations"), "instance_id").values():
        counts[row["image_id"]] = counts.get(row["image_id"], 0) + 1
    return counts


def ensure_dataset(workdir: str | Path, cfg: ReviewConfig, **kwargs: Any) -> str:
    """The review dataset's name, building it first if it does not exist."""
    fo = connect(cfg, workdir)
    name = dataset_name(workdir, cfg)
    return name if fo.dataset_exists(name) else build_dataset(workdir, cfg, **kwargs)


def open_dataset(workdir: str | Path, cfg: ReviewConfig) -> Any:
    """The review dataset of this build (it must exist)."""
    fo = connect(cfg, workdir)
    return _load(fo, dataset_name(workdir, cfg))


def refresh(
    workdir: str | Path,
    cfg: ReviewConfig,
    reviewer: str,
    *,
    annotate: AnnotateConfig | None = None,
    segmenter: ModelRef | None = None,
) -> dict[str, Any]:
    """Bring the review dataset up to date with the manifests without losing any reviewer's work.

    A new build gets its dataset. An existing one is synced first (tags → manifest); if it shows the same images,
    only its masks are reloaded (so clicks not yet applied survive), otherwise it is rebuilt from the manifests —
    unless conflicting or invalid tags are still unsynced, in which case it is left as it is and that is reported.
    """
    workdir = Path(workdir).resolve()
    fo = connect(cfg, workdir)
    name = dataset_name(workdir, cfg)
    if not fo.dataset_exists(name):
        build_dataset(workdir, cfg, annotate=annotate, segmenter=segmenter)
        return {"dataset": name, "action": "built"}
    summary: dict[str, Any] = {"dataset": name, "sync": sync(workdir, cfg, reviewer)}
    dataset = fo.load_dataset(name)
    images = read_manifest(workdir, "images")
    wanted = set(images.loc[images["image_path"].notna(), "image_id"])
    if set(dataset.distinct("image_id")) == wanted:
        summary["action"] = f"masks reloaded on {reload_masks(workdir, cfg)} samples"
        counts = _annotation_counts(workdir)
        sample_ids, image_ids = dataset.values(["id", "image_id"])
        dataset.set_values(
            "annotated_objects", {s: counts.get(i, 0) for s, i in zip(sample_ids, image_ids)}, key_field="id"
        )
        _set_audio(dataset, workdir)
    elif _unsynced(dataset):
        summary["action"] = "kept: fix the conflicting or invalid tags, then sync"
    else:
        build_dataset(workdir, cfg, overwrite=True, annotate=annotate, segmenter=segmenter)
        summary["action"] = "rebuilt"
    return summary
