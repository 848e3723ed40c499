"""The verification ledger: who may replace whose decision, and the automatic policy that stands in for humans."""

from __future__ import annotations

import multiprocessing
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest

from is4.manifests.io import read_manifest, write_manifest
from is4.pipeline.verification import (
    AUTO,
    AUTO_POLICY,
    HUMAN,
    auto_verify,
    merge_decisions,
    update_verification,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)
T1 = datetime(2026, 2, 1, tzinfo=UTC)


def row(image_id: str, decision: str, source: str, reviewer: str | None, at=T0, reason=None) -> dict:
    return {
        "image_id": image_id,
        "decision": decision,
        "reason": reason,
        "reviewer": reviewer,
        "source": source,
        "decided_at": at,
    }


def ledger(*rows: dict) -> pd.DataFrame:
    return merge_decisions(None, rows, HUMAN)[0]


def test_human_decisions_are_never_replaced_by_automatic_writers() -> None:
    existing = ledger(row("a", "accept", HUMAN, "alice"))
    merged, kept = merge_decisions(existing, [row("a", "reject", AUTO, "prescreen", T1)], "prescreen")
    assert kept == ["a"]
    assert merged.set_index("image_id").loc["a", "decision"] == "accept"


def test_an_automatic_writer_replaces_its_own_rows_and_pending_rows_only() -> None:
    existing = ledger(
        row("a", "reject", AUTO, "prescreen"), row("b", "pending", AUTO, None), row("c", "reject", AUTO, "other-bot")
    )
    proposed = [row(i, "accept", AUTO, AUTO_POLICY, T1) for i in "abc"]
    merged, kept = merge_decisions(existing, proposed, AUTO_POLICY)
    decisions = merged.set_index("image_id")["decision"].to_dict()
    assert decisions == {"a": "reject", "b": "accept", "c": "reject"}
    assert sorted(kept) == ["a", "c"]


def test_humans_may_change_any_decision_and_unchanged_ones_keep_their_time() -> None:
    existing = ledger(row("a", "reject", AUTO, "prescreen"), row("b", "accept", HUMAN, "alice", T0))
    proposed = [row("a", "accept", HUMAN, "bob", T1), row("b", "accept", HUMAN, "alice", T1)]
    merged = merge_decisions(existing, proposed, HUMAN)[0].set_index("image_id")
    assert (merged.loc["a", "decision"], merged.loc["a", "reviewer"]) == ("accept", "bob")
    assert merged.loc["a", "decided_at"] == pd.Timestamp(T1)
    assert merged.loc["b", "decided_at"] == pd.Timestamp(T0), "the same decision keeps when it was first made"


def _write_images(work: Path, ids: list[str]) -> None:
    rows = [
        {
            "image_id": i,
            "category_a": "cat",
            "category_b": "dog",
            "template": "t",
            "style": "s",
            "prompt": "p",
            "seed": 0,
            "model_id": "m",
            "model_revision": "r",
            "image_path": f"media/images/{i}.png",
            "sha256": "0" * 64,
        }
        for i in ids
    ]
    write_manifest(work, "images", pd.DataFrame(rows))


def test_auto_policy_accepts_pending_and_keeps_rejects(tmp_path: Path) -> None:
    _write_images(tmp_path, ["a", "b", "c", "d"])
    update_verification(
        tmp_path,
        [row("a", "reject", AUTO, "prescreen"), row("b", "pending", AUTO, None), row("c", "reject", HUMAN, "alice")],
        HUMAN,
    )
    summary = auto_verify(tmp_path, now=T1)
    ver = read_manifest(tmp_path, "verification").set_index("image_id")
    assert ver["decision"].to_dict() == {"a": "reject", "b": "accept", "c": "reject", "d": "accept"}
    assert set(ver.loc[["b", "d"], "source"]) == {AUTO} and set(ver.loc[["b", "d"], "reviewer"]) == {AUTO_POLICY}
    assert (summary["accepted"], summary["rejected"], summary["pending"]) == (2, 2, 0)


def _decide(work: str, image_ids: list[str], reviewer: str) -> None:
    for image_id in image_ids:
        update_verification(work, [row(image_id, "accept", HUMAN, reviewer, T1)], HUMAN)


def test_concurrent_writers_lose_nothing(tmp_path: Path) -> None:
    ids = [f"img{i:02d}" for i in range(40)]
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_decide, args=(str(tmp_path), ids[k::2], f"r{k}")) for k in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    ver = read_manifest(tmp_path, "verification")
    assert sorted(ver["image_id"]) == ids


@pytest.mark.parametrize("writer", [AUTO_POLICY, "prescreen"])
def test_automatic_writers_report_what_they_could_not_replace(tmp_path: Path, writer: str) -> None:
    update_verification(tmp_path, [row("a", "accept", HUMAN, "alice")], HUMAN)
    _, _, kept = update_verification(tmp_path, [row("a", "reject", AUTO, writer, T1)], writer)
    assert kept == ["a"]


def test_undecided_lists_images_without_accept_or_reject(tmp_path: Path) -> None:
    from is4.pipeline.verification import undecided

    _write_images(tmp_path, ["a", "b", "c"])
    assert undecided(tmp_path) == ["a", "b", "c"]
    update_verification(tmp_path, [row("a", "reject", AUTO, "prescreen"), row("b", "pending", AUTO, None)], "prescreen")
    assert undecided(tmp_path) == ["b", "c"]
