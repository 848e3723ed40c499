"""Same-size damage with the mtime put back is caught before a release ships (issue 21 item 6).

The build's content check hashes a file again only when its size, mtime or inode changed. What a release ships is
hashed from its bytes and compared with the checksum recorded when it was made; `deep_check` (`is4 manifests
--deep`) does the same for a whole work directory on demand. A damaged file is removed, so the next build redoes it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from is4.config import load_config
from is4.manifests.io import read_manifest
from is4.pipeline.integrity import deep_check
from is4.pipeline.registry import stage
from is4.pipeline.stage import manifest_intact, stage_record
from tests.support import DEMO, DemoBuild, prefect_env, tree
from tests.support.demo_builds import build, copy, variant

pytestmark = pytest.mark.timeout(3600)


def shipped_wav(work: Path) -> Path:
    """The wav of a clip the release ships (matched to an instance)."""
    clip_id = sorted(read_manifest(work, "instances")["clip_id"])[0]
    clips = read_manifest(work, "clips").set_index("clip_id")
    return work / str(clips.loc[clip_id, "audio_path"])


def remember_hashes(work: Path) -> None:
    """Let the copy's hash cache know its files (a copy has new inodes, so the stat shortcut would not apply yet)."""
    assert manifest_intact(work, "clips", ("source_path",), stage_record(work, "ingest").get("clips"))


def damage_in_place(path: Path) -> bytes:
    """Flip bytes in the middle of the file, same size, mtime put back (`touch -r`); returns the original bytes."""
    original = path.read_bytes()
    st = path.stat()
    with open(path, "r+b") as fh:
        fh.seek(len(original) // 2)
        fh.write(bytes(b ^ 0xFF for b in original[len(original) // 2 : len(original) // 2 + 64]))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    return original


def test_deep_check_finds_what_the_stat_check_misses(demo_build: DemoBuild, tmp_path: Path) -> None:
    work = copy(demo_build.work, tmp_path / "work")
    remember_hashes(work)
    wav = shipped_wav(work)
    damage_in_place(wav)
    record = stage_record(work, "ingest").get("clips")
    assert manifest_intact(work, "clips", ("source_path",), record)  # the stat shortcut: taken as unchanged
    assert wav.is_file()
    rel = wav.relative_to(work).as_posix()
    found = deep_check(work)
    assert found["clips"] == [rel]  # damaged: removed, so the next build makes it again
    assert not wav.exists()
    assert all(files == [rel] for files in found.values())  # other manifests listing it (instances) find it missing
    assert deep_check(work)["clips"] == [rel]  # missing is still reported


def test_a_release_never_ships_a_damaged_file(demo_build: DemoBuild, tmp_path: Path) -> None:
    work_a, before = demo_build.work, demo_build.tree
    work = copy(work_a, tmp_path / "work")
    remember_hashes(work)
    wav = shipped_wav(work)
    original = damage_in_place(wav)
    retitled = variant(tmp_path, "retitled", {"release": {"title": "IS4 (retitled)"}})  # the release must run
    done = build(retitled, work, prefect_env(demo_build.prefect_home))
    assert done.returncode == 2, done.stdout[-2000:]
    error = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert error and wav.relative_to(work).as_posix() in error[-1], done.stderr[-2000:]
    done = build(
        DEMO, work, prefect_env(demo_build.prefect_home)
    )  # the damaged wav was removed: ingest makes it again, the release ships
    assert done.returncode == 0, done.stderr[-3000:]
    assert wav.read_bytes() == original
    assert tree(work) == before
    assert stage("release").outputs_intact(work, load_config(DEMO))
