"""What the tests share: the `is4` command, the demo build, work-directory copies, tiny models, the Prefect
environment, and waiting for (and killing) the processes a test starts.

Test modules import from here (and from conftest's fixtures), never from each other.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from is4.pipeline.common.tiny_models import TINY_BUILDERS
from is4.trainers.beats import build_tiny_beats

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "configs" / "demo.yaml"
SHIPPED = ("manifests", "media", "releases", "exports", "reports")  # what a build makes for users
IS4 = str(Path(sys.executable).parent / "is4")
# A real demo build takes about 45 s on 2 idle cores; a module that runs some sets this as its `pytest.mark.timeout`.
BUILD_TIMEOUT_S = 1800


def prefect_env(home: Path, **extra: str) -> dict[str, str]:
    """The environment for an `is4` process with its own Prefect home and no server URL (a temporary server)."""
    env = os.environ | {"PREFECT_HOME": str(home), "COLUMNS": "400", **extra}
    env.pop("PREFECT_API_URL", None)
    return env


def is4(
    *args: str, env: Mapping[str, str] | None = None, timeout: float = 600, cwd: Path = ROOT
) -> subprocess.CompletedProcess[str]:
    """Run the installed `is4` command (a real process: exit status, stderr, interpreter start-up)."""
    return subprocess.run(
        [IS4, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env=dict(env) if env is not None else os.environ | {"COLUMNS": "400"},
    )


def ingest_cmd(csv: Path, work: Path, url_template: str, *extra: str) -> list[str]:
    """The `is4 ingest` command line of `csv` into `work`, downloading from `url_template`, then `extra` options."""
    return [IS4, "ingest", "--csv", str(csv), "--workdir", str(work), "--url-template", url_template, *extra]


def build_demo(work: Path, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`is4 build --config configs/demo.yaml --workdir WORK`, as the README runs it."""
    return is4("build", "--config", str(DEMO), "--workdir", str(work), env=env, timeout=BUILD_TIMEOUT_S - 300)


def tree(work: Path) -> dict[str, str]:
    """sha256 of every file under the work directory's user-facing folders (`SHIPPED`)."""
    out = {}
    for top in SHIPPED:
        for path in sorted((work / top).rglob("*")):
            if path.is_file():
                out[path.relative_to(work).as_posix()] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


@dataclass(frozen=True)
class DemoBuild:
    """The session's `is4 build --config configs/demo.yaml`: its work directory, Prefect home and process result."""

    work: Path
    prefect_home: Path
    result: subprocess.CompletedProcess[str]
    tree: dict[str, str]  # sha256 of what it made for users, right after the build (`tree`)


def copy_work(source: Path, target: Path) -> Path:
    """A copy of a work directory to damage or rebuild: `cp -a` keeps its symbolic links and the training export's
    hard links (shutil.copytree would turn those into separate files)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["cp", "-a", str(source), str(target)], check=True)
    return target


class TinyModels:
    """The tiny random-weight models (`tiny-random:<kind>`), each built once into `root` when first asked for."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, kind: str) -> Path:
        """The model directory of `kind`, built on first use (as `resolve_model` would build it)."""
        target = self.root / f"tiny-random-{kind}"
        if not target.is_dir():
            staging = self.root / f".{target.name}"
            shutil.rmtree(staging, ignore_errors=True)
            {**TINY_BUILDERS, "beats": build_tiny_beats}[kind](staging, 0)
            staging.rename(target)
        return target

    def install(self, work: Path, *kinds: str) -> Path:
        """Copy the models into `WORK/models/`, where `resolve_model` finds them (same bytes, same revision; a copy,
        so a test may damage it); returns `work`."""
        for kind in kinds:
            source = self.path(kind)
            shutil.copytree(source, work / "models" / source.name, dirs_exist_ok=True)
        return work


def wait_until(
    condition: Callable[[], bool], proc: subprocess.Popen | None = None, timeout: float = 300, every: float = 0.05
) -> bool:
    """Poll `condition` until it holds (True); False once `timeout` passes or `proc` has ended first."""
    deadline = time.monotonic() + timeout
    while not condition():
        if (proc is not None and proc.poll() is not None) or time.monotonic() > deadline:
            return False
        time.sleep(every)
    return True


@contextmanager
def killed_at_exit(proc: subprocess.Popen) -> Iterator[subprocess.Popen]:
    """Hold a process a test started; whatever happens in the block, it is killed (SIGKILL) if still running and
    reaped."""
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=60)


def peak_rss_kib(pid: int) -> int:
    """The peak resident set size of a running process in KiB (`VmHWM` in /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmHWM for process {pid}")


def cached_stages(stdout: str) -> list[str]:
    """The stages an `is4 build` reports as reused from the cache (its `cached: a, b (…)` line)."""
    for line in stdout.splitlines():
        if line.strip().startswith("cached: "):
            names = line.strip().removeprefix("cached: ").split(" (")[0]
            return [] if names == "-" else names.split(", ")
    raise AssertionError(f"no 'cached:' line in the build's output: {stdout[-2000:]}")
