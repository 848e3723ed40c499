"""The Prefect API a run reports to: the one in PREFECT_API_URL, else a temporary local server that dies with us.

Prefect's own temporary server (`SubprocessASGIServer`, started on demand by whatever needs the API first) is stopped
by an `atexit` hook, which a killed process never runs: after `kill -9` of `is4 build` it kept running with no
parent. `prefect_api()` starts the same server (uvicorn on Prefect's app factory, on 127.0.0.1, without the UI) but
tied to this process (`pipeline/common/tied.py`: the kernel sends it SIGTERM when its parent dies); the URL goes into the run's settings and the environment, so everything the run
starts, Dask workers included, reports to this one server. Elsewhere than Linux the launcher cannot ask, and the
server outlives a killed parent as Prefect's did. Its SQLite database is the one named by the caller (`is4 build`:
`WORK/state/prefect/server.db`), so a build's records stay with its work directory instead of the user's shared
`~/.prefect/prefect.db`.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from is4.manifests.errors import FatalError
from is4.pipeline.common.tied import STOP_TIMEOUT_S, start_tied, stop

STARTUP_TIMEOUT_S = 60.0


class ServerError(FatalError):
    """The temporary Prefect server did not start."""


def _free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _server_env(database: Path | None = None) -> dict[str, str]:
    from prefect.settings import get_current_settings

    settings = get_current_settings().to_environment_variables(exclude_unset=True)
    env = {
        **os.environ,
        **settings,
        "PREFECT_UI_ENABLED": "0",
        "PREFECT__SERVER_EPHEMERAL": "1",
        "PREFECT__SERVER_FINAL": "1",
    }
    if database is not None:
        database.parent.mkdir(parents=True, exist_ok=True)
        env.pop("PREFECT_API_DATABASE_CONNECTION_URL", None)
        env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = f"sqlite+aiosqlite:///{database.resolve()}"
    return env


def start_server(port: int, database: Path | None = None) -> subprocess.Popen[bytes]:
    """Start Prefect's API server on 127.0.0.1:`port` in a process that receives SIGTERM when this one dies, its
    records in the SQLite file `database` (default: Prefect's configured database)."""
    import prefect

    command = [
        sys.executable,
        "-m",
        "uvicorn",
        "--app-dir",
        str(prefect.__module_path__.parent),
        "--factory",
        "prefect.server.api.server:create_app",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "error",
        "--lifespan",
        "on",
    ]
    return start_tied(command, env=_server_env(database), stdout=subprocess.DEVNULL)


def _wait_healthy(process: subprocess.Popen[bytes], api_url: str) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    with httpx.Client(timeout=2.0) as client:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise ServerError(f"the temporary Prefect server exited with status {process.returncode}")
            try:
                if client.get(f"{api_url}/health").status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
    raise ServerError(f"the temporary Prefect server did not answer on {api_url} within {STARTUP_TIMEOUT_S:.0f} s")


def _start_healthy(database: Path | None, attempts: int = 3) -> tuple[subprocess.Popen[bytes], str]:
    """A started, healthy server and its API URL; another free port when one was taken before uvicorn bound it."""
    for attempt in range(attempts):
        port = _free_port()
        process, api_url = start_server(port, database), f"http://127.0.0.1:{port}/api"
        try:
            _wait_healthy(process, api_url)
            return process, api_url
        except ServerError:
            stop_server(process)
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


def stop_server(process: subprocess.Popen[bytes]) -> None:
    """Stop the server (SIGTERM, then SIGKILL after a few seconds) and reap it."""
    stop(process)


@contextlib.contextmanager
def prefect_api(database: Path | None = None) -> Iterator[str]:
    """The API URL for this run: PREFECT_API_URL when set, else that of a temporary server for the whole run
    (stopped on exit, and killed by the kernel with this process), its records in the SQLite file `database`. Enter
    it from the main thread: the kernel's parent-death signal follows the thread that started the server."""
    from prefect.settings import PREFECT_API_URL, get_current_settings, temporary_settings

    existing = get_current_settings().api.url
    if existing:
        yield existing
        return
    process, api_url = _start_healthy(database)
    try:
        previous = os.environ.get("PREFECT_API_URL")
        os.environ["PREFECT_API_URL"] = api_url  # for the processes the run starts
        try:
            with temporary_settings(updates={PREFECT_API_URL: api_url}):
                yield api_url
        finally:
            if previous is None:
                os.environ.pop("PREFECT_API_URL", None)
            else:
                os.environ["PREFECT_API_URL"] = previous
    finally:
        _drain_prefect_workers()  # logs and events still queued for the API go out before it stops
        stop_server(process)


def _drain_prefect_workers() -> None:
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (APILogWorker, EventsWorker):
        worker.drain_all(timeout=STOP_TIMEOUT_S, at_exit=False)
