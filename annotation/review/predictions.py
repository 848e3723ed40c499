"""A model's heatmaps in FiftyOne: one dataset per release, a sample per instance, a field per run.

`load_predictions(release, predictions, run)` scores the `.npz` exactly as `is4 eval --per-instance` does (the
evaluation harness, same protocol) and stores, per instance (its frame as the sample's image):

- `instance_id`, `image_id`, `category`, `other_category` (the other objects of the image, joined with `,`),
  `audio` (the instance's wav, absolute path);
- `ground_truth`: the instance's object (box, and its mask when the release has `gt_masks/`), labelled with its
  category; `other_object`: the image's other objects, the same way (each category keeps its own colour);
- per run `<run>`: an `fo.Heatmap` of the map as scored (resized to 224×224 by the protocol's rule, scaled to
  0…255 per map), `<run>_iou` and `<run>_iou_adaptive` (the per-instance IoUs of the evaluation) and
  `<run>_confused`.

An instance is **confused** when the run's map is brighter on the other objects than on its own: with M the map as
scored, G the instance's ground-truth region and O the union of the other instances' regions of the same image
(both rasterised by the protocol), mean(M over O \\ G) > mean(M over G \\ O). An image is an **interactive
failure** when one of its instances is confused: the sound of one object lights up another.

Saved views: `failures` (instances with IoU < 0.5 in some run, the worst first), `interactive-failures` (every
instance of an image with a confused instance in some run), the same two per run (`failures-<run>`,
`interactive-failures-<run>`), and `by-category` (the instances grouped by category). `per_category` gives the
per-category table (instances, mean IoU and success rate of every run).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from is4.config import ReviewConfig
from is4.pipeline.evaluation import metrics
from is4.pipeline.evaluation.evaluate import score_file
from is4.pipeline.evaluation.formats import GroundTruth, load_ground_truth
from is4.pipeline.evaluation.predictions import NpzMaps, prepare_map

from .connect import ReviewError, connect

SUCCESS_IOU = 0.5  # the protocols' success rule: IoU >= 0.5
RUN_NAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,47}")
RUNS_KEY = "is4_runs"  # dataset.info: {run: {"predictions", "protocol", "gt", "summary"}}
BASE_FIELDS = (
    "instance_id",
    "image_id",
    "category",
    "other_category",
    "audio",
    "ground_truth",
    "other_object",
)
_SUFFIXES = ("_iou", "_iou_adaptive", "_confused")


def predictions_dataset_name(release: str | Path) -> str:
    """The FiftyOne dataset of a release's predictions: `is4-predictions-<release dir name>-<hash of its path>`."""
    path = Path(release).resolve()
    return f"is4-predictions-{path.name}-{hashlib.sha256(str(path).encode()).hexdigest()[:8]}"


def run_name(name: str | None, predictions: str | Path) -> str:
    """The run's field name: `name`, or the predictions file's stem with other characters as `_`; checked."""
    if name is None:
        name = re.sub(r"[^A-Za-z0-9_]", "_", Path(predictions).stem)
        name = name if name[:1].isalpha() else f"run_{name}"
    if not RUN_NAME_RE.fullmatch(name) or name in BASE_FIELDS or name.endswith(_SUFFIXES):
        raise ReviewError(
            f"run name {name!r}: use a letter, then up to 47 letters, digits or _ (it names the dataset's fields), "
            f"not one of {', '.join(BASE_FIELDS)} nor ending in {', '.join(_SUFFIXES)}"
        )
    return name


def _categories(release: Path, truth: GroundTruth) -> list[str]:
    """Each instance's category: the release's instances manifest when it ships one, else the id's last part."""
    manifest = release / "manifests" / "instances.parquet"
    known: dict[str, str] = {}
    if release.is_dir() and manifest.is_file():
        frame = pd.read_parquet(manifest, columns=["instance_id", "category"])
        known = dict(zip(frame["instance_id"], frame["category"]))
    image_ids = truth.image_ids or truth.instance_ids
    return [known.get(iid) or iid[len(img) + 1 :] or iid for iid, img in zip(truth.instance_ids, image_ids)]


def _detection(fo: Any, label: str, region: np.ndarray) -> Any | None:
    """An `fo.Detection` of a 224×224 ground-truth region: its bounding box and (when not a full box) its mask."""
    ys, xs = np.nonzero(region)
    if not len(xs):
        return None
    s = metrics.FRAME
    x0, x1, y0, y1 = int(xs.min()), int(xs.max()) + 1, int(ys.min()), int(ys.max()) + 1
    crop = region[y0:y1, x0:x1]
    box = [x0 / s, y0 / s, (x1 - x0) / s, (y1 - y0) / s]
    return fo.Detection(label=label, bounding_box=box, mask=None if crop.all() else crop)


