"""The verification ledger: one decision per image, merged by who may replace what, kept in an append-only log.

Every writer (the pre-screen, the automatic policy that stands in for reviewers, the FiftyOne sync) goes through
`update_verification` (or `commit_decisions` under a lock it already holds), so the rules live in one place:

- a human decision (`source=human`) is replaced only by another human decision;
- an automatic writer replaces only automatic rows it wrote itself (its reviewer name) and automatic `pending`
  rows — never a human's, never another automatic reviewer's;
- a row whose decision, reason, reviewer and source do not change keeps the time it was first decided;
- rows of images the writer does not mention are kept as they are;
- automatic decisions carry no wall clock (`decided_at` is null): same config and same human decisions give the
  same bytes.

What a commit changes is appended to the decision log (`manifests.decisions`, `WORK/decisions/verification.jsonl`)
before the verification manifest, its projection (the last record of each image), is written with the log's sha256
in its provenance (`decision_log`). A deleted or damaged manifest is therefore rebuilt from the log; a lost log is
put back on the next commit from a release in WORK that ships the very log the manifest projects (its sha256), and
only a work directory without either (made before the log existed, or whose releases ship another log) seeds it
from its manifest; when neither the log nor the manifest is there but later stages were built from them, every
reader refuses with one line saying how to restore.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd

from is4.config import BuildConfig
from is4.manifests.atomic import atomic_path
from is4.manifests.checksum import sha256_file
from is4.manifests.decisions import LOG_PATH, DecisionLogError, append_records, log_path, read_log
from is4.manifests.errors import FatalError
from is4.manifests.io import ManifestError, is_blank, manifest_path, read_manifest, read_provenance, write_manifest
from is4.manifests.lock import manifest_lock
from is4.manifests.schema import VERIFICATION
from is4.pipeline.stage import ProgressFn

HUMAN = "human"
AUTO = "auto"
AUTO_POLICY = "auto-policy"  # the reviewer name of the automatic policy (demo profile)
LOG_KEY = "decision_log"  # provenance key of the manifest: the log it projects
PROJECTION = {"stage": "verification", "projection_of": "decisions/verification.jsonl"}
RELEASE_LOGS = f"releases/*/{LOG_PATH}"  # the decision logs releases ship (`pipeline/release/build.py`)
# The manifests of stages built from the decisions: their presence says decisions were made and used.
DOWNSTREAM = ("annotations", "instances")

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


def _merge(rows: dict[str, dict[str, Any]], proposed: Proposal, writer: str) -> tuple[list[str], list[str]]:
    """Merge `proposed` into `rows` (by image id, in place); the image ids kept as they were and those changed."""
    kept: list[str] = []
    changed: list[str] = []
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
        changed.append(new["image_id"])
    return kept, list(dict.fromkeys(changed))


def _rows(frame: pd.DataFrame | None) -> dict[str, dict[str, Any]]:
    return {} if frame is None else {row["image_id"]: _clean(row) for row in frame.to_dict("records")}


def _frame(rows: Mapping[str, dict[str, Any]], extra: Iterable[str] = ()) -> pd.DataFrame:
    columns = list(VERIFICATION.column_names)
    columns += [c for c in dict.fromkeys([*extra, *(k for r in rows.values() for k in r)]) if c not in columns]
    frame = pd.DataFrame(list(rows.values()), columns=columns)
    frame["decided_at"] = pd.to_datetime(frame["decided_at"], utc=True, format="ISO8601")
    return frame.sort_values("image_id", ignore_index=True)


def merge_decisions(existing: pd.DataFrame | None, proposed: Proposal, writer: str) -> tuple[pd.DataFrame, list[str]]:
    """The ledger with `writer`'s proposed rows merged in, and the image ids whose existing row was kept."""
    rows = _rows(existing)
    kept, _ = _merge(rows, proposed, writer)
    return _frame(rows, () if existing is None else existing.columns), kept


