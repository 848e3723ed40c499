"""The command line that starts `is4 train` as `nproc` DDP ranks on this machine (torchrun, standalone)."""

from __future__ import annotations

import sys
from pathlib import Path


def torchrun_command(
    config: str | Path,
    nproc: int,
    *,
    workdir: Path | None = None,
    run_dir: Path | None = None,
    method: str | None = None,
    resume: bool = False,
) -> list[str]:
    """`python -m torch.distributed.run --standalone --nproc_per_node=N -m is4.cli train --config FILE ...`."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    cmd += ["-m", "is4.cli", "train", "--config", str(config)]
    cmd += ["--workdir", str(workdir)] if workdir is not None else []
    cmd += ["--run-dir", str(run_dir)] if run_dir is not None else []
    cmd += ["--method", method] if method else []
    cmd += ["--resume"] if resume else []
    return cmd
