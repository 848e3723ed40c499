"""Download the 10-s section of one clip with the yt-dlp Python API.

Only the section is fetched (yt-dlp hands it to ffmpeg, which seeks with HTTP range requests). Errors are sorted
into permanent ones (removed, private, not found: recorded and never retried) and transient ones (timeouts,
server errors: retried with exponential backoff here, and again on a later run).
"""

from __future__ import annotations

import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import yt_dlp
from yt_dlp.utils import DownloadError, download_range_func

from is4.config import DownloadConfig
from is4.manifests.ids import validate_ytid
from is4.pipeline.common.ffmpeg_tools import ffmpeg_tools_dir

# (pattern in yt-dlp's message, reason kind). First match wins; anything unmatched is transient.
_PERMANENT = (
    (re.compile(r"private video|video is private", re.I), "private"),
    (re.compile(r"removed|terminated|no longer available|copyright", re.I), "removed"),
    (re.compile(r"HTTP Error 4(04|10)|not found", re.I), "not-found"),
    (re.compile(r"unsupported url|requested format is not available|no video formats", re.I), "no-format"),
    (re.compile(r"sign in to confirm your age|age-restricted|members-only|join this channel", re.I), "restricted"),
    (re.compile(r"video unavailable|not available|unavailable", re.I), "unavailable"),
    (re.compile(r"Invalid data found|moov atom not found|could not find codec|error opening input", re.I), "corrupt-source"),
)
_SERVER_ERROR = re.compile(r"HTTP Error (5\d\d|429)\b")
_TRANSIENT = (
    (re.compile(r"timed out|timeout", re.I), "timeout"),
    # ffmpeg gives up on a broken source and on a broken connection alike: retry, then record.
    (re.compile(r"ffmpeg exited with code", re.I), "ffmpeg-error"),
)


@dataclass
class DownloadFailure(Exception):
    """A download that did not produce a file. `kind` is a short reason class, `permanent` says never retry."""

    kind: str
    detail: str
    permanent: bool
    attempts: int = 1

    def __str__(self) -> str:
        return f"{self.kind}: {self.detail}"


def classify_error(message: str) -> tuple[str, bool]:
    """(reason kind, permanent) for a yt-dlp error message."""
    # A server error is transient whatever its reason phrase says ("503 Service Unavailable").
    if _SERVER_ERROR.search(message):
        return "server-error", False
    for pattern, kind in _PERMANENT:
        if pattern.search(message):
            return kind, True
    for pattern, kind in _TRANSIENT:
        if pattern.search(message):
            return kind, False
    return "network", False


class _CollectingLogger:
    """yt-dlp logger that keeps errors (for the failure reason) and drops chatter."""

    def __init__(self) -> None:
        self.errors: list[str] = []

    def debug(self, msg: str) -> None:
        pass

    def info(self, msg: str) -> None:
        pass

    def warning(self, msg: str) -> None:
        pass

    def error(self, msg: str) -> None:
        self.errors.append(msg)


def _clean_message(message: str) -> str:
    message = re.sub(r"\x1b\[[0-9;]*m", "", message)
    message = re.sub(r"^ERROR:\s*", "", message.strip())
    return message.splitlines()[0][:300] if message else "unknown error"


def _ydl_options(cfg: DownloadConfig, start: float, end: float, out_dir: Path, name: str) -> dict:
    rw_timeout_us = str(int(cfg.socket_timeout_s * 1_000_000))
    return {
        "outtmpl": {"default": str(out_dir / f"{name}.%(ext)s")},
        "format": cfg.format,
        "download_ranges": download_range_func(None, [(start, end)]),
        "force_keyframes_at_cuts": cfg.force_keyframes_at_cuts,
        "ffmpeg_location": str(ffmpeg_tools_dir()),
        # ffmpeg's own stall timeout for the section download, in microseconds.
        "external_downloader_args": {"ffmpeg_i": ["-rw_timeout", rw_timeout_us]},
        "socket_timeout": cfg.socket_timeout_s,
        "retries": 0,
        "fragment_retries": 0,
        "extractor_retries": 0,
        "noplaylist": True,
        "overwrites": True,
        "cachedir": False,
        "quiet": True,
        "no_warnings": True,
        "noprogress": True,
        "color": {"stdout": "no_color", "stderr": "no_color"},
    }


def _download_once(url: str, cfg: DownloadConfig, start: float, end: float, work_dir: Path, name: str) -> Path:
    logger = _CollectingLogger()
    opts = _ydl_options(cfg, start, end, work_dir, name) | {"logger": logger}
    try:
        with yt_dlp.YoutubeDL(opts) as ydl:
            info = ydl.extract_info(url, download=True)
    except DownloadError as exc:
        message = _clean_message(logger.errors[-1] if logger.errors else str(exc))
        kind, permanent = classify_error(message)
        raise DownloadFailure(kind, message, permanent) from None
    downloads = (info or {}).get("requested_downloads") or []
    path = Path(downloads[0]["filepath"]) if downloads and downloads[0].get("filepath") else None
    if path is None or not path.is_file() or path.stat().st_size == 0:
        raise DownloadFailure("empty-download", "yt-dlp reported success but wrote no file", permanent=False)
    return path


def download_section(
    ytid: str,
    start_sec: float,
    duration_sec: float,
    dest_stem: Path,
    cfg: DownloadConfig,
    *,
    sleep=time.sleep,
) -> tuple[Path, int]:
    """Download `[start, start + duration)` of the video `ytid` to `dest_stem.<ext>`; returns (path, attempts).

    The file appears at its final name only when complete. Transient errors are retried `cfg.retries` times with
    exponential backoff; a permanent error or the last transient one raises DownloadFailure.
    """
    url = cfg.url_template.format(ytid=validate_ytid(ytid))
    work_dir = dest_stem.parent / f".{dest_stem.name}.partial"
    attempts = 0
    try:
        while True:
            attempts += 1
            shutil.rmtree(work_dir, ignore_errors=True)
            work_dir.mkdir(parents=True)
            try:
                got = _download_once(url, cfg, start_sec, start_sec + duration_sec, work_dir, dest_stem.name)
            except DownloadFailure as failure:
                failure.attempts = attempts
                if failure.permanent or attempts > cfg.retries:
                    raise
                sleep(cfg.retry_backoff_s * 2 ** (attempts - 1))
                continue
            final = dest_stem.with_suffix(got.suffix)
            got.replace(final)
            return final, attempts
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
