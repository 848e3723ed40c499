"""A loopback HTTP server for media files with byte-range support, for the demo and the tests.

Range requests matter: ffmpeg seeks inside a remote mp4 with them, which is what lets a section download fetch a
small part of a long video. The server counts the bytes it sends so that can be measured.

Besides `/{name}` (the file itself) it serves YouTube-like pages: `/<route>/{ytid}` is an HTML page whose
`<video>` points at the media url, as a watch page does, so yt-dlp extracts first and fetches the media second:

- `/watch/{ytid}`: always served.
- `/throttled/{ytid}`: with a `Throttle`, more than `limit` pages within `window_s` seconds put the server in a
  cool-down of `cooldown_s` during which every page answers 429 Too Many Requests (with `Retry-After`, the
  seconds left of the cool-down rounded up, when the `Throttle` says `retry_after`).
- `/forbidden/{ytid}`: the pages are always served and counted the same way, but during a cool-down the media
  fetches answer 403 Forbidden (YouTube's googlevideo urls do that to a throttled session).
- `/session/{ytid}`: the page requires the cookie given as `cookie` (`name=value`); without it, it answers 403
  with YouTube's bot check. The media urls do not (YouTube's are signed; and ffmpeg, which fetches them, matches a
  cookie's domain against `host:port`, so a cookie for 127.0.0.1 never reaches a server on another port).

Every request is logged (`log`: time, path, status, whether the cookie came, the `Via` header a proxy adds).
"""

from __future__ import annotations

import http.server
import math
import re
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

_RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)$")
_CONTENT_TYPES = {".mp4": "video/mp4", ".webm": "video/webm", ".mkv": "video/x-matroska", ".m4a": "audio/mp4"}


# route of the page -> route of its media
_PAGE_ROUTES = {"watch": "media", "throttled": "media", "forbidden": "forbidden-media", "session": "media"}
_MEDIA_ROUTES = frozenset(_PAGE_ROUTES.values())
_PAGE = (
    "<!DOCTYPE html><html><head><title>{ytid}</title></head><body>"
    '<video src="/{media}/{ytid}.mp4" controls></video></body></html>'
)


@dataclass(frozen=True)
class Throttle:
    """YouTube-like throttling: more than `limit` pages within `window_s` seconds start a `cooldown_s` refusal."""

    limit: int
    window_s: float
    cooldown_s: float
    retry_after: bool = False  # the 429 answers say how long the cool-down still lasts


@dataclass(frozen=True)
class Logged:
    """One request the server answered."""

    t: float  # time.monotonic()
    path: str
    status: int
    cookie: bool  # the required cookie came with it
    via: str | None  # the Via header (a proxy adds one)


@dataclass
class _ThrottleState:
    throttle: Throttle
    pages: deque[float] = field(default_factory=deque)
    refusing_until: float = 0.0
    episodes: int = 0

    def admit(self, now: float) -> bool:
        """Count one page; False while cooling down (and for the page that starts a cool-down)."""
        if now < self.refusing_until:
            return False
        while self.pages and self.pages[0] <= now - self.throttle.window_s:
            self.pages.popleft()
        if len(self.pages) >= self.throttle.limit:
            self.refusing_until = now + self.throttle.cooldown_s
            self.episodes += 1
            self.pages.clear()
            return False
        self.pages.append(now)
        return True

    def cooling(self, now: float) -> bool:
        return now < self.refusing_until

    def retry_after(self, now: float) -> str | None:
        """The `Retry-After` value of a refusal now (whole seconds, rounded up), if the throttle sends one."""
        return str(math.ceil(self.refusing_until - now)) if self.throttle.retry_after else None


