"""`is4 build` (the whole `build-is4` flow in-process) and `is4 serve` (its Prefect deployment)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from is4.cli._common import SetOption, cli_errors, console


@cli_errors
def build(
    config: Annotated[Path, typer.Option(help="build config (YAML), e.g. configs/demo.yaml")],
    workdir: Annotated[Path | None, typer.Option(help="work directory (default: the config's workdir)")] = None,
    overrides: SetOption = None,
) -> None:
    """Run the whole `build-is4` flow in-process (the Prefect API in PREFECT_API_URL, else a temporary local one
    for the run; nothing to start by hand)."""
    from is4.api import build as run_build
    from is4.config import load_config
    from is4.pipeline.summary import build_summary

    results = run_build(config, workdir, overrides or ())
    cfg = load_config(config, overrides or ())
    work = Path(results["workdir"])
    ran = [name for name, summary in results.items() if isinstance(summary, dict)]  # stages and steps (export)
    console.rule("build-is4 finished")
    console.print(f"work directory: {work}", highlight=False)
    cached = [name for name in ran if results[name].get("cached")]
    fresh = [name for name in ran if name not in cached]
    console.print(f"{len(ran)} stages done", highlight=False)
    console.print(f"  ran: {', '.join(fresh) or '-'}", highlight=False, soft_wrap=True)
    console.print(
        f"  cached: {', '.join(cached) or '-'} (inputs unchanged, outputs intact)", highlight=False, soft_wrap=True
    )
    for line in build_summary(work, cfg):
        console.print(f"  {line}", highlight=False)
    console.print(
        f"log (warnings, tracebacks): {results['log']}; per-stage counts: {work / 'reports'}", highlight=False
    )


@cli_errors
def serve(
    config: Annotated[Path, typer.Option(help="build config the deployment runs with")],
    name: Annotated[str, typer.Option(help="deployment name: run it as 'build-is4/<name>'")] = "default",
    workdir: Annotated[Path | None, typer.Option(help="work directory (default: the config's workdir)")] = None,
    overrides: SetOption = None,
) -> None:
    """Serve a deployment of `build-is4` to the Prefect API in PREFECT_API_URL (runs until stopped)."""
    from is4.config import load_config

    load_config(config, overrides or ())
    from is4.flows.build import build_is4

    params = {
        "config_path": str(config.resolve()),
        "workdir": str(workdir.resolve()) if workdir else None,
        "overrides": overrides or None,
    }
    build_is4.serve(name=name, parameters=params)