def _mask_regions(release: Path, truth: GroundTruth) -> np.ndarray | None:
    """The instances' 224×224 masks when the release ships `gt_masks/<id>.jpg` for every instance."""
    files = [release / "gt_masks" / f"{iid}.jpg" for iid in truth.instance_ids]
    if not release.is_dir() or not all(f.is_file() for f in files):
        return None
    out = np.zeros((len(files), metrics.FRAME, metrics.FRAME), dtype=bool)
    for i, file in enumerate(files):
        with Image.open(file) as im:
            mask = np.asarray(im.convert("L").resize((metrics.FRAME, metrics.FRAME), Image.Resampling.NEAREST)) > 127
        out[i] = mask
    return out


def _others(truth: GroundTruth) -> list[list[int]]:
    """For each instance, the indices of the other instances of its image (none without image ids)."""
    if truth.image_ids is None:
        return [[] for _ in truth.instance_ids]
    by_image: dict[str, list[int]] = {}
    for i, image_id in enumerate(truth.image_ids):
        by_image.setdefault(image_id, []).append(i)
    return [[j for j in by_image[image_id] if j != i] for i, image_id in enumerate(truth.image_ids)]


def confused(scored_map: np.ndarray, own: np.ndarray, other: np.ndarray) -> bool:
    """Whether a map is brighter on the other objects than on its own (module doc): mean over `other` minus `own`
    greater than the mean over `own` minus `other`. False when either part is empty."""
    own_only, other_only = own & ~other, other & ~own
    if not own_only.any() or not other_only.any():
        return False
    values = np.asarray(scored_map, dtype=np.float64)
    return bool(values[other_only].mean() > values[own_only].mean())


def _heatmap(fo: Any, scored_map: np.ndarray) -> Any:
    """The map as the App shows it: 224×224, scaled to 0…255 (uint8) per map, range [0, 255]."""
    values = np.asarray(scored_map, dtype=np.float64)
    low, high = values.min(), values.max()
    scaled = (values - low) / (high - low) * 255 if high > low else np.zeros_like(values)
    return fo.Heatmap(map=np.round(scaled).astype(np.uint8), range=[0, 255])


def _build(fo: Any, name: str, release: Path, truth: GroundTruth, regions: np.ndarray) -> Any:
    categories = _categories(release, truth)
    masks = _mask_regions(release, truth)
    shapes = masks if masks is not None else regions
    others = _others(truth)
    samples = []
    for i, iid in enumerate(truth.instance_ids):
        frame, wav = release / "visual_frames" / f"{iid}.jpg", release / "audio_wav" / f"{iid}.wav"
        if not frame.is_file():
            raise ReviewError(f"{release}: instance {iid}: no frame {frame}")
        own = _detection(fo, categories[i], shapes[i])
        other = [d for d in (_detection(fo, categories[j], shapes[j]) for j in others[i]) if d is not None]
        with Image.open(frame) as im:
            width, height = im.size
            channels = len(im.getbands())
        metadata = fo.ImageMetadata(
            size_bytes=frame.stat().st_size, mime_type="image/jpeg", width=width, height=height, num_channels=channels
        )
        samples.append(
            fo.Sample(
                filepath=str(frame.resolve()),
                metadata=metadata,
                instance_id=iid,
                image_id=truth.image_ids[i] if truth.image_ids is not None else iid,
                category=categories[i],
                other_category=",".join(categories[j] for j in others[i]) or None,
                audio=str(wav.resolve()) if wav.is_file() else None,
                ground_truth=fo.Detections(detections=[own] if own is not None else []),
                other_object=fo.Detections(detections=other),
            )
        )
    dataset = fo.Dataset(name, persistent=True, overwrite=True)
    for field in ("instance_id", "image_id", "category", "other_category", "audio"):
        dataset.add_sample_field(field, fo.StringField)
    dataset.add_samples(samples)
    dataset.info[RUNS_KEY] = {}
    dataset.info["is4_release"] = str(release)
    dataset.app_config.color_scheme = fo.ColorScheme(color_by="value", opacity=0.4)  # a colour per category
    dataset.save()
    return dataset


