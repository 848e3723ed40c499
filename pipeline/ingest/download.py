"""Download the 10-s section of one clip with the yt-dlp Python API.

Only the section is fetched (yt-dlp hands it to ffmpeg, which seeks with HTTP range requests). Errors are sorted by
`errors.classify_error`: permanent ones (removed, private, not found: recorded, never retried), transient ones
(timeouts, server errors: retried with exponential backoff here, and again on a later run) and throttling (rate
limit, bot check, 429, 403 on the media, an empty file): the session pauses (`Session` / `governor`) and the same
clip is tried again, as often as it takes; those attempts are not counted, so a clip's record does not depend on
when YouTube throttled. A refusal's `Retry-After` header reaches the governor: yt-dlp keeps the `HTTPError` (and
its response's headers) that caused a `DownloadError` in the error's `exc_info`, and the media probe below sees
its own response.

ffmpeg, which fetches the section, writes its reasons to the terminal, not to yt-dlp: when it fails, one range
request for the first byte of the media url (through the same yt-dlp session) tells a 403 or 429 apart from a
broken file, and when the url serves its bytes, ffmpeg opening it once more tells a file that is no media at all
(`corrupt-source`, permanent: retrying cannot help) apart from a failure of the connection (`ffmpeg-error`).

Each YoutubeDL gets the default extractor classes from a list computed once per process (yt-dlp recomputes it for
every instance, which is most of the CPU time of a clip that fails fast).
"""

from __future__ import annotations

import email.utils
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import yt_dlp
from yt_dlp.extractor import gen_extractor_classes
from yt_dlp.networking import Request
from yt_dlp.networking.exceptions import HTTPError
from yt_dlp.postprocessor.common import PostProcessor
from yt_dlp.utils import DownloadError, download_range_func

from is4.config import DownloadConfig
from is4.manifests.ids import validate_ytid
from is4.pipeline.common.ffmpeg_tools import ffmpeg_exe, ffmpeg_tools_dir
from is4.pipeline.ingest.errors import classify_error, is_throttling
from is4.pipeline.ingest.session import Session

_FFMPEG_FAILED = re.compile(r"ffmpeg exited with code", re.I)
# What ffmpeg says when the bytes it was given are no media it can read (the `corrupt-source` rule of `errors`).
_NOT_MEDIA = re.compile(r"Invalid data found when processing input|moov atom not found", re.I)


@dataclass
class DownloadFailure(Exception):
    """A download that did not produce a file. `kind` is a short reason class, `permanent` says never retry."""

    kind: str
    detail: str
    permanent: bool
    attempts: int = 1
    retry_after: float | None = None  # seconds, from the refusal's Retry-After header

    def __str__(self) -> str:
        return f"{self.kind}: {self.detail}"

    @property
    def throttling(self) -> bool:
        """True when the failure says the session is throttled, not that the clip is bad."""
        return is_throttling(self.kind)


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


class _MediaUrls(PostProcessor):
    """Remembers the media urls (and their headers) yt-dlp is about to hand to the downloader."""

    def __init__(self) -> None:
        super().__init__()
        self.formats: list[dict[str, Any]] = []

    def run(self, information: dict[str, Any]) -> tuple[list[str], dict[str, Any]]:
        self.formats = list(information.get("requested_formats") or [information])
        return [], information


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """Seconds a `Retry-After` header value asks to wait (delta-seconds or an HTTP date, RFC 9110 10.2.3), or None
    when there is none or it cannot be read."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def _retry_after(exc: BaseException | None) -> float | None:
    """The `Retry-After` of the `HTTPError` behind `exc`, which yt-dlp keeps in a `DownloadError`'s `exc_info` (and
    an `ExtractorError`'s `cause`)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, HTTPError):
            return retry_after_seconds(exc.response.headers.get("Retry-After"))
        exc_info = getattr(exc, "exc_info", None)
        exc = (exc_info[1] if exc_info else None) or getattr(exc, "cause", None) or exc.__cause__ or exc.__context__
    return None


def _probe_media(ydl: yt_dlp.YoutubeDL, formats: list[dict[str, Any]]) -> tuple[str, float | None]:
    """(`; media fetch: HTTP Error …`, its Retry-After) when a media url refuses its first byte, else ("", None)."""
    for fmt in formats:
        url = fmt.get("url")
        if not url or not re.match(r"https?://", url):
            continue
        headers = {**(fmt.get("http_headers") or {}), "Range": "bytes=0-0"}
        try:
            ydl.urlopen(Request(url, headers=headers)).close()
        except HTTPError as exc:
            return f"; media fetch: {exc}", _retry_after(exc)
        except Exception:  # noqa: BLE001 - the probe only adds detail; the ffmpeg failure stands as it is
            return "", None
    return "", None


def _media_probe_args(fmt: dict[str, Any], cfg: DownloadConfig, session: Session) -> list[str] | None:
    """ffmpeg opening the media url of `fmt` (its headers, the worker's http proxy), or None if it cannot."""
    url, proxy = fmt.get("url"), session.proxy()
    if not url or not re.match(r"https?://", url) or (proxy and not re.match(r"https?://", proxy)):
        return None
    args = [
        ffmpeg_exe(),
        "-hide_banner",
        "-nostdin",
        "-loglevel",
        "error",
        "-rw_timeout",
        str(int(cfg.socket_timeout_s * 1_000_000)),
    ]
    headers = "".join(f"{k}: {v}\r\n" for k, v in (fmt.get("http_headers") or {}).items())
    if headers:
        args += ["-headers", headers]
    if proxy:
        args += ["-http_proxy", proxy]
    return [*args, "-i", url, "-t", "0.1", "-f", "null", "-"]


