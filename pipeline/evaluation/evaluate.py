"""The evaluation harness: score a model's heatmaps on a benchmark's ground truth, beside the reference baselines.

Ground truth: any benchmark `formats.load_ground_truth` reads (this project's IS4 releases, the authors' IS4 files
as distributed, VGG-SS, Flickr-SoundNet, AVSBench S4 / MS3, VPO-SS / MS). Predictions: an `.npz` of one 2-D map
per instance id (`predictions`). Scores: `metrics` under a protocol (`reference`, the default, reproduces the
papers' evaluation code; `exact-k` is the tie-safe variant), in percent.

```python
import numpy as np
np.savez("my_model.npz", **{instance_id: heatmap for instance_id, heatmap in my_maps.items()})
# is4.pipeline.evaluation.evaluate.evaluate("IS4/", "my_model.npz", gt="box")
```

The maps are streamed: each chunk of CHUNK instances is read from the archive, checked, resized and scored, on a
few threads, so memory stays bounded whatever the number of instances (a chunk is float64 only when one of its
maps is stored as float64 or integers). Every instance needs a map; maps for other ids are ignored with an `EvaluationWarning` (one file
can serve the box and the mask ground truth); a constant map is scored (it keeps no pixel: IoU 0) with a warning.

Reference baselines (`baseline_scores`, `score_baselines`, `write_baseline_predictions`): `random` (uniform noise on
a 14×14 grid, seeded per instance id), `centre` (an isotropic Gaussian centred in the image, σ = a quarter of the
side, on a 28×28 grid) and `oracle` (the ground-truth region itself at 224×224: exactly 0 outside, inside
1 + 0.05 × raster position / pixel count, so that its values are distinct; see `oracle_maps`). The random and
centre maps are made at low resolution, as a model's similarity map would be, resized by the protocol's rule and
scored as any prediction (the centre and oracle maps give their sorted values directly: no cut to search). Under `exact-k` the oracle scores 100 on every box metric; under
`reference` a cut keeps one pixel less than the region (adaptive IoU (A − 1)/A, which fails the AUC's last
threshold of 1.0) and no map succeeds on a full-frame region at the top-50 % cut.
"""

from __future__ import annotations

import functools
import json
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from is4.manifests.ids import derive_seed
from is4.pipeline.evaluation import metrics
from is4.pipeline.evaluation.errors import EvaluationError, EvaluationWarning, few
from is4.pipeline.evaluation.formats import IS4_FILES, GroundTruth, load_ground_truth
from is4.pipeline.evaluation.predictions import MapProblem, NpzMaps, prepare_map
from is4.pipeline.evaluation.tasks import LABELS

__all__ = [
    "EvaluationError",
    "EvaluationWarning",
    "evaluate",
    "score_file",
    "score_source",
    "score_baselines",
    "baseline_scores",
    "shipped_baselines",
    "write_baseline_predictions",
    "write_per_instance",
    "format_table",
]

BASELINES = ("random", "centre", "oracle")
BASELINES_FILE = "baselines.json"  # a release ships {"protocol": name, "maps": map path, "scores": baseline_scores()}
BASELINE_SEED = 20240
RANDOM_GRID = 14
CENTRE_GRID = 28
CHUNK = metrics.CHUNK


@dataclass
class Scored:
    """One model (or baseline) scored on one ground truth: the summary and the per-instance scores."""

    truth: GroundTruth
    protocol: metrics.Protocol
    summary: dict
    per_instance: dict[str, np.ndarray]


def _summary(truth: GroundTruth, protocol: metrics.Protocol, per: dict) -> dict:
    """The result of one scoring: what was scored (benchmark, protocol and its map path, instances, images, empty
    regions scored, instances left out) and the metrics in percent at full precision."""
    head = {
        "benchmark": truth.benchmark,
        "protocol": protocol.name,
        "maps": protocol.map_path,
        "gt": truth.gt,
        "instances": len(truth),
        "empty_regions": len(truth.empty),
        "left_out": len(truth.excluded),
    }
    if truth.gt == "mask":
        head["miou_mean"] = protocol.miou_mean
    if truth.image_ids is not None:
        head["images"] = len(set(truth.image_ids))
    scores = metrics.summarise(
        per, truth.image_ids, protocol=protocol, with_mask_metrics=truth.gt == "mask", decimals=None
    )
    return {**head, **scores}


