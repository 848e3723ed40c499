"""The training engine: torchrun DDP, the loop, AMP, checkpoints and resume, the metrics log, the eval hook.

`train(cfg, workdir)` runs in every process that torchrun starts (or alone): it joins the process group (gloo on the
CPU, nccl on CUDA), builds the method's model and data and the optimiser (`train.optimizer`: Adam, or AdamW with
decoupled weight decay; settings left unset are the method's published ones), wraps the model in DDP and calls the
loss THROUGH the wrapper (so gradients are averaged across ranks; negatives are gathered by the method). Each epoch:

- the sampler's order is a permutation seeded by (seed, epoch); global batch `train.batch_size` is cut from it and
  rank r takes rows r, r + W, ... of each global batch (so W ranks see the same samples per step as one process);
  the last partial batch is dropped; `max_steps_per_epoch` cuts epochs short;
- after the epoch (rank 0): the eval hook writes the release's heatmaps to `RUN/predictions/epoch-{e}.npz`,
  scores them with the `is4 eval` harness and draws `RUN/overlays/epoch-{e}.png` (`overlays`: image, map, ground
  truth, IoU); one line per epoch goes to `RUN/metrics.jsonl` and `RUN/metrics.csv` (rewritten atomically from the
  history the checkpoint carries, so a resumed run writes the same files) and to TensorBoard (`tracking`:
  `RUN/tensorboard/`, and W&B with `train.logger: wandb`);
  `RUN/checkpoints/last.pt` and `epoch-{e}.pt` (model, optimiser, GradScaler, torch RNG, sampler position, history,
  the config and its hash) are written atomically, and `best.pt` when `eval.metric` improved (higher is better;
  the mean training loss, lower is better, when no release is configured).

The resolved settings (the `train` section with every default filled in, and the seed) are written to
`RUN/config.yaml` when the run starts.

`resume=True` continues from `last.pt` when the config hash (the train section and seed less the settings that do not
change the weights: epochs, workers, eval) matches, else a `TrainError` naming the differing keys. On the CPU a
resumed run gives the same weights as an uninterrupted one (tested).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as torch_dist
import yaml
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Sampler

from is4.config import TrainConfig, in_workdir
from is4.manifests.atomic import atomic_path, atomic_write_bytes
from is4.manifests.checksum import json_sha256
from is4.manifests.errors import Is4Error
from is4.manifests.ids import derive_seed
from is4.manifests.inputs import check_readable
from is4.trainers import dist
from is4.trainers.method import TrainError, TrainMethod, get_method
from is4.trainers.tracking import RunLogger

CHECKPOINT_FORMAT = "is4-train/1"
# Settings that cannot change the weights of a given epoch: left out of the resume hash.
# Loader workers start from a fresh server process, not as forks of this one: a fork inherits whatever the caller
# runs (a Prefect flow run's threads and handlers made every forked worker exit 1 at shutdown, issue 21).
_LOADER_CONTEXT = "forkserver"
_NOT_HASHED = ("epochs", "num_workers", "eval", "device", "cpu_threads", "logger", "wandb_project")


def config_hash(cfg: TrainConfig, seed: int) -> tuple[str, dict]:
    """(sha256, the hashed settings) of a run: what `--resume` must find unchanged."""
    data = {k: v for k, v in cfg.model_dump(mode="json").items() if k not in _NOT_HASHED}
    data["seed"] = seed
    return json_sha256(data), data


def default_run_dir(workdir: Path, cfg: TrainConfig, seed: int) -> Path:
    """WORK/runs/<method>-<first 10 hex of the config hash> (of the config with the method's optimiser defaults)."""
    cfg = get_method(cfg, seed).cfg
    return workdir / "runs" / f"{cfg.method}-{config_hash(cfg, seed)[0][:10]}"


class GlobalBatchSampler(Sampler):
    """This rank's share of each global batch of a seeded per-epoch permutation (drop last), from `start` on."""

    def __init__(self, n: int, batch: int, world: int, rank: int, seed: int, steps: int):
        self.n, self.batch, self.world, self.rank, self.seed, self.steps = n, batch, world, rank, seed, steps
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def __len__(self) -> int:
        return self.steps - self.start

    def __iter__(self):
        order = np.random.default_rng(derive_seed(self.seed, "sampler", str(self.epoch))).permutation(self.n)
        for step in range(self.start, self.steps):
            rows = order[step * self.batch : (step + 1) * self.batch]
            yield rows[self.rank :: self.world].tolist()


def build_optimiser(params: list, cfg: TrainConfig) -> torch.optim.Optimizer:
    """`train.optimizer` over `params`: Adam (weight decay as an L2 term in the gradient) or AdamW (decoupled)."""
    assert cfg.lr is not None and cfg.weight_decay is not None, "get_method resolves the method's optimiser settings"
    kind = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return kind(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def _atomic_torch_save(obj: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def load_checkpoint(path: Path) -> dict:
    """A run checkpoint (weights_only=True); a missing or foreign file is a `TrainError`."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise TrainError(f"{path}: no such checkpoint") from None
    except Exception as exc:  # refused unpickling, truncated archive
        raise TrainError(f"{path}: not a loadable checkpoint: {str(exc).splitlines()[0]}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise TrainError(f"{path}: not an is4 training checkpoint (format {CHECKPOINT_FORMAT})")
    return ckpt


def _write_metrics(run: Path, history: list[dict]) -> None:
    atomic_write_bytes(run / "metrics.jsonl", "".join(json.dumps(h, sort_keys=True) + "\n" for h in history).encode())
    keys = sorted({k for h in history for k in h})
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    atomic_write_bytes(run / "metrics.csv", buf.getvalue().encode())


def _better(value: float, best: float | None, higher: bool) -> bool:
    return best is None or (value > best if higher else value < best)


def _progress(enabled: bool):
    if not enabled:
        return contextlib.nullcontext(None)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        transient=False,
    )


def train(
    cfg: TrainConfig,
    workdir: str | Path,
    *,
    seed: int,
    run_dir: str | Path | None = None,
    method_name: str | None = None,
    resume: bool = False,
    progress: bool = True,
) -> dict:
    """Train `cfg.method` on WORK's manifests; returns the run summary (run dir, epochs, last and best scores)."""
    workdir = Path(workdir)
    check_inputs(cfg, workdir, method_name)  # before any model is built or step taken, not after the first epoch
    method = get_method(cfg, seed, method_name)
    cfg = method.cfg  # the optimiser settings the config left unset are the method's
    world = dist.setup(cfg.device, cfg.cpu_threads)
    try:
        return _train(method, cfg, workdir, seed, world, run_dir, resume, progress)
    finally:
        dist.teardown()


def eval_release(cfg: TrainConfig, workdir: Path) -> Path | None:
    """The release the run scores: `train.eval.release`, a relative one inside WORK (`--workdir` included)."""
    return None if cfg.eval.release is None else in_workdir(cfg.eval.release, workdir)


def check_inputs(cfg: TrainConfig, workdir: Path, method_name: str | None = None) -> None:
    """The run's inputs read once up front, so a missing or unreadable one fails in one line naming it: the
    release's ground truth, the id list and the initial weights of the method's section (the manifests are read,
    and named when missing, before any model is built)."""
    from is4.pipeline.evaluation.formats import load_ground_truth

    release = eval_release(cfg, workdir)
    if release is not None:
        try:
            load_ground_truth(release, cfg.eval.gt, protocol=cfg.eval.protocol)
        except Is4Error as exc:
            raise TrainError(f"train.eval.release: {exc}") from None
    section = getattr(cfg, method_name or cfg.method, None)
    check_readable(
        {
            "train.id_list": cfg.id_list,
            f"train.{method_name or cfg.method}.pretrained_vision": getattr(section, "pretrained_vision", None),
        }
    )


def _train(
    method: TrainMethod,
    cfg: TrainConfig,
    workdir: Path,
    seed: int,
    world: dist.World,
    run_dir: str | Path | None,
    resume: bool,
    progress: bool,
) -> dict:
    run = Path(run_dir) if run_dir is not None else default_run_dir(workdir, cfg, seed)
    ckpt_dir = run / "checkpoints"
    digest, hashed = config_hash(cfg, seed)
    if cfg.batch_size % world.size:
        raise TrainError(f"train.batch_size {cfg.batch_size} is not a multiple of the {world.size} processes")
    dataset = method.train_dataset(workdir)
    steps = len(dataset) // cfg.batch_size
    if cfg.max_steps_per_epoch:
        steps = min(steps, cfg.max_steps_per_epoch)
    if steps == 0:
        raise TrainError(f"{len(dataset)} training clips are fewer than train.batch_size {cfg.batch_size}")

    torch.manual_seed(seed)
    model = method.build_model().to(world.device)
    params = method.trainable_parameters(model)
    optimiser = build_optimiser(params, cfg)
    cuda = world.device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=cuda and cfg.amp)
    start_epoch, history, best = 0, [], None

    last = ckpt_dir / "last.pt"
    if last.is_file() and not resume:
        raise TrainError(f"{run}: already has checkpoints; pass --resume to continue it or --run for a new run")
    if resume and last.is_file():
        ckpt = load_checkpoint(last)
        if ckpt["config_hash"] != digest:
            old = ckpt["hashed"]
            diff = sorted(k for k in set(old) | set(hashed) if old.get(k) != hashed.get(k))
            raise TrainError(
                f"{last}: the run was made with other settings ({', '.join(diff)} differ); use a new --run"
            )
        method.load_saved_state(model, ckpt["model"])
        optimiser.load_state_dict(ckpt["optimiser"])
        scaler.load_state_dict(ckpt["scaler"])
        torch.set_rng_state(ckpt["rng"]["torch"])
        if cuda and "cuda" in ckpt["rng"]:
            torch.cuda.set_rng_state(ckpt["rng"]["cuda"], world.device)
        start_epoch, history, best = ckpt["epoch"] + 1, list(ckpt["history"]), ckpt["best"]
    wrapped: torch.nn.Module = model
    if world.size > 1:
        wrapped = DistributedDataParallel(model, device_ids=[world.device.index] if cuda else None)
    if cfg.compile:
        wrapped = torch.compile(wrapped)  # type: ignore[assignment]
    sampler = GlobalBatchSampler(len(dataset), cfg.batch_size, world.size, world.rank, seed, steps)
    loader = DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=cfg.num_workers,
        collate_fn=method.collate,
        pin_memory=cuda,
        multiprocessing_context=_LOADER_CONTEXT if cfg.num_workers else None,
    )
    higher = cfg.eval.release is not None
    metric = cfg.eval.metric if higher else "loss"
    tracker = None
    if world.main:
        run.mkdir(parents=True, exist_ok=True)
        resolved = {"seed": seed, "train": cfg.model_dump(mode="json")}
        atomic_write_bytes(run / "config.yaml", yaml.safe_dump(resolved, sort_keys=True).encode())
        tracker = RunLogger(run, cfg, resolved, start_step=start_epoch * steps)

    with _progress(progress and world.main) as bar, contextlib.ExitStack() as closing:
        if tracker is not None:
            closing.callback(tracker.close)
        task = bar.add_task("train", total=(cfg.epochs - start_epoch) * steps, info="") if bar else None
        for epoch in range(start_epoch, cfg.epochs):
            t0 = time.monotonic()
            dataset.set_epoch(epoch)
            sampler.set_epoch(epoch)
            wrapped.train()
            sums: dict[str, torch.Tensor] = {}
            for batch in loader:
                batch = {
                    k: v.to(world.device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()
                }
                with torch.autocast("cuda", enabled=cuda and cfg.amp):
                    terms = wrapped(batch)
                loss = terms["loss"]
                if not torch.isfinite(loss):
                    raise TrainError(f"epoch {epoch}: the loss is {loss.item()} (lower train.lr?)")
                optimiser.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimiser)
                scaler.update()
                for k, v in terms.items():
                    sums[k] = sums.get(k, 0.0) + v.detach().float()
                if bar and task is not None:
                    bar.update(task, advance=1, info=f"epoch {epoch} loss {loss.item():.4f}")
            record = _epoch_record(sums, steps, world, epoch, cfg, time.monotonic() - t0)
            if world.size > 1:
                record["replica_max_diff"] = _replica_divergence(model)
            scores: dict[str, float] = {}
            sheet = None
            if cfg.eval.release is not None and ((epoch + 1) % cfg.eval.every == 0 or epoch + 1 == cfg.epochs):
                if world.main:
                    scores, sheet = _evaluate(method, model, cfg, eval_release(cfg, workdir), run, epoch)
                    record.update(scores)
                dist.barrier()
            history.append(record)
            value = record.get(metric)
            improved = value is not None and _better(value, best, higher)
            if improved:
                best = value
            if world.main:
                _save(
                    run,
                    method,
                    model,
                    optimiser,
                    scaler,
                    epoch,
                    history,
                    best,
                    digest,
                    hashed,
                    cfg,
                    seed,
                    improved,
                    cuda,
                )
                _write_metrics(run, history)
                if tracker is not None:
                    tracker.log_epoch(record, scores, sheet)
            dist.barrier()
    summary = {
        "run": str(run),
        "epochs": cfg.epochs,
        "steps_per_epoch": steps,
        "world_size": world.size,
        "metric": metric,
        "best": best,
        "last": history[-1] if history else None,
    }
    return summary


def _epoch_record(sums: dict, steps: int, world: dist.World, epoch: int, cfg: TrainConfig, seconds: float) -> dict:
    keys = sorted(sums)
    values = torch.stack([torch.as_tensor(sums[k], device=world.device) for k in keys]) / steps
    if world.size > 1:  # on the device: nccl reduces CUDA tensors only
        torch_dist.all_reduce(values)
        values /= world.size
    values = values.cpu()
    record = {"epoch": epoch, "step": (epoch + 1) * steps, "lr": cfg.lr, "seconds": round(seconds, 3)}
    record.update({k: float(v) for k, v in zip(keys, values)})
    return record


def _replica_divergence(model: torch.nn.Module) -> float:
    """The largest |parameter - rank 0's| over every rank (0.0 when DDP keeps the replicas in step)."""
    flat = torch.cat([p.detach().float().flatten() for p in model.parameters()])
    ref = flat.clone()
    torch_dist.broadcast(ref, 0)
    diff = (flat - ref).abs().max()
    torch_dist.all_reduce(diff, op=torch_dist.ReduceOp.MAX)
    return float(diff)


def _evaluate(
    method: TrainMethod, model: torch.nn.Module, cfg: TrainConfig, release: Path | None, run: Path, epoch: int
) -> tuple[dict[str, float], bytes]:
    """(scores, overlay sheet PNG) of the epoch: its maps in `predictions/`, scored, the sheet in `overlays/`."""
    from is4.pipeline.evaluation import metrics
    from is4.pipeline.evaluation.evaluate import score_file
    from is4.pipeline.evaluation.formats import load_ground_truth
    from is4.trainers.overlays import overlay_sheet
    from is4.trainers.predict import write_heatmaps

    assert release is not None
    out = run / "predictions" / f"epoch-{epoch}.npz"
    write_heatmaps(method, model, release, out, gt=cfg.eval.gt, batch_size=cfg.eval.batch_size)
    protocol = metrics.get_protocol(cfg.eval.protocol)
    scored = score_file(load_ground_truth(release, cfg.eval.gt, protocol=protocol), out, protocol)
    scores = scored.summary
    if cfg.eval.metric not in scores:
        known = ", ".join(k for k, v in scores.items() if isinstance(v, float))
        raise TrainError(f"train.eval.metric {cfg.eval.metric!r} is not a score of this benchmark ({known})")
    sheet = overlay_sheet(release, out, scored)
    atomic_write_bytes(run / "overlays" / f"epoch-{epoch}.png", sheet)
    return {k: float(v) for k, v in scores.items() if isinstance(v, float) and math.isfinite(v)}, sheet


def _save(
    run: Path,
    method: TrainMethod,
    model,
    optimiser,
    scaler,
    epoch: int,
    history: list,
    best,
    digest: str,
    hashed: dict,
    cfg: TrainConfig,
    seed: int,
    improved: bool,
    cuda: bool,
) -> None:
    rng = {"torch": torch.get_rng_state()}
    if cuda:
        rng["cuda"] = torch.cuda.get_rng_state()
    ckpt = {
        "format": CHECKPOINT_FORMAT,
        "method": cfg.method,
        "config": cfg.model_dump(mode="json"),
        "seed": seed,
        "config_hash": digest,
        "hashed": hashed,
        "epoch": epoch,
        "model": method.saved_state(model),
        "optimiser": optimiser.state_dict(),
        "scaler": scaler.state_dict(),
        "rng": rng,
        "history": history,
        "best": best,
        "sampler": {"epoch": epoch + 1, "batch": 0},
    }
    ckpt_dir = run / "checkpoints"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    _atomic_torch_save(ckpt, ckpt_dir / f"epoch-{epoch}.pt")
    _atomic_torch_save(ckpt, ckpt_dir / "last.pt")
    if improved:
        _atomic_torch_save(ckpt, ckpt_dir / "best.pt")


def load_run_model(run: str | Path, which: str = "best") -> tuple[TrainMethod, torch.nn.Module, dict]:
    """(method, model in eval mode, checkpoint) of a run's `best`/`last` checkpoint (or a checkpoint path)."""
    path = Path(which) if which not in ("best", "last") else Path(run) / "checkpoints" / f"{which}.pt"
    if which == "best" and not path.is_file():
        path = Path(run) / "checkpoints" / "last.pt"
    ckpt = load_checkpoint(path)
    cfg = TrainConfig.model_validate(ckpt["config"], strict=False)
    method = get_method(cfg, int(ckpt["seed"]))
    model = method.build_model()
    method.load_saved_state(model, ckpt["model"])
    return method, model.eval(), ckpt
