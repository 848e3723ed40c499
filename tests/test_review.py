"""Review sessions on a real embedded MongoDB: the dataset, reviewer tags and clicks as the App writes them, sync.

One database serves the whole test session (FiftyOne connects once per process): `fiftyone_db` lives in the
session's base temporary directory, which `tests/e2e/test_app.py` shares. Every test builds its own work directory, so
each has its own dataset (`is4-<work directory name>`).
"""

from __future__ import annotations

import hashlib
import json
import math
import subprocess
import sys
import textwrap
import time
import types
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from is4.config import ModelRef, ReviewConfig
from is4.manifests.io import read_manifest, write_manifest
from tests.support.review_work import (
    AUTO_REASON,
    AUTO_TAG,
    FLAG_REASON,
    MASK_COLS,
    MASK_ROWS,
    T0,
    H,
    W,
    make_workdir,
    queue_rank,
    write_verification,
)

T1 = datetime(2025, 2, 1, 12, 30, tzinfo=UTC)
T2 = datetime(2025, 3, 1, 8, 0, tzinfo=UTC)


def verification(root: Path) -> dict[str, dict]:
    frame = read_manifest(root, "verification")
    out = {}
    for row in frame.to_dict("records"):
        at = row["decided_at"]
        row["decided_at"] = None if pd.isna(at) else at.to_pydatetime()
        row["reason"] = None if pd.isna(row["reason"]) else row["reason"]
        row["reviewer"] = None if pd.isna(row["reviewer"]) else row["reviewer"]
        out[row["image_id"]] = row
    return out


# --- FiftyOne fixtures -----------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def fo_module(fiftyone_db: Path):
    """FiftyOne, configured by `review.connect` (which starts the embedded MongoDB)."""
    from is4.annotation import review

    return review.connect(ReviewConfig(database_dir=fiftyone_db), fiftyone_db.parent)


class Build:
    """A work directory of this test with its review config, dataset and helpers."""

    def __init__(self, workdir: Path, cfg: ReviewConfig, ids: list[str], fo):
        from is4.annotation import review

        self.workdir, self.cfg, self.ids, self.fo, self.review = workdir, cfg, ids, fo, review

    @property
    def name(self) -> str:
        return self.review.dataset_name(self.workdir, self.cfg)

    @property
    def dataset(self):
        return self.fo.load_dataset(self.name)

    def sample(self, image_id: str):
        from fiftyone import ViewField as F

        return self.dataset.one(F("image_id") == image_id)

    def tags(self, image_id: str) -> set[str]:
        return set(self.sample(image_id).tags)

    def app_tag(self, image_ids: list[str], changes: dict[str, bool]) -> None:
        """Change sample tags exactly as the App's /tag route does for a selection of samples."""
        import fiftyone.server.utils as fosu

        ds = self.dataset
        fosu.change_sample_tags(ds.select(ds.match({"image_id": {"$in": image_ids}}).values("id")), changes)

    def view_ids(self, view: str) -> list[str]:
        return self.dataset.load_saved_view(view).values("image_id")


def _build(tmp_path: Path, fiftyone_db: Path, fo, n: int = 6, **kwargs) -> Build:
    from is4.annotation import review

    workdir = tmp_path / tmp_path.name  # unique in the session, and so is the default dataset name
    ids = make_workdir(workdir, n)
    cfg = ReviewConfig(database_dir=fiftyone_db)
    path_hash = hashlib.sha256(str(workdir.resolve()).encode()).hexdigest()[:8]
    assert review.build_dataset(workdir, cfg, **kwargs) == f"is4-{tmp_path.name}-{path_hash}"
    return Build(workdir, cfg, ids, fo)


@pytest.fixture()
def build(tmp_path: Path, fiftyone_db: Path, fo_module) -> Build:
    # Datasets are named after the work directory; tmp_path is unique per test, so the name is made unique too.
    from is4.annotation import review

    workdir = tmp_path / "w"
    ids = make_workdir(workdir)
    cfg = ReviewConfig(database_dir=fiftyone_db, dataset=f"is4-{tmp_path.name}")
    review.build_dataset(workdir, cfg, segmenter=ModelRef(model_id="tiny-random:sam"))
    return Build(workdir, cfg, ids, fo_module)


# --- the dataset -----------------------------------------------------------------------------------------------


