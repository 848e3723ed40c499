"""`Stage`: one declaration per stage, from which the flow, the CLI, cache keys, provenance and the card derive.

A stage declares what it is (name, one-line summary), where its code is (`entry`, imported only when it runs, so the
registry can name `is4.annotation` code without `pipeline/` importing it), and what its output depends on: config
sections, model roles, manifests read, other input files, the seed. `provenance(cfg, work)` turns that into one
dict; the stage writes it into every manifest it produces, and the flow's cache key is its hash (plus the work
directory). `tests/test_stage_reads.py` runs the demo build and fails when a stage reads a manifest it does not
declare, or declares one it never reads.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import is4
from is4.config import BuildConfig
from is4.manifests.checksum import json_sha256, sha256_if_exists
from is4.manifests.io import ManifestError, manifest_path, read_manifest
from is4.manifests.schema import TABLES

ProgressFn = Callable[[int, int, str], None]  # (done, total, message)
ALL_SECTIONS = ("*",)  # `config=ALL_SECTIONS`: the whole build config is an input (the release ships it)


class StageEntry(Protocol):
    def __call__(self, work: Path, cfg: BuildConfig, provenance: dict[str, Any], *,
                 progress: ProgressFn | None = None, **options: Any) -> dict[str, Any]:
        """Run the stage; write `provenance` (plus facts only the run knows) into its manifests; return a summary.

        Stages that take long report `progress`; quick ones accept it and say nothing.
        """
        ...


def _no_files(_cfg: BuildConfig) -> dict[str, Path | None]:
    return {}


@dataclass(frozen=True)
class Stage:
    """What a stage is, where its code lives and everything its output depends on."""

    name: str
    summary: str
    entry: str  # "module:function", a StageEntry
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
    intact: Callable[[Path, BuildConfig], bool] | None = None  # replaces the manifest check (release, verify)
    unlisted_paths: tuple[str, ...] = ()  # path columns whose files may be deleted (ingest's source videos)
    # The manifests whose checksums enter the key; the registry derives it from `reads` (`registry.keyed_inputs`).
    keyed_inputs: tuple[str, ...] | None = None

    def load(self) -> StageEntry:
        """The entry function, imported now."""
        module, _, attr = self.entry.partition(":")
        return getattr(importlib.import_module(module), attr)

    def model_roles(self, cfg: BuildConfig) -> tuple[str, ...]:
        """The model roles this run uses (a stage may use a model only when a setting asks for it)."""
        return self.models(cfg) if callable(self.models) else self.models

    def provenance(self, cfg: BuildConfig, work: Path,
                   files: Mapping[str, Path | None] | None = None) -> dict[str, Any]:
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
            "files_sha256": {label: sha256_if_exists(Path(p)) if p else None
                             for label, p in (self.files(cfg) if files is None else files).items()},
        }
        if self.seed:
            key["seed"] = cfg.seed
        return key

    def outputs_intact(self, work: Path, cfg: BuildConfig) -> bool:
        """True when what the stage produced is all there, so a cache hit may stand in for running it."""
        if self.intact is not None:
            return self.intact(work, cfg)
        return all(manifest_intact(work, table, skip=self.unlisted_paths) for table in self.writes)


def cache_key(provenance: Mapping[str, Any], work: Path, **extra: Any) -> str:
    """The cache key of a stage run: its provenance, the work directory it belongs to, and e.g. the shard."""
    return f"{provenance['stage']}-{json_sha256({**provenance, 'workdir': str(work), **extra})[:32]}"


def manifest_intact(work: Path, table: str, skip: tuple[str, ...] = ()) -> bool:
    """True when a manifest exists, validates, and every file it lists (but in `skip` columns) is present."""
    try:
        frame = read_manifest(work, table)
    except ManifestError:
        return False
    columns = [c for c in TABLES[table].path_columns if c not in skip and c in frame.columns]
    return all((work / p).is_file() for c in columns for p in frame[c].dropna())


def _model_key(ref: Any) -> dict[str, Any] | None:
    return ref.model_dump(mode="json") if ref is not None else None
