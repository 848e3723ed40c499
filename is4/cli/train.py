"""`is4 train` (a localisation method on the manifests, DDP under torchrun), `is4 serve-train` / `is4 deploy-train`
(the `train` Prefect flow as a deployment) and `is4 predict` (heatmaps)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from is4.cli._common import (
    ConfigOption,
    SetOption,
    WorkdirOption,
    cli_errors,
    config_and_workdir,
    print_summary,
    progress_bar,
)
from is4.manifests.inputs import check_readable
from is4.trainers.registry import method_names

T = TypeVar("T")


@cli_errors
def train(
    config: Annotated[Path, typer.Option(help="build config (YAML) with a `train` section")],
    workdir: WorkdirOption = None,
    method: Annotated[
        str | None, typer.Option(help=f"training method: {', '.join(method_names())} (default: train.method)")
    ] = None,
    run: Annotated[
        Path | None,
        typer.Option(
            "--run",
            "--run-dir",
            help="run directory (default: WORK/runs/<method>-<config hash>); under torchrun write --run-dir "
            "(torchrun takes --run for its --run-path)",
        ),
    ] = None,
    resume: Annotated[bool, typer.Option(help="continue the run from its last checkpoint")] = False,
    overrides: SetOption = None,
) -> None:
    """Train a localisation method on the work directory's manifests (multi-process: `torchrun --nproc_per_node N
    -m is4.cli train ...`); checkpoints, metrics and per-epoch scores go to the run directory."""
    from is4.trainers.engine import train as run_training

    cfg, work = config_and_workdir(config, workdir, overrides)
    rank0 = os.environ.get("RANK", "0") == "0"
    summary = run_training(
        cfg.train, work, seed=cfg.seed, run_dir=run, method_name=method, resume=resume, progress=rank0
    )
    if rank0:
        last = summary.pop("last") or {}
        print_summary("train", {**summary, **{f"last {k}": v for k, v in last.items() if k != "epoch"}})


TrainConfigOption = Annotated[Path, typer.Option(help="build config (YAML) with a `train` section")]
DeploymentOption = Annotated[str, typer.Option(help="deployment name: run it as 'train/<name>'")]
NprocOption = Annotated[int, typer.Option(min=1, help="torchrun ranks per flow run (1: in the flow's process)")]


@cli_errors
def serve_train(config: TrainConfigOption, name: DeploymentOption = "default", nproc: NprocOption = 1) -> None:
    """Serve a deployment of the `train` flow to the Prefect API in PREFECT_API_URL (runs until stopped)."""
    from is4.config import load_config

    load_config(config)
    from is4.flows.train import serve_train as serve

    serve(str(config), name, nproc=nproc)


@cli_errors
def deploy_train(
    config: TrainConfigOption,
    work_pool: Annotated[str, typer.Option(help="the Prefect work pool whose workers run it (e.g. on GPU machines)")],
    name: DeploymentOption = "default",
    nproc: NprocOption = 1,
) -> None:
    """Register a deployment of the `train` flow with a work pool (its workers run this source tree)."""
    from is4.config import load_config

    load_config(config)
    from is4.flows.train import deploy_train as deploy

    deploy(str(config), work_pool, name, nproc=nproc)


@cli_errors
def predict(
    release_dir: Annotated[Path, typer.Option("--release", help="a release directory or benchmark ground truth")],
    out: Annotated[Path, typer.Option(help="the .npz of heatmaps to write (what `is4 eval --predictions` reads)")],
    run: Annotated[Path | None, typer.Option(help="a run directory of `is4 train`")] = None,
    checkpoint: Annotated[str, typer.Option(help="with --run: best, last, or a checkpoint file")] = "best",
    weights: Annotated[
        Path | None,
        typer.Option(
            help="instead of --run: an authors'-format checkpoint (e.g. SSLalignment's ours_*.pth.tar), shaped by "
            "--config's train section"
        ),
    ] = None,
    config: ConfigOption = None,
    gt: Annotated[str, typer.Option(help="box or mask: which ground truth lists the instances")] = "box",
    batch_size: Annotated[int, typer.Option(help="instances per forward pass")] = 16,
    overrides: SetOption = None,
) -> None:
    """Write one heatmap per benchmark instance with a trained run's model (or the authors' released weights)."""
    from is4.trainers.predict import write_heatmaps

    facts, n = _write_with_model(
        "predict",
        write_heatmaps,
        release_dir,
        out,
        run,
        checkpoint,
        weights,
        config,
        overrides,
        gt=gt,
        batch_size=batch_size,
    )
    print_summary("predict", {**facts, "maps": n, "out": str(out)})


def _model(run: Path | None, checkpoint: str, weights: Path | None, config: Path | None, overrides: list[str] | None):
    """(method, model in eval mode, facts to print) from a training run or an authors'-format checkpoint."""
    from is4.trainers.engine import load_run_model
    from is4.trainers.method import TrainError, get_method

    if (run is None) == (weights is None):
        raise TrainError("give one of --run (a training run) or --weights (an authors'-format checkpoint)")
    if run is not None:
        method, model, ckpt = load_run_model(run, checkpoint)
        return method, model, {"method": ckpt["method"], "epoch": ckpt["epoch"]}
    assert weights is not None
    cfg, _ = config_and_workdir(config, None, overrides, writes=False)
    method = get_method(cfg.train, cfg.seed)
    model = method.build_model()
    method.import_checkpoint(model, weights)
    model.eval()
    return method, model, {"method": cfg.train.method, "weights": str(weights)}


def _write_with_model(
    command: str,
    writer: Callable[..., T],
    release_dir: Path,
    out: Path,
    run: Path | None,
    checkpoint: str,
    weights: Path | None,
    config: Path | None,
    overrides: list[str] | None,
    **options: Any,
) -> tuple[dict[str, Any], T]:
    """Check the files the options name, load the model (`_model`) and run `writer(method, model, release_dir, out,
    **options)` under `command`'s progress bar; (facts to print, what `writer` returned)."""
    check_readable({"--release": release_dir, "--run": run, "--weights": weights, "--config": config})
    method, model, facts = _model(run, checkpoint, weights, config, overrides)
    with progress_bar(command) as progress:
        result = writer(
            method, model, release_dir, out, progress=lambda done, total: progress(done, total, "instances"), **options
        )
    return facts, result


@cli_errors
def embed(
    release_dir: Annotated[Path, typer.Option("--release", help="a release directory or benchmark ground truth")],
    out: Annotated[Path, typer.Option(help="the embeddings .npz to write (what `is4 eval --embeddings` reads)")],
    run: Annotated[Path | None, typer.Option(help="a run directory of `is4 train`")] = None,
    checkpoint: Annotated[str, typer.Option(help="with --run: best, last, or a checkpoint file")] = "best",
    weights: Annotated[
        Path | None,
        typer.Option(help="instead of --run: an authors'-format checkpoint, shaped by --config's train section"),
    ] = None,
    config: ConfigOption = None,
    overrides: SetOption = None,
    batch_size: Annotated[int, typer.Option(help="instances per forward pass")] = 16,
) -> None:
    """Write the audio and image embeddings of every benchmark instance (retrieval, alignment) with a model."""
    from is4.trainers.predict import write_embeddings

    facts, kinds = _write_with_model(
        "embed", write_embeddings, release_dir, out, run, checkpoint, weights, config, overrides, batch_size=batch_size
    )
    note = {"note": "no projection heads in the weights: backbone features only"} if kinds == ["backbone"] else {}
    print_summary("embed", {**facts, "kinds": ", ".join(kinds), "out": str(out), **note})
