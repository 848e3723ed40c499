"""The production path: a real Prefect server, `is4 serve` serving the deployment, `prefect deployment run`."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import yaml

from is4.manifests.io import read_manifest
from tests.conftest import free_port
from tests.support import ROOT

BIN = Path(sys.executable).parent


def _wait_for(predicate, timeout: float, what: str, procs: list[subprocess.Popen]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for proc in procs:
            if proc.poll() is not None:
                raise AssertionError(f"{proc.args[:3]} exited with {proc.returncode} while waiting for {what}")
        try:
            if predicate():
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@contextlib.contextmanager
def _process(args: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen]:
    with open(log, "w") as fh:
        proc = subprocess.Popen(args, env=env, stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT)
        try:
            yield proc
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


@contextlib.contextmanager
def _served_deployment(tmp_path: Path, config: dict, name: str) -> Iterator[tuple[str, dict[str, str], Path]]:
    """A Prefect server on a loopback port and `is4 serve` serving `build-is4/<name>`: (api url, env, workdir)."""
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = os.environ | {
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_API_URL": api,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_ENABLED": "false",
        "HF_HUB_OFFLINE": "1",
    }
    config_path = tmp_path / f"{name}.yaml"
    config_path.write_text(yaml.safe_dump(config))
    workdir = tmp_path / "work"
    server_args = [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port), "--no-ui"]
    with _process(server_args, env, tmp_path / "server.log") as server:
        _wait_for(lambda: httpx.get(f"{api}/health", timeout=2).status_code == 200, 120, "the Prefect server", [server])
        serve_args = [
            str(BIN / "is4"),
            "serve",
            "--config",
            str(config_path),
            "--name",
            name,
            "--workdir",
            str(workdir),
        ]
        with _process(serve_args, env, tmp_path / "serve.log") as serve:
            _wait_for(
                lambda: httpx.get(f"{api}/deployments/name/build-is4/{name}", timeout=2).status_code == 200,
                120,
                "the served deployment",
                [server, serve],
            )
            yield api, env, workdir


def test_deployment_runs_on_a_real_prefect_server(tmp_path: Path) -> None:
    config = {
        "profile": "deployment-test",
        "stages": ["ingest"],
        "ingest": {
            "demo_media": {"enabled": True, "labels": ["dog barking"], "clips_per_label": 1, "source_seconds": 10},
            "download": {"workers": 1, "retries": 0},
        },
    }
    with _served_deployment(tmp_path, config, "ci-test") as (_, env, workdir):
        run = subprocess.run(
            [str(BIN / "prefect"), "deployment", "run", "build-is4/ci-test", "--watch", "--watch-timeout", "300"],
            env=env,
            capture_output=True,
            text=True,
            timeout=360,
        )
        assert run.returncode == 0, run.stdout + run.stderr
        assert "Completed" in run.stdout, run.stdout
    clips = read_manifest(workdir, "clips")
    ok = clips[clips["status"] == "ok"]
    assert list(ok["label"]) == ["dog barking"]
    assert (workdir / ok.iloc[0]["audio_path"]).stat().st_size == 44 + 160_000 * 2  # 10 s of 16-bit mono
    assert set(clips["status"]) == {"ok", "invalid", "failed"}  # the demo's injected faults are recorded
    assert (workdir / "exports/vggsound/ids.csv").read_text().splitlines()[1].startswith(ok.iloc[0]["clip_id"])


def _flow_run_state(api: str, flow_run_id: str) -> str:
    return httpx.get(f"{api}/flow_runs/{flow_run_id}", timeout=5).json()["state"]["type"]


def test_build_pauses_for_reviewers_and_resumes_with_their_decisions(tmp_path: Path) -> None:
    """A reviewer's day on the production path: pause after the pre-screen, tag in FiftyOne, `is4 review done`."""
    config = {
        "profile": "review-test",
        "stages": ["categories", "prompts", "generate", "prescreen", "verify", "annotate"],
        "categories": {"overrides": str(ROOT / "configs/category_overrides.yaml")},
        "prompts": {"categories": ["cello", "dog"], "styles": {"realistic": "a photo"}},
        "generate": {"steps": 2, "height": 32, "width": 32, "batch_size": 4, "safety_checker": False},
        "review": {"mode": "human", "port": free_port()},
        "annotate": {"detector_threshold": 0.0},
        "models": {
            "image_generator": {"model_id": "tiny-random:stable-diffusion"},
            "prescreen": {"model_id": "tiny-random:clip"},
            "detector": {"model_id": "tiny-random:owlv2"},
            "segmenter": {"model_id": "tiny-random:sam"},
        },
    }
    with _served_deployment(tmp_path, config, "review-test") as (api, env, workdir):
        started = subprocess.run(
            [str(BIN / "prefect"), "deployment", "run", "build-is4/review-test"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert started.returncode == 0, started.stdout + started.stderr
        runs = httpx.post(f"{api}/flow_runs/filter", json={}, timeout=5).json()
        flow_run_id = runs[0]["id"]
        _wait_for(lambda: _flow_run_state(api, flow_run_id) == "PAUSED", 300, "the build to pause", [])

        images = sorted(read_manifest(workdir, "images")["image_id"])
        assert len(images) == 3  # cello–dog: 2 symmetric templates + the playing template, one style
        # The reviewer tags two images in the App; FiftyOne's API writes the same tags.
        tagger = (
            "import sys\n"
            "from pathlib import Path\n"
            "from is4.config import load_config\n"
            "from is4.annotation import review\n"
            "cfg = load_config(sys.argv[1])\n"
            "dataset = review.open_dataset(Path(sys.argv[2]), cfg.review)\n"
            "from fiftyone import ViewField as F\n"
            "dataset.match(F('image_id').is_in(sys.argv[3:5])).tag_samples('accept')\n"
            "dataset.match(F('image_id').is_in(sys.argv[5:6])).tag_samples('reject:artefact')\n"
        )
        tagged = subprocess.run(
            [sys.executable, "-c", tagger, str(tmp_path / "review-test.yaml"), str(workdir), *images],
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
            cwd=ROOT,
        )
        assert tagged.returncode == 0, tagged.stderr

        done = subprocess.run(
            [str(BIN / "is4"), "review", "done", "--reviewer", "alice"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            cwd=ROOT,
        )
        assert done.returncode == 0 and flow_run_id in done.stdout, done.stdout + done.stderr
        _wait_for(
            lambda: _flow_run_state(api, flow_run_id) in ("COMPLETED", "FAILED", "CRASHED"),
            300,
            "the resumed build to finish",
            [],
        )
        assert _flow_run_state(api, flow_run_id) == "COMPLETED", (tmp_path / "serve.log").read_text()[-4000:]

    verification = read_manifest(workdir, "verification").set_index("image_id")
    assert verification.loc[images[:2], "decision"].tolist() == ["accept", "accept"]
    assert verification.loc[images[2], "decision"] == "reject"
    assert verification.loc[images[2], "reason"] == "artefact"
    assert set(verification.loc[images, "source"]) == {"human"}
    assert set(verification.loc[images, "reviewer"]) == {"alice"}
    annotations = read_manifest(workdir, "annotations")
    assert sorted(set(annotations["image_id"])) == images[:2], "only accepted images are annotated"
    assert len(annotations) == 4 and (annotations["method"] == "auto").all()
    for mask in annotations["mask_path"]:
        assert (workdir / mask).is_file()
