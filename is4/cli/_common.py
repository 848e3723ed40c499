"""What every `is4` command shares: the error decorator (one line, exit 2; Ctrl-C → 130), the work directory's lock
and pre-flight, the progress bar, summaries, the common options and running a declared stage."""

from __future__ import annotations

import functools
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, ParamSpec

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from is4.manifests.errors import Is4Error

console = Console()
err_console = Console(stderr=True)
P = ParamSpec("P")

ConfigOption = Annotated[Path | None, typer.Option(help="build config (YAML); default: built-in defaults")]
WorkdirOption = Annotated[Path | None, typer.Option(help="work directory (default: the config's workdir)")]
SetOption = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        metavar="KEY.PATH=VALUE",
        help="override a config value, e.g. --set train.epochs=5 (repeatable; validated like the file)",
    ),
]
ReviewerOption = Annotated[str, typer.Option(help="who is reviewing (recorded with every decision)")]


def fail(exc: BaseException) -> typer.Exit:
    """Print `exc` as one line on stderr; the `typer.Exit` (status 2) to raise."""
    message = str(exc)
    if isinstance(exc, OSError) and exc.filename:
        message = f"{exc.filename}: {exc.strerror}"
    from rich.text import Text

    # The message verbatim: no console markup, so that `[x1, y1, x2, y2]` in it is printed as written.
    err_console.print(Text.assemble(("error:", "bold red"), " ", message), highlight=False, soft_wrap=True)
    return typer.Exit(code=2)


INTERRUPT_GRACE_S = 3.0  # after Ctrl-C, seconds for the run to unwind before it exits regardless
_INTERRUPTED = threading.Event()


def _exit_interrupted() -> None:
    """Exit 130 now, without waiting for worker threads still inside a stage: every stage writes each finished
    item's files atomically, then its journal line, so stopping anywhere leaves nothing half-recorded (the same
    guarantee as a kill) and the next run resumes."""
    err_console.print(
        "[bold yellow]interrupted[/]: finished work is journaled; run the same command again to continue",
        highlight=False,
    )
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(130)


def _on_sigint(_signum: int, _frame: Any) -> None:
    if _INTERRUPTED.is_set():
        _exit_interrupted()  # a second Ctrl-C: at once
    _INTERRUPTED.set()
    timer = threading.Timer(INTERRUPT_GRACE_S, _exit_interrupted)
    timer.daemon = True
    timer.start()
    raise KeyboardInterrupt


def cli_errors(command: Callable[P, None]) -> Callable[P, None]:
    """Turn the project's errors (and OS errors: unreadable, unwritable) into one line on stderr and exit 2, and
    Ctrl-C into a prompt stop with exit 130."""

    @functools.wraps(command)
    def run(*args: P.args, **kwargs: P.kwargs) -> None:
        main = threading.current_thread() is threading.main_thread()
        # Not where SIGINT is ignored (a shell's background job): Ctrl-C in the terminal is not meant for it.
        ignored = main and signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        previous = signal.signal(signal.SIGINT, _on_sigint) if main and not ignored else None
        try:
            command(*args, **kwargs)
        except KeyboardInterrupt:
            _exit_interrupted()
        except (Is4Error, OSError) as exc:
            raise fail(exc) from None
        finally:
            if previous is not None:
                signal.signal(signal.SIGINT, previous)

    return run


@contextmanager
def writing(
    cfg, work: Path, command: str, stage_names: list[str] | None = None, part: str | None = None
) -> Iterator[Path]:
    """Check what the run needs before it starts (`pipeline.preflight`), then hold the work directory's lock (or
    only `part`'s, e.g. one shard) for the run; yields the checked work directory."""
    from is4.manifests.lock import workdir_lock
    from is4.pipeline.preflight import preflight

    work = preflight(cfg, work, stage_names)
    with workdir_lock(work, command, part=part):
        yield work


def print_summary(title: str, summary: dict[str, Any]) -> None:
    """A stage's summary as a two-column table (long mappings are counted, not listed)."""
    table = Table(title=title, show_header=False)
    for key, value in summary.items():
        if isinstance(value, dict) and len(value) > 8:
            value = f"{len(value)} entries (see the stage's report)"
        elif isinstance(value, dict):
            value = ", ".join(f"{k}: {v}" for k, v in value.items()) or "-"
        table.add_row(key, str(value))
    console.print(table)


def config_and_workdir(
    config: Path | None, workdir: Path | None, overrides: list[str] | None = None, *, writes: bool = True
):
    """The config (`config`, else the built-in defaults, with `--set` overrides) and the work directory
    (`workdir`, else the config's). A command that `writes` refuses to run with neither `--config` nor `--workdir`:
    the built-in defaults would write into ./work of wherever it was started."""
    from is4.config import ConfigError, load_config

    if writes and config is None and workdir is None:
        raise ConfigError(
            "give --config (e.g. configs/demo.yaml) or --workdir: without either, the built-in defaults would "
            "write into ./work"
        )
    cfg = load_config(config, overrides or ())
    return cfg, Path(workdir or cfg.workdir)


@contextmanager
def progress_bar(title: str) -> Iterator[Callable[[int, int, str], None]]:
    """A transient progress bar on stderr; yields its `(done, total, message)` callback."""
    with Progress(
        TextColumn(f"[bold]{title}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.description}"),
        console=err_console,
        transient=True,
    ) as bar:
        job = bar.add_task("", total=None)

        def progress(done: int, total: int, message: str) -> None:
            bar.update(job, completed=done, total=total, description=message)

        yield progress


def run_stage(
    name: str,
    cfg,
    work: Path,
    files: dict[str, Path | None] | None = None,
    lock_part: str | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Run a declared stage as the flow does (same provenance), with a progress bar; print and return its summary.

    It holds the work directory's lock, or only `lock_part`'s (by default a `--shard i/n`'s, i.e. n > 1)."""
    from is4.pipeline.registry import stage

    declared = stage(name)
    shard = options.get("shard")
    part = f"shard {shard} of {name}" if shard is not None and not shard.whole else lock_part
    with writing(cfg, work, f"is4 {name}" + (f" ({part})" if part else ""), [name], part=part):
        provenance = declared.provenance(cfg, work, files=files)
        with progress_bar(name) as progress:
            summary = declared.run(work, cfg, provenance, progress=progress, **options)
    print_summary(name, summary)
    return summary
