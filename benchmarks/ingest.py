"""Ingest benchmarks, measured side by side in one run on synthetic media (no network needed).

1. Extraction throughput: the one-pass design (`extract_clip`: one ffmpeg process per clip) against a baseline
   that runs one ffmpeg per artifact (centre frame, 16 kHz wav, and one audio decode each for the spectrogram and
   the log-mel), writing the same four files from the same 10-s section files.
2. Whole ingest (section download from a loopback `MediaServer` + extraction, via `run_ingest`) with
   `workers=1` against `workers=2`.
3. Bytes fetched for one 10-s section from the middle of one long source, against the source's size.
4. With `--throttle` (instead of 1-3): ingest from a server that throttles like YouTube (more than `limit` watch
   pages in a window and it answers 429 for a cool-down), with the governor's cap just under what the server
   allows, against the same ingest with no cap, side by side: clips/hour achieved against the cap, throttling
   episodes, knocks per throttled window (watch pages the server refused, the one that started the cool-down
   included, per cool-down: goal <= 2 with 4 workers), and failures (permanent ones caused by throttling should be
   0: the server has no bad video). A third run has no cap and a server that sends `Retry-After`.

Run by hand:  python benchmarks/ingest.py [--clips N] [--long-seconds S] [--repeats R]
              python benchmarks/ingest.py --throttle [--throttle-clips N] [--cap-per-hour C]
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from is4.config import DownloadConfig, ExtractConfig, IngestConfig
from is4.manifests.journal import Journal
from is4.pipeline.common.ffmpeg_tools import ffmpeg_exe
from is4.pipeline.demo.media_server import MediaServer, RangeRequestHandler, Throttle
from is4.pipeline.demo.synthetic_media import Segment, make_video
from is4.pipeline.ingest.audio_features import log_mel, log_spectrogram
from is4.pipeline.ingest.download import download_section
from is4.pipeline.ingest.extract import FRAME_TIME_TOLERANCE_S, INT16_FULL_SCALE, extract_clip
from is4.pipeline.ingest.ingest import JOURNAL, IngestSummary, run_ingest

SIZE = (640, 360)  # a typical 360p source
LABELS = ("dog barking", "playing cello", "cat meowing", "playing acoustic guitar")
COLOURS = ("#d62728", "#2ca02c", "#1f77b4", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")
INGEST_SOURCE_S = 30.0  # each ingest source; its 10-s clip starts at a different whole second per clip
ARTIFACTS = ("frame", "audio", "spec", "mel")
SUFFIXES = {"frame": ".jpg", "audio": ".wav", "spec": ".npy", "mel": ".npy"}


def log(message: str) -> None:
    """Progress on stderr, so stdout holds only the report."""
    print(f"  .. {message}", file=sys.stderr, flush=True)


def timed(fn: Callable[[], object]) -> float:
    """Wall time of one call of `fn`, in seconds."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def ytid_for(i: int) -> str:
    """A valid 11-character YouTube-style id, distinct per clip."""
    return f"bench{i:06d}"


def machine_facts() -> list[str]:
    version = subprocess.run([ffmpeg_exe(), "-version"], capture_output=True, text=True, check=True).stdout
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return [
        f"cpu count      : {os.cpu_count()} (usable by this process: {affinity})",
        f"ffmpeg         : {version.splitlines()[0]}",
        f"ffmpeg binary  : {ffmpeg_exe()}",
        f"python         : {platform.python_version()} on {platform.platform()}",
    ]


# --------------------------------------------------------------------------------------------------------------
# 1. Extraction: one pass vs one ffmpeg per artifact
# --------------------------------------------------------------------------------------------------------------


def make_sections(out_dir: Path, n: int) -> list[Path]:
    """`n` synthetic 10-s section files (two 5-s colour/tone segments each), as a download would leave them."""
    out_dir.mkdir(parents=True)
    paths = []
    for i in range(n):
        segments = [
            Segment(5.0, COLOURS[i % len(COLOURS)], 300.0 + 50 * i),
            Segment(5.0, COLOURS[(i + 3) % len(COLOURS)], 900.0 + 50 * i),
        ]
        paths.append(make_video(out_dir / f"section{i:02d}.mp4", segments, size=SIZE))
    return paths


