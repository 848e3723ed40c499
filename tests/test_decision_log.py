"""Decisions survive (issue 16 item 1): the verification manifest is a projection of an append-only decision log.

Unit tests on the ledger; the real `is4 build` on copies of the demo build is in tests/e2e/test_decision_log_build.py.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest

from is4.manifests.decisions import LOG_PATH, DecisionLogError, append_records, log_path, read_log
from is4.manifests.io import manifest_path, read_manifest, write_manifest
from is4.pipeline.verification import (
    AUTO,
    AUTO_POLICY,
    HUMAN,
    auto_verify,
    ledger_intact,
    read_verification,
    update_verification,
)

T1 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def row(image_id: str, decision: str, source: str, reviewer: str | None, at: datetime | None = None) -> dict:
    return {
        "image_id": image_id,
        "decision": decision,
        "reason": None,
        "reviewer": reviewer,
        "source": source,
        "decided_at": at,
    }


def images(work: Path, ids: list[str]) -> None:
    columns = ("template", "style", "prompt", "seed", "model_id", "model_revision", "image_path", "sha256")
    write_manifest(
        work,
        "images",
        pd.DataFrame(
            [{"image_id": i, "category_a": "cat", "category_b": "dog", **dict.fromkeys(columns)} for i in ids]
        ),
    )


def test_manifest_is_a_projection_of_the_log(tmp_path: Path) -> None:
    images(tmp_path, ["a", "b", "c"])
    update_verification(
        tmp_path,
        [row("a", "reject", AUTO, "prescreen"), row("b", "pending", AUTO, None), row("c", "pending", AUTO, None)],
        "prescreen",
    )
    update_verification(tmp_path, [row("b", "accept", HUMAN, "alice", T1)], HUMAN)
    auto_verify(tmp_path)
    first = manifest_path(tmp_path, "verification").read_bytes()
    assert ledger_intact(tmp_path)
    decided = read_manifest(tmp_path, "verification").set_index("image_id")
    assert decided.loc["b", "reviewer"] == "alice" and decided.loc["b", "decided_at"] == pd.Timestamp(T1)
    # Automatic decisions carry no wall clock.
    assert decided.loc["c", "reviewer"] == AUTO_POLICY and pd.isna(decided.loc["c", "decided_at"])
    assert pd.isna(decided.loc["a", "decided_at"])
    # Only what changed is appended: 3 rows, a human accept, one automatic accept; an unchanged rerun adds nothing.
    assert [r["image_id"] for r in read_log(tmp_path)] == ["a", "b", "c", "b", "c"]
    auto_verify(tmp_path)
    assert len(read_log(tmp_path)) == 5

    # Deleted, truncated or replaced by another writer: the manifest no longer projects the log, and the next
    # commit writes the same bytes again; the human decision is never lost.
    for damage in ("delete", "truncate", "overwrite"):
        path = manifest_path(tmp_path, "verification")
        if damage == "delete":
            path.unlink()
        elif damage == "truncate":
            path.write_bytes(first[:100])
        else:
            write_manifest(tmp_path, "verification", pd.DataFrame([row("b", "reject", AUTO, "prescreen")]))
        assert not ledger_intact(tmp_path), damage
        assert read_verification(tmp_path).set_index("image_id").loc["b", "source"] == HUMAN
        auto_verify(tmp_path)
        assert path.read_bytes() == first, damage


def test_a_work_directory_without_a_log_seeds_it_from_its_manifest(tmp_path: Path) -> None:
    images(tmp_path, ["a", "b"])
    old = pd.DataFrame([row("a", "accept", HUMAN, "alice", T1), row("b", "pending", AUTO, None)])
    old["decided_at"] = pd.to_datetime(old["decided_at"], utc=True)
    write_manifest(tmp_path, "verification", old)  # as builds wrote it before the log existed
    assert read_log(tmp_path) is None and not ledger_intact(tmp_path)
    auto_verify(tmp_path)
    assert [(r["image_id"], r["decision"]) for r in read_log(tmp_path)] == [
        ("a", "accept"),
        ("b", "pending"),
        ("b", "accept"),
    ]
    assert ledger_intact(tmp_path)
    assert read_verification(tmp_path).set_index("image_id").loc["a", "reviewer"] == "alice"


def test_a_lost_log_comes_back_from_the_release_that_ships_it(tmp_path: Path) -> None:
    """Issue 21 item 5: the log the manifest projects is put back whole from a release in WORK (not seeded with one
    line per image), so the manifest and everything built from it keep their bytes."""
    images(tmp_path, ["a", "b"])
    update_verification(tmp_path, [row("a", "reject", AUTO, "prescreen"), row("b", "pending", AUTO, None)], "prescreen")
    auto_verify(tmp_path)
    update_verification(tmp_path, [row("a", "accept", HUMAN, "alice", T1)], HUMAN)
    log, manifest = log_path(tmp_path).read_bytes(), manifest_path(tmp_path, "verification").read_bytes()
    assert len(log.splitlines()) == 4  # a history: more lines than images
    shipped = tmp_path / "releases" / "is4-0.1.0" / LOG_PATH
    shipped.parent.mkdir(parents=True)
    shipped.write_bytes(log)
    other = tmp_path / "releases" / "is4-0.0.9" / LOG_PATH  # an older release's log: not the one projected
    other.parent.mkdir(parents=True)
    other.write_bytes(log.splitlines(keepends=True)[0])

    log_path(tmp_path).unlink()
    assert not ledger_intact(tmp_path)
    auto_verify(tmp_path)  # the verify stage's next run
    assert log_path(tmp_path).read_bytes() == log
    assert manifest_path(tmp_path, "verification").read_bytes() == manifest and ledger_intact(tmp_path)

    # No release ships the projected log: the manifest's last decisions seed a new one (the history is lost).
    shipped.unlink()
    log_path(tmp_path).unlink()
    auto_verify(tmp_path)
    records, ledger = read_log(tmp_path), read_verification(tmp_path)
    assert records is not None and ledger is not None
    assert [(r["image_id"], r["decision"]) for r in records] == [("a", "accept"), ("b", "accept")]
    assert ledger.set_index("image_id").loc["a", "reviewer"] == "alice"


def test_torn_and_damaged_log_lines(tmp_path: Path) -> None:
    append_records(tmp_path, [row("a", "accept", HUMAN, "alice", T1)])
    with open(log_path(tmp_path), "ab") as fh:
        fh.write(b'{"image_id": "torn-b", "deci')  # a writer killed mid-append: it committed nothing
    assert [r["image_id"] for r in read_log(tmp_path)] == ["a"]
    append_records(tmp_path, [row("c", "reject", HUMAN, "bob", T1)])
    assert [r["image_id"] for r in read_log(tmp_path)] == ["a", "c"]
    assert b"torn-b" not in log_path(tmp_path).read_bytes()
    text = log_path(tmp_path).read_text(encoding="utf-8").splitlines()
    log_path(tmp_path).write_text(f"{text[0]}\nnot json\n{text[1]}\n", encoding="utf-8")
    with pytest.raises(DecisionLogError, match=r"verification.jsonl: line 2 is not a decision record"):
        read_log(tmp_path)


def test_refuses_when_decisions_are_gone_but_later_stages_used_them(tmp_path: Path) -> None:
    images(tmp_path, ["a"])
    update_verification(tmp_path, [row("a", "accept", HUMAN, "alice", T1)], HUMAN)
    write_manifest(
        tmp_path,
        "annotations",
        pd.DataFrame(
            [
                {
                    "instance_id": "a_cat",
                    "image_id": "a",
                    "category": "cat",
                    "mask_path": None,
                    "bbox_xyxy": None,
                    "method": "auto",
                    "model_id": None,
                }
            ]
        ),
    )
    log_path(tmp_path).unlink()
    assert read_verification(tmp_path) is not None  # the manifest still holds every decision
    manifest_path(tmp_path, "verification").unlink()
    for call in (lambda: read_verification(tmp_path), lambda: auto_verify(tmp_path)):
        with pytest.raises(DecisionLogError) as err:
            call()
        message = str(err.value)
        assert "\n" not in message and "is missing but annotations were built from it" in message
        assert "restore" in message and "a release's decisions/verification.jsonl" in message
    assert not manifest_path(tmp_path, "verification").exists(), "nothing was invented"
    manifest_path(tmp_path, "annotations").unlink()
    assert read_verification(tmp_path) is None  # nothing built from decisions yet: a fresh start
