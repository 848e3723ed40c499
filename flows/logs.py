"""A build's log file in its work directory: tracebacks go there, the terminal gets one line per error.

While `is4 build` runs, every log record (Prefect's flow and task runs, the stages' loggers) is also written to
`WORK/state/logs/build-<UTC time>-<pid>.log`, tracebacks included; the console handlers print only the record's
message. An exception that ends the flow becomes one `BuildFailed` line (exit 2 in the CLI) naming that file.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

from is4.manifests.errors import FatalError

LOG_DIR = "state/logs"


class BuildFailed(FatalError, RuntimeError):
    """The flow ended on an error: its one-line message and where the traceback is."""


class _NoTraceback(logging.Filter):
    """Drop a record's traceback before a console handler formats it (the log file has it already)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        return True


@contextlib.contextmanager
def build_log(work: Path, name: str = "build") -> Iterator[Path]:
    """Log the run into `WORK/state/logs/<name>-<time>-<pid>.log` (full records) and keep tracebacks off the
    console; on an exception, log it there and raise `BuildFailed`: its message, its type unless it is one of ours,
    and the log file's path. Yields the log file's path."""
    path = work / LOG_DIR / f"{name}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{os.getpid()}.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    to_file = logging.FileHandler(path, encoding="utf-8")
    to_file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    consoles = [h for h in root.handlers if isinstance(h, logging.StreamHandler) and h.stream is not None]
    brief = _NoTraceback()
    root.handlers.insert(0, to_file)  # before the console handlers, which strip the traceback from the record
    for handler in consoles:
        handler.addFilter(brief)
    try:
        yield path
    except (KeyboardInterrupt, SystemExit, BuildFailed):
        raise
    except BaseException as exc:
        failed = (type(exc), exc, exc.__traceback__)
        to_file.handle(logging.LogRecord(__name__, logging.ERROR, __file__, 0, "the build failed", None, failed))
        what = str(exc) if isinstance(exc, FatalError) else f"{type(exc).__name__}: {exc}"
        if isinstance(exc, OSError) and exc.filename:
            what = f"{exc.filename}: {exc.strerror}"
        raise BuildFailed(f"{what} (traceback: {path})") from None
    finally:
        for handler in consoles:
            handler.removeFilter(brief)
        root.removeHandler(to_file)
        to_file.close()
