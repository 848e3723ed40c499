"""The release stage: build the release directory and its archive, verify the archive, and record both.

`release_intact` is the stage's outputs check: the directory and the archive are there with the content this stage
recorded when it built them (every file of the directory as its `SHA256SUMS` lists it, no file more or less, and
the archive's sha256), so a deleted folder, an edited file or a replaced archive makes the release build again.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from is4.config import BuildConfig
from is4.manifests.atomic import atomic_write_json
from is4.manifests.checksum import HashCache
from is4.pipeline.release import ReleaseError, build_release, verify_release
from is4.pipeline.release.archive import SUMS_NAME, release_files
from is4.pipeline.release.layout import release_paths
from is4.pipeline.stage import OUTPUTS_DIR, ProgressFn, provenance_sha256

RECORD = f"{OUTPUTS_DIR}/release.json"


def _rel(work: Path, path: Path) -> str:
    return path.relative_to(work).as_posix()


def _sums(target: Path) -> dict[str, str]:
    """The `SHA256SUMS` of a release directory we built: relative path → sha256."""
    lines = (target / SUMS_NAME).read_text(encoding="utf-8").splitlines()
    return {rel: digest for digest, _, rel in (line.partition("  ") for line in lines if line)}


def release_stage(
    work: Path, cfg: BuildConfig, provenance: dict[str, Any], *, progress: ProgressFn | None = None
) -> dict[str, Any]:
    """Package the release (official layout, manifests, card, Croissant, checksums, archive) and verify it.

    First every file it would ship is hashed from its bytes and compared with the checksum recorded when it was
    made: a damaged one is removed (the next build makes it again) and the release refuses to ship."""
    from is4.pipeline.integrity import deep_check
    from is4.pipeline.registry import stage

    damaged = deep_check(work, stage("release").reads)
    if damaged:
        files = [rel for rels in damaged.values() for rel in rels]
        raise ReleaseError(
            f"{len(files)} file(s) the release would ship are missing or not what their stage made "
            f"({', '.join(files[:3])}{', …' if len(files) > 3 else ''}): damaged ones removed; run `is4 build` "
            "again to make them anew"
        )
    path = build_release(work, cfg.release, cfg.model_dump(mode="json"))
    _, archive = release_paths(work, cfg.release.version)
    report = verify_release(archive)
    if not report.ok:
        raise ReleaseError(f"release {archive} does not verify: {report.summary()}")
    cache = HashCache(work, "release")
    files = _sums(path)
    for rel, digest in files.items():
        cache.remember(_rel(work, path / rel), digest)
    files[SUMS_NAME] = cache.sha256(_rel(work, path / SUMS_NAME))
    record = {
        "archive_sha256": cache.sha256(_rel(work, archive)),
        "files": files,
        "provenance_sha256": provenance_sha256(provenance),  # what `provenance_current` compares before a cache hit
    }
    atomic_write_json(work / RECORD, record)
    cache.save()
    return {"release": str(path), "archive": str(archive), "verified": True}


def release_intact(work: Path, cfg: BuildConfig) -> bool:
    """True when the release directory and archive are what this stage built and recorded (sizes and mtimes first,
    a file is hashed only when its stat changed)."""
    target, archive = release_paths(work, cfg.release.version)
    try:
        record = json.loads((work / RECORD).read_text(encoding="utf-8"))
        files, archive_sha = dict(record["files"]), record["archive_sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    if not target.is_dir() or not archive.is_file() or sorted(files) != release_files(target):
        return False
    cache = HashCache(work, "release")
    try:
        return cache.sha256(_rel(work, archive)) == archive_sha and all(
            cache.sha256(_rel(work, target / rel)) == digest for rel, digest in files.items()
        )
    finally:
        cache.save()