def score_source(
    truth: GroundTruth,
    source,
    protocol: str | metrics.Protocol = metrics.DEFAULT_PROTOCOL,
    *,
    name: str = "predictions",
    workers: int | None = None,
) -> Scored:
    """Score the maps of `source` (anything with `keys()` and `read(instance_id)`, e.g. `NpzMaps`) on `truth`.

    Raises EvaluationError naming the instances without a map and every map that cannot be scored (not 2-D, not
    real numbers, NaN / inf, unreadable), grouped by problem.
    """
    protocol = metrics.get_protocol(protocol)
    ids = truth.instance_ids
    keys = set(source.keys())
    missing = [iid for iid in ids if iid not in keys]
    if missing:
        raise EvaluationError(f"{name}: no map for {len(missing)} of {len(ids)} instances: {few(missing)}", missing)
    extra = sorted(keys - set(ids))
    if extra:
        warnings.warn(
            f"{name}: ignoring {len(extra)} maps for instances not in the evaluated split: {few(extra)}",
            EvaluationWarning,
            stacklevel=2,
        )
    n = len(ids)
    per = {key: np.zeros(n) for key in metrics.PER_INSTANCE_KEYS}
    per["gt_area"] = np.zeros(n, dtype=np.int64)
    problems: list[tuple[int, MapProblem]] = []  # list.append is atomic: safe from the worker threads
    constant: list[int] = []

    direct = hasattr(source, "read_into")
    fallback = metrics.mask_empty_area(n, protocol)
    presorted = getattr(source, "sorted_map", None)  # a source that knows its maps' sorted values (baselines)

    def run(start: int) -> None:
        stop = min(start + CHUNK, n)
        # One float32 chunk per thread, reused: stored float32 224×224 maps are read straight into it.
        chunk, wide = metrics.scratch("maps", (stop - start, metrics.FRAME * metrics.FRAME), np.float32), {}
        read_whole = []  # rows read straight into the chunk: checked for NaN / inf below, all at once
        for row, i in enumerate(range(start, stop)):
            try:
                if direct and source.read_into(ids[i], chunk[row]):
                    read_whole.append(row)
                    continue
                ready = prepare_map(source.read(ids[i]), protocol)
            except MapProblem as problem:
                problems.append((i, problem))
                continue
            except ValueError as exc:  # a corrupt member, a pickled object
                problems.append((i, MapProblem("unreadable", str(exc))))
                continue
            if ready.dtype == np.float64:
                wide[row] = ready
            else:
                chunk[row] = ready.reshape(-1)
        bounds = chunk.min(axis=1), chunk.max(axis=1)  # NaN / inf show in them (rows not read: ignored)
        finite = np.isfinite(bounds[0]) & np.isfinite(bounds[1])
        for row in (row for row in read_whole if not finite[row]):
            bad = int(np.count_nonzero(~np.isfinite(chunk[row])))
            problems.append((start + row, MapProblem("NaN/inf values", f"{bad} pixels")))
        if problems:
            return  # once any map is bad, only check the others
        flat = chunk
        if wide:  # a float64 map: the chunk is scored in float64 (exact for the float32 maps too)
            flat = chunk.astype(np.float64)
            for row, ready in wide.items():
                flat[row] = ready.reshape(-1)
            bounds = flat.min(axis=1), flat.max(axis=1)
        constant.extend(start + int(j) for j in np.flatnonzero(bounds[0] == bounds[1]))
        full, half = truth.regions(start, stop)
        select = None
        ordered = [presorted(ids[i]) for i in range(start, stop)] if presorted is not None else [None]
        if all(o is not None for o in ordered):
            known = [o for o in ordered if o is not None]
            select = functools.partial(_presorted_values, known, protocol.map_path)

        rows = metrics.score_rows(
            flat,
            full,
            half,
            protocol,
            select=select,
            mask_empty_area=fallback[start:stop],
            mask_metrics=truth.gt == "mask",
            bounds=bounds,
        )
        for key, values in rows.items():
            per[key][start:stop] = values

    metrics.map_chunks(run, n, CHUNK, workers)
    if problems:
        by_kind: dict[str, list[tuple[str, str]]] = {}
        for i, problem in sorted(problems, key=lambda p: p[0]):
            by_kind.setdefault(problem.kind, []).append((ids[i], problem.detail))
        parts = [
            f"{len(items)} maps {kind}: {few(items, lambda p: f'{p[0]} ({p[1]})')}" for kind, items in by_kind.items()
        ]
        raise EvaluationError(f"{name}: " + "; ".join(parts), [iid for items in by_kind.values() for iid, _ in items])
    if constant:
        warnings.warn(
            f"{name}: {len(constant)} maps are constant (they keep no pixel at any cut: IoU 0): "
            f"{few([ids[i] for i in sorted(constant)])}",
            EvaluationWarning,
            stacklevel=2,
        )
    return Scored(truth, protocol, _summary(truth, protocol, per), per)


