"""Training data over the manifests: which clips (`ClipIndex`), their raw media (`AVClips`), joins, per-item RNG.

- `ClipIndex.from_workdir(workdir, splits, id_list)`: the `clips` manifest's ok rows of the wanted splits, optionally
  intersected with an id list (one id per line, or the first csv column; a header line is skipped), sorted by
  clip id, paths resolved against WORK. `ClipIndex.from_export(dir)` reads the exported `frames/` + `audio/` +
  `ids.csv` layout instead. A missing file raises `TrainError` naming the manifest row when it is read.
- `load_neighbours(workdir, index)`: clip id -> {"image": [...], "audio": [...]} neighbour ids kept in the index.
- `load_phrases(workdir, index)`: clip id -> usable object phrase or None (captions manifest, source clip; null
  or flagged phrases are None).
- `AVClips(index, fields)`: a Dataset of raw items {"index", "clip_id", "label", "frame" (uint8 HxWx3),
  "wav" (float32 mono), "sample_rate", "spec", "mel"} for the requested fields; methods wrap it with their view.
- `item_rng(seed, epoch, clip_id, view)`: the generator of every random choice of one item's view.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from scipy.io import wavfile
from torch.utils.data import Dataset

from is4.manifests.ids import derive_seed
from is4.manifests.io import ManifestError, is_blank, read_manifest
from is4.trainers.method import TrainError


@dataclass(frozen=True)
class ClipRow:
    """One training clip: its id, label and absolute media paths (None where the source has none)."""

    clip_id: str
    label: str | None
    frame: Path
    audio: Path
    spec: Path | None
    mel: Path | None
    where: str  # the manifest row or file, for messages


def read_id_list(path: Path) -> list[str]:
    """Ids of an id list: one per line, or the first column of a csv (a `clip_id` header is skipped)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise TrainError(f"{path}: cannot read the id list: {exc.strerror}") from None
    ids = [row[0].strip() for row in csv.reader(text.splitlines()) if row and row[0].strip()]
    return ids[1:] if ids and ids[0] in ("clip_id", "id", "ytid") else ids


class ClipIndex:
    """The ordered training clips (sorted by clip id)."""

    def __init__(self, rows: Sequence[ClipRow], source: str):
        self.rows = list(rows)
        self.source = source
        self.position = {r.clip_id: i for i, r in enumerate(self.rows)}
        if not self.rows:
            raise TrainError(f"{source}: no training clips (status ok, wanted split, id list)")

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def ids(self) -> list[str]:
        return [r.clip_id for r in self.rows]

    @classmethod
    def from_workdir(
        cls, workdir: str | Path, splits: Sequence[str] = ("train",), id_list: Path | None = None
    ) -> ClipIndex:
        """The ok clips of `splits` in WORK's clips manifest (optionally only those of `id_list`)."""
        workdir = Path(workdir)
        try:
            clips = read_manifest(workdir, "clips")
        except ManifestError as exc:
            raise TrainError(str(exc)) from None
        where = f"{workdir / 'manifests' / 'clips.parquet'}"
        ok = clips[(clips["status"] == "ok") & clips["split"].isin(list(splits))]
        if id_list is not None:
            ok = ok[ok["clip_id"].isin(set(read_id_list(id_list)))]
        rows = []
        for row in ok.sort_values("clip_id").itertuples():
            for col in ("frame_path", "audio_path"):
                if is_blank(getattr(row, col)):
                    raise TrainError(f"{where}: row {row.row} ({row.clip_id}): ok clip without {col}")
            rows.append(
                ClipRow(
                    row.clip_id,
                    None if is_blank(row.label) else row.label,
                    workdir / row.frame_path,
                    workdir / row.audio_path,
                    None if is_blank(row.spec_path) else workdir / row.spec_path,
                    None if is_blank(row.mel_path) else workdir / row.mel_path,
                    f"{where}: row {row.row} ({row.clip_id})",
                )
            )
        return cls(rows, f"{where} (splits {', '.join(splits)})")

    @classmethod
    def from_export(cls, directory: str | Path, splits: Sequence[str] | None = ("train",)) -> ClipIndex:
        """The exported training layout: `frames/{id}.jpg`, `audio/{id}.wav`, `ids.csv` (clip_id,label,split)."""
        directory = Path(directory)
        ids_csv = directory / "ids.csv"
        try:
            table = pd.read_csv(ids_csv, dtype=str, keep_default_na=False)
        except (OSError, pd.errors.ParserError) as exc:
            raise TrainError(f"{ids_csv}: cannot read: {exc}") from None
        if "clip_id" not in table.columns:
            raise TrainError(f"{ids_csv}: no clip_id column")
        if splits is not None and "split" in table.columns:
            table = table[table["split"].isin(list(splits))]
        rows = [
            ClipRow(
                r.clip_id,
                getattr(r, "label", None) or None,
                directory / "frames" / f"{r.clip_id}.jpg",
                directory / "audio" / f"{r.clip_id}.wav",
                None,
                None,
                f"{ids_csv}: line {i + 2} ({r.clip_id})",
            )
            for i, r in zip(table.index, table.itertuples())
        ]
        return cls(sorted(rows, key=lambda r: r.clip_id), str(ids_csv))


