"""The method-agnostic contract between the training engine and a method (alignment, ACL, ...).

A method is a `TrainMethod` subclass registered in `registry.METHODS` under the name `train.method` selects. The engine
(`is4.trainers.engine`) owns everything generic: process group, device, sampler, loader, optimiser, AMP, the DDP
wrapper, checkpoints, resume, the metrics log and the evaluation hook. A method owns its model, data view and losses:

- `build_model()` -> an `nn.Module` whose `forward(batch)` returns a dict of scalar loss terms with the total under
  `"loss"` (the other terms are logged). The engine calls it THROUGH the DDP wrapper, so gradients are all-reduced
  (averaged over ranks). Contrastive negatives are gathered from every rank with `is4.trainers.dist.gather` (which
  keeps gradients): with a per-rank loss that is a mean over the rank's own anchors against the gathered batch, 2
  ranks x B/2 give the gradients of 1 process x B. The model is built on the CPU after `torch.manual_seed(seed)`;
  the engine moves it to the device. Frozen parts set `requires_grad_(False)` themselves.
- `train_dataset(workdir)` -> a `torch.utils.data.Dataset` of items (dicts of tensors / numbers / strings) with a
  `set_epoch(epoch)` method; every random choice of an item comes from `trainers.data.item_rng(seed, epoch,
  clip_id, view)`, so items do not depend on worker count, rank, order or resume. `collate(items)` makes a batch
  (default: `torch.utils.data.default_collate`). Build it from `trainers.data.ClipIndex` / `AVClips`.
- `optimiser_defaults`: the published optimiser (`adam` / `adamw`), lr and weight decay, used where the config leaves
  them unset; `get_method` resolves them, so the method's `cfg` (and the engine's) holds the values a run uses.
- `trainable_parameters(model)` -> what the optimiser steps (default: every parameter with `requires_grad`).
- `saved_state(model)` / `load_saved_state(model, state)` -> the tensors a checkpoint keeps (default: the whole
  `state_dict`; ACL keeps only its trainable parts) and their strict reload. Checkpoints are read with
  `torch.load(weights_only=True)`: the state must be tensors in (nested) dicts.
- `export(model, path)` / `import_checkpoint(model, path)` -> the authors' published file format (alignment:
  `{"model_state_dict": {"module.imgnet.*", "module.audnet.*"}}`), so released checkpoints score through
  `is4 predict` and ours load in the authors' code.
- `eval_item(frame, wav, sample_rate)` -> the test-time inputs of one release instance (frame: uint8 HxWx3 RGB,
  wav: float32 mono in [-1, 1]); `heatmaps(model, batch)` -> (B, h, w) float tensor, higher = more likely the
  sounding object, covering the whole frame at any resolution (the harness resizes; `is4.trainers.predict` writes
  the `.npz` that `is4 eval` reads).
- `embeddings(model, batch)` (optional) -> `{kind: (audio (B, D), image (B, D))}` for a batch of `eval_item`s, the
  features retrieval and alignment score (`is4.trainers.embed` writes the `.npz` that `is4 eval --task retrieval`
  reads); a method without embeddings raises `TrainError`.

Bad inputs raise `TrainError` (a `FatalError`): one line naming the file, row or setting.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np
import torch
from torch import nn
from torch.utils.data import default_collate

from is4.config import TrainConfig
from is4.manifests.errors import FatalError
from is4.trainers.registry import METHODS, method_names


class TrainError(FatalError, ValueError):
    """A training run cannot start or go on: bad config, data or checkpoint (the message names it)."""


class EpochDataset(Protocol):
    """What `train_dataset` returns: a map-style torch Dataset whose items depend on the epoch it is set to."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int, /) -> dict[str, Any]: ...

    def set_epoch(self, epoch: int) -> None: ...


class TrainMethod(ABC):
    """One training method: its model, data view, losses, checkpoint formats and inference heatmaps."""

    name: ClassVar[str]
    # The published optimiser of the method: what `train.optimizer` / `lr` / `weight_decay` left unset (None) mean.
    optimiser_defaults: ClassVar[dict[str, Any]] = {"optimizer": "adam", "lr": 1e-4, "weight_decay": 0.0}

    def __init__(self, cfg: TrainConfig, seed: int):
        self.cfg = cfg
        self.seed = seed

    @abstractmethod
    def build_model(self) -> nn.Module:
        """The model; `forward(batch) -> {"loss": total, <term>: value, ...}` (scalar tensors)."""

    @abstractmethod
    def train_dataset(self, workdir: Path) -> EpochDataset:
        """The training items of `workdir`'s manifests (a Dataset with `set_epoch(epoch)`)."""

    def collate(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        """A batch from dataset items."""
        return default_collate(items)

    def trainable_parameters(self, model: nn.Module) -> list[nn.Parameter]:
        """The parameters the optimiser steps."""
        return [p for p in model.parameters() if p.requires_grad]

    def saved_state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The tensors a checkpoint keeps."""
        return model.state_dict()

    def load_saved_state(self, model: nn.Module, state: dict[str, torch.Tensor]) -> None:
        """Load what `saved_state` returned (strict)."""
        model.load_state_dict(state, strict=True)

    @abstractmethod
    def export(self, model: nn.Module, path: Path) -> None:
        """Write the model in the authors' published checkpoint format."""

    @abstractmethod
    def import_checkpoint(self, model: nn.Module, path: Path) -> None:
        """Load an authors'-format checkpoint into `model` (weights_only=True)."""

    @abstractmethod
    def eval_item(self, frame: np.ndarray, wav: np.ndarray, sample_rate: int) -> dict[str, torch.Tensor]:
        """The test-time inputs of one instance (collated by `collate`)."""

    @abstractmethod
    def heatmaps(self, model: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        """(B, h, w) maps for a batch of `eval_item`s; `model` is unwrapped and in eval mode."""

    def embeddings(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """{kind: (audio (B, D), image (B, D))} for a batch of `eval_item`s (e.g. "backbone", "projected")."""
        raise TrainError(f"the {self.name} method gives no embeddings (retrieval and alignment need them)")


def get_method(cfg: TrainConfig, seed: int, name: str | None = None) -> TrainMethod:
    """The method `name` (default `cfg.method`) set up with `cfg`, whose unset optimiser settings are filled with the
    method's `optimiser_defaults` (the method's `cfg` is that resolved config); an unknown name is a `TrainError`."""
    name = name or cfg.method
    if name not in METHODS:
        raise TrainError(f"unknown training method {name!r} (known: {', '.join(method_names())})")
    module, _, cls_name = METHODS[name].partition(":")
    cls = getattr(importlib.import_module(module), cls_name)
    unset = {k: v for k, v in cls.optimiser_defaults.items() if getattr(cfg, k) is None}
    return cls(cfg.model_copy(update={"method": name, **unset}), seed)
