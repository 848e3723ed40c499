"""Cross-modal retrieval and alignment from an embeddings file (TPAMI Tables 5–6, ICCV'23 Table 2, JSA Table 4).

Embeddings file: an `.npz` with `ids` (N strings, instance ids of the benchmark) and, per feature kind, `audio`
and `image` (N × D, row i the pair of `ids[i]`), or `audio/<kind>` and `image/<kind>` for several kinds (e.g.
`backbone`, `projected`).

- **Retrieval** (`retrieval`): audio→image (a2i: each audio queries all images of the pool) and image→audio (i2a),
  cosine similarity; a query scores at K when one of its K most similar items has the query's class label (JSA
  §4.2's category rule; the query's own pair stays in the pool). Ties in similarity are ranked by pool order (a
  stable sort). Labels: VGG-SS's `class`, else the instance id's last `_part` (an IS4 category). Recall@1/5/10 in
  percent, with the chance level of a random ranking beside (`chance`: per query 1 − C(N − n, K) / C(N, K), n =
  the pool's items of its class).
- **Alignment and magnitude** (`alignment`): alignment = mean over pairs of the cosine of the image and the audio
  embedding (CyCLIP's alignment); magnitude = the norm of (normalised image − normalised audio), mean and
  population std over pairs (DrML's modality-gap statistics).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from is4.pipeline.evaluation.errors import EvaluationError, few
from is4.pipeline.evaluation.formats import GroundTruth

KS = (1, 5, 10)
QUERY_CHUNK = 512  # queries per block of the similarity matrix


def load_embeddings(path: str | Path) -> tuple[list[str], dict[str, tuple[np.ndarray, np.ndarray]]]:
    """(ids, {kind: (audio (N, D), image (N, D))}) from an embeddings `.npz` (kind "" for plain `audio`/`image`)."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except (OSError, ValueError) as exc:
        raise EvaluationError(f"{path}: cannot read embeddings: {exc}") from None
    if "ids" not in arrays:
        raise EvaluationError(f"{path}: no `ids` array (N instance ids)")
    ids = [str(i) for i in arrays.pop("ids").reshape(-1)]
    kinds: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for key in sorted(arrays):
        modality, _, kind = key.partition("/")
        if modality != "audio":
            continue
        audio, image = arrays[key], arrays.get("image" + (f"/{kind}" if kind else ""))
        if image is None:
            raise EvaluationError(f"{path}: `{key}` has no matching image array")
        if audio.ndim != 2 or image.shape != audio.shape or audio.shape[0] != len(ids):
            raise EvaluationError(
                f"{path}: `{key}` {audio.shape} and its image array {image.shape} must both be (N = {len(ids)}, D)"
            )
        if not (np.isfinite(audio).all() and np.isfinite(image).all()):
            raise EvaluationError(f"{path}: `{key}` or its image array holds NaN / inf values")
        kinds[kind] = (audio.astype(np.float64), image.astype(np.float64))
    if not kinds:
        raise EvaluationError(f"{path}: no `audio` / `image` (or `audio/<kind>` / `image/<kind>`) arrays")
    return ids, kinds


def labels_of(truth: GroundTruth) -> list[str]:
    """Each instance's class: the file's own (VGG-SS `class`), else the instance id's last `_part`."""
    return truth.classes if truth.classes is not None else [iid.rsplit("_", 1)[-1] for iid in truth.instance_ids]


def _normalise(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms == 0, 1.0, norms)


def _hits(queries: np.ndarray, pool: np.ndarray, labels: np.ndarray, ks=KS) -> np.ndarray:
    """(len(ks),) hit counts: per query, whether one of its top-K pool items (cosine, ties by pool order) has
    its label. `labels` are integer codes, the query's label at its own row."""
    n, k_max = pool.shape[0], max(ks)
    k_max = min(k_max, n)
    hits = np.zeros(len(ks), dtype=np.int64)
    for start in range(0, queries.shape[0], QUERY_CHUNK):
        sims = queries[start : start + QUERY_CHUNK] @ pool.T  # (q, N)
        rows = np.arange(sims.shape[0])
        kth = -np.partition(-sims, k_max - 1, axis=1)[:, k_max - 1]  # the K-th largest similarity per query
        top = np.empty((sims.shape[0], k_max), dtype=np.int64)
        for r in rows:  # the items at or above it, best first, ties by pool order (usually exactly K of them)
            cand = np.flatnonzero(sims[r] >= kth[r])
            top[r] = cand[np.lexsort((cand, -sims[r, cand]))][:k_max]
        match = labels[top] == labels[start + rows][:, None]
        for j, k in enumerate(ks):
            hits[j] += int(np.count_nonzero(match[:, : min(k, n)].any(axis=1)))
    return hits


