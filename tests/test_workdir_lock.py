"""One writing run per work directory (`manifests.lock.workdir_lock`): a second is refused at once, naming the
holder, exit 2; shards started by hand share the directory but never run twice; read-only commands take no lock;
a killed holder leaves no stale lock."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from is4.manifests.lock import WorkdirBusy, workdir_lock
from tests.support import IS4, ROOT, prefect_env


@contextmanager
def held_elsewhere(work: Path, command: str, part: str | None = None) -> Iterator[int]:
    """Another process holding the work directory's lock (as `command`) until the block ends; yields its pid."""
    script = textwrap.dedent(f"""
        import sys, time
        from is4.manifests.lock import workdir_lock
        with workdir_lock({str(work)!r}, {command!r}, part={part!r}):
            print("held", flush=True)
            time.sleep(600)
    """)
    holder = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        yield holder.pid
    finally:
        holder.kill()
        holder.wait()


def _config(tmp_path: Path) -> Path:
    config = tmp_path / "categories.yaml"
    config.write_text(
        yaml.safe_dump(
            {"stages": ["categories"], "categories": {"overrides": str(ROOT / "configs/category_overrides.yaml")}}
        )
    )
    return config


def _is4(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [IS4, *args], capture_output=True, text=True, timeout=300, env=os.environ | {"COLUMNS": "400"}
    )


def test_second_writer_is_refused_naming_the_holder(tmp_path: Path) -> None:
    work = tmp_path / "work"
    with held_elsewhere(work, "is4 build") as pid:
        refused = _is4("categories", "--config", str(_config(tmp_path)), "--workdir", str(work))
        assert refused.returncode == 2, refused.stdout + refused.stderr
        lines = refused.stderr.strip().splitlines()
        assert len(lines) == 1, refused.stderr
        assert f"pid {pid} on {socket.gethostname()}" in lines[0] and "is4 build" in lines[0], lines[0]
        assert not (work / "manifests/categories.parquet").exists(), "the refused run wrote nothing"
        # Read-only commands take no lock.
        listed = _is4("manifests", "--workdir", str(work))
        assert listed.returncode == 0, listed.stderr
    done = _is4("categories", "--config", str(_config(tmp_path)), "--workdir", str(work))
    assert done.returncode == 0, done.stderr
    assert (work / "manifests/categories.parquet").is_file()


def test_shards_by_hand_share_the_directory_but_not_a_shard(tmp_path: Path) -> None:
    work = tmp_path / "work"
    config = ROOT / "configs/demo.yaml"
    with held_elsewhere(work, "is4 generate --shard 0/2", part="shard 0/2 of generate") as pid:
        same = _is4("generate", "--config", str(config), "--workdir", str(work), "--shard", "0/2")
        assert same.returncode == 2 and f"pid {pid}" in same.stderr and "shard 0/2 of generate" in same.stderr, (
            same.stderr
        )
        with workdir_lock(work, "test", part="shard 1/2 of generate"):  # the other shard runs beside it
            pass
        with pytest.raises(WorkdirBusy, match="the work directory is in use"):
            with workdir_lock(work, "is4 build"):
                pass
    with held_elsewhere(work, "is4 build") as pid:
        with pytest.raises(WorkdirBusy, match=f"pid {pid} .*is4 build"):
            with workdir_lock(work, "test", part="shard 1/2 of generate"):
                pass


def test_parts_of_one_csv_ingest_side_by_side_but_not_twice(tmp_path: Path) -> None:
    work, csv = tmp_path / "work", tmp_path / "part-1.csv"
    csv.write_text("")
    with held_elsewhere(work, "is4 ingest", part=f"ingest of {csv.resolve()}") as pid:
        same = _is4("ingest", "--csv", str(csv), "--workdir", str(work))
        assert same.returncode == 2 and f"pid {pid}" in same.stderr and "part-1.csv" in same.stderr, same.stderr
        with workdir_lock(work, "test", part=f"ingest of {tmp_path / 'part-2.csv'}"):
            pass


def test_lock_is_reentrant_in_one_process(tmp_path: Path) -> None:
    with workdir_lock(tmp_path, "outer"):
        with workdir_lock(tmp_path, "inner"):
            pass
        # Still held after the inner block: another process is refused, told about the outer holder.
        script = f"from is4.manifests.lock import workdir_lock\nwith workdir_lock({str(tmp_path)!r}, 'x'):\n    pass\n"
        other = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
        assert other.returncode != 0 and "WorkdirBusy" in other.stderr and "outer" in other.stderr, other.stderr


def test_killed_holder_leaves_no_stale_lock(tmp_path: Path) -> None:
    script = textwrap.dedent(f"""
        import time
        from is4.manifests.lock import workdir_lock
        with workdir_lock({str(tmp_path)!r}, "is4 build"):
            print("held", flush=True)
            time.sleep(600)
    """)
    holder = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    record = (tmp_path / "state/locks/workdir.lock").read_text()
    assert f'"pid": {holder.pid}' in record, "the killed holder's record is still there"
    with workdir_lock(tmp_path, "next run"):  # but the kernel released its lock
        assert '"command": "next run"' in (tmp_path / "state/locks/workdir.lock").read_text()
    assert (tmp_path / "state/locks/workdir.lock").read_text() == "", "a finished holder clears its record"


def test_two_builds_at_once(tmp_path: Path) -> None:
    """The issue's case: a second `is4 build` while one runs is refused before it starts anything."""
    work, config = tmp_path / "work", _config(tmp_path)
    env = prefect_env(tmp_path / "prefect-home")
    build = [IS4, "build", "--config", str(config), "--workdir", str(work)]
    first = subprocess.Popen(build, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        record = work / "state/locks/workdir.lock"
        deadline = time.monotonic() + 120
        while not (record.is_file() and "is4 build" in record.read_text()):
            assert first.poll() is None and time.monotonic() < deadline, "the first build never took the lock"
            time.sleep(0.05)
        second = subprocess.run(build, capture_output=True, text=True, timeout=300, env=env)
        assert second.returncode == 2, second.stdout + second.stderr
        assert f"pid {first.pid}" in second.stderr and "is4 build" in second.stderr, second.stderr
        assert second.stdout == "", "the refused build started nothing"
    finally:
        first.kill()
        first.wait()