def _presorted_values(ordered: list[np.ndarray], map_path: str, normalised: np.ndarray, ranks) -> list[np.ndarray]:
    """The cut values of the normalised rows whose sorted raw values `ordered` are known (`select` of
    `metrics.score_rows`): the values at the ranks, normalised with each row's first and last (its min and max),
    as the whole row is (normalising is non-decreasing: the rank's value stays the rank's value)."""
    lo, hi = np.array([o[0] for o in ordered]), np.array([o[-1] for o in ordered])
    values = [np.array([o[r] for o, r in zip(ordered, rank)]) for rank in ranks]
    return [metrics.normalise_values(v, lo, hi, map_path).astype(normalised.dtype) for v in values]


def score_file(
    truth: GroundTruth,
    predictions_path: str | Path,
    protocol: str | metrics.Protocol = metrics.DEFAULT_PROTOCOL,
    *,
    workers: int | None = None,
) -> Scored:
    """Score an `.npz` of maps (see `predictions`) on `truth`."""
    with NpzMaps(predictions_path) as source:
        return score_source(truth, source, protocol, name=str(predictions_path), workers=workers)


def evaluate(
    release_dir: str | Path,
    predictions_path: str | Path,
    gt: str | None = None,
    *,
    benchmark: str | None = None,
    protocol: str | metrics.Protocol = metrics.DEFAULT_PROTOCOL,
    ids: str | Path | None = None,
    empty: str = "score",
    workers: int | None = None,
) -> dict:
    """Score an `.npz` of heatmaps on a benchmark's boxes (`gt="box"`) or masks (`gt="mask"`).

    `release_dir`: a directory or a ground-truth file (see `formats`); `ids` and `empty` as
    `formats.load_ground_truth`. Returns `{"benchmark", "protocol", "maps", "gt", "instances", "empty_regions",
    "left_out", "images" (where images hold several instances), <metric>: percent, …}` at full precision, with
    the keys of `metrics.summarise`.
    """
    protocol = metrics.get_protocol(protocol)
    truth = load_ground_truth(release_dir, gt, benchmark=benchmark, protocol=protocol, ids=ids, empty=empty)
    return score_file(truth, predictions_path, protocol, workers=workers).summary


# --- the table and the per-instance file --------------------------------------------------------------------


def _rows(results, prefix: str = "") -> list[tuple[str, dict]]:
    if any(key in results for key in metrics.METRIC_KEYS):
        return [(prefix or "model", results)]
    rows = []
    for name, value in results.items():
        if isinstance(value, Mapping):
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
    header = ["", "gt", "instances", "images"] + [LABELS[k] for k in keys]
    body = []
    for name, r in rows:
        cells = [name, str(r.get("gt", "")), str(r.get("instances", "")), str(r.get("images", "-"))]
        cells += [f"{r[k]:.2f}" if k in r else "-" for k in keys]
        body.append(cells)
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]

    def fmt(cells):
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    return "\n".join([fmt(header), "  ".join("-" * w for w in widths), *(fmt(cells) for cells in body)])


