"""The `train` Prefect flow runs the trainer and publishes the per-epoch metrics and overlay sheets as artifacts (Prefect's local API,
in a subprocess of its own), with loader workers: a fork of the flow's process inherited Prefect's exit hooks and exited 1."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

from tests.support import prefect_env

SCRIPT = """
import json, sys
from pathlib import Path
import yaml
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
from is4.flows.train import train_flow
from is4.trainers import synthetic

w = Path(sys.argv[1])
synthetic.write_workdir(w, 24, size=32, seconds=1.0)
release = synthetic.write_release(w / "release", 2)
cfg = w / "c.yaml"
section = synthetic.tiny_train_section(
    release, epochs=2, max_steps_per_epoch=1, batch_size=8, num_workers=2, alignment__image_size=32
)
cfg.write_text(yaml.safe_dump({"seed": 1, "train": section}))
out = train_flow(config_path=str(cfg), workdir=str(w), run_dir=str(w / "run"))
keys = ArtifactFilterKey(any_=["train-metrics", "train-summary"])
with get_client(sync_client=True) as client:
    arts = client.read_artifacts(artifact_filter=ArtifactFilter(key=keys))
    sheets = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["train-overlays"])))
print(json.dumps({"out": out, "artifacts": {a.key: [a.type, a.data] for a in arts},
                  "overlays": sorted([a.type, a.data] for a in sheets)}, default=str))
"""


def test_train_flow_publishes_metrics_artifacts(tmp_path: Path) -> None:
    env = prefect_env(tmp_path / "prefect", PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="180")
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path / "work")], capture_output=True, text=True, env=env, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["out"]["epochs_logged"] == 2 and result["out"]["run"] == str(tmp_path / "work" / "run")
    kind, data = result["artifacts"]["train-metrics"]
    rows = json.loads(data) if isinstance(data, str) else data
    logged = [json.loads(line) for line in (tmp_path / "work" / "run" / "metrics.jsonl").read_text().splitlines()]
    assert kind == "table" and [r["epoch"] for r in rows] == [0, 1]
    assert [r["loss"] for r in rows] == [r["loss"] for r in logged]
    assert result["artifacts"]["train-summary"][0] == "markdown" and "loss" in result["artifacts"]["train-summary"][1]
    # One markdown artifact per evaluated epoch, the run's overlay sheet embedded byte for byte.
    assert result["out"]["overlay_sheets"] == 2 and len(result["overlays"]) == 2
    for epoch, (kind, markdown) in enumerate(sorted(result["overlays"], key=lambda a: "epoch-1" in a[1])):
        sheet = (tmp_path / "work" / "run" / "overlays" / f"epoch-{epoch}.png").read_bytes()
        assert kind == "markdown" and f"data:image/png;base64,{base64.b64encode(sheet).decode()}" in markdown
