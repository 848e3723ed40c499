"""Build `WORK/releases/is4-<version>/` and its byte-reproducible `.tar.gz` from the manifests."""

from __future__ import annotations

import io
import json
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from is4.config import ReleaseConfig
from is4.manifests.atomic import atomic_path, replace_directory
from is4.manifests.checksum import sha256_file
from is4.manifests.decisions import LOG_PATH
from is4.manifests.ids import FILE_ID_RE
from is4.manifests.io import is_blank, manifest_path, read_manifest, write_manifest
from is4.manifests.schema import CLIPS
from is4.pipeline.match import REPORT_PATH as MATCH_REPORT
from is4.pipeline.release.archive import write_archive, write_checksums
from is4.pipeline.release.card import render_card, resolved_models
from is4.pipeline.release.croissant import croissant_metadata, validate_croissant
from is4.pipeline.release.encoders import json_bytes
from is4.pipeline.release.figures import GALLERY_IMAGES, box_area_figure, categories_figure, sample_gallery
from is4.pipeline.release.hf import HF_SCHEMA, media
from is4.pipeline.release.layout import COPIED_MANIFESTS, HF_PARQUET, MASK_THRESHOLD, ReleaseError, release_paths
from is4.pipeline.release.media import check_wav, frame_and_size, mask_jpeg, scale_box
from is4.pipeline.verification import copy_decisions

CARD_FIGURES = ("card/box_area.png", "card/categories.png", "card/samples.png")


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _plain(data: Any) -> Any:
    """A JSON-able deep copy (Paths and other objects as strings) so YAML output is plain and stable."""
    return json.loads(json.dumps(data, sort_keys=True, default=str))


def match_report(workdir: Path) -> dict[str, Any]:
    """The match stage's report (`reports/match.json`): the images it left out and why; it must describe the
    instances manifest being released (its recorded sha256), else ReleaseError."""
    path = workdir / MATCH_REPORT
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ReleaseError(f"{path}: missing (it records the images match left out): re-run match") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ReleaseError(f"{path}: not readable: {exc}") from exc
    instances = manifest_path(workdir, "instances")
    if not isinstance(report, dict) or report.get("instances_sha256") != sha256_file(instances):
        raise ReleaseError(f"{path} is not the report of {instances} (another sha256): re-run match")
    if not isinstance(report.get("excluded"), dict):
        raise ReleaseError(f"{path}: no 'excluded' mapping of image ids to reasons")
    return report


def remove_stale_siblings(releases: Path, name: str) -> list[str]:
    """Remove what a killed build of release `name` left beside it: its staging directory (`.name.XXXXXXXX`), the
    old tree being swapped out (`.name.old`) and a half-written archive (`.name.tar.gz.tmp-*`); their names."""
    pattern = re.compile(rf"\.{re.escape(name)}\.([a-z0-9_]{{8}}|old|tar\.gz\.tmp-.*)")
    removed = []
    for stale in sorted(releases.iterdir()):
        if pattern.fullmatch(stale.name):
            if stale.is_dir() and not stale.is_symlink():
                shutil.rmtree(stale)
            else:
                stale.unlink()
            removed.append(stale.name)
    return removed


def _gallery(
    root: Path, frames: dict[str, tuple[bytes, int, int]], objects: dict[str, list[tuple[str, str, list[int]]]]
) -> bytes:
    """The card's sample gallery: the first images (by id) with their released masks, boxes and categories."""
    from PIL import Image

    samples = []
    for image_id in sorted(objects)[:GALLERY_IMAGES]:
        with Image.open(io.BytesIO(frames[image_id][0])) as im:
            frame = np.asarray(im.convert("RGB"))
        shown = []
        for category, mask_rel, box in objects[image_id]:
            with Image.open(root / mask_rel) as im:
                shown.append((category, np.asarray(im.convert("L")) > MASK_THRESHOLD, box))
        samples.append((frame, shown))
    return sample_gallery(samples)