def output_paths(out_dir: Path, i: int) -> dict[str, Path]:
    return {name: out_dir / f"{i:02d}_{name}{SUFFIXES[name]}" for name in ARTIFACTS}


def one_pass(source: Path, out: dict[str, Path], cfg: ExtractConfig) -> None:
    extract_clip(
        source,
        frame_path=out["frame"],
        audio_path=out["audio"],
        spec_path=out["spec"],
        mel_path=out["mel"],
        clip_seconds=cfg.clip_seconds,
        frame_size=cfg.frame_size,
        jpeg_quality=cfg.jpeg_quality,
        sample_rate=cfg.sample_rate,
        silence_dbfs=cfg.silence_dbfs,
    )


def _ffmpeg(args: list[str]) -> bytes:
    """Run ffmpeg quietly with `args`; returns its stdout."""
    cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y", *args]
    return subprocess.run(cmd, capture_output=True, check=True).stdout


def _decode_pcm(source: Path, cfg: ExtractConfig) -> np.ndarray:
    """One ffmpeg decode of the first clip_seconds of audio to 16-bit mono PCM on a pipe, padded/trimmed to length."""
    raw = _ffmpeg(
        [
            "-t",
            str(cfg.clip_seconds),
            "-i",
            str(source.absolute()),
            "-map",
            "0:a:0",
            "-ac",
            "1",
            "-ar",
            str(cfg.sample_rate),
            "-c:a",
            "pcm_s16le",
            "-f",
            "s16le",
            "pipe:1",
        ]
    )
    samples = np.frombuffer(raw, dtype=np.int16)
    n = round(cfg.clip_seconds * cfg.sample_rate)
    return samples[:n] if samples.size >= n else np.pad(samples, (0, n - samples.size))


def per_artifact(source: Path, out: dict[str, Path], cfg: ExtractConfig) -> None:
    """The baseline: four ffmpeg runs, one per output file, with the settings `extract_clip` uses."""
    src = str(source.absolute())
    n = round(cfg.clip_seconds * cfg.sample_rate)
    landscape = "lt(ih,iw)"
    scale = f",scale=w='if({landscape},-2,{cfg.frame_size})':h='if({landscape},{cfg.frame_size},-2)'"
    select = f"select='lte(t,{cfg.clip_seconds / 2 + FRAME_TIME_TOLERANCE_S!r})'"
    # 1) centre frame: the last frame stamped at or before the midpoint, overwritten in place by `-update 1`.
    _ffmpeg(
        [
            "-t",
            str(cfg.clip_seconds),
            "-i",
            src,
            "-map",
            "0:v:0",
            "-vf",
            select + (scale if cfg.frame_size else ""),
            "-f",
            "image2",
            "-update",
            "1",
            "-q:v",
            str(cfg.jpeg_quality),
            "-fflags",
            "+bitexact",
            "-flags:v",
            "+bitexact",
            str(out["frame"]),
        ]
    )
    # 2) the wav, padded/trimmed to exactly clip_seconds inside ffmpeg.
    _ffmpeg(
        [
            "-t",
            str(cfg.clip_seconds),
            "-i",
            src,
            "-map",
            "0:a:0",
            "-ac",
            "1",
            "-ar",
            str(cfg.sample_rate),
            # Convert first, so that the sample counts of apad/atrim are 16 kHz mono samples.
            "-af",
            f"aformat=channel_layouts=mono:sample_rates={cfg.sample_rate},apad=whole_len={n},atrim=end_sample={n}",
            "-c:a",
            "pcm_s16le",
            "-fflags",
            "+bitexact",
            "-flags:a",
            "+bitexact",
            "-f",
            "wav",
            str(out["audio"]),
        ]
    )
    # 3) and 4) one audio decode each for the two feature files.
    for name, feature in (("spec", log_spectrogram), ("mel", log_mel)):
        audio = _decode_pcm(source, cfg).astype(np.float32) / INT16_FULL_SCALE
        np.save(out[name], feature(audio, cfg.sample_rate))