class RangeRequestHandler(http.server.BaseHTTPRequestHandler):
    """Serves files under `server.root` (flat names only), honouring single `Range: bytes=a-b` requests."""

    server: MediaServer._Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - signature of the base class
        pass

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        cookie = self.server.cookie
        entry = Logged(
            time.monotonic(),
            self.path,
            int(code) if isinstance(code, int) else 0,
            bool(cookie) and cookie in (self.headers.get("Cookie") or ""),
            self.headers.get("Via"),
        )
        with self.server.lock:
            self.server.log.append(entry)

    def _route(self) -> tuple[str | None, str]:
        """(route, name) of `/route/name`, or (None, the whole path) for a plain file name."""
        name = unquote(urlsplit(self.path).path).lstrip("/")
        parts = name.split("/")
        return (parts[0], parts[1]) if len(parts) == 2 else (None, name)

    def _resolve(self, name: str | None = None) -> Path | None:
        name = self._route()[1] if name is None else name
        if not name or "/" in name or name.startswith("."):
            return None
        path = self.server.root / name
        return path if path.is_file() else None

    def do_HEAD(self) -> None:  # noqa: N802 - http.server naming
        self._serve(send_body=False)

    def do_GET(self) -> None:  # noqa: N802 - http.server naming
        self._serve(send_body=True)

    def _refusal(self, route: str) -> tuple[int, str, str | None] | None:
        """Why a routed request is refused now, as (status, reason, Retry-After value or None), or None."""
        server, now = self.server, time.monotonic()
        with server.lock:
            throttle = server.throttle
            if route in ("throttled", "forbidden") and throttle is not None:
                admitted = throttle.admit(now)
                if route == "throttled" and not admitted:
                    return 429, "Too Many Requests", throttle.retry_after(now)
            if route == "forbidden-media" and throttle is not None and throttle.cooling(now):
                return 403, "Forbidden", None
        cookie = server.cookie
        if route == "session" and not (cookie and cookie in (self.headers.get("Cookie") or "")):
            return 403, "Sign in to confirm you're not a bot", None
        return None

    def _refuse(self, status: int, reason: str, retry_after: str | None) -> None:
        if retry_after is None:
            self.send_error(status, reason)
            return
        body = f"{status} {reason}\n".encode()
        self.send_response(status, reason)
        self.send_header("Retry-After", retry_after)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        if self.command != "HEAD":
            self.wfile.write(body)

    def _serve_page(self, route: str, ytid: str, send_body: bool) -> None:
        body = _PAGE.format(ytid=ytid, media=_PAGE_ROUTES[route]).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if send_body:
            self.wfile.write(body)

    def _serve(self, send_body: bool) -> None:
        route, name = self._route()
        with self.server.lock:
            self.server.requests += 1
        if route is not None and route not in _PAGE_ROUTES and route not in _MEDIA_ROUTES:
            self.send_error(404, "Video unavailable")
            return
        refusal = self._refusal(route) if route else None
        if refusal:
            self._refuse(*refusal)
            return
        if route in _PAGE_ROUTES:
            self._serve_page(route, name, send_body)
            return
        path = self._resolve(name)
        if path is None:
            self.send_error(404, "Video unavailable")
            return
        size = path.stat().st_size
        start, end, status = 0, size - 1, 200
        header = self.headers.get("Range")
        if header:
            match = _RANGE_RE.match(header.strip())
            if not match or (not match[1] and not match[2]):
                self.send_error(416)
                return
            if match[1]:
                start = int(match[1])
                end = min(int(match[2]), size - 1) if match[2] else size - 1
            else:  # suffix range: the last N bytes
                start = max(size - int(match[2]), 0)
            if start >= size or start > end:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            status = 206
        self.send_response(status)
        self.send_header("Content-Type", _CONTENT_TYPES.get(path.suffix, "application/octet-stream"))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(end - start + 1))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.end_headers()
        if send_body:
            self._send_bytes(path, start, end - start + 1)

    def _send_bytes(self, path: Path, offset: int, length: int) -> None:
        with open(path, "rb") as fh:
            fh.seek(offset)
            while length > 0:
                chunk = fh.read(min(64 * 1024, length))
                if not chunk:
                    break
                try:
                    self.wfile.write(chunk)
                except (BrokenPipeError, ConnectionResetError):
                    break
                length -= len(chunk)
                with self.server.lock:
                    self.server.bytes_served += len(chunk)


class MediaServer:
    """Context manager running a threaded HTTP server on 127.0.0.1 (or `host`) over the files in `root`."""

    class _Server(http.server.ThreadingHTTPServer):
        daemon_threads = True
        root: Path
        lock: threading.Lock
        bytes_served: int
        requests: int
        throttle: _ThrottleState | None
        cookie: str | None
        log: list[Logged]

        def handle_error(self, request: object, client_address: object) -> None:
            # ffmpeg and yt-dlp drop connections once they have what they need: not an error worth a traceback.
            if not isinstance(sys.exc_info()[1], ConnectionError):
                super().handle_error(request, client_address)

    def __init__(
        self,
        root: str | Path,
        host: str = "127.0.0.1",
        port: int = 0,
        handler: type[RangeRequestHandler] = RangeRequestHandler,
        throttle: Throttle | None = None,
        cookie: str | None = None,
    ) -> None:
        self._server = self._Server((host, port), handler)
        self._server.root = Path(root).resolve()
        self._server.lock = threading.Lock()
        self._server.bytes_served = 0
        self._server.requests = 0
        self._server.throttle = _ThrottleState(throttle) if throttle else None
        self._server.cookie = cookie
        self._server.log = []
        self._thread = threading.Thread(target=self._server.serve_forever, name="is4-media-server", daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def url_template(self, extension: str = ".mp4") -> str:
        """A `--url-template` with a `{ytid}` placeholder pointing at this server."""
        return f"{self.base_url}/{{ytid}}{extension}"

    def page_template(self, route: str = "watch") -> str:
        """A `--url-template` for the watch pages of `route` (watch, throttled, forbidden, session)."""
        if route not in _PAGE_ROUTES:
            raise ValueError(f"no page route {route!r}; one of {', '.join(_PAGE_ROUTES)}")
        return f"{self.base_url}/{route}/{{ytid}}"

    @property
    def log(self) -> list[Logged]:
        """Every request answered so far."""
        with self._server.lock:
            return list(self._server.log)

    @property
    def throttle_episodes(self) -> int:
        """How many cool-downs the throttle has started."""
        with self._server.lock:
            return self._server.throttle.episodes if self._server.throttle else 0

    @property
    def bytes_served(self) -> int:
        with self._server.lock:
            return self._server.bytes_served

    @property
    def requests(self) -> int:
        with self._server.lock:
            return self._server.requests

    def reset_counters(self) -> None:
        with self._server.lock:
            self._server.bytes_served = 0
            self._server.requests = 0
            self._server.log.clear()

    def __enter__(self) -> MediaServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
