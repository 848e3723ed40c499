"""Seeded subset selection: split, label and id-list filters and the order-independent per-class cap."""

from __future__ import annotations

import random
import string
from collections import Counter
from pathlib import Path

import pytest

from is4.manifests.ids import make_clip_id
from is4.pipeline.ingest.subsets import read_id_list, select_rows
from is4.pipeline.ingest.vggsound_csv import CsvError, CsvRow

LABELS = ("dog barking", "cat meowing", "playing cello")


def ytid_for(i: int) -> str:
    alphabet = string.ascii_letters + string.digits + "-_"
    rng = random.Random(i)
    return "".join(rng.choice(alphabet) for _ in range(11))


def make_rows(per_label: int = 20) -> list[CsvRow]:
    """Valid rows in csv order: labels interleaved, alternating splits, plus two invalid rows."""
    rows: list[CsvRow] = []
    line = 0
    for _ in range(per_label):
        for label in LABELS:
            line += 1
            ytid, start = ytid_for(line), (line % 30) * 10
            split = "train" if line % 2 else "test"
            rows.append(CsvRow(line, ytid, str(start), label, split, start, make_clip_id(ytid, start)))
    rows.append(CsvRow(line + 1, "bad", "10", "dog barking", "train", error="invalid-ytid: 'bad'"))
    rows.append(CsvRow(line + 2, ytid_for(0), "x", "dog barking", "train", error="invalid-start: 'x'"))
    return rows


ROWS = make_rows()
VALID = [r for r in ROWS if r.valid]


# --- simple filters ------------------------------------------------------------------------------------------------


def test_default_selection_is_all_valid_rows_in_order() -> None:
    assert select_rows(ROWS, seed=0) == VALID


def test_filter_by_split() -> None:
    chosen = select_rows(ROWS, seed=0, splits=("test",))
    assert chosen and all(r.split == "test" for r in chosen)
    assert len(chosen) == sum(r.split == "test" for r in VALID)


def test_filter_by_label_set() -> None:
    chosen = select_rows(ROWS, seed=0, labels=frozenset({"cat meowing"}))
    assert len(chosen) == 20
    assert {r.label for r in chosen} == {"cat meowing"}


def test_empty_label_set_selects_nothing() -> None:
    assert select_rows(ROWS, seed=0, labels=frozenset()) == []


def test_invalid_rows_are_never_selected() -> None:
    ids = (frozenset(), frozenset({"bad", ytid_for(0)}))
    assert select_rows(ROWS, seed=0, id_list=ids) == []


def test_filter_by_id_list_of_clip_ids_and_ytids() -> None:
    by_clip, by_ytid = VALID[0], VALID[5]
    chosen = select_rows(ROWS, seed=0, id_list=(frozenset({by_clip.clip_id}), frozenset({by_ytid.ytid})))
    assert chosen == [by_clip, by_ytid]


def test_clip_id_in_list_does_not_select_other_starts_of_the_same_video() -> None:
    row = VALID[0]
    other_start = make_clip_id(row.ytid, row.start_sec + 1)
    assert select_rows(ROWS, seed=0, id_list=(frozenset({other_start}), frozenset())) == []


# --- per-class cap -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cap", [1, 3, 7])
def test_per_class_cap_keeps_exactly_n_per_label(cap: int) -> None:
    chosen = select_rows(ROWS, seed=0, per_class_cap=cap)
    assert Counter(r.label for r in chosen) == {label: cap for label in LABELS}


def test_cap_larger_than_a_class_keeps_the_whole_class() -> None:
    rows = VALID + [CsvRow(999, ytid_for(999), "0", "waterfall burbling", "train", 0, make_clip_id(ytid_for(999), 0))]
    chosen = select_rows(rows, seed=0, per_class_cap=5)
    counts = Counter(r.label for r in chosen)
    assert counts["waterfall burbling"] == 1
    assert counts["dog barking"] == 5


def test_per_class_cap_is_independent_of_input_order() -> None:
    expected = {r.clip_id for r in select_rows(ROWS, seed=3, per_class_cap=4)}
    for shuffle_seed in range(5):
        shuffled = list(ROWS)
        random.Random(shuffle_seed).shuffle(shuffled)
        assert {r.clip_id for r in select_rows(shuffled, seed=3, per_class_cap=4)} == expected


