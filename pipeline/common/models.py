"""Resolve a configured model (`ModelRef`) to a local directory that `from_pretrained` loads, and its revision.

Three kinds of `model_id`, one loading path:
- a Hugging Face id (`facebook/sam-vit-huge`) at a pinned revision: fetched into (or found in) the Hub cache;
  the recorded revision is the commit the snapshot resolved to;
- a local directory in Hugging Face format: the recorded revision is a hash of its files;
- `tiny-random:<kind>`: a tiny random-weight model built from a config into `WORK/models/` (demo and tests).
"""

from __future__ import annotations

import functools
import hashlib
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from is4.config import ModelRef
from is4.manifests.checksum import sha256_file
from is4.manifests.errors import FatalError
from is4.manifests.lock import manifest_lock
from is4.pipeline.common.tiny_models import TINY_BUILDERS

TINY_PREFIX = "tiny-random:"
MODELS_DIR = "models"


class ModelError(FatalError, RuntimeError):
    """A configured model cannot be resolved or loaded."""


@dataclass(frozen=True)
class ResolvedModel:
    """Where a model's files are and which exact revision they are."""

    model_id: str
    path: Path
    revision: str


class LoadedModel:
    """A loaded model that knows its checkpoint: `model_id` and `revision` come from its `ResolvedModel`.

    `close` releases what it holds beyond memory (a subprocess, say; nothing by default); `with` calls it.
    """

    resolved: ResolvedModel

    @property
    def model_id(self) -> str:
        return self.resolved.model_id

    @property
    def revision(self) -> str:
        return self.resolved.revision

    def close(self) -> None:
        """Release what the model holds beyond memory."""

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


@functools.lru_cache(maxsize=4096)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    """sha256 of a file, remembered per process while its size and mtime (the key's other parts) stay the same."""
    return sha256_file(path)


def _sha256_of(file: Path) -> str:
    stat = file.stat()
    return _file_sha256(str(file.resolve()), stat.st_size, stat.st_mtime_ns)


def file_revision(path: Path) -> str:
    """A content hash of one checkpoint file (read in blocks, however many GB), as `sha256:<hex>`."""
    return f"sha256:{_sha256_of(Path(path))[:32]}"


def directory_revision(path: Path) -> str:
    """A content hash of a model directory (file names and bytes), as `sha256:<hex>`."""
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(file.relative_to(path).as_posix().encode() + b"\0")
        digest.update(bytes.fromhex(_sha256_of(file)))
    return f"sha256:{digest.hexdigest()[:32]}"


def _build_tiny(kind: str, workdir: Path, builders: Mapping[str, Callable[[Path, int], Path]]) -> Path:
    builder = builders.get(kind)
    if builder is None:
        raise ModelError(f"unknown tiny model kind {kind!r}; known: {', '.join(sorted(builders))}")
    target = workdir / MODELS_DIR / f"tiny-random-{kind}"
    if target.is_dir():
        return target
    # Shards in threads or processes may ask at once: one builds (torch's seeded RNG is process-global), the rest wait.
    with manifest_lock(workdir, f"tiny-random-{kind}"):
        if target.is_dir():
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            builder(staging, 0)
            staging.rename(target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return target


def _from_hub(ref: ModelRef) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id=ref.model_id, revision=ref.revision))
    except Exception as exc:  # the hub client raises many types; all mean "not available here"
        raise ModelError(
            f"model {ref.model_id}@{ref.revision} is not available: {exc.__class__.__name__}: {exc}"
        ) from None


def resolve_model(
    ref: ModelRef | None,
    workdir: str | Path,
    role: str,
    tiny_builders: Mapping[str, Callable[[Path, int], Path]] = TINY_BUILDERS,
) -> ResolvedModel:
    """The local files and exact revision of the model configured for `role` (e.g. `image_generator`).

    `tiny_builders` builds `tiny-random:<kind>` (a layer above, e.g. the trainers' BEATs, passes its own)."""
    if ref is None:
        raise ModelError(f"models.{role} is not configured")
    workdir = Path(workdir)
    if ref.model_id.startswith(TINY_PREFIX):
        path = _build_tiny(ref.model_id.removeprefix(TINY_PREFIX), workdir, tiny_builders)
        return ResolvedModel(ref.model_id, path, directory_revision(path))
    local = Path(ref.model_id).expanduser()
    if local.is_dir():
        return ResolvedModel(ref.model_id, local, directory_revision(local))
    path = _from_hub(ref)
    return ResolvedModel(ref.model_id, path, path.name)


def torch_device_and_dtype(ref: ModelRef):
    """The torch device and dtype a model should run with; fails clearly when CUDA is asked for but absent."""
    import torch

    if ref.device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelError(f"{ref.model_id} is configured for {ref.device}, but no CUDA device is available")
    dtype = getattr(torch, ref.dtype)
    if ref.device == "cpu" and dtype is torch.float16:
        raise ModelError(f"{ref.model_id}: float16 on the CPU is not supported; use float32 or bfloat16")
    return torch.device(ref.device), dtype


@dataclass(frozen=True)
class Pretrained:
    """A checkpoint loaded for inference: its model, its processor (or tokenizer), its files and how it runs."""

    model: Any
    processor: Any
    resolved: ResolvedModel
    device: Any  # torch.device
    dtype: Any  # torch.dtype


def load_pretrained(
    ref: ModelRef, workdir: str | Path, role: str, model_class: Any, processor_class: Any
) -> Pretrained:
    """Resolve the model configured for `role` and load it with `from_pretrained`: the model in `ref.dtype` on
    `ref.device` in eval mode, and its processor or tokenizer. A checkpoint that does not load raises ModelError."""
    device, dtype = torch_device_and_dtype(ref)
    resolved = resolve_model(ref, workdir, role)
    try:
        processor = processor_class.from_pretrained(resolved.path)
        model = model_class.from_pretrained(resolved.path, dtype=dtype).to(device).eval()
    except Exception as exc:  # transformers raises many types for a checkpoint it cannot load
        raise ModelError(
            f"cannot load {role.replace('_', ' ')} {ref.model_id} from {resolved.path}: {exc.__class__.__name__}: {exc}"
        ) from exc
    return Pretrained(model, processor, resolved, device, dtype)