def test_build_dataset_samples_fields_and_views(tmp_path: Path, fiftyone_db: Path, fo_module) -> None:
    from is4.annotation import review

    b = _build(tmp_path, fiftyone_db, fo_module)
    ids = b.ids
    ds = b.dataset
    assert ds.persistent and b.name.startswith(f"is4-{b.workdir.name}-")
    assert sorted(ds.values("image_id")) == ids  # the flagged image has no file and no sample
    s = b.sample(ids[3])
    assert s.filepath == str((b.workdir / "media" / "images" / f"{ids[3]}.png").resolve())
    assert Path(s.filepath).is_absolute()
    assert (s.prompt, s.category_a, s.category_b, s["style"], s.template) == (
        "cello is next to dog, cartoon 3",
        "cello",
        "dog",
        "cartoon",
        "{c1} is next to {c2}",
    )
    assert (s.seed, s.model_id, s.model_revision) == (1003, "tiny-random:sd", "rev1")
    assert (s.score_a, s.score_b, s.both_present) == pytest.approx((0.53, 0.9, 0.53))
    assert (s.duplicate_group, s.queue_rank) == (ids[3], queue_rank(3, 6))
    assert (s.decision, s.decision_source, s.tags) == ("pending", "auto", [])
    assert (s.metadata.width, s.metadata.height) == (W, H)

    auto = b.sample(ids[0])
    assert auto.tags == [AUTO_TAG]
    assert (auto.decision, auto.decision_reason, auto.reviewer) == ("reject", AUTO_REASON, "prescreen")
    assert auto.decided_at.replace(tzinfo=UTC) == T0

    masked = b.sample(ids[1])
    (det,) = masked.sam.detections
    assert det.label == "cello" and det.instance_name == f"{ids[1]}_cello" and det.method == "auto"
    (r0, r1), (c0, c1) = MASK_ROWS, MASK_COLS
    assert det.bounding_box == pytest.approx([c0 / W, r0 / H, (c1 - c0) / W, (r1 - r0) / H])
    assert det.mask.shape == (r1 - r0, c1 - c0) and det.mask.all()
    assert b.sample(ids[2]).sam.detections == []

    schema = ds.get_field_schema()
    assert schema["clicks"].document_type.__name__ == "Keypoints"
    assert schema["sam"].document_type.__name__ == "Detections"
    assert schema["queue_rank"].__class__.__name__ == "IntField"

    assert set(ds.list_saved_views()) == set(review.SAVED_VIEWS)
    expected_queue = sorted(ids[1:], key=lambda i: queue_rank(ids.index(i), 6))
    assert b.view_ids("to-verify") == expected_queue
    assert b.view_ids("to-verify") != sorted(ids[1:])
    assert b.view_ids("rejected") == [ids[0]]
    for view in ("accepted", "conflicts", "to-annotate", "annotated", "needs-fix"):
        assert b.view_ids(view) == [], view

    with pytest.raises(review.ReviewError, match="exists"):
        review.build_dataset(b.workdir, b.cfg)


def test_connect_refuses_a_second_database(tmp_path: Path, fo_module) -> None:
    from is4.annotation import review

    with pytest.raises(review.ReviewError, match="already connected"):
        review.connect(ReviewConfig(database_dir=tmp_path / "another-db"), tmp_path)


# --- reviewer tags → sync → manifest → rebuild -----------------------------------------------------------------


