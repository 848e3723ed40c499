"""Ingest rows/s on fast failures: 1 vs 4 download workers, against yt-dlp's own extractor loading, in one run.

Every row is a video the loopback server answers with 404 (a permanent failure, never retried), so the figure is the
cost of the run's own machinery per row: YoutubeDL set-up, the request, the journal line. Two servers: one answering
at once (pure CPU per row: workers share the GIL) and one answering after `--latency-ms` (a remote host's round trip:
workers overlap the waits). The baseline builds every YoutubeDL the way yt-dlp does by default (recomputing its
extractor list per instance), measured in the same run.

    python benchmarks/ingest_fast_failures.py --rows 200 --latency-ms 50
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from unittest import mock

import yt_dlp

from is4.config import DownloadConfig, IngestConfig
from is4.pipeline.ingest import download
from is4.pipeline.ingest.ingest import run_ingest


def _handler(latency_s: float) -> type[BaseHTTPRequestHandler]:
    class NotFound(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            time.sleep(latency_s)
            self.send_error(404, "Not Found")

        def log_message(self, *args) -> None:
            pass

    return NotFound


@contextlib.contextmanager
def _server(latency_s: float) -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(latency_s))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/{{ytid}}.mp4"
    finally:
        server.shutdown()
        server.server_close()


def _rows_per_s(csv: Path, root: Path, url_template: str, workers: int, baseline: bool) -> float:
    cfg = IngestConfig(download=DownloadConfig(url_template=url_template, workers=workers, retries=0))
    work = Path(tempfile.mkdtemp(dir=root))
    patch = mock.patch.object(download, "_youtube_dl", yt_dlp.YoutubeDL) if baseline else contextlib.nullcontext()
    with patch:
        start = time.perf_counter()
        summary = run_ingest(csv, work, cfg)
        seconds = time.perf_counter() - start
    assert summary.failures_by_reason == {"not-found": summary.selected}, summary.failures_by_reason
    shutil.rmtree(work)
    return summary.selected / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200)
    parser.add_argument("--latency-ms", type=float, default=50.0)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="is4-bench-fast-failures-"))
    try:
        csv = root / "rows.csv"
        csv.write_text("".join(f"a{i:010d},0,dog barking,train\n" for i in range(args.rows)))
        print(f"{args.rows} rows, each a 404 (permanent, no retry); rows/s")
        print(f"{'server':<22}{'extractors':<22}{'1 worker':>10}{'4 workers':>11}{'4 / 1':>8}")
        for latency_ms in (0.0, args.latency_ms):
            with _server(latency_ms / 1000) as url:
                for baseline in (True, False):
                    one, four = (_rows_per_s(csv, root, url, w, baseline) for w in (1, 4))
                    label = "yt-dlp default (base)" if baseline else "cached list (is4)"
                    print(
                        f"{f'404 after {latency_ms:g} ms':<22}{label:<22}{one:>10.1f}{four:>11.1f}{four / one:>7.2f}x"
                    )
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
