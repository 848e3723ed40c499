"""Reading a VGGSound-format csv: normalisation of real-world messiness, per-row reasons, whole-file errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from is4.classes import vggsound_labels
from is4.pipeline.ingest.vggsound_csv import CsvError, CsvRow, parse_lines, read_vggsound_csv


def write_csv(tmp_path: Path, text: str, *, bom: bool = False, crlf: bool = False, name: str = "vgg.csv") -> Path:
    if crlf:
        text = text.replace("\n", "\r\n")
    data = text.encode("utf-8")
    if bom:
        data = b"\xef\xbb\xbf" + data
    path = tmp_path / name
    path.write_bytes(data)
    return path


def by_line(rows: list[CsvRow]) -> dict[int, CsvRow]:
    return {r.row: r for r in rows}


MESSY = (
    "YouTube ID, start seconds, label, split\n"  # 1: header
    "---g-f_I2yQ,1,people marching,test\n"  # 2: id starting with '-'
    "\n"  # 3: blank
    "--0PQM4-hqg, 30, waterfall burbling, train\n"  # 4: spaces after commas
    'a1b2c3d4e5f,30.0,"bird chirping, tweeting",TEST\n'  # 5: float start, quoted comma label, upper-case split
    "   \n"  # 6: whitespace only
    "zyxwvutsrqp,0,Dog  Barking,Train\n"  # 7: doubled space and capitals in the label
)


@pytest.fixture()
def messy_rows(tmp_path: Path) -> list[CsvRow]:
    return read_vggsound_csv(write_csv(tmp_path, MESSY, bom=True, crlf=True))


def test_bird_chirping_tweeting_is_a_real_vggsound_label() -> None:
    assert "bird chirping, tweeting" in vggsound_labels()


def test_messy_csv_yields_only_the_data_rows(messy_rows: list[CsvRow]) -> None:
    assert [r.row for r in messy_rows] == [2, 4, 5, 7]
    assert all(r.valid for r in messy_rows), [r.error for r in messy_rows]


def test_messy_csv_normalises_fields(messy_rows: list[CsvRow]) -> None:
    rows = by_line(messy_rows)
    assert (rows[2].ytid, rows[2].start_sec, rows[2].label, rows[2].split) == (
        "---g-f_I2yQ",
        1,
        "people marching",
        "test",
    )
    assert rows[2].clip_id == "---g-f_I2yQ_000001"
    assert (rows[4].ytid, rows[4].start_sec, rows[4].label, rows[4].split) == (
        "--0PQM4-hqg",
        30,
        "waterfall burbling",
        "train",
    )
    assert rows[5].label == "bird chirping, tweeting"
    assert rows[5].start_sec == 30 and isinstance(rows[5].start_sec, int)
    assert rows[5].clip_id == "a1b2c3d4e5f_000030"
    assert rows[5].split == "test"
    assert rows[7].label == "dog barking"
    assert rows[7].split == "train"
    assert rows[7].clip_id == "zyxwvutsrqp_000000"


def test_bom_does_not_stick_to_the_first_ytid(tmp_path: Path) -> None:
    rows = read_vggsound_csv(write_csv(tmp_path, "abcdefghijk,10,dog barking,train\n", bom=True))
    assert rows[0].valid
    assert rows[0].ytid == "abcdefghijk"
    assert rows[0].row == 1


def test_crlf_does_not_stick_to_the_split(tmp_path: Path) -> None:
    rows = read_vggsound_csv(write_csv(tmp_path, "abcdefghijk,10,dog barking,test\n", crlf=True))
    assert rows[0].valid and rows[0].split == "test"


def test_file_without_trailing_newline_is_read(tmp_path: Path) -> None:
    rows = read_vggsound_csv(write_csv(tmp_path, "abcdefghijk,10,dog barking,train\nbbcdefghijk,20,dog barking,test"))
    assert [r.clip_id for r in rows] == ["abcdefghijk_000010", "bbcdefghijk_000020"]


def test_custom_known_labels_are_honoured(tmp_path: Path) -> None:
    path = write_csv(tmp_path, "abcdefghijk,10,my label,train\nbbcdefghijk,10,dog barking,train\n")
    rows = read_vggsound_csv(path, known_labels=["my label"])
    assert rows[0].valid
    assert rows[1].error.startswith("unknown-label")


# --- invalid rows --------------------------------------------------------------------------------------------------

INVALID = (
    "abcdefghijk,10,dog barking,train\n"  # 1 valid
    "short,10,dog barking,train\n"  # 2
    "abcdefghijkl,10,dog barking,train\n"  # 3
    "abc/efghijk,10,dog barking,train\n"  # 4
    '";rm -rf /",10,dog barking,train\n'  # 5
    "abcdéfghijk,10,dog barking,train\n"  # 6
    "bbcdefghijk,-5,dog barking,train\n"  # 7
    "cbcdefghijk,abc,dog barking,train\n"  # 8
    "dbcdefghijk,1.5,dog barking,train\n"  # 9
    "ebcdefghijk,inf,dog barking,train\n"  # 10
    "fbcdefghijk,nan,dog barking,train\n"  # 11
    "gbcdefghijk,1000000,dog barking,train\n"  # 12
    "hbcdefghijk,10,dog meowing,train\n"  # 13
    "ibcdefghijk,10,dog barking,val\n"  # 14
    "jbcdefghijk,10,dog barking\n"  # 15
    "kbcdefghijk,10,dog barking,train,extra\n"  # 16
    "abcdefghijk,10,cat meowing,test\n"  # 17 duplicate of line 1
    "abcdefghijk,10.0,dog barking,train\n"  # 18 duplicate of line 1 via a float start
    "lbcdefghijk,,dog barking,train\n"  # 19
)

EXPECTED_REASONS = {
    2: "invalid-ytid",
    3: "invalid-ytid",
    4: "invalid-ytid",
    5: "invalid-ytid",
    6: "invalid-ytid",
    7: "invalid-start",
    8: "invalid-start",
    9: "invalid-start",
    10: "invalid-start",
    11: "invalid-start",
    12: "invalid-start",
    13: "unknown-label",
    14: "invalid-split",
    15: "bad-row",
    16: "bad-row",
    17: "duplicate",
    18: "duplicate",
    19: "invalid-start",
}


@pytest.fixture()
def invalid_rows(tmp_path: Path) -> dict[int, CsvRow]:
    return by_line(read_vggsound_csv(write_csv(tmp_path, INVALID)))


def test_every_line_is_reported(invalid_rows: dict[int, CsvRow]) -> None:
    assert sorted(invalid_rows) == list(range(1, 20))
    assert invalid_rows[1].valid and invalid_rows[1].clip_id == "abcdefghijk_000010"


@pytest.mark.parametrize(("line", "reason"), sorted(EXPECTED_REASONS.items()))
def test_invalid_row_gets_its_reason_and_no_clip_id(invalid_rows: dict[int, CsvRow], line: int, reason: str) -> None:
    row = invalid_rows[line]
    assert not row.valid
    assert row.error.startswith(f"{reason}: "), row.error
    assert row.clip_id is None
    assert row.row == line


def test_duplicate_names_the_first_line(invalid_rows: dict[int, CsvRow]) -> None:
    assert "abcdefghijk_000010" in invalid_rows[17].error
    assert "line 1" in invalid_rows[17].error
    assert "line 1" in invalid_rows[18].error


def test_bad_row_says_how_many_fields(invalid_rows: dict[int, CsvRow]) -> None:
    assert "got 3" in invalid_rows[15].error
    assert "got 5" in invalid_rows[16].error


def test_invalid_rows_keep_their_raw_fields(invalid_rows: dict[int, CsvRow]) -> None:
    assert invalid_rows[8].start_raw == "abc"
    assert invalid_rows[8].start_sec is None
    assert invalid_rows[13].label == "dog meowing"
    assert invalid_rows[14].split == "val"
    assert invalid_rows[5].ytid == ";rm -rf /"


def test_first_reason_wins_when_a_row_has_several_problems(tmp_path: Path) -> None:
    rows = read_vggsound_csv(write_csv(tmp_path, "abcdefghijk,1,dog barking,train\nbad,-1,nope,val\n"))
    assert rows[1].error.startswith("invalid-ytid")


def test_parse_lines_skips_only_a_header_on_line_one() -> None:
    rows = parse_lines(["abcdefghijk,1,dog barking,train", "YouTube ID,start,label,split"])
    assert [r.row for r in rows] == [1, 2]
    assert rows[1].error.startswith("invalid-ytid")


def test_line_numbers_stay_physical_after_a_broken_quoted_field(tmp_path: Path) -> None:
    text = 'abcdefghijk,1,"dog\nbarking",train\nbbcdefghijk,2,dog barking,train\n'
    rows = read_vggsound_csv(write_csv(tmp_path, text))
    assert rows[-1].row == 3 and rows[-1].valid
    assert rows[0].row == 1 and rows[0].error.startswith("bad-row")


def test_unbalanced_quote_does_not_swallow_following_rows(tmp_path: Path) -> None:
    text = 'abcdefghijk,1,"dog barking,train\nbbcdefghijk,2,dog barking,train\ncbcdefghijk,3,dog barking,train\n'
    rows = read_vggsound_csv(write_csv(tmp_path, text))
    assert {r.clip_id for r in rows if r.valid} == {"bbcdefghijk_000002", "cbcdefghijk_000003"}


def test_valid_first_row_whose_ytid_starts_like_a_header_is_kept(tmp_path: Path) -> None:
    rows = read_vggsound_csv(write_csv(tmp_path, "YTidAbCdEfG,30,dog barking,train\nbbcdefghijk,2,dog barking,train\n"))
    assert [r.clip_id for r in rows] == ["YTidAbCdEfG_000030", "bbcdefghijk_000002"]


# --- whole-file errors ---------------------------------------------------------------------------------------------


def test_missing_file_is_a_csv_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "absent.csv"
    with pytest.raises(CsvError) as info:
        read_vggsound_csv(path)
    assert str(path) in str(info.value)


def test_non_utf8_file_is_a_csv_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "latin1.csv"
    path.write_bytes("abcdefghijk,1,dog barking,train\nbbcdefghijk,2,café,train\n".encode("latin-1"))
    with pytest.raises(CsvError) as info:
        read_vggsound_csv(path)
    assert str(path) in str(info.value)
    assert "UTF-8" in str(info.value)


@pytest.mark.parametrize("text", ["", "\n\n", "\r\n  \r\n", "YouTube ID,start,label,split\n"])
def test_file_without_data_rows_is_a_csv_error_naming_it(tmp_path: Path, text: str) -> None:
    path = write_csv(tmp_path, text)
    with pytest.raises(CsvError) as info:
        read_vggsound_csv(path)
    assert str(path) in str(info.value)
    assert "no data rows" in str(info.value)


def test_directory_is_a_csv_error(tmp_path: Path) -> None:
    with pytest.raises(CsvError) as info:
        read_vggsound_csv(tmp_path)
    assert str(tmp_path) in str(info.value)


@pytest.mark.parametrize("start", ["1_0", "1e1", "\uff13\uff10", "+5", " 5 5", "0x10"])
def test_start_seconds_must_be_plain_ascii_digits(tmp_path: Path, start: str) -> None:
    rows = read_vggsound_csv(write_csv(tmp_path, f"abcdefghijk,{start},dog barking,train\n"))
    assert rows[0].error.startswith("invalid-start")


def test_header_after_leading_blank_lines_is_skipped(tmp_path: Path) -> None:
    rows = read_vggsound_csv(
        write_csv(tmp_path, "\n\n# YouTube ID,start seconds,label,split\nabcdefghijk,30,dog barking,train\n")
    )
    assert [(r.row, r.clip_id) for r in rows] == [(4, "abcdefghijk_000030")]