def _restore_hint(workdir: Path) -> str:
    return (
        f"restore {log_path(workdir)} from a backup, or copy a release's {LOG_PATH} there (the log it was built "
        "from); to decide everything again instead, delete "
        + " and ".join(str(manifest_path(workdir, t)) for t in DOWNSTREAM)
    )


def read_verification(workdir: str | Path) -> pd.DataFrame | None:
    """The decisions (the projection of the decision log), or None when no decision has been made yet.

    Without a log, the manifest stands in (a work directory older than the log); refuses (DecisionLogError, one
    line saying how to restore) when the manifest is unreadable, or missing while later stages were built from it.
    """
    workdir = Path(workdir)
    records = read_log(workdir)
    if records is not None:
        current = _projecting_manifest(workdir)
        if current is not None:
            return current
        rows: dict[str, dict[str, Any]] = {}
        for record in records:
            rows[record["image_id"]] = record
        return _frame(rows) if rows else None
    path = manifest_path(workdir, "verification")
    if path.is_file():
        try:
            return read_manifest(workdir, "verification")
        except ManifestError as exc:
            raise DecisionLogError(
                f"{exc} and there is no decision log to rebuild it from: " + _restore_hint(workdir)
            ) from None
    built = [t for t in DOWNSTREAM if manifest_path(workdir, t).is_file()]
    if built:
        raise DecisionLogError(
            f"the decision log {log_path(workdir)} is missing but {' and '.join(built)} "
            f"were built from it: " + _restore_hint(workdir)
        )
    return None


def commit_decisions(
    workdir: str | Path, existing: pd.DataFrame | None, proposed: Proposal, writer: str
) -> tuple[Path, pd.DataFrame, list[str]]:
    """Merge `writer`'s decisions into `existing` (read under the verification lock, which the caller holds),
    append what changed to the decision log, then write the manifest; (manifest path, ledger, image ids kept).

    The manifest's provenance is the log it projects (`PROJECTION`), never its last writer's: a projection written
    again by another stage has the same bytes. Who decided each row is in the row (`reviewer`, `source`).
    """
    workdir = Path(workdir)
    rows = _rows(existing)
    if read_log(workdir) is None and rows and not _restore_from_release(workdir):
        append_records(workdir, rows.values())  # seed the log with the manifest it stood in for
    kept, changed = _merge(rows, proposed, writer)
    append_records(workdir, (rows[i] for i in changed))
    frame = _frame(rows, () if existing is None else existing.columns)
    log = log_path(workdir)
    log_facts = {"sha256": sha256_file(log)} if log.is_file() else {"sha256": None}
    path = write_manifest(workdir, VERIFICATION, frame, {**PROJECTION, LOG_KEY: log_facts})
    return path, frame, kept


def _restore_from_release(workdir: Path) -> bool:
    """Put back a lost decision log from a release in WORK that ships the very log the manifest projected (its
    recorded sha256), so no decision's history is lost; False when no release has it."""
    try:
        recorded = (read_provenance(workdir, "verification").get(LOG_KEY) or {}).get("sha256")
    except (ManifestError, OSError, ValueError):
        return False
    if not recorded:
        return False  # a manifest from before the log: nothing to look for
    for shipped in sorted(workdir.glob(RELEASE_LOGS)):
        if sha256_file(shipped) == recorded:
            with atomic_path(log_path(workdir)) as tmp:
                shutil.copyfile(shipped, tmp)
            return True
    return False


def update_verification(
    workdir: str | Path,
    proposed: Proposal | Callable[[pd.DataFrame | None], Proposal],
    writer: str,
) -> tuple[Path, pd.DataFrame, list[str]]:
    """Merge `writer`'s decisions into the ledger under its lock (a callable sees the current ledger first).

    Returns the manifest path, the merged ledger and the image ids whose existing row was kept.
    """
    with manifest_lock(workdir, "verification"):
        existing = read_verification(workdir)
        rows = proposed(existing) if callable(proposed) else proposed
        return commit_decisions(workdir, existing, rows, writer)


