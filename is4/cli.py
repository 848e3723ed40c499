"""The `is4` command line: one command per stage, plus `build` (the whole flow) and `serve` (its deployment).

Exit status: 0 when a run completed (rows that failed or were invalid are recorded in the manifests, not fatal);
2 with a one-line reason when the run itself cannot proceed (bad config, unreadable csv, unwritable work
directory, no ffmpeg, another run holding the work directory); 130 when interrupted (Ctrl-C: the run stops within
`INTERRUPT_GRACE_S` seconds; what finished is journaled, and the same command continues).

Every command that writes into a work directory holds its lock (`manifests.lock.workdir_lock`) for the whole run;
`generate --shard i/n` and `ingest --csv PART` hold only their part (and share the directory with other parts,
e.g. shards started by hand on several machines). Read-only commands
(`manifests`, `stages`, `eval`, `release verify`, `ingest --status`) and the review commands (which only merge
decisions under the verification manifest's own lock, and run beside a build paused for reviewers) take none.
"""

from __future__ import annotations

import functools
import getpass
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

# Prefect reads these when it is imported (only by `build` and `serve`): no telemetry, the network is closed.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")

app = typer.Typer(
    help="Build the IS4 benchmark and its VGGSound training data.", no_args_is_help=True, pretty_exceptions_enable=False
)
console = Console()
err_console = Console(stderr=True)
P = ParamSpec("P")


def _fail(exc: BaseException) -> typer.Exit:
    message = str(exc)
    if isinstance(exc, OSError) and exc.filename:
        message = f"{exc.filename}: {exc.strerror}"
    err_console.print(f"[bold red]error:[/] {message}", highlight=False)
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
            raise _fail(exc) from None
        finally:
            if previous is not None:
                signal.signal(signal.SIGINT, previous)

    return run


@contextmanager
def _writing(
    cfg, work: Path, command: str, stage_names: list[str] | None = None, part: str | None = None
) -> Iterator[Path]:
    """Check what the run needs before it starts (`pipeline.preflight`), then hold the work directory's lock (or
    only `part`'s, e.g. one shard) for the run; yields the checked work directory."""
    from is4.manifests.lock import workdir_lock
    from is4.pipeline.preflight import preflight

    work = preflight(cfg, work, stage_names)
    with workdir_lock(work, command, part=part):
        yield work


def _print_summary(title: str, summary: dict[str, Any]) -> None:
    table = Table(title=title, show_header=False)
    for key, value in summary.items():
        if isinstance(value, dict) and len(value) > 8:
            value = f"{len(value)} entries (see the stage's report)"
        elif isinstance(value, dict):
            value = ", ".join(f"{k}: {v}" for k, v in value.items()) or "-"
        table.add_row(key, str(value))
    console.print(table)


ConfigOption = Annotated[Path | None, typer.Option(help="build config (YAML); default: built-in defaults")]
WorkdirOption = Annotated[Path | None, typer.Option(help="work directory (default: the config's workdir)")]
ReviewerOption = Annotated[str, typer.Option(help="who is reviewing (recorded with every decision)")]


def _config_and_workdir(config: Path | None, workdir: Path | None):
    from is4.config import BuildConfig, load_config

    cfg = load_config(config) if config else BuildConfig()
    return cfg, Path(workdir or cfg.workdir)


@contextmanager
def _progress(title: str) -> Iterator[Callable[[int, int, str], None]]:
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