def compare_outputs(dir_a: Path, dir_b: Path, n_clips: int) -> str:
    """Whether the two designs wrote byte-identical files (i.e. the baseline really does the same work)."""
    differing = [
        f"clip {i} {name}"
        for i in range(n_clips)
        for name, (a, b) in {k: (output_paths(dir_a, i)[k], output_paths(dir_b, i)[k]) for k in ARTIFACTS}.items()
        if a.read_bytes() != b.read_bytes()
    ]
    if differing:
        return "DIFFERENT: " + ", ".join(differing)
    return f"all {n_clips * len(ARTIFACTS)} files byte-identical ({', '.join(ARTIFACTS)} x {n_clips} clips)"


@dataclass
class ExtractionResult:
    clips: int
    one_pass_s: float
    per_artifact_s: float
    outputs: str

    @property
    def speedup(self) -> float:
        return self.per_artifact_s / self.one_pass_s


def bench_extraction(root: Path, n_clips: int, repeats: int) -> ExtractionResult:
    cfg = ExtractConfig()
    log(f"making {n_clips} synthetic 10-s sections at {SIZE[0]}x{SIZE[1]}")
    sources = make_sections(root / "sections", n_clips)
    dirs = {"one": root / "out_one_pass", "per": root / "out_per_artifact"}
    for d in dirs.values():
        d.mkdir()

    def run_all(design: Callable[[Path, dict[str, Path], ExtractConfig], None], out_dir: Path) -> None:
        for i, src in enumerate(sources):
            design(src, output_paths(out_dir, i), cfg)

    log("extraction warm-up")
    one_pass(sources[0], output_paths(dirs["one"], 0), cfg)
    per_artifact(sources[0], output_paths(dirs["per"], 0), cfg)
    one_times, per_times = [], []
    for r in range(repeats):  # interleaved, so drift in machine load hits both designs alike
        log(f"extraction repeat {r + 1}/{repeats}")
        one_times.append(timed(lambda: run_all(one_pass, dirs["one"])))
        per_times.append(timed(lambda: run_all(per_artifact, dirs["per"])))
    outputs = compare_outputs(dirs["one"], dirs["per"], n_clips)
    return ExtractionResult(n_clips, statistics.median(one_times), statistics.median(per_times), outputs)


# --------------------------------------------------------------------------------------------------------------
# 2. Whole ingest: workers=1 vs workers=2
# --------------------------------------------------------------------------------------------------------------


