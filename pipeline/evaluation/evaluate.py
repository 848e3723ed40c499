"""The IS4 evaluation harness: score a model's heatmaps against a release's boxes or masks.

Release layout read here (paths relative to the release directory):

- `is4_bbox.json`: a JSON list, one entry per instance, `{"image": "visual_frames/<instance_id>.jpg",
  "audio": "audio_wav/<instance_id>.wav", "gt_box": [x1, y1, x2, y2]}`, the box in pixels of the 224×224 image
  (x2 / y2 exclusive pixel edges, see `is4.pipeline.evaluation.metrics.box_mask`);
- `is4_seg.json`: the same, with `"gt_box": "gt_masks/<instance_id>.jpg"`, a 224×224 JPEG mask (object where the
  grey value is > 127);
- `manifests/instances.parquet`: one row per instance with at least `instance_id` and `image_id` (the image an
  instance belongs to, for the image-level metrics IIoU / IAUC).

An instance id is the file stem of the entry's `image` (and `audio`) file.

Prediction format
-----------------
Predictions are one NumPy `.npz` archive (`np.savez` or `np.savez_compressed`) holding one heatmap per instance:

- key: the instance id (e.g. `{image_id}_{category}`, the file stem in `is4_bbox.json`), value: a 2-D array
  (height, width) of real numbers (float, integer or bool); higher means "more likely the sounding object";
- any resolution: the map must cover the whole 224×224 image and is resized to 224×224 by bilinear interpolation
  (half-pixel centres, no anti-aliasing: `torch.nn.functional.interpolate(mode="bilinear", align_corners=False)`);
- every value finite (no NaN / inf) and the map not constant after resizing (a constant map cannot be ranked);
- no pickled objects (the file is read with `allow_pickle=False`);
- every instance of the evaluated split needs a map; keys for other instances are ignored with an
  `EvaluationWarning` (so one file can serve both the box and the mask ground truth).

The maps are scored as documented in `is4.pipeline.evaluation.metrics`: cIoU and AUC on the top 50 % of each map's pixels,
the adaptive variants on the top K pixels (K = ground-truth area), IIoU / IAUC per image (an image succeeds only
when all its instances do), and with mask ground truth also mIoU and F-score (β² = 0.3). All numbers are
percentages.

```python
import numpy as np
np.savez_compressed("my_model.npz", **{instance_id: heatmap for instance_id, heatmap in my_maps.items()})
# is4.pipeline.evaluation.evaluate.evaluate("IS4/", "my_model.npz", gt="box")
```

Reference baselines (`baseline_scores`, `write_baseline_predictions`): `random` (uniform noise on a 14×14 grid,
seeded per instance id), `centre` (an isotropic Gaussian centred in the image, σ = a quarter of the side, on a
28×28 grid) and `oracle` (the ground-truth region itself at 224×224: exactly 0 outside; inside, the region
smoothed with a Gaussian of σ = 2 px plus a small raster-order term, so that it is not constant and its values are
distinct; see `oracle_maps`). The random and centre maps are stored at low resolution, as a model's similarity map
would be, and go through the same resizing as any prediction. The oracle scores 100 on cIoU / IIoU / AUC / IAUC
and on every adaptive metric; its top-50 % mIoU / F-score are 100 only where every region covers at most half of
the image (a top-half binarisation cannot equal a larger region: a region of 3/4 of the image gets IoU 2/3).
"""

from __future__ import annotations

import json
import math
import warnings
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from scipy import ndimage

from is4.manifests.errors import FatalError
from is4.manifests.ids import derive_seed
from is4.pipeline.evaluation import metrics

GT_FILES = {"box": "is4_bbox.json", "mask": "is4_seg.json"}
INSTANCES_MANIFEST = Path("manifests") / "instances.parquet"
BASELINES = ("random", "centre", "oracle")
BASELINE_SEED = 20240
RANDOM_GRID = 14
CENTRE_GRID = 28
ORACLE_SIGMA_PX = 2.0
SHOW = 5  # offending instances named in an error message


class EvaluationError(FatalError, ValueError):
    """Ground truth or predictions cannot be scored; `instances` names the offending instances (if any)."""

    def __init__(self, message: str, instances: Sequence[str] = ()):
        super().__init__(message)
        self.instances = list(instances)


