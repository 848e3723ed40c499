"""torchrun process groups and the all-gather that keeps gradients (for globally gathered negatives)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn


@dataclass(frozen=True)
class World:
    """This process's place: rank, world size, local rank and device."""

    rank: int
    size: int
    local_rank: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup(device: str = "auto", cpu_threads: int | None = None) -> World:
    """Join the torchrun process group if there is one (nccl on CUDA, gloo on the CPU); else a world of one.
    On the CPU each rank gets `cpu_threads` torch threads (default: the cores shared between the ranks)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    dev = torch.device("cuda", local) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    if size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    if not use_cuda and (cpu_threads or size > 1):
        torch.set_num_threads(cpu_threads or max(1, (os.cpu_count() or 1) // size))
    return World(rank, size, local, dev)


def teardown() -> None:
    """Leave the process group (if joined)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def gather(x: torch.Tensor) -> torch.Tensor:
    """All ranks' `x` concatenated on dim 0 in rank order, differentiable (the backward sums every rank's grads)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    return torch.cat(dist_fn.all_gather(x), dim=0)


def rank_offset(local_batch: int) -> int:
    """Where this rank's rows start in a `gather`ed batch of equal per-rank batches."""
    if not (dist.is_available() and dist.is_initialized()):
        return 0
    return dist.get_rank() * local_batch


def barrier() -> None:
    """Wait for every rank (no-op alone)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