def _projecting_manifest(workdir: Path) -> pd.DataFrame | None:
    """The verification manifest when it validates and projects the current decision log, else None."""
    log = log_path(workdir)
    try:
        recorded = read_provenance(workdir, "verification").get(LOG_KEY) or {}
        if not log.is_file() or recorded.get("sha256") != sha256_file(log):
            return None
        return read_manifest(workdir, "verification")
    except (ManifestError, OSError, ValueError):
        return None


def ledger_intact(workdir: str | Path) -> bool:
    """True when the verification manifest validates and projects the current decision log."""
    return _projecting_manifest(Path(workdir)) is not None


def copy_decisions(workdir: str | Path, manifest_to: Path, log_to: Path) -> None:
    """Copy the verification manifest to `manifest_to` and the decision log it projects to `log_to`, together.

    Under the ledger's lock, so a commit running meanwhile never gives a manifest and a log that disagree; refuses
    (VerificationError) when the manifest does not project the log: the verify stage has to run first.
    """
    workdir = Path(workdir)
    with manifest_lock(workdir, "verification"):
        if _projecting_manifest(workdir) is None:
            raise VerificationError(
                f"{manifest_path(workdir, 'verification')} does not project the decision log {log_path(workdir)}: "
                "run `is4 build` to rebuild it from the log"
            )
        shutil.copyfile(manifest_path(workdir, "verification"), manifest_to)
        log_to.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(log_path(workdir), log_to)


def auto_verify(workdir: str | Path, *, now: datetime | None = None) -> dict[str, Any]:
    """The automatic policy that stands in for reviewers: every image still pending is accepted (`source=auto`).

    Rejects by the pre-screen or by a human are kept; images with no row yet count as pending. Its decisions carry
    no wall clock (`now`, when given, is recorded instead: tests).
    """
    images = read_manifest(workdir, "images")

    def proposals(existing: pd.DataFrame | None) -> Proposal:
        decided = set()
        if existing is not None:
            decided = set(existing.loc[existing["decision"] != "pending", "image_id"])
        for image_id in images["image_id"]:
            if image_id not in decided:
                yield {
                    "image_id": image_id,
                    "decision": "accept",
                    "reason": "automatic policy: pending accepted",
                    "reviewer": AUTO_POLICY,
                    "source": AUTO,
                    "decided_at": now,
                }

    path, frame, _ = update_verification(workdir, proposals, AUTO_POLICY)
    counts = frame["decision"].value_counts()
    return {
        "accepted": int(counts.get("accept", 0)),
        "rejected": int(counts.get("reject", 0)),
        "pending": int(counts.get("pending", 0)),
        "manifest": str(path),
    }


def undecided(workdir: str | Path) -> list[str]:
    """Image ids of the images manifest that have neither an accept nor a reject yet."""
    images = read_manifest(workdir, "images")["image_id"]
    ledger = read_verification(workdir)
    decided = set() if ledger is None else set(ledger.loc[ledger["decision"] != "pending", "image_id"])
    return sorted(set(images) - decided)


def all_decided(work: Path, _cfg: BuildConfig) -> bool:
    """The verify stage's outputs are intact: the ledger projects the decision log and no image is undecided."""
    try:
        return ledger_intact(work) and not undecided(work)
    except FatalError:
        return False


def verify_stage(
    work: Path, cfg: BuildConfig, provenance: dict[str, Any], *, progress: ProgressFn | None = None
) -> dict[str, Any]:
    """The automatic policy as a stage (`review.mode: auto`); human review is the flow's pause (`flows/review.py`)."""
    if cfg.review.mode != "auto":
        raise VerificationError("review.mode is human: reviewers decide in FiftyOne (`is4 review verify`, then sync)")
    return auto_verify(work)  # the ledger's provenance is its decision log (`commit_decisions`)
