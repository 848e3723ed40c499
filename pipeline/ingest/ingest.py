"""The ingest stage: csv → validated rows → subset → section download → one-pass extraction → `clips` manifest.

Work directory layout written here (paths in the manifest are relative to WORK):
`media/source/{clip_id}.<ext>` (downloaded section), `media/frames/{clip_id}.jpg`, `media/audio/{clip_id}.wav`,
`media/spec/{clip_id}.npy` (257-bin log spectrogram), `media/mel/{clip_id}.npy` (128-bin log-mel),
`state/ingest.jsonl` (the resume journal; shard i of n writes `state/ingest/shard-{i}-of-{n}.jsonl`, see
`journals`), `state/ingest-runs/` (what each run selected, for `--status`),
`state/ingest-governor.json` (the rate governor's shared bucket and pause) and `manifests/clips.parquet`.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections import Counter
from collections.abc import Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yt_dlp

from is4.config import BuildConfig, IngestConfig
from is4.manifests.errors import FatalError
from is4.manifests.io import write_manifest
from is4.manifests.journal import Journal
from is4.manifests.schema import CLIPS
from is4.pipeline.common.ffmpeg_tools import ffmpeg_tools_dir
from is4.pipeline.ingest.download import DownloadFailure, download_section
from is4.pipeline.ingest.errors import UNKNOWN, message_key, reason_kind
from is4.pipeline.ingest.extract import MediaError, extract_clip
from is4.pipeline.ingest.governor import STATE_FILE, GiveUp, Governor, Pause, format_duration
from is4.pipeline.ingest.journals import FINAL, finished, layout_journals, load_records, shard_journal
from is4.pipeline.ingest.progress import RunMeter
from is4.pipeline.ingest.session import Session
from is4.pipeline.ingest.status import JOURNAL, write_run_record
from is4.pipeline.ingest.subsets import read_id_list, select_rows
from is4.pipeline.ingest.vggsound_csv import CsvRow, read_vggsound_csv
from is4.pipeline.shard import Shard
from is4.pipeline.stage import ProgressFn

MEDIA_DIRS = {
    "source": "media/source",
    "frame": "media/frames",
    "audio": "media/audio",
    "spec": "media/spec",
    "mel": "media/mel",
}
log = logging.getLogger(__name__)
__all__ = ["JOURNAL", "IngestIncomplete", "IngestSummary", "ingest_stage", "merge_ingest", "run_ingest"]


class IngestIncomplete(FatalError, RuntimeError):
    """The run stopped while throttled; its remaining clips are pending and a rerun continues."""


@dataclass
class IngestSummary:
    """What one ingest run produced, and how fast (the rate figures are of this run; the manifest has none)."""

    manifest: str | None  # None while clips are pending: the manifest is written once every clip has a record
    rows: int
    selected: int
    ok: int
    failed: int
    invalid: int
    reused: int
    processed: int
    pending: int = 0
    complete: bool = True
    stopped: str | None = None  # why the run ended before its last clip
    throttled: int = 0  # throttling failures (each retried)
    pauses: int = 0
    paused_s: float = 0.0
    clips_per_hour: float = 0.0  # downloads finished per hour of this run
    cap_per_hour: float | None = None
    elapsed_s: float = 0.0
    failures_by_reason: dict[str, int] = field(default_factory=dict)
    throttled_by_kind: dict[str, int] = field(default_factory=dict)
    unknown_errors: dict[str, int] = field(default_factory=dict)  # messages no rule knows, by text

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _existing_source(workdir: Path, clip_id: str) -> Path | None:
    matches = sorted((workdir / MEDIA_DIRS["source"]).glob(f"{clip_id}.*"))
    return matches[0] if matches else None


def _known_attempts(prior: dict[str, Any] | None) -> int:
    """Attempts that fetched a section already on disk, from the record written when it was fetched."""
    if prior and (prior.get("source_path") or prior["status"] == "downloaded") and prior.get("attempts"):
        return int(prior["attempts"])
    return 1  # fetched before the attempts were journalled: at least one attempt


def _process_clip(
    row: CsvRow,
    workdir: Path,
    cfg: IngestConfig,
    extract_fp: str,
    session: Session,
    prior: dict[str, Any] | None,
    journal: Journal,
) -> tuple[dict[str, Any], bool]:
    """(the clip's journal record, whether a section was fetched for it); raises `GiveUp` when the run stops
    before its section could be fetched.

    A section that is already on disk (an earlier run was killed before the clip's record) is not fetched again,
    and its attempts come from the `downloaded` record journalled before it took its final name.
    """
    record: dict[str, Any] = {"clip_id": row.clip_id, "retryable": False, "attempts": 0}
    source = _existing_source(workdir, row.clip_id)
    fetched = source is None
    if not fetched:
        record["attempts"] = _known_attempts(prior)
    else:

        def downloaded(attempts: int) -> None:
            journal.append({"clip_id": row.clip_id, "status": "downloaded", "retryable": True, "attempts": attempts})

        try:
            source, record["attempts"] = download_section(
                row.ytid,
                row.start_sec,
                cfg.extract.clip_seconds,
                workdir / MEDIA_DIRS["source"] / row.clip_id,
                cfg.download,
                session=session,
                before_final=downloaded,
            )
        except DownloadFailure as failure:
            return record | {
                "status": "failed",
                "reason": str(failure),
                "retryable": not failure.permanent,
                "attempts": failure.attempts,
            }, True
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
        return record | {"status": "failed", "reason": exc.reason}, fetched
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
    }, fetched


def _manifest_rows(rows: list[CsvRow], selected: list[CsvRow], records: dict[str, dict]) -> pd.DataFrame:
    out = []
    for r in rows:
        if r.valid:
            continue
        out.append(
            {
                "row": r.row,
                "clip_id": None,
                "ytid": r.ytid,
                "start_sec": r.start_sec,
                "label": r.label,
                "split": r.split,
                "status": "invalid",
                "reason": r.error,
                "retryable": False,
                "attempts": 0,
            }
        )
    for r in selected:
        rec = records[r.clip_id]
        base = {
            "row": r.row,
            "clip_id": r.clip_id,
            "ytid": r.ytid,
            "start_sec": r.start_sec,
            "label": r.label,
            "split": r.split,
        }
        out.append(base | {c: rec.get(c) for c in CLIPS.column_names if c not in base})
    return pd.DataFrame(out, columns=list(CLIPS.column_names))


class _Run:
    """The moving parts of one run: governor, session, meter, and the one log line per pause or stop."""

    def __init__(self, workdir: Path, cfg: IngestConfig, total: int, done: int, progress: ProgressFn | None) -> None:
        download = cfg.download
        self.governor = Governor(workdir / STATE_FILE, download)
        self.session = Session(download, self.governor, on_pause=self.paused)
        self.meter = RunMeter(total, done, download.max_videos_per_hour)
        self.progress = progress
        self.stopped: str | None = None
        self._lock = threading.Lock()

    def say(self, line: str) -> None:
        log.warning(line)
        if self.progress:
            self.progress(self.meter.done, self.meter.total, line)

    def paused(self, pause: Pause) -> None:
        left = self.meter.total - self.meter.done
        why = " (the site's Retry-After)" if pause.retry_after is not None else ""
        self.say(f"{pause.kind}: pausing {format_duration(pause.seconds)}{why}, {left} clips left")

    def stop(self, reason: str) -> None:
        with self._lock:
            first, self.stopped = self.stopped is None, self.stopped or reason
        self.governor.stop()
        if first:
            self.say(f"stopping: {reason}; the clips left stay pending, a rerun continues")

    def finished(self, record: dict[str, Any], fetched: bool) -> None:
        self.meter.finished(record["status"], downloaded=fetched)
        if self.progress:
            self.progress(self.meter.done, self.meter.total, self.meter.line(self.session.throttled))


def _unknown_errors(records: list[dict[str, Any]], ytids: dict[str, str]) -> dict[str, int]:
    counts = Counter(
        message_key(r["reason"].split(":", 1)[1], ytids[r["clip_id"]])
        for r in records
        if r["status"] == "failed" and reason_kind(r["reason"] or "") == UNKNOWN
    )
    return dict(counts.most_common())


def _extract_fingerprint(cfg: IngestConfig) -> str:
    return hashlib.sha256(cfg.extract.model_dump_json().encode()).hexdigest()[:16]


def _select(csv_path: Path, cfg: IngestConfig, seed: int) -> tuple[list[CsvRow], list[CsvRow]]:
    """(every csv row, the selected valid rows in csv order): the same in every shard."""
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
    return rows, selected


def _download(
    workdir: Path,
    cfg: IngestConfig,
    todo: list[CsvRow],
    prior: dict[str, dict[str, Any]],
    journal: Journal,
    run: _Run,
    extract_fp: str,
) -> set[str]:
    """Fetch and extract `todo` with `cfg.download.workers` threads; returns the clips that got a record.

    Rows are fed to the pool through a bounded window (twice the workers), so memory does not grow with the csv
    and a stopped run submits nothing more.
    """
    got: set[str] = set()
    rows = iter(todo)
    window = 2 * cfg.download.workers
    inflight: dict[Future, CsvRow] = {}
    with ThreadPoolExecutor(max_workers=cfg.download.workers, thread_name_prefix="is4-ingest") as pool:

        def refill() -> None:
            while len(inflight) < window and run.stopped is None and (row := next(rows, None)) is not None:
                future = pool.submit(
                    _process_clip, row, workdir, cfg, extract_fp, run.session, prior.get(row.clip_id), journal
                )
                inflight[future] = row

        refill()
        while inflight:
            done, _ = wait(inflight, return_when=FIRST_COMPLETED)
            for future in done:
                inflight.pop(future)
                try:
                    record, fetched = future.result()
                except GiveUp as exc:  # throttled past give_up_after_s: this clip and every later one wait
                    run.stop(str(exc))
                    continue
                journal.append(record)
                got.add(record["clip_id"])
                run.finished(record, fetched)
            refill()
    return got


def _is_final(record: dict[str, Any] | None, workdir: Path, extract_fp: str) -> bool:
    """A record the manifest can show: a failure of any kind, or an ok clip whose files are all present."""
    return (
        record is not None
        and record["status"] in FINAL
        and (record["status"] == "failed" or finished(record, workdir, extract_fp))
    )


def _write_clips(
    workdir: Path,
    csv_path: Path,
    rows: list[CsvRow],
    selected: list[CsvRow],
    records: dict[str, dict[str, Any]],
    provenance: Mapping[str, Any] | None,
) -> str:
    frame = _manifest_rows(rows, selected, records)
    facts = {"yt_dlp_version": yt_dlp.version.__version__, "csv_name": csv_path.name}
    return str(write_manifest(workdir, CLIPS, frame, {**(provenance or {}), **facts}))


def _summary(
    rows: list[CsvRow], mine: list[CsvRow], records: dict[str, dict[str, Any]], *, whole: bool, **figures: Any
) -> IngestSummary:
    """Counts over the clips of `mine` (and the invalid rows, for a run over the `whole` selection)."""
    final = [records[r.clip_id] for r in mine if r.clip_id in records and records[r.clip_id]["status"] in FINAL]
    invalid = [r for r in rows if not r.valid] if whole else []
    statuses = Counter(rec["status"] for rec in final)
    failures = Counter(reason_kind(rec["reason"]) for rec in final if rec["status"] != "ok")
    failures += Counter(reason_kind(r.error or "") for r in invalid)
    return IngestSummary(
        rows=len(rows),
        selected=len(mine),
        ok=statuses.get("ok", 0),
        failed=statuses.get("failed", 0),
        invalid=len(invalid),
        failures_by_reason=dict(sorted(failures.items())),
        unknown_errors=_unknown_errors(final, {r.clip_id: r.ytid for r in mine}),
        **figures,
    )


def run_ingest(
    csv_path: str | Path,
    workdir: str | Path,
    cfg: IngestConfig,
    *,
    seed: int = 0,
    progress: ProgressFn | None = None,
    provenance: Mapping[str, Any] | None = None,
    command: str | None = None,
    shard: Shard = Shard(),
    merge: bool = True,
) -> IngestSummary:
    """Ingest the clips of a VGGSound-format csv into `workdir`; resumes from the journals of earlier runs.

    Rows that are invalid or fail are recorded with their reason; only problems with the run itself (unreadable
    csv, unwritable work dir, no ffmpeg, a bad cookies file) raise. A run that stays throttled past
    `give_up_after_s` returns with `complete=False`: its remaining clips have no record (pending), the manifest is
    not written, and a rerun (`command`, kept for `is4 ingest --status`) continues.

    With `shard=Shard(i, n)` (n > 1) only the i-th slice of the selection is ingested, into that shard's own journal,
    and no manifest is written: `merge_ingest` writes it once every shard is done. `merge=False`: no manifest either
    (the flow's merge writes it).
    """
    workdir = Path(workdir)
    csv_path = Path(csv_path)
    ffmpeg_tools_dir()  # fail now, not in a worker, when there is no ffmpeg
    rows, selected = _select(csv_path, cfg, seed)
    mine = shard.slice(selected)
    workdir.mkdir(parents=True, exist_ok=True)
    extract_fp = _extract_fingerprint(cfg)
    journal = Journal(workdir / shard_journal(shard), key_field="clip_id")
    prior = load_records(workdir, extract_fp, current=(shard_journal(shard),))
    todo = [r for r in mine if not finished(prior.get(r.clip_id), workdir, extract_fp)]
    reused = len(mine) - len(todo)
    run = _Run(workdir, cfg, len(mine), reused, progress)  # validates the cookies file before any download
    write_run_record(workdir, csv_path, [r.clip_id for r in selected], command)
    if progress:
        progress(reused, len(mine), "resumed" if reused else "start")
    prior = {r.clip_id: prior[r.clip_id] for r in todo if r.clip_id in prior}  # only what the workers look at
    got = _download(workdir, cfg, todo, prior, journal, run, extract_fp)
    del prior
    pending = sum(r.clip_id not in got for r in todo)
    records = load_records(workdir, extract_fp, current=(shard_journal(shard),))
    manifest = None
    if shard.whole and merge and not pending:
        manifest = _write_clips(workdir, csv_path, rows, selected, records, provenance)
    pauses = run.session.pauses
    return _summary(
        rows,
        mine,
        records,
        whole=shard.whole,
        manifest=manifest,
        reused=reused,
        processed=len(got),
        pending=pending,
        complete=not pending,
        stopped=run.stopped,
        throttled=run.session.throttled,
        pauses=len(pauses),
        paused_s=round(sum(p.seconds for p in pauses), 3),
        clips_per_hour=round(run.meter.overall_per_hour(), 1),
        cap_per_hour=cfg.download.max_videos_per_hour,
        elapsed_s=round(run.meter.elapsed_s, 3),
        throttled_by_kind=dict(sorted(Counter(p.kind for p in pauses).items())),
    )


def merge_ingest_records(
    csv_path: str | Path,
    workdir: str | Path,
    cfg: IngestConfig,
    *,
    seed: int = 0,
    shards: int = 1,
    provenance: Mapping[str, Any] | None = None,
    processed: int = 0,
) -> IngestSummary:
    """Write `clips.parquet` from the journals of every shard, byte-identical to a run in one process; `processed`:
    the clips this run's shards fetched (the others count as reused).

    Raises `IngestIncomplete` when a selected clip has no final record yet (a shard has not finished).
    """
    workdir = Path(workdir)
    csv_path = Path(csv_path)
    rows, selected = _select(csv_path, cfg, seed)
    extract_fp = _extract_fingerprint(cfg)
    records = load_records(workdir, extract_fp, current=layout_journals(shards))
    pending = [r.clip_id for r in selected if not _is_final(records.get(r.clip_id), workdir, extract_fp)]
    if pending:
        raise IngestIncomplete(
            f"cannot merge the ingest of {csv_path.name}: {len(pending)} of {len(selected)} "
            f"clips have no final record yet (first: {pending[0]}); run the missing shards "
            f"again (finished clips are kept)"
        )
    manifest = _write_clips(workdir, csv_path, rows, selected, records, provenance)
    reused = len(selected) - processed
    return _summary(rows, selected, records, whole=True, manifest=manifest, reused=reused, processed=processed)


def _stage_config(cfg: BuildConfig, url_template: str | None) -> IngestConfig:
    ingest = cfg.ingest
    if url_template is not None:
        ingest = ingest.model_copy(
            update={"download": ingest.download.model_copy(update={"url_template": url_template})}
        )
    return ingest


def ingest_stage(
    work: Path,
    cfg: BuildConfig,
    provenance: dict[str, Any],
    *,
    csv_path: Path,
    url_template: str | None = None,
    progress: ProgressFn | None = None,
    command: str | None = None,
    allow_incomplete: bool = False,
    shard: Shard = Shard(),
    merge: bool = True,
) -> dict[str, Any]:
    """Ingest `csv_path` (the source the flow or the CLI opened); `url_template` replaces the configured one.

    A run that stopped while throttled raises `IngestIncomplete` (the flow must not go on without the clips
    manifest) unless `allow_incomplete` (the `is4 ingest` command, which says how to continue and exits 0).
    With `shard=Shard(i, n)` (n > 1) only that shard's slice is ingested and no manifest is written (`merge_ingest`
    writes it), nor with `merge=False`.
    """
    summary = run_ingest(
        csv_path,
        work,
        _stage_config(cfg, url_template),
        seed=cfg.seed,
        progress=progress,
        provenance=provenance,
        command=command,
        shard=shard,
        merge=merge,
    )
    if not summary.complete and not allow_incomplete:
        raise IngestIncomplete(
            f"ingest stopped with {summary.pending} of {summary.selected} clips pending "
            f"({summary.stopped}); run the build again later to continue (finished clips are "
            f"kept; `is4 ingest --status --workdir {work}` shows where it stands)"
        )
    return summary.as_dict() if shard.whole else {**summary.as_dict(), "shard": str(shard)}


def merge_ingest(
    work: Path,
    cfg: BuildConfig,
    provenance: dict[str, Any],
    shards: list[dict[str, Any]],
    *,
    csv_path: str | Path,
    url_template: str | None = None,
) -> dict[str, Any]:
    """The `clips` manifest after every shard of `ingest_stage` ran (`shards`: their summaries, in order; a cache
    hit's, marked `cached`, processed nothing in this run)."""
    processed = sum(s.get("processed", 0) for s in shards if not s.get("cached"))
    return merge_ingest_records(
        csv_path, work, cfg.ingest, seed=cfg.seed, shards=len(shards), provenance=provenance, processed=processed
    ).as_dict()