def load_neighbours(workdir: str | Path, index: ClipIndex) -> dict[str, dict[str, list[str]]]:
    """Per clip of `index` and modality, its neighbour ids that are in `index` (order kept); every clip must have a
    row per modality."""
    try:
        table = read_manifest(workdir, "neighbours")
    except ManifestError as exc:
        raise TrainError(f"{exc} (train.neighbours is on)") from None
    out: dict[str, dict[str, list[str]]] = {cid: {} for cid in index.ids}
    for row in table.itertuples():
        if row.clip_id in out:
            out[row.clip_id][row.modality] = [n for n in row.neighbours if n in index.position]
    for cid, per in out.items():
        for modality in ("image", "audio"):
            if not per.get(modality):
                raise TrainError(
                    f"{Path(workdir) / 'manifests' / 'neighbours.parquet'}: clip {cid} has no "
                    f"{modality} neighbours among the training clips (rerun the neighbours stage)"
                )
    return out


def load_phrases(workdir: str | Path, index: ClipIndex) -> dict[str, str | None]:
    """Per clip of `index`, its usable object phrase (captions manifest, `source == clip`) or None: a null phrase
    or one flagged `object_phrase:*` is not usable."""
    try:
        table = read_manifest(workdir, "captions")
    except ManifestError as exc:
        raise TrainError(str(exc)) from None
    out: dict[str, str | None] = dict.fromkeys(index.ids)
    for row in table[table["source"] == "clip"].itertuples():
        if row.item_id in out and not is_blank(row.object_phrase):
            flags = "" if is_blank(row.flags) else str(row.flags)
            if "object_phrase:" not in flags:
                out[row.item_id] = str(row.object_phrase)
    return out


def item_rng(seed: int, epoch: int, clip_id: str, view: str) -> np.random.Generator:
    """The generator of one item's view in one epoch (independent of order, workers, ranks and resume)."""
    return np.random.default_rng(derive_seed(seed, "train", str(epoch), clip_id, view))


def read_frame(path: Path, where: str) -> np.ndarray:
    """An RGB frame as uint8 HxWx3; a missing or unreadable file is a `TrainError` naming `where`."""
    try:
        with Image.open(path) as im:
            return np.array(im.convert("RGB"))
    except (OSError, ValueError) as exc:
        raise TrainError(f"{where}: cannot read frame {path}: {exc}") from None


def read_wav(path: Path, where: str) -> tuple[np.ndarray, int]:
    """A wav as float32 mono in [-1, 1] and its sample rate; a missing or bad file is a `TrainError`."""
    try:
        rate, data = wavfile.read(path)
    except (OSError, ValueError) as exc:
        raise TrainError(f"{where}: cannot read audio {path}: {exc}") from None
    if data.ndim == 2:
        data = data[:, 0]
    if np.issubdtype(data.dtype, np.integer):
        data = data.astype(np.float32) / float(np.iinfo(data.dtype).max + 1)
    return np.clip(data.astype(np.float32), -1.0, 1.0), int(rate)


def read_npy(path: Path | None, where: str) -> np.ndarray:
    """A stored feature array (memory-mapped)."""
    if path is None:
        raise TrainError(f"{where}: no stored feature file for this clip")
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise TrainError(f"{where}: cannot read {path}: {exc}") from None


class AVClips(Dataset):
    """Raw items of a `ClipIndex`: only the requested `fields` (frame, wav, spec, mel) are read."""

    def __init__(self, index: ClipIndex, fields: Sequence[str] = ("frame", "wav")):
        unknown = set(fields) - {"frame", "wav", "spec", "mel"}
        if unknown:
            raise TrainError(f"unknown clip fields {sorted(unknown)}")
        self.index, self.fields = index, tuple(fields)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict:
        row = self.index.rows[i]
        item: dict = {"index": i, "clip_id": row.clip_id, "label": row.label}
        if "frame" in self.fields:
            item["frame"] = read_frame(row.frame, row.where)
        if "wav" in self.fields:
            item["wav"], item["sample_rate"] = read_wav(row.audio, row.where)
        if "spec" in self.fields:
            item["spec"] = read_npy(row.spec, row.where)
        if "mel" in self.fields:
            item["mel"] = read_npy(row.mel, row.where)
        return item
