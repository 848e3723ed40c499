"""The FiftyOne App's server dies with a killed `is4 review verify` (issue 21 item 9).

FiftyOne's wrapper stops the App server when its parent goes, but the server then shuts down gracefully (hypercorn
waits for open requests, then the app's lifespan): with a reviewer's request open it outlived `kill -9` of the
command by up to a minute. The server `launch` starts now gets SIGKILL from the kernel when the command dies.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
from pathlib import Path

import psutil  # FiftyOne's own dependency: which process listens on the App's port

from is4.config import ReviewConfig
from tests.conftest import free_port
from tests.support import IS4, ROOT, killed_at_exit, wait_until
from tests.support.review_work import make_workdir


def _listener(port: int) -> psutil.Process | None:
    for conn in psutil.net_connections(kind="tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr[1] == port and conn.pid is not None:
            return psutil.Process(conn.pid)
    return None


def _alive(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_the_app_server_dies_with_a_killed_review_verify(tmp_path: Path, fiftyone_db: Path) -> None:
    from is4.annotation import review

    workdir = tmp_path / "w"
    make_workdir(workdir)
    port = free_port()
    review.build_dataset(workdir, ReviewConfig(database_dir=fiftyone_db, port=port))
    command = [IS4, "review", "verify", "--workdir", str(workdir), "--port", str(port)]
    command += ["--set", f"review.database_dir={fiftyone_db}"]
    with (tmp_path / "verify.log").open("w") as log:
        proc = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    with killed_at_exit(proc):
        assert wait_until(lambda: _listener(port) is not None, proc, timeout=240), (tmp_path / "verify.log").read_text()
        server = _listener(port)
        assert server is not None and server.pid != proc.pid
        # A reviewer's open tab: the App's event stream (server-sent events), as the page subscribes to it.
        body = json.dumps({"initializer": None, "events": ["state_update"], "subscription": "tab"}).encode()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as tab:
            head = "POST /events HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            tab.sendall(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body)
            assert tab.recv(4096).startswith(b"HTTP/1.1 200"), "no event stream"
            start = time.monotonic()
            proc.kill()
            proc.wait(timeout=60)
            gone = wait_until(lambda: not _alive(server), timeout=120)
            took = time.monotonic() - start
    assert gone and took < 2, f"the App server {server.pid} outlived is4 by {took:.1f} s"
    assert _listener(port) is None