class EvaluationWarning(UserWarning):
    """Something was ignored while loading predictions (e.g. maps for instances outside the evaluated split)."""


def _few(items: Sequence[str], describe=None) -> str:
    shown = [describe(item) if describe else str(item) for item in list(items)[:SHOW]]
    more = len(items) - len(shown)
    return ", ".join(shown) + (f", … ({more} more)" if more > 0 else "")


# --- ground truth -------------------------------------------------------------------------------------------


def _read_entries(release_dir: Path, gt: str) -> list[dict]:
    if gt not in GT_FILES:
        raise EvaluationError(f"gt must be one of {sorted(GT_FILES)}, got {gt!r}")
    path = release_dir / GT_FILES[gt]
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise EvaluationError(f"{path}: cannot read ground truth: {exc.strerror or exc}") from None
    except json.JSONDecodeError as exc:
        raise EvaluationError(f"{path}: not valid JSON: {exc}") from None
    if not isinstance(entries, list) or not entries:
        raise EvaluationError(f"{path}: expected a non-empty JSON list of instances")
    for pos, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("image"), str) or "gt_box" not in entry:
            raise EvaluationError(f"{path}: entry {pos} lacks an 'image' path or a 'gt_box'")
    return entries


def _image_ids(release_dir: Path, instance_ids: list[str]) -> list[str]:
    path = release_dir / INSTANCES_MANIFEST
    try:
        table = pd.read_parquet(path, columns=["instance_id", "image_id"])
    except (OSError, ValueError, KeyError) as exc:
        raise EvaluationError(f"{path}: cannot read instance_id / image_id: {exc}") from None
    lookup = dict(zip(table["instance_id"].astype(str), table["image_id"].astype(str)))
    missing = [iid for iid in instance_ids if iid not in lookup]
    if missing:
        raise EvaluationError(f"{path}: {len(missing)} instances have no row: {_few(missing)}", missing)
    return [lookup[iid] for iid in instance_ids]


def _box_masks(path: Path, instance_ids: list[str], entries: list[dict]) -> np.ndarray:
    bad = []
    boxes = np.zeros((len(entries), 4))
    for i, (iid, entry) in enumerate(zip(instance_ids, entries)):
        box = entry["gt_box"]
        ok = isinstance(box, list) and len(box) == 4 and all(
            isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in box)
        if not ok or not (box[0] < box[2] and box[1] < box[3]):
            bad.append((iid, box))
            continue
        boxes[i] = box
    if bad:
        raise EvaluationError(f"{path}: {len(bad)} boxes are not [x1, y1, x2, y2] with x1 < x2, y1 < y2: "
                              f"{_few(bad, lambda b: f'{b[0]} {b[1]!r}')}", [b[0] for b in bad])
    return metrics.box_mask(boxes, metrics.FRAME)


def _mask_files(release_dir: Path, path: Path, instance_ids: list[str], entries: list[dict]) -> np.ndarray:
    size = metrics.FRAME
    masks = np.zeros((len(entries), size, size), dtype=bool)
    bad = []
    for i, (iid, entry) in enumerate(zip(instance_ids, entries)):
        rel = entry["gt_box"]
        if not isinstance(rel, str):
            bad.append((iid, f"gt_box is {rel!r}, not a mask path"))
            continue
        try:
            with Image.open(release_dir / rel) as img:
                grey = np.asarray(img.convert("L"))
        except (OSError, ValueError) as exc:
            bad.append((iid, f"cannot read {rel}: {exc}"))
            continue
        if grey.shape != (size, size):
            bad.append((iid, f"{rel} is {grey.shape[1]}×{grey.shape[0]}, not {size}×{size}"))
            continue
        masks[i] = grey > 127
    if bad:
        raise EvaluationError(f"{path}: {len(bad)} masks cannot be used: {_few(bad, lambda b: f'{b[0]} ({b[1]})')}",
                              [b[0] for b in bad])
    return masks


def _check_frame(release_dir: Path, image_rel: str) -> None:
    """Refuse a release whose frames are not 224×224 (its boxes would be in another frame); checks one frame."""
    frame = release_dir / image_rel
    if not frame.is_file():
        return  # a release without frames (annotations only): nothing to check
    try:
        with Image.open(frame) as img:
            width, height = img.size
    except OSError:
        return
    size = metrics.FRAME
    if (width, height) != (size, size):
        raise EvaluationError(f"{frame}: the release's frames are {width}×{height}; this harness scores boxes and "
                              f"masks in the {size}×{size} frame")