def chance(labels, ks=KS) -> dict[str, float]:
    """Recall@K in percent of a random ranking of the pool under the label rule: the mean over queries of
    1 − C(N − n, K) / C(N, K), n = the pool's items with the query's label."""
    _, codes, counts = np.unique(np.asarray(labels), return_inverse=True, return_counts=True)
    n = codes.size
    out = {}
    for k in ks:
        drawn = min(k, n)  # a pool smaller than K: every item is retrieved
        miss = np.array([math.comb(n - c, drawn) / math.comb(n, drawn) for c in counts])
        out[f"r{k}"] = float(np.mean(1.0 - miss[codes]) * 100.0)
    return out


def _pairs(truth: GroundTruth, path: Path, ids: list[str]) -> np.ndarray:
    """The embedding row of each ground-truth instance (EvaluationError naming those without one)."""
    row = {iid: i for i, iid in enumerate(ids)}
    missing = [iid for iid in truth.instance_ids if iid not in row]
    if missing:
        raise EvaluationError(
            f"{path}: no embeddings for {len(missing)} of {len(truth)} instances: {few(missing)}", missing
        )
    return np.array([row[iid] for iid in truth.instance_ids], dtype=np.int64)


def retrieval(truth: GroundTruth, embeddings: str | Path, ks=KS) -> dict:
    """{"benchmark", "instances", "classes", "chance": {r1, r5, r10}, <kind>: {a2i_r1 … i2a_r10}} in percent,
    over the ground truth's instances as the pool (see the module docstring); kind "" is reported as "features"."""
    path = Path(embeddings)
    ids, kinds = load_embeddings(path)
    rows = _pairs(truth, path, ids)
    labels = labels_of(truth)
    _, codes = np.unique(np.asarray(labels), return_inverse=True)
    out: dict = {"benchmark": truth.benchmark, "instances": len(truth), "classes": int(codes.max()) + 1}
    out["chance"] = chance(labels, ks)
    for kind, (audio, image) in kinds.items():
        a, v = _normalise(audio[rows]), _normalise(image[rows])
        scores = {}
        for name, (queries, pool) in {"a2i": (a, v), "i2a": (v, a)}.items():
            hits = _hits(queries, pool, codes, ks)
            scores.update({f"{name}_r{k}": float(h) / len(rows) * 100.0 for k, h in zip(ks, hits)})
        out[kind or "features"] = scores
    return out


def alignment(truth: GroundTruth, embeddings: str | Path) -> dict:
    """{"benchmark", "instances", <kind>: {alignment, magnitude_mean, magnitude_std}} over the ground truth's pairs
    (alignment a cosine in [−1, 1]; magnitude the gap norm in [0, 2])."""
    path = Path(embeddings)
    ids, kinds = load_embeddings(path)
    rows = _pairs(truth, path, ids)
    out: dict = {"benchmark": truth.benchmark, "instances": len(truth)}
    for kind, (audio, image) in kinds.items():
        a, v = _normalise(audio[rows]), _normalise(image[rows])
        gaps = np.linalg.norm(v - a, axis=1)
        out[kind or "features"] = {
            "alignment": float(np.mean(np.sum(v * a, axis=1))),
            "magnitude_mean": float(np.mean(gaps)),
            "magnitude_std": float(np.std(gaps)),
        }
    return out


def format_retrieval(result: dict) -> str:
    """A text table of `retrieval` output: one row per feature kind and the chance row, percent, two decimals."""
    keys = [f"{d}_r{k}" for d in ("a2i", "i2a") for k in KS]
    rows = [(kind, scores) for kind, scores in result.items() if isinstance(scores, dict) and kind != "chance"]
    chance_row = {f"{d}_r{k}": result["chance"][f"r{k}"] for d in ("a2i", "i2a") for k in KS}
    lines = [["", *(k.replace("_r", " R@") for k in keys)]]
    lines += [[kind, *(f"{scores[k]:.2f}" for k in keys)] for kind, scores in [*rows, ("chance", chance_row)]]
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    return "\n".join(
        "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths))) for line in lines
    )


def format_alignment(result: dict) -> str:
    """A text table of `alignment` output: one row per feature kind."""
    lines = [["", "alignment", "magnitude"]]
    for kind, s in result.items():
        if isinstance(s, dict):
            lines.append([kind, f"{s['alignment']:.4f}", f"{s['magnitude_mean']:.2f} ± {s['magnitude_std']:.2f}"])
    widths = [max(len(line[i]) for line in lines) for i in range(3)]
    return "\n".join(
        "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths))) for line in lines
    )
