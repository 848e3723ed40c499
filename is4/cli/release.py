"""`is4 release`: build the reproducible IS4 release, and `verify` one."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from is4.cli._common import (
    ConfigOption,
    SetOption,
    WorkdirOption,
    cli_errors,
    config_and_workdir,
    console,
    run_stage,
)

app = typer.Typer(help="The reproducible IS4 release.", invoke_without_command=True)


@app.callback()
@cli_errors
def release(
    ctx: typer.Context,
    config: ConfigOption = None,
    workdir: WorkdirOption = None,
    version: Annotated[str | None, typer.Option(help="release version (default: the config's)")] = None,
    overrides: SetOption = None,
) -> None:
    """Build WORK/releases/is4-<version>/ and its archive, then verify it."""
    if ctx.invoked_subcommand is not None:
        return
    cfg, work = config_and_workdir(config, workdir, overrides)
    if version:
        cfg = cfg.model_copy(update={"release": cfg.release.model_copy(update={"version": version})})
    run_stage("release", cfg, work)


@app.command("push")
@cli_errors
def push(
    path: Annotated[Path, typer.Argument(help="a release directory (WORK/releases/is4-<version>)")],
    repo_id: Annotated[str, typer.Option(help="Hugging Face dataset repository, ORG/NAME")],
    private: Annotated[bool, typer.Option(help="create the repository private")] = False,
    revision: Annotated[str | None, typer.Option(help="branch to push to (created if missing; default main)")] = None,
) -> None:
    """Upload a verified release to a Hugging Face dataset repository in one commit (token: HF_TOKEN or
    `hf auth login`); `datasets.load_dataset("ORG/NAME")` then returns its instances."""
    from is4.pipeline.release.push import hub_token, plan_push, push_release

    plan = plan_push(path, repo_id, private=private, revision=revision)
    url = push_release(plan, hub_token())
    console.print(f"pushed {len(plan.files)} files of {path} to {repo_id}: {url}", highlight=False)


@app.command("verify")
@cli_errors
def verify(path: Annotated[Path, typer.Argument(help="a release directory or its .tar.gz")]) -> None:
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
