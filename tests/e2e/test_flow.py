"""`is4 build` runs the `build-is4` flow in-process (Prefect's local API) and caches finished stages."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from is4.manifests.io import manifest_path, read_manifest, read_provenance
from tests.support import IS4, prefect_env


def _build(config: Path, workdir: Path, home: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [IS4, "build", "--config", str(config), "--workdir", str(workdir)],
        capture_output=True,
        text=True,
        timeout=300,
        env=prefect_env(home, COLUMNS="200"),
    )


def test_build_runs_caches_and_refreshes_deleted_outputs(tmp_path: Path) -> None:
    config = tmp_path / "tiny.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "profile": "flow-test",
                "stages": ["ingest"],
                "seed": 3,
                "ingest": {
                    "demo_media": {
                        "enabled": True,
                        "labels": ["cat meowing", "dog barking"],
                        "clips_per_label": 1,
                        "source_seconds": 10,
                    },
                    "download": {"workers": 2, "retries": 0},
                },
            }
        )
    )
    work, home = tmp_path / "work", tmp_path / "prefect-home"

    first = _build(config, work, home)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "build-is4 finished" in first.stdout and str(work) in first.stdout
    clips = read_manifest(work, "clips")
    ok = clips[clips["status"] == "ok"]
    assert sorted(ok["label"]) == ["cat meowing", "dog barking"]
    assert read_provenance(work, "clips")["seed"] == 3
    manifest_bytes = manifest_path(work, "clips").read_bytes()
    journal_size = (work / "state/ingest.jsonl").stat().st_size

    second = _build(config, work, home)
    assert second.returncode == 0, second.stdout + second.stderr
    assert second.stdout.count("Cached(type=COMPLETED)") + second.stderr.count("Cached(type=COMPLETED)") == 2
    assert (work / "state/ingest.jsonl").stat().st_size == journal_size, "no clip was processed again"
    assert manifest_path(work, "clips").read_bytes() == manifest_bytes

    shutil.rmtree(work / "exports")
    third = _build(config, work, home)
    assert third.returncode == 0, third.stdout + third.stderr
    ids = (work / "exports/vggsound/ids.csv").read_text().splitlines()
    assert sorted(line.split(",")[0] for line in ids[1:]) == sorted(ok["clip_id"])


def test_summary_artifact_counts_rejects(tmp_path: Path) -> None:
    """The ingest task publishes its counts and failures by reason as a Prefect artifact."""
    config = tmp_path / "tiny.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "stages": ["ingest"],
                "ingest": {
                    "demo_media": {
                        "enabled": True,
                        "labels": ["dog barking"],
                        "clips_per_label": 1,
                        "source_seconds": 10,
                    }
                },
            }
        )
    )
    home = tmp_path / "prefect-home"
    assert _build(config, tmp_path / "work", home).returncode == 0
    markdown = _artifacts(tmp_path, home, "ingest-summary")[0]
    assert "| ok | 1 |" in markdown
    assert "| invalid-ytid | 1 |" in markdown and "| not-found | 1 |" in markdown
    # The merged summary counts what the shards did: a clean ingest processed every clip and reused none.
    merged = _artifacts(tmp_path, home, "ingest-merged-summary")
    selected = _field(markdown, "selected")
    assert len(merged) == 1 and (_field(merged[0], "processed"), _field(merged[0], "reused")) == (selected, 0)

    # A rerun: ingest is a cache hit, said so, with no counts or process of the first run published again as new.
    again = _build(config, tmp_path / "work", home)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "cached: ingest, export" in again.stdout
    assert len(_artifacts(tmp_path, home, "ingest-merged-summary")) == 1


def _artifacts(tmp_path: Path, home: Path, key: str) -> list[str]:
    """The markdown of every artifact `key` the builds in `tmp_path/work` published, oldest first."""
    script = (
        "import asyncio, json, sys\n"
        "from prefect.client.orchestration import get_client\n"
        "from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey\n"
        "from prefect.client.schemas.sorting import ArtifactSort\n"
        "async def main():\n"
        "    async with get_client() as c:\n"
        "        key = ArtifactFilter(key=ArtifactFilterKey(any_=[sys.argv[1]]))\n"
        "        arts = await c.read_artifacts(artifact_filter=key, sort=ArtifactSort.CREATED_DESC)\n"
        "        print(json.dumps([a.data for a in reversed(arts)]))\n"
        "asyncio.run(main())\n"
    )
    # The build's temporary server kept its records in the work directory (issue 21 item 9): read them there.
    database = tmp_path / "work" / "state" / "prefect" / "server.db"
    env = prefect_env(home, PREFECT_SERVER_DATABASE_CONNECTION_URL=f"sqlite+aiosqlite:///{database}")
    out = subprocess.run([sys.executable, "-c", script, key], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def _field(markdown: str, name: str) -> int:
    """An integer row `| name | value |` of a summary artifact."""
    match = re.search(rf"^\| {name} \| (\d+) \|$", markdown, re.MULTILINE)
    assert match, f"no {name} in the summary artifact:\n{markdown[:500]}"
    return int(match.group(1))


def test_caption_subflow_runs_on_training_clips_caches_and_can_be_left_out(tmp_path: Path) -> None:
    """`stages: [ingest, caption]` makes the training captions without any IS4 stage; rerun: a cache hit."""
    tiny = {
        "image_captioner": {"model_id": "tiny-random:blip2"},
        "audio_captioner": {"model_id": "tiny-random:qwen2-audio"},
        "object_phrase": {"model_id": "tiny-random:mistral"},
    }
    ingest = {
        "demo_media": {
            "enabled": True,
            "labels": ["cat meowing", "dog barking"],
            "clips_per_label": 1,
            "source_seconds": 10,
        },
        "download": {"workers": 2, "retries": 0},
    }
    config = tmp_path / "captions.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "stages": ["ingest", "caption"],
                "ingest": ingest,
                "captions": {"splits": ["train", "test"]},
                "models": tiny,
            }
        )
    )
    work, home = tmp_path / "work", tmp_path / "prefect-home"

    first = _build(config, work, home)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert (
        "Beginning subflow run" in first.stdout + first.stderr and "for flow 'caption'" in first.stdout + first.stderr
    )
    clips = read_manifest(work, "clips")
    captions = read_manifest(work, "captions")
    assert sorted(captions["item_id"]) == sorted(clips.loc[clips["status"] == "ok", "clip_id"])
    assert captions["image_caption"].notna().all() and captions["audio_caption"].notna().all()
    assert set(captions["audio_caption_backend"]) == {"qwen2-audio"}
    written = manifest_path(work, "captions").read_bytes()

    second = _build(config, work, home)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert (second.stdout + second.stderr).count("Cached(type=COMPLETED)") == 3  # ingest, export, caption
    assert manifest_path(work, "captions").read_bytes() == written

    skipped = tmp_path / "skipped.yaml"
    skipped.write_text(yaml.safe_dump({"stages": ["ingest"], "ingest": ingest, "models": tiny}))
    third = _build(skipped, tmp_path / "work-skipped", home)
    assert third.returncode == 0, third.stdout[-3000:] + third.stderr[-3000:]
    assert "for flow 'caption'" not in third.stdout + third.stderr
    assert not manifest_path(tmp_path / "work-skipped", "captions").exists()
