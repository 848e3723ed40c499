"""Shared fixtures: synthetic videos with known picture/tone timelines, served from a loopback HTTP server; one demo
build and the tiny models for the whole session (the helpers they use are in tests/support.py)."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import prefect.main  # noqa: F401 - see below
import pytest

from is4.pipeline.demo.media_server import MediaServer, RangeRequestHandler
from is4.pipeline.demo.synthetic_media import Segment, make_corrupt_file, make_video
from tests.support import DemoBuild, TinyModels, build_demo, copy_work, prefect_env, tree

# Prefect configures logging when `prefect.main` is first imported (`from prefect import flow` loads it), binding its
# console handlers (the root logger's among them) to the sys.stderr of that moment. Imported first inside a CliRunner
# invoke (`is4 build` refused by its config), that is the runner's stream, closed after the invoke, and every later
# log record fails the test that emits it; so Prefect is imported here, once, at session start.

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # Under pytest-xdist every worker and each process it starts gets one torch/OpenMP thread: two workers with the
    # default thread count each (the cores) oversubscribe the machine, and small torch ops then spend their time in
    # thread synchronisation (the Ctrl-C test took 264 s instead of 49).
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)

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
    out of the user's home and share it. Under pytest-xdist the workers share one too (the session's common temporary
    root): FiftyOne attaches every process to the running service whatever its `database_dir` says.
    """
    base = tmp_path_factory.getbasetemp()
    path = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "fiftyone-db"
    os.environ["FIFTYONE_DATABASE_DIR"] = str(path)
    os.environ["FIFTYONE_DO_NOT_TRACK"] = "true"
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def demo_build(tmp_path_factory: pytest.TempPathFactory) -> DemoBuild:
    """One real demo build for the session. Read it; to damage or rebuild it, take `demo_copy`.

    The one exception is test_demo_build's rerun, which must run in place (Prefect's cache keys hold the work
    directory) and asserts that it leaves every file as it was.
    """
    root = tmp_path_factory.mktemp("demo")
    work, home = root / "work", root / "prefect-home"
    result = build_demo(work, prefect_env(home))
    return DemoBuild(work, home, result, tree(work) if result.returncode == 0 else {})


@pytest.fixture()
def demo_copy(demo_build: DemoBuild, tmp_path: Path) -> Path:
    """A private copy of the session's demo build (`cp -a`: links kept), to damage and rebuild."""
    assert demo_build.result.returncode == 0, demo_build.result.stderr[-3000:]
    return copy_work(demo_build.work, tmp_path / "work")


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module's tests (`pytestmark = pytest.mark.usefixtures("one_torch_thread")`): with tiny
    models, extra threads only spin on a shared machine."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> TinyModels:
    """The tiny random-weight models, each built once per session on first use."""
    return TinyModels(tmp_path_factory.mktemp("tiny-models"))


# The modules whose tests read, copy or rebuild in place the session's demo build. Under pytest-xdist
# (`-n 2 --dist loadgroup`, the README's test command) they all run on one worker, one after another, so the build
# is made once and the tests that change it in place never race; everything else is spread over the workers test by
# test. (xdist's own `xdist_group` marker cannot do this under pytest 9: it rewrites a node id pytest no longer
# reads.) A test elsewhere that takes `demo_build` or `demo_copy` is refused at collection.
DEMO_BUILD_MODULES = frozenset(
    f"tests/e2e/test_{name}.py"
    for name in (
        "cache_provenance",
        "damaged_build",
        "decision_log_build",
        "deep_check",
        "demo_build",
        "flow_errors",
        "release_reproducible",
        "torn_journals",
    )
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if {"demo_build", "demo_copy"} & set(getattr(item, "fixturenames", ())):
            module = item.nodeid.split("::", 1)[0]
            if module not in DEMO_BUILD_MODULES:
                raise pytest.UsageError(
                    f"{item.nodeid} uses the session's demo build: add {module} to DEMO_BUILD_MODULES"
                )


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object | None:
    """`--dist loadgroup` with DEMO_BUILD_MODULES as one group (see above)."""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadGroupScheduling

    class DemoBuildScheduling(LoadGroupScheduling):
        def _split_scope(self, nodeid: str) -> str:
            if nodeid.split("::", 1)[0] in DEMO_BUILD_MODULES:
                return "demo-build"
            return super()._split_scope(nodeid)

    return DemoBuildScheduling(config, log)  # type: ignore[arg-type]