def _run_stage(
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
    part = f"shard {shard[0]}/{shard[1]} of {name}" if shard is not None and shard[1] > 1 else lock_part
    with _writing(cfg, work, f"is4 {name}" + (f" ({part})" if part else ""), [name], part=part):
        provenance = declared.provenance(cfg, work, files=files)
        with _progress(name) as progress:
            summary = declared.run(work, cfg, provenance, progress=progress, **options)
    _print_summary(name, summary)
    return summary


def _uniform_command(name: str, summary: str) -> Callable[..., None]:
    def command(config: ConfigOption = None, workdir: WorkdirOption = None) -> None:
        _run_stage(name, *_config_and_workdir(config, workdir))

    command.__doc__ = summary
    return cli_errors(command)


def _register_uniform_commands() -> None:
    """One `is4 <stage>` command per declared stage of the common shape (the others are written out below)."""
    from is4.pipeline.registry import REGISTRY

    for declared in REGISTRY:
        if declared.name not in WRITTEN_OUT:
            reads = ", ".join(declared.reads) or "-"
            writes = ", ".join(declared.writes) or "-"
            app.command(declared.name, help=f"{declared.summary}. Reads: {reads}. Writes: {writes}.")(
                _uniform_command(declared.name, declared.summary)
            )


# Stages whose commands take options of their own, written out below (verify's is `is4 review`).
WRITTEN_OUT = ("ingest", "generate", "verify", "annotate", "release")


@app.command()
@cli_errors
def ingest(
    workdir: Annotated[Path, typer.Option(help="work directory of the build")],
    csv: Annotated[Path | None, typer.Option(help="VGGSound-format csv (ytid, start, label, split; no header)")] = None,
    config: Annotated[Path | None, typer.Option(help="config file whose `ingest` section to use")] = None,
    url_template: Annotated[str | None, typer.Option(help="download url with a {ytid} placeholder")] = None,
    workers: Annotated[int | None, typer.Option(min=1, help="concurrent downloads")] = None,
    split: Annotated[list[str] | None, typer.Option(help="keep this split (repeatable): train, test")] = None,
    labels: Annotated[str | None, typer.Option(help="'all', 'vggss' or a file with one label per line")] = None,
    per_class_cap: Annotated[int | None, typer.Option(min=1, help="at most N clips per label (seeded)")] = None,
    id_list: Annotated[Path | None, typer.Option(help="file of clip ids / YouTube ids to keep")] = None,
    seed: Annotated[int | None, typer.Option(help="seed for subset sampling")] = None,
    export: Annotated[bool | None, typer.Option(help="also write the training layout to WORK/exports/vggsound")] = None,
    status: Annotated[
        bool,
        typer.Option(
            "--status",
            help="print where the work directory's ingest stands (counts "
            "by status and reason, what is retryable, the command "
            "that continues it) and exit",
        ),
    ] = False,
    shard: Annotated[
        str | None,
        typer.Option(
            help="i/n: ingest only the i-th of n contiguous slices of the selection "
            "(0-based) into its own journal, and write no manifest; a run "
            "without --shard then writes it, fetching nothing again"
        ),
    ] = None,
) -> None:
    """Download, validate and extract the clips of a VGGSound csv into the `clips` manifest."""
    import shlex

    from is4.config import BuildConfig, ConfigError, load_config, parse_config

    if status:
        _print_ingest_status(workdir)
        return
    if csv is None:
        raise ConfigError("--csv is required (or --status, to see where an ingest stands)")
    base = load_config(config) if config else BuildConfig()
    data = base.model_dump(mode="json")
    section = data["ingest"]
    overrides = {
        ("download", "url_template"): url_template,
        ("download", "workers"): workers,
        ("subset", "splits"): split,
        ("subset", "per_class_cap"): per_class_cap,
        ("subset", "id_list"): str(id_list) if id_list else None,
    }
    for (group, key), value in overrides.items():
        if value is not None:
            section[group][key] = value
    if labels is not None:
        section["subset"]["labels"] = (
            labels
            if labels in ("all", "vggss")
            else [line.strip() for line in Path(labels).read_text(encoding="utf-8").splitlines() if line.strip()]
        )
    if export is not None:
        section["export_training_layout"] = export
    if seed is not None:
        data["seed"] = seed
    cfg = parse_config(data, "command line")
    # The session's secrets are not in the dump (they never leave the config object): carry them over.
    secrets = {k: getattr(base.ingest.download, k) for k in ("cookies_file", "proxy", "extractor_args")}
    cfg = cfg.model_copy(
        update={"ingest": cfg.ingest.model_copy(update={"download": cfg.ingest.download.model_copy(update=secrets)})}
    )
    # The command that continues this run, for `--status` and the stop message (absolute paths, no secrets).
    argv = ["is4", "ingest", "--csv", str(csv.resolve()), "--workdir", str(workdir.resolve())]
    options = {
        "--config": config and config.resolve(),
        "--url-template": url_template,
        "--workers": workers,
        "--labels": labels and (labels if labels in ("all", "vggss") else Path(labels).resolve()),
        "--per-class-cap": per_class_cap,
        "--id-list": id_list and id_list.resolve(),
        "--seed": seed,
    }
    argv += [str(v) for k, val in options.items() if val is not None for v in (k, val)]
    argv += [v for s in split or [] for v in ("--split", s)]
    argv += [] if export is None else ["--export" if export else "--no-export"]
    argv += [] if shard is None else ["--shard", shard]
    command = shlex.join(argv)
    sharding = {}
    if shard is not None:
        from is4.pipeline.images.generate import parse_shard

        sharding = {"shard": parse_shard(shard)}
    # Parts of one csv may be ingested side by side into one work directory (README): each holds only its part.
    part = f"ingest of {csv.resolve()}"
    summary = _run_stage(
        "ingest",
        cfg,
        workdir,
        files={"csv": csv},
        lock_part=part,
        csv_path=csv,
        command=command,
        allow_incomplete=True,
        **sharding,
    )
    if not summary["complete"]:
        console.print(
            f"[bold yellow]{summary['pending']} clips pending[/] ({summary['stopped']}). Nothing is lost: "
            f"continue later with\n  {command}",
            highlight=False,
        )
        return
    if shard is not None:
        console.print(
            f"shard {shard} done; once every shard is, the same command without --shard writes the clips "
            f"manifest (and the export) from all their journals",
            highlight=False,
        )
        return
    if cfg.ingest.export_training_layout:
        _run_stage("export", cfg, workdir, lock_part=part)


def _print_ingest_status(workdir: Path) -> None:
    from is4.pipeline.ingest.status import ingest_status

    for run in ingest_status(workdir):
        table = Table(title=f"ingest of {run.csv}", show_header=False)
        table.add_row("selected", str(run.selected))
        for name in ("ok", "failed", "pending"):
            table.add_row(name, str(run.by_status.get(name, 0)))
        for reason, n in sorted(run.by_reason.items()):
            table.add_row(f"  failed: {reason}", str(n))
        table.add_row("retryable", f"{run.retryable} (transient failures and pending clips: a rerun tries them)")
        console.print(table)
        if run.retryable:
            console.print(f"continue with:\n  {run.command}", highlight=False, soft_wrap=True)
        else:
            console.print("nothing left to retry", highlight=False)


@app.command("export")
@cli_errors
def export_cmd(
    workdir: Annotated[Path, typer.Option(help="work directory with a clips manifest")],
    out: Annotated[Path | None, typer.Option(help="output directory (default WORK/exports/vggsound)")] = None,
) -> None:
    """Write frames/{clip_id}.jpg, audio/{clip_id}.wav and ids.csv for existing localisation trainers."""
    from is4.config import BuildConfig
    from is4.pipeline.ingest.export import export_training_layout

    with _writing(BuildConfig(), workdir, "is4 export", []):
        path, n = export_training_layout(workdir, out)
    console.print(f"exported {n} clips to {path}")


@app.command("demo-media")
@cli_errors
def demo_media(
    out: Annotated[Path, typer.Option(help="directory for the videos and the csv")],
    config: Annotated[Path, typer.Option(help="config whose ingest.demo_media section to use")] = Path(
        "configs/demo.yaml"
    ),
) -> None:
    """Make the synthetic demo videos and their vggsound-format csv (without serving them)."""
    from is4.config import load_config
    from is4.pipeline.demo.demo_media import make_demo_media

    cfg = load_config(config)
    demo = cfg.ingest.demo_media
    media = make_demo_media(
        out,
        demo.labels,
        clips_per_label=demo.clips_per_label,
        source_seconds=demo.source_seconds,
        seed=cfg.seed,
        include_faults=demo.include_faults,
    )
    console.print(f"{media.clips} demo clips: csv {media.csv_path}, videos in {media.video_dir}")


@app.command()
def manifests(workdir: Annotated[Path, typer.Option(help="work directory")]) -> None:
    """Validate every manifest in a work directory and print its row counts."""
    from is4.manifests.io import MANIFEST_DIR, read_manifest
    from is4.manifests.schema import TABLES

    if not workdir.is_dir():
        raise _fail(
            Is4Error(f"{workdir}: no such work directory" if not workdir.exists() else f"{workdir}: not a directory")
        )
    table = Table("table", "rows", "status")
    failed = False
    for name in TABLES:
        if not (workdir / MANIFEST_DIR / f"{name}.parquet").is_file():
            continue
        try:
            frame = read_manifest(workdir, name)
            table.add_row(name, str(len(frame)), "valid")
        except (Is4Error, OSError) as exc:
            failed = True
            table.add_row(name, "-", f"[red]{exc}[/]")
    console.print(table)
    if failed:
        raise typer.Exit(code=2)


@app.command()
@cli_errors
def stages(config: ConfigOption = None) -> None:
    """The stages of `build-is4` in order: what each reads and writes, its config, models and other input files."""
    from is4.pipeline.registry import EXPORT, REGISTRY
    from is4.pipeline.stage import ALL_SECTIONS

    cfg, _ = _config_and_workdir(config, None)
    rows = [(f"{i}.", s) for i, s in enumerate(REGISTRY, start=1)]
    rows.insert(1, ("  +", EXPORT))  # a step of ingest, when ingest.export_training_layout is on
    for number, s in rows:
        skipped = "" if s.name in (*cfg.stages, EXPORT.name) else "  [dim](not in this config's stages)[/]"
        console.print(f"[bold]{number} {s.name}[/]  {s.summary}{skipped}", highlight=False)
        config = "the whole build config" if s.config == ALL_SECTIONS else ", ".join(s.config)
        details = [
            ("reads", ", ".join(s.reads)),
            ("files", ", ".join(s.files(cfg))),
            ("writes", ", ".join(s.writes) or "files only"),
            ("config", config),
            ("models", ", ".join(s.model_roles(cfg))),
            ("seed", "yes" if s.seed else ""),
        ]
        for label, value in details:
            if value:
                console.print(f"      {label:<7}{value}", highlight=False)


@app.command()
@cli_errors
def generate(
    config: ConfigOption = None,
    workdir: WorkdirOption = None,
    shard: Annotated[str, typer.Option(help="i/n: generate the i-th of n disjoint shards (0-based)")] = "0/1",
) -> None:
    """Stable Diffusion images for the prompts (PNG + the `images` manifest with full provenance)."""
    from is4.pipeline.images.generate import parse_shard

    parsed = parse_shard(shard)
    _run_stage("generate", *_config_and_workdir(config, workdir), shard=parsed)


review_app = typer.Typer(help="Human verification and mask review in FiftyOne review sessions.", no_args_is_help=True)
app.add_typer(review_app, name="review")


def _review_config(config: Path | None, workdir: Path | None, address: str | None = None, port: int | None = None):
    cfg, work = _config_and_workdir(config, workdir)
    overrides = {k: v for k, v in (("address", address), ("port", port)) if v is not None}
    return cfg.review.model_copy(update=overrides), work, cfg


@review_app.command("verify")
@cli_errors
def review_verify(
    config: ConfigOption = None,
    workdir: WorkdirOption = None,
    view: Annotated[
        str, typer.Option(help="saved view: to-verify, accepted, rejected, to-annotate, annotated, needs-fix")
    ] = "to-verify",
    reviewer: ReviewerOption = getpass.getuser(),
    address: Annotated[str | None, typer.Option(help="App address (default: the config's, 127.0.0.1)")] = None,
    port: Annotated[int | None, typer.Option(help="App port (default: the config's)")] = None,
) -> None:
    """Open the FiftyOne App on a saved view of this build (tag samples `accept` / `reject:<reason>`)."""
    from is4.annotation import review

    rcfg, work, cfg = _review_config(config, workdir, address, port)
    review.refresh(work, rcfg, reviewer, annotate=cfg.annotate, segmenter=cfg.models.segmenter)
    console.print(f"FiftyOne App on http://{rcfg.address}:{rcfg.port}, view {view!r}; Ctrl-C to stop")
    review.launch(work, rcfg, view, wait=True)


@review_app.command("sync")
@cli_errors
def review_sync(
    config: ConfigOption = None, workdir: WorkdirOption = None, reviewer: ReviewerOption = getpass.getuser()
) -> None:
    """Write reviewers' decisions (FiftyOne tags) into the `verification` manifest."""
    from is4.annotation import review

    rcfg, work, _ = _review_config(config, workdir)
    _print_summary("review sync", review.sync(work, rcfg, reviewer))


@review_app.command("done")
@cli_errors
def review_done(
    reviewer: ReviewerOption = getpass.getuser(),
    note: Annotated[str, typer.Option(help="a note for the build's record")] = "",
    flow_run: Annotated[str | None, typer.Option(help="resume only this flow run id")] = None,
) -> None:
    """Resume `build-is4` runs paused for reviewers (on the Prefect server in PREFECT_API_URL)."""
    from prefect.settings import get_current_settings

    from is4.flows.review import ResumeError, resume_paused_builds

    if not get_current_settings().api.url:
        raise ResumeError(
            "PREFECT_API_URL is not set: `is4 review done` resumes builds paused on a Prefect server "
            "(`is4 serve`); an in-process `is4 build` does not pause, it stops: run it again after "
            "`is4 review sync`"
        )
    resumed = resume_paused_builds(reviewer, note, flow_run)
    console.print(f"resumed {len(resumed)} paused build(s): {', '.join(resumed) or '-'}")
    if not resumed:
        raise typer.Exit(code=1)


annotate_app = typer.Typer(help="SAM masks for the objects of accepted images.", invoke_without_command=True)
app.add_typer(annotate_app, name="annotate")


@annotate_app.callback()
@cli_errors
def annotate(ctx: typer.Context, config: ConfigOption = None, workdir: WorkdirOption = None) -> None:
    """Automatic proposals: detector boxes → SAM masks (the `annotations` manifest and reports/annotation_qa.json)."""
    if ctx.invoked_subcommand is None:
        _run_stage("annotate", *_config_and_workdir(config, workdir))


def _parse_point(text: str) -> tuple[float, float, int]:
    try:
        x, y, label = text.split(",")
        point = (float(x), float(y), int(label))
    except ValueError:
        raise typer.BadParameter(f"{text!r}: expected x,y,label with label 1 (object) or 0 (not object)") from None
    if point[2] not in (0, 1):
        raise typer.BadParameter(f"{text!r}: label must be 1 (object) or 0 (not object)")
    return point


def _parse_box(text: str) -> list[float]:
    try:
        box = [float(v) for v in text.split(",")]
    except ValueError:
        box = []
    if len(box) != 4:
        raise typer.BadParameter(f"{text!r}: expected x1,y1,x2,y2 in image pixels")
    return box


@annotate_app.command("refine")
@cli_errors
def annotate_refine(
    config: ConfigOption = None,
    workdir: WorkdirOption = None,
    instance: Annotated[
        str | None, typer.Option(help="instance id; default: every `needs-fix` sample's clicks")
    ] = None,
    point: Annotated[list[str] | None, typer.Option(help="x,y,label in image pixels (repeatable)")] = None,
    box: Annotated[str | None, typer.Option(help="x1,y1,x2,y2 in image pixels (default: the current box)")] = None,
    reviewer: ReviewerOption = getpass.getuser(),
) -> None:
    """Re-run SAM with clicks for one instance, or for the clicks annotators left in FiftyOne."""
    from is4.annotation import review
    from is4.annotation.annotate import refine_instance

    cfg, work = _config_and_workdir(config, workdir)
    with _writing(cfg, work, "is4 annotate refine", []):
        if instance:
            jobs = [(instance, [_parse_point(p) for p in point or []], _parse_box(box) if box else None)]
        else:
            jobs = review.pending_refinements(work, cfg.review)
        for instance_id, points, job_box in jobs:
            refine_instance(work, cfg.annotate, cfg.models.segmenter, instance_id, points=points, box=job_box)
        if not instance:
            review.refresh(work, cfg.review, reviewer, annotate=cfg.annotate, segmenter=cfg.models.segmenter)
    console.print(f"refined {len(jobs)} instance(s)")


release_app = typer.Typer(help="The reproducible IS4 release.", invoke_without_command=True)
app.add_typer(release_app, name="release")


@release_app.callback()
@cli_errors
def release(
    ctx: typer.Context,
    config: ConfigOption = None,
    workdir: WorkdirOption = None,
    version: Annotated[str | None, typer.Option(help="release version (default: the config's)")] = None,
) -> None:
    """Build WORK/releases/is4-<version>/ and its archive, then verify it."""
    if ctx.invoked_subcommand is not None:
        return
    cfg, work = _config_and_workdir(config, workdir)
    if version:
        cfg = cfg.model_copy(update={"release": cfg.release.model_copy(update={"version": version})})
    _run_stage("release", cfg, work)


@release_app.command("verify")
@cli_errors
def release_verify(path: Annotated[Path, typer.Argument(help="a release directory or its .tar.gz")]) -> None:
    """Recompute every checksum and check every item; list missing, extra, changed files and broken invariants
    (invalid: an image without its two instances, a box outside the frame or off its mask) — exit 1 when any."""
    from is4.pipeline.release import verify_release

    report = verify_release(path)
    for kind in ("missing", "extra", "changed", "invalid"):
        for name in getattr(report, kind):
            console.print(f"{kind}: {name}")
    console.print(f"{path}: {'OK' if report.ok else 'FAILED'}")
    if not report.ok:
        raise typer.Exit(code=1)


@app.command("eval")
@cli_errors
def eval_cmd(
    release_dir: Annotated[
        Path,
        typer.Option(
            "--release",
            help="a release directory, the authors' IS4 folder, or a benchmark's ground-truth file or folder",
        ),
    ],
    predictions: Annotated[Path, typer.Option(help=".npz with one heatmap per instance id")],
    benchmark: Annotated[
        str | None,
        typer.Option(
            help="is4, vggss, flickr, avsbench-s4, avsbench-ms3, vpo-ss or vpo-ms (default: what the file names say)"
        ),
    ] = None,
    gt: Annotated[
        str | None,
        typer.Option(help="ground truth: box (the papers' tables) or mask (default: box, or what the file holds)"),
    ] = None,
    protocol: Annotated[
        str,
        typer.Option(
            help="reference (the papers' evaluation code, the default) or exact-k "
            "(cuts keep exactly K pixels, tie-safe)"
        ),
    ] = "reference",
    output: Annotated[Path | None, typer.Option(help="write the metrics (and the baselines') as JSON here")] = None,
    per_instance: Annotated[
        Path | None, typer.Option("--per-instance", help="write per-instance IoUs as Parquet here")
    ] = None,
    baselines: Annotated[
        bool, typer.Option(help="score the random, centre and oracle baselines beside the model")
    ] = True,
) -> None:
    """Score heatmaps on a benchmark: cIoU, AUC, IIoU, IAUC (+ mIoU, F-score for masks) in percent, beside baselines."""
    from is4.pipeline.evaluation import evaluate as ev
    from is4.pipeline.evaluation import metrics
    from is4.pipeline.evaluation.formats import load_ground_truth

    try:
        rules = metrics.get_protocol(protocol)
    except ValueError as exc:
        raise ev.EvaluationError(f"--protocol: {exc}") from None
    truth = load_ground_truth(release_dir, gt, benchmark=benchmark, protocol=rules)
    scored = ev.score_file(truth, predictions, rules)
    reference = {}
    if baselines:
        reference = ev.shipped_baselines(truth, rules) or {
            kind: base.summary for kind, base in ev.score_baselines(truth, rules).items()
        }
    rows = {"model": scored.summary, **reference}
    console.print(
        f"{truth.benchmark} {truth.gt} ground truth ({truth.source}), protocol {rules.name}",
        soft_wrap=True,
        highlight=False,
        markup=False,
    )
    console.print(ev.format_table(rows), soft_wrap=True, highlight=False, markup=False)
    if output:
        from is4.manifests.atomic import atomic_write_json

        baseline_rows = {"baselines": reference} if reference else {}
        atomic_write_json(output, {**scored.summary, **baseline_rows})
    if per_instance:
        ev.write_per_instance(per_instance, scored)


@app.command()
@cli_errors
def build(
    config: Annotated[Path, typer.Option(help="build config (YAML), e.g. configs/demo.yaml")],
    workdir: Annotated[Path | None, typer.Option(help="work directory (default: the config's workdir)")] = None,
) -> None:
    """Run the whole `build-is4` flow in-process (the Prefect API in PREFECT_API_URL, else a temporary local one
    for the run; nothing to start by hand)."""
    from is4.config import load_config

    cfg = load_config(config)  # fail fast, before Prefect starts its local API
    from is4.flows.cluster import require_api

    require_api(cfg)  # a Dask cluster elsewhere cannot reach a temporary server on this machine's loopback
    with _writing(cfg, Path(workdir or cfg.workdir).expanduser().resolve(), "is4 build") as work:
        from is4.flows.build import build_is4
        from is4.flows.server import prefect_api

        with prefect_api():
            results = build_is4(config_path=str(config.resolve()), workdir=str(work))
    console.rule("build-is4 finished")
    console.print(f"work directory: {results['workdir']}")
    for stage, summary in results.items():
        if isinstance(summary, dict) and summary.get("cached"):
            console.print(
                f"{stage}: cached (its outputs are intact and its inputs unchanged: not run again)", highlight=False
            )
        elif isinstance(summary, dict):
            _print_summary(stage, summary)


@app.command()
@cli_errors
def serve(
    config: Annotated[Path, typer.Option(help="build config the deployment runs with")],
    name: Annotated[str, typer.Option(help="deployment name: run it as 'build-is4/<name>'")] = "default",
    workdir: Annotated[Path | None, typer.Option(help="work directory (default: the config's workdir)")] = None,
) -> None:
    """Serve a deployment of `build-is4` to the Prefect API in PREFECT_API_URL (runs until stopped)."""
    from is4.config import load_config

    load_config(config)
    from is4.flows.build import build_is4

    params = {"config_path": str(config.resolve()), "workdir": str(workdir.resolve()) if workdir else None}
    build_is4.serve(name=name, parameters=params)


@app.command()
@cli_errors
def train(
    config: Annotated[Path, typer.Option(help="build config (YAML) with a `train` section")],
    workdir: WorkdirOption = None,
    method: Annotated[str | None, typer.Option(help="training method (default: train.method), e.g. alignment")] = None,
    run: Annotated[
        Path | None,
        typer.Option(
            "--run",
            "--run-dir",
            help="run directory (default: "
            "WORK/runs/<method>-<config hash>); under torchrun write --run-dir "
            "(torchrun takes --run for its --run-path)",
        ),
    ] = None,
    resume: Annotated[bool, typer.Option(help="continue the run from its last checkpoint")] = False,
) -> None:
    """Train a localisation method on the work directory's manifests (multi-process: `torchrun --nproc_per_node N
    -m is4.cli train ...`); checkpoints, metrics and per-epoch scores go to the run directory."""
    from is4.trainers.engine import train as run_training

    cfg, work = _config_and_workdir(config, workdir)
    rank0 = os.environ.get("RANK", "0") == "0"
    summary = run_training(
        cfg.train, work, seed=cfg.seed, run_dir=run, method_name=method, resume=resume, progress=rank0
    )
    if rank0:
        last = summary.pop("last") or {}
        _print_summary("train", {**summary, **{f"last {k}": v for k, v in last.items() if k != "epoch"}})


@app.command()
@cli_errors
def predict(
    release_dir: Annotated[Path, typer.Option("--release", help="a release directory or benchmark ground truth")],
    out: Annotated[Path, typer.Option(help="the .npz of heatmaps to write (what `is4 eval --predictions` reads)")],
    run: Annotated[Path | None, typer.Option(help="a run directory of `is4 train`")] = None,
    checkpoint: Annotated[str, typer.Option(help="with --run: best, last, or a checkpoint file")] = "best",
    weights: Annotated[
        Path | None,
        typer.Option(
            help="instead of --run: an authors'-format checkpoint (e.g. "
            "SSLalignment's ours_*.pth.tar), shaped by --config's train "
            "section"
        ),
    ] = None,
    config: ConfigOption = None,
    gt: Annotated[str, typer.Option(help="box or mask: which ground truth lists the instances")] = "box",
    batch_size: Annotated[int, typer.Option(help="instances per forward pass")] = 16,
) -> None:
    """Write one heatmap per benchmark instance with a trained run's model (or the authors' released weights)."""
    from is4.trainers.engine import load_run_model
    from is4.trainers.method import TrainError, get_method
    from is4.trainers.predict import write_heatmaps

    if (run is None) == (weights is None):
        raise TrainError("give one of --run (a training run) or --weights (an authors'-format checkpoint)")
    if run is not None:
        method, model, ckpt = load_run_model(run, checkpoint)
        facts = {"method": ckpt["method"], "epoch": ckpt["epoch"]}
    else:
        assert weights is not None
        cfg, _ = _config_and_workdir(config, None)
        method = get_method(cfg.train, cfg.seed)
        model = method.build_model()
        method.import_checkpoint(model, weights)
        model.eval()
        facts = {"method": cfg.train.method, "weights": str(weights)}
    with _progress("predict") as progress:
        n = write_heatmaps(
            method,
            model,
            release_dir,
            out,
            gt=gt,
            batch_size=batch_size,
            progress=lambda done, total: progress(done, total, "instances"),
        )
    _print_summary("predict", {**facts, "maps": n, "out": str(out)})


_register_uniform_commands()

if __name__ == "__main__":
    app()
