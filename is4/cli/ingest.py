"""`is4 ingest`: download, validate and extract a VGGSound csv's clips (and `--status`, where an ingest stands)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from is4.cli._common import SetOption, cli_errors, console, run_stage


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
            help="print where the work directory's ingest stands (counts by status and reason, what is retryable, "
            "the command that continues it) and exit",
        ),
    ] = False,
    shard: Annotated[
        str | None,
        typer.Option(
            help="i/n: ingest only the i-th of n contiguous slices of the selection (0-based) into its own journal, "
            "and write no manifest; a run without --shard then writes it, fetching nothing again"
        ),
    ] = None,
    overrides: SetOption = None,
) -> None:
    """Download, validate and extract the clips of a VGGSound csv into the `clips` manifest."""
    from is4.config import ConfigError, load_config
    from is4.pipeline.ingest.invocation import IngestInvocation
    from is4.pipeline.shard import Shard

    if status:
        _print_status(workdir)
        return
    if csv is None:
        raise ConfigError("--csv is required (or --status, to see where an ingest stands)")
    invocation = IngestInvocation(
        csv=csv,
        workdir=workdir,
        config=config,
        url_template=url_template,
        workers=workers,
        splits=split,
        labels=labels,
        per_class_cap=per_class_cap,
        id_list=id_list,
        seed=seed,
        export=export,
        shard=shard,
    )
    cfg = invocation.apply(load_config(config, overrides or ()))
    command = invocation.continue_command()
    part, sharding = invocation.lock_part, Shard() if shard is None else Shard.parse(shard)
    summary = run_stage(
        "ingest",
        cfg,
        workdir,
        files={"csv": csv},
        lock_part=part,
        csv_path=csv,
        command=command,
        allow_incomplete=True,
        shard=sharding,
    )
    if not summary["complete"]:
        console.print(
            f"[bold yellow]{summary['pending']} clips pending[/] ({summary['stopped']}). Nothing is lost: "
            f"continue later with\n  {command}",
            highlight=False,
        )
        return
    if not sharding.whole:
        console.print(
            f"shard {sharding} done; once every shard is, the same command without --shard writes the clips "
            f"manifest (and the export) from all their journals",
            highlight=False,
        )
        return
    if cfg.ingest.export_training_layout:
        run_stage("export", cfg, workdir, lock_part=part)


def _print_status(workdir: Path) -> None:
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
