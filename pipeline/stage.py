"""`Stage`: one declaration per stage, from which the flow, the CLI, cache keys, provenance and the card derive.

A stage declares what it is (name, one-line summary), where its code is (`entry`, imported only when it runs, so the
registry can name `is4.annotation` code without `pipeline/` importing it), and what its output depends on: config
sections, model roles, manifests read, other input files, the seed. `provenance(cfg, work)` turns that into one
dict; the stage writes it into every manifest it produces, and the flow's cache key is its hash (plus the work
directory). `tests/e2e/test_stage_reads.py` runs the demo build and fails when a stage reads a manifest it does not
declare, or declares one it never reads.
"""

from __future__ import annotations

import importlib
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import is4
from is4.config import BuildConfig
from is4.manifests.atomic import atomic_write_json, remove_temporaries
from is4.manifests.checksum import HashCache, json_sha256, sha256_file, sha256_if_exists
from is4.manifests.io import ManifestError, manifest_path, read_manifest, read_provenance
from is4.manifests.journal import cut_torn_tail
from is4.manifests.schema import TABLES

ProgressFn = Callable[[int, int, str], None]  # (done, total, message)
ALL_SECTIONS = ("*",)  # `config=ALL_SECTIONS`: the whole build config is an input (the release ships it)
PREFECT_STATE_DIR = "state/prefect"  # the flow's task results, one file per cache key (`cache_key`)
OUTPUTS_DIR = "state/outputs"  # per stage: the sha256 of each file its manifests list, as it finished
# Path columns whose file's sha256 the manifest records itself (table → path column → checksum column).
CHECKSUM_COLUMNS: dict[str, dict[str, str]] = {"images": {"image_path": "sha256"}}
# Manifests whose provenance is the decision log they project, not a stage's (the ledger checks them itself).
LOG_PROJECTIONS = ("verification",)
logger = logging.getLogger(__name__)


class StageEntry(Protocol):
    def __call__(
        self,
        work: Path,
        cfg: BuildConfig,
        provenance: dict[str, Any],
        *,
        progress: ProgressFn | None = None,
        **options: Any,
    ) -> dict[str, Any]:
        """Run the stage; write `provenance` (plus facts only the run knows) into its manifests; return a summary.

        Stages that take long report `progress`; quick ones accept it and say nothing.
        """
        ...


class MergeEntry(Protocol):
    def __call__(
        self, work: Path, cfg: BuildConfig, provenance: dict[str, Any], shards: list[dict[str, Any]], **options: Any
    ) -> dict[str, Any]:
        """Write the stage's manifests from what every shard of one run left (`shards`: their summaries, in order;
        `options`: those every shard ran with); return the stage's summary."""
        ...


def _no_files(_cfg: BuildConfig) -> dict[str, Path | None]:
    return {}


