"""`is4 train` (a localisation method on the manifests, DDP under torchrun) and `is4 predict` (heatmaps)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from is4.cli._common import (
    ConfigOption,
    WorkdirOption,
    cli_errors,
    config_and_workdir,
    print_summary,
    progress_bar,
)


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
            help="run directory (default: WORK/runs/<method>-<config hash>); under torchrun write --run-dir "
            "(torchrun takes --run for its --run-path)",
        ),
    ] = None,
    resume: Annotated[bool, typer.Option(help="continue the run from its last checkpoint")] = False,
) -> None:
    """Train a localisation method on the work directory's manifests (multi-process: `torchrun --nproc_per_node N
    -m is4.cli train ...`); checkpoints, metrics and per-epoch scores go to the run directory."""
    from is4.config import in_workdir
    from is4.trainers.engine import train as run_training

    cfg, work = config_and_workdir(config, workdir)
    release = cfg.train.eval.release
    if release is not None:  # `work/demo/releases/x` in the config means WORK/releases/x under --workdir WORK
        moved = cfg.train.eval.model_copy(update={"release": in_workdir(cfg, release, work)})
        cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"eval": moved})})
    rank0 = os.environ.get("RANK", "0") == "0"
    summary = run_training(
        cfg.train, work, seed=cfg.seed, run_dir=run, method_name=method, resume=resume, progress=rank0
    )
    if rank0:
        last = summary.pop("last") or {}
        print_summary("train", {**summary, **{f"last {k}": v for k, v in last.items() if k != "epoch"}})


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
        cfg, _ = config_and_workdir(config, None)
        method = get_method(cfg.train, cfg.seed)
        model = method.build_model()
        method.import_checkpoint(model, weights)
        model.eval()
        facts = {"method": cfg.train.method, "weights": str(weights)}
    with progress_bar("predict") as progress:
        n = write_heatmaps(
            method,
            model,
            release_dir,
            out,
            gt=gt,
            batch_size=batch_size,
            progress=lambda done, total: progress(done, total, "instances"),
        )
    print_summary("predict", {**facts, "maps": n, "out": str(out)})
