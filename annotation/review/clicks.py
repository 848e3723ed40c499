"""Masks and refinement clicks as FiftyOne labels: the pending refinements of `needs-fix` samples, mask reloads.

Clicks are `fo.Keypoints` in `clicks`: `label` = the category id (the instance is `{image_id}_{label}`), `points`
= `[[x, y], …]` normalised to [0, 1] by the image size, as the App stores keypoints (NaN points are ignored), and
attribute `click` = `"positive"` (the default) or `"negative"`. An optional `fix_boxes` detection of the same
category gives a box prompt. Masks are `fo.Detections` in `sam` (label = category id, attributes `instance_name`
= the instance id, since FiftyOne reserves `instance_id`, and `method`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from is4.config import AnnotateConfig, ModelRef, ReviewConfig

from .connect import INFO_KEY, ReviewError, _load, connect, dataset_name
from .tags import NEEDS_FIX_TAG, _manifest_or_none, _rows_by

CLICKS_FIELD = "clicks"
BOXES_FIELD = "fix_boxes"
MASKS_FIELD = "sam"
CLICK_ATTR = "click"
POSITIVE, NEGATIVE = "positive", "negative"

Point = tuple[float, float, int]
Refinement = tuple[str, list[Point], tuple[float, float, float, float] | None]
RefineFn = Callable[..., dict[str, Any]]


def _mask_detection(fo: Any, workdir: Path, row: dict[str, Any], width: int, height: int) -> Any | None:
    """The `fo.Detection` of one annotations row: relative box and mask cropped from the mask's extent."""
    attrs = {"instance_name": row["instance_id"], "method": row.get("method")}
    mask_path = row.get("mask_path")
    if mask_path:
        file = workdir / mask_path
        if not file.is_file():
            raise ReviewError(f"annotation {row['instance_id']}: mask {file} does not exist")
        with Image.open(file) as im:
            mask = np.asarray(im.convert("L")) > 127
        if mask.shape != (height, width):
            raise ReviewError(
                f"annotation {row['instance_id']}: mask is {mask.shape[1]}x{mask.shape[0]}, image {width}x{height}"
            )
        ys, xs = np.nonzero(mask)
        if len(xs):
            x0, x1, y0, y1 = int(xs.min()), int(xs.max()) + 1, int(ys.min()), int(ys.max()) + 1
            return fo.Detection(
                label=row["category"],
                bounding_box=[x0 / width, y0 / height, (x1 - x0) / width, (y1 - y0) / height],
                mask=mask[y0:y1, x0:x1],
                **attrs,
            )
    box = row.get("bbox_xyxy")
    if box is None or len(box) != 4:
        return None
    x0, y0, x1, y1 = (float(v) for v in box)
    return fo.Detection(
        label=row["category"], bounding_box=[x0 / width, y0 / height, (x1 - x0) / width, (y1 - y0) / height], **attrs
    )


def _clicks_from_points(fo: Any, rows: list[dict[str, Any]], width: int, height: int) -> Any | None:
    """The `clicks` keypoints that produced refined masks (the annotations rows' `points` JSON, in pixels)."""
    keypoints = []
    for row in rows:
        if not row.get("points"):
            continue
        groups: dict[str, list[list[float]]] = {POSITIVE: [], NEGATIVE: []}
        for x, y, label in json.loads(row["points"]):
            groups[POSITIVE if int(label) == 1 else NEGATIVE].append([float(x) / width, float(y) / height])
        for polarity, points in groups.items():
            if points:
                keypoints.append(fo.Keypoint(label=row["category"], points=points, **{CLICK_ATTR: polarity}))
    return fo.Keypoints(keypoints=keypoints) if keypoints else None


