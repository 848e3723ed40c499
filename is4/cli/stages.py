"""Stage commands: one `is4 <stage>` per declared stage of the common shape (`--shard i/n` where the stage is
sharded), `export`, `demo-media`, and the read-only `manifests` and `stages`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from is4.cli._common import (
    ConfigOption,
    SetOption,
    WorkdirOption,
    cli_errors,
    config_and_workdir,
    console,
    run_stage,
    writing,
)
from is4.manifests.errors import Is4Error

# Stages whose commands take options of their own, written out in their modules (verify's is `is4 review`).
WRITTEN_OUT = ("ingest", "verify", "annotate", "release")
ShardOption = Annotated[
    str,
    typer.Option(
        help="i/n: run the i-th of n disjoint shards (0-based), e.g. on several machines; the manifest then covers "
        "every finished shard"
    ),
]


def _uniform_command(name: str, summary: str, sharded: bool) -> Callable[..., None]:
    def command(config: ConfigOption = None, workdir: WorkdirOption = None, overrides: SetOption = None) -> None:
        run_stage(name, *config_and_workdir(config, workdir, overrides))

    def sharded_command(
        config: ConfigOption = None,
        workdir: WorkdirOption = None,
        shard: ShardOption = "0/1",
        overrides: SetOption = None,
    ) -> None:
        from is4.pipeline.shard import Shard

        run_stage(name, *config_and_workdir(config, workdir, overrides), shard=Shard.parse(shard))

    chosen = sharded_command if sharded else command
    chosen.__doc__ = summary
    return cli_errors(chosen)


def register_uniform_commands(app: typer.Typer) -> None:
    """One `is4 <stage>` command per declared stage of the common shape (the others are written out)."""
    from is4.pipeline.registry import REGISTRY

    for declared in REGISTRY:
        if declared.name not in WRITTEN_OUT:
            reads = ", ".join(declared.reads) or "-"
            writes = ", ".join(declared.writes) or "-"
            app.command(declared.name, help=f"{declared.summary}. Reads: {reads}. Writes: {writes}.")(
                _uniform_command(declared.name, declared.summary, declared.sharded)
            )


@cli_errors
def init(
    directory: Annotated[Path, typer.Argument(help="project directory (created if missing)")],
    force: Annotated[bool, typer.Option(help="overwrite configs already there")] = False,
) -> None:
    """Write the shipped example configs (configs/demo.yaml, configs/paper.yaml, the category overrides) into a
    project directory, to start from an installed package."""
    from is4.starter import write_starter

    for path in write_starter(directory, force=force):
        console.print(f"wrote {path}", highlight=False)
    console.print(f"next: cd {directory} && is4 build --config configs/demo.yaml", highlight=False)


@cli_errors
def export(
    workdir: Annotated[Path, typer.Option(help="work directory with a clips manifest")],
    out: Annotated[Path | None, typer.Option(help="output directory (default WORK/exports/vggsound)")] = None,
) -> None:
    """Write frames/{clip_id}.jpg, audio/{clip_id}.wav and ids.csv for existing localisation trainers."""
    from is4.config import BuildConfig
    from is4.pipeline.ingest.export import export_training_layout

    with writing(BuildConfig(), workdir, "is4 export", []):
        path, n = export_training_layout(workdir, out)
    console.print(f"exported {n} clips to {path}")


@cli_errors
def demo_media(
    out: Annotated[Path, typer.Option(help="directory for the videos and the csv")],
    config: Annotated[Path, typer.Option(help="config whose ingest.demo_media section to use")] = Path(
        "configs/demo.yaml"
    ),
    overrides: SetOption = None,
) -> None:
    """Make the synthetic demo videos and their vggsound-format csv (without serving them)."""
    from is4.config import load_config
    from is4.pipeline.demo.demo_media import make_demo_media

    cfg = load_config(config, overrides or ())
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


@cli_errors
def manifests(
    workdir: Annotated[Path, typer.Option(help="work directory")],
    deep: Annotated[
        bool, typer.Option(help="also hash every listed file from its bytes against its recorded checksum")
    ] = False,
) -> None:
    """Validate every manifest in a work directory and print its row counts (`--deep`: and check every file they
    list, removing damaged ones so the next build makes them again)."""
    from is4.manifests.io import MANIFEST_DIR, read_manifest
    from is4.manifests.schema import TABLES

    if not workdir.is_dir():
        raise Is4Error(f"{workdir}: no such work directory" if not workdir.exists() else f"{workdir}: not a directory")
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
    if deep:
        from is4.pipeline.integrity import deep_check

        for name, files in deep_check(workdir).items():
            failed = True
            for rel in files:
                console.print(f"[red]{name}: {rel}: missing or not what its stage made[/] (removed, if damaged)")
        if not failed:
            console.print("every listed file is what its stage made")
    if failed:
        raise typer.Exit(code=2)


_STATUS_STYLE = {"cached": "green", "stale": "yellow", "not run": "red", "off": "dim"}


@cli_errors
def stages(
    config: ConfigOption = None,
    workdir: Annotated[
        Path | None, typer.Option(help="also show where this work directory stands: cached, stale, not run, off")
    ] = None,
    overrides: SetOption = None,
) -> None:
    """The stages of `build-is4` in order: what each reads and writes, its config, models and other input files;
    with --workdir, whether a build would reuse each stage's outputs (cached) or run it again (stale, not run)."""
    from is4.pipeline.registry import EXPORT, REGISTRY
    from is4.pipeline.stage import ALL_SECTIONS

    cfg, _ = config_and_workdir(config, None, overrides, writes=False)
    status: dict[str, str] = {}
    if workdir is not None:
        from is4.pipeline.status import stage_status

        if not workdir.is_dir():
            raise Is4Error(f"{workdir}: no such work directory")
        status = dict(stage_status(cfg, workdir))
    rows = [(f"{i}.", s) for i, s in enumerate(REGISTRY, start=1)]
    rows.insert(1, ("  +", EXPORT))  # a step of ingest, when ingest.export_training_layout is on
    for number, s in rows:
        skipped = "" if s.name in (*cfg.stages, EXPORT.name) else "  [dim](not in this config's stages)[/]"
        state = f"  [{_STATUS_STYLE[status[s.name]]}]\\[{status[s.name]}][/]" if s.name in status else ""
        console.print(f"[bold]{number} {s.name}[/]{state}  {s.summary}{skipped}", highlight=False)
        sections = "the whole build config" if s.config == ALL_SECTIONS else ", ".join(s.config)
        details = [
            ("reads", ", ".join(s.reads)),
            ("files", ", ".join(s.files(cfg))),
            ("writes", ", ".join(s.writes) or "files only"),
            ("config", sections),
            ("models", ", ".join(s.model_roles(cfg))),
            ("seed", "yes" if s.seed else ""),
            ("shards", f"execution.shards.{s.name}, or --shard i/n" if s.sharded else ""),
        ]
        for label, value in details:
            if value:
                console.print(f"      {label:<7}{value}", highlight=False)
