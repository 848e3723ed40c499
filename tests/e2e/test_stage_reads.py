"""The stage declarations cannot drift from the code: the demo build, run stage by stage with every manifest read
recorded, reads exactly what each stage declares (and so what its cache key and provenance hash)."""

from __future__ import annotations

import os
import shutil
from collections import defaultdict
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from is4.config import load_config
from is4.manifests.io import MANIFEST_DIR, manifest_path, read_manifest, read_provenance, write_manifest
from is4.pipeline.captions.caption import collect_items
from is4.pipeline.ingest.sources import open_ingest_source
from is4.pipeline.registry import EXPORT, REGISTRY
from is4.pipeline.stage import Stage
from tests.support import ROOT

# What the hand-written fingerprints of the old flow hashed (flows/build.py before the registry): the drift the
# declarations replaced. Each of the four stages below read a table its cache key ignored.
OLD_FINGERPRINTS = {
    "categories": (),
    "prompts": ("categories",),
    "generate": ("prompts",),
    "prescreen": ("images", "categories"),
    "verify": ("images", "prescreen"),
    "annotate": ("images", "verification"),
    "match": ("annotations", "clips", "categories", "verification"),
    "caption": ("clips", "instances"),
    "release": ("instances", "annotations", "images", "clips", "categories", "verification"),
}


def drift(
    recorded: dict[str, set[str]],
    declared: dict[str, tuple[str, ...]],
    optional: dict[str, tuple[str, ...]] | None = None,
) -> tuple[set, set]:
    """(stage, table) pairs read but declared neither read nor maybe-read, and declared read but never read."""
    optional = optional or {}
    undeclared = {
        (s, t)
        for s, tables in recorded.items()
        for t in tables
        if t not in (*declared.get(s, ()), *optional.get(s, ()))
    }
    unused = {(s, t) for s, tables in declared.items() if s in recorded for t in tables if t not in recorded[s]}
    return undeclared, unused


@pytest.fixture(scope="module")
def demo_reads(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, set[str]]]:
    """Run every declared stage of the demo profile in order, in-process, recording the manifests each one reads."""
    work = tmp_path_factory.mktemp("demo")
    os.chdir(ROOT)  # the demo config's relative paths
    cfg = load_config(ROOT / "configs/demo.yaml")
    manifest_dir = (work / MANIFEST_DIR).resolve()
    recorded: dict[str, set[str]] = defaultdict(set)
    current: list[str] = []
    real_read_table = pq.read_table

    def recording_read_table(source, *args, **kwargs):
        path = Path(str(source)).resolve()
        if path.parent == manifest_dir and current:
            recorded[current[0]].add(path.stem)
        return real_read_table(source, *args, **kwargs)

    def run(stage: Stage, provenance: dict | None = None, **options) -> dict:
        provenance = provenance or stage.provenance(cfg, work)
        recorded.setdefault(stage.name, set())
        current[:] = [stage.name]
        try:
            return stage.load()(work, cfg, provenance, **options)
        finally:
            current.clear()

    mp = pytest.MonkeyPatch()
    mp.setattr(pq, "read_table", recording_read_table)
    try:
        for stage in REGISTRY:
            if stage.name == "ingest":
                with open_ingest_source(cfg, work) as source:
                    run(
                        stage,
                        stage.provenance(cfg, work, files={"csv": source.csv_path}),
                        csv_path=source.csv_path,
                        url_template=source.url_template,
                    )
                run(EXPORT)
            else:
                run(stage)
    finally:
        mp.undo()
    return work, dict(recorded)


def test_every_stage_reads_exactly_what_it_declares(demo_reads) -> None:
    _, recorded = demo_reads
    declared = {s.name: s.reads for s in (*REGISTRY, EXPORT)}
    assert set(recorded) >= set(declared), "every stage ran"
    undeclared, unused = drift(recorded, declared, {s.name: s.may_read for s in REGISTRY})
    assert undeclared == set(), "a stage reads a manifest it does not declare (its cache would go stale)"
    assert unused == set(), "a stage declares a manifest it never reads"


def test_the_old_fingerprints_fail_the_same_check(demo_reads) -> None:
    _, recorded = demo_reads
    undeclared, _ = drift(recorded, OLD_FINGERPRINTS)
    assert {("match", "images"), ("annotate", "categories"), ("release", "prescreen")} <= undeclared


def test_caption_reads_images_for_instances_without_image_paths(demo_reads, tmp_path: Path) -> None:
    """The fourth stale key: `image_path` is optional in `instances`, and without it caption reads `images`."""
    work, _ = demo_reads
    (tmp_path / MANIFEST_DIR).mkdir()
    for table in ("clips", "images"):
        shutil.copyfile(manifest_path(work, table), manifest_path(tmp_path, table))
    write_manifest(tmp_path, "instances", read_manifest(work, "instances").drop(columns=["image_path"]))
    reads = []
    real_read_table = pq.read_table
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(
            pq,
            "read_table",
            lambda source, *a, **k: reads.append(Path(str(source)).stem) or real_read_table(source, *a, **k),
        )
        items = collect_items(tmp_path, load_config(ROOT / "configs/demo.yaml").captions)
    assert "images" in reads and all(item.image_path for item in items)
    caption = next(s for s in REGISTRY if s.name == "caption")
    assert "images" in caption.keyed_inputs and "images" not in OLD_FINGERPRINTS["caption"]


def test_manifests_carry_the_declared_provenance(demo_reads) -> None:
    work, _ = demo_reads
    cfg = load_config(ROOT / "configs/demo.yaml")
    for stage in REGISTRY:
        for table in stage.writes:
            if table == "verification":
                continue  # a ledger: the provenance is its last writer's
            written = read_provenance(work, table)
            assert written["stage"] == stage.name
            assert set(written["inputs_sha256"]) == set(stage.keyed_inputs or ())
            assert written["config"] == stage.provenance(cfg, work)["config"]


def test_release_card_lists_every_declared_stage(demo_reads) -> None:
    work, _ = demo_reads
    card = (work / "releases/is4-0.1.0/README.md").read_text(encoding="utf-8")
    for i, stage in enumerate(REGISTRY, start=1):
        assert f"{i}. **{stage.name}**: {stage.summary}" in card
