"""Ctrl-C stops `is4 build` within a few seconds (exit 130), and the next build resumes to the bytes of a run that
was never interrupted; the stages it finds cached say so instead of reprinting the first run's counts."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import yaml

from is4.manifests.journal import Journal
from tests.support import IS4, ROOT, cached_stages, prefect_env

JOURNAL = "state/generate/shard-0-of-1.jsonl"
STOP_WITHIN_S = 15.0  # the CLI gives the run 3 s to unwind; the rest is slack for a loaded machine


def _config(tmp_path: Path) -> Path:
    config = yaml.safe_load((ROOT / "configs/demo.yaml").read_text())
    config["stages"] = ["categories", "prompts", "generate"]
    config["categories"]["overrides"] = str(ROOT / "configs/category_overrides.yaml")
    config["prompts"]["categories"] = ["cello", "dog"]  # 9 images
    # In 9 groups of one, each slow enough (many denoising steps) that the 3-s grace cannot finish the stage even on
    # a quiet machine: an interrupt after the first leaves work to resume.
    config["generate"]["batch_size"] = 1
    config["generate"]["steps"] = 30
    path = tmp_path / "interrupt.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _wait_for_line(path: Path, process: subprocess.Popen, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while not (path.is_file() and path.read_text().count("\n") >= 1):
        assert process.poll() is None, f"the build ended ({process.returncode}) before generating an image"
        assert time.monotonic() < deadline, "no image was generated in time"
        time.sleep(0.1)


def test_ctrl_c_stops_generate_promptly_and_the_rerun_resumes_to_the_same_bytes(tmp_path: Path) -> None:
    config, work, env = _config(tmp_path), tmp_path / "work", prefect_env(tmp_path / "prefect-home", COLUMNS="200")
    build = [IS4, "build", "--config", str(config), "--workdir", str(work)]
    # SIGINT as a terminal's Ctrl-C delivers it (a background job of a script would start with it ignored).
    process = subprocess.Popen(
        build,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        _wait_for_line(work / JOURNAL, process)
        sent = time.monotonic()
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=120)
        stopped_after = time.monotonic() - sent
    finally:
        process.kill()
    assert process.returncode == 130, output[-3000:]
    assert stopped_after < STOP_WITHIN_S, f"took {stopped_after:.1f} s to stop"
    assert "interrupted" in output and "run the same command again" in output
    done = Journal(work / JOURNAL, "image_id").load()
    assert 0 < len(done) < 9, "the interrupt stopped generate part way"
    assert all((work / rec["image_path"]).is_file() for rec in done.values()), "every journaled image is on disk"

    resumed = subprocess.run(build, capture_output=True, text=True, timeout=600, env=env)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    for stage in ("categories", "prompts"):
        assert stage in cached_stages(resumed.stdout), resumed.stdout[-3000:]
    assert "by_source" not in resumed.stdout, "a cached stage reprinted the first run's counts"

    reference = tmp_path / "reference"
    for stage in ("categories", "prompts", "generate"):
        clean = subprocess.run(
            [IS4, stage, "--config", str(config), "--workdir", str(reference)],
            capture_output=True,
            text=True,
            timeout=600,
            env=env,
        )
        assert clean.returncode == 0, clean.stderr
    images = sorted(p.relative_to(reference) for p in (reference / "media/images").glob("*.png"))
    assert len(images) == 9
    assert sorted(p.relative_to(work) for p in (work / "media/images").glob("*.png")) == images
    for rel in [Path("manifests/images.parquet"), *images]:
        assert (work / rel).read_bytes() == (reference / rel).read_bytes(), rel
