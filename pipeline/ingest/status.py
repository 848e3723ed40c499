"""Where an ingest stands, from its work directory alone: `is4 ingest --status`.

Each run writes a run record (`state/ingest-runs/<csv>-<hash>.json`: the csv, the clips it selected and the
command that continues it) before it downloads anything; the status joins those with every journal
(`journals.load_records`: the whole selection's and the shards'). Several runs
over parts of one csv (see the README) each have their own record.
"""

from __future__ import annotations

import hashlib
import json
import shlex
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from is4.manifests.atomic import atomic_write_json
from is4.manifests.errors import FatalError
from is4.pipeline.ingest.errors import reason_kind
from is4.pipeline.ingest.journals import FINAL, JOURNAL, load_records

__all__ = ["JOURNAL", "RUNS_DIR", "RunStatus", "StatusError", "ingest_status", "write_run_record"]
RUNS_DIR = "state/ingest-runs"


class StatusError(FatalError, ValueError):
    """There is no ingest to report on in the work directory."""


def run_record_path(workdir: Path, csv_path: Path) -> Path:
    """Where the run record of ingesting `csv_path` into `workdir` lives."""
    resolved = str(Path(csv_path).resolve())
    return workdir / RUNS_DIR / f"{Path(csv_path).stem}-{hashlib.sha256(resolved.encode()).hexdigest()[:8]}.json"


def write_run_record(workdir: Path, csv_path: Path, clip_ids: list[str], command: str | None) -> Path:
    """Record what a run is about to do (no times in it: the same run writes the same bytes)."""
    path = run_record_path(workdir, csv_path)
    atomic_write_json(path, {"csv": str(Path(csv_path).resolve()), "command": command, "clip_ids": clip_ids})
    return path


def continue_command(workdir: Path, csv: str) -> str:
    """The command for a run whose record has none (it came from the flow)."""
    return (
        shlex.join(["is4", "ingest", "--csv", csv, "--workdir", str(workdir.resolve()), "--config", "CONFIG"])
        + "   (CONFIG: the config of the build; or rerun `is4 build`)"
    )


@dataclass
class RunStatus:
    """One run record's clips, by what their journal records say."""

    csv: str
    command: str
    selected: int
    by_status: Counter[str] = field(default_factory=Counter)  # ok, failed, pending
    by_reason: Counter[str] = field(default_factory=Counter)  # failed clips, by reason kind
    retryable: int = 0  # transient failures and pending clips: a rerun tries them

    def as_dict(self) -> dict[str, Any]:
        return {
            "csv": self.csv,
            "selected": self.selected,
            **{s: self.by_status.get(s, 0) for s in ("ok", "failed", "pending")},
            "retryable": self.retryable,
            "failed_by_reason": dict(sorted(self.by_reason.items())),
            "continue": self.command,
        }


def ingest_status(workdir: str | Path) -> list[RunStatus]:
    """The status of every run recorded in `workdir`, in file-name order."""
    workdir = Path(workdir)
    paths = sorted((workdir / RUNS_DIR).glob("*.json"))
    if not paths:
        raise StatusError(f"{workdir}: no ingest has run in this work directory ({RUNS_DIR}/ is empty)")
    records = load_records(workdir)  # every journal: the whole selection's and the shards'

    out = []
    for path in paths:
        try:
            run = json.loads(path.read_text(encoding="utf-8"))
            clip_ids, csv = list(run["clip_ids"]), str(run["csv"])
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise StatusError(f"{path}: not an ingest run record ({exc})") from None
        status = RunStatus(csv, run.get("command") or continue_command(workdir, csv), len(clip_ids))
        for clip_id in clip_ids:
            record = records.get(clip_id)
            if record is None or record["status"] not in FINAL:  # none yet, or downloaded but not extracted
                status.by_status["pending"] += 1
                status.retryable += 1
                continue
            status.by_status[record["status"]] += 1
            if record["status"] != "ok":
                status.by_reason[reason_kind(record.get("reason") or "-")] += 1
                status.retryable += bool(record.get("retryable"))
        out.append(status)
    return out