def build_release(workdir: str | Path, cfg: ReleaseConfig, build_config: dict[str, Any]) -> Path:
    """Build `WORK/releases/is4-<version>/` and `WORK/releases/is4-<version>.tar.gz`; return the directory.

    `build_config` is the build configuration as a mapping (`BuildConfig.model_dump(mode="json")`; a BuildConfig
    is accepted too); it is shipped as `build-config.yaml` and supplies the seed and configured model revisions.
    """
    workdir = Path(workdir)
    if hasattr(build_config, "model_dump"):
        build_config = build_config.model_dump(mode="json")
    instances = read_manifest(workdir, "instances")
    if instances.empty:
        raise ReleaseError(f"{manifest_path(workdir, 'instances')}: no instances to release (run match first)")
    images = read_manifest(workdir, "images")
    annotations = read_manifest(workdir, "annotations")
    clips = read_manifest(workdir, "clips")
    for table in COPIED_MANIFESTS:
        read_manifest(workdir, table)  # every shipped manifest validates
    excluded = match_report(workdir)["excluded"]
    build_config = _plain(build_config)

    target, archive = release_paths(workdir, cfg.version)
    releases, name = target.parent, target.name
    releases.mkdir(parents=True, exist_ok=True)
    remove_stale_siblings(releases, name)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=releases))
    try:
        staging.chmod(0o755)
        stats = _populate(workdir, staging, cfg, build_config, instances, images, annotations, clips, excluded)
        validate_croissant(staging / "croissant.json", expected_records=stats["instances"])
        write_checksums(staging)
        with atomic_path(archive) as tmp_archive:
            write_archive(staging, tmp_archive, name)
            replace_directory(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def _populate(
    workdir: Path,
    root: Path,
    cfg: ReleaseConfig,
    build_config: dict[str, Any],
    instances: pd.DataFrame,
    images: pd.DataFrame,
    annotations: pd.DataFrame,
    clips: pd.DataFrame,
    excluded: dict[str, list[str]],
) -> dict[str, Any]:
    size = cfg.image_size
    image_rows = {r["image_id"]: r for r in images.to_dict("records")}
    bbox_entries, seg_entries, hf_rows, areas = [], [], [], []
    frames: dict[str, tuple[bytes, int, int]] = {}
    objects: dict[str, list[tuple[str, str, list[int]]]] = {}  # image id -> (category, mask file, box)
    for rec in sorted(instances.to_dict("records"), key=lambda r: r["instance_id"]):
        iid = rec["instance_id"]
        if not FILE_ID_RE.fullmatch(iid):
            raise ReleaseError(f"instance id {iid!r} is not usable as a file name")
        for col in ("image_path", "mask_path", "audio_path", "bbox_xyxy"):
            value = rec.get(col)
            if is_blank(value):
                raise ReleaseError(f"instance {iid}: no {col} in the instances manifest (re-run match)")
        if rec["image_id"] not in frames:
            frames[rec["image_id"]] = frame_and_size(workdir / rec["image_path"], size)
        frame, width, height = frames[rec["image_id"]]
        frame_rel, audio_rel, mask_rel = f"visual_frames/{iid}.jpg", f"audio_wav/{iid}.wav", f"gt_masks/{iid}.jpg"
        _write(root / frame_rel, frame)
        _write(root / mask_rel, mask_jpeg(workdir / rec["mask_path"], width, height, size, iid))
        audio_src = workdir / rec["audio_path"]
        check_wav(audio_src, iid)
        (root / audio_rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(audio_src, root / audio_rel)
        box = scale_box([float(v) for v in rec["bbox_xyxy"]], width, height, size)
        areas.append((box[2] - box[0]) * (box[3] - box[1]) / (size * size))
        bbox_entries.append({"image": frame_rel, "audio": audio_rel, "gt_box": box})
        objects.setdefault(rec["image_id"], []).append((str(rec["category"]), mask_rel, box))
        seg_entries.append({"image": frame_rel, "audio": audio_rel, "gt_box": mask_rel})
        img = image_rows.get(rec["image_id"], {})
        hf_rows.append(
            {
                "instance_id": iid,
                "image_id": rec["image_id"],
                "category": rec["category"],
                "label": None if is_blank(rec.get("label")) else rec["label"],
                "clip_id": rec["clip_id"],
                "style": None if is_blank(img.get("style")) else img["style"],
                "reused": None if is_blank(rec.get("reused")) else bool(rec["reused"]),
                "image": media(root, frame_rel),
                "audio": media(root, audio_rel),
                "mask": media(root, mask_rel),
                "gt_box": box,
            }
        )
    _write(root / "is4_bbox.json", json_bytes(bbox_entries))
    _write(root / "is4_seg.json", json_bytes(seg_entries))

    # Parquet for Hugging Face datasets (media embedded), from an explicit Arrow schema (no pandas metadata).
    hf_table = pa.Table.from_pylist(hf_rows, schema=HF_SCHEMA)
    (root / HF_PARQUET).parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(hf_table, root / HF_PARQUET, compression="zstd")

    # Manifests: shipped byte for byte; clips restricted to the clips the instances use. The verification manifest
    # comes with the decision log it projects (every decision's history): a lost log is restored from the release.
    (root / "manifests").mkdir()
    for table in COPIED_MANIFESTS:
        if table != "verification":
            shutil.copyfile(manifest_path(workdir, table), root / "manifests" / f"{table}.parquet")
    copy_decisions(workdir, root / "manifests" / "verification.parquet", root / LOG_PATH)
    used = set(instances["clip_id"].dropna())
    clip_subset = clips[clips["clip_id"].isin(used)]
    write_manifest(
        root,
        CLIPS,
        clip_subset,
        {
            "stage": "release",
            "subset_of": "clips",
            "rows": "the clips of the released instances",
            "source_sha256": sha256_file(manifest_path(workdir, "clips")),
        },
    )

    # Statistics for the card.
    inst = instances.copy()
    styles = {
        r["image_id"]: (r.get("style") if not is_blank(r.get("style")) else "(none)") for r in image_rows.values()
    }
    per_category = {}
    for cat, group in inst.groupby("category", sort=True):
        per_category[str(cat)] = {
            "instances": len(group),
            "images": group["image_id"].nunique(),
            "clips": group["clip_id"].nunique(),
            "reused": int(group["reused"].fillna(False).astype(bool).sum()) if "reused" in group else 0,
        }
    per_style: dict[str, dict[str, int]] = {}
    style_of = inst["image_id"].map(lambda i: styles.get(i, "(none)"))
    for style, group in inst.groupby(style_of, sort=True):
        per_style[str(style)] = {"images": group["image_id"].nunique(), "instances": len(group)}
    area_arr = np.asarray(areas, dtype=float)
    by_reason: dict[str, int] = {}
    for reasons in excluded.values():
        for reason in reasons:
            by_reason[reason] = by_reason.get(reason, 0) + 1
    stats = {
        "instances": len(inst),
        "hf_parquet_bytes": (root / HF_PARQUET).stat().st_size,
        "images": int(inst["image_id"].nunique()),
        "categories": int(inst["category"].nunique()),
        "clips": len(used),
        "reused": int(inst["reused"].fillna(False).astype(bool).sum()) if "reused" in inst else 0,
        "per_category": per_category,
        "per_style": per_style,
        "images_excluded": len(excluded),
        "excluded_by_reason": dict(sorted(by_reason.items())),
        "area_summary": {
            "min": float(area_arr.min()),
            "median": float(np.median(area_arr)),
            "mean": float(area_arr.mean()),
            "max": float(area_arr.max()),
        },
    }
    _write(root / CARD_FIGURES[0], box_area_figure(areas))
    _write(root / CARD_FIGURES[1], categories_figure({c: n["instances"] for c, n in per_category.items()}))
    _write(root / CARD_FIGURES[2], _gallery(root, frames, objects))

    from is4.pipeline.evaluation import metrics
    from is4.pipeline.evaluation.evaluate import BASELINES_FILE, baseline_scores

    # The evaluation harness scores the official 224×224 frame; other frame sizes get no baseline table.
    scores = baseline_scores(root) if size == metrics.FRAME else None
    if scores is not None:  # `is4 eval` shows them beside a model's scores without scoring them again
        _write(
            root / BASELINES_FILE,
            json_bytes({"protocol": metrics.DEFAULT_PROTOCOL, "maps": metrics.REFERENCE.map_path, "scores": scores}),
        )
    models = resolved_models(workdir, images, annotations)
    gallery = min(GALLERY_IMAGES, len(objects))
    card = render_card(cfg, build_config, stats, models, scores, gallery_images=gallery)
    _write(root / "README.md", card.encode("utf-8"))

    header = (
        "".join(f"#   {m['role']}: {m['model_id']} @ {m['revision'] or '(no revision recorded)'}\n" for m in models)
        or "#   (none)\n"
    )
    config_text = (
        f"# IS4 release {cfg.version}: the build configuration (loadable with is4.config.load_config).\n"
        f"# Resolved model revisions recorded in the manifests:\n{header}"
        + yaml.safe_dump(build_config, sort_keys=True, default_flow_style=False, allow_unicode=True)
    )
    _write(root / "build-config.yaml", config_text.encode("utf-8"))

    image_models = sorted({m["model_id"] for m in models if m["role"] == "image_generator"})
    _write(root / "croissant.json", json_bytes(croissant_metadata(root, cfg, stats, image_models)))
    return stats
