"""The ingest stage: csv → validated rows → subset → section download → one-pass extraction → `clips` manifest.

Work directory layout written here (paths in the manifest are relative to WORK):
`media/source/{clip_id}.<ext>` (downloaded section), `media/frames/{clip_id}.jpg`, `media/audio/{clip_id}.wav`,
`media/spec/{clip_id}.npy` (257-bin log spectrogram), `media/mel/{clip_id}.npy` (128-bin log-mel),
`state/ingest.jsonl` (the resume journal) and `manifests/clips.parquet`.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yt_dlp

from is4.config import BuildConfig, IngestConfig
from is4.manifests.io import write_manifest
from is4.manifests.journal import Journal
from is4.manifests.schema import CLIPS
from is4.pipeline.common.ffmpeg_tools import ffmpeg_tools_dir
from is4.pipeline.ingest.download import DownloadFailure, download_section
from is4.pipeline.ingest.extract import MediaError, extract_clip
from is4.pipeline.ingest.subsets import read_id_list, select_rows
from is4.pipeline.ingest.vggsound_csv import CsvRow, read_vggsound_csv
from is4.pipeline.stage import ProgressFn

JOURNAL = "state/ingest.jsonl"
MEDIA_DIRS = {"source": "media/source", "frame": "media/frames", "audio": "media/audio", "spec": "media/spec",
              "mel": "media/mel"}


@dataclass
class IngestSummary:
    """What one ingest run produced."""

    manifest: str
    rows: int
    selected: int
    ok: int
    failed: int
    invalid: int
    reused: int
    processed: int
    failures_by_reason: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def reason_kind(reason: str) -> str:
    """The class of a failure reason (`timeout: …` → `timeout`), for counting failures by reason."""
    return re.split(r"[:(]", reason, maxsplit=1)[0].strip()


def _finished(record: dict[str, Any] | None, workdir: Path, extract_fp: str) -> bool:
    """A journal record that a rerun can keep: a permanent failure, or an ok clip whose files are all present."""
    if record is None:
        return False
    if record["status"] == "failed":
        return not record["retryable"]
    return record.get("extract_fingerprint") == extract_fp and all(
        (workdir / record[k]).is_file() for k in ("frame_path", "audio_path", "spec_path", "mel_path")
    )


def _existing_source(workdir: Path, clip_id: str) -> Path | None:
    matches = sorted((workdir / MEDIA_DIRS["source"]).glob(f"{clip_id}.*"))
    return matches[0] if matches else None


def _process_clip(row: CsvRow, workdir: Path, cfg: IngestConfig, extract_fp: str) -> dict[str, Any]:
    record: dict[str, Any] = {"clip_id": row.clip_id, "retryable": False, "attempts": 0}
    source = _existing_source(workdir, row.clip_id)
    if source is None:
        try:
            source, record["attempts"] = download_section(
                row.ytid, row.start_sec, cfg.extract.clip_seconds,
                workdir / MEDIA_DIRS["source"] / row.clip_id, cfg.download,
            )
        except DownloadFailure as failure:
            return record | {"status": "failed", "reason": str(failure), "retryable": not failure.permanent,
                             "attempts": failure.attempts}
    paths = {
        "frame_path": f"{MEDIA_DIRS['frame']}/{row.clip_id}.jpg",
        "audio_path": f"{MEDIA_DIRS['audio']}/{row.clip_id}.wav",
        "spec_path": f"{MEDIA_DIRS['spec']}/{row.clip_id}.npy",
        "mel_path": f"{MEDIA_DIRS['mel']}/{row.clip_id}.npy",
    }
    record |= {"source_path": source.relative_to(workdir).as_posix(), "source_bytes": source.stat().st_size}
    try:
        clip = extract_clip(
            source,
            **{k: workdir / v for k, v in paths.items()},
            clip_seconds=cfg.extract.clip_seconds,
            frame_size=cfg.extract.frame_size,
            jpeg_quality=cfg.extract.jpeg_quality,
            sample_rate=cfg.extract.sample_rate,
            silence_dbfs=cfg.extract.silence_dbfs,
        )
    except MediaError as exc:
        return record | {"status": "failed", "reason": exc.reason}
    return record | paths | {
        "status": "ok",
        "reason": None,
        "extract_fingerprint": extract_fp,
        "frame_width": clip.frame_width,
        "frame_height": clip.frame_height,
        "source_audio_sec": round(clip.source_audio_sec, 6),
        "padded_sec": round(clip.padded_sec, 6),
        "trimmed_sec": round(clip.trimmed_sec, 6),
        "peak_dbfs": round(clip.peak_dbfs, 4),
    }


def _manifest_rows(rows: list[CsvRow], selected: list[CsvRow], records: dict[str, dict]) -> pd.DataFrame:
    out = []
    for r in rows:
        if r.valid:
            continue
        out.append({"row": r.row, "clip_id": None, "ytid": r.ytid, "start_sec": r.start_sec, "label": r.label,
                    "split": r.split, "status": "invalid", "reason": r.error, "retryable": False, "attempts": 0})
    for r in selected:
        rec = records[r.clip_id]
        base = {"row": r.row, "clip_id": r.clip_id, "ytid": r.ytid, "start_sec": r.start_sec, "label": r.label,
                "split": r.split}
        out.append(base | {c: rec.get(c) for c in CLIPS.column_names if c not in base})
    return pd.DataFrame(out, columns=list(CLIPS.column_names))


def run_ingest(
    csv_path: str | Path,
    workdir: str | Path,
    cfg: IngestConfig,
    *,
    seed: int = 0,
    progress: ProgressFn | None = None,
    provenance: Mapping[str, Any] | None = None,
) -> IngestSummary:
    """Ingest the clips of a VGGSound-format csv into `workdir`; resumes from the journal of earlier runs.

    Rows that are invalid or fail are recorded with their reason; only problems with the run itself (unreadable
    csv, unwritable work dir, no ffmpeg) raise.
    """
    workdir = Path(workdir)
    csv_path = Path(csv_path)
    ffmpeg_tools_dir()  # fail now, not in a worker, when there is no ffmpeg
    rows = read_vggsound_csv(csv_path)
    subset = cfg.subset
    selected = select_rows(
        rows,
        seed=seed,
        splits=subset.splits,
        labels=subset.label_set(),
        per_class_cap=subset.per_class_cap,
        id_list=read_id_list(subset.id_list) if subset.id_list else None,
    )
    workdir.mkdir(parents=True, exist_ok=True)
    journal = Journal(workdir / JOURNAL, key_field="clip_id")
    records = journal.load()
    extract_fp = hashlib.sha256(cfg.extract.model_dump_json().encode()).hexdigest()[:16]
    todo = [r for r in selected if not _finished(records.get(r.clip_id), workdir, extract_fp)]
    reused = len(selected) - len(todo)
    done = reused
    if progress:
        progress(done, len(selected), "resumed" if reused else "start")
    with ThreadPoolExecutor(max_workers=cfg.download.workers, thread_name_prefix="is4-ingest") as pool:
        futures = {pool.submit(_process_clip, r, workdir, cfg, extract_fp): r for r in todo}
        for future in as_completed(futures):
            record = future.result()
            journal.append(record)
            records[record["clip_id"]] = record
            done += 1
            if progress:
                progress(done, len(selected), f"{record['clip_id']}: {record['status']}")
    frame = _manifest_rows(rows, selected, records)
    facts = {"yt_dlp_version": yt_dlp.version.__version__, "csv_name": csv_path.name}
    manifest = write_manifest(workdir, CLIPS, frame, {**(provenance or {}), **facts})
    statuses = Counter(frame["status"])
    failures = Counter(reason_kind(r) for r in frame.loc[frame["status"] != "ok", "reason"])
    return IngestSummary(
        manifest=str(manifest),
        rows=len(rows),
        selected=len(selected),
        ok=statuses.get("ok", 0),
        failed=statuses.get("failed", 0),
        invalid=statuses.get("invalid", 0),
        reused=reused,
        processed=len(todo),
        failures_by_reason=dict(sorted(failures.items())),
    )


def ingest_stage(work: Path, cfg: BuildConfig, provenance: dict[str, Any], *, csv_path: Path,
                 url_template: str | None = None, progress: ProgressFn | None = None) -> dict[str, Any]:
    """Ingest `csv_path` (the source the flow or the CLI opened); `url_template` replaces the configured one."""
    ingest = cfg.ingest
    if url_template is not None:
        ingest = ingest.model_copy(update={"download": ingest.download.model_copy(update={"url_template": url_template})})
    return run_ingest(csv_path, work, ingest, seed=cfg.seed, progress=progress, provenance=provenance).as_dict()