@dataclass(frozen=True)
class Stage:
    """What a stage is, where its code lives and everything its output depends on."""

    name: str
    summary: str
    entry: str  # "module:function", a StageEntry
    # "module:function", a MergeEntry: the stage runs as shards (`entry(..., shard=Shard(i, n), merge=False)` each,
    # `execution.shards` of them), then this writes its manifests. None: the stage runs in one piece.
    merge: str | None = None
    config: tuple[str, ...] = ()  # BuildConfig sections (ALL_SECTIONS: all of it)
    models: tuple[str, ...] | Callable[[BuildConfig], tuple[str, ...]] = ()  # ModelsConfig roles
    reads: tuple[str, ...] = ()  # manifests read
    # manifests read only in some runs (a ledger not started yet, an optional column missing); keyed all the same
    may_read: tuple[str, ...] = ()
    writes: tuple[str, ...] = ()  # manifests written (the default outputs-intact check)
    files: Callable[[BuildConfig], Mapping[str, Path | None]] = _no_files  # other input files, by label
    seed: bool = False
    # Settings that cannot change the output (worker counts, where a server listens), per section, as pydantic's
    # `model_dump(exclude=...)` takes them.
    exclude: Mapping[str, Any] = field(default_factory=dict)
    # "module:function", `(work, cfg) -> bool`: replaces the manifest check (release, verify)
    intact: str | None = None
    unlisted_paths: tuple[str, ...] = ()  # path columns whose files may be deleted (ingest's source videos)
    journals: tuple[str, ...] = ()  # globs (under WORK) of its resume journals: a torn last line = an item not done
    # The manifests whose checksums enter the key; the registry derives it from `reads` (`registry.keyed_inputs`).
    keyed_inputs: tuple[str, ...] | None = None

    def load(self) -> StageEntry:
        """The entry function, imported now."""
        return _load(self.entry)

    @property
    def sharded(self) -> bool:
        """Whether the stage runs as shards and a merge."""
        return self.merge is not None

    def load_merge(self) -> MergeEntry:
        """The merge function, imported now (a sharded stage's)."""
        if self.merge is None:
            raise ValueError(f"stage {self.name} is not sharded")
        return _load(self.merge)

    def model_roles(self, cfg: BuildConfig) -> tuple[str, ...]:
        """The model roles this run uses (a stage may use a model only when a setting asks for it)."""
        return self.models(cfg) if callable(self.models) else self.models

    def provenance(
        self, cfg: BuildConfig, work: Path, files: Mapping[str, Path | None] | None = None
    ) -> dict[str, Any]:
        """Everything the output depends on: the dict written into the stage's manifests and hashed for its cache.

        `files` replaces the declared input files (ingest's csv is known only once its source is open).
        """
        dumped = cfg.model_dump(mode="json", exclude=dict(self.exclude) or None)
        sections = dumped if self.config == ALL_SECTIONS else {s: dumped[s] for s in self.config}
        inputs = self.reads if self.keyed_inputs is None else self.keyed_inputs
        key: dict[str, Any] = {
            "stage": self.name,
            "is4": is4.__version__,
            "config": sections,
            "models": {role: _model_key(getattr(cfg.models, role)) for role in self.model_roles(cfg)},
            "inputs_sha256": {t: sha256_if_exists(manifest_path(work, t)) for t in inputs},
            "files_sha256": {
                label: sha256_if_exists(Path(p)) if p else None
                for label, p in (self.files(cfg) if files is None else files).items()
            },
        }
        if self.seed:
            key["seed"] = cfg.seed
        return key

    def run(
        self,
        work: Path,
        cfg: BuildConfig,
        provenance: dict[str, Any],
        *,
        progress: ProgressFn | None = None,
        **options: Any,
    ) -> dict[str, Any]:
        """Run the entry, then record the sha256 of every file its manifests list (what `outputs_intact` checks).

        A shard run with `merge=False` writes no manifest (the stage's merge does, and the flow records after it).
        """
        summary = self.load()(work, cfg, provenance, progress=progress, **options)
        if options.get("merge", True):
            record_outputs(work, self)
        return summary

    def outputs_intact(self, work: Path, cfg: BuildConfig) -> bool:
        """True when what the stage produced is all there and unchanged, so a cache hit may stand in for running it.

        A listed file whose content is not what was recorded is removed (see `manifest_intact`), and a torn last line
        of a journal cut off, so the stage's own resume logic makes them again.
        """
        torn = [p for pattern in self.journals for p in sorted(work.glob(pattern)) if cut_torn_tail(p)]
        for path in torn:
            logger.warning("%s: its last line was torn (a killed run): cut off, the item is redone", path)
        if self.intact is not None:
            return _load(self.intact)(work, cfg) and not torn
        if torn:
            return False
        record = _read_record(work, self.name)
        return all(
            [manifest_intact(work, table, skip=self.unlisted_paths, record=record.get(table)) for table in self.writes]
        )  # a list: every table is checked (and its damage removed)


def _load(ref: str) -> Any:
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


def cache_key(provenance: Mapping[str, Any], work: Path, **extra: Any) -> str:
    """The cache key of a stage run: its provenance, the work directory it belongs to, and e.g. the shard."""
    return f"{provenance['stage']}-{json_sha256({**provenance, 'workdir': str(work), **extra})[:32]}"


def provenance_sha256(provenance: Mapping[str, Any]) -> str:
    """The hash a stage that writes no manifest records of its provenance (`state/outputs/<stage>.json`)."""
    return json_sha256(provenance)


def provenance_current(work: Path, stage: Stage, provenance: Mapping[str, Any]) -> bool:
    """True when the stage's outputs say they were made with `provenance`, the one this run would write.

    Each manifest the stage writes must carry it in its own metadata (facts a run adds under keys of their own
    aside); a stage that writes none (release, export) must have recorded its hash (`provenance_sha256`). A cache
    record of an earlier run with this provenance never stands in for outputs that another config rewrote since.
    """
    if not stage.writes:
        return _read_record(work, stage.name).get("provenance_sha256") == provenance_sha256(provenance)
    wanted = json.loads(json.dumps(provenance, sort_keys=True, default=str))  # as `write_manifest` stores it
    for table in stage.writes:
        if table in LOG_PROJECTIONS:
            continue
        try:
            stored = read_provenance(work, table)
        except (OSError, ValueError) as exc:  # a missing or unreadable file
            logger.info("%s: no readable provenance (%s): %s runs", manifest_path(work, table), exc, stage.name)
            return False
        if any(stored.get(key) != value for key, value in wanted.items()):
            logger.info("%s was written by another config or input: %s runs", manifest_path(work, table), stage.name)
            return False
    return True