def load_ground_truth(release_dir: str | Path, gt: str = "box") -> tuple[list[str], list[str], np.ndarray]:
    """(instance_ids, image_ids, gt_masks (N, 224, 224) bool) for `gt` = "box" or "mask", in the JSON's order.

    Raises EvaluationError for unreadable files, duplicate instances, instances missing from the instances
    manifest, malformed boxes or masks and empty ground-truth regions (each naming the instances), and for a
    release whose frames (`visual_frames/`, where present; the first is checked) are not 224×224.
    """
    release_dir = Path(release_dir)
    entries = _read_entries(release_dir, gt)
    path = release_dir / GT_FILES[gt]
    instance_ids = [Path(entry["image"]).stem for entry in entries]
    seen: set[str] = set()
    dupes = []
    for iid in instance_ids:
        if iid in seen:
            dupes.append(iid)
        seen.add(iid)
    if dupes:
        raise EvaluationError(f"{path}: {len(dupes)} instances are listed twice: {_few(dupes)}", dupes)
    _check_frame(release_dir, entries[0]["image"])
    if gt == "box":
        masks = _box_masks(path, instance_ids, entries)
    else:
        masks = _mask_files(release_dir, path, instance_ids, entries)
    empty = [iid for iid, area in zip(instance_ids, masks.sum(axis=(1, 2))) if area == 0]
    if empty:
        raise EvaluationError(f"{path}: {len(empty)} instances have an empty ground-truth region in the "
                              f"{metrics.FRAME}×{metrics.FRAME} frame: {_few(empty)}", empty)
    return instance_ids, _image_ids(release_dir, instance_ids), masks


# --- predictions --------------------------------------------------------------------------------------------


def prepare_maps(predictions: Mapping[str, np.ndarray], instance_ids: Sequence[str], *,
                 source: str = "predictions") -> np.ndarray:
    """Validate and resize one map per instance to (N, 224, 224) float32, in `instance_ids` order.

    `predictions` maps instance id to a 2-D array (an open `.npz` archive works). Missing instances, non-2-D or
    non-numeric arrays, NaN / inf values and constant maps raise EvaluationError naming the instances; keys for
    other instances are ignored with an EvaluationWarning.
    """
    keys = set(predictions.keys())
    wanted = set(instance_ids)
    missing = [iid for iid in instance_ids if iid not in keys]
    if missing:
        raise EvaluationError(f"{source}: no map for {len(missing)} of {len(instance_ids)} instances: "
                              f"{_few(missing)}", missing)
    extra = sorted(keys - wanted)
    if extra:
        warnings.warn(f"{source}: ignoring {len(extra)} maps for instances not in the evaluated split: "
                      f"{_few(extra)}", EvaluationWarning, stacklevel=2)
    size = metrics.FRAME
    out = np.zeros((len(instance_ids), size, size), dtype=np.float32)
    problems: dict[str, list[tuple[str, str]]] = {"not 2-D": [], "not real numbers": [], "NaN/inf values": [],
                                                  "constant (cannot be ranked)": []}
    for i, iid in enumerate(instance_ids):
        try:
            arr = np.asarray(predictions[iid])
        except ValueError as exc:  # e.g. a pickled object in an .npz read with allow_pickle=False
            problems["not real numbers"].append((iid, str(exc)))
            continue
        if arr.ndim != 2 or 0 in arr.shape:
            problems["not 2-D"].append((iid, f"shape {arr.shape}"))
            continue
        if arr.dtype.kind not in "biuf":
            problems["not real numbers"].append((iid, f"dtype {arr.dtype}"))
            continue
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            problems["NaN/inf values"].append((iid, f"{int(np.count_nonzero(~np.isfinite(arr)))} pixels"))
            continue
        resized = metrics.resize_bilinear(arr, size)
        if resized.max() == resized.min():
            problems["constant (cannot be ranked)"].append((iid, f"value {float(resized.flat[0]):g}"))
            continue
        out[i] = resized
    found = [(kind, items) for kind, items in problems.items() if items]
    if found:
        parts = [f"{len(items)} maps {kind}: {_few(items, lambda p: f'{p[0]} ({p[1]})')}" for kind, items in found]
        raise EvaluationError(f"{source}: " + "; ".join(parts), [iid for _, items in found for iid, _ in items])
    return out


