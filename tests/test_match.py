"""The match stage: seeded, order-independent clip assignment with reuse accounting and a leakage guard."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import is4.pipeline.match as match_mod
from is4.config import MatchConfig
from is4.manifests.ids import stable_rank
from is4.manifests.io import manifest_path, read_manifest, write_manifest
from is4.pipeline.match import MatchError, run_match
from tests.support.matched import ACCEPTED, CATEGORIES, CLIPS, SEED, USABLE, drop_annotation, empty_mask, make_workdir


@pytest.fixture()
def workdir(tmp_path: Path) -> Path:
    return make_workdir(tmp_path / "work")


def _assignment(work: Path) -> dict[str, str]:
    frame = read_manifest(work, "instances")
    return dict(zip(frame["instance_id"], frame["clip_id"]))


def test_each_clip_once_while_the_pool_lasts_then_reuse(workdir: Path) -> None:
    summary = run_match(workdir, MatchConfig(), SEED)
    frame = read_manifest(workdir, "instances")
    assert summary["instances"] == len(frame) == 2 * len(ACCEPTED)
    assert summary["categories"] == 2

    dog = frame[frame["category"] == "dog"].sort_values("instance_id")
    # 3 dog instances, 2 usable dog clips (one per merged label): both used once, then one reused.
    assert set(dog["clip_id"]) == USABLE["dog"]
    first_two = list(dog["clip_id"])[:2]
    assert len(set(first_two)) == 2
    assert list(dog["reused"]) == [False, False, True]
    ranked = sorted(USABLE["dog"], key=lambda c: stable_rank(SEED, "match", "dog", c))
    assert list(dog["clip_id"]) == [ranked[0], ranked[1], ranked[0]]

    cello = frame[frame["category"] == "cello"]
    assert cello["clip_id"].is_unique and set(cello["clip_id"]) <= USABLE["cello"]
    assert not cello["reused"].any()

    assert summary["reused"] == 1
    assert summary["clips_used"] == 2 + 3
    assert summary["excluded"] == 0
    # Every row carries the clip's label and audio, the image, the mask and the box.
    labels = {c[0]: c[1] for c in CLIPS}
    for rec in frame.to_dict("records"):
        assert rec["label"] == labels[rec["clip_id"]]
        assert rec["audio_path"] == f"media/audio/{rec['clip_id']}.wav"
        assert rec["image_path"] == f"media/images/{rec['image_id']}.png"
        assert rec["mask_path"] == f"media/masks/{rec['instance_id']}.png"
        assert len(rec["bbox_xyxy"]) == 4


def test_only_accepted_images_and_usable_clips(workdir: Path) -> None:
    run_match(workdir, MatchConfig(), SEED)
    frame = read_manifest(workdir, "instances")
    assert set(frame["image_id"]) == set(ACCEPTED)
    assert "cello_dog_3_dog" not in set(frame["instance_id"])
    used = set(frame["clip_id"])
    assert "dogAAAAAAA3_000030" not in used  # failed
    assert "dogAAAAAAA4_000040" not in used  # train split


def test_train_split_joins_the_pool_when_configured(workdir: Path) -> None:
    run_match(workdir, MatchConfig(splits=["train", "test"]), SEED)
    dog = read_manifest(workdir, "instances").query("category == 'dog'")
    assert set(dog["clip_id"]) == USABLE["dog"] | {"dogAAAAAAA4_000040"}
    assert not dog["reused"].any()


def test_seeded_and_independent_of_row_order(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run_match(workdir, MatchConfig(), SEED)
    path = manifest_path(workdir, "instances")
    reference = path.read_bytes()
    reference_assignment = _assignment(workdir)

    real_read = match_mod.read_manifest

    def shuffled(work, table):
        frame = real_read(work, table)
        return frame.sample(frac=1.0, random_state=3).iloc[::-1].reset_index(drop=True)

    monkeypatch.setattr(match_mod, "read_manifest", shuffled)
    run_match(workdir, MatchConfig(), SEED)
    assert path.read_bytes() == reference
    monkeypatch.undo()

    run_match(workdir, MatchConfig(), SEED + 1)
    assert _assignment(workdir) != reference_assignment
    run_match(workdir, MatchConfig(), SEED)
    assert path.read_bytes() == reference


def test_excluded_clips_are_never_used(workdir: Path, tmp_path: Path) -> None:
    run_match(workdir, MatchConfig(), SEED)
    cello_used = set(read_manifest(workdir, "instances").query("category == 'cello'")["clip_id"])
    victim = sorted(cello_used)[0]

    id_list = tmp_path / "train_ids.txt"
    id_list.write_text(f"# training clips\n{victim}.wav\n")
    summary = run_match(workdir, MatchConfig(exclude_clip_lists=[id_list]), SEED)
    frame = read_manifest(workdir, "instances")
    assert victim not in set(frame["clip_id"])
    assert summary["excluded"] == 1 and summary["excluded_by_category"] == {"cello": 1}
    cello = frame[frame["category"] == "cello"]
    assert cello["clip_id"].is_unique and not cello["reused"].any()  # 3 clips left for 3 instances

    # A training manifest (Parquet with clip_id) and a YouTube id in a list both exclude.
    train = tmp_path / "train_clips.parquet"
    pq.write_table(pa.table({"clip_id": pa.array(["dogAAAAAAA1_000010"]), "label": pa.array(["dog barking"])}), train)
    ytids = tmp_path / "videos.txt"
    ytids.write_text("celloAAAAA2\n")
    summary = run_match(workdir, MatchConfig(exclude_clip_lists=[train, ytids]), SEED)
    frame = read_manifest(workdir, "instances")
    assert not {"dogAAAAAAA1_000010", "celloAAAAA2_000020"} & set(frame["clip_id"])
    dog = frame[frame["category"] == "dog"]
    assert set(dog["clip_id"]) == {"dogAAAAAAA2_000020"} and list(dog["reused"]) == [False, True, True]
    assert summary["excluded"] == 2


def test_excluding_a_whole_pool_fails_naming_the_category(workdir: Path, tmp_path: Path) -> None:
    id_list = tmp_path / "train_ids.txt"
    id_list.write_text("\n".join(sorted(USABLE["dog"])) + "\n")
    before = manifest_path(workdir, "instances")
    with pytest.raises(MatchError, match=r"'dog'.*2 excluded"):
        run_match(workdir, MatchConfig(exclude_clip_lists=[id_list]), SEED)
    assert not before.exists()


def test_category_without_clips_fails(workdir: Path) -> None:
    clips = read_manifest(workdir, "clips")
    write_manifest(workdir, "clips", clips[~clips["label"].eq("playing cello")])
    with pytest.raises(MatchError, match=r"'cello'.*0 excluded"):
        run_match(workdir, MatchConfig(), SEED)


def test_bad_exclusion_files_are_named(workdir: Path, tmp_path: Path) -> None:
    missing = tmp_path / "nope.txt"
    with pytest.raises(MatchError, match="nope.txt"):
        run_match(workdir, MatchConfig(exclude_clip_lists=[missing]), SEED)
    no_column = tmp_path / "wrong.parquet"
    pq.write_table(pa.table({"id": pa.array(["x"])}), no_column)
    with pytest.raises(MatchError, match="no clip_id column"):
        run_match(workdir, MatchConfig(exclude_clip_lists=[no_column]), SEED)


# --- complete IS4 items only ----------------------------------------------------------------------------------------


def _report(work: Path) -> dict:
    return json.loads((work / match_mod.REPORT_PATH).read_text())


def test_an_image_with_an_empty_mask_is_left_out_whole(workdir: Path) -> None:
    empty_mask(workdir, "cello_dog_1_dog")
    drop_annotation(workdir, "cello_dog_2_cello")
    empty_mask(workdir, "cello_dog_3_dog")  # a rejected image: neither released nor counted
    summary = run_match(workdir, MatchConfig(), SEED)
    frame = read_manifest(workdir, "instances")
    # Not even the good object of an incomplete image is released.
    assert sorted(frame["instance_id"]) == ["cello_dog_0_cello", "cello_dog_0_dog"]
    report = _report(workdir)
    assert report["excluded"] == {"cello_dog_1": ["empty-mask: dog"], "cello_dog_2": ["missing-annotation: cello"]}
    assert report["images_released"] == summary["images_released"] == 1
    assert report["images_excluded"] == summary["images_excluded"] == 2
    expected_counts = {"empty-mask": 1, "missing-annotation": 1}
    assert report["images_excluded_by_reason"] == summary["images_excluded_by_reason"] == expected_counts
    path = manifest_path(workdir, "instances")
    assert report["instances_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert summary["instances"] == 2 and summary["reused"] == 0  # the two dog clips now suffice

    # Both masks of one image empty: one image, two reasons, counted once under its kind.
    empty_mask(workdir, "cello_dog_0_cello")
    empty_mask(workdir, "cello_dog_0_dog")
    drop_annotation(workdir, "cello_dog_1_cello")
    summary = run_match(workdir, MatchConfig(), SEED)
    report = _report(workdir)
    assert report["excluded"] == {
        "cello_dog_0": ["empty-mask: cello", "empty-mask: dog"],
        "cello_dog_1": ["missing-annotation: cello", "empty-mask: dog"],
        "cello_dog_2": ["missing-annotation: cello"],
    }
    assert report["images_excluded_by_reason"] == {"empty-mask": 2, "missing-annotation": 2}
    assert summary["instances"] == report["images_released"] == 0 and read_manifest(workdir, "instances").empty


def test_instances_of_an_image_have_two_clips_of_their_own_categories(workdir: Path) -> None:
    run_match(workdir, MatchConfig(splits=["train", "test"]), SEED)
    frame = read_manifest(workdir, "instances")
    category_of_label = {label: cid for label, _obj, cid in CATEGORIES}
    for image_id, group in frame.groupby("image_id"):
        assert sorted(group["category"]) == ["cello", "dog"], image_id
        assert group["clip_id"].is_unique, image_id
        for rec in group.to_dict("records"):
            assert category_of_label[rec["label"]] == rec["category"]
            assert rec["instance_id"] == f"{image_id}_{rec['category']}"


def test_an_assignment_that_breaks_the_invariants_is_a_bug(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_assign = match_mod.assign_clips

    def shared_clip(instances, pools, seed):
        rows = real_assign(instances, pools, seed)
        cello = next(r for r in rows if r["instance_id"] == "cello_dog_0_cello")
        dog = next(r for r in rows if r["instance_id"] == "cello_dog_0_dog")
        dog.update(clip_id=cello["clip_id"], label=cello["label"])
        return rows

    monkeypatch.setattr(match_mod, "assign_clips", shared_clip)
    with pytest.raises(MatchError, match=r"bug: instance cello_dog_0_dog .*'playing cello'.*'dog'"):
        run_match(workdir, MatchConfig(), SEED)
    assert not manifest_path(workdir, "instances").exists()

    rows = [
        {"instance_id": f"x_y_0_{c}", "image_id": "x_y_0", "category": c, "clip_id": "same", "label": c}
        for c in ("x", "y")
    ]
    with pytest.raises(MatchError, match=r"bug: image x_y_0 .*x_y_0_x → same, x_y_0_y → same"):
        match_mod.check_assignment(rows, {"x": "x", "y": "y"})
    with pytest.raises(MatchError, match=r"bug: image x_y_0 .*two objects"):
        match_mod.check_assignment(rows[:1], {"x": "x", "y": "y"})
    match_mod.check_assignment([rows[0], {**rows[1], "clip_id": "other"}], {"x": "x", "y": "y"})


def test_exclusions_are_seeded_and_independent_of_row_order(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty_mask(workdir, "cello_dog_2_cello")
    run_match(workdir, MatchConfig(), SEED)
    manifest, report = manifest_path(workdir, "instances"), workdir / match_mod.REPORT_PATH
    reference = (manifest.read_bytes(), report.read_bytes())
    real_read = match_mod.read_manifest
    monkeypatch.setattr(
        match_mod,
        "read_manifest",
        lambda work, table: real_read(work, table).sample(frac=1.0, random_state=11).reset_index(drop=True),
    )
    run_match(workdir, MatchConfig(), SEED)
    assert (manifest.read_bytes(), report.read_bytes()) == reference
    assert _report(workdir)["excluded"] == {"cello_dog_2": ["empty-mask: cello"]}


def test_annotations_that_are_not_the_image_s_objects_are_refused(workdir: Path) -> None:
    frame = read_manifest(workdir, "annotations")
    stray = frame[frame["instance_id"] == "cello_dog_0_dog"].assign(instance_id="cello_dog_0_cat", category="cat")
    write_manifest(workdir, "annotations", pd.concat([frame, stray], ignore_index=True))
    with pytest.raises(MatchError, match=r"image cello_dog_0: annotation of 'cat'.*'cello', 'dog'"):
        run_match(workdir, MatchConfig(), SEED)

    misnamed = frame.copy()
    misnamed.loc[misnamed["instance_id"] == "cello_dog_1_dog", "instance_id"] = "cello_dog_1_puppy"
    write_manifest(workdir, "annotations", misnamed)
    with pytest.raises(MatchError, match=r"'cello_dog_1_puppy'.*cello_dog_1_dog"):
        run_match(workdir, MatchConfig(), SEED)
