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
    return dataset_url(dataset_name(workdir, cfg), cfg, view)


def dataset_url(name: str, cfg: ReviewConfig, view: str | None = None) -> str:
    """The App's address of any dataset (and saved view) of the App that `cfg` serves."""
    host = "127.0.0.1" if cfg.address in ("0.0.0.0", "::", "") else cfg.address  # noqa: S104 - a URL, not a bind
    if ":" in host:
        host = f"[{host}]"
    url = f"http://{host}:{cfg.port}/datasets/{quote(name, safe='')}"
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
    session = fo.launch_app(data, view=shown, address=cfg.address, port=cfg.port, remote=True)
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
    return session
