"""The tag ↔ decision rules of review sessions, without FiftyOne (which `is4.annotation.review.tags` never imports)."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest

from is4.annotation.review.tags import (
    CONFLICT,
    INVALID,
    _py,
    _rows_by,
    _utc,
    decision_tags,
    is_reject_tag,
    reject_tags,
    tag_decision,
)

AUTO = ("reject", "both_present 0.010000 < 0.2")


def test_importing_the_tag_rules_does_not_import_fiftyone() -> None:
    code = "import sys, is4.annotation.review.tags; assert 'fiftyone' not in sys.modules, 'fiftyone was imported'"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 0, run.stderr


def test_is_reject_tag() -> None:
    assert is_reject_tag("reject") and is_reject_tag("reject:artefact") and is_reject_tag("reject:anything else")
    assert not is_reject_tag("rejected") and not is_reject_tag("accept") and not is_reject_tag("needs-fix")


@pytest.mark.parametrize(
    ("reason", "tags"),
    [
        (None, ["reject"]),
        ("artefact", ["reject:artefact"]),
        ("artefact,unrecognisable", ["reject:artefact", "reject:unrecognisable"]),
        ("generation flag: nsfw", ["reject:generation-flag-nsfw"]),  # automatic: the kind of reason
        ("generation flag: black (all pixels 0)", ["reject:generation-flag-black"]),
        ("both_present 0.000032 < 0.0001", ["reject:both_present"]),  # no scores in the tag
        ("both_present 1e-05 < 0.0001", ["reject:both_present"]),
        ("artefact,blurry", ["reject:artefact-blurry"]),  # not all known reasons: one tag
    ],
)
def test_reject_tags(reason, tags) -> None:
    assert reject_tags(reason) == tags


def test_decision_tags() -> None:
    assert decision_tags("accept", None) == ["accept"]
    assert decision_tags("reject", "missing-object") == ["reject:missing-object"]
    assert decision_tags("pending", None) == decision_tags(None, None) == []


@pytest.mark.parametrize(
    ("tags", "base", "expected"),
    [
        ([], ("pending", None), ("pending", None)),
        (["needs-fix", "seen"], ("pending", None), ("pending", None)),  # other tags say nothing
        (["accept"], ("pending", None), ("accept", None)),
        (["accept", "needs-fix"], AUTO, ("accept", None)),
        (["accept", "reject:artefact"], ("pending", None), CONFLICT),
        (["accept", "reject"], ("accept", None), CONFLICT),
        (["reject:unrecognisable", "reject:artefact"], ("pending", None), ("reject", "artefact,unrecognisable")),
        (["reject:artefact", "reject:artefact"], ("pending", None), ("reject", "artefact")),
        (["reject:blurry"], ("pending", None), INVALID),
        (["reject"], ("pending", None), INVALID),  # a bare reject that was not restored
        (["reject"], ("reject", None), ("reject", None)),  # ...and one that was
        (["reject:both_present"], AUTO, AUTO),  # an automatic reject, restored: unchanged
        ([f"reject:{AUTO[1]}"], AUTO, AUTO),  # ...also as the verbatim tag of a dataset built before short tags
        (["reject:both_present", "reject:artefact"], AUTO, ("reject", "artefact")),  # the reviewer's reason counts
        (["reject:both_present"], ("pending", None), INVALID),  # not this sample's synced reason
        (["reject:artefact,missing-object"], ("reject", "artefact,missing-object"), INVALID),  # not how it shows
        (
            ["reject:artefact", "reject:missing-object"],
            ("reject", "artefact,missing-object"),
            ("reject", "artefact,missing-object"),
        ),
        ([], AUTO, ("pending", None)),  # every decision tag removed: withdrawn
    ],
)
def test_tag_decision(tags, base, expected) -> None:
    assert tag_decision(tags, base) == expected


def test_tag_decision_round_trips_every_manifest_decision() -> None:
    for decision in (
        ("accept", None),
        ("reject", None),
        ("reject", "artefact"),
        ("reject", "artefact,extra-object"),
        AUTO,
        ("pending", None),
    ):
        assert tag_decision(decision_tags(*decision), decision) == decision, decision


def test_manifest_values() -> None:
    naive = datetime(2025, 2, 1, 12, 30)
    assert _py(np.int64(3)) == 3 and type(_py(np.int64(3))) is int
    assert _py(pd.NA) is None and _py(np.nan) is None and _py(None) is None
    assert _py(pd.Timestamp("2025-02-01T12:30Z")) == datetime(2025, 2, 1, 12, 30, tzinfo=UTC)
    assert _utc(naive) == naive.replace(tzinfo=UTC)  # FiftyOne's naive UTC
    assert _utc(pd.Timestamp("2025-02-01T13:30+01:00")) == naive.replace(tzinfo=UTC)
    assert _utc(None) is None and _utc(pd.NaT) is None
    frame = pd.DataFrame({"image_id": ["a", "b"], "score": [0.5, np.nan], "rank": np.array([1, 2], np.int64)})
    assert _rows_by(frame, "image_id") == {
        "a": {"image_id": "a", "score": 0.5, "rank": 1},
        "b": {"image_id": "b", "score": None, "rank": 2},
    }
    assert _rows_by(None, "image_id") == {}


def test_automatic_rejects_make_few_distinct_tags() -> None:
    reasons = [f"both_present {score:.6f} < 0.0001" for score in np.linspace(0, 0.0001, 20, endpoint=False)]
    reasons += ["generation flag: nsfw", "generation flag: nsfw (detector 0.93)"]
    assert sorted({t for r in reasons for t in reject_tags(r)}) == [
        "reject:both_present",
        "reject:generation-flag-nsfw",
    ]