def write_per_instance(path: str | Path, scored: Scored) -> None:
    """Write the per-instance scores as Parquet (one row per instance, in ground-truth order), atomically.

    Columns: instance_id, image_id (grouped benchmarks), gt_area, iou, iou_adaptive, and for masks miou,
    miou_adaptive, fscore, fscore_adaptive; the schema metadata `is4.evaluation` says benchmark, protocol and gt.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from is4.manifests.atomic import atomic_path

    truth, per = scored.truth, scored.per_instance
    columns: dict[str, object] = {"instance_id": pa.array(truth.instance_ids, pa.string())}
    if truth.image_ids is not None:
        columns["image_id"] = pa.array(truth.image_ids, pa.string())
    columns["gt_area"] = pa.array(per["gt_area"], pa.int64())
    keys = ["iou", "iou_adaptive"] + (
        ["miou", "miou_adaptive", "fscore", "fscore_adaptive"] if truth.gt == "mask" else []
    )
    columns.update({key: pa.array(per[key], pa.float64()) for key in keys})
    facts = {
        "benchmark": truth.benchmark,
        "protocol": scored.protocol.name,
        "gt": truth.gt,
        "ground_truth": truth.source.name,
    }
    table = pa.table(columns).replace_schema_metadata({"is4.evaluation": json.dumps(facts, sort_keys=True)})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


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


@functools.lru_cache(maxsize=4)
def _raster(h: int, w: int) -> np.ndarray:
    ramp = (np.arange(h * w, dtype=np.float64).reshape(h, w) / (h * w)).astype(np.float32)
    return np.float32(1.0) + np.float32(0.05) * ramp


def oracle_maps(regions: np.ndarray) -> np.ndarray:
    """The ground-truth regions (N, H, W) as float32 maps: exactly 0 outside; inside 1 + 0.05 × (raster position /
    pixel count), values about 8 float32 steps apart, so every cut through a region is a clean one (no ties)."""
    region = np.asarray(regions, dtype=bool)
    return np.where(region, _raster(*region.shape[1:]), np.float32(0.0))


class BaselineMaps:
    """A map source (`keys`, `read`) for one reference baseline on one ground truth.

    `read` gives the maps as stored (random and centre at low resolution, as a model's); with a `protocol` it gives
    them resized to 224×224 already (its map path), the centre map resized once.
    """

    def __init__(self, kind: str, truth: GroundTruth, protocol: metrics.Protocol | None = None):
        if kind not in BASELINES:
            raise ValueError(f"baseline must be one of {', '.join(BASELINES)}, not {kind!r}")
        self.kind, self.truth, self.protocol = kind, truth, protocol
        self._index = {iid: i for i, iid in enumerate(truth.instance_ids)}
        self._centre = self._sized(centre_map())
        self._sorted: np.ndarray | None = None
        # `read`, then `sorted_map` want an oracle's region: made once (a chunk per scoring thread, ≤ 8, in flight)
        self._region = functools.lru_cache(maxsize=CHUNK * 8)(self._make_region)

    def _sized(self, arr: np.ndarray) -> np.ndarray:
        if self.protocol is None:
            return arr
        return metrics.resize_map(arr, self.protocol)

    def keys(self):
        """The ground truth's instance ids."""
        return self._index.keys()

    def _make_region(self, key: str) -> np.ndarray:
        i = self._index[key]
        full, half = self.truth.regions(i, i + 1)
        return (full if half is None else full | half).reshape(metrics.FRAME, metrics.FRAME)

    def read(self, key: str) -> np.ndarray:
        """The baseline's map for instance `key`."""
        if self.kind == "random":
            return self._sized(random_map(key))
        if self.kind == "centre":
            return self._centre
        return oracle_maps(self._region(key)[None])[0]

    def sorted_map(self, key: str) -> np.ndarray | None:
        """`np.sort(read(key).flat)` without sorting, for 224×224 maps: the centre map sorted once; the oracle's
        zeros, then its region's values, which grow in raster order. None for the random maps."""
        if self.kind == "centre" and self._centre.shape == (metrics.FRAME, metrics.FRAME):
            if self._sorted is None:
                self._sorted = np.sort(self._centre.ravel())
            return self._sorted
        if self.kind == "oracle":
            region = self._region(key).ravel()
            inside = _raster(metrics.FRAME, metrics.FRAME).ravel()[np.flatnonzero(region)]
            return np.concatenate([np.zeros(region.size - inside.size, dtype=np.float32), inside])
        return None


def score_baselines(
    truth: GroundTruth, protocol: str | metrics.Protocol = metrics.DEFAULT_PROTOCOL, *, workers: int | None = None
) -> dict[str, Scored]:
    """{baseline: Scored} for random, centre and oracle on `truth`, resized and scored as a model's maps are."""
    protocol = metrics.get_protocol(protocol)
    return {
        kind: score_source(
            truth, BaselineMaps(kind, truth, protocol), protocol, name=f"{kind} baseline", workers=workers
        )
        for kind in BASELINES
    }


def available_gt(release_dir: str | Path) -> list[str]:
    """The IS4 ground-truth kinds ("box", "mask") whose JSON (ours or the authors' name) is in the directory."""
    return [gt for gt, names in IS4_FILES.items() if any((Path(release_dir) / name).is_file() for name in names)]


def baseline_scores(
    release_dir: str | Path, *, protocol: str | metrics.Protocol = metrics.DEFAULT_PROTOCOL, workers: int | None = None
) -> dict[str, dict[str, dict]]:
    """`{"box": {"random": result, "centre": result, "oracle": result}, "mask": {…}}` for each IS4 ground truth
    of the release (each result as `evaluate` returns it)."""
    out: dict[str, dict[str, dict]] = {}
    for gt in available_gt(release_dir):
        truth = load_ground_truth(release_dir, gt, benchmark="is4", protocol=protocol)
        out[gt] = {kind: scored.summary for kind, scored in score_baselines(truth, protocol, workers=workers).items()}
    if not out:
        raise EvaluationError(f"{release_dir}: none of {', '.join(IS4_FILES['box'] + IS4_FILES['mask'])} found")
    return out


def shipped_baselines(truth: GroundTruth, protocol: str | metrics.Protocol) -> dict[str, dict] | None:
    """The baseline summaries an IS4 release ships (`baselines.json`, scored when it was built), or None.

    Only for our own releases under the protocol they were scored with; anything else is scored afresh.
    """
    folder = truth.source if truth.source.is_dir() else truth.source.parent
    path = folder / BASELINES_FILE
    if truth.benchmark != "is4" or truth.excluded or not path.is_file():
        return None  # a subset (an id list, empty regions left out) is scored afresh
    shipped = json.loads(path.read_text(encoding="utf-8"))
    protocol = metrics.get_protocol(protocol)
    if shipped.get("protocol") != protocol.name or shipped.get("maps") != protocol.map_path:
        return None
    return shipped["scores"].get(truth.gt)


def write_baseline_predictions(
    release_dir: str | Path, out_dir: str | Path, *, protocol: str | metrics.Protocol = metrics.DEFAULT_PROTOCOL
) -> dict[str, Path]:
    """Write the baselines as prediction files (np.savez_compressed) and return {name: path}.

    `random.npz` and `centre.npz` hold a map for every instance of the release (box and mask ground truth);
    the oracle depends on the ground truth: `oracle_box.npz`, `oracle_mask.npz` (where that ground truth exists).
    `evaluate(release_dir, path, gt)` on these files gives the numbers of `baseline_scores`.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    shared: dict[str, dict[str, np.ndarray]] = {"random": {}, "centre": {}}
    for gt in available_gt(release_dir):
        truth = load_ground_truth(release_dir, gt, benchmark="is4", protocol=protocol)
        for kind in shared:
            source = BaselineMaps(kind, truth)
            shared[kind].update({iid: source.read(iid) for iid in truth.instance_ids})
        oracle = BaselineMaps("oracle", truth)
        path = out_dir / f"oracle_{gt}.npz"
        np.savez_compressed(path, **{iid: oracle.read(iid) for iid in truth.instance_ids})
        written[f"oracle_{gt}"] = path
    if not written:
        raise EvaluationError(f"{release_dir}: none of {', '.join(IS4_FILES['box'] + IS4_FILES['mask'])} found")
    for kind, maps in shared.items():
        path = out_dir / f"{kind}.npz"
        np.savez_compressed(path, **maps)
        written[kind] = path
    return dict(sorted(written.items()))
