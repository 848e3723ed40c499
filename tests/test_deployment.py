"""The production path: a real Prefect server, `is4 serve` serving the deployment, `prefect deployment run`."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import yaml

from is4.manifests.io import read_manifest
from tests.conftest import free_port

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


def test_deployment_runs_on_a_real_prefect_server(tmp_path: Path) -> None:
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = os.environ | {
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_API_URL": api,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_ENABLED": "false",
    }
    config = tmp_path / "deploy.yaml"
    config.write_text(yaml.safe_dump({
        "profile": "deployment-test",
        "stages": ["ingest"],
        "ingest": {
            "demo_media": {"enabled": True, "labels": ["dog barking"], "clips_per_label": 1, "source_seconds": 10},
            "download": {"workers": 1, "retries": 0},
        },
    }))
    workdir = tmp_path / "work"
    logs = {name: open(tmp_path / f"{name}.log", "w") for name in ("server", "serve")}
    server = subprocess.Popen(
        [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port), "--no-ui"],
        env=env, stdout=logs["server"], stderr=subprocess.STDOUT,
    )
    serve = None
    try:
        _wait_for(lambda: httpx.get(f"{api}/health", timeout=2).status_code == 200, 120, "the Prefect server",
                  [server])
        serve = subprocess.Popen(
            [str(BIN / "is4"), "serve", "--config", str(config), "--name", "ci-test", "--workdir", str(workdir)],
            env=env, stdout=logs["serve"], stderr=subprocess.STDOUT,
        )
        _wait_for(
            lambda: httpx.get(f"{api}/deployments/name/build-is4/ci-test", timeout=2).status_code == 200,
            120, "the served deployment", [server, serve],
        )
        run = subprocess.run(
            [str(BIN / "prefect"), "deployment", "run", "build-is4/ci-test", "--watch", "--watch-timeout", "300"],
            env=env, capture_output=True, text=True, timeout=360,
        )
        assert run.returncode == 0, run.stdout + run.stderr
        assert "Completed" in run.stdout, run.stdout
    finally:
        for proc in (serve, server):
            if proc is not None:
                proc.terminate()
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
        for fh in logs.values():
            fh.close()
    clips = read_manifest(workdir, "clips")
    ok = clips[clips["status"] == "ok"]
    assert list(ok["label"]) == ["dog barking"]
    assert (workdir / ok.iloc[0]["audio_path"]).stat().st_size == 44 + 160_000 * 2  # 10 s of 16-bit mono
    assert set(clips["status"]) == {"ok", "invalid", "failed"}  # the demo's injected faults are recorded
    assert (workdir / "exports/vggsound/ids.csv").read_text().splitlines()[1].startswith(ok.iloc[0]["clip_id"])