def test_sync_writes_human_decisions_that_survive_a_rebuild(build: Build) -> None:
    review, ids = build.review, build.ids
    build.app_tag([ids[1], ids[2]], {"accept": True})
    build.app_tag([ids[3]], {"reject:missing-object": True})
    build.app_tag([ids[4]], {"reject:unrecognisable": True, "reject:artefact": True})
    build.app_tag([ids[1]], {"needs-fix": True})

    counts = review.sync(build.workdir, build.cfg, "alice", now=T1)
    assert {k: counts[k] for k in ("accepted", "rejected", "unchanged", "pending", "conflicts", "needs_fix")} == {
        "accepted": 2,
        "rejected": 2,
        "unchanged": 1,
        "pending": 1,
        "conflicts": 0,
        "needs_fix": 1,
    }
    rows = verification(build.workdir)
    for image_id, decision, reason in (
        (ids[1], "accept", None),
        (ids[2], "accept", None),
        (ids[3], "reject", "missing-object"),
        (ids[4], "reject", "artefact,unrecognisable"),
    ):
        assert rows[image_id] == {
            "image_id": image_id,
            "decision": decision,
            "reason": reason,
            "reviewer": "alice",
            "source": "human",
            "decided_at": T1,
        }
    assert rows[ids[0]] == {
        "image_id": ids[0],
        "decision": "reject",
        "reason": AUTO_REASON,
        "reviewer": "prescreen",
        "source": "auto",
        "decided_at": T0,
    }
    assert rows["cello_dog_flagged"]["reason"] == FLAG_REASON  # not in the dataset: left alone
    assert (rows[ids[5]]["decision"], rows[ids[5]]["source"]) == ("pending", "auto")
    s = build.sample(ids[3])
    assert (s.decision, s.decision_reason, s.decision_source, s.reviewer) == (
        "reject",
        "missing-object",
        "human",
        "alice",
    )

    assert sorted(build.view_ids("accepted")) == [ids[1], ids[2]]
    assert sorted(build.view_ids("rejected")) == [ids[0], ids[3], ids[4]]
    # ids[1] has its cello annotated but not its dog: the annotate stage has work there too, as for ids[2].
    assert sorted(build.view_ids("to-annotate")) == [ids[1], ids[2]]
    assert build.view_ids("annotated") == []
    assert build.view_ids("needs-fix") == [ids[1]]
    assert build.view_ids("to-verify") == [ids[5]]

    # A second sync, by someone else, later: nothing changed, so every row keeps its reviewer and time.
    before = read_manifest(build.workdir, "verification")
    counts = review.sync(build.workdir, build.cfg, "bob", now=T2)
    assert (counts["accepted"], counts["rejected"], counts["unchanged"]) == (0, 0, 5)
    pd.testing.assert_frame_equal(read_manifest(build.workdir, "verification"), before)

    # The dataset goes; a rebuild from the manifests brings every decision back, as tags and fields.
    build.dataset.delete()
    assert not build.fo.dataset_exists(build.name)
    review.build_dataset(build.workdir, build.cfg)
    assert build.tags(ids[1]) == build.tags(ids[2]) == {"accept"}
    assert build.tags(ids[3]) == {"reject:missing-object"}
    assert build.tags(ids[4]) == {"reject:artefact", "reject:unrecognisable"}
    assert build.tags(ids[0]) == {AUTO_TAG} and build.tags(ids[5]) == set()
    s = build.sample(ids[4])
    assert (s.decision, s.decision_reason, s.decision_source, s.reviewer) == (
        "reject",
        "artefact,unrecognisable",
        "human",
        "alice",
    )
    assert s.decided_at.replace(tzinfo=UTC) == T1
    assert sorted(build.view_ids("accepted")) == [ids[1], ids[2]]
    assert build.view_ids("to-verify") == [ids[5]]
    counts = review.sync(build.workdir, build.cfg, "carol", now=T2)
    assert (counts["accepted"], counts["rejected"], counts["restored"], counts["unchanged"]) == (0, 0, 0, 5)
    pd.testing.assert_frame_equal(read_manifest(build.workdir, "verification"), before)

    # Removing every decision tag withdraws a decision (a human pending row).
    build.app_tag([ids[2]], {"accept": False})
    counts = review.sync(build.workdir, build.cfg, "carol", now=T2)
    assert counts["withdrawn"] == 1
    assert verification(build.workdir)[ids[2]] == {
        "image_id": ids[2],
        "decision": "pending",
        "reason": None,
        "reviewer": "carol",
        "source": "human",
        "decided_at": T2,
    }
    assert ids[2] in build.view_ids("to-verify")


def test_rebuild_refuses_to_drop_unsynced_tags(build: Build) -> None:
    review, ids = build.review, build.ids
    build.app_tag([ids[2]], {"accept": True})
    with pytest.raises(review.ReviewError, match="unsynced"):
        review.build_dataset(build.workdir, build.cfg, overwrite=True)
    assert build.tags(ids[2]) == {"accept"}
    review.build_dataset(build.workdir, build.cfg, overwrite=True, discard_unsynced=True)
    assert build.tags(ids[2]) == set()


