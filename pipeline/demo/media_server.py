"""A loopback HTTP server for media files with byte-range support, for the demo and the tests.

Range requests matter: ffmpeg seeks inside a remote mp4 with them, which is what lets a section download fetch a
small part of a long video. The server counts the bytes it sends so that can be measured.
"""

from __future__ import annotations

import http.server
import re
import sys
import threading
from pathlib import Path
from urllib.parse import unquote, urlsplit

_RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)$")
_CONTENT_TYPES = {".mp4": "video/mp4", ".webm": "video/webm", ".mkv": "video/x-matroska", ".m4a": "audio/mp4"}


class RangeRequestHandler(http.server.BaseHTTPRequestHandler):
    """Serves files under `server.root` (flat names only), honouring single `Range: bytes=a-b` requests."""

    server: MediaServer._Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - signature of the base class
        pass

    def _resolve(self) -> Path | None:
        name = unquote(urlsplit(self.path).path).lstrip("/")
        if not name or "/" in name or name.startswith("."):
            return None
        path = self.server.root / name
        return path if path.is_file() else None

    def do_HEAD(self) -> None:  # noqa: N802 - http.server naming
        self._serve(send_body=False)

    def do_GET(self) -> None:  # noqa: N802 - http.server naming
        self._serve(send_body=True)

    def _serve(self, send_body: bool) -> None:
        path = self._resolve()
        with self.server.lock:
            self.server.requests += 1
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
    ) -> None:
        self._server = self._Server((host, port), handler)
        self._server.root = Path(root).resolve()
        self._server.lock = threading.Lock()
        self._server.bytes_served = 0
        self._server.requests = 0
        self._thread = threading.Thread(target=self._server.serve_forever, name="is4-media-server", daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def url_template(self, extension: str = ".mp4") -> str:
        """A `--url-template` with a `{ytid}` placeholder pointing at this server."""
        return f"{self.base_url}/{{ytid}}{extension}"

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

    def __enter__(self) -> MediaServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