def load_predictions(path: str | Path, instance_ids: Sequence[str]) -> np.ndarray:
    """(N, 224, 224) float32 maps from an `.npz` keyed by instance id (see the module docstring)."""
    path = Path(path)
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise EvaluationError(f"{path}: cannot read predictions: {exc}") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise EvaluationError(f"{path}: expected an .npz archive of one 2-D map per instance, got a single array")
    with archive:
        return prepare_maps(archive, instance_ids, source=str(path))


# --- evaluation ---------------------------------------------------------------------------------------------


def _result(gt: str, instance_ids, image_ids, gt_masks, maps) -> dict:
    scores = metrics.score(maps, gt_masks, image_ids, with_mask_metrics=gt == "mask")
    return {"gt": gt, "instances": len(instance_ids), "images": len(set(image_ids)), **scores}


def evaluate(release_dir: str | Path, predictions_path: str | Path, gt: str = "box") -> dict:
    """Score an `.npz` of heatmaps against the release's boxes (`gt="box"`) or masks (`gt="mask"`).

    Returns `{"gt", "instances", "images", <metric>: percent, …}` with the metric keys of `metrics.score`
    (mask ground truth adds miou, fscore, miou_adaptive, fscore_adaptive).
    """
    instance_ids, image_ids, gt_masks = load_ground_truth(release_dir, gt)
    maps = load_predictions(predictions_path, instance_ids)
    return _result(gt, instance_ids, image_ids, gt_masks, maps)


_LABELS = {"ciou": "cIoU", "ciou_adaptive": "cIoU-adap", "auc": "AUC", "auc_adaptive": "AUC-adap",
           "iiou": "IIoU", "iiou_adaptive": "IIoU-adap", "iauc": "IAUC", "iauc_adaptive": "IAUC-adap",
           "miou": "mIoU", "fscore": "F", "miou_adaptive": "mIoU-adap", "fscore_adaptive": "F-adap"}


def _rows(results, prefix: str = "") -> list[tuple[str, dict]]:
    if any(key in results for key in metrics.METRIC_KEYS):
        return [(prefix or "model", results)]
    rows = []
    for name, value in results.items():
        rows += _rows(value, f"{prefix}/{name}" if prefix else str(name))
    return rows


def format_table(results: Mapping) -> str:
    """A text table: one result of `evaluate`, a {name: result} mapping or `baseline_scores` output (nested).

    Metrics are percentages with two decimals; a column is shown when any row has it.
    """
    rows = _rows(results)
    if not rows:
        raise ValueError("no results to format")
    keys = [k for k in metrics.METRIC_KEYS + metrics.MASK_METRIC_KEYS if any(k in r for _, r in rows)]
    header = ["", "gt", "instances", "images"] + [_LABELS[k] for k in keys]
    body = []
    for name, r in rows:
        cells = [name, str(r.get("gt", "")), str(r.get("instances", "")), str(r.get("images", ""))]
        cells += [f"{r[k]:.2f}" if k in r else "-" for k in keys]
        body.append(cells)
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]

    def fmt(cells):
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    lines = [fmt(header), "  ".join("-" * w for w in widths), *(fmt(cells) for cells in body)]
    return "\n".join(lines)


# --- baselines ----------------------------------------------------------------------------------------------


def random_map(instance_id: str, seed: int = BASELINE_SEED) -> np.ndarray:
    """Uniform noise on a RANDOM_GRID² grid, seeded by (seed, instance id): the same for an id in any order."""
    rng = np.random.default_rng(derive_seed(seed, "random-baseline", instance_id))
    return rng.random((RANDOM_GRID, RANDOM_GRID), dtype=np.float32)


def centre_map() -> np.ndarray:
    """An isotropic Gaussian centred in the image, σ = a quarter of the side, on a CENTRE_GRID² grid."""
    centres = np.arange(CENTRE_GRID) + 0.5 - CENTRE_GRID / 2
    sigma = CENTRE_GRID / 4
    g = np.exp(-(centres**2) / (2 * sigma**2))
    return np.outer(g, g).astype(np.float32)


