"""What every download of one run shares: the rate governor, the cookies, the proxies, yt-dlp's session options.

Cookies are validated once (Netscape format; an error names the file and line, never a value) and copied into each
YoutubeDL's jar, so yt-dlp never writes the user's file back (it saves `cookiefile` on close, which concurrent
workers would race on). Each worker thread keeps its own proxy from the list and moves to the next one when it is
throttled. Proxy urls are redacted from every message that is recorded.
"""

from __future__ import annotations

import http.cookiejar
import itertools
import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from yt_dlp.cookies import YoutubeDLCookieJar

from is4.config import DownloadConfig
from is4.manifests.errors import FatalError
from is4.pipeline.ingest.errors import redact
from is4.pipeline.ingest.governor import Governor, Pause, Ticket

_MAGIC = re.compile(r"#( Netscape)? HTTP Cookie File")  # what http.cookiejar.MozillaCookieJar requires first
_FIELDS = 7  # domain, include-subdomains, path, secure, expires, name, value


class CookiesError(FatalError, ValueError):
    """The cookies file is missing or not a Netscape cookies.txt."""


def load_cookies(path: str | Path) -> list[http.cookiejar.Cookie]:
    """The cookies of a Netscape-format cookies.txt; problems name the file and line but never show a value."""
    path = Path(path).expanduser()
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise CookiesError(f"{path}: cannot read the cookies file: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise CookiesError(f"{path}: the cookies file is not UTF-8 text") from None
    if not lines or not _MAGIC.match(lines[0]):
        hint = " (it looks like JSON: export cookies.txt instead)" if lines and lines[0][:1] in "[{" else ""
        raise CookiesError(
            f"{path} line 1: not a Netscape cookies file: the first line must be '# Netscape HTTP Cookie File'{hint}"
        )
    count = 0
    for number, line in enumerate(lines, start=1):
        entry = line.removeprefix("#HttpOnly_")
        if not entry.strip() or entry.startswith("#"):
            continue
        parts = entry.split("\t")
        if len(parts) != _FIELDS:
            raise CookiesError(f"{path} line {number}: expected {_FIELDS} tab-separated fields, found {len(parts)}")
        domain, subdomains, _, secure, expires = parts[:5]
        if subdomains not in ("TRUE", "FALSE") or secure not in ("TRUE", "FALSE"):
            raise CookiesError(f"{path} line {number}: fields 2 and 4 must be TRUE or FALSE")
        if (subdomains == "TRUE") != domain.startswith("."):
            raise CookiesError(f"{path} line {number}: field 2 must be TRUE exactly when the domain starts with '.'")
        if expires and not re.fullmatch(r"[0-9]+(\.[0-9]+)?", expires):
            raise CookiesError(f"{path} line {number}: field 5 (expires) must be a number of seconds")
        count += 1
    if not count:
        raise CookiesError(f"{path}: the cookies file holds no cookie")
    jar = YoutubeDLCookieJar(str(path))
    jar.load()
    return list(jar)


class Session:
    """The governor plus the session settings of `cfg`, handed to every download of a run."""

    def __init__(
        self, cfg: DownloadConfig, governor: Governor | None = None, on_pause: Callable[[Pause], None] | None = None
    ) -> None:
        self.cfg = cfg
        self.governor = governor
        self.on_pause = on_pause
        self.cookies = load_cookies(cfg.cookies_file) if cfg.cookies_file else []
        self.proxies = cfg.proxies()
        self._local = threading.local()
        self._workers = itertools.count()
        self._lock = threading.Lock()
        self.throttled = 0  # throttling failures seen by this process
        self.pauses: list[Pause] = []

    def _worker(self) -> threading.local:
        if not hasattr(self._local, "index"):
            with self._lock:
                self._local.index = next(self._workers)
            self._local.offset = 0
        return self._local

    def proxy(self) -> str | None:
        """This worker's proxy: worker i starts on proxy i of the list and moves on with each throttling."""
        if not self.proxies:
            return None
        worker = self._worker()
        return self.proxies[(worker.index + worker.offset) % len(self.proxies)]

    def ydl_options(self) -> dict[str, Any]:
        """The session's yt-dlp options for this worker."""
        cfg = self.cfg
        opts: dict[str, Any] = {}
        if proxy := self.proxy():
            opts["proxy"] = proxy
        if cfg.user_agent:
            opts["http_headers"] = {"User-Agent": cfg.user_agent}
        if cfg.source_address:
            opts["source_address"] = cfg.source_address
        if cfg.extractor_args:
            opts["extractor_args"] = {ie: dict(args) for ie, args in cfg.extractor_args.items()}
        if cfg.sleep_requests_s:
            opts["sleep_interval_requests"] = cfg.sleep_requests_s
        return opts

    def install_cookies(self, cookiejar: http.cookiejar.CookieJar) -> None:
        """Put the session's cookies into a YoutubeDL's (in-memory) jar."""
        for cookie in self.cookies:
            cookiejar.set_cookie(cookie)

    def redact(self, message: str) -> str:
        """`message` without the proxy urls and url credentials."""
        return redact(message, tuple(self.proxies))

    def acquire(self) -> Ticket | None:
        """Wait until the governor lets the next attempt start (None without a governor)."""
        return self.governor.acquire() if self.governor else None

    def succeeded(self, ticket: Ticket | None) -> None:
        """Tell the governor that an attempt worked."""
        if self.governor and ticket:
            self.governor.succeeded(ticket)

    def released(self, ticket: Ticket | None) -> None:
        """Tell the governor that an attempt ended without a success or a throttling (the next one probes)."""
        if self.governor and ticket:
            self.governor.released(ticket)

    def throttled_by(self, ticket: Ticket | None, kind: str, retry_after: float | None = None) -> None:
        """A throttling failure (with the site's `Retry-After`, if it sent one): pause the session (maybe raising
        `GiveUp`) and move this worker's proxy on."""
        with self._lock:
            self.throttled += 1
        if self.proxies:
            self._worker().offset += 1
        if not (self.governor and ticket):
            return
        pause = self.governor.throttled(ticket, kind, retry_after)
        if pause is not None:
            with self._lock:
                self.pauses.append(pause)
            if self.on_pause:
                self.on_pause(pause)
