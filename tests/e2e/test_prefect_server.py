"""The run's Prefect API (`flows.server.prefect_api`): PREFECT_API_URL when set, else a temporary server that the
whole run (and every process it starts) reports to, stopped at the end and gone with a `kill -9`'d `is4 build`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import yaml
from prefect.settings import PREFECT_API_URL, temporary_settings

from is4.flows.server import prefect_api
from tests.support import IS4, ROOT, prefect_env


def _children(pid: int) -> list[int]:
    children = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        children += [int(c) for c in (task / "children").read_text().split()]
    return children


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for a reaper that never comes counts as gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status


def _server_of(pid: int, timeout: float = 240.0) -> int:
    """The pid of the uvicorn server that process `pid` started, once it exists."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        servers = [c for c in _children(pid) if "uvicorn" in _cmdline(c)]
        if servers:
            return servers[0]
        time.sleep(0.05)
    raise AssertionError("no Prefect server was started")


def test_existing_api_url_is_used_as_is() -> None:
    with temporary_settings(updates={PREFECT_API_URL: "http://127.0.0.1:9/api"}):
        with prefect_api() as url:
            assert url == "http://127.0.0.1:9/api"
            assert not [c for c in _children(os.getpid()) if "uvicorn" in _cmdline(c)], "no server was started"


def test_temporary_server_serves_the_run_and_stops_with_it() -> None:
    before = os.environ.get("PREFECT_API_URL")
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        with prefect_api() as url:
            assert url.startswith("http://127.0.0.1:") and url.endswith("/api")
            assert httpx.get(f"{url}/health", timeout=10).json() is True
            assert os.environ["PREFECT_API_URL"] == url, "processes the run starts report to the same server"
            (server,) = [c for c in _children(os.getpid()) if "uvicorn" in _cmdline(c)]
    assert os.environ.get("PREFECT_API_URL") == before
    assert not _alive(server)


def test_a_builds_records_stay_in_its_work_directory(tmp_path: Path) -> None:
    """The temporary server keeps its records in the database it is given (`is4 build`: under WORK), not in the
    user's shared `~/.prefect/prefect.db` (issue 21 item 9). The flow runs in a process of its own: a Prefect flow run
    inside the test process leaves state that makes later forked children (DataLoader workers) exit with status 1."""
    import sqlite3

    database = tmp_path / "work" / "state" / "prefect" / "server.db"
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from prefect import flow\n"
        "from is4.flows.server import prefect_api\n"
        "@flow(name='records-here')\n"
        "def records_here() -> int:\n"
        "    return 1\n"
        "with prefect_api(Path(sys.argv[1])):\n"
        "    assert records_here() == 1\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(database)],
        env=prefect_env(tmp_path / "prefect-home"),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    with sqlite3.connect(database) as db:
        names = [row[0] for row in db.execute("SELECT flow.name FROM flow_run JOIN flow ON flow.id = flow_run.flow_id")]
    assert names == ["records-here"]


def test_kill_9_of_build_takes_its_server_along(tmp_path: Path) -> None:
    config = tmp_path / "categories.yaml"
    config.write_text(
        yaml.safe_dump(
            {"stages": ["categories"], "categories": {"overrides": str(ROOT / "configs/category_overrides.yaml")}}
        )
    )
    env = prefect_env(tmp_path / "prefect-home")
    build = subprocess.Popen(
        [IS4, "build", "--config", str(config), "--workdir", str(tmp_path / "work")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    server = None
    try:
        server = _server_of(build.pid)
        os.kill(build.pid, signal.SIGKILL)
        build.wait()
        deadline = time.monotonic() + 30
        while _alive(server) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(server), f"the build's Prefect server (pid {server}) outlived it: {_cmdline(server)}"
    finally:
        build.kill()
        if server is not None and _alive(server):
            os.kill(server, signal.SIGKILL)  # never leave one behind, even when the test fails
