"""Export the ingested clips in the layout the public localisation code reads.

`OUT/frames/{clip_id}.jpg`, `OUT/audio/{clip_id}.wav` and `OUT/ids.csv` (`clip_id,label,split`), built from the
`clips` manifest (status ok only). Files are hard links where the file system allows (no extra disk), else copies.
The export is built beside its target and swapped in, so a reader never sees a half-made layout.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

from is4.config import BuildConfig
from is4.manifests.atomic import atomic_write_json, replace_directory
from is4.manifests.checksum import HashCache, sha256_file
from is4.manifests.io import ManifestError, read_manifest
from is4.pipeline.stage import OUTPUTS_DIR, ProgressFn, provenance_sha256

DEFAULT_EXPORT_DIR = "exports/vggsound"


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def export_training_layout(workdir: str | Path, out_dir: str | Path | None = None) -> tuple[Path, int]:
    """Write the training layout for the ok clips of `workdir`; returns (output dir, number of clips)."""
    workdir = Path(workdir)
    out = Path(out_dir) if out_dir is not None else workdir / DEFAULT_EXPORT_DIR
    clips = read_manifest(workdir, "clips")
    ok = clips[clips["status"] == "ok"].sort_values("clip_id")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        staging.chmod(out.parent.stat().st_mode & 0o777)  # mkdtemp makes it 0700
        (staging / "frames").mkdir()
        (staging / "audio").mkdir()
        for clip in ok.itertuples():
            _link_or_copy(workdir / clip.frame_path, staging / "frames" / f"{clip.clip_id}.jpg")
            _link_or_copy(workdir / clip.audio_path, staging / "audio" / f"{clip.clip_id}.wav")
        (staging / "ids.csv").write_text(_ids_csv(ok), encoding="utf-8")
        replace_directory(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out, len(ok)


def _ids_csv(ok: pd.DataFrame) -> str:
    return ok[["clip_id", "label", "split"]].to_csv(index=False, lineterminator="\n")


def export_intact(workdir: Path, _cfg: BuildConfig | None = None) -> bool:
    """True when the export lists exactly the manifest's ok clips and each file is that clip's current file (the
    same hard link, or a copy with the same content): a frame redone since the export makes it stale."""
    out = workdir / DEFAULT_EXPORT_DIR
    try:
        ok = read_manifest(workdir, "clips").query("status == 'ok'").sort_values("clip_id")
        if (out / "ids.csv").read_text(encoding="utf-8") != _ids_csv(ok):
            return False
    except (ManifestError, OSError, UnicodeDecodeError):
        return False
    cache = HashCache(workdir, "clips")
    for clip in ok.itertuples():
        for src, dst in (
            (clip.frame_path, out / "frames" / f"{clip.clip_id}.jpg"),
            (clip.audio_path, out / "audio" / f"{clip.clip_id}.wav"),
        ):
            try:
                if os.path.samefile(workdir / src, dst):
                    continue
            except OSError:
                return False
            if not dst.is_file() or cache.sha256(src) != sha256_file(dst):
                return False
    cache.save()
    return True


def export_stage(
    work: Path, cfg: BuildConfig, provenance: dict[str, Any], *, progress: ProgressFn | None = None
) -> dict[str, Any]:
    """The training layout of the ingested clips (`WORK/exports/vggsound`); it writes no manifest."""
    out, n = export_training_layout(work)
    # It writes no manifest: its record says which provenance made it (`stage.provenance_current`).
    atomic_write_json(work / OUTPUTS_DIR / "export.json", {"provenance_sha256": provenance_sha256(provenance)})
    return {"clips": n, "directory": str(out)}
