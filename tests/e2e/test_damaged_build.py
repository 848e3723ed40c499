"""Caches check content, not existence (issue 16 item 4), on a copy of the session's demo build.

Every file a manifest lists is checked against the sha256 the manifest records (the images' `sha256`) or the one
its stage recorded when it finished (`WORK/state/outputs/<stage>.json`), sizes and mtimes first: a damaged file is
removed and redone, and the training export (hard links) never keeps it.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from is4.manifests.io import manifest_path, read_manifest
from tests.support import BUILD_TIMEOUT_S, build_demo

EXPORT = Path("exports/vggsound")
pytestmark = pytest.mark.timeout(BUILD_TIMEOUT_S)


def test_damaged_files_are_redone_and_never_exported(demo_copy: Path) -> None:
    work = demo_copy  # `cp -a`: the export's hard links are kept
    clips = read_manifest(work, "clips")
    clip = clips[clips["status"] == "ok"].sort_values("clip_id").iloc[0]
    frame, exported = work / clip["frame_path"], work / EXPORT / "frames" / f"{clip['clip_id']}.jpg"
    mel = work / clip["mel_path"]
    image = work / read_manifest(work, "images").dropna(subset=["image_path"]).iloc[0]["image_path"]
    originals = {p: p.read_bytes() for p in (frame, mel, image)}
    manifests = {t: manifest_path(work, t).read_bytes() for t in ("clips", "images", "instances")}
    release = (work / "releases" / "is4-0.1.0.tar.gz").read_bytes()
    assert os.path.samefile(frame, exported)  # the export hard-links the frame

    garbage = np.random.default_rng(0).bytes(5000)
    frame.write_bytes(garbage)  # `head -c 5000 /dev/urandom > frame`: the export's link sees it too
    assert exported.read_bytes() == garbage
    with open(mel, "r+b") as fh:  # one byte flipped in place, same size
        fh.seek(200)
        fh.write(bytes([fh.read(1)[0] ^ 0xFF]))
    image.write_bytes(garbage)

    done = build_demo(work)
    assert done.returncode == 0, done.stderr[-3000:]
    for path, data in originals.items():
        assert path.read_bytes() == data, f"{path.relative_to(work)} was not redone"
    assert exported.read_bytes() == originals[frame], "the export still shares the damaged frame"
    for table, data in manifests.items():
        assert manifest_path(work, table).read_bytes() == data, table
    assert (work / "releases" / "is4-0.1.0.tar.gz").read_bytes() == release
