"""`is4 build` (the whole `build-is4` flow in-process) and `is4 serve` (its Prefect deployment)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from is4.cli._common import cli_errors, console, print_summary, writing


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
    with writing(cfg, Path(workdir or cfg.workdir).expanduser().resolve(), "is4 build") as work:
        from is4.flows.build import build_is4
        from is4.flows.logs import build_log
        from is4.flows.server import prefect_api
        from is4.flows.tasks import PREFECT_STATE_DIR

        # The temporary server's records stay with the work directory; an error ends in one line naming the log.
        with prefect_api(work / PREFECT_STATE_DIR / "server.db"), build_log(work):
            results = build_is4(config_path=str(config.resolve()), workdir=str(work))
    console.rule("build-is4 finished")
    console.print(f"work directory: {results['workdir']}")
    for stage, summary in results.items():
        if isinstance(summary, dict) and summary.get("cached"):
            console.print(
                f"{stage}: cached (its outputs are intact and its inputs unchanged: not run again)", highlight=False
            )
        elif isinstance(summary, dict):
            print_summary(stage, summary)


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
