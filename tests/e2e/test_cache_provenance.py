"""A cache hit only when the outputs say they were made by this config (issue 21 item 1).

Prefect's cache record of an earlier run with config A matches A again after a run with config B rewrote the
outputs; the outputs check alone confirms only that the files are complete and unchanged since written. So a stage is
a hit only when the provenance recorded in its outputs (each manifest's metadata, the release's and the export's
record) equals what it would write now. A→B→A and B (killed in the middle) →A must give A's bytes.

The builds run in the session's demo work directory itself, never a copy: the cache key holds the work directory's
path, so in a copy nothing is a cache hit and the stale record this is about never comes into play. Every test
leaves it as the clean build made it (and checks so).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from is4.config import load_config
from is4.manifests.io import read_provenance
from is4.pipeline.registry import EXPORT, REGISTRY
from is4.pipeline.stage import provenance_current
from tests.support import DEMO, ROOT, DemoBuild, cached_stages, prefect_env, tree
from tests.support.demo_builds import build, build_cmd, variant

pytestmark = pytest.mark.timeout(3600)  # several real demo builds on a loaded 2-core machine


def test_every_stage_of_a_clean_build_is_current(demo_build: DemoBuild) -> None:
    """What a build wrote is what it would write again: a second build finds every stage cached, same bytes."""
    work, before = demo_build.work, demo_build.tree
    cfg = load_config(DEMO)
    for stage in (*REGISTRY[1:], EXPORT):  # ingest's key holds the demo csv, known once its source is open
        assert provenance_current(work, stage, stage.provenance(cfg, work)), stage.name
    done = build(DEMO, work, prefect_env(demo_build.prefect_home))
    assert done.returncode == 0, done.stderr[-3000:]
    for stage in (*REGISTRY, EXPORT):
        assert stage.name in cached_stages(done.stdout), (stage.name, done.stdout[-3000:])
    assert tree(work) == before


def test_match_split_reverted_gives_back_the_first_release(demo_build: DemoBuild, tmp_path: Path) -> None:
    """The probe's case: build with `match.splits: [train, test]`, then with the demo config again."""
    work, before = demo_build.work, demo_build.tree
    b = variant(tmp_path, "b", {"match": {"splits": ["train", "test"]}})
    done = build(b, work, prefect_env(demo_build.prefect_home))
    assert done.returncode == 0, done.stderr[-3000:]
    assert read_provenance(work, "instances")["config"]["match"]["splits"] == ["train", "test"]
    done = build(DEMO, work, prefect_env(demo_build.prefect_home))
    assert done.returncode == 0, done.stderr[-3000:]
    assert read_provenance(work, "instances")["config"]["match"]["splits"] == ["test"]
    assert tree(work) == before


def test_build_killed_in_the_middle_of_b_then_a(demo_build: DemoBuild, tmp_path: Path) -> None:
    """B rewrites the instances, then dies (kill -9) before its caption and release: A must not take them."""
    work, before = demo_build.work, demo_build.tree
    b = variant(tmp_path, "b", {"match": {"splits": ["train", "test"]}})
    proc = subprocess.Popen(
        build_cmd(b, work),
        cwd=ROOT,
        env=prefect_env(demo_build.prefect_home),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 1200
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if read_provenance(work, "instances")["config"]["match"]["splits"] == ["train", "test"]:
                    break
            except (OSError, ValueError):
                pass
            time.sleep(0.2)
        assert proc.poll() is None, "B finished before it could be killed"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    done = build(DEMO, work, prefect_env(demo_build.prefect_home))
    assert done.returncode == 0, done.stderr[-3000:]
    assert tree(work) == before