def test_per_class_cap_changes_with_the_seed() -> None:
    picks = [frozenset(r.clip_id for r in select_rows(ROWS, seed=s, per_class_cap=4)) for s in range(4)]
    assert len(set(picks)) == 4


def test_per_class_cap_is_repeatable() -> None:
    assert select_rows(ROWS, seed=11, per_class_cap=4) == select_rows(ROWS, seed=11, per_class_cap=4)


def test_per_class_cap_output_keeps_csv_order() -> None:
    chosen = select_rows(ROWS, seed=5, per_class_cap=6)
    assert [r.row for r in chosen] == sorted(r.row for r in chosen)
    shuffled = list(ROWS)
    random.Random(1).shuffle(shuffled)
    chosen_from_shuffled = select_rows(shuffled, seed=5, per_class_cap=6)
    # the output follows the order of the rows given, whatever that order is
    order = {id(r): i for i, r in enumerate(shuffled)}
    assert [order[id(r)] for r in chosen_from_shuffled] == sorted(order[id(r)] for r in chosen_from_shuffled)


def test_cap_applies_after_the_other_filters() -> None:
    chosen = select_rows(ROWS, seed=0, splits=("train",), labels=frozenset({"dog barking"}), per_class_cap=3)
    assert len(chosen) == 3
    assert all(r.split == "train" and r.label == "dog barking" for r in chosen)


def test_cap_is_a_subset_of_a_larger_cap() -> None:
    small = {r.clip_id for r in select_rows(ROWS, seed=2, per_class_cap=3)}
    large = {r.clip_id for r in select_rows(ROWS, seed=2, per_class_cap=8)}
    assert small < large


# --- id list files -------------------------------------------------------------------------------------------------


def write_list(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "ids.txt"
    path.write_text(text, encoding="utf-8")
    return path


def test_read_id_list_accepts_clip_ids_ytids_file_names_and_comments(tmp_path: Path) -> None:
    path = write_list(
        tmp_path,
        "# VGG-SS test subset\n"
        "abcdefghijk_000030\n"
        "\n"
        "  -bcdefghijk  \n"
        "bbcdefghijk_000030.mp4\n"
        "videos/test/cbcdefghijk_000120.wav\n"
        "dbcdefghijk.mp4\n"
        "ebcdefghijk_000010,dog barking,test\n",
    )
    clip_ids, ytids = read_id_list(path)
    assert clip_ids == {"abcdefghijk_000030", "bbcdefghijk_000030", "cbcdefghijk_000120", "ebcdefghijk_000010"}
    assert ytids == {"-bcdefghijk", "dbcdefghijk"}


def test_read_id_list_handles_bom_and_crlf(tmp_path: Path) -> None:
    path = tmp_path / "ids.txt"
    path.write_bytes(b"\xef\xbb\xbfabcdefghijk_000030\r\nbbcdefghijk\r\n")
    assert read_id_list(path) == (frozenset({"abcdefghijk_000030"}), frozenset({"bbcdefghijk"}))


@pytest.mark.parametrize("bad", ["short", "abcdefghijk_30", "abc defghijk", "abcdefghijkl_000030"])
def test_read_id_list_names_the_bad_line(tmp_path: Path, bad: str) -> None:
    path = write_list(tmp_path, f"# header\nabcdefghijk_000030\n\n{bad}\n")
    with pytest.raises(CsvError) as info:
        read_id_list(path)
    assert f"{path}:4" in str(info.value)
    assert repr(bad) in str(info.value)


def test_read_id_list_of_missing_file_is_a_csv_error(tmp_path: Path) -> None:
    path = tmp_path / "absent.txt"
    with pytest.raises(CsvError) as info:
        read_id_list(path)
    assert str(path) in str(info.value)


def test_id_list_file_drives_selection(tmp_path: Path) -> None:
    wanted_clip, wanted_video = VALID[2], VALID[7]
    path = write_list(tmp_path, f"{wanted_clip.clip_id}.mp4\n{wanted_video.ytid}\n")
    chosen = select_rows(ROWS, seed=0, id_list=read_id_list(path))
    assert chosen == [wanted_clip, wanted_video]
