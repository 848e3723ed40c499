"""The match stage: give every annotated object of an accepted image a real VGGSound clip of its category.

For each category the pool is its usable clips (status ok, split in `match.splits`, label mapping to the category,
not listed in any `match.exclude_clip_lists` file) sorted by `stable_rank(seed, "match", category, clip_id)`. The
category's instances, sorted by instance id, take the pool's clips in order, each clip once while the pool lasts;
then the pool is reused from its start and those rows are marked `reused`. The result depends on the seed and the
ids only, never on the order of manifest rows.

Leakage guard: a clip listed in an exclusion file (a training manifest — Parquet with a `clip_id` column — or an id
list with one clip id or YouTube id per line; a YouTube id excludes every clip of that video) is never used. A
category that has instances but no usable clip fails the stage with `MatchError` naming it and saying how many of
its clips the exclusion removed, rather than releasing an object that cannot sound.

Instances whose mask is empty (no box) are left out and counted: there is nothing to localise.
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
from is4.manifests.errors import FatalError
from is4.manifests.ids import CLIP_ID_RE, stable_rank
from is4.manifests.io import is_blank, read_manifest, write_manifest
from is4.manifests.schema import ANNOTATIONS, CATEGORIES, CLIPS, IMAGES, INSTANCES, VERIFICATION
from is4.pipeline.stage import ProgressFn

COLUMNS = (
    "instance_id", "image_id", "category", "clip_id", "audio_path", "label", "reused", "image_path", "mask_path",
    "bbox_xyxy",
)
_PARQUET_MAGIC = b"PAR1"


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
                    raise MatchError(f"{path}: exclusion manifest has no clip_id column (columns: "
                                     f"{', '.join(schema.names)})")
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
            rows.append({**inst, "clip_id": clip["clip_id"], "label": clip["label"],
                         "audio_path": clip["audio_path"], "reused": k >= len(pool)})
    return sorted(rows, key=lambda r: r["instance_id"])


def run_match(
    workdir: str | Path, cfg: MatchConfig, seed: int, *, provenance: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Write the instances manifest for the accepted, annotated images; return counts."""
    workdir = Path(workdir)
    annotations = read_manifest(workdir, ANNOTATIONS)
    verification = read_manifest(workdir, VERIFICATION)
    images = read_manifest(workdir, IMAGES)
    clips = read_manifest(workdir, CLIPS)
    categories = read_manifest(workdir, CATEGORIES)

    accepted = set(verification.loc[verification["decision"] == "accept", "image_id"])
    image_paths = {r.image_id: r.image_path for r in images.itertuples()}

    instances: list[dict[str, Any]] = []
    skipped_empty = 0
    for rec in annotations.to_dict("records"):
        if rec["image_id"] not in accepted:
            continue
        box = rec.get("bbox_xyxy")
        if is_blank(rec.get("mask_path")) or is_blank(box):
            skipped_empty += 1
            continue
        image_path = image_paths.get(rec["image_id"])
        if is_blank(image_path):
            raise MatchError(f"instance {rec['instance_id']}: image {rec['image_id']!r} has no image_path "
                             "in the images manifest")
        instances.append({
            "instance_id": rec["instance_id"], "image_id": rec["image_id"], "category": rec["category"],
            "image_path": image_path, "mask_path": rec["mask_path"], "bbox_xyxy": [float(v) for v in box],
        })

    label_to_category = {
        r.label: r.category_id for r in categories.itertuples() if not is_blank(r.category_id)
    }
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
    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    path = write_manifest(workdir, INSTANCES, frame, dict(provenance or {}))
    used = {r["clip_id"] for r in rows}
    return {
        "instances": len(rows),
        "categories": len(wanted),
        "clips_used": len(used),
        "reused": sum(1 for r in rows if r["reused"]),
        "excluded": sum(excluded_by_category.values()),
        "excluded_by_category": dict(sorted(excluded_by_category.items())),
        "skipped_empty_masks": skipped_empty,
        "manifest": str(path),
    }


def match_stage(work: Path, cfg: BuildConfig, provenance: dict[str, Any], *,
                progress: ProgressFn | None = None) -> dict[str, Any]:
    """A VGGSound clip of its category for every annotated object, seeded, with the leakage guard."""
    return run_match(work, cfg.match, cfg.seed, provenance=provenance)
