"""Decisions survive (issue 16 item 1), the real `is4 build` on copies of the session's demo build: a deleted or
truncated verification manifest is rebuilt from the decision log with the same bytes, and a build refuses, in one
line saying how to restore, when the log and the manifest are gone but later stages were built from them; the
release ships the log, and restoring it from there gives back the identical release (issue 21 item 5).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from is4.config import load_config
from is4.manifests.decisions import LOG_PATH, log_path
from is4.manifests.io import manifest_path, read_manifest
from is4.pipeline.registry import stage
from is4.pipeline.release.layout import release_paths
from tests.support import BUILD_TIMEOUT_S, DEMO, DemoBuild, build_demo

pytestmark = pytest.mark.timeout(BUILD_TIMEOUT_S)


# What the restore must give back byte for byte (besides the archive): the manifests the release ships.
TRACKED = tuple(f"manifests/{t}.parquet" for t in ("verification", "annotations", "instances"))


def counts(work: Path) -> dict[str, int]:
    return read_manifest(work, "verification")["decision"].value_counts().to_dict()


def test_build_rebuilds_a_deleted_or_truncated_manifest_from_the_log(demo_copy: Path) -> None:
    work = demo_copy
    cfg = load_config(DEMO)
    before = {t: manifest_path(work, t).read_bytes() for t in ("verification", "instances")}
    assert counts(work).get("reject", 0) > 0  # the pre-screen's automatic rejects
    assert stage("prescreen").outputs_intact(work, cfg) and stage("verify").outputs_intact(work, cfg)
    for damage in ("delete", "truncate"):
        path = manifest_path(work, "verification")
        if damage == "delete":
            path.unlink()
        else:
            path.write_bytes(before["verification"][:200])
        # The pre-screen's rows are gone from its outputs: it is not intact (nor is verify), so it runs again.
        assert not stage("prescreen").outputs_intact(work, cfg), damage
        assert not stage("verify").outputs_intact(work, cfg), damage
        done = build_demo(work)
        assert done.returncode == 0, done.stderr[-3000:]
        assert "Traceback" not in done.stderr
        for table, data in before.items():
            assert manifest_path(work, table).read_bytes() == data, f"{damage}: {table} changed: the benchmark moved"


def test_a_lost_log_restored_from_the_release_gives_the_identical_release(
    demo_build: DemoBuild, demo_copy: Path
) -> None:
    """Issue 21 item 5: the release ships the whole decision log; a lost log comes back from it (by itself, or
    copied as the refusal says when the manifest is lost too) with every line, and the release byte for byte
    (restoring only the manifest lost 26 of 77 lines and changed the archive)."""
    work = demo_copy
    release, archive = release_paths(work, load_config(DEMO).release.version)
    log_before = log_path(work).read_bytes()
    before = {rel: (work / rel).read_bytes() for rel in (*TRACKED, archive.relative_to(work))}
    # The pre-screen's rows and the automatic policy's accepts: more lines than images, a history to keep.
    assert len(log_before.splitlines()) > len(read_manifest(work, "verification"))
    assert (release / LOG_PATH).read_bytes() == log_before

    # Only the log lost: the build puts back the release's copy (it is the log the manifest projects).
    log_path(work).unlink()
    done = build_demo(work)
    assert done.returncode == 0, done.stderr[-3000:]
    assert log_path(work).read_bytes() == log_before, "the log was not put back whole"
    for rel, data in before.items():
        assert (work / rel).read_bytes() == data, f"{rel} changed after the log was put back"

    log_path(work).unlink()
    manifest_path(work, "verification").unlink()
    done = build_demo(work)
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "decision log" in errors[0] and "restore" in errors[0], done.stderr[-2000:]
    assert f"a release's {LOG_PATH}" in errors[0], errors[0]
    assert not manifest_path(work, "verification").exists()

    # Restore as the line says: the release's decision log back into the work directory.
    shutil.copyfile(release / LOG_PATH, log_path(work))
    done = build_demo(work)
    assert done.returncode == 0, done.stderr[-3000:]
    assert log_path(work).read_bytes() == log_before, "the restored log lost or changed decisions"
    for rel, data in before.items():
        assert (work / rel).read_bytes() == data, f"{rel} changed after the restore"
    assert counts(work) == counts(demo_build.work)
