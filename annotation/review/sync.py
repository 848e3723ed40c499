"""Sync: the reviewers' tags into the verification manifest, under its lock, with an atomic write.

The samples' decision fields hold the decision the dataset last agreed with the manifest, so comparing the tags with
them tells what a reviewer changed:

- `accept` with a reject tag, or several samples of one image, is a conflict; an unknown reject reason (or a bare
  `reject` that was not restored) is invalid: both are reported and change nothing; samples without an
  `image_id` are not the build's and are ignored;
- changed tags write a human row (the reviewer, `decided_at=now`) unless the manifest already holds that decision;
  removing every decision tag withdraws it (a human `pending` row);
- unchanged tags follow a manifest that moved on, except that a human decision is never dropped for an automatic
  or missing row: it is written back. Only a human decision replaces a human one.

Tags do not record who set them: everything new since the last sync is recorded under the name of whoever syncs.
"""

from __future__ import annotations

import contextlib
import logging
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from is4.config import REJECT_REASONS, ReviewConfig
from is4.manifests.lock import manifest_lock
from is4.manifests.schema import VERIFICATION
from is4.pipeline.verification import HUMAN, commit_decisions, read_verification

from .connect import ReviewError, _load, connect, dataset_name
from .tags import CONFLICT, INVALID, NEEDS_FIX_TAG, _rows_by, _utc, decision_tags, tag_decision

logger = logging.getLogger(__name__)

_DECISION_FIELDS = ("decision", "decision_reason", "decision_source", "reviewer", "decided_at")


def verification_lock(workdir: str | Path) -> contextlib.AbstractContextManager[None]:
    """The verification manifest's exclusive lock (`manifest_lock`: WORK/state/locks/verification.lock)."""
    return manifest_lock(workdir, VERIFICATION.name)


def _decision_fields(row: dict[str, Any] | None) -> tuple[Any, ...]:
    """The values of `_DECISION_FIELDS` that show a verification row (None: no row, pending)."""
    if row is None:
        return ("pending", None, None, None, None)
    return (row["decision"], row.get("reason"), row.get("source"), row.get("reviewer"), _utc(row.get("decided_at")))


