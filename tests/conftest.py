"""Shared fixtures: synthetic videos with known picture/tone timelines, served from a loopback HTTP server."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest

from is4.pipeline.demo.media_server import MediaServer, RangeRequestHandler
from is4.pipeline.demo.synthetic_media import Segment, make_corrupt_file, make_video

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# Source videos of 30 s: the colour and tone change every 5 s, so any 10-s section has a known midpoint frame.
COLOURS = ("#ff0000", "#00ff00", "#0000ff", "#ffffff", "#ffff00", "#00ffff")
TONES = (400.0, 700.0, 1000.0, 1300.0, 1600.0, 1900.0)
SEGMENT_S = 5.0

GOOD_IDS = ("goodVideo01", "goodVideo02", "goodVideo03")
SILENT_ID = "silentVid01"
CORRUPT_ID = "corruptVid1"
SLOW_ID = "slowVideo01"
MISSING_ID = "missingVid1"
PRIVATE_ID = "privateVid1"
SHORT_ID = "shortVideo1"  # 27 s long: a section starting at 20 s has 7 s of media


def segment_at(t: float) -> int:
    """Index of the 5-s segment shown at time `t` of a source video."""
    return int(t // SEGMENT_S)


class FaultInjectingHandler(RangeRequestHandler):
    """Adds the failure modes of real video hosts: a stalled server and a private video."""

    def do_GET(self) -> None:  # noqa: N802
        if SLOW_ID in self.path:
            time.sleep(30)
        if PRIVATE_ID in self.path:
            self.send_error(403, "Private video. Sign in if you've been granted access to this video")
            return
        super().do_GET()


@pytest.fixture(scope="session")
def video_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("videos")
    segments = [Segment(SEGMENT_S, c, f) for c, f in zip(COLOURS, TONES)]
    for ytid in GOOD_IDS + (SLOW_ID,):
        make_video(root / f"{ytid}.mp4", segments, size=(160, 120))
    make_video(root / f"{SILENT_ID}.mp4", [Segment(30.0, "#808080", None)], size=(160, 120))
    make_video(
        root / f"{SHORT_ID}.mp4",
        [Segment(SEGMENT_S, c, f) for c, f in zip(COLOURS[:5], TONES[:5])] + [Segment(2.0, COLOURS[5], TONES[5])],
        size=(160, 120),
    )
    make_corrupt_file(root / f"{CORRUPT_ID}.mp4", size=200_000)
    return root


@pytest.fixture()
def media_server(video_dir: Path):
    with MediaServer(video_dir, handler=FaultInjectingHandler) as server:
        yield server


@pytest.fixture(scope="session", autouse=True)
def fiftyone_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One embedded MongoDB data directory for the whole session, in the environment so subprocesses use it too.

    FiftyOne's embedded database is one service per user that every process attaches to; the tests keep theirs
    out of the user's home and share it.
    """
    path = tmp_path_factory.getbasetemp() / "fiftyone-db"
    os.environ["FIFTYONE_DATABASE_DIR"] = str(path)
    os.environ["FIFTYONE_DO_NOT_TRACK"] = "true"
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def demo_build(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """One clean `is4 build --config configs/demo.yaml` for the session and the sha256 of what it made for users
    (`tests/demo_builds.py`). A test that changes it either works on a copy (whose path misses every cache key) or
    leaves it as it found it, byte for byte (the cache tests, which need this very path)."""
    from tests.demo_builds import DEMO, build, tree

    work = tmp_path_factory.mktemp("demo-build") / "work"
    done = build(DEMO, work)
    assert done.returncode == 0, done.stderr[-3000:]
    return work, tree(work)
