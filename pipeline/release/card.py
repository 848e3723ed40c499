"""The dataset card (README.md): `card_template.md` filled with the release's statistics, models and scores."""

from __future__ import annotations

import importlib.resources
import re
from pathlib import Path
from string import Template
from typing import Any

import numpy as np
import pandas as pd
import yaml

from is4 import __version__
from is4.config import ReleaseConfig
from is4.manifests.io import is_blank, manifest_path, read_manifest
from is4.pipeline.registry import REGISTRY
from is4.pipeline.release.hf import card_metadata
from is4.pipeline.release.layout import CC_BY_4, MASK_THRESHOLD

_NOT_METRICS = frozenset({"gt", "instances", "images", "empty_regions", "left_out"})


def resolved_models(workdir: Path, images: pd.DataFrame, annotations: pd.DataFrame) -> list[dict[str, str]]:
    """(role, model_id, revision) of every model the manifests say produced this release."""
    found: set[tuple[str, str, str]] = set()

    def add(role: str, frame: pd.DataFrame, id_col: str, rev_col: str) -> None:
        if id_col not in frame.columns:
            return
        for model_id, rev in zip(frame[id_col], frame[rev_col] if rev_col in frame.columns else [None] * len(frame)):
            if not is_blank(model_id):
                found.add((role, str(model_id), "" if is_blank(rev) else str(rev)))

    add("image_generator", images, "model_id", "model_revision")
    add("segmenter", annotations, "model_id", "model_revision")
    add("detector", annotations, "detector_id", "detector_revision")
    if manifest_path(workdir, "prescreen").is_file():
        add("prescreen", read_manifest(workdir, "prescreen"), "model_id", "model_revision")
    return [{"role": r, "model_id": m, "revision": v} for r, m, v in sorted(found)]


def _md_table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _attribution_text() -> str:
    text = importlib.resources.files("is4").joinpath("data/ATTRIBUTION.md").read_text(encoding="utf-8")
    return text.strip()


def _quote(text: str) -> str:
    """Markdown blockquote of `text`, line for line (so its headings do not become headings of the card)."""
    return "\n".join(f"> {line}".rstrip() for line in text.splitlines())


def _baseline_table(scores: dict[str, dict[str, dict[str, Any]]]) -> str:
    """Rows task × baseline, one column per metric (in the order the scores list them)."""
    metrics: list[str] = []
    for task in scores.values():
        for base in task.values():
            for key, value in base.items():
                numeric = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
                if key not in _NOT_METRICS and numeric and key not in metrics:
                    metrics.append(key)
    rows = []
    for task in sorted(scores):
        for base in sorted(scores[task]):
            rows.append(
                [task, base] + [f"{scores[task][base][m]:.2f}" if m in scores[task][base] else "–" for m in metrics]
            )
    return _md_table(["task", "baseline"] + metrics, rows)


def render_card(
    cfg: ReleaseConfig,
    build_config: dict[str, Any],
    stats: dict[str, Any],
    models: list[dict[str, str]],
    scores: dict[str, Any] | None,
    gallery_images: int = 0,
) -> str:
    """The card's Markdown, opened by its Hugging Face YAML block; `scores` are the baseline scores, None where the
    frame size has none; `gallery_images` is the number of images in `card/samples.png`."""
    v = cfg.version
    image_models = sorted({m["model_id"] for m in models if m["role"] == "image_generator"})
    configured = build_config.get("models") or {}
    model_rows = []
    for m in models:
        conf = configured.get(m["role"]) or {}
        model_rows.append(
            [
                m["role"],
                f"`{m['model_id']}`",
                f"`{conf.get('revision', '')}`" if conf else "–",
                f"`{m['revision']}`" if m["revision"] else "–",
            ]
        )
    cat_rows = [
        [c, n["instances"], n["images"], n["clips"], n["reused"]] for c, n in sorted(stats["per_category"].items())
    ]
    style_rows = [[s, n["images"], n["instances"]] for s, n in sorted(stats["per_style"].items())]
    left_out = stats["images_excluded"]
    exclusions = (
        "No accepted image was left out."
        if not left_out
        else f"{left_out} accepted image{'s were' if left_out != 1 else ' was'} left out; reasons (an image with two "
        "reasons counts under each; the image ids are in the build's `reports/match.json`):\n\n"
        + _md_table(["reason", "images"], [[f"`{r}`", n] for r, n in stats["excluded_by_reason"].items()])
    )
    area = stats["area_summary"]
    s = cfg.image_size
    if scores is None:
        baselines = f"Not computed: the evaluation harness scores 224×224 frames and this release has {s}×{s} frames."
    else:
        baselines = (
            "Scores (%) of reference baselines on this release (`is4.pipeline.evaluation.evaluate.baseline_scores`; "
            "random: seeded noise, centre: a centred Gaussian, oracle: the ground truth itself):\n\n"
            + _baseline_table(scores)
        )
    stage_lines = [f"{i}. **{s.name}**: {s.summary}" for i, s in enumerate(REGISTRY, start=1)]
    model_table = (
        _md_table(["role", "model", "configured", "resolved"], model_rows) if model_rows else "(none recorded)"
    )
    template = importlib.resources.files("is4.pipeline.release").joinpath("card_template.md")
    front = yaml.safe_dump(
        card_metadata(cfg.title, stats["instances"], stats["hf_parquet_bytes"]), sort_keys=False, allow_unicode=True
    )
    return f"---\n{front}---\n\n" + Template(template.read_text(encoding="utf-8")).substitute(
        title=cfg.title,
        version=v,
        cite_key=re.sub(r"[^0-9A-Za-z]", "_", v),
        builder_version=__version__,
        seed=build_config.get("seed", "–"),
        size=s,
        mask_threshold=MASK_THRESHOLD,
        licence_url=CC_BY_4,
        instances=stats["instances"],
        images=stats["images"],
        categories=stats["categories"],
        clips=stats["clips"],
        reused=stats["reused"],
        images_excluded=left_out,
        exclusions=exclusions,
        stages="\n".join(stage_lines),
        model_table=model_table,
        category_table=_md_table(["category", "instances", "images", "distinct clips", "reused clips"], cat_rows),
        style_table=_md_table(["style", "images", "instances"], style_rows),
        area_min=f"{area['min']:.3f}",
        area_median=f"{area['median']:.3f}",
        area_mean=f"{area['mean']:.3f}",
        area_max=f"{area['max']:.3f}",
        baselines=baselines,
        gallery=(
            f"![sample images with masks, boxes and categories](card/samples.png)\n\nThe first {gallery_images} "
            "images by id, each object's mask in a colour of its own, with its box and category."
        ),
        image_models=", ".join(f"`{m}`" for m in image_models) or "(not recorded)",
        attribution=_quote(_attribution_text()),
    )