def load_predictions(
    release: str | Path,
    predictions: str | Path,
    cfg: ReviewConfig,
    *,
    run: str | None = None,
    workdir: str | Path = ".",
    gt: str = "box",
    protocol: str = metrics.DEFAULT_PROTOCOL,
) -> dict[str, Any]:
    """Add (or replace) one run's maps in the release's predictions dataset (module doc); return a summary.

    The dataset is built on first use, and rebuilt (losing its runs) when the release's instances changed.
    Returns {"dataset", "run", "summary" (the evaluation's), "failures", "interactive_failures" (image ids),
    "per_category"}.
    """
    release = Path(release).resolve()
    try:
        proto = metrics.get_protocol(protocol)
    except ValueError as exc:
        raise ReviewError(f"protocol: {exc}") from None
    truth = load_ground_truth(release, gt, protocol=proto)
    run = run_name(run, predictions)
    scored = score_file(truth, predictions, proto)
    regions = np.concatenate([truth.regions(s, min(s + 256, len(truth)))[0] for s in range(0, len(truth), 256)])
    regions = regions.reshape(len(truth), metrics.FRAME, metrics.FRAME)
    fo = connect(cfg, workdir)
    name = predictions_dataset_name(release)
    dataset = fo.load_dataset(name) if fo.dataset_exists(name) else None
    if dataset is None or sorted(dataset.distinct("instance_id")) != sorted(truth.instance_ids):
        dataset = _build(fo, name, release, truth, regions)

    others = _others(truth)
    index = {iid: i for i, iid in enumerate(truth.instance_ids)}
    heat, flags = {}, {}
    with NpzMaps(predictions) as source:
        for iid in truth.instance_ids:
            i = index[iid]
            scored_map = prepare_map(source.read(iid), proto)
            other = np.asarray(regions[others[i]].any(axis=0)) if others[i] else np.zeros_like(regions[i])
            heat[iid] = _heatmap(fo, scored_map)
            flags[iid] = confused(scored_map, regions[i], other)
    iou = {iid: float(v) for iid, v in zip(truth.instance_ids, scored.per_instance["iou"])}
    adaptive = {iid: float(v) for iid, v in zip(truth.instance_ids, scored.per_instance["iou_adaptive"])}
    dataset.add_sample_field(f"{run}_iou", fo.FloatField)
    dataset.add_sample_field(f"{run}_iou_adaptive", fo.FloatField)
    dataset.add_sample_field(f"{run}_confused", fo.BooleanField)
    dataset.set_values(run, heat, key_field="instance_id")
    dataset.set_values(f"{run}_iou", iou, key_field="instance_id")
    dataset.set_values(f"{run}_iou_adaptive", adaptive, key_field="instance_id")
    dataset.set_values(f"{run}_confused", flags, key_field="instance_id")
    runs = dict(dataset.info.get(RUNS_KEY) or {})
    runs[run] = {
        "predictions": str(Path(predictions).resolve()),
        "protocol": proto.name,
        "gt": truth.gt,
        "summary": scored.summary,
    }
    dataset.info[RUNS_KEY] = runs
    # Shown on the grid's tiles: the objects, this run's map (the others are a click away in the sidebar), the
    # category and every run's IoU.
    shown = ["ground_truth", "other_object", run, "category", *(f"{r}_iou" for r in sorted(runs))]
    dataset.app_config.active_fields = fo.ActiveFields(paths=shown)
    dataset.save()
    _save_views(fo, dataset, sorted(runs))
    images = {truth.image_ids[index[i]] if truth.image_ids else i for i, flag in flags.items() if flag}
    return {
        "dataset": name,
        "run": run,
        "summary": scored.summary,
        "failures": sorted(i for i, v in iou.items() if v < SUCCESS_IOU),
        "interactive_failures": sorted(images),
        "per_category": per_category(dataset),
    }


def _save_views(fo: Any, dataset: Any, runs: list[str]) -> None:
    from fiftyone import ViewField as F

    def failing(names: list[str]) -> Any:
        expr = F(f"{names[0]}_iou") < SUCCESS_IOU
        for name in names[1:]:
            expr = expr | (F(f"{name}_iou") < SUCCESS_IOU)
        return expr

    def interactive(names: list[str]) -> Any:
        image_ids = set()
        for name in names:
            image_ids |= set(dataset.match(F(f"{name}_confused") == True).distinct("image_id"))  # noqa: E712
        return dataset.match(F("image_id").is_in(sorted(image_ids))).sort_by("image_id")

    def worst(view: Any, names: list[str]) -> Any:
        lowest = F(f"{names[0]}_iou")
        for name in names[1:]:
            lowest = (F(f"{name}_iou") < lowest).if_else(F(f"{name}_iou"), lowest)
        return view.sort_by(lowest)

    views = {
        "failures": (worst(dataset.match(failing(runs)), runs), f"IoU < {SUCCESS_IOU} in some run, worst first"),
        "interactive-failures": (interactive(runs), "images where one object's sound lights up another, some run"),
        "by-category": (dataset.group_by("category", order_by="instance_id"), "the instances grouped by category"),
    }
    for name in runs:
        views[f"failures-{name}"] = (worst(dataset.match(failing([name])), [name]), f"IoU < {SUCCESS_IOU} ({name})")
        views[f"interactive-failures-{name}"] = (interactive([name]), f"interactive failures ({name})")
    for name, (view, description) in views.items():
        dataset.save_view(name, view, description=description, overwrite=True)


def per_category(dataset: Any) -> list[dict[str, Any]]:
    """One row per category: `instances`, and per run `<run> mIoU` (mean IoU, percent) and `<run> success`
    (percent of instances with IoU >= 0.5); the categories sorted by name."""
    runs = sorted(dataset.info.get(RUNS_KEY) or {})
    frame = pd.DataFrame(
        {"category": dataset.values("category"), **{run: dataset.values(f"{run}_iou") for run in runs}}
    )
    rows = []
    for category, group in frame.groupby("category", sort=True):
        row: dict[str, Any] = {"category": category, "instances": len(group)}
        for run in runs:
            values = group[run].dropna().to_numpy(dtype=float)
            row[f"{run} mIoU"] = round(100 * float(values.mean()), 2) if len(values) else None
            row[f"{run} success"] = round(100 * float((values >= SUCCESS_IOU).mean()), 2) if len(values) else None
        rows.append(row)
    return rows
