"""Seeded subset selection over valid csv rows: by split, label set, per-class cap and explicit id lists.

The per-class cap keeps, for each label, the clips with the smallest seeded rank of their clip id, so the subset
depends on the seed and the ids only — never on csv order.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Sequence
from pathlib import Path

from is4.manifests.ids import CLIP_ID_RE, YTID_RE, stable_rank
from is4.pipeline.ingest.vggsound_csv import CsvError, CsvRow


def read_id_list(path: str | Path) -> tuple[frozenset[str], frozenset[str]]:
    """Read a published subset list: one clip id (`ytid_000030`) or YouTube id per line.

    File extensions (`.mp4`, `.wav`, …) and directory parts are ignored, as subset lists often name files.
    Returns (clip ids, youtube ids); a line that is neither raises CsvError naming the line.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise CsvError(f"{path}: cannot read id list: {exc.strerror}") from None
    clip_ids, ytids = set(), set()
    for line_no, line in enumerate(text.splitlines(), start=1):
        item = line.strip().split(",")[0].strip()
        if not item or item.startswith("#"):
            continue
        stem = Path(item).name
        stem = stem.split(".")[0] if "." in stem else stem
        if CLIP_ID_RE.fullmatch(stem):
            clip_ids.add(stem)
        elif YTID_RE.fullmatch(stem):
            ytids.add(stem)
        else:
            raise CsvError(f"{path}:{line_no}: {item!r} is neither a clip id (ytid_000030) nor a YouTube id")
    return frozenset(clip_ids), frozenset(ytids)


def select_rows(
    rows: Sequence[CsvRow],
    *,
    seed: int,
    splits: Collection[str] = ("train", "test"),
    labels: Collection[str] | None = None,
    per_class_cap: int | None = None,
    id_list: tuple[frozenset[str], frozenset[str]] | None = None,
) -> list[CsvRow]:
    """The valid rows that pass every filter, in csv order."""
    chosen = [
        r
        for r in rows
        if r.valid
        and r.split in splits
        and (labels is None or r.label in labels)
        and (id_list is None or r.clip_id in id_list[0] or r.ytid in id_list[1])
    ]
    if per_class_cap is None:
        return chosen
    by_label: dict[str, list[CsvRow]] = defaultdict(list)
    for r in chosen:
        by_label[r.label].append(r)
    keep: set[str] = set()
    for label_rows in by_label.values():
        ranked = sorted(label_rows, key=lambda r: stable_rank(seed, "subset", r.clip_id))
        keep.update(r.clip_id for r in ranked[:per_class_cap])
    return [r for r in chosen if r.clip_id in keep]
