"""The verification ledger: one decision per image, merged by who may replace what, written under a lock.

Every writer (the pre-screen, the automatic policy that stands in for reviewers, the FiftyOne sync) goes through
`update_verification`, so the rules live in one place:

- a human decision (`source=human`) is replaced only by another human decision;
- an automatic writer replaces only automatic rows it wrote itself (its reviewer name) and automatic `pending`
  rows — never a human's, never another automatic reviewer's;
- a row whose decision, reason, reviewer and source do not change keeps the time it was first decided;
- rows of images the writer does not mention are kept as they are.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from is4.config import BuildConfig
from is4.manifests.errors import FatalError
from is4.manifests.io import is_blank, manifest_path, read_manifest, write_manifest
from is4.manifests.lock import manifest_lock
from is4.manifests.schema import VERIFICATION
from is4.pipeline.stage import ProgressFn

HUMAN = "human"
AUTO = "auto"
AUTO_POLICY = "auto-policy"  # the reviewer name of the automatic policy (demo profile)

Proposal = Iterable[dict[str, Any]]




class VerificationError(FatalError, ValueError):
    """A verification step that cannot run as configured."""

def _clean(row: dict[str, Any]) -> dict[str, Any]:
    return {k: (None if is_blank(v) else v) for k, v in row.items()}


def may_replace(old: dict[str, Any], writer: str) -> bool:
    """Whether `writer` (HUMAN, or an automatic reviewer's name) may replace the row `old` (see the module rules)."""
    if writer == HUMAN:
        return True
    if old["source"] == HUMAN:
        return False
    return old["decision"] == "pending" or old.get("reviewer") == writer


def merge_decisions(
    existing: pd.DataFrame | None, proposed: Proposal, writer: str
) -> tuple[pd.DataFrame, list[str]]:
    """The ledger with `writer`'s proposed rows merged in, and the image ids whose existing row was kept."""
    rows: dict[str, dict[str, Any]] = {}
    if existing is not None:
        rows = {row["image_id"]: _clean(row) for row in existing.to_dict("records")}
    kept: list[str] = []
    for new in proposed:
        new = _clean(new)
        old = rows.get(new["image_id"])
        if old is not None:
            if not may_replace(old, writer):
                kept.append(new["image_id"])
                continue
            if all(old.get(k) == new.get(k) for k in ("decision", "reason", "reviewer", "source")):
                continue  # the same decision keeps the time it was first made
        rows[new["image_id"]] = {**(old or {}), **new}
    columns = list(VERIFICATION.column_names)
    if existing is not None:
        columns += [c for c in existing.columns if c not in columns]
    frame = pd.DataFrame(list(rows.values()), columns=columns)
    frame["decided_at"] = pd.to_datetime(frame["decided_at"], utc=True)
    return frame.sort_values("image_id", ignore_index=True), kept


def read_verification(workdir: str | Path) -> pd.DataFrame | None:
    """The verification manifest, or None when no decision has been written yet."""
    return read_manifest(workdir, "verification") if manifest_path(workdir, "verification").is_file() else None


def update_verification(
    workdir: str | Path,
    proposed: Proposal | Callable[[pd.DataFrame | None], Proposal],
    writer: str,
    provenance: dict[str, Any],
) -> tuple[Path, pd.DataFrame, list[str]]:
    """Merge `writer`'s decisions into the manifest under its lock (a callable sees the current ledger first).

    Returns the manifest path, the merged ledger and the image ids whose existing row was kept.
    """
    with manifest_lock(workdir, "verification"):
        existing = read_verification(workdir)
        rows = proposed(existing) if callable(proposed) else proposed
        frame, kept = merge_decisions(existing, rows, writer)
        path = write_manifest(workdir, VERIFICATION, frame, provenance)
    return path, frame, kept


def auto_verify(workdir: str | Path, *, now: datetime, provenance: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The automatic policy that stands in for reviewers: every image still pending is accepted (`source=auto`).

    Rejects by the pre-screen or by a human are kept; images with no row yet count as pending.
    """
    images = read_manifest(workdir, "images")

    def proposals(existing: pd.DataFrame | None) -> Proposal:
        decided = set()
        if existing is not None:
            decided = set(existing.loc[existing["decision"] != "pending", "image_id"])
        for image_id in images["image_id"]:
            if image_id not in decided:
                yield {"image_id": image_id, "decision": "accept", "reason": "automatic policy: pending accepted",
                       "reviewer": AUTO_POLICY, "source": AUTO, "decided_at": now}

    path, frame, _ = update_verification(workdir, proposals, AUTO_POLICY,
                                         {**(provenance or {"stage": "verify"}), "policy": AUTO_POLICY})
    counts = frame["decision"].value_counts()
    return {"accepted": int(counts.get("accept", 0)), "rejected": int(counts.get("reject", 0)),
            "pending": int(counts.get("pending", 0)), "manifest": str(path)}


def undecided(workdir: str | Path) -> list[str]:
    """Image ids of the images manifest that have neither an accept nor a reject yet."""
    images = read_manifest(workdir, "images")["image_id"]
    ledger = read_verification(workdir)
    decided = set() if ledger is None else set(ledger.loc[ledger["decision"] != "pending", "image_id"])
    return sorted(set(images) - decided)


def verify_stage(work: Path, cfg: BuildConfig, provenance: dict[str, Any], *,
                 progress: ProgressFn | None = None) -> dict[str, Any]:
    """The automatic policy as a stage (`review.mode: auto`); human review is the flow's pause (`flows/review.py`)."""
    if cfg.review.mode != "auto":
        raise VerificationError("review.mode is human: reviewers decide in FiftyOne (`is4 review verify`, then sync)")
    return auto_verify(work, now=datetime.now(UTC), provenance=provenance)
