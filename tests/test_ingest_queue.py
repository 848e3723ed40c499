"""Ingest memory does not grow with the csv: rows reach the download pool through a bounded window.

A real `is4 ingest` of 200,000 synthetic rows against a loopback server that answers every video with 404 (each row
fails fast and permanently) is stopped with `kill -9` once a few hundred rows have their record; its peak RSS is
compared with the same run over a csv of 2,000 rows. Before the window, every row was queued at once (a future per
row) and the 200,000-row run peaked ~330 MB above the small one.
"""

from __future__ import annotations

import json
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from is4.pipeline.ingest.journals import JOURNAL
from tests.support import ingest_cmd, killed_at_exit, peak_rss_kib, wait_until

RECORDS = 300  # rows with a record when the peak is read
# What holding the 200,000 validated rows themselves may cost (~0.3 KB a row), with room for allocator noise.
EXTRA_MB_BOUND = 120


class _NotFound(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802
        self.send_error(404, "Not Found")

    def log_message(self, *args) -> None:
        pass


@pytest.fixture()
def not_found_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _NotFound)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/{{ytid}}.mp4"
    server.shutdown()
    server.server_close()


def _peak_rss_mb(tmp_path: Path, rows: int, url_template: str) -> float:
    """VmHWM of `is4 ingest` over `rows` fast-failing rows, read when RECORDS of them have a record."""
    csv = tmp_path / f"rows-{rows}.csv"
    csv.write_text("".join(f"a{i:010d},0,dog barking,train\n" for i in range(rows)))
    work = tmp_path / f"work-{rows}"
    proc = subprocess.Popen(
        ingest_cmd(csv, work, url_template, "--workers", "4", "--no-export"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    journal = work / JOURNAL
    with killed_at_exit(proc):
        recorded = wait_until(lambda: journal.is_file() and journal.read_text().count("\n") >= RECORDS, proc, 90, 0.1)
        if not recorded:
            pytest.fail(f"is4 ingest of {rows} rows did not record {RECORDS} rows in time (exit {proc.poll()})")
        peak_kb = peak_rss_kib(proc.pid)
    records = [json.loads(line) for line in journal.read_text().splitlines()[:RECORDS]]
    assert {r["reason"].split(":")[0] for r in records} == {"not-found"}, "every row failed fast, as intended"
    return peak_kb / 1024


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads VmHWM from /proc")
def test_peak_memory_does_not_grow_with_the_csv(not_found_server: str, tmp_path: Path) -> None:
    small = _peak_rss_mb(tmp_path, 2_000, not_found_server)
    large = _peak_rss_mb(tmp_path, 200_000, not_found_server)
    print(f"peak RSS: 2,000 rows {small:.0f} MB, 200,000 rows {large:.0f} MB")
    assert large - small < EXTRA_MB_BOUND, (small, large)
