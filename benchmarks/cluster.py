"""Cluster benchmark: the demo's ingest and caption stages on a Dask cluster of 1 vs 2 worker processes, in one run.

Both runs use the flow's real path (`flows/cluster.py`: one subflow per sharded stage on a `DaskTaskRunner`, the
shards as cached Prefect tasks, the merge in the flow process) against one temporary Prefect server, with the same
shard count (`--shards`, default 2) so only the number of workers differs. Each cluster is a `LocalCluster` of
worker processes with one thread each, warmed up (the project imported) before timing; every run uses a fresh work
directory (nothing cached). Reported: wall time per stage and the 1-worker / 2-worker ratio, and the per-task
overhead of a Dask-mapped no-op task against the same map on Prefect's thread pool.

The work is tiny and CPU-bound (ffmpeg extraction, three tiny random models loaded per caption shard) and the
machine has 2 cores: the ratio is bounded by 2, and further by what each shard does serially (model loading,
Prefect task bookkeeping, the single-process merge) and by anything else running on the machine.

Run by hand:  python benchmarks/cluster.py [--shards N] [--tasks N]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

import yaml  # noqa: E402
from distributed import LocalCluster  # noqa: E402
from prefect import flow, task  # noqa: E402
from prefect.task_runners import ThreadPoolTaskRunner  # noqa: E402
from prefect_dask import DaskTaskRunner  # noqa: E402

from is4.config import load_config  # noqa: E402
from is4.flows.build import HOOKS  # noqa: E402
from is4.flows.server import prefect_api  # noqa: E402
from is4.flows.tasks import StageRunner  # noqa: E402
from is4.pipeline.registry import stage as declared  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def log(message: str) -> None:
    """Progress on stderr, so stdout holds only the report."""
    print(f"  .. {message}", file=sys.stderr, flush=True)


def demo_config(path: Path, address: str, shards: int) -> Path:
    """The demo profile's ingest and captions (of the clips), on the Dask scheduler at `address`."""
    config = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())
    config["stages"] = ["ingest", "caption"]
    config["categories"]["overrides"] = str(ROOT / "configs" / "category_overrides.yaml")
    config["captions"]["sources"] = ["clips"]
    config["execution"] = {
        "runner": "dask",
        "dask": {"address": address},
        "torch_threads": 1,
        "shards": {"ingest": shards, "caption": shards},
    }
    path.write_text(yaml.safe_dump(config))
    return path


@flow(name="cluster-benchmark")
def timed_stages(config_path: str, workdir: str) -> dict[str, float]:
    """Run the ingest and caption hooks of `build-is4` one after the other; seconds each."""
    cfg = load_config(config_path)
    run = StageRunner(Path(workdir), cfg)
    times = {}
    for name in ("ingest", "caption"):
        started = time.perf_counter()
        HOOKS[name](run, declared(name))
        times[name] = time.perf_counter() - started
    return times


@task
def noop(i: int) -> int:
    """A task that does nothing: what is left is orchestration."""
    return i


@flow(name="overhead-benchmark")
def mapped_noops(n: int) -> float:
    """Seconds per task for `n` no-op tasks mapped over this flow's task runner."""
    started = time.perf_counter()
    futures = noop.map(range(n))
    assert [f.result() for f in futures] == list(range(n))
    return (time.perf_counter() - started) / n


def _import_stages() -> None:
    import is4.pipeline.captions.caption  # noqa: F401
    import is4.pipeline.ingest.ingest  # noqa: F401


def _warm(cluster: LocalCluster) -> None:
    from distributed import Client

    with Client(cluster) as client:
        client.run(_import_stages)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shards", type=int, default=2, help="shards of ingest and of caption (both runs)")
    parser.add_argument("--tasks", type=int, default=100, help="no-op tasks for the per-task overhead")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="is4-cluster-bench-"))
    results: dict[int, dict[str, float]] = {}
    overhead: dict[str, float] = {}
    try:
        os.environ["PREFECT_HOME"] = str(tmp / "prefect-home")
        with prefect_api():
            for workers in (1, 2):
                with LocalCluster(
                    n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None
                ) as cluster:
                    log(f"{workers} worker(s): warming up")
                    _warm(cluster)
                    config = demo_config(tmp / f"w{workers}.yaml", cluster.scheduler_address, args.shards)
                    log(f"{workers} worker(s): ingest + caption")
                    results[workers] = timed_stages(str(config), str(tmp / f"work-{workers}"))
                    if workers == 2:
                        log(f"per-task overhead: {args.tasks} no-op tasks on Dask")
                        runner = DaskTaskRunner(address=cluster.scheduler_address)
                        overhead["dask"] = mapped_noops.with_options(task_runner=runner)(args.tasks)
            log(f"per-task overhead: {args.tasks} no-op tasks on threads")
            threads = ThreadPoolTaskRunner(max_workers=2)
            overhead["threads"] = mapped_noops.with_options(task_runner=threads)(args.tasks)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print(
        f"Cluster benchmark: demo ingest + caption, {args.shards} shards each, LocalCluster of 1 vs 2 worker "
        f"processes x 1 thread, {os.cpu_count()} CPU cores"
    )
    print(f"{'stage':<10} {'1 worker (s)':>13} {'2 workers (s)':>14} {'1w / 2w':>8}")
    for name in ("ingest", "caption"):
        one, two = results[1][name], results[2][name]
        print(f"{name:<10} {one:>13.1f} {two:>14.1f} {one / two:>7.2f}x")
    one, two = sum(results[1].values()), sum(results[2].values())
    print(f"{'both':<10} {one:>13.1f} {two:>14.1f} {one / two:>7.2f}x")
    print(
        f"per-task overhead ({args.tasks} no-op tasks): Dask {overhead['dask'] * 1000:.0f} ms/task, "
        f"Prefect threads {overhead['threads'] * 1000:.0f} ms/task"
    )


if __name__ == "__main__":
    main()
