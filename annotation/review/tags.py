"""Decisions as tags, and manifest rows as plain values: the rules the dataset and sync share, without FiftyOne.

Tags: `accept`; `reject:<reason>` with a reason from `REJECT_REASONS` (several reason tags are joined, sorted, with
`,`); an automatic reject shows the kind of its reason (`reason_tag`: `reject:both_present`,
`reject:generation-flag-nsfw`), one tag per kind of decision, while the full reason with its scores stays in the
sample's `decision_reason` field (and the scores in `both_present`, `score_a`, `score_b`); a reject without a reason
is a bare `reject`; `needs-fix` marks masks to refine. The `accept` tag of a synced accept reads as that accept,
reason and all, so an untouched automatic accept never turns into a reviewer's. A dataset built before short tags keeps its verbatim
`reject:<reason>` tag, which still reads as the synced decision.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from is4.config import REJECT_REASONS
from is4.manifests.io import is_blank, manifest_path, read_manifest

ACCEPT_TAG = "accept"
REJECT_TAG = "reject"
NEEDS_FIX_TAG = "needs-fix"
CONFLICT = ("conflict", None)
INVALID = ("invalid", None)


def _py(value: Any) -> Any:
    """A manifest cell as a plain Python value (None for NA, numpy scalars unwrapped)."""
    if is_blank(value):
        return None
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, pd.Timestamp):
        return value.to_pydatetime()
    return value


def _utc(value: Any) -> datetime | None:
    """An aware UTC datetime from a manifest or FiftyOne value (FiftyOne returns naive UTC datetimes)."""
    value = _py(value)
    if value is None:
        return None
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def _manifest_or_none(workdir: Path, table: str) -> pd.DataFrame | None:
    return read_manifest(workdir, table) if manifest_path(workdir, table).is_file() else None


def _rows_by(frame: pd.DataFrame | None, key: str) -> dict[str, dict[str, Any]]:
    if frame is None:
        return {}
    return {row[key]: {k: _py(v) for k, v in row.items()} for row in frame.to_dict("records")}


def is_reject_tag(tag: str) -> bool:
    return tag == REJECT_TAG or tag.startswith(REJECT_TAG + ":")


def reason_tag(reason: str) -> str:
    """The tag name of a reason that is not made of `REJECT_REASONS` (an automatic one): its words without numbers,
    comparisons or a final parenthesised detail, joined with `-` (`both_present 0.000032 < 0.0001` ->
    `both_present`, `generation flag: nsfw (…)` -> `generation-flag-nsfw`)."""
    text = re.sub(r"\s*\(.*\)\s*$", "", reason)
    words = [w.strip(":;") for w in re.split(r"[\s,]+", text)]
    kept = [w for w in words if w and not re.fullmatch(r"[<>=!]+|[-+]?[\d.]+(e[-+]?\d+)?", w)]
    return "-".join(kept) or "other"


def reject_tags(reason: str | None) -> list[str]:
    """The tags that show a reject with this reason."""
    if reason is None:
        return [REJECT_TAG]
    parts = reason.split(",")
    if all(p in REJECT_REASONS for p in parts):
        return [f"{REJECT_TAG}:{p}" for p in parts]
    return [f"{REJECT_TAG}:{reason_tag(reason)}"]


def decision_tags(decision: str | None, reason: str | None) -> list[str]:
    """The tags that show a manifest decision (none for pending)."""
    if decision == "accept":
        return [ACCEPT_TAG]
    if decision == "reject":
        return reject_tags(reason)
    return []


def _verbatim(base: tuple[str, str | None]) -> set[str]:
    """The tag a dataset built before short tags shows for an automatic reject: `reject:<reason>` verbatim."""
    if base[0] != "reject" or base[1] is None or all(p in REJECT_REASONS for p in base[1].split(",")):
        return set()
    return {f"{REJECT_TAG}:{base[1]}"}


def tag_decision(tags: Iterable[str], base: tuple[str, str | None] = ("pending", None)) -> tuple[str, str | None]:
    """(decision, reason) that a sample's tags say, given the decision the sample was last synced with.

    Returns CONFLICT for `accept` with a reject tag and INVALID for a reject reason that is neither one of
    `REJECT_REASONS` nor the restored reason of the synced decision.
    """
    tags = set(tags)
    rejects = sorted(t for t in tags if is_reject_tag(t))
    if ACCEPT_TAG in tags:
        if rejects:
            return CONFLICT
        # The synced accept, with its reason (the automatic policy's accepts carry one; a reviewer's do not).
        return base if base[0] == "accept" else ("accept", None)
    if not rejects:
        return ("pending", None)
    restored = set(reject_tags(base[1])) if base[0] == "reject" else set()
    if set(rejects) == restored or set(rejects) == _verbatim(base):
        return base  # the synced decision (or its verbatim tag, from a dataset built before short tags)
    new = [t for t in rejects if t not in restored]
    reasons = sorted({t.partition(":")[2] for t in new})
    if any(r not in REJECT_REASONS for r in reasons):
        return INVALID
    return ("reject", ",".join(reasons))