def _listed_files(frame: Any, table: str, skip: tuple[str, ...]) -> dict[str, str | None]:
    """Every file the manifest lists (but in `skip` columns) with the sha256 it records for it, if any."""
    files: dict[str, str | None] = {}
    for column in TABLES[table].path_columns:
        if column in skip or column not in frame.columns:
            continue
        sums = frame[CHECKSUM_COLUMNS[table][column]] if column in CHECKSUM_COLUMNS.get(table, {}) else None
        for i, rel in frame[column].items():
            if isinstance(rel, str):
                files[rel] = sums[i] if sums is not None and isinstance(sums[i], str) else None
    return files


def record_outputs(work: Path, stage: Stage) -> None:
    """Remember the sha256 of every file listed by the manifests `stage` writes (`WORK/state/outputs/<stage>.json`),
    with the sha256 of the manifest they belong to. A stage that writes no manifest checks its own outputs."""
    if not stage.writes:
        return
    tables: dict[str, Any] = {}
    for table in stage.writes:
        try:
            frame = read_manifest(work, table)
        except ManifestError:
            continue
        files = _listed_files(frame, table, stage.unlisted_paths)
        cache = HashCache(work, table)
        tables[table] = {
            "manifest_sha256": sha256_file(manifest_path(work, table)),
            "files": {rel: cache.sha256(rel) for rel in sorted(files)},
        }
        cache.save()
    atomic_write_json(work / OUTPUTS_DIR / f"{stage.name}.json", tables)


def remove_orphaned_temporaries(work: Path, stage: Stage) -> list[Path]:
    """Remove the temporary files a killed writer of `stage` left beside its outputs (its manifests and the folders
    of the files they list); return them. Only while no writer can be alive in WORK: a whole build between stages,
    never a shard started by hand beside others."""
    folders = {manifest_path(work, table).parent for table in stage.writes}
    for table in stage.writes:
        try:
            frame = read_manifest(work, table)
        except ManifestError:
            continue
        folders |= {(work / rel).parent for rel in _listed_files(frame, table, ())}
    removed = [path for folder in sorted(folders) for path in remove_temporaries(folder)]
    for path in removed:
        logger.warning("%s: a temporary file left by a killed writer: removed", path)
    return removed


def _read_record(work: Path, name: str) -> dict[str, Any]:
    try:
        record = json.loads((work / OUTPUTS_DIR / f"{name}.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def manifest_intact(
    work: Path,
    table: str,
    skip: tuple[str, ...] = (),
    record: Mapping[str, Any] | None = None,
) -> bool:
    """True when a manifest exists, validates, and every file it lists (but in `skip` columns) is there with the
    content the manifest records (its checksum column) or, else, `record` holds (`record_outputs`, when it
    describes this very manifest). Sizes and mtimes come first; a file is hashed only when its stat changed.

    A file whose content differs is removed (and logged), so the stage redoes it instead of building on it.
    """
    return damaged_files(work, table, skip, record) == []


def damaged_files(
    work: Path,
    table: str,
    skip: tuple[str, ...] = (),
    record: Mapping[str, Any] | None = None,
    *,
    deep: bool = False,
) -> list[str] | None:
    """The files a manifest lists (but in `skip` columns) that are missing or whose content is not the checksum
    recorded when they were made (see `manifest_intact`; those are removed); None when the manifest itself is
    missing or invalid. `deep` hashes every file from its bytes (no size + mtime + inode shortcut)."""
    try:
        frame = read_manifest(work, table)
    except ManifestError:
        return None
    files = _listed_files(frame, table, skip)
    if record and record.get("manifest_sha256") == sha256_if_exists(manifest_path(work, table)):
        recorded = record.get("files") or {}
        files = {rel: expected or recorded.get(rel) for rel, expected in files.items()}
    spec = TABLES[table]
    owned = tuple(c for c in spec.path_columns if c not in spec.referenced_paths)
    borrowed = set(_listed_files(frame, table, skip + owned))
    cache = HashCache(work, table, deep=deep)
    damaged: list[str] = []
    for rel, expected in files.items():
        if expected is None:  # nothing recorded (a work directory older than the records): presence only
            if not (work / rel).is_file():
                damaged.append(rel)
            continue
        actual = cache.sha256(rel)
        if actual is None:
            damaged.append(rel)
        elif actual != expected and rel in borrowed:  # another stage's file, changed since: this table is stale
            logger.warning("%s: changed since %s listed it: %s is made again", work / rel, table, table)
            damaged.append(rel)
        elif actual != expected:
            logger.warning(
                "%s: its content is not what %s recorded (sha256 %s, expected %s): removed, to be redone",
                work / rel,
                table,
                actual[:12],
                expected[:12],
            )
            (work / rel).unlink(missing_ok=True)
            damaged.append(rel)
    cache.save()
    return damaged


def stage_record(work: Path, name: str) -> dict[str, Any]:
    """What `record_outputs` remembered of stage `name` (`state/outputs/<name>.json`); empty when nothing."""
    return _read_record(work, name)


def _model_key(ref: Any) -> dict[str, Any] | None:
    return ref.model_dump(mode="json") if ref is not None else None
