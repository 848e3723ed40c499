"""Checks before a run starts: the work directory, the models and the input files of the stages it will run.

Each failure is one `PreflightError` line naming what is wrong and where, raised in well under a second, before any
stage (or Prefect) starts. Models are looked up, never downloaded: a Hub model must be in the local cache when the
Hub is offline (`HF_HUB_OFFLINE`); online, an uncached one must exist on a Hub that answers (its metadata is asked
for, with a short timeout): the stage downloads it.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from is4.config import BuildConfig, ModelRef
from is4.manifests.errors import FatalError
from is4.pipeline.registry import stage as declared

HUB_TIMEOUT_S = 5.0
TINY_PREFIX = "tiny-random:"  # as `pipeline.common.models`, which imports torch (seconds): not needed to fail fast


class PreflightError(FatalError):
    """The run cannot start: its work directory, a model or an input file is not usable."""


def check_workdir(work: Path) -> Path:
    """Create `work` if needed and prove it is a writable directory (a file is written and removed in it)."""
    work = Path(work).expanduser()
    for path in (work, *work.parents):
        if path.exists() and not path.is_dir():
            what = "the work directory" if path == work else f"{path}, a parent of the work directory,"
            raise PreflightError(f"{work}: {what} is a file, not a directory; choose another --workdir or move it")
        if path.is_dir():
            break
    try:
        work.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".is4-write-probe-", dir=work)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise PreflightError(f"{work}: the work directory is not writable ({exc.strerror})") from None
    return work


def _hub_cached(ref: ModelRef) -> bool:
    from huggingface_hub import snapshot_download

    try:
        snapshot_download(repo_id=ref.model_id, revision=ref.revision, local_files_only=True)
    except Exception:  # the hub client raises many types; all mean "not in the cache"
        return False
    return True


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def check_model(ref: ModelRef | None, role: str, stage_name: str) -> None:
    """That the model configured for `role` can be had without a download (see the module's docstring)."""
    where = f"models.{role} (used by stage {stage_name})"
    if ref is None:
        raise PreflightError(f"models.{role} is not configured (stage {stage_name} needs it)")
    model_id = ref.model_id
    if model_id.startswith(TINY_PREFIX):
        from is4.pipeline.common.tiny_models import TINY_BUILDERS  # imports torch, which the stage loads anyway

        kind = model_id.removeprefix(TINY_PREFIX)
        if kind not in TINY_BUILDERS:
            raise PreflightError(
                f"{where}: unknown tiny model kind {kind!r}; known: {', '.join(sorted(TINY_BUILDERS))}"
            )
        return
    local = Path(model_id).expanduser()
    if local.is_dir():
        return
    if model_id.startswith(("/", ".", "~")) or local.exists():
        raise PreflightError(f"{where}: {model_id} is not a model directory")
    if _hub_cached(ref):
        return
    if _hub_offline():
        raise PreflightError(
            f"{where}: {model_id}@{ref.revision} is not in the Hugging Face cache and HF_HUB_OFFLINE is set"
        )
    missing = _hub_missing(ref)
    if missing:
        raise PreflightError(f"{where}: {model_id}@{ref.revision}: {missing}")


def _hub_missing(ref: ModelRef) -> str | None:
    """Why the stage could not download the model (the Hub has no such model or revision, or cannot be reached), or
    None when it can; only the model's metadata is asked for."""
    from huggingface_hub import model_info
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    try:
        model_info(ref.model_id, revision=ref.revision, timeout=HUB_TIMEOUT_S)
    except RevisionNotFoundError:
        return "no such revision on the Hugging Face Hub"
    except RepositoryNotFoundError:
        return "no such model on the Hugging Face Hub (or it is private)"
    except Exception as exc:  # no network, a proxy, a timeout: the download would fail the same way
        return f"not in the Hugging Face cache, and the Hub cannot be reached to download it ({type(exc).__name__})"
    return None


def check_inputs(cfg: BuildConfig, stage_names: Iterable[str]) -> None:
    """That every model and input file the given stages declare is there."""
    for name in stage_names:
        stage = declared(name)
        for role in stage.model_roles(cfg):
            check_model(getattr(cfg.models, role), role, name)
        for label, path in stage.files(cfg).items():
            if path is not None and not Path(path).is_file():
                raise PreflightError(f"{path}: input file {label} of stage {name} does not exist or is not a file")


def preflight(cfg: BuildConfig, work: Path, stage_names: Iterable[str] | None = None) -> Path:
    """Everything a run of `stage_names` (default: the config's stages) needs before it starts; the work directory."""
    work = check_workdir(work)
    check_inputs(cfg, cfg.stages if stage_names is None else stage_names)
    return work
