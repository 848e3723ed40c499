"""Read and validate a VGGSound-format csv: `YouTube ID, start seconds, label, split`, no header.

Real copies of the file differ in small ways: a UTF-8 byte-order mark, CRLF line ends, a header line, blank lines,
spaces after commas, `30.0` for `30`, upper-case splits, labels with doubled spaces. Those are normalised. Anything
else that is wrong makes the row invalid with a reason; an invalid row never gets a clip id, so it never reaches
yt-dlp or a file path.

Each physical line is parsed on its own (no VGGSound label spans lines), so an unbalanced quote spoils only its own
line and every row keeps its true line number. A reject reason quotes at most `QUOTE_CHARS` of the offending value
(the value itself is kept once, in its own column), so a hostile 10,000-character field is not stored twice.
"""

from __future__ import annotations

import csv
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from is4.classes import vggsound_labels
from is4.manifests.errors import FatalError
from is4.manifests.ids import MAX_START_SEC, YTID_RE, make_clip_id

SPLITS = ("train", "test")
_HEADER_HINTS = ("youtube", "ytid", "video_id", "#")
_START_RE = re.compile(r"^[0-9]+(\.0*)?$")
QUOTE_CHARS = 60


class CsvError(FatalError, RuntimeError):
    """The csv as a whole cannot be read: the run cannot proceed."""


@dataclass(frozen=True, slots=True)
class CsvRow:
    """One data line of the csv, valid (`clip_id` set) or not (`error` set)."""

    row: int  # 1-based line number in the file
    ytid: str
    start_raw: str
    label: str
    split: str
    start_sec: int | None = None
    clip_id: str | None = None
    error: str | None = None

    @property
    def valid(self) -> bool:
        return self.error is None


def _quote(value: str) -> str:
    """`value` quoted for a reject reason, cut to `QUOTE_CHARS` characters (saying how long it was)."""
    if len(value) <= QUOTE_CHARS:
        return repr(value)
    return f"{value[:QUOTE_CHARS]!r}… ({len(value)} characters)"


def _normalise_label(raw: str) -> str:
    return re.sub(r"\s+", " ", raw.strip()).lower()


def _parse_start(raw: str) -> int | None:
    """Whole seconds written as ASCII digits, optionally with a zero fraction (`30`, `30.0`)."""
    if not _START_RE.fullmatch(raw):
        return None
    value = int(raw.split(".")[0])
    return value if value <= MAX_START_SEC else None


def _looks_like_header(fields: list[str]) -> bool:
    """A first line naming columns: its first field is no YouTube id, and it says so or has no number after it."""
    first = fields[0].strip()
    if YTID_RE.fullmatch(first):
        return False
    no_number = len(fields) > 1 and not any(ch.isdigit() for ch in fields[1])
    return first.lower().startswith(_HEADER_HINTS) or no_number


def _split_line(line: str) -> list[str]:
    """The fields of one csv line; an unbalanced quote raises csv.Error."""
    return next(csv.reader([line], skipinitialspace=True, strict=True), [])


def parse_lines(lines: Iterable[str], known_labels: Iterable[str] | None = None) -> list[CsvRow]:
    """Validate the text lines of a VGGSound csv into CsvRows; see module docstring for the rules."""
    labels = frozenset(known_labels if known_labels is not None else vggsound_labels())
    rows: list[CsvRow] = []
    first_seen: dict[str, int] = {}
    header_checked = False
    for line_no, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            fields = _split_line(line)
        except csv.Error as exc:
            rows.append(CsvRow(line_no, line.strip()[:40], "", "", "", error=f"bad-row: {exc}"))
            continue
        if not header_checked:
            header_checked = True
            if _looks_like_header(fields):
                continue
        if len(fields) != 4:
            raw = [f.strip() for f in fields] + [""] * 4
            rows.append(
                CsvRow(line_no, raw[0], raw[1], raw[2], raw[3], error=f"bad-row: expected 4 fields, got {len(fields)}")
            )
            continue
        ytid, start_raw, label_raw, split_raw = (f.strip() for f in fields)
        # Interned: a csv of 200,000 rows has ~300 labels, and every row keeps its own (memory per row).
        label, split = sys.intern(_normalise_label(label_raw)), sys.intern(split_raw.lower())
        start = _parse_start(start_raw)
        error = None
        if not YTID_RE.fullmatch(ytid):
            error = f"invalid-ytid: {_quote(ytid)} is not 11 characters of [A-Za-z0-9_-]"
        elif start is None:
            error = f"invalid-start: {_quote(start_raw)} is not a whole number of seconds in [0, {MAX_START_SEC}]"
        elif label not in labels:
            error = f"unknown-label: {_quote(label_raw)} is not a VGGSound class"
        elif split not in SPLITS:
            error = f"invalid-split: {_quote(split_raw)} is not train or test"
        if error:
            rows.append(CsvRow(line_no, ytid, start_raw, label_raw, split_raw, error=error))
            continue
        clip_id = make_clip_id(ytid, start)
        if clip_id in first_seen:
            rows.append(
                CsvRow(
                    line_no,
                    ytid,
                    start_raw,
                    label,
                    split,
                    start,
                    None,
                    f"duplicate: clip {clip_id} already listed on line {first_seen[clip_id]}",
                )
            )
            continue
        first_seen[clip_id] = line_no
        rows.append(CsvRow(line_no, ytid, start_raw, label, split, start, clip_id))
    return rows


def read_vggsound_csv(path: str | Path, known_labels: Iterable[str] | None = None) -> list[CsvRow]:
    """Read a VGGSound-format csv file; raises CsvError when the file itself cannot be read."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise CsvError(f"{path}: no such csv file") from None
    except UnicodeDecodeError as exc:
        raise CsvError(f"{path}: not UTF-8 text (byte {exc.start}): is this the VGGSound csv?") from None
    except OSError as exc:
        raise CsvError(f"{path}: cannot read csv: {exc.strerror}") from None
    rows = parse_lines(text.splitlines(), known_labels)
    if not rows:
        raise CsvError(f"{path}: no data rows")
    return rows
