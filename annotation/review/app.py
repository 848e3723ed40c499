"""The FiftyOne App: its address for a build's dataset, and serving it (`launch`)."""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from typing import Any
from urllib.parse import quote

from is4.config import ReviewConfig

from .connect import ReviewError, _load, connect, dataset_name

logger = logging.getLogger(__name__)


def app_url(workdir: str | Path, cfg: ReviewConfig, view: str | None = "to-verify") -> str:
    """The App's address of this build's dataset (and saved view)."""
    host = "127.0.0.1" if cfg.address in ("0.0.0.0", "::", "") else cfg.address  # noqa: S104 - a URL, not a bind
    if ":" in host:
        host = f"[{host}]"
    url = f"http://{host}:{cfg.port}/datasets/{quote(dataset_name(workdir, cfg), safe='')}"
    return f"{url}?view={quote(view, safe='')}" if view else url


def launch(workdir: str | Path, cfg: ReviewConfig, view: str | None = "to-verify", *, wait: bool = True) -> Any:
    """Serve the App on `cfg.address:cfg.port` with the dataset's saved `view` (None: the whole dataset).

    The App listens on `cfg.address` only (127.0.0.1 unless the config says otherwise) and is a remote session:
    nothing tries to open a browser. With `wait`, block until interrupted (Ctrl-C, SIGINT or SIGTERM), then close
    the session and return it: reviewers connect remotely and come and go, so the App stays up when the last tab
    closes (FiftyOne's default `session.wait()` would end the session then).
    """
    workdir = Path(workdir).resolve()
    fo = connect(cfg, workdir)
    dataset = _load(fo, dataset_name(workdir, cfg))
    if view is not None and view not in dataset.list_saved_views():
        known = ", ".join(dataset.list_saved_views())
        raise ReviewError(f"dataset {dataset.name!r} has no saved view {view!r} (it has {known})")
    shown = dataset.load_saved_view(view) if view is not None else None
    session = fo.launch_app(dataset, view=shown, address=cfg.address, port=cfg.port, remote=True)
    logger.info("FiftyOne App: %s", app_url(workdir, cfg, view))
    print(f"IS4 review App: {app_url(workdir, cfg, view)}", flush=True)
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
    return session