def make_ingest_sources(video_dir: Path, n: int) -> list[tuple[str, int, str, str]]:
    """One 30-s source per clip, served as `{ytid}.mp4`; returns the vggsound csv rows (ytid, start, label, split)."""
    video_dir.mkdir(parents=True)
    rows = []
    n_segments = int(INGEST_SOURCE_S // 5)
    for i in range(n):
        segments = [Segment(5.0, COLOURS[(i + s) % len(COLOURS)], 300.0 + 100 * s) for s in range(n_segments)]
        make_video(video_dir / f"{ytid_for(i)}.mp4", segments, size=SIZE)
        start = i % int(INGEST_SOURCE_S - 10 + 1)
        rows.append((ytid_for(i), start, LABELS[i % len(LABELS)], "test" if i % 4 == 3 else "train"))
    return rows


def write_csv(path: Path, rows: list[tuple[str, int, str, str]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        csv.writer(fh, lineterminator="\n").writerows(rows)
    return path


def timed_ingest(csv_path: Path, workdir: Path, url_template: str, workers: int, expected: int) -> float:
    """Seconds for one `run_ingest` into a fresh `workdir`; raises unless every clip came out ok."""
    cfg = IngestConfig(csv=csv_path, download=DownloadConfig(url_template=url_template, workers=workers, retries=0))
    start = time.perf_counter()
    summary = run_ingest(csv_path, workdir, cfg, seed=0)
    elapsed = time.perf_counter() - start
    if summary.ok != expected or summary.processed != expected:
        raise RuntimeError(f"ingest in {workdir} did not process every clip: {summary.as_dict()}")
    return elapsed


@dataclass
class IngestResult:
    clips: int
    seconds: dict[int, float]  # workers -> median seconds


def bench_ingest(root: Path, n_clips: int, repeats: int) -> IngestResult:
    log(f"making {n_clips} synthetic {INGEST_SOURCE_S:g}-s sources at {SIZE[0]}x{SIZE[1]}")
    rows = make_ingest_sources(root / "videos", n_clips)
    csv_path = write_csv(root / "vggsound_bench.csv", rows)
    warm_csv = write_csv(root / "vggsound_warmup.csv", rows[:1])
    times: dict[int, list[float]] = {1: [], 2: []}
    with MediaServer(root / "videos") as server:
        log("ingest warm-up (1 clip)")
        timed_ingest(warm_csv, root / "work_warmup", server.url_template(), 1, 1)
        for r in range(repeats):
            for workers in times:
                log(f"ingest repeat {r + 1}/{repeats}, workers={workers}")
                workdir = root / f"work_w{workers}_r{r}"
                times[workers].append(timed_ingest(csv_path, workdir, server.url_template(), workers, n_clips))
    return IngestResult(n_clips, {w: statistics.median(t) for w, t in times.items()})


# --------------------------------------------------------------------------------------------------------------
# 3. Bytes fetched for one section of a long source
# --------------------------------------------------------------------------------------------------------------


def make_textured_source(path: Path, seconds: float) -> Path:
    """A long 640x360 H.264/AAC faststart mp4 at a realistic bitrate (~0.8 Mb/s video, 128 kb/s audio).

    `make_video`'s solid colours compress to almost nothing (a 300-s file is ~4 MB, mostly audio), which would make
    any fixed overhead look large; moving, noisy test patterns give a YouTube-like 360p file size instead.
    Keyframes every second, as in `make_video`.
    """
    w, h = SIZE
    _ffmpeg(
        [
            "-f",
            "lavfi",
            "-i",
            f"testsrc2=s={w}x{h}:r=25:d={seconds},noise=alls=12:allf=t",
            "-f",
            "lavfi",
            "-i",
            f"sine=frequency=440:sample_rate=44100:d={seconds}",
            "-map",
            "0:v",
            "-map",
            "1:a",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-pix_fmt",
            "yuv420p",
            "-b:v",
            "800k",
            "-maxrate",
            "800k",
            "-bufsize",
            "1600k",
            "-g",
            "25",
            "-keyint_min",
            "25",
            "-sc_threshold",
            "0",
            "-c:a",
            "aac",
            "-b:a",
            "128k",
            "-movflags",
            "+faststart",
            "-f",
            "mp4",
            str(path),
        ]
    )
    return path


def top_level_boxes(path: Path) -> dict[str, int]:
    """Sizes of the top-level mp4 boxes (ftyp, moov, mdat, ...)."""
    sizes: dict[str, int] = {}
    file_size, offset = path.stat().st_size, 0
    with open(path, "rb") as fh:
        while offset + 8 <= file_size:
            fh.seek(offset)
            header = fh.read(16)
            size, kind = int.from_bytes(header[:4], "big"), header[4:8].decode("latin-1")
            if size == 1:  # 64-bit size follows the type
                size = int.from_bytes(header[8:16], "big")
            elif size == 0:  # box runs to the end of the file
                size = file_size - offset
            sizes[kind] = sizes.get(kind, 0) + size
            offset += size
    return sizes


def recording_handler(transfers: list[list], send_buffer: int | None) -> type[RangeRequestHandler]:
    """The stock range handler, recording (Range header, body bytes counted) per request and optionally capping
    the server socket's send buffer (which bounds how far the server can run ahead of the client)."""

    class _CountingWriter:
        def __init__(self, inner) -> None:
            self.inner, self.count = inner, 0

        def write(self, data: bytes) -> int:
            written = self.inner.write(data)
            self.count += len(data)
            return written

    class Handler(RangeRequestHandler):
        def setup(self) -> None:
            if send_buffer:
                self.request.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, send_buffer)
            super().setup()

        def _send_bytes(self, path: Path, offset: int, length: int) -> None:
            record = [self.headers.get("Range") or "(no Range: whole file)", 0]
            transfers.append(record)  # in the order the requests arrived
            original = self.wfile
            self.wfile = counting = _CountingWriter(original)
            try:
                super()._send_bytes(path, offset, length)
            finally:
                self.wfile = original
                record[1] = counting.count

    return Handler


@dataclass
class SectionFetch:
    label: str
    bytes_served: int
    requests: int
    transfers: list[list]
    section_bytes: int


@dataclass
class BytesResult:
    long_seconds: float
    source_bytes: int
    moov_bytes: int
    mdat_bytes: int
    start_sec: int
    fetches: dict[str, list[SectionFetch]]  # server variant -> one fetch per repeat, sorted by bytes served


def fetch_section(
    video_dir: Path, ytid: str, start: int, dest: Path, send_buffer: int | None, label: str
) -> SectionFetch:
    """Download the 10-s section at `start` with `download_section` from a fresh server; what it served."""
    transfers: list[list] = []
    with MediaServer(video_dir, handler=recording_handler(transfers, send_buffer)) as server:
        cfg = DownloadConfig(url_template=server.url_template(), retries=0)
        server.reset_counters()
        path, _ = download_section(ytid, start, 10.0, dest, cfg)
        time.sleep(0.2)  # let handler threads notice the closed connections before reading the counters
        served, requests = server.bytes_served, server.requests
    return SectionFetch(label, served, requests, transfers, path.stat().st_size)


def bench_bytes(root: Path, long_seconds: float, repeats: int) -> BytesResult:
    video_dir = root / "long"
    video_dir.mkdir()
    ytid = "longSource1"
    log(f"making one {long_seconds:g}-s {SIZE[0]}x{SIZE[1]} source (textured, ~0.9 Mb/s)")
    source = make_textured_source(video_dir / f"{ytid}.mp4", long_seconds)
    boxes = top_level_boxes(source)
    start = max(0, int(long_seconds / 2) - 5)
    fetches: dict[str, list[SectionFetch]] = {}
    for send_buffer, label in ((None, "stock MediaServer"), (32 * 1024, "send buffer capped at 32 KiB")):
        runs = []
        for r in range(repeats):
            log(f"downloading the 10-s section at {start} s ({label}), repeat {r + 1}/{repeats}")
            runs.append(fetch_section(video_dir, ytid, start, root / f"section_{len(fetches)}_{r}", send_buffer, label))
        fetches[label] = sorted(runs, key=lambda f: f.bytes_served)
    return BytesResult(long_seconds, source.stat().st_size, boxes.get("moov", 0), boxes.get("mdat", 0), start, fetches)


# --------------------------------------------------------------------------------------------------------------
# 4. Throttling: the governor's cap against no cap, on a server that throttles like YouTube
# --------------------------------------------------------------------------------------------------------------

# YouTube: about 300 videos an hour, then "rate-limited for up to an hour"; scaled down, an hour is 10 s here.
THROTTLE_WINDOW_S = 10.0  # the server's window
THROTTLE_COOLDOWN_S = 10.0  # how long it refuses once over its limit


@dataclass
class ThrottleRun:
    label: str
    cap_per_hour: float | None
    summary: IngestSummary
    seconds: float
    episodes: int  # cool-downs the server started
    refused: int  # watch pages the server refused (429), the ones that started a cool-down included
    max_pages_in_window: int
    permanent_failures: int  # failed clips recorded as never to be retried

    @property
    def clips_per_hour(self) -> float:
        return self.summary.ok * 3600.0 / self.seconds

    @property
    def knocks_per_window(self) -> float | None:
        return self.refused / self.episodes if self.episodes else None


@dataclass
class ThrottleResult:
    clips: int
    limit: int  # watch pages the server allows per window
    runs: list[ThrottleRun]


def _max_in_window(times: list[float], window: float) -> int:
    ordered = sorted(times)
    return max((sum(1 for u in ordered if t <= u < t + window) for t in ordered), default=0)


def bench_throttle(root: Path, n_clips: int, cap_per_hour: float) -> ThrottleResult:
    """One ingest with the cap, one without, each from a fresh throttling server; the server allows the cap + 1."""
    log(f"making {n_clips} synthetic {INGEST_SOURCE_S:g}-s sources at 160x120")
    video_dir = root / "videos"
    video_dir.mkdir(parents=True)
    rows = []
    for i in range(n_clips):
        segments = [Segment(5.0, COLOURS[(i + s) % len(COLOURS)], 300.0 + 100 * s) for s in range(6)]
        make_video(video_dir / f"{ytid_for(i)}.mp4", segments, size=(160, 120))
        rows.append((ytid_for(i), i % 21, LABELS[i % len(LABELS)], "train"))
    csv_path = write_csv(root / "throttle.csv", rows)
    # A bucket of one token starts at most W * cap / 3600 + 1 videos in any window of W seconds: allow one more.
    limit = int(THROTTLE_WINDOW_S * cap_per_hour / 3600) + 2
    runs = []
    variants = (
        ("governor cap", cap_per_hour, False),
        ("no cap (today's default)", None, False),
        ("no cap, site sends Retry-After", None, True),
    )
    for label, cap, retry_after in variants:
        throttle = Throttle(limit, THROTTLE_WINDOW_S, THROTTLE_COOLDOWN_S, retry_after=retry_after)
        with MediaServer(video_dir, throttle=throttle) as server:
            cfg = IngestConfig(
                download=DownloadConfig(
                    url_template=server.page_template("throttled"),
                    workers=4,
                    retries=0,
                    max_videos_per_hour=cap,
                    # the defaults' proportions (15 min, at most an hour, of YouTube's hour)
                    cooldown_s=THROTTLE_COOLDOWN_S / 4,
                    cooldown_max_s=THROTTLE_COOLDOWN_S,
                    give_up_after_s=600.0,
                )
            )
            log(f"throttle: {label}, {n_clips} clips, server allows {limit} pages per {THROTTLE_WINDOW_S:g} s")
            start = time.perf_counter()
            work = root / f"work_{len(runs)}"
            summary = run_ingest(csv_path, work, cfg, seed=0)
            seconds = time.perf_counter() - start
            pages = [e for e in server.log if e.path.startswith("/throttled/")]
            records = Journal(work / JOURNAL, key_field="clip_id").load().values()
            permanent = sum(r["status"] == "failed" and not r["retryable"] for r in records)
            runs.append(
                ThrottleRun(
                    label,
                    cap,
                    summary,
                    seconds,
                    server.throttle_episodes,
                    sum(e.status == 429 for e in pages),
                    _max_in_window([e.t for e in pages], THROTTLE_WINDOW_S),
                    permanent,
                )
            )
    return ThrottleResult(n_clips, limit, runs)


def report_throttle(res: ThrottleResult) -> None:
    print(
        f"\n== 4. Ingest from a throttling server: {res.clips} clips; the server allows {res.limit} watch pages per "
        f"{THROTTLE_WINDOW_S:g} s, then answers 429 for {THROTTLE_COOLDOWN_S:g} s =="
    )
    rows = []
    for run in res.runs:
        s = run.summary
        cap = f"{run.cap_per_hour:g}" if run.cap_per_hour else "-"
        ratio = f"{run.clips_per_hour / run.cap_per_hour:.2f}x" if run.cap_per_hour else "-"
        rows.append(
            [
                run.label,
                cap,
                f"{run.clips_per_hour:.0f}",
                ratio,
                f"{s.ok}/{s.selected}",
                str(run.episodes),
                f"{run.knocks_per_window:.1f}" if run.knocks_per_window is not None else "-",
                str(s.pauses),
                f"{s.paused_s:.1f} s",
                str(s.failed),
                str(run.permanent_failures),
                f"{run.max_pages_in_window}/{res.limit}",
            ]
        )
    print_table(
        [
            "run",
            "cap/h",
            "clips/h",
            "of cap",
            "ok",
            "throttled",
            "knocks/window",
            "pauses",
            "paused",
            "failed",
            "permanent",
            "max pages/window",
        ],
        rows,
    )
    governed = res.runs[0]
    print(
        f"governor: {governed.clips_per_hour:.0f} clips/h against a cap of {governed.cap_per_hour:g}/h "
        f"({governed.clips_per_hour / governed.cap_per_hour:.2f}x, goal >= 0.9x); permanent failures caused by "
        f"throttling: {sum(r.permanent_failures for r in res.runs)} (goal 0)"
    )
    knocks = [f"{r.knocks_per_window:.1f}" for r in res.runs if r.knocks_per_window is not None]
    print(f"knocks per throttled window (4 workers): {', '.join(knocks) or '-'} (goal <= 2)")


# --------------------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------------------


def mb(n: float) -> str:
    return f"{n / 1e6:.2f} MB"


def print_table(header: list[str], rows: list[list[str]]) -> None:
    """A plain-text table: first column left-aligned, the others right-aligned."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    print(line(header))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print(line(row))


def report_extraction(res: ExtractionResult, repeats: int) -> None:
    print(
        f"\n== 1. Extraction of {res.clips} 10-s sections ({SIZE[0]}x{SIZE[1]}, default ExtractConfig), "
        f"median of {repeats} =="
    )
    print_table(
        ["design", "ffmpeg runs/clip", "time for all", "clips/s"],
        [
            ["one pass (extract_clip)", "1", f"{res.one_pass_s:.2f} s", f"{res.clips / res.one_pass_s:.2f}"],
            ["one ffmpeg per artifact", "4", f"{res.per_artifact_s:.2f} s", f"{res.clips / res.per_artifact_s:.2f}"],
        ],
    )
    print(f"speed-up of one pass: {res.speedup:.2f}x")
    print(f"outputs of the two designs: {res.outputs}")


def report_ingest(res: IngestResult, repeats: int) -> None:
    w1, w2 = res.seconds[1], res.seconds[2]
    print(
        f"\n== 2. Whole ingest (run_ingest: section download from a loopback MediaServer + extraction), "
        f"{res.clips} clips, fresh work dir each run, median of {repeats} =="
    )
    print_table(
        ["workers", "time for all", "clips/s"],
        [["1", f"{w1:.2f} s", f"{res.clips / w1:.2f}"], ["2", f"{w2:.2f} s", f"{res.clips / w2:.2f}"]],
    )
    print(f"speed-up workers=2 / workers=1: {w1 / w2:.2f}x  (on {os.cpu_count()} cpu cores)")


def median_fetch(runs: list[SectionFetch]) -> SectionFetch:
    return runs[(len(runs) - 1) // 2]  # runs are sorted by bytes served


def report_bytes(res: BytesResult, repeats: int) -> None:
    share = 10.0 / res.long_seconds
    ideal = res.moov_bytes + res.mdat_bytes * share
    print(
        f"\n== 3. Bytes fetched for one 10-s section (from {res.start_sec} s) "
        f"of one {res.long_seconds:g}-s source, median of {repeats} downloads =="
    )
    print(
        f"source file: {mb(res.source_bytes)} ({res.source_bytes * 8 / res.long_seconds / 1e3:.0f} kb/s), "
        f"moov {mb(res.moov_bytes)}, mdat {mb(res.mdat_bytes)}"
    )
    print(
        f"rough need of an ideal client: moov + {share:.1%} of mdat = {mb(ideal)} "
        f"({ideal / res.source_bytes:.1%} of the file)"
    )
    rows = []
    for label, runs in res.fetches.items():
        med, low, high = median_fetch(runs), runs[0].bytes_served, runs[-1].bytes_served
        rows.append(
            [
                label,
                str(med.requests),
                mb(med.bytes_served),
                f"{med.bytes_served / res.source_bytes:.1%}",
                f"{low / res.source_bytes:.1%} - {high / res.source_bytes:.1%}",
                mb(med.section_bytes),
            ]
        )
    print_table(["server", "requests", "bytes served", "of file", "range of runs", "section file"], rows)
    for label, runs in res.fetches.items():
        transfers = median_fetch(runs).transfers
        print(f"per request ({label}, median run): " + "; ".join(f"{rng} -> {mb(n)}" for rng, n in transfers))
    print(
        "note: the server counts bytes written into its socket buffers, so it over-counts what the client read:\n"
        "each connection the client drops (yt-dlp's probe, ffmpeg's header read before it seeks, the section read\n"
        "once it has enough) leaves up to a few MB of loopback socket buffers sent but unread. Capping the send\n"
        "buffer shows how much of the stock count that is; the receiver's buffer still adds some."
    )


def summary(ext: ExtractionResult, ing: IngestResult, byt: BytesResult) -> None:
    stock = median_fetch(next(iter(byt.fetches.values())))
    print("\n== Summary ==")
    print_table(
        ["measurement", "baseline", "design", "ratio"],
        [
            [
                "extraction, clips/s",
                f"{ext.clips / ext.per_artifact_s:.2f} (4 ffmpeg)",
                f"{ext.clips / ext.one_pass_s:.2f} (1 ffmpeg)",
                f"{ext.speedup:.2f}x",
            ],
            [
                "whole ingest, clips/s",
                f"{ing.clips / ing.seconds[1]:.2f} (workers=1)",
                f"{ing.clips / ing.seconds[2]:.2f} (workers=2)",
                f"{ing.seconds[1] / ing.seconds[2]:.2f}x",
            ],
            [
                "bytes for one section",
                f"{mb(byt.source_bytes)} (whole file)",
                f"{mb(stock.bytes_served)} (served)",
                f"{stock.bytes_served / byt.source_bytes:.1%}",
            ],
        ],
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=8, help="clips for the extraction and ingest runs (default 8)")
    parser.add_argument(
        "--long-seconds",
        type=float,
        default=300.0,
        help="length of the long source for the bytes measurement (default 300)",
    )
    parser.add_argument("--repeats", type=int, default=3, help="repeats per measurement, median kept (default 3)")
    parser.add_argument(
        "--throttle",
        action="store_true",
        help="measure ingest from a throttling server (the governor's cap against no cap) instead",
    )
    parser.add_argument("--throttle-clips", type=int, default=40, help="clips for --throttle (default 40)")
    parser.add_argument(
        "--cap-per-hour",
        type=float,
        default=3600.0,
        help="the governor's max_videos_per_hour for --throttle (default 3600: one a second)",
    )
    args = parser.parse_args(argv)
    if args.clips < 1 or args.repeats < 1 or args.long_seconds < 20:
        parser.error("need --clips >= 1, --repeats >= 1 and --long-seconds >= 20")
    if args.throttle_clips < 2 or args.cap_per_hour <= 0:
        parser.error("need --throttle-clips >= 2 and --cap-per-hour > 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    print("IS4 ingest benchmarks")
    print("\n".join(machine_facts()))
    started = time.perf_counter()
    if args.throttle:
        print(
            f"settings       : --throttle --throttle-clips {args.throttle_clips} --cap-per-hour {args.cap_per_hour:g}"
        )
        with tempfile.TemporaryDirectory(prefix="is4-bench-") as tmp:
            report_throttle(bench_throttle(Path(tmp), args.throttle_clips, args.cap_per_hour))
        print(f"\n(total benchmark time {time.perf_counter() - started:.0f} s)")
        return 0
    print(f"settings       : --clips {args.clips} --long-seconds {args.long_seconds:g} --repeats {args.repeats}")
    with tempfile.TemporaryDirectory(prefix="is4-bench-") as tmp:
        root = Path(tmp)
        (root / "extract").mkdir()
        (root / "ingest").mkdir()
        ext = bench_extraction(root / "extract", args.clips, args.repeats)
        report_extraction(ext, args.repeats)
        ing = bench_ingest(root / "ingest", args.clips, args.repeats)
        report_ingest(ing, args.repeats)
        byt = bench_bytes(root, args.long_seconds, args.repeats)
        report_bytes(byt, args.repeats)
    summary(ext, ing, byt)
    print(f"\n(total benchmark time {time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