def test_conflicts_and_unknown_reasons_are_reported_not_applied(build: Build) -> None:
    review, ids = build.review, build.ids
    build.app_tag([ids[2]], {"accept": True, "reject:artefact": True})
    build.app_tag([ids[3]], {"reject:blurry": True})
    build.app_tag([ids[4]], {"reject": True})
    before = read_manifest(build.workdir, "verification")
    counts = review.sync(build.workdir, build.cfg, "alice", now=T1)
    assert (counts["conflicts"], counts["conflict_ids"]) == (1, [ids[2]])
    assert (counts["invalid"], sorted(counts["invalid_ids"])) == (2, [ids[3], ids[4]])
    assert counts["accepted"] == counts["rejected"] == 0
    pd.testing.assert_frame_equal(read_manifest(build.workdir, "verification"), before)
    assert build.tags(ids[2]) == {"accept", "reject:artefact"}  # the reviewer's tags stay for them to fix
    assert build.sample(ids[2]).decision == "pending"
    assert build.view_ids("conflicts") == [ids[2]]
    assert ids[2] not in build.view_ids("accepted") + build.view_ids("rejected") + build.view_ids("to-verify")

    build.app_tag([ids[2]], {"reject:artefact": False})
    counts = review.sync(build.workdir, build.cfg, "alice", now=T1)
    assert (counts["accepted"], counts["conflicts"]) == (1, 0)
    assert verification(build.workdir)[ids[2]]["decision"] == "accept"

    # Two samples of one image (the App's "clone samples") are a conflict too; a sample that is no image of the
    # build (no image_id) is ignored.
    ds = build.dataset
    clone = build.sample(ids[5]).copy()
    clone.tags = ["reject:artefact"]
    ds.add_sample(clone)
    ds.add_sample(build.fo.Sample(filepath=str(build.workdir / "media" / "images" / f"{ids[5]}.png"), tags=["accept"]))
    build.app_tag([ids[5]], {"accept": True})
    counts = review.sync(build.workdir, build.cfg, "alice", now=T1)
    assert counts["conflict_ids"] == [ids[5]] and counts["accepted"] == 0
    assert verification(build.workdir)[ids[5]]["decision"] == "pending"


def test_human_decisions_beat_automatic_ones(build: Build) -> None:
    review, ids = build.review, build.ids
    # The reviewer overrules the pre-screen's automatic reject of ids[0].
    build.app_tag([ids[0]], {AUTO_TAG: False, "accept": True})
    counts = review.sync(build.workdir, build.cfg, "alice", now=T1)
    assert counts["accepted"] == 1
    assert verification(build.workdir)[ids[0]] == {
        "image_id": ids[0],
        "decision": "accept",
        "reason": None,
        "reviewer": "alice",
        "source": "human",
        "decided_at": T1,
    }

    # An automatic stage writes over the human row and, legitimately, rejects an untouched image.
    rows = list(verification(build.workdir).values())
    for row in rows:
        if row["image_id"] in (ids[0], ids[5]):
            row.update(
                decision="reject",
                reason="both_present 0.100000 < 0.5",
                reviewer="prescreen",
                source="auto",
                decided_at=T2,
            )
    write_verification(build.workdir, rows)
    counts = review.sync(build.workdir, build.cfg, "bob", now=T2)
    assert (counts["restored"], counts["refreshed"]) == (1, 1)
    after = verification(build.workdir)
    assert after[ids[0]] == {
        "image_id": ids[0],
        "decision": "accept",
        "reason": None,
        "reviewer": "alice",
        "source": "human",
        "decided_at": T1,
    }
    # The untouched image follows the manifest: its tags and fields show the automatic reject.
    assert build.tags(ids[5]) == {"reject:both_present"}
    assert (build.sample(ids[5]).decision, build.sample(ids[5]).decision_source) == ("reject", "auto")
    assert after[ids[5]]["source"] == "auto"
    # ...and a reviewer who disagrees overrules it in turn.
    build.app_tag([ids[5]], {"reject:both_present": False, "accept": True})
    review.sync(build.workdir, build.cfg, "bob", now=T2)
    assert verification(build.workdir)[ids[5]]["source"] == "human"