def _probe_content(formats: list[dict[str, Any]], cfg: DownloadConfig, session: Session) -> str:
    """`; media probe: Invalid data found when processing input` when a media url serves bytes that are no media."""
    for fmt in formats:
        args = _media_probe_args(fmt, cfg, session)
        if args is None:
            continue
        try:
            proc = subprocess.run(
                args, capture_output=True, text=True, errors="replace", timeout=cfg.socket_timeout_s + 10
            )
        except (OSError, subprocess.TimeoutExpired):
            return ""  # the probe only adds detail; the ffmpeg failure stands as it is
        found = _NOT_MEDIA.search(proc.stderr) if proc.returncode else None
        if found:  # only the matched words: the url (and its tokens) never reach a message
            return f"; media probe: {found.group(0)}"
    return ""


@lru_cache(maxsize=1)
def _default_extractors() -> tuple[type, ...]:
    """The extractor classes a YoutubeDL loads by default, in yt-dlp's order."""
    return tuple(ie for ie in gen_extractor_classes() if ie._ENABLED)


def _youtube_dl(opts: dict[str, Any]) -> yt_dlp.YoutubeDL:
    """A YoutubeDL with the default extractors, without recomputing their list."""
    ydl = yt_dlp.YoutubeDL(opts, auto_init=False)
    for ie in _default_extractors():
        ydl.add_info_extractor(ie)
    return ydl


def _ydl_options(cfg: DownloadConfig, session: Session, start: float, end: float, out_dir: Path, name: str) -> dict:
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
        **session.ydl_options(),
    }


def _download_once(
    url: str, cfg: DownloadConfig, session: Session, start: float, end: float, work_dir: Path, name: str
) -> Path:
    logger = _CollectingLogger()
    media = _MediaUrls()
    opts = _ydl_options(cfg, session, start, end, work_dir, name) | {"logger": logger}
    with _youtube_dl(opts) as ydl:
        session.install_cookies(ydl.cookiejar)
        ydl.add_post_processor(media, when="before_dl")
        try:
            info = ydl.extract_info(url, download=True)
        except DownloadError as exc:
            message = _clean_message(logger.errors[-1] if logger.errors else str(exc))
            retry_after = _retry_after(exc)
            if media.formats and _FFMPEG_FAILED.search(message):
                refused, retry_after = _probe_media(ydl, media.formats)
                message += refused or _probe_content(media.formats, cfg, session)
            message = session.redact(message)
            kind, permanent = classify_error(message)
            raise DownloadFailure(kind, message, permanent, retry_after=retry_after) from None
    downloads = (info or {}).get("requested_downloads") or []
    path = Path(downloads[0]["filepath"]) if downloads and downloads[0].get("filepath") else None
    if path is None or not path.is_file() or path.stat().st_size == 0:
        raise DownloadFailure("empty-file", "The downloaded file is empty (yt-dlp reported success)", False)
    return path


def download_section(
    ytid: str,
    start_sec: float,
    duration_sec: float,
    dest_stem: Path,
    cfg: DownloadConfig,
    *,
    session: Session | None = None,
    sleep=time.sleep,
    before_final: Callable[[int], None] | None = None,
) -> tuple[Path, int]:
    """Download `[start, start + duration)` of the video `ytid` to `dest_stem.<ext>`; returns (path, attempts).

    The file appears at its final name only when complete. Transient errors are retried `cfg.retries` times with
    exponential backoff; a permanent error or the last transient one raises DownloadFailure. With a `session` that
    has a governor (which paces every attempt), a throttling error pauses the session and the clip is tried again
    without counting an attempt, until the governor gives up (`governor.GiveUp`); without one it is transient.
    Every attempt tells the governor how it ended (success, throttled, or neither), which a probe after a pause
    needs.
    `before_final(attempts)` is called just before the file takes its final name (to journal the attempts).
    """
    url = cfg.url_template.format(ytid=validate_ytid(ytid))
    session = session or Session(cfg)
    work_dir = dest_stem.parent / f".{dest_stem.name}.partial"
    attempts = 0
    try:
        while True:
            ticket = session.acquire()
            try:
                shutil.rmtree(work_dir, ignore_errors=True)
                work_dir.mkdir(parents=True)
                got = _download_once(url, cfg, session, start_sec, start_sec + duration_sec, work_dir, dest_stem.name)
            except DownloadFailure as failure:
                if failure.throttling and session.governor is not None:
                    session.throttled_by(ticket, failure.kind, failure.retry_after)
                    continue
                session.released(ticket)
                attempts += 1
                failure.attempts = attempts
                if failure.permanent or attempts > cfg.retries:
                    raise
                sleep(cfg.retry_backoff_s * 2 ** (attempts - 1))
                continue
            except BaseException:
                session.released(ticket)
                raise
            session.succeeded(ticket)
            final = dest_stem.with_suffix(got.suffix)
            if before_final is not None:
                before_final(attempts + 1)
            got.replace(final)
            return final, attempts + 1
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
