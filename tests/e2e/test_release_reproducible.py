"""A byte-reproducible release that is rebuilt when it is not what was built (issue 16 items 2 and 3).

Two clean demo builds in two directories must give the same `is4-0.1.0.tar.gz`; a deleted release folder, an
edited file inside it or a replaced archive must make the release stage run again, and what a killed release left
beside it (`releases/.is4-0.1.0.XXXXXXXX`) is removed by the next build.
"""

from __future__ import annotations

import gzip
import hashlib
import shutil
import tarfile
from pathlib import Path

import pytest

from is4.config import load_config
from is4.pipeline.registry import stage
from is4.pipeline.release import verify_release
from tests.support import BUILD_TIMEOUT_S, DEMO, DemoBuild, build_demo

NAME = "is4-0.1.0"
pytestmark = pytest.mark.timeout(BUILD_TIMEOUT_S)


@pytest.fixture(scope="module")
def builds(demo_build: DemoBuild, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The session's demo build and a second clean one in another directory (nothing may depend on where it was
    built)."""
    assert demo_build.result.returncode == 0, demo_build.result.stderr[-3000:]
    second = tmp_path_factory.mktemp("reproducible") / "second-build"
    done = build_demo(second)
    assert done.returncode == 0, done.stderr[-3000:]
    return demo_build.work, second


def archive(work: Path) -> Path:
    return work / "releases" / f"{NAME}.tar.gz"


def members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {m.name: (tar.extractfile(m).read() if m.isfile() else b"") for m in tar.getmembers()}


def differing(a: Path, b: Path) -> str:
    """Which members of two archives differ (empty when the bytes are the same)."""
    if a.read_bytes() == b.read_bytes():
        return ""
    ma, mb = members(a), members(b)
    differ = sorted(n for n in ma.keys() | mb.keys() if ma.get(n) != mb.get(n))
    return (
        f"the archives differ ({hashlib.sha256(a.read_bytes()).hexdigest()[:12]} vs "
        f"{hashlib.sha256(b.read_bytes()).hexdigest()[:12]}) in: {', '.join(differ) or 'the tar/gzip headers only'}"
    )


def test_two_clean_builds_give_the_same_archive(builds: tuple[Path, Path]) -> None:
    problem = differing(archive(builds[0]), archive(builds[1]))
    assert not problem, problem
    # The automatic decisions carry no wall clock (it used to reach the manifests, croissant.json and SHA256SUMS).
    ver = members(archive(builds[0]))[f"{NAME}/manifests/verification.parquet"]
    assert (
        b"decided_at" in ver
        and hashlib.sha256(ver).hexdigest()
        == hashlib.sha256((builds[1] / "manifests" / "verification.parquet").read_bytes()).hexdigest()
    )


def test_archive_members_are_normalised(builds: tuple[Path, Path]) -> None:
    data = archive(builds[0]).read_bytes()
    assert data[4:8] == b"\0\0\0\0", "the gzip header's mtime is 0"
    with gzip.open(archive(builds[0])) as gz, tarfile.open(fileobj=gz) as tar:
        infos = tar.getmembers()
    names = [m.name for m in infos]
    assert names == sorted(names) and names[0] == NAME
    assert {(m.mtime, m.uid, m.gid, m.uname, m.gname) for m in infos} == {(0, 0, 0, "", "")}
    assert {m.mode for m in infos if m.isdir()} == {0o755} and {m.mode for m in infos if m.isfile()} == {0o644}
    assert all(m.isdir() or m.isfile() for m in infos)


def test_release_runs_again_unless_folder_and_archive_are_what_was_built(
    builds: tuple[Path, Path], demo_copy: Path
) -> None:
    work = demo_copy
    cfg, release = load_config(DEMO), stage("release")
    target, first = work / "releases" / NAME, archive(work).read_bytes()
    assert release.outputs_intact(work, cfg)

    shutil.rmtree(target)  # the folder deleted, the archive still there
    assert not release.outputs_intact(work, cfg)
    shutil.copytree(builds[0] / "releases" / NAME, target)
    assert release.outputs_intact(work, cfg)
    archive(work).write_bytes(first[:-10] + b"0123456789")  # a replaced archive
    assert not release.outputs_intact(work, cfg)
    archive(work).write_bytes(first)

    card = target / "README.md"
    card.write_text(card.read_text(encoding="utf-8") + "\nedited\n", encoding="utf-8")  # an edited file
    assert not release.outputs_intact(work, cfg)
    stale = [work / "releases" / f".{NAME}.k1ll3d_x", work / "releases" / f".{NAME}.old"]
    for path in stale:  # what a killed build leaves: its staging tree, the old tree being swapped out
        (path / "visual_frames").mkdir(parents=True)
        (path / "visual_frames" / "x.jpg").write_bytes(b"half")
    (work / "releases" / f".{NAME}.tar.gz.tmp-abc.gz").write_bytes(b"half")  # a half-written archive
    other = work / "releases" / ".is4-0.1.0-rc1.k1ll3d_x"  # another version's: not ours to remove
    other.mkdir()

    done = build_demo(work)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "edited" not in card.read_text(encoding="utf-8")
    problem = differing(archive(builds[0]), archive(work))
    assert not problem, problem
    assert verify_release(target).ok and release.outputs_intact(work, cfg)
    assert sorted(p.name for p in (work / "releases").iterdir()) == sorted([NAME, f"{NAME}.tar.gz", other.name])
