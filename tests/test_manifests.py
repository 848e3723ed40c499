"""Manifest tables: Parquet round trip, determinism, validation, read errors and atomic writes."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq
import pytest

import is4.manifests.io as manifest_io
from is4.manifests.atomic import atomic_path, atomic_write_bytes
from is4.manifests.io import (
    ManifestError,
    manifest_path,
    read_manifest,
    read_provenance,
    write_manifest,
)
from is4.manifests.schema import CATEGORIES, CLIPS, SCHEMA_VERSION
from tests.support.rows import clip_row, clips_frame, sample_frame

# --- round trip ----------------------------------------------------------------------------------------------------


def test_write_returns_the_manifest_path(tmp_path: Path) -> None:
    path = write_manifest(tmp_path, "clips", sample_frame())
    assert path == manifest_path(tmp_path, "clips") == tmp_path / "manifests" / "clips.parquet"
    assert path.is_file()


def test_round_trip_keeps_values_and_nulls(tmp_path: Path) -> None:
    write_manifest(tmp_path, "clips", sample_frame())
    out = read_manifest(tmp_path, "clips").set_index("row")
    assert list(out.index) == [1, 2, 3]
    assert out.loc[3, "clip_id"] == "abcdefghij3_000003"
    assert out.loc[3, "source_bytes"] == 123_456
    assert out.loc[3, "frame_path"] == "frames/c.jpg"
    assert out.loc[3, "peak_dbfs"] == -3.5
    assert out.loc[1, "reason"] == "unavailable: private video"
    assert bool(out.loc[1, "retryable"]) is True
    assert out.loc[1, "attempts"] == 3
    # nulls stay nulls
    assert pd.isna(out.loc[2, "clip_id"])
    assert pd.isna(out.loc[2, "start_sec"])
    assert pd.isna(out.loc[1, "source_bytes"])
    assert pd.isna(out.loc[1, "frame_path"])
    assert pd.isna(out.loc[1, "peak_dbfs"])


def test_nullable_int_columns_read_back_as_Int64(tmp_path: Path) -> None:
    frame = sample_frame()
    frame["start_sec"] = frame["start_sec"].astype("Int64")
    write_manifest(tmp_path, "clips", frame)
    out = read_manifest(tmp_path, "clips")
    for column in ("row", "start_sec", "attempts", "source_bytes", "frame_width"):
        assert out[column].dtype == pd.Int64Dtype(), column
    assert out["start_sec"].tolist()[:1] == [1]
    assert out["start_sec"].isna().tolist() == [False, True, False]
    assert out["retryable"].dtype == pd.BooleanDtype()


def test_rows_come_back_sorted_by_the_spec_sort_key(tmp_path: Path) -> None:
    frame = clips_frame(*(clip_row(r) for r in (5, 2, 9, 1, 7)))
    write_manifest(tmp_path, "clips", frame)
    out = read_manifest(tmp_path, "clips")
    assert out["row"].tolist() == [1, 2, 5, 7, 9]
    assert out["clip_id"].tolist() == [f"abcdefghij{r % 10}_{r:06d}" for r in (1, 2, 5, 7, 9)]


def test_categories_are_sorted_by_label(tmp_path: Path) -> None:
    frame = pd.DataFrame(
        {
            "label": ["zebra", "alarm clock", "dog"],
            "object": ["zebra", "alarm clock", "dog"],
            "category_id": ["zebra", "alarmclock", "dog"],
            "instrument": [False, False, False],
            "depictable": [True, True, None],
        }
    )
    write_manifest(tmp_path, CATEGORIES, frame)
    out = read_manifest(tmp_path, "categories")
    assert out["label"].tolist() == ["alarm clock", "dog", "zebra"]
    assert pd.isna(out.set_index("label").loc["dog", "depictable"])


def test_extra_stage_columns_survive(tmp_path: Path) -> None:
    frame = sample_frame()
    frame["download_note"] = ["n3", None, "n2"]
    frame["stage_score"] = [0.5, 0.25, 1.0]
    write_manifest(tmp_path, "clips", frame)
    out = read_manifest(tmp_path, "clips").set_index("row")
    assert out.loc[3, "download_note"] == "n3"
    assert pd.isna(out.loc[1, "download_note"])
    assert out.loc[1, "stage_score"] == 0.25
    assert out.loc[2, "stage_score"] == 1.0


def test_empty_frame_round_trips(tmp_path: Path) -> None:
    write_manifest(tmp_path, "clips", clips_frame())
    out = read_manifest(tmp_path, "clips")
    assert len(out) == 0
    assert list(out.columns) == list(CLIPS.column_names)


# --- determinism and provenance ------------------------------------------------------------------------------------


def test_same_frame_written_twice_gives_identical_bytes(tmp_path: Path) -> None:
    provenance = {"stage": "ingest", "config": "abc123", "csv_sha256": "f00"}
    a = write_manifest(tmp_path / "a", "clips", sample_frame(), provenance).read_bytes()
    b = write_manifest(tmp_path / "b", "clips", sample_frame(), dict(reversed(list(provenance.items())))).read_bytes()
    assert a == b


def test_row_order_of_the_input_does_not_change_the_bytes(tmp_path: Path) -> None:
    frame = sample_frame()
    a = write_manifest(tmp_path / "a", "clips", frame).read_bytes()
    b = write_manifest(tmp_path / "b", "clips", frame.iloc[::-1].reset_index(drop=True)).read_bytes()
    assert a == b


def test_read_back_frame_rewrites_to_identical_bytes(tmp_path: Path) -> None:
    a = write_manifest(tmp_path / "a", "clips", sample_frame(), {"k": 1}).read_bytes()
    again = read_manifest(tmp_path / "a", "clips")
    b = write_manifest(tmp_path / "b", "clips", again, {"k": 1}).read_bytes()
    assert a == b


def test_provenance_round_trips_without_timestamps(tmp_path: Path) -> None:
    provenance = {"stage": "ingest", "seed": 0, "inputs": ["a.csv"]}
    write_manifest(tmp_path, "clips", sample_frame(), provenance)
    assert read_provenance(tmp_path, "clips") == provenance


def test_missing_provenance_reads_as_empty_dict(tmp_path: Path) -> None:
    write_manifest(tmp_path, "clips", sample_frame())
    assert read_provenance(tmp_path, "clips") == {}


def test_different_provenance_changes_the_bytes(tmp_path: Path) -> None:
    a = write_manifest(tmp_path / "a", "clips", sample_frame(), {"config": "1"}).read_bytes()
    b = write_manifest(tmp_path / "b", "clips", sample_frame(), {"config": "2"}).read_bytes()
    assert a != b


# --- validation on write -------------------------------------------------------------------------------------------


def expect_write_error(tmp_path: Path, frame: pd.DataFrame, *fragments: str) -> str:
    with pytest.raises(ManifestError) as info:
        write_manifest(tmp_path, "clips", frame)
    message = str(info.value)
    assert "clips.parquet" in message
    for fragment in fragments:
        assert fragment in message
    assert not manifest_path(tmp_path, "clips").exists()
    return message


def test_missing_required_column_is_named(tmp_path: Path) -> None:
    expect_write_error(tmp_path, sample_frame().drop(columns=["attempts"]), "missing", "attempts")


def test_bad_enum_value_is_named(tmp_path: Path) -> None:
    message = expect_write_error(tmp_path, clips_frame(clip_row(1, status="weird")), "'status'", "'weird'")
    assert "ok" in message  # lists the allowed values


def test_duplicate_key_is_rejected(tmp_path: Path) -> None:
    frame = clips_frame(clip_row(1), clip_row(2, clip_id="abcdefghij1_000001"))
    expect_write_error(tmp_path, frame, "abcdefghij1_000001")


def test_null_key_allowed_only_for_invalid_rows(tmp_path: Path) -> None:
    ok = clips_frame(clip_row(1, clip_id=None, status="invalid"), clip_row(2, clip_id=None, status="invalid"))
    write_manifest(tmp_path / "ok", "clips", ok)
    assert read_manifest(tmp_path / "ok", "clips")["clip_id"].isna().all()
    expect_write_error(tmp_path, clips_frame(clip_row(1, clip_id=None, status="failed")), "clip_id")


@pytest.mark.parametrize("column", ["status", "attempts", "retryable", "row"])
def test_null_in_non_nullable_column_is_named(tmp_path: Path, column: str) -> None:
    broken = clip_row(2)
    broken[column] = None
    frame = clips_frame(clip_row(1), broken)
    expect_write_error(tmp_path, frame, repr(column))


def test_value_of_the_wrong_type_is_named(tmp_path: Path) -> None:
    expect_write_error(tmp_path, clips_frame(clip_row(1, attempts="three")), "'attempts'")


@pytest.mark.parametrize(
    "bad_path", ["/abs/frames/a.jpg", "../outside.jpg", "frames/../../x.jpg", "frames\\a.jpg", "C:/x.jpg", ""]
)
def test_path_columns_must_be_relative_inside_workdir(tmp_path: Path, bad_path: str) -> None:
    expect_write_error(tmp_path, clips_frame(clip_row(1, frame_path=bad_path)), "'frame_path'", repr(bad_path))


def test_unknown_table_name_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="unknown manifest table 'clipz'"):
        write_manifest(tmp_path, "clipz", sample_frame())
    with pytest.raises(ManifestError, match="clipz"):
        read_manifest(tmp_path, "clipz")


# --- read errors ---------------------------------------------------------------------------------------------------


def test_read_of_missing_manifest_says_which(tmp_path: Path) -> None:
    with pytest.raises(ManifestError) as info:
        read_manifest(tmp_path, "clips")
    assert str(manifest_path(tmp_path, "clips")) in str(info.value)
    assert "no clips manifest" in str(info.value)


def test_read_of_non_parquet_file_is_a_manifest_error(tmp_path: Path) -> None:
    path = manifest_path(tmp_path, "clips")
    path.parent.mkdir(parents=True)
    path.write_text("row,clip_id\n1,abc\n")
    with pytest.raises(ManifestError) as info:
        read_manifest(tmp_path, "clips")
    assert str(path) in str(info.value)
    assert "Parquet" in str(info.value)


def test_read_of_truncated_parquet_is_a_manifest_error(tmp_path: Path) -> None:
    path = write_manifest(tmp_path, "clips", sample_frame())
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    with pytest.raises(ManifestError, match="Parquet"):
        read_manifest(tmp_path, "clips")


def test_read_of_another_tables_parquet_is_rejected(tmp_path: Path) -> None:
    frame = pd.DataFrame(
        {"label": ["dog"], "object": ["dog"], "category_id": ["dog"], "instrument": [False], "depictable": [True]}
    )
    categories = write_manifest(tmp_path, "categories", frame)
    manifest_path(tmp_path, "clips").write_bytes(categories.read_bytes())
    with pytest.raises(ManifestError) as info:
        read_manifest(tmp_path, "clips")
    assert "not an IS4 'clips' manifest" in str(info.value)
    assert "categories" in str(info.value)


def test_read_of_plain_parquet_without_tags_is_rejected(tmp_path: Path) -> None:
    path = manifest_path(tmp_path, "clips")
    path.parent.mkdir(parents=True)
    sample_frame().to_parquet(path)
    with pytest.raises(ManifestError, match="not an IS4 'clips' manifest"):
        read_manifest(tmp_path, "clips")


def rewrite_metadata(path: Path, **changes: bytes) -> None:
    table = pq.read_table(path)
    meta = dict(table.schema.metadata or {})
    meta.update({k.encode(): v for k, v in changes.items()})
    pq.write_table(table.replace_schema_metadata(meta), path)


def test_read_of_other_schema_version_is_rejected(tmp_path: Path) -> None:
    path = write_manifest(tmp_path, "clips", sample_frame())
    rewrite_metadata(path, **{"is4.schema_version": str(SCHEMA_VERSION + 1).encode()})
    with pytest.raises(ManifestError) as info:
        read_manifest(tmp_path, "clips")
    message = str(info.value)
    assert str(path) in message
    assert f"schema version {SCHEMA_VERSION + 1}" in message
    assert "rebuild" in message


def test_read_validates_the_contents(tmp_path: Path) -> None:
    # A file with the right tags but a broken contract (hand-edited, or written by an old bug).
    path = write_manifest(tmp_path, "clips", clips_frame(clip_row(1), clip_row(2)))
    table = pq.read_table(path)
    clip_ids = table.column("clip_id").to_pylist()
    broken = table.set_column(
        table.schema.get_field_index("clip_id"),
        table.schema.field("clip_id"),
        [[clip_ids[0], clip_ids[0]]],
    )
    pq.write_table(broken, path)
    with pytest.raises(ManifestError) as info:
        read_manifest(tmp_path, "clips")
    assert str(path) in str(info.value)
    assert "being written" not in str(info.value)
    assert clip_ids[0] in str(info.value)


# --- atomicity -----------------------------------------------------------------------------------------------------


def test_invalid_write_leaves_the_previous_manifest_intact(tmp_path: Path) -> None:
    path = write_manifest(tmp_path, "clips", sample_frame(), {"v": 1})
    before = path.read_bytes()
    with pytest.raises(ManifestError):
        write_manifest(tmp_path, "clips", clips_frame(clip_row(1, status="weird")), {"v": 2})
    assert path.read_bytes() == before
    assert read_manifest(tmp_path, "clips")["row"].tolist() == [1, 2, 3]
    assert read_provenance(tmp_path, "clips") == {"v": 1}


def test_write_that_dies_mid_file_leaves_previous_manifest_and_no_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_manifest(tmp_path, "clips", sample_frame())
    before = path.read_bytes()

    def dying_write(table: Any, where: Any, **kwargs: Any) -> None:
        Path(where).write_bytes(b"PAR1 half a file")
        raise OSError("disk full")

    monkeypatch.setattr(manifest_io.pq, "write_table", dying_write)
    with pytest.raises(OSError, match="disk full"):
        write_manifest(tmp_path, "clips", clips_frame(clip_row(7)))
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert read_manifest(tmp_path, "clips")["row"].tolist() == [1, 2, 3]
    assert sorted(p.name for p in path.parent.iterdir()) == ["clips.parquet"]


def test_atomic_path_removes_temp_file_on_exception(tmp_path: Path) -> None:
    target = tmp_path / "out" / "file.bin"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"partial")
            assert tmp.parent == target.parent
            assert tmp != target
            raise RuntimeError("boom")
    assert not target.exists()
    assert list(target.parent.iterdir()) == []


def test_atomic_path_keeps_old_target_on_exception(tmp_path: Path) -> None:
    target = tmp_path / "file.txt"
    target.write_text("old")
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(target) as tmp:
            tmp.write_text("new")
            raise KeyboardInterrupt
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["file.txt"]


def test_atomic_path_temp_file_is_hidden_and_keeps_suffix(tmp_path: Path) -> None:
    target = tmp_path / "frame.jpg"
    with atomic_path(target) as tmp:
        assert tmp.name.startswith(".")
        assert tmp.suffix == ".jpg"
        tmp.write_bytes(b"x")
    with atomic_path(target, suffix=".part") as tmp:
        assert tmp.suffix == ".part"
        tmp.write_bytes(b"y")
    assert target.read_bytes() == b"y"
    assert [p.name for p in tmp_path.iterdir()] == ["frame.jpg"]


def current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_atomic_files_get_normal_permissions(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "data.bin"
    atomic_write_bytes(target, b"hello")
    assert target.read_bytes() == b"hello"
    mode = stat.S_IMODE(target.stat().st_mode)
    assert mode == 0o666 & ~current_umask()
    if current_umask() & 0o044 == 0:
        assert mode != 0o600  # mkstemp's private mode must not leak to finished files


def test_manifest_files_get_normal_permissions(tmp_path: Path) -> None:
    path = write_manifest(tmp_path, "clips", sample_frame())
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~current_umask()


def _image_row(**extra: Any) -> dict[str, Any]:
    return {
        "image_id": "cat_dog_0",
        "category_a": "cat",
        "category_b": "dog",
        "template": "t",
        "style": "s",
        "prompt": "p",
        "seed": 1,
        "model_id": "m",
        "model_revision": "r",
        "image_path": "media/images/x.png",
        "sha256": "0" * 64,
        **extra,
    }


def test_optional_columns_keep_their_declared_type_even_when_all_null(tmp_path: Path) -> None:
    write_manifest(tmp_path, "images", pd.DataFrame([_image_row(flag=None, steps=None)]))
    schema = pq.read_schema(manifest_path(tmp_path, "images"))
    assert str(schema.field("flag").type) == "string" and str(schema.field("steps").type) == "int64"


def test_optional_columns_are_not_required(tmp_path: Path) -> None:
    write_manifest(tmp_path, "images", pd.DataFrame([_image_row()]))
    assert "flag" not in read_manifest(tmp_path, "images").columns


def test_optional_enum_column_is_checked_when_present(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="'flag' has 'spicy'"):
        write_manifest(tmp_path, "images", pd.DataFrame([_image_row(flag="spicy")]))


def test_a_killed_writers_temporary_file_is_removed_between_stages(tmp_path: Path) -> None:
    """SIGKILL inside `atomic_path` leaves its temporary file; the build removes it after the stage, and nothing
    else (finished files, other hidden files, other folders)."""
    import signal
    import subprocess
    import sys

    from is4.manifests.io import write_manifest
    from is4.pipeline.registry import REGISTRY
    from is4.pipeline.stage import remove_orphaned_temporaries

    work = tmp_path / "work"
    frames = work / "frames"
    frames.mkdir(parents=True)
    (frames / "c.jpg").write_bytes(b"finished")
    (frames / ".keep").write_bytes(b"")
    elsewhere = work / "elsewhere"
    elsewhere.mkdir()
    killer = (
        "import os, signal, sys\n"
        "from is4.manifests.atomic import atomic_path\n"
        "with atomic_path(sys.argv[1]) as tmp:\n"
        "    tmp.write_bytes(b'half')\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    for target in (frames / "d.jpg", elsewhere / "e.jpg"):
        done = subprocess.run([sys.executable, "-c", killer, str(target)], check=False)
        assert done.returncode == -signal.SIGKILL
    left = sorted(p.name for p in frames.iterdir())
    assert any(name.startswith(".d.jpg.tmp-") for name in left), left
    write_manifest(work, CLIPS, sample_frame(), {})

    ingest = next(stage for stage in REGISTRY if stage.name == "ingest")
    removed = remove_orphaned_temporaries(work, ingest)
    assert [p.parent for p in removed] == [frames] and removed[0].name.startswith(".d.jpg.tmp-")
    assert sorted(p.name for p in frames.iterdir()) == [".keep", "c.jpg"]
    assert len(list(elsewhere.iterdir())) == 1  # not a folder of the stage's outputs: left alone


def test_a_tables_check_never_removes_a_file_another_stage_made(tmp_path: Path) -> None:
    """An instance lists an annotation's mask: when a person's refinement rewrote that mask, the instances are stale
    (match runs again) but the mask is the annotations' to check, and stays."""
    from is4.manifests.io import write_manifest
    from is4.manifests.schema import INSTANCES
    from is4.pipeline.registry import REGISTRY
    from is4.pipeline.stage import damaged_files, record_outputs

    work = tmp_path / "work"
    masks = work / "masks"
    masks.mkdir(parents=True)
    (masks / "img1_dog.png").write_bytes(b"automatic mask")
    row: dict[str, Any] = {name: None for name in INSTANCES.column_names + INSTANCES.optional_names}
    row.update(instance_id="img1_dog", image_id="img1", category="dog", mask_path="masks/img1_dog.png")
    write_manifest(work, INSTANCES, pd.DataFrame([row]), {})
    match = next(stage for stage in REGISTRY if stage.name == "match")
    record_outputs(work, match)
    assert damaged_files(work, "instances", record=_recorded(work, "match")) == []

    (masks / "img1_dog.png").write_bytes(b"refined by a person")
    assert damaged_files(work, "instances", record=_recorded(work, "match")) == ["masks/img1_dog.png"]
    assert (masks / "img1_dog.png").read_bytes() == b"refined by a person"
    assert not match.outputs_intact(work, None)  # type: ignore[arg-type]
    assert (masks / "img1_dog.png").read_bytes() == b"refined by a person"


def _recorded(work: Path, stage: str) -> dict[str, Any]:
    from is4.pipeline.stage import stage_record

    return stage_record(work, stage)["instances"]
