"""The stage registry: one declaration per stage, keys and provenance derived from it, layering kept."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path
from typing import get_args

import pytest

from is4.config import STAGES, BuildConfig, ShardedStage, parse_config
from is4.manifests.io import manifest_path, write_manifest
from is4.pipeline.registry import BY_NAME, REGISTRY, keyed_inputs
from is4.pipeline.stage import Stage, cache_key
from tests.support import ROOT
from tests.support.rows import sample_frame


def test_registry_order_is_the_config_stage_list() -> None:
    assert tuple(s.name for s in REGISTRY) == STAGES
    assert BuildConfig().stages == list(STAGES)


@pytest.mark.parametrize("stage", [*REGISTRY, BY_NAME["export"]], ids=lambda s: s.name)
def test_every_declaration_is_complete_and_loads(stage: Stage) -> None:
    assert stage.summary and not stage.summary.endswith(".")
    assert callable(stage.load())
    cfg = BuildConfig()
    assert set(stage.config) <= set(BuildConfig.model_fields) | {"*"}
    assert set(stage.model_roles(cfg)) <= set(type(cfg.models).model_fields)


def test_the_sharded_stages_are_those_with_a_merge_and_the_config_names_them() -> None:
    sharded = [s for s in REGISTRY if s.sharded]
    assert {s.name for s in sharded} == set(get_args(ShardedStage))
    assert all(callable(s.load_merge()) for s in sharded)
    assert not BY_NAME["export"].sharded


def test_a_ledger_read_is_keyed_on_the_earlier_writers() -> None:
    assert BY_NAME["verify"].keyed_inputs == ("images", "prescreen")
    assert BY_NAME["prescreen"].keyed_inputs == ("images", "categories")  # its own verification rows: not an input
    assert BY_NAME["caption"].keyed_inputs == ("clips", "instances", "images")
    assert BY_NAME["annotate"].keyed_inputs == ("images", "verification", "categories")
    solo = Stage("solo", "reads what it writes", "x:y", reads=("t",), writes=("t",))
    assert keyed_inputs(solo, []) == ()


def test_provenance_hashes_inputs_and_leaves_out_what_cannot_change_the_output(tmp_path: Path) -> None:
    ingest, match = BY_NAME["ingest"], BY_NAME["match"]
    base = BuildConfig()
    faster = parse_config({"ingest": {"download": {"workers": 16, "url_template": "http://127.0.0.1:1/{ytid}"}}})
    assert ingest.provenance(base, tmp_path) == ingest.provenance(faster, tmp_path)
    smaller = parse_config({"ingest": {"extract": {"frame_size": 112}}})
    assert ingest.provenance(smaller, tmp_path) != ingest.provenance(base, tmp_path)

    before = match.provenance(base, tmp_path)
    assert before["inputs_sha256"]["images"] is None and before["seed"] == 0
    write_manifest(tmp_path, "clips", sample_frame())
    after = match.provenance(base, tmp_path)
    assert after["inputs_sha256"]["clips"] == hashlib.sha256(manifest_path(tmp_path, "clips").read_bytes()).hexdigest()
    assert cache_key(after, tmp_path) != cache_key(before, tmp_path)
    assert cache_key(after, tmp_path) != cache_key(after, tmp_path / "elsewhere")
    assert cache_key(after, tmp_path, shard="0/2") != cache_key(after, tmp_path, shard="1/2")


def test_models_enter_the_key_only_when_the_stage_uses_them(tmp_path: Path) -> None:
    categories = BY_NAME["categories"]
    llm = {"object_phrase": {"model_id": "tiny-random:mistral"}}
    plain = parse_config({"models": llm})
    asking = parse_config({"models": llm, "categories": {"llm_proposals": True}})
    assert categories.provenance(plain, tmp_path)["models"] == {}
    assert categories.provenance(asking, tmp_path)["models"]["object_phrase"]["model_id"] == "tiny-random:mistral"


def test_pipeline_code_never_imports_annotation_prefect_or_fiftyone() -> None:
    code = (
        "import sys, pkgutil, importlib, is4.pipeline as p\n"
        "for m in pkgutil.walk_packages(p.__path__, 'is4.pipeline.'):\n"
        "    if not m.name.endswith('gama_driver'): importlib.import_module(m.name)\n"
        "print(sorted({n.split('.')[0] if not n.startswith('is4.') else '.'.join(n.split('.')[:2])"
        " for n in sys.modules if n.startswith(('is4.annotation', 'is4.flows', 'prefect', 'fiftyone'))}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_is4_stages_prints_the_graph_in_order() -> None:
    from typer.testing import CliRunner

    from is4.cli import app

    result = CliRunner().invoke(app, ["stages", "--config", str(ROOT / "configs/demo.yaml")], env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    headings = [line.split()[1] for line in result.stdout.splitlines() if line[:1].isdigit() or line.startswith("  +")]
    assert headings == ["ingest", "export", *STAGES[1:]]
    match = result.stdout[result.stdout.index("8. match") : result.stdout.index("9. caption")]
    assert "reads  annotations, verification, images, clips, categories" in match
    assert "writes instances" in match and "seed   yes" in match
    assert "models detector, segmenter" in result.stdout
    lines = result.stdout.splitlines()
    sharded = [line.split()[1].removeprefix("execution.shards.").rstrip(",") for line in lines if "shards " in line]
    assert sharded == [s.name for s in REGISTRY if s.sharded] == ["ingest", "generate", "caption"]


def test_every_sharded_stage_takes_a_shard_and_rejects_a_bad_one(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from is4.cli import app

    for name in ("generate", "caption"):
        result = CliRunner().invoke(app, [name, "--workdir", str(tmp_path), "--shard", "3/2"])
        assert result.exit_code == 2 and "shard 3/2: the shard index i must satisfy 0 <= i < 2" in result.output
