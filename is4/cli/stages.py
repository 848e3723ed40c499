"""Stage commands: one `is4 <stage>` per declared stage of the common shape, `generate`, `export`, `demo-media`, and
the read-only `manifests` and `stages`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from is4.cli._common import (
    ConfigOption,
    WorkdirOption,
    cli_errors,
    config_and_workdir,
    console,
    run_stage,
    writing,
)
from is4.manifests.errors import Is4Error

# Stages whose commands take options of their own, written out in their modules (verify's is `is4 review`).
WRITTEN_OUT = ("ingest", "generate", "verify", "annotate", "release")


def _uniform_command(name: str, summary: str) -> Callable[..., None]:
    def command(config: ConfigOption = None, workdir: WorkdirOption = None) -> None:
        run_stage(name, *config_and_workdir(config, workdir))

    command.__doc__ = summary
    return cli_errors(command)


def register_uniform_commands(app: typer.Typer) -> None:
    """One `is4 <stage>` command per declared stage of the common shape (the others are written out)."""
    from is4.pipeline.registry import REGISTRY

    for declared in REGISTRY:
        if declared.name not in WRITTEN_OUT:
            reads = ", ".join(declared.reads) or "-"
            writes = ", ".join(declared.writes) or "-"
            app.command(declared.name, help=f"{declared.summary}. Reads: {reads}. Writes: {writes}.")(
                _uniform_command(declared.name, declared.summary)
            )


@cli_errors
def generate(
    config: ConfigOption = None,
    workdir: WorkdirOption = None,
    shard: Annotated[str, typer.Option(help="i/n: generate the i-th of n disjoint shards (0-based)")] = "0/1",
) -> None:
    """Stable Diffusion images for the prompts (PNG + the `images` manifest with full provenance)."""
    from is4.pipeline.images.generate import parse_shard

    parsed = parse_shard(shard)
    run_stage("generate", *config_and_workdir(config, workdir), shard=parsed)


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


@cli_errors
def stages(config: ConfigOption = None) -> None:
    """The stages of `build-is4` in order: what each reads and writes, its config, models and other input files."""
    from is4.pipeline.registry import EXPORT, REGISTRY
    from is4.pipeline.stage import ALL_SECTIONS

    cfg, _ = config_and_workdir(config, None)
    rows = [(f"{i}.", s) for i, s in enumerate(REGISTRY, start=1)]
    rows.insert(1, ("  +", EXPORT))  # a step of ingest, when ingest.export_training_layout is on
    for number, s in rows:
        skipped = "" if s.name in (*cfg.stages, EXPORT.name) else "  [dim](not in this config's stages)[/]"
        console.print(f"[bold]{number} {s.name}[/]  {s.summary}{skipped}", highlight=False)
        sections = "the whole build config" if s.config == ALL_SECTIONS else ", ".join(s.config)
        details = [
            ("reads", ", ".join(s.reads)),
            ("files", ", ".join(s.files(cfg))),
            ("writes", ", ".join(s.writes) or "files only"),
            ("config", sections),
            ("models", ", ".join(s.model_roles(cfg))),
            ("seed", "yes" if s.seed else ""),
        ]
        for label, value in details:
            if value:
                console.print(f"      {label:<7}{value}", highlight=False)
