"""The FiftyOne App: its address for a build's dataset, and serving it (`launch`).

FiftyOne starts the App's server behind a wrapper process that stops it when its parent goes, but the server's own
shutdown after that (hypercorn's graceful close, the app's lifespan) let it outlive a `kill -9` of `is4 review
verify` by up to a minute. `launch` starts the same server itself, tied to this process (`pipeline/common/tied.py`:
SIGKILL when it dies; the App keeps no state of its own, the decisions are in the database), and FiftyOne's session
connects to it as to any running App. The database service (`mongod`) stays FiftyOne's: it is shared by design.
"""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import quote

from is4.config import ReviewConfig
from is4.pipeline.common.tied import start_tied, stop

from .connect import ReviewError, _load, connect, dataset_name

APP_START_TIMEOUT_S = 120.0

logger = logging.getLogger(__name__)


def app_url(workdir: str | Path, cfg: ReviewConfig, view: str | None = "to-verify") -> str:
    """The App's address of this build's dataset (and saved view)."""
    return dataset_url(dataset_name(workdir, cfg), cfg, view)


def _app_root(cfg: ReviewConfig) -> str:
    host = "127.0.0.1" if cfg.address in ("0.0.0.0", "::", "") else cfg.address  # noqa: S104 - a URL, not a bind
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{cfg.port}"


def dataset_url(name: str, cfg: ReviewConfig, view: str | None = None) -> str:
    """The App's address of any dataset (and saved view) of the App that `cfg` serves."""
    url = f"{_app_root(cfg)}/datasets/{quote(name, safe='')}"
    return f"{url}?view={quote(view, safe='')}" if view else url


_EMPTY_HINTS = {
    "to-verify": "nothing left to verify (with review.mode: auto every pending image was decided by the build)",
    "conflicts": "no image carries both accept and reject",
    "needs-fix": "no mask waits for a refinement",
    "to-annotate": "every accepted image has both objects annotated",
    "failures": "no instance has IoU < 0.5",
    "interactive-failures": "no image where one object's sound lights up another",
}


def empty_view_message(dataset: Any, view: str | None) -> str:
    """What to tell a reviewer whose view is empty: why it may be, and the saved views that hold samples."""
    others = []
    for name in dataset.list_saved_views():
        if name != view:
            n = len(dataset.load_saved_view(name))
            if n:
                others.append(f"{name} ({n})")
    why = _EMPTY_HINTS.get(view or "", "no sample matches it")
    where = f"; views with samples: {', '.join(others)}" if others else ""
    return f"The view {view or dataset.name!r} is empty: {why}{where}."


def launch(
    workdir: str | Path,
    cfg: ReviewConfig,
    view: str | None = "to-verify",
    *,
    wait: bool = True,
    dataset: str | None = None,
) -> Any:
    """Serve the App on `cfg.address:cfg.port` with the dataset's saved `view` (None: the whole dataset).

    `dataset`: the FiftyOne dataset to open (default: this build's review dataset, `dataset_name`).

    The App listens on `cfg.address` only (127.0.0.1 unless the config says otherwise) and is a remote session:
    nothing tries to open a browser. With `wait`, block until interrupted (Ctrl-C, SIGINT or SIGTERM), then close
    the session and return it: reviewers connect remotely and come and go, so the App stays up when the last tab
    closes (FiftyOne's default `session.wait()` would end the session then).
    """
    workdir = Path(workdir).resolve()
    fo = connect(cfg, workdir)
    data = _load(fo, dataset or dataset_name(workdir, cfg))
    if view is not None and view not in data.list_saved_views():
        known = ", ".join(data.list_saved_views())
        raise ReviewError(f"dataset {data.name!r} has no saved view {view!r} (it has {known})")
    shown = data.load_saved_view(view) if view is not None else None
    if len(shown if shown is not None else data) == 0:
        print(empty_view_message(data, view), flush=True)
    server = _start_server(cfg, workdir) if wait and threading.current_thread() is threading.main_thread() else None
    service_log = logging.getLogger("fiftyone.core.service")
    level = service_log.level
    if server is not None:  # its "Connected to FiftyOne on port ..." notice would be about our own server
        service_log.setLevel(logging.WARNING)
    try:
        session = fo.launch_app(data, view=shown, address=cfg.address, port=cfg.port, remote=True)
    except BaseException:
        if server is not None:
            stop(server)
        raise
    finally:
        service_log.setLevel(level)
    url = dataset_url(data.name, cfg, view)
    logger.info("FiftyOne App: %s", url)
    print(f"IS4 review App: {url}", flush=True)
    if not wait:
        return session
    # SIGINT and SIGTERM end the wait (SIGINT explicitly: a shell's background job starts with it ignored).
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, signal.default_int_handler)
    try:
        session.wait(-1)
    except KeyboardInterrupt:
        logger.info("closing the App")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        session.close()
        if server is not None:
            stop(server)
    return session


def _app_version(cfg: ReviewConfig) -> str | None:
    """The version of the FiftyOne App answering on `cfg`'s address and port, or None when none answers."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never through a proxy
    try:
        with opener.open(f"{_app_root(cfg)}/fiftyone", timeout=2) as response:
            return json.loads(response.read())["version"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _start_server(cfg: ReviewConfig, workdir: Path) -> subprocess.Popen[bytes] | None:
    """FiftyOne's App server on `cfg.address:cfg.port`, tied to this process (SIGKILL when it dies), once it
    answers; None when an App already answers there (FiftyOne's session then connects to that one, as it would)."""
    import fiftyone.constants as foc

    if _app_version(cfg) is not None:
        return None
    log_path = workdir / "state" / "logs" / "fiftyone-app.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "main.py", "--port", str(cfg.port), "--address", cfg.address]
    with log_path.open("ab") as log:
        server = start_tied(
            command, signal.SIGKILL, cwd=foc.SERVER_DIR, stdin=subprocess.DEVNULL, stdout=log, stderr=log
        )
    deadline = time.monotonic() + APP_START_TIMEOUT_S
    while _app_version(cfg) is None:
        if server.poll() is not None or time.monotonic() > deadline:
            stop(server)
            raise ReviewError(f"the FiftyOne App did not start on {cfg.address}:{cfg.port} (its log: {log_path})")
        time.sleep(0.2)
    return server