def pending_refinements(
    workdir: str | Path, cfg: ReviewConfig, *, sample_ids: Iterable[str] | None = None
) -> list[Refinement]:
    """(instance_id, [(x, y, label)…] in image pixels, box xyxy in pixels or None) for the `needs-fix` samples.

    Clicks come from the `clicks` keypoints (module doc: the scheme); label 1 is positive, 0 negative. A box comes
    from a `fix_boxes` detection of the same category. `sample_ids` narrows the samples considered.
    """
    fo = connect(cfg, workdir)
    dataset = _load(fo, dataset_name(workdir, cfg))
    view = dataset.match_tags(NEEDS_FIX_TAG)
    if sample_ids is not None:
        view = view.select(list(sample_ids))
    out: list[Refinement] = []
    problems: list[str] = []
    for sample in view.select_fields([CLICKS_FIELD, BOXES_FIELD, "image_id", "category_a", "category_b", "metadata"]):
        width, height = sample.metadata.width, sample.metadata.height
        categories = {sample["category_a"], sample["category_b"]}
        points: dict[str, list[Point]] = {}
        clicks = sample[CLICKS_FIELD]
        for kp in clicks.keypoints if clicks is not None else []:
            polarity = getattr(kp, CLICK_ATTR, None) or POSITIVE
            if polarity not in (POSITIVE, NEGATIVE) or kp.label not in categories:
                problems.append(f"{sample['image_id']}: keypoint label {kp.label!r}, click {polarity!r}")
                continue
            for x, y in kp.points:
                if x is None or y is None or np.isnan(x) or np.isnan(y):
                    continue
                if not (0 <= x <= 1 and 0 <= y <= 1):
                    problems.append(f"{sample['image_id']}: click ({x}, {y}) outside the image")
                    continue
                points.setdefault(kp.label, []).append((x * width, y * height, 1 if polarity == POSITIVE else 0))
        boxes = {}
        fix = sample[BOXES_FIELD]
        for det in fix.detections if fix is not None else []:
            if det.label not in categories:
                problems.append(f"{sample['image_id']}: box label {det.label!r}")
                continue
            bx, by, bw, bh = det.bounding_box
            boxes[det.label] = (bx * width, by * height, (bx + bw) * width, (by + bh) * height)
        for category in sorted(set(points) | set(boxes)):
            out.append((f"{sample['image_id']}_{category}", points.get(category, []), boxes.get(category)))
    if problems:
        raise ReviewError(
            f"clicks must be keypoints labelled with one of the image's categories, attribute {CLICK_ATTR!r} "
            f"{POSITIVE!r} or {NEGATIVE!r}, inside the image: " + "; ".join(problems)
        )
    return sorted(out, key=lambda r: r[0])


def reload_masks(workdir: str | Path, cfg: ReviewConfig, image_ids: Iterable[str] | None = None) -> int:
    """Set the `sam` field of the given images (all when None) from the annotations manifest; return how many."""
    workdir = Path(workdir).resolve()
    fo = connect(cfg, workdir)
    dataset = _load(fo, dataset_name(workdir, cfg))
    by_image: dict[str, list[dict[str, Any]]] = {}
    for row in _rows_by(_manifest_or_none(workdir, "annotations"), "instance_id").values():
        by_image.setdefault(row["image_id"], []).append(row)
    view = dataset if image_ids is None else dataset.match({"image_id": {"$in": list(image_ids)}})
    values = {}
    for sample_id, image_id, width, height in zip(
        *view.values(["id", "image_id", "metadata.width", "metadata.height"])
    ):
        rows = sorted(by_image.get(image_id, []), key=lambda r: r["instance_id"])
        dets = [d for d in (_mask_detection(fo, workdir, r, width, height) for r in rows) if d is not None]
        values[sample_id] = fo.Detections(detections=dets)
    if values:
        dataset.set_values(MASKS_FIELD, values, key_field="id")
    return len(values)


def refine_samples(dataset: Any, sample_ids: Iterable[str] | None, refine: RefineFn) -> list[dict[str, Any]]:
    """Run `refine(workdir, annotate_cfg, segmenter, instance_id, points=…, box=…)` for each pending refinement of
    the dataset's `needs-fix` samples (narrowed to `sample_ids`), then reload their masks; return the new rows.

    The work directory, configs and segmenter are the ones `build_dataset` stored in the dataset's info.
    """
    info = dataset.info.get(INFO_KEY) or {}
    if not info.get("workdir"):
        raise ReviewError(f"dataset {dataset.name!r} was not built by is4 (no work directory in its info)")
    if not info.get("segmenter"):
        raise ReviewError(f"dataset {dataset.name!r} has no segmenter: rebuild it with build_dataset(segmenter=…)")
    workdir = Path(info["workdir"])
    cfg = ReviewConfig.model_validate(info["review"], strict=False)
    annotate_cfg = AnnotateConfig.model_validate(info.get("annotate") or {}, strict=False)
    segmenter = ModelRef.model_validate(info["segmenter"], strict=False)
    results = []
    for instance_id, points, box in pending_refinements(workdir, cfg, sample_ids=sample_ids):
        results.append(refine(workdir, annotate_cfg, segmenter, instance_id, points=points, box=box))
    if results:
        reload_masks(workdir, cfg, sorted({r["image_id"] for r in results}))
    return results
