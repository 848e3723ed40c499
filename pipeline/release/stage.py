"""The release stage: build the release directory and its archive, then verify the archive."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from is4.config import BuildConfig
from is4.pipeline.release import ReleaseError, build_release, verify_release
from is4.pipeline.stage import ProgressFn


def release_stage(work: Path, cfg: BuildConfig, provenance: dict[str, Any], *,
                  progress: ProgressFn | None = None) -> dict[str, Any]:
    """Package the release (official layout, manifests, card, Croissant, checksums, archive) and verify it."""
    path = build_release(work, cfg.release, cfg.model_dump(mode="json"))
    archive = path.with_name(path.name + ".tar.gz")
    report = verify_release(archive)
    if not report.ok:
        raise ReleaseError(f"release {archive} does not verify: {report.summary()}")
    return {"release": str(path), "archive": str(archive), "verified": True}