def oracle_maps(gt_masks: np.ndarray) -> np.ndarray:
    """The ground truth itself as (N, H, W) float32 maps: exactly 0 outside the region; inside,
    1 + 0.5 × (the region smoothed with a Gaussian of σ = 2 px) + 0.05 × (raster position / pixel count).

    The smoothing ranks an object's interior above its outline; the small raster term keeps the values inside
    distinct (the smoothed interior is a plateau), so a top-50 % cut through a region larger than half the
    image keeps half the image rather than dropping a tied plateau.
    """
    region = np.asarray(gt_masks, dtype=bool)
    n, h, w = region.shape
    smooth = ndimage.gaussian_filter(region.astype(np.float32), sigma=(0, ORACLE_SIGMA_PX, ORACLE_SIGMA_PX),
                                     mode="constant")
    raster = (np.arange(h * w, dtype=np.float64).reshape(h, w) / (h * w)).astype(np.float32)
    values = smooth  # in place, float32 throughout: 1 + 0.5 · smooth + 0.05 · raster (steps of ~8 ulps)
    values *= np.float32(0.5)
    values += np.float32(1.0)
    values += np.float32(0.05) * raster
    values[~region] = 0.0
    return values


def baseline_predictions(instance_ids: Sequence[str], gt_masks: np.ndarray) -> dict[str, dict[str, np.ndarray]]:
    """{baseline: {instance_id: map}} for the three reference baselines (the oracle needs the ground truth)."""
    centre = centre_map()
    oracle = oracle_maps(gt_masks)
    return {
        "random": {iid: random_map(iid) for iid in instance_ids},
        "centre": {iid: centre.copy() for iid in instance_ids},
        "oracle": {iid: oracle[i] for i, iid in enumerate(instance_ids)},
    }


def available_gt(release_dir: str | Path) -> list[str]:
    """The ground-truth kinds whose JSON exists in the release ("box", "mask")."""
    return [gt for gt, name in GT_FILES.items() if (Path(release_dir) / name).is_file()]


def baseline_scores(release_dir: str | Path) -> dict[str, dict[str, dict]]:
    """`{"box": {"random": result, "centre": result, "oracle": result}, "mask": {…}}` for each available GT.

    Each baseline's maps go through the same validation, resizing and scoring as an `.npz` in `evaluate`.
    """
    out: dict[str, dict[str, dict]] = {}
    for gt in available_gt(release_dir):
        instance_ids, image_ids, gt_masks = load_ground_truth(release_dir, gt)
        out[gt] = {}
        for name, predictions in baseline_predictions(instance_ids, gt_masks).items():
            maps = prepare_maps(predictions, instance_ids, source=f"{name} baseline")
            out[gt][name] = _result(gt, instance_ids, image_ids, gt_masks, maps)
    if not out:
        raise EvaluationError(f"{release_dir}: neither {GT_FILES['box']} nor {GT_FILES['mask']} found")
    return out


def write_baseline_predictions(release_dir: str | Path, out_dir: str | Path) -> dict[str, Path]:
    """Write the baselines as prediction files (np.savez_compressed) and return {name: path}.

    `random.npz` and `centre.npz` hold a map for every instance of the release (box and mask splits);
    the oracle depends on the ground truth: `oracle_box.npz`, `oracle_mask.npz` (where that GT exists).
    `evaluate(release_dir, path, gt)` on these files gives the numbers of `baseline_scores`.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    shared: dict[str, dict[str, np.ndarray]] = {"random": {}, "centre": {}}
    for gt in available_gt(release_dir):
        instance_ids, _, gt_masks = load_ground_truth(release_dir, gt)
        predictions = baseline_predictions(instance_ids, gt_masks)
        for name in shared:
            shared[name].update(predictions[name])
        path = out_dir / f"oracle_{gt}.npz"
        np.savez_compressed(path, **predictions["oracle"])
        written[f"oracle_{gt}"] = path
    if not written:
        raise EvaluationError(f"{release_dir}: neither {GT_FILES['box']} nor {GT_FILES['mask']} found")
    for name, predictions in shared.items():
        path = out_dir / f"{name}.npz"
        np.savez_compressed(path, **predictions)
        written[name] = path
    return dict(sorted(written.items()))