def test_syncing_untouched_automatic_accepts_keeps_them_automatic(build: Build) -> None:
    """Only a tag a person set is a human decision: the automatic policy's accepts (which carry a reason, unlike a
    reviewer's) stay `source=auto` through any number of syncs and a rebuild, with the manifest's bytes."""
    from is4.manifests.io import manifest_path
    from is4.pipeline.verification import auto_verify

    review, ids = build.review, build.ids
    accepted = auto_verify(build.workdir, now=T1)["accepted"]
    assert accepted >= 4
    before = verification(build.workdir)
    counts = review.sync(build.workdir, build.cfg, "root", now=T2)  # the dataset follows the automatic accepts
    assert counts["refreshed"] == accepted and build.tags(ids[2]) == {"accept"}
    manifest = manifest_path(build.workdir, "verification").read_bytes()
    for _ in range(2):  # opening the App syncs; nobody touched a tag
        counts = review.sync(build.workdir, build.cfg, "root", now=T2)
        assert (counts["accepted"], counts["rejected"], counts["refreshed"]) == (0, 0, 0)
    assert verification(build.workdir) == before
    assert manifest_path(build.workdir, "verification").read_bytes() == manifest
    review.build_dataset(build.workdir, build.cfg, overwrite=True)  # nothing unsynced to refuse for
    assert build.sample(ids[2]).decision_source == "auto"
    # A person's tag is still a human decision: rejecting an automatic accept, then accepting it again.
    build.app_tag([ids[2]], {"accept": False, "reject:artefact": True})
    review.sync(build.workdir, build.cfg, "alice", now=T2)
    build.app_tag([ids[2]], {"reject:artefact": False, "accept": True})
    assert review.sync(build.workdir, build.cfg, "alice", now=T2)["accepted"] == 1
    assert verification(build.workdir)[ids[2]] | {"decided_at": None} == {
        "image_id": ids[2],
        "decision": "accept",
        "reason": None,
        "reviewer": "alice",
        "source": "human",
        "decided_at": None,
    }


# --- concurrent reviewers --------------------------------------------------------------------------------------

WORKER = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path
    args = json.loads(sys.argv[1])
    from is4.annotation import review
    from is4.config import ReviewConfig
    cfg = ReviewConfig.model_validate(args["cfg"], strict=False)
    workdir = Path(args["workdir"])
    fo = review.connect(cfg, workdir)
    import fiftyone.server.utils as fosu
    ds = fo.load_dataset(review.dataset_name(workdir, cfg))
    ids = dict(zip(ds.values("image_id"), ds.values("id")))
    Path(args["ready"]).touch()
    deadline = time.time() + 60
    while not Path(args["go"]).exists():
        assert time.time() < deadline, "never told to go"
        time.sleep(0.01)
    for k, (image_id, tag) in enumerate(args["tags"]):
        # One selection and one change at a time, like a reviewer clicking through the grid.
        fosu.change_sample_tags(ds.select([ids[image_id]]), {tag: True})
        # Every worker also marks every sample, so both write the same documents at the same time.
        for other in list(ids.values())[k::len(args["tags"])]:
            fosu.change_sample_tags(ds.select([other]), {args["mark"]: True})
        if args["sync"]:
            review.sync(workdir, cfg, args["reviewer"])
