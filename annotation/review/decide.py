"""A reviewer's decision as the App's operators write it: the decision tags of samples set in one step.

`decide(view, "accept")` leaves `accept` as the samples' only decision tag; `decide(view, "reject", reason)` leaves
`reject:<reason>` (a reason of `REJECT_REASONS`); `decide(view, "pending")` removes every decision tag. Other tags
(`needs-fix`, a reviewer's own) stay. Like a reviewer's tags, nothing reaches the manifest until `sync`.
"""

from __future__ import annotations

from typing import Any

from is4.config import REJECT_REASONS

from .connect import ReviewError
from .tags import ACCEPT_TAG, decision_tags, is_reject_tag

DECISIONS = ("accept", "reject", "pending")


def decide(view: Any, decision: str, reason: str | None = None) -> int:
    """Set the decision tags of every sample of `view` (module doc); return how many samples it touched."""
    if decision not in DECISIONS:
        raise ReviewError(f"decision must be one of {', '.join(DECISIONS)}, not {decision!r}")
    if decision == "reject" and reason not in REJECT_REASONS:
        raise ReviewError(f"a reject needs a reason: one of {', '.join(REJECT_REASONS)} (got {reason!r})")
    wanted = decision_tags(decision, reason if decision == "reject" else None)
    present = set(view.distinct("tags"))
    stale = sorted(t for t in present if (t == ACCEPT_TAG or is_reject_tag(t)) and t not in wanted)
    if stale:
        view.untag_samples(stale)
    if wanted:
        view.tag_samples(wanted)
    return len(view)
