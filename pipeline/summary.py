"""The end of a build in a few lines: what it made, where, and what it dropped and why, read from the manifests
(so a rerun whose stages were all cached reports the work directory's state, not "nothing happened")."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from is4.config import BuildConfig
from is4.manifests.io import manifest_path, read_manifest
from is4.pipeline.match import REPORT_PATH as MATCH_REPORT
from is4.pipeline.release.layout import release_paths


def _counts(counter: Counter[str]) -> str:
    return ", ".join(f"{name}: {n}" for name, n in sorted(counter.items(), key=lambda kv: (-kv[1], kv[0])))


def build_summary(work: str | Path, cfg: BuildConfig) -> list[str]:
    """One line per product of the build that exists in `work` (clips, images, verification, release)."""
    work = Path(work)
    lines = []
    if manifest_path(work, "clips").is_file():
        clips = read_manifest(work, "clips")
        status = Counter(str(s) for s in clips["status"])
        lines.append(f"clips: {_counts(status)} (reasons in {manifest_path(work, 'clips')})")
    if manifest_path(work, "images").is_file():
        lines.append(f"images: {len(read_manifest(work, 'images'))} generated")
    if manifest_path(work, "verification").is_file():
        verification = read_manifest(work, "verification")
        accepted = int((verification["decision"] == "accept").sum())
        rejects = verification[verification["decision"] == "reject"]
        # The reason's first word names the check (the rest may carry its scores).
        why = Counter(
            str(r).split()[0] if isinstance(r, str) and r.strip() else "(no reason)" for r in rejects["reason"]
        )
        lines.append(f"verified: {accepted} accepted, {len(rejects)} rejected" + (f" ({_counts(why)})" if why else ""))
    target, archive = release_paths(work, cfg.release.version)
    if target.is_dir() and manifest_path(work, "instances").is_file():
        instances = read_manifest(work, "instances")
        line = f"release: {instances['image_id'].nunique()} images, {len(instances)} instances in {target}"
        lines.append(line + (f" (+ {archive.name})" if archive.is_file() else ""))
        try:
            left_out = json.loads((work / MATCH_REPORT).read_text(encoding="utf-8")).get("images_excluded_by_reason")
        except (OSError, ValueError):
            left_out = None
        if left_out:
            lines.append(f"left out of the release (accepted images): {_counts(Counter(left_out))}")
    return lines