""")


def _run_workers(build: Build, plans: list[dict], tmp_path: Path) -> None:
    go = tmp_path / "go"
    procs, readies = [], []
    for k, plan in enumerate(plans):
        ready = tmp_path / f"ready-{k}"
        readies.append(ready)
        args = {
            "cfg": build.cfg.model_dump(mode="json"),
            "workdir": str(build.workdir),
            "ready": str(ready),
            "go": str(go),
            **plan,
        }
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", WORKER, json.dumps(args)],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    deadline = time.time() + 60
    while not all(r.exists() for r in readies):
        if any(p.poll() is not None for p in procs) or time.time() > deadline:
            for p in procs:
                p.kill()
            pytest.fail("a worker did not start: " + "".join(p.communicate()[0] for p in procs))
        time.sleep(0.05)
    go.touch()
    for p in procs:
        out, _ = p.communicate(timeout=120)
        assert p.returncode == 0, out


def _plans(ids: list[str], sync: bool) -> tuple[list[dict], dict[str, str]]:
    decisions = {image_id: ("accept" if i % 3 else "reject:artefact") for i, image_id in enumerate(ids[1:], 1)}
    items = list(decisions.items())
    plans = [
        {"tags": items[0::2], "mark": "seen-by-a", "reviewer": "a", "sync": sync},
        {"tags": items[1::2], "mark": "seen-by-b", "reviewer": "b", "sync": sync},
    ]
    return plans, decisions


def test_concurrent_taggers_in_two_processes_lose_nothing(tmp_path: Path, fiftyone_db: Path, fo_module) -> None:
    from is4.annotation import review

    b = _build(tmp_path, fiftyone_db, fo_module, n=24)
    plans, decisions = _plans(b.ids, sync=False)
    _run_workers(b, plans, tmp_path)
    for image_id in b.ids:
        expected = {"seen-by-a", "seen-by-b"} | ({decisions[image_id]} if image_id in decisions else set())
        assert b.tags(image_id) - {AUTO_TAG} == expected, image_id
    counts = review.sync(b.workdir, b.cfg, "lead", now=T1)
    accepts = sum(tag == "accept" for tag in decisions.values())
    assert (accepts, len(decisions)) == (16, 23)
    assert (counts["accepted"], counts["rejected"], counts["conflicts"]) == (accepts, len(decisions) - accepts, 0)
    rows = verification(b.workdir)
    for image_id, tag in decisions.items():
        assert (rows[image_id]["decision"], rows[image_id]["source"]) == (
            "accept" if tag == "accept" else "reject",
            "human",
        )


def test_concurrent_syncs_lose_nothing(tmp_path: Path, fiftyone_db: Path, fo_module) -> None:
    from is4.annotation import review

    b = _build(tmp_path, fiftyone_db, fo_module, n=24)
    plans, decisions = _plans(b.ids, sync=True)
    _run_workers(b, plans, tmp_path)  # each worker syncs after every tag, both at once
    rows = verification(b.workdir)  # read before anything could repair it
    for image_id, tag in decisions.items():
        row = rows[image_id]
        assert (row["decision"], row["reason"], row["source"]) == (
            ("accept", None, "human") if tag == "accept" else ("reject", "artefact", "human")
        ), image_id
        # Tags do not say who set them: a sync records what it finds under the name of whoever ran it.
        assert row["reviewer"] in {"a", "b"}
    assert rows[b.ids[0]]["source"] == "auto"
    counts = review.sync(b.workdir, b.cfg, "lead", now=T1)
    assert (counts["accepted"], counts["rejected"], counts["restored"], counts["refreshed"]) == (0, 0, 0, 0)
    assert counts["unchanged"] == 24


# --- refinement clicks and the plugin operator -----------------------------------------------------------------


def _add_clicks(build: Build) -> None:
    fo, ids = build.fo, build.ids
    s = build.sample(ids[1])
    s["clicks"] = fo.Keypoints(
        keypoints=[
            fo.Keypoint(label="cello", points=[[0.25, 0.5], [0.1, 0.2]], click="positive"),
            fo.Keypoint(label="cello", points=[[0.75, 0.5]], click="negative"),
            fo.Keypoint(label="dog", points=[[0.5, 0.25], [math.nan, math.nan]]),  # no attribute: positive
        ]
    )
    s["fix_boxes"] = fo.Detections(detections=[fo.Detection(label="dog", bounding_box=[0.125, 0.25, 0.5, 0.5])])
    s.save()
    other = build.sample(ids[2])  # clicks, but not tagged needs-fix: not pending
    other["clicks"] = fo.Keypoints(keypoints=[fo.Keypoint(label="dog", points=[[0.5, 0.5]], click="positive")])
    other.save()
    build.app_tag([ids[1]], {"needs-fix": True})


def test_pending_refinements_in_pixels(build: Build) -> None:
    review, ids = build.review, build.ids
    _add_clicks(build)
    got = review.pending_refinements(build.workdir, build.cfg)
    # 64×48 image: x·64, y·48, by hand.
    assert [r[0] for r in got] == [f"{ids[1]}_cello", f"{ids[1]}_dog"]
    (_, cello_points, cello_box), (_, dog_points, dog_box) = got
    assert cello_box is None
    assert [p[2] for p in cello_points] == [1, 1, 0]
    assert [p[:2] for p in cello_points] == [
        pytest.approx((16.0, 24.0)),
        pytest.approx((6.4, 9.6)),
        pytest.approx((48.0, 24.0)),
    ]
    assert [p[2] for p in dog_points] == [1] and dog_points[0][:2] == pytest.approx((32.0, 12.0))
    assert dog_box == pytest.approx((8.0, 12.0, 40.0, 36.0))
    assert review.pending_refinements(build.workdir, build.cfg, sample_ids=[build.sample(ids[2]).id]) == []

    s = build.sample(ids[1])
    s["clicks"].keypoints.append(build.fo.Keypoint(label="cat", points=[[0.5, 0.5]]))
    s.save()
    with pytest.raises(review.ReviewError, match="'cat'"):
        review.pending_refinements(build.workdir, build.cfg)


def _fake_refine(calls: list):
    """A stand-in for annotate.refine_instance: a mask = the box of the positive clicks, written as annotate does."""

    def refine_instance(workdir, cfg, segmenter, instance_id, *, points, box=None):
        calls.append((instance_id, points, box, segmenter.model_id))
        xs = [x for x, _, label in points if label == 1]
        ys = [y for _, y, label in points if label == 1]
        x0, x1, y0, y1 = int(min(xs)), int(max(xs)) + 1, int(min(ys)), int(max(ys)) + 1
        mask = np.zeros((H, W), np.uint8)
        mask[y0:y1, x0:x1] = 255
        rel = f"media/masks/{instance_id}.png"
        Image.fromarray(mask).save(Path(workdir) / rel)
        frame = read_manifest(workdir, "annotations")
        image_id, category = instance_id.rsplit("_", 1)
        row = {
            "instance_id": instance_id,
            "image_id": image_id,
            "category": category,
            "mask_path": rel,
            "bbox_xyxy": [float(x0), float(y0), float(x1), float(y1)],
            "method": "refined",
            "model_id": segmenter.model_id,
            "points": json.dumps([list(p) for p in points]),
        }
        frame = pd.concat([frame[frame["instance_id"] != instance_id], pd.DataFrame([row])], ignore_index=True)
        write_manifest(workdir, "annotations", frame)
        return row

    return refine_instance


def test_refine_masks_operator_refines_and_reloads(build: Build, monkeypatch: pytest.MonkeyPatch) -> None:
    import fiftyone.operators as foo

    review, ids = build.review, build.ids
    _add_clicks(build)
    calls: list = []
    fake = types.ModuleType("is4.annotation.annotate")
    fake.refine_instance = _fake_refine(calls)
    monkeypatch.setitem(sys.modules, "is4.annotation.annotate", fake)

    result = foo.execute_operator(f"{review.PLUGIN_NAME}/refine_masks", dataset=build.name)
    assert result.result == {"refined": [f"{ids[1]}_cello", f"{ids[1]}_dog"]}
    assert [c[0] for c in calls] == [f"{ids[1]}_cello", f"{ids[1]}_dog"]
    assert calls[1][2] == pytest.approx((8.0, 12.0, 40.0, 36.0)) and calls[0][3] == "tiny-random:sam"
    dets = {d.label: d for d in build.sample(ids[1]).sam.detections}
    # cello: positive clicks at (16, 24) and (6.4, 9.6) → columns 6..16, rows 9..24.
    assert dets["cello"].bounding_box == pytest.approx([6 / W, 9 / H, 11 / W, 16 / H])
    assert dets["cello"].mask.shape == (16, 11) and dets["cello"].method == "refined"
    assert dets["dog"].bounding_box == pytest.approx([32 / W, 12 / H, 1 / W, 1 / H])
    assert build.sample(ids[2]).sam.detections == []  # not tagged needs-fix: untouched

    # Selected samples narrow the work: ids[2] is selected but has no needs-fix tag, so nothing is refined.
    calls.clear()
    result = foo.execute_operator(
        f"{review.PLUGIN_NAME}/refine_masks", dataset=build.name, selected=[build.sample(ids[2]).id]
    )
    assert result.result == {"refined": []} and calls == []

    # A rebuild restores the refined masks and the clicks that made them (in the normalised keypoint scheme).
    review.build_dataset(build.workdir, build.cfg, overwrite=True)
    s = build.sample(ids[1])
    assert {d.label for d in s.sam.detections} == {"cello", "dog"}
    cello = [(kp["click"], kp.points) for kp in s.clicks.keypoints if kp.label == "cello"]
    assert cello[0][0] == "positive" and cello[0][1] == [pytest.approx([0.25, 0.5]), pytest.approx([0.1, 0.2])]
    assert cello[1][0] == "negative" and cello[1][1] == [pytest.approx([0.75, 0.5])]


# --- images match leaves out: an empty mask shows in needs-fix -------------------------------------------------


def _annotation_row(root: Path, image_id: str, category: str, rows: slice | None) -> dict:
    """An annotations row with its mask PNG: a block of rows × columns 5..14, or an empty mask (rows None)."""
    mask = np.zeros((H, W), np.uint8)
    if rows is not None:
        mask[rows, 5:15] = 255
    rel = f"media/masks/{image_id}_{category}.png"
    Image.fromarray(mask).save(root / rel)
    box = None if rows is None else [5.0, float(rows.start), 15.0, float(rows.stop)]
    return {
        "instance_id": f"{image_id}_{category}",
        "image_id": image_id,
        "category": category,
        "mask_path": rel,
        "bbox_xyxy": box,
        "method": "auto",
        "model_id": "tiny-random:sam",
    }


def _add_annotations(root: Path, rows: list[dict]) -> None:
    frame = read_manifest(root, "annotations")
    frame = frame[~frame["instance_id"].isin([r["instance_id"] for r in rows])]
    write_manifest(root, "annotations", pd.concat([frame, pd.DataFrame(rows)], ignore_index=True))


def test_needs_fix_shows_accepted_images_with_an_empty_mask(tmp_path: Path, fiftyone_db: Path, fo_module) -> None:
    from is4.annotation import review

    workdir = tmp_path / tmp_path.name
    ids = make_workdir(workdir)
    frame = read_manifest(workdir, "verification")
    chosen = frame["image_id"].isin(ids[1:4])
    frame.loc[chosen, ["decision", "reviewer", "source"]] = ["accept", "alice", "human"]
    frame.loc[chosen, "decided_at"] = T1
    write_manifest(workdir, "verification", frame)
    # ids[1]: its cello (from make_workdir) and an empty dog mask; ids[2]: two masks; ids[3]: not annotated yet;
    # ids[4] (pending, not accepted): an empty mask that match would never release anyway.
    _add_annotations(
        workdir,
        [
            _annotation_row(workdir, ids[1], "dog", None),
            _annotation_row(workdir, ids[2], "cello", slice(2, 9)),
            _annotation_row(workdir, ids[2], "dog", slice(20, 30)),
            _annotation_row(workdir, ids[4], "cello", slice(2, 9)),
            _annotation_row(workdir, ids[4], "dog", None),
        ],
    )
    cfg = ReviewConfig(database_dir=fiftyone_db)
    review.build_dataset(workdir, cfg)
    b = Build(workdir, cfg, ids, fo_module)
    assert (b.sample(ids[1]).annotated_objects, len(b.sample(ids[1]).sam.detections)) == (2, 1)
    assert b.view_ids("needs-fix") == [ids[1]]
    assert sorted(b.view_ids("annotated")) == [ids[1], ids[2]] and b.view_ids("to-annotate") == [ids[3]]

    b.app_tag([ids[5]], {"needs-fix": True})  # a reviewer's tag still puts any image there
    assert sorted(b.view_ids("needs-fix")) == [ids[1], ids[5]]

    # A refinement gives the dog a mask; the mask reload that follows it takes the image out of the view.
    _add_annotations(workdir, [_annotation_row(workdir, ids[1], "dog", slice(30, 40))])
    review.reload_masks(workdir, cfg, [ids[1]])
    assert b.view_ids("needs-fix") == [ids[5]]

    # Annotations that arrive later (annotate after the review): refresh counts them, and an empty one shows.
    _add_annotations(
        workdir,
        [_annotation_row(workdir, ids[3], "cello", None), _annotation_row(workdir, ids[3], "dog", slice(20, 30))],
    )
    assert review.refresh(workdir, cfg, "alice")["action"].startswith("masks reloaded")
    assert b.sample(ids[3]).annotated_objects == 2
    assert sorted(b.view_ids("needs-fix")) == [ids[3], ids[5]]
