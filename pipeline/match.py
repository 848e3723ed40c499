"""The match stage: give both objects of every complete accepted image a real VGGSound clip of its category.

For each category the pool is its usable clips (status ok, split in `match.splits`, label mapping to the category,
not listed in any `match.exclude_clip_lists` file) sorted by `stable_rank(seed, "match", category, clip_id)`. The
category's instances, sorted by instance id, take the pool's clips in order, each clip once while the pool lasts;
then the pool is reused from its start and those rows are marked `reused`. The result depends on the seed and the
ids only, never on the order of manifest rows.

Leakage guard: a clip listed in an exclusion file (a training manifest — Parquet with a `clip_id` column — or an id
list with one clip id or YouTube id per line; a YouTube id excludes every clip of that video) is never used. A
category that has instances but no usable clip fails the stage with `MatchError` naming it and saying how many of
its clips the exclusion removed, rather than releasing an object that cannot sound.

IS4's unit is the image with both sounding objects (IIoU scores every object of an image), so an accepted image enters
`instances` only when both of its categories (`category_a`, `category_b` of the images manifest) have an annotation
with a non-empty mask (a box); otherwise the whole image is left out with its reasons (`empty-mask: <category>`,
`missing-annotation: <category>`). Each image's reasons, the counts by reason and the sha256 of the instances
manifest they describe go to `WORK/reports/match.json` (`REPORT_PATH`), which the release card reads. The two
instances of an image take their clips from the pools of two different categories, so they never share a clip;
`check_assignment` asserts that and that every clip's label maps to its instance's category.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from is4.config import BuildConfig, MatchConfig
from is4.manifests.atomic import atomic_write_json
from is4.manifests.checksum import sha256_file
from is4.manifests.errors import FatalError
from is4.manifests.ids import CLIP_ID_RE, stable_rank
from is4.manifests.io import is_blank, read_manifest, write_manifest
from is4.manifests.schema import ANNOTATIONS, CATEGORIES, CLIPS, IMAGES, INSTANCES, VERIFICATION
from is4.pipeline.stage import ProgressFn

COLUMNS = (
    "instance_id",
    "image_id",
    "category",
    "clip_id",
    "audio_path",
    "label",
    "reused",
    "image_path",
    "mask_path",
    "bbox_xyxy",
)
_PARQUET_MAGIC = b"PAR1"
REPORT_PATH = "reports/match.json"
EMPTY_MASK, MISSING_ANNOTATION = "empty-mask", "missing-annotation"


class MatchError(FatalError, ValueError):
    """The match stage cannot give every instance a clip (or an input is unusable)."""


def read_exclusions(paths: list[Path] | tuple[Path, ...]) -> tuple[frozenset[str], frozenset[str]]:
    """(clip ids, YouTube ids) listed in the exclusion files; an unreadable file raises MatchError naming it.

    A file is Parquet if it starts with the Parquet magic bytes (whatever its name); it must have a `clip_id`
    column. Anything else is read as an id list (`subsets.read_id_list`).
    """
    from is4.pipeline.ingest.subsets import read_id_list
    from is4.pipeline.ingest.vggsound_csv import CsvError

    clip_ids: set[str] = set()
    ytids: set[str] = set()
    for path in paths:
        path = Path(path)
        try:
            with open(path, "rb") as fh:
                head = fh.read(4)
        except OSError as exc:
            raise MatchError(f"{path}: cannot read exclusion list: {exc.strerror}") from None
        if head == _PARQUET_MAGIC:
            try:
                schema = pq.read_schema(path)
                if "clip_id" not in schema.names:
                    raise MatchError(
                        f"{path}: exclusion manifest has no clip_id column (columns: {', '.join(schema.names)})"
                    )
                column = pq.read_table(path, columns=["clip_id"]).column("clip_id")
            except (pa.ArrowInvalid, OSError) as exc:
                raise MatchError(f"{path}: not a readable Parquet file: {exc}") from exc
            clip_ids.update(str(v) for v in column.to_pylist() if v is not None)
        else:
            try:
                ids, yts = read_id_list(path)
            except CsvError as exc:
                raise MatchError(str(exc)) from exc
            clip_ids.update(ids)
            ytids.update(yts)
    return frozenset(clip_ids), frozenset(ytids)


def _is_excluded(clip_id: str, excluded_ids: frozenset[str], excluded_ytids: frozenset[str]) -> bool:
    if clip_id in excluded_ids:
        return True
    m = CLIP_ID_RE.fullmatch(clip_id)
    return bool(m and m["ytid"] in excluded_ytids)


def assign_clips(
    instances: list[dict[str, Any]], pools: dict[str, list[dict[str, Any]]], seed: int
) -> list[dict[str, Any]]:
    """Pair each instance (dicts with instance_id, category) with a clip of its category's pool.

    `pools` maps category → clip dicts (clip_id, label, audio_path), in any order; they are ranked here. Returns
    one row per instance, sorted by instance id, with clip_id, label, audio_path and reused set. Every category
    of `instances` must have a non-empty pool.
    """
    ranked = {
        cat: sorted(clips, key=lambda c: (stable_rank(seed, "match", cat, c["clip_id"]), c["clip_id"]))
        for cat, clips in pools.items()
    }
    by_category: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for inst in instances:
        by_category[inst["category"]].append(inst)
    rows = []
    for cat in sorted(by_category):
        pool = ranked.get(cat) or []
        if not pool:
            raise MatchError(f"category {cat!r} has no clip to match")
        for k, inst in enumerate(sorted(by_category[cat], key=lambda r: r["instance_id"])):
            clip = pool[k % len(pool)]
            rows.append(
                {
                    **inst,
                    "clip_id": clip["clip_id"],
                    "label": clip["label"],
                    "audio_path": clip["audio_path"],
                    "reused": k >= len(pool),
                }
            )
    return sorted(rows, key=lambda r: r["instance_id"])


def complete_images(
    annotations: pd.DataFrame, images: pd.DataFrame, accepted: set[str]
) -> tuple[list[dict[str, Any]], dict[str, list[str]]]:
    """(the instances of the accepted images whose two objects both have a mask, {image_id: reasons} of the rest).

    Reasons are `empty-mask: <category>` (no mask or no box) and `missing-annotation: <category>`, by category. An
    annotation of an accepted image must be one of the image's two categories and be called `{image_id}_{category}`,
    and an image that enters must have an image file; anything else raises MatchError naming it.
    """
    image_rows = {r["image_id"]: r for r in images.to_dict("records")}
    by_image: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    for rec in annotations.to_dict("records"):
        if rec["image_id"] not in accepted:
            continue
        if rec["image_id"] not in image_rows:
            raise MatchError(f"instance {rec['instance_id']}: image {rec['image_id']!r} is not in the images manifest")
        if rec["instance_id"] != f"{rec['image_id']}_{rec['category']}":
            raise MatchError(
                f"annotation {rec['instance_id']!r}: the id is not {{image_id}}_{{category}} "
                f"({rec['image_id']}_{rec['category']})"
            )
        by_image[rec["image_id"]][rec["category"]] = rec

    instances: list[dict[str, Any]] = []
    excluded: dict[str, list[str]] = {}
    for image_id in sorted(accepted & image_rows.keys()):
        image = image_rows[image_id]
        pair = (image["category_a"], image["category_b"])
        if pair[0] == pair[1]:
            raise MatchError(f"image {image_id}: category_a and category_b are both {pair[0]!r} in the images manifest")
        found = by_image.get(image_id, {})
        stray = sorted(set(found) - set(pair))
        if stray:
            raise MatchError(
                f"image {image_id}: annotation of {', '.join(map(repr, stray))}, which is not one of the "
                f"image's categories {pair[0]!r}, {pair[1]!r}"
            )
        reasons = []
        for category in sorted(pair):
            rec = found.get(category)
            if rec is None:
                reasons.append(f"{MISSING_ANNOTATION}: {category}")
            elif is_blank(rec.get("mask_path")) or is_blank(rec.get("bbox_xyxy")):
                reasons.append(f"{EMPTY_MASK}: {category}")
        if reasons:
            excluded[image_id] = reasons
            continue
        if is_blank(image.get("image_path")):
            raise MatchError(f"image {image_id}: no image_path in the images manifest")
        for category in sorted(pair):
            rec = found[category]
            instances.append(
                {
                    "instance_id": rec["instance_id"],
                    "image_id": image_id,
                    "category": category,
                    "image_path": image["image_path"],
                    "mask_path": rec["mask_path"],
                    "bbox_xyxy": [float(v) for v in rec["bbox_xyxy"]],
                }
            )
    return instances, excluded


def check_assignment(rows: list[dict[str, Any]], label_to_category: Mapping[str, str]) -> None:
    """Raise MatchError (a bug, never bad input) unless every image has two instances of two categories with two
    different clips, each clip's label mapping to its instance's category."""
    by_image: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        if label_to_category.get(row["label"]) != row["category"]:
            raise MatchError(
                f"bug: instance {row['instance_id']} got clip {row['clip_id']} labelled {row['label']!r}, "
                f"which is not category {row['category']!r}"
            )
        by_image[row["image_id"]].append(row)
    for image_id, pair in sorted(by_image.items()):
        if len(pair) != 2 or pair[0]["category"] == pair[1]["category"] or pair[0]["clip_id"] == pair[1]["clip_id"]:
            raise MatchError(
                f"bug: image {image_id} has instances "
                + ", ".join(f"{r['instance_id']} → {r['clip_id']}" for r in pair)
                + " (two objects of two categories with two different clips expected)"
            )


def _reason_counts(excluded: Mapping[str, list[str]]) -> dict[str, int]:
    """Images left out per kind of reason (an image with two kinds counts under both)."""
    counts: dict[str, int] = defaultdict(int)
    for reasons in excluded.values():
        for kind in sorted({r.split(":", 1)[0] for r in reasons}):
            counts[kind] += 1
    return dict(sorted(counts.items()))


def run_match(
    workdir: str | Path, cfg: MatchConfig, seed: int, *, provenance: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Write the instances manifest for the complete accepted images and `reports/match.json`; return counts."""
    workdir = Path(workdir)
    annotations = read_manifest(workdir, ANNOTATIONS)
    verification = read_manifest(workdir, VERIFICATION)
    images = read_manifest(workdir, IMAGES)
    clips = read_manifest(workdir, CLIPS)
    categories = read_manifest(workdir, CATEGORIES)

    accepted = set(verification.loc[verification["decision"] == "accept", "image_id"])
    instances, excluded = complete_images(annotations, images, accepted)

    label_to_category = {r.label: r.category_id for r in categories.itertuples() if not is_blank(r.category_id)}
    excluded_ids, excluded_ytids = read_exclusions(cfg.exclude_clip_lists)
    wanted = {inst["category"] for inst in instances}
    pools: dict[str, list[dict[str, Any]]] = defaultdict(list)
    excluded_by_category: dict[str, int] = defaultdict(int)
    splits = set(cfg.splits)
    for rec in clips.to_dict("records"):
        if rec["status"] != "ok" or rec["split"] not in splits or is_blank(rec["clip_id"]):
            continue
        cat = label_to_category.get(rec["label"])
        if cat is None or is_blank(rec.get("audio_path")):
            continue
        if _is_excluded(rec["clip_id"], excluded_ids, excluded_ytids):
            excluded_by_category[cat] += 1
            continue
        pools[cat].append({"clip_id": rec["clip_id"], "label": rec["label"], "audio_path": rec["audio_path"]})

    empty = sorted(cat for cat in wanted if not pools.get(cat))
    if empty:
        details = "; ".join(
            f"category {cat!r}: no usable clip ({excluded_by_category[cat]} excluded by match.exclude_clip_lists, "
            f"splits {', '.join(sorted(splits))})"
            for cat in empty
        )
        raise MatchError(f"cannot match every instance: {details}")

    rows = assign_clips(instances, {cat: pools[cat] for cat in wanted}, seed)
    check_assignment(rows, label_to_category)
    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    path = write_manifest(workdir, INSTANCES, frame, dict(provenance or {}))
    by_reason = _reason_counts(excluded)
    released = len({r["image_id"] for r in rows})
    atomic_write_json(
        workdir / REPORT_PATH,
        {
            "instances_manifest": path.relative_to(workdir).as_posix(),
            "instances_sha256": sha256_file(path),
            "images_released": released,
            "images_excluded": len(excluded),
            "images_excluded_by_reason": by_reason,
            "excluded": dict(sorted(excluded.items())),
        },
    )
    used = {r["clip_id"] for r in rows}
    return {
        "instances": len(rows),
        "images_released": released,
        "images_excluded": len(excluded),
        "images_excluded_by_reason": by_reason,
        "categories": len(wanted),
        "clips_used": len(used),
        "reused": sum(1 for r in rows if r["reused"]),
        "excluded": sum(excluded_by_category.values()),
        "excluded_by_category": dict(sorted(excluded_by_category.items())),
        "manifest": str(path),
        "report": str(workdir / REPORT_PATH),
    }


def match_stage(
    work: Path, cfg: BuildConfig, provenance: dict[str, Any], *, progress: ProgressFn | None = None
) -> dict[str, Any]:
    """A VGGSound clip of its category for both objects of every complete image, seeded, with the leakage guard."""
    return run_match(work, cfg.match, cfg.seed, provenance=provenance)
