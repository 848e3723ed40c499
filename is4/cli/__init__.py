"""The `is4` command line: one command per stage, plus `build` (the whole flow) and `serve` (its deployment).

One module per command group (`stages`, `ingest`, `review`, `annotate`, `release`, `evaluate`, `build`, `train`);
what they share is in `_common`; this module is the registration table. Exit status: 0 when a run completed
(rows that failed or were invalid are recorded in the manifests, not fatal); 2 with a one-line reason when the run
itself cannot proceed (bad config, unreadable csv, unwritable work directory, no ffmpeg, another run holding the
work directory); 130 when interrupted (Ctrl-C: the run stops within `INTERRUPT_GRACE_S` seconds; what finished is
journaled, and the same command continues).

Every command that writes into a work directory holds its lock (`manifests.lock.workdir_lock`) for the whole run;
`--shard i/n` (of a sharded stage) and `ingest --csv PART` hold only their part (and share the directory with other parts,
e.g. shards started by hand on several machines). Read-only commands (`manifests`, `stages`, `eval`,
`release verify`, `ingest --status`) and the review commands (which only merge decisions under the verification
manifest's own lock, and run beside a build paused for reviewers) take none.
"""

from __future__ import annotations

import os
from typing import Annotated

import typer

# Prefect reads these when it is imported (only by `build` and `serve`): no telemetry, the network is closed.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")

from is4.cli import annotate, build, evaluate, ingest, release, review, stages, train  # noqa: E402
from is4.cli._common import INTERRUPT_GRACE_S  # noqa: E402

__all__ = ["INTERRUPT_GRACE_S", "app"]

app = typer.Typer(
    help="Build the IS4 benchmark and its VGGSound training data.", no_args_is_help=True, pretty_exceptions_enable=False
)


def _version(value: bool) -> None:
    if value:
        from is4 import __version__

        typer.echo(f"is4-builder {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="print the version and exit")
    ] = False,
) -> None:
    """Build the IS4 benchmark and its VGGSound training data."""


app.command("init")(stages.init)
app.command("ingest")(ingest.ingest)
app.command("export")(stages.export)
app.command("demo-media")(stages.demo_media)
app.command("manifests")(stages.manifests)
app.command("stages")(stages.stages)
app.add_typer(review.app, name="review")
app.add_typer(annotate.app, name="annotate")
app.add_typer(release.app, name="release")
app.command("eval")(evaluate.evaluate)
app.command("build")(build.build)
app.command("serve")(build.serve)
app.command("train")(train.train)
app.command("serve-train")(train.serve_train)
app.command("deploy-train")(train.deploy_train)
app.command("predict")(train.predict)
app.command("embed")(train.embed)
stages.register_uniform_commands(app)