def sync(workdir: str | Path, cfg: ReviewConfig, reviewer: str, *, now: datetime | None = None) -> dict[str, Any]:
    """Read the reviewers' tags into the verification manifest (module doc: the rules); return counts.

    Counts: accepted / rejected / withdrawn (human rows written), unchanged (a decision tag the manifest already
    holds), refreshed (samples brought up to a newer manifest row), restored (human decisions written back to a
    manifest that had lost them), pending (no decision), conflicts and invalid (left as they were; their image ids
    in conflict_ids / invalid_ids), needs_fix (samples tagged needs-fix).
    """
    if not reviewer or not reviewer.strip():
        raise ReviewError("sync needs the reviewer's name")
    now = datetime.now(UTC) if now is None else now
    if now.tzinfo is None or now.utcoffset() is None:
        raise ReviewError(f"now must be timezone-aware (decisions are stored in UTC), got {now!r}")
    now = now.astimezone(UTC)
    workdir = Path(workdir).resolve()
    fo = connect(cfg, workdir)
    counts: dict[str, Any] = dict.fromkeys(
        (
            "accepted",
            "rejected",
            "withdrawn",
            "unchanged",
            "refreshed",
            "restored",
            "pending",
            "conflicts",
            "invalid",
            "needs_fix",
        ),
        0,
    )
    conflict_ids: list[str] = []
    invalid_ids: list[str] = []
    with verification_lock(workdir):
        dataset = _load(fo, dataset_name(workdir, cfg))
        existing = read_verification(workdir)  # the decision log's projection
        rows = _rows_by(existing, "image_id")
        changed: list[str] = []  # image ids whose human row this sync writes
        field_updates: dict[str, dict[str, Any]] = {f: {} for f in _DECISION_FIELDS}
        retag: dict[str, tuple[list[str], list[str]]] = {}
        ids, image_ids, tags_list, *base_values = dataset.values(["id", "image_id", "tags", *_DECISION_FIELDS])
        copies = Counter(image_ids)
        for i, (sample_id, image_id, tags) in enumerate(zip(ids, image_ids, tags_list)):
            tags = tags or []
            if NEEDS_FIX_TAG in tags:
                counts["needs_fix"] += 1
            if not image_id:
                continue  # not an image of this build (e.g. a sample added in the App)
            if copies[image_id] > 1:  # several samples of one image (cloned in the App): which one decides?
                if image_id not in conflict_ids:
                    counts["conflicts"] += 1
                    conflict_ids.append(image_id)
                continue
            b_decision, b_reason, b_source, b_reviewer, b_at = (values[i] for values in base_values)
            base = (b_decision or "pending", b_reason)
            state = tag_decision(tags, base)
            row = rows.get(image_id)
            current = (row["decision"], row.get("reason")) if row else ("pending", None)
            if state == CONFLICT:
                counts["conflicts"] += 1
                conflict_ids.append(image_id)
                continue
            if state == INVALID:
                counts["invalid"] += 1
                invalid_ids.append(image_id)
                continue
            if state == base:  # the reviewer changed nothing since the last sync
                if current == base:
                    counts["pending" if base[0] == "pending" else "unchanged"] += 1
                    continue
                if b_source == "human" and (row is None or row.get("source") != "human"):
                    # The manifest lost a human decision (or an automatic stage wrote over it): put it back.
                    rows[image_id] = {
                        **(row or {}),
                        "image_id": image_id,
                        "decision": base[0],
                        "reason": base[1],
                        "reviewer": b_reviewer,
                        "source": "human",
                        "decided_at": _utc(b_at),
                    }
                    changed.append(image_id)
                    counts["restored"] += 1
                    continue
                # The manifest moved on (a newer human decision, or an automatic stage): the sample follows it.
                counts["refreshed"] += 1
                target = row
            elif state == current:  # the manifest already holds what the reviewer decided: keep its row
                counts["pending" if state[0] == "pending" else "unchanged"] += 1
                target = row
            else:
                target = rows[image_id] = {
                    **(row or {}),
                    "image_id": image_id,
                    "decision": state[0],
                    "reason": state[1],
                    "reviewer": reviewer,
                    "source": "human",
                    "decided_at": now,
                }
                changed.append(image_id)
                counts[{"accept": "accepted", "reject": "rejected", "pending": "withdrawn"}[state[0]]] += 1
            fields = _decision_fields(target)
            for field, value in zip(_DECISION_FIELDS, fields):
                field_updates[field][sample_id] = value
            if state == base:  # the manifest moved on and the reviewer did not: the tags follow the manifest
                old, new = decision_tags(*base), decision_tags(fields[0], fields[1])
                retag[sample_id] = ([t for t in old if t not in new], [t for t in new if t not in old])
        if changed:
            commit_decisions(workdir, existing, [rows[i] for i in changed], HUMAN)
        # The samples' decision fields record what the manifest now holds (the base of the next sync); written
        # under the lock, after the manifest, so a concurrent sync never sees fields ahead of the manifest.
        for field, values in field_updates.items():
            if values:
                dataset.set_values(field, values, key_field="id")
        for sample_id, (remove, add) in retag.items():
            one = dataset.select(sample_id)
            if remove:
                one.untag_samples(remove)
            if add:
                one.tag_samples(add)
    if conflict_ids:
        logger.warning("conflicting accept and reject tags, left undecided: %s", ", ".join(conflict_ids))
    if invalid_ids:
        logger.warning(
            "reject tags without a known reason (%s), ignored: %s", ", ".join(REJECT_REASONS), ", ".join(invalid_ids)
        )
    counts["conflict_ids"] = conflict_ids
    counts["invalid_ids"] = invalid_ids
    return counts
