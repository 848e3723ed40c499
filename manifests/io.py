"""Parquet read/write for manifest tables: atomic writes, schema version and provenance, validation on read."""

from __future__ import annotations

import json
import re
from pathlib import Path, PurePosixPath
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from is4.manifests.atomic import atomic_path
from is4.manifests.errors import FatalError
from is4.manifests.schema import SCHEMA_VERSION, TABLES, TableSpec

MANIFEST_DIR = "manifests"
_META_TABLE = b"is4.table"
_META_VERSION = b"is4.schema_version"
_META_PROVENANCE = b"is4.provenance"
_NULLABLE_DTYPES = {pa.int64(): pd.Int64Dtype(), pa.bool_(): pd.BooleanDtype()}


_DRIVE_RE = re.compile(r"^[A-Za-z]:")


class ManifestError(FatalError, ValueError):
    """A manifest is missing, of another schema version, or breaks its table's contract."""


def is_blank(value: Any) -> bool:
    """True for an empty manifest cell: None, or a scalar pandas reads as missing (NaN, NA, NaT); lists are values."""
    return value is None or (pd.api.types.is_scalar(value) and bool(pd.isna(value)))


def manifest_path(workdir: str | Path, table: str) -> Path:
    """`WORK/manifests/<table>.parquet`."""
    return Path(workdir) / MANIFEST_DIR / f"{table}.parquet"


def _spec(table: str | TableSpec) -> TableSpec:
    if isinstance(table, TableSpec):
        return table
    try:
        return TABLES[table]
    except KeyError:
        raise ManifestError(f"unknown manifest table {table!r}; known: {', '.join(sorted(TABLES))}") from None


def _to_arrow(spec: TableSpec, frame: pd.DataFrame, where: str) -> pa.Table:
    missing = [c for c in spec.column_names if c not in frame.columns]
    if missing:
        raise ManifestError(f"{where}: missing required column(s) {', '.join(missing)}")
    declared = {f.name: f for f in spec.optional}
    typed = list(spec.columns) + [declared[c] for c in frame.columns if c in declared]
    extra = [c for c in frame.columns if c not in spec.column_names and c not in declared]
    arrays, fields = [], []
    for f in typed:
        try:
            arrays.append(pa.array(frame[f.name].tolist(), type=f.type, from_pandas=True))
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as exc:
            raise ManifestError(f"{where}: column {f.name!r} does not fit type {f.type}: {exc}") from exc
        fields.append(f)
    for name in extra:
        arr = pa.array(frame[name].tolist(), from_pandas=True)
        arrays.append(arr)
        fields.append(pa.field(name, arr.type))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


def validate_table(spec: TableSpec, table: pa.Table, where: str) -> None:
    """Check columns, types, nullability, enum values, key uniqueness and relative paths; raise ManifestError."""
    for f in spec.columns:
        if f.name not in table.column_names:
            raise ManifestError(f"{where}: missing required column {f.name!r}")
        col = table.column(f.name)
        if not col.type.equals(f.type):
            raise ManifestError(f"{where}: column {f.name!r} has type {col.type}, expected {f.type}")
        if not f.nullable and col.null_count:
            row = pc.index(pc.is_null(col), True).as_py()
            raise ManifestError(f"{where}: row {row}: column {f.name!r} must not be empty")
    for f in spec.optional:
        if f.name in table.column_names and not table.column(f.name).type.equals(f.type):
            raise ManifestError(f"{where}: column {f.name!r} has type {table.column(f.name).type}, expected {f.type}")
    for name, allowed in spec.enums.items():
        if name not in table.column_names:
            continue  # an optional column the stage did not add
        values = table.column(name).to_pylist()
        for i, value in enumerate(values):
            if value is not None and value not in allowed:
                raise ManifestError(
                    f"{where}: row {i}: column {name!r} has {value!r}, allowed: {', '.join(sorted(allowed))}"
                )
    _check_key(spec, table, where)
    for name in spec.path_columns:
        if name not in table.column_names:
            continue  # an optional path column the stage did not add
        for i, value in enumerate(table.column(name).to_pylist()):
            if value is None:
                continue
            p = PurePosixPath(value)
            if not value or p.is_absolute() or ".." in p.parts or "\\" in value or _DRIVE_RE.match(value):
                raise ManifestError(
                    f"{where}: row {i}: column {name!r} path {value!r} must be relative to the work directory"
                )


def _check_key(spec: TableSpec, table: pa.Table, where: str) -> None:
    keys = list(zip(*(table.column(k).to_pylist() for k in spec.key)))
    exempt = None
    if spec.nullable_key_when:
        col, value = spec.nullable_key_when
        exempt = table.column(col).to_pylist()
    seen: dict[tuple, int] = {}
    for i, key in enumerate(keys):
        if any(part is None for part in key):
            if exempt is not None and exempt[i] == spec.nullable_key_when[1]:
                continue
            raise ManifestError(f"{where}: row {i}: key {spec.key} is empty")
        if key in seen:
            raise ManifestError(f"{where}: rows {seen[key]} and {i} share the key {dict(zip(spec.key, key))}")
        seen[key] = i


def write_manifest(
    workdir: str | Path, table: str | TableSpec, frame: pd.DataFrame, provenance: dict[str, Any] | None = None
) -> Path:
    """Validate `frame` against its table's contract and write it atomically, sorted, with provenance metadata.

    The bytes depend only on the rows and the provenance (no timestamps), so the same inputs give the same file.
    """
    spec = _spec(table)
    path = manifest_path(workdir, spec.name)
    where = f"{path} (being written)"
    arrow = _to_arrow(spec, frame, where)
    validate_table(spec, arrow, where)
    if len(arrow):
        arrow = arrow.sort_by([(c, "ascending") for c in spec.sort_by])
    arrow = arrow.replace_schema_metadata(
        {
            _META_TABLE: spec.name.encode(),
            _META_VERSION: str(SCHEMA_VERSION).encode(),
            _META_PROVENANCE: json.dumps(provenance or {}, sort_keys=True, default=str).encode(),
        }
    )
    with atomic_path(path) as tmp:
        pq.write_table(arrow, tmp)
    return path


def read_manifest(workdir: str | Path, table: str | TableSpec) -> pd.DataFrame:
    """Read and validate one manifest table; raises ManifestError naming the file and what is wrong."""
    spec = _spec(table)
    path = manifest_path(workdir, spec.name)
    if not path.is_file():
        raise ManifestError(f"{path}: no {spec.name} manifest (run the stage that writes it first)")
    try:
        arrow = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise ManifestError(f"{path}: not a readable Parquet file: {exc}") from exc
    meta = arrow.schema.metadata or {}
    if meta.get(_META_TABLE) != spec.name.encode():
        raise ManifestError(f"{path}: not an IS4 {spec.name!r} manifest (table tag {meta.get(_META_TABLE)!r})")
    version = meta.get(_META_VERSION, b"?").decode()
    if version != str(SCHEMA_VERSION):
        raise ManifestError(
            f"{path}: schema version {version}, this is4 reads version {SCHEMA_VERSION}; rebuild the stage"
        )
    validate_table(spec, arrow, str(path))
    # Nullable integer/boolean dtypes keep an int column with gaps an int column (not float64).
    return arrow.to_pandas(types_mapper=_NULLABLE_DTYPES.get)


def read_provenance(workdir: str | Path, table: str) -> dict[str, Any]:
    """The provenance dictionary stored with a manifest."""
    meta = pq.read_schema(manifest_path(workdir, table)).metadata or {}
    return json.loads(meta.get(_META_PROVENANCE, b"{}"))
