"""`build-is4` on a real Dask cluster (scheduler + 2 worker processes on the loopback) against a real Prefect server.

The demo profile up to the captions (ingest, categories, prompts, generate, caption; captions of the clips only,
which is all the sharded stages need) is built twice: `runner: dask` with 3 shards per sharded stage, one worker
killed (SIGKILL) in the middle of a generate shard, and `runner: local` with 1 shard. Torch threads are pinned to 1
in both (Dask workers start with OMP_NUM_THREADS=1; float32 CPU bytes depend on it).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

pytest.importorskip("prefect_dask")
from distributed import Client  # noqa: E402

from tests.conftest import free_port  # noqa: E402
from tests.support import ROOT, prefect_env

BIN = Path(sys.executable).parent
SHARDED = ("ingest", "generate", "caption")


def _wait(predicate, timeout: float, what: str, procs: list[subprocess.Popen]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for proc in procs:
            assert proc.poll() is None, f"{proc.args[:3]} exited with {proc.returncode} while waiting for {what}"
        try:
            if predicate():
                return
        except (httpx.HTTPError, OSError):
            pass
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def _start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with open(log, "w") as fh:
        return subprocess.Popen(args, env=env, stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """A Prefect server, a `dask scheduler` and `dask worker --nworkers 2 --nthreads 1`, all on 127.0.0.1."""
    tmp = tmp_path_factory.mktemp("cluster")
    api = f"http://127.0.0.1:{free_port()}/api"
    base = os.environ | {
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_ENABLED": "false",
        "HF_HUB_OFFLINE": "1",
    }
    base.pop("PREFECT_API_URL", None)
    server_env = base | {"PREFECT_HOME": str(tmp / "prefect-home")}
    port = api.rsplit(":", 1)[1].split("/")[0]
    procs = [
        _start(
            [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", port, "--no-ui"],
            server_env,
            tmp / "server.log",
        )
    ]
    try:
        address = f"tcp://127.0.0.1:{free_port()}"
        # The workers get no PREFECT_API_URL and their own PREFECT_HOME: the URL must travel with each task.
        worker_env = base | {"PREFECT_HOME": str(tmp / "worker-home")}
        procs.append(
            _start(
                [
                    str(BIN / "dask"),
                    "scheduler",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    address.rsplit(":", 1)[1],
                    "--no-dashboard",
                ],
                worker_env,
                tmp / "scheduler.log",
            )
        )
        _wait(lambda: httpx.get(f"{api}/health", timeout=2).status_code == 200, 180, "the Prefect server", procs)
        with Client(address, timeout=120) as client:
            procs.append(
                _start(
                    [
                        str(BIN / "dask"),
                        "worker",
                        address,
                        "--nworkers",
                        "2",
                        "--nthreads",
                        "1",
                        "--host",
                        "127.0.0.1",
                        "--no-dashboard",
                    ],
                    worker_env,
                    tmp / "worker.log",
                )
            )
            client.wait_for_workers(2, timeout=180)
            yield {
                "api": api,
                "address": address,
                "client": client,
                "tmp": tmp,
                "worker_log": tmp / "worker.log",
                "env": base | {"PREFECT_HOME": str(tmp / "flow-home"), "PREFECT_API_URL": api, "COLUMNS": "200"},
            }
    finally:
        for proc in reversed(procs):
            _stop(proc)


def _config(tmp: Path, name: str, execution: dict) -> Path:
    config = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())
    config["stages"] = ["ingest", "categories", "prompts", "generate", "caption"]
    config["categories"]["overrides"] = str(ROOT / "configs" / "category_overrides.yaml")
    config["captions"]["sources"] = ["clips"]
    # Smaller than the demo (4 clips + 2 faulty rows, 24 images in 12 groups: 4 per shard), same code paths.
    config["ingest"]["demo_media"]["clips_per_label"] = 1
    config["prompts"]["categories"] = ["cello", "dog", "cat"]
    config["generate"]["batch_size"] = 2
    config["execution"] = {"torch_threads": 1, **execution}
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _build_args(config: Path, work: Path) -> list[str]:
    return [str(BIN / "is4"), "build", "--config", str(config), "--workdir", str(work)]


def _digests(work: Path) -> dict[str, str]:
    """sha256 of every manifest, media and export file (paths relative to the work directory)."""
    files = [p for top in ("manifests", "media", "exports") for p in (work / top).rglob("*") if p.is_file()]
    return {p.relative_to(work).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def _registered(client: Client) -> dict[str, int]:
    """Worker address -> pid, as the scheduler has them now."""
    return client.run(os.getpid)


def _mid_shard(work: Path, client: Client) -> str | None:
    """A worker whose generate shard has finished some images but not all (then every busy worker has one)."""
    from is4.config import load_config
    from is4.manifests.io import read_manifest
    from is4.manifests.schema import PROMPTS
    from is4.pipeline.images.generate import batch_groups

    if not (work / "manifests/prompts.parquet").exists():
        return None
    cfg = load_config(work.parent / "dask.yaml")
    groups = batch_groups(read_manifest(work, PROMPTS), cfg.generate.batch_size)
    sizes = [sum(len(g) for k, g in enumerate(groups) if k % 3 == i) for i in range(3)]
    lines = [len(_records_of(work / f"state/generate/shard-{i}-of-3.jsonl")) for i in range(3)]
    started = [n for n in lines if n]
    # Two shards under way with images left, the third not started: the two busy workers run exactly those two.
    if len(started) == 2 and all(0 < n < size for n, size in zip(lines, sizes) if n) and 0 in lines:
        busy = [addr for addr, keys in sorted(client.processing().items()) if keys]
        return busy[0] if len(busy) == 2 else None
    return None


def _records_of(path: Path) -> list[dict]:
    """The whole records of a journal (a line torn by the kill is not a record)."""
    records = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return records


def _records(folder: Path) -> list[dict]:
    return [r for path in sorted(folder.glob("shard-*-of-3.jsonl")) for r in _records_of(path)]


def _api_rows(api: str, what: str, body: dict) -> list[dict]:
    response = httpx.post(f"{api}/{what}/filter", json={"limit": 200, **body}, timeout=30)
    response.raise_for_status()
    return response.json()


def _summary_field(markdown: str, field: str) -> str:
    match = re.search(rf"^\| {field} \| (.+?) \|$", markdown, re.MULTILINE)
    assert match, f"no {field} in the summary artifact:\n{markdown[:500]}"
    return match[1]


def test_dask_build_with_a_killed_worker_equals_a_local_build(services: dict) -> None:
    tmp, api, client = services["tmp"], services["api"], services["client"]
    dask_cfg = _config(
        tmp, "dask", {"runner": "dask", "dask": {"address": services["address"]}, "shards": dict.fromkeys(SHARDED, 3)}
    )
    dask_work = tmp / "work-dask"
    seen = _registered(client)
    assert len(seen) == 2 and os.getpid() not in seen.values()

    started = time.monotonic()
    with open(tmp / "dask-build.log", "w") as log:
        build = subprocess.Popen(
            _build_args(dask_cfg, dask_work), env=services["env"], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT
        )
    # Kill a worker (SIGKILL, as the OOM killer would) while it runs a generate shard that has written some images.
    killed = None
    deadline = time.monotonic() + 500
    while killed is None and build.poll() is None and time.monotonic() < deadline:
        worker = _mid_shard(dask_work, client)
        if worker is not None:
            killed = seen[worker]
            os.kill(killed, signal.SIGKILL)
        time.sleep(0.05)
    assert build.wait(timeout=600) == 0, (tmp / "dask-build.log").read_text()[-4000:]
    dask_seconds = time.monotonic() - started
    assert killed is not None, "the generate shards finished before a worker could be killed"
    assert "signal 9" in services["worker_log"].read_text() or "SIGKILL" in services["worker_log"].read_text()
    client.wait_for_workers(2, timeout=120)
    seen |= _registered(client)  # the nanny restarted the killed worker under a new address and pid

    # Every shard ran in a worker process the scheduler registered, never in this process or the flow's.
    # The latest version of each key: a shard rerun after the kill publishes its summary again.
    artifacts = {a["key"]: a for a in sorted(_api_rows(api, "artifacts", {}), key=lambda a: a["created"])}
    for stage in SHARDED:
        for i in range(3):
            markdown = artifacts[f"{stage}-{i}-3-summary"]["data"]
            worker, pid = _summary_field(markdown, "worker"), int(_summary_field(markdown, "pid"))
            assert seen.get(worker) == pid, f"{stage} {i}/3 ran in {worker} pid {pid}, not a registered worker"
            assert pid not in (os.getpid(), build.pid)
        assert f"{stage}-merged-summary" in artifacts
    # The task runs are on the server: one per shard, completed (the killed shard's rerun is invisible to Prefect).
    subflows = {r["id"] for r in _api_rows(api, "flow_runs", {}) if r["parent_task_run_id"]}
    runs = [r for r in _api_rows(api, "task_runs", {}) if r["flow_run_id"] in subflows]
    for stage in SHARDED:
        states = [r["state_type"] for r in runs if r["name"].startswith(f"{stage}-")]
        assert states == ["COMPLETED"] * 3, (stage, states)

    # The killed shard resumed from its journal: no image was generated twice, and the rerun reused some.
    ids = [r["image_id"] for r in _records(dask_work / "state/generate")]
    assert len(ids) == len(set(ids)) == 24
    reused = sum(int(_summary_field(artifacts[f"generate-{i}-3-summary"]["data"], "reused")) for i in range(3))
    assert reused >= 1

    local_work = tmp / "work-local"
    started = time.monotonic()
    local = subprocess.run(
        _build_args(_config(tmp, "local", {}), local_work),
        env=services["env"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    local_seconds = time.monotonic() - started
    assert local.returncode == 0, local.stdout[-3000:] + local.stderr[-3000:]
    assert not (local_work / "state/generate/shard-0-of-3.jsonl").exists()

    local_files, dask_files = _digests(local_work), _digests(dask_work)
    assert any(k.startswith("media/images/") for k in local_files) and "manifests/captions.parquet" in local_files
    assert dask_files == local_files
    print(f"dask build (3 shards, one worker killed) {dask_seconds:.0f} s, local build {local_seconds:.0f} s")


def test_a_remote_scheduler_without_a_prefect_server_is_refused(tmp_path: Path) -> None:
    config = _config(tmp_path, "remote", {"runner": "dask", "dask": {"address": "tcp://127.0.0.1:9"}})
    env = prefect_env(tmp_path / "home", COLUMNS="200")
    result = subprocess.run(
        _build_args(config, tmp_path / "work"), env=env, cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith("error: execution.dask.address is tcp://127.0.0.1:9 but PREFECT_API_URL is not set")
    assert len(lines) == 1 and not (tmp_path / "work/manifests").exists()


def test_a_worker_with_another_environment_is_named(services: dict) -> None:
    from is4.flows.cluster import ClusterError, check_workers, environment_facts

    client = services["client"]
    assert check_workers(client, environment_facts()) == sorted(client.scheduler_info()["workers"])
    with pytest.raises(
        ClusterError,
        match=r"Dask worker tcp://127\.0\.0\.1:\d+ has a different environment: "
        r"is4 \S+ \(flow: 0\.0\.0-other\)",
    ):
        check_workers(client, environment_facts() | {"is4": "0.0.0-other"})


def test_resources_no_worker_offers_are_refused(services: dict) -> None:
    from is4.flows.cluster import ClusterError, check_resources

    client = services["client"]
    check_resources(client, "generate", {})  # nothing asked: nothing to check
    with pytest.raises(ClusterError, match=r"execution\.resources\.generate asks for GPU=1 but no Dask worker"):
        check_resources(client, "generate", {"GPU": 1.0})
