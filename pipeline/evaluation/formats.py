"""Ground truth of the localisation benchmarks, read from their public formats into one `GroundTruth`.

`load_ground_truth(path, gt, benchmark=…, protocol=…)` takes a directory (a release, the authors' IS4 folder, a
benchmark's annotation folder) or the ground-truth file itself. The benchmark is the one named, else the one the
file names say (`vggss`, `synthetic3240` / `is4`, `s4`, `ms3`, `vpo_ss`, `vpo_ms`, an `Annotations/` folder of
XML files), else the one the entries' shape says (VGG-SS, Flickr XML); `gt` (box or mask) likewise.

- **is4** (`is4_bbox.json` / `is4_seg.json`, or the authors' `synthetic3240_bbox.json` / `_seg.json`): a JSON list,
  one entry per instance, `{"image": ".../visual_frames/<id>.jpg", "audio": ".../audio_wav/<id>.wav", "gt_box":
  [x1, y1, x2, y2]}` in pixels of the 224×224 frame, or `"gt_box": ".../gt_masks/<id>.jpg"` (a 224×224 mask, object
  where grey > 127). Paths may be relative to the folder (this project's releases) or absolute paths from another
  machine (the authors' files): every file is looked up by its name inside the folder (`<folder>/<parent>/<name>`,
  `<folder>/<name>`, then in a folder of that parent name anywhere below). The instance id is the file stem of `image`;
  the image of an instance is its id less the last `_<category>` part (IIoU / IAUC group by it).
- **avsbench-s4, avsbench-ms3, vpo-ss, vpo-ms**: the same entry shape (box or mask JSONs); one instance per image
  (no IIoU / IAUC).
- **vggss** (`vggss.json`): `[{"file": "<clip id>", "class": …, "bbox": [[x1, y1, x2, y2], …]}, …]` with
  coordinates normalised to [0, 1]; each box becomes `(np.clip(box, 0, 1) * 224).astype(int)` and the region is
  the union of the clip's boxes (the VGG-SS convention of the public LVS / EZ-VSL evaluation code).
- **flickr** (Flickr-SoundNet test set: `Annotations/<image id>.xml`, several annotators' `<bbox>` elements with
  `xmin ymin xmax ymax` in the 256×256 annotation frame): each coordinate becomes `int(224 * v / 256)` and the
  region is the annotation consensus of the public LVS / EZ-VSL code: the boxes' count map halved and capped at 1
  (1 where two or more annotators agree, 0.5 where one does). The instance id is the file stem.

Every malformed entry, duplicate instance, missing mask file and empty region is named in an EvaluationError.
"""

from __future__ import annotations

import json
import math
import os
import re
import warnings
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np

from is4.pipeline.evaluation import metrics
from is4.pipeline.evaluation.errors import EvaluationError, EvaluationWarning, few

BENCHMARKS = ("is4", "vggss", "flickr", "avsbench-s4", "avsbench-ms3", "vpo-ss", "vpo-ms")
GT_KINDS = ("box", "mask")
IS4_FILES = {"box": ("is4_bbox.json", "synthetic3240_bbox.json"), "mask": ("is4_seg.json", "synthetic3240_seg.json")}
GROUPED = ("is4",)  # benchmarks whose instances group into images (IIoU / IAUC)
BOX_ONLY = ("vggss", "flickr")
FLICKR_FRAME = 256
S = metrics.FRAME


@dataclass
class GroundTruth:
    """The instances of one benchmark file and their regions in the 224×224 frame.

    Regions are boxes (`boxes`: per instance a (k, 4) array, combined as `combine`: "union" or "consensus") or
    masks (`packed`: (N, 224·224 / 8) bit-packed bool rows). `box_rule` is the protocol's box rasterisation.
    """

    benchmark: str
    gt: str
    source: Path
    instance_ids: list[str]
    image_ids: list[str] | None
    box_rule: str
    boxes: list[np.ndarray] | None = None
    combine: str = "union"
    packed: np.ndarray | None = None
    _single: np.ndarray | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.boxes is not None and all(len(b) == 1 for b in self.boxes):
            self._single = np.concatenate(self.boxes).reshape(-1, 4)

    def __len__(self) -> int:
        return len(self.instance_ids)

    def regions(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray | None]:
        """(full, half): (n, 224·224) bool rows where instances start…stop-1 have ground truth 1, and 0.5 (or None)."""
        n_px = S * S
        if self.packed is not None:
            return np.unpackbits(self.packed[start:stop], axis=1, count=n_px).view(bool), None
        if self._single is not None:
            return metrics.box_mask(self._single[start:stop], S, self.box_rule).reshape(-1, n_px), None
        counts = np.zeros((stop - start, n_px), dtype=np.uint8)
        for row, boxes in enumerate(self.boxes[start:stop]):
            counts[row] = metrics.box_mask(boxes, S, self.box_rule).sum(axis=0, dtype=np.uint8).reshape(n_px)
        if self.combine == "consensus":
            half = counts == 1
            return counts >= 2, (half if half.any() else None)
        return counts > 0, None

    def areas(self) -> np.ndarray:
        """(N,) non-zero ground-truth pixels per instance."""
        if self._single is not None:
            in_y, in_x = metrics.box_extent(self._single, S, self.box_rule)
            return in_y.sum(axis=1) * in_x.sum(axis=1)
        out = np.zeros(len(self), dtype=np.int64)
        for start in range(0, len(self), 256):
            full, half = self.regions(start, min(start + 256, len(self)))
            out[start : start + len(full)] = (full if half is None else full | half).sum(axis=1)
        return out


# --- finding the file ---------------------------------------------------------------------------------------


def benchmark_of_name(name: str) -> str | None:
    """The benchmark a file or folder name says, or None."""
    n = name.lower()
    if "vggss" in n:
        return "vggss"
    if "synthetic3240" in n or re.search(r"(^|[^a-z0-9])is4", n):
        return "is4"
    if "flickr" in n or n == "annotations":
        return "flickr"
    if match := re.search(r"vpo[-_ ]?(ss|ms)", n):
        return f"vpo-{match.group(1)}"
    if "ms3" in n:
        return "avsbench-ms3"
    if re.search(r"(^|[^a-z0-9])s4", n):
        return "avsbench-s4"
    return None


def _gt_of_name(name: str) -> str | None:
    n = name.lower()
    if "seg" in n or "mask" in n:
        return "mask"
    if "bbox" in n or "box" in n:
        return "box"
    return None


def _xml_folder(path: Path) -> Path | None:
    for folder in (path / "Annotations", path):
        if folder.is_dir() and any(p.suffix.lower() == ".xml" for p in folder.iterdir()):
            return folder
    return None


def _candidates(root: Path) -> list[tuple[Path, str, str | None]]:
    """(path, benchmark, gt) for each ground-truth file the names in `root` point to (top level, else below)."""
    found = []
    if folder := _xml_folder(root):
        found.append((folder, "flickr", "box"))
    for depth in (root.glob("*.json"), root.rglob("*.json")):
        for path in sorted(depth):
            bench = benchmark_of_name(path.name)
            if bench:
                found.append((path, bench, "box" if bench in BOX_ONLY else _gt_of_name(path.name)))
        if found:
            break
    return found


def find_ground_truth(
    path: str | Path, gt: str | None = None, benchmark: str | None = None
) -> tuple[Path, str, str | None]:
    """(file or XML folder, benchmark, gt or None when only the entries can tell) for a path and the choices made.

    A directory is searched for the files its benchmark names (`IS4_FILES`, `vggss.json`, `Annotations/*.xml`,
    JSONs named after s4 / ms3 / vpo_ss / vpo_ms); exactly one must match.
    """
    path = Path(path)
    if benchmark is not None and benchmark not in BENCHMARKS:
        raise EvaluationError(f"benchmark must be one of {', '.join(BENCHMARKS)}, not {benchmark!r}")
    if gt is not None and gt not in GT_KINDS:
        raise EvaluationError(f"gt must be one of {', '.join(GT_KINDS)}, not {gt!r}")
    if not path.exists():
        raise EvaluationError(f"{path}: no such file or directory")
    if path.is_file() or (path.is_dir() and benchmark in (None, "flickr") and _xml_folder(path) == path):
        bench = benchmark or benchmark_of_name(path.name) or benchmark_of_name(path.parent.name)
        kind = gt or ("box" if bench in BOX_ONLY else _gt_of_name(path.name))
        return path, bench or _benchmark_of_entries(path), kind
    found = _candidates(path)
    if benchmark:
        found = [c for c in found if c[1] == benchmark]
    if gt:
        found = [c for c in found if c[2] in (gt, None)]
    elif len({c[2] for c in found}) > 1:
        found = [c for c in found if c[2] in ("box", None)]  # box ground truth unless asked for masks
    if benchmark == "is4" or (found and {c[1] for c in found} == {"is4"}):
        found = [c for c in found if c[0].name in IS4_FILES["box"] + IS4_FILES["mask"]] or found
    if len(found) == 1:
        return found[0]
    wanted = f"{benchmark or 'any benchmark'}{f' ({gt})' if gt else ''}"
    if not found:
        names = (
            ", ".join(IS4_FILES["box"] + IS4_FILES["mask"]) + ", vggss.json, Annotations/*.xml, *s4*/*ms3*/*vpo_*.json"
        )
        raise EvaluationError(f"{path}: no ground truth of {wanted} found (looked for {names})")
    listed = few([f"{c[0].relative_to(path)} ({c[1]}{', ' + c[2] if c[2] else ''})" for c in found])
    raise EvaluationError(
        f"{path}: several ground-truth files of {wanted}: {listed}; "
        "name one with --benchmark / --gt, or pass the file itself"
    )


def _benchmark_of_entries(path: Path) -> str:
    if path.is_dir() or path.suffix.lower() == ".xml":
        return "flickr"
    entries = _read_json_list(path)
    first = entries[0]
    if isinstance(first, dict) and "file" in first and "bbox" in first:
        return "vggss"
    raise EvaluationError(
        f"{path}: the file name does not say which benchmark it is; name it with --benchmark ({', '.join(BENCHMARKS)})"
    )


# --- readers ------------------------------------------------------------------------------------------------


def _read_json_list(path: Path) -> list:
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise EvaluationError(f"{path}: cannot read ground truth: {exc.strerror or exc}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EvaluationError(f"{path}: not valid JSON: {exc}") from None
    if not isinstance(entries, list) or not entries:
        raise EvaluationError(f"{path}: expected a non-empty JSON list of instances")
    return entries


def _stem(ref: str) -> str:
    return PurePosixPath(ref.replace("\\", "/")).stem


def _is_box(box) -> bool:
    return (
        isinstance(box, list | tuple)
        and len(box) == 4
        and all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in box)
    )


def _no_duplicates(path: Path, ids: list[str]) -> None:
    seen: set[str] = set()
    dupes = [i for i in ids if i in seen or seen.add(i)]
    if dupes:
        raise EvaluationError(f"{path}: {len(dupes)} instances are listed twice: {few(dupes)}", dupes)


class FileFinder:
    """Finds a file named by a path (relative, or absolute from another machine) inside `root`: at the relative
    path, at `root/<parent folder>/<name>`, at `root/<name>`, else in the one folder below `root` with that parent
    folder name holding that name (never by the name alone: frames and masks share their names)."""

    def __init__(self, root: Path):
        self.root = root
        self._by_parent: dict[tuple[str, str], list[Path]] | None = None

    def find(self, ref: str) -> Path | None:
        """The file, or None when it is not inside `root`; EvaluationError when several folders hold it."""
        p = PurePosixPath(ref.replace("\\", "/"))
        tries = [] if p.is_absolute() else [self.root / p]
        tries += [self.root / p.parent.name / p.name, self.root / p.name]
        for candidate in tries:
            if candidate.is_file():
                return candidate
        if self._by_parent is None:
            self._by_parent = {}
            for folder, _, files in os.walk(self.root):
                for name in files:
                    self._by_parent.setdefault((Path(folder).name, name), []).append(Path(folder) / name)
        hits = self._by_parent.get((p.parent.name, p.name), [])
        if len(hits) > 1:
            raise EvaluationError(f"{self.root}: {ref} matches several files: {few(sorted(map(str, hits)))}")
        return hits[0] if hits else None


def _check_frame(finder: FileFinder, image_ref: str) -> None:
    """Refuse a release whose frames are not 224×224 (its boxes would be in another frame); checks one frame."""
    from PIL import Image

    frame = finder.find(image_ref)
    if frame is None:
        return  # annotations without frames: nothing to check
    try:
        with Image.open(frame) as img:
            width, height = img.size
    except OSError:
        return
    if (width, height) != (S, S):
        raise EvaluationError(
            f"{frame}: the frames are {width}×{height}; boxes and masks are scored in the {S}×{S} frame"
        )


def _off_frame_warning(path: Path, ids: list[str], boxes: list[np.ndarray]) -> None:
    off = [iid for iid, b in zip(ids, boxes) if (b < 0).any() or (b > S).any()]
    if off:
        warnings.warn(
            f"{path}: {len(off)} boxes reach outside the {S}×{S} frame (scored as the protocol's box "
            f"rule says): {few(off)}",
            EvaluationWarning,
            stacklevel=4,
        )


def _read_masks(path: Path, finder: FileFinder, ids: list[str], refs: list) -> np.ndarray:
    from PIL import Image

    packed = np.zeros((len(ids), S * S // 8), dtype=np.uint8)
    bad, missing = [], []
    for i, (iid, ref) in enumerate(zip(ids, refs)):
        if not isinstance(ref, str):
            bad.append((iid, f"gt_box is {ref!r}, not a mask path"))
            continue
        file = finder.find(ref)
        if file is None:
            missing.append((iid, ref))
            continue
        try:
            with Image.open(file) as img:
                grey = np.asarray(img.convert("L"))
        except (OSError, ValueError) as exc:
            bad.append((iid, f"cannot read {ref}: {exc}"))
            continue
        if grey.shape != (S, S):
            bad.append((iid, f"{ref} is {grey.shape[1]}×{grey.shape[0]}, not {S}×{S}"))
            continue
        packed[i] = np.packbits(grey.reshape(-1) > 127)
    if missing:
        raise EvaluationError(
            f"{path}: {len(missing)} of {len(ids)} mask files are not inside {finder.root} "
            f"(looked up by name): {few([ref for _, ref in missing])}",
            [i for i, _ in missing],
        )
    if bad:
        raise EvaluationError(
            f"{path}: {len(bad)} masks cannot be used: {few(bad, lambda b: f'{b[0]} ({b[1]})')}", [b[0] for b in bad]
        )
    return packed


def _read_entry_list(path: Path, root: Path, benchmark: str, gt: str | None, box_rule: str) -> GroundTruth:
    """The IS4 entry shape (is4, avsbench-s4/ms3, vpo-ss/ms): `image`, `audio`, `gt_box` (a box or a mask path)."""
    entries = _read_json_list(path)
    for pos, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("image"), str) or "gt_box" not in entry:
            raise EvaluationError(f"{path}: entry {pos} lacks an 'image' path or a 'gt_box'")
    ids = [_stem(entry["image"]) for entry in entries]
    _no_duplicates(path, ids)
    kinds = {"mask" if isinstance(e["gt_box"], str) else "box" for e in entries}
    if gt is None:
        gt = "mask" if kinds == {"mask"} else "box"
    if kinds != {gt}:
        other = sorted(kinds - {gt})[0]
        first = next(iid for iid, e in zip(ids, entries) if isinstance(e["gt_box"], str) == (other == "mask"))
        raise EvaluationError(
            f"{path}: expected {gt} ground truth, but entries hold {other} ground truth (first: {first})"
        )
    finder = FileFinder(root)
    _check_frame(finder, entries[0]["image"])
    image_ids = [iid.rsplit("_", 1)[0] for iid in ids] if benchmark in GROUPED else None
    common = dict(benchmark=benchmark, gt=gt, source=path, instance_ids=ids, image_ids=image_ids, box_rule=box_rule)
    if gt == "mask":
        return GroundTruth(**common, packed=_read_masks(path, finder, ids, [e["gt_box"] for e in entries]))
    bad = [
        (iid, e["gt_box"])
        for iid, e in zip(ids, entries)
        if not (_is_box(e["gt_box"]) and e["gt_box"][0] < e["gt_box"][2] and e["gt_box"][1] < e["gt_box"][3])
    ]
    if bad:
        raise EvaluationError(
            f"{path}: {len(bad)} boxes are not [x1, y1, x2, y2] with x1 < x2, y1 < y2: "
            f"{few(bad, lambda b: f'{b[0]} {b[1]!r}')}",
            [b[0] for b in bad],
        )
    boxes = [np.asarray([e["gt_box"]], dtype=np.float64) for e in entries]
    _off_frame_warning(path, ids, boxes)
    return GroundTruth(**common, boxes=boxes)


def _read_vggss(path: Path, box_rule: str) -> GroundTruth:
    entries = _read_json_list(path)
    ids, boxes, bad = [], [], []
    for pos, entry in enumerate(entries):
        name = entry.get("file") if isinstance(entry, dict) else None
        raw = entry.get("bbox") if isinstance(entry, dict) else None
        if not isinstance(name, str) or not isinstance(raw, list) or not raw or not all(map(_is_box, raw)):
            bad.append(f"entry {pos}" + (f" ({name})" if isinstance(name, str) else ""))
            continue
        ids.append(name)
        boxes.append((np.clip(np.array(raw, dtype=np.float64), 0, 1) * S).astype(int).astype(np.float64))
    if bad:
        raise EvaluationError(
            f"{path}: {len(bad)} entries lack a 'file' and a non-empty 'bbox' list of "
            f"[x1, y1, x2, y2] in [0, 1]: {few(bad)}"
        )
    _no_duplicates(path, ids)
    return GroundTruth("vggss", "box", path, ids, None, box_rule, boxes=boxes, combine="union")


def _flickr_boxes(file: Path) -> list[list[int]]:
    root = ET.parse(file).getroot()
    boxes = []
    for bbox in root.iter("bbox"):
        children = list(bbox)
        named = {child.tag: child.text for child in children}
        texts = (
            [named[k] for k in ("xmin", "ymin", "xmax", "ymax")]
            if {"xmin", "ymin", "xmax", "ymax"} <= set(named)
            else [child.text for child in children[1:5]]
        )  # the public code's order: skip the first child
        if len(texts) != 4:
            raise ValueError(f"a <bbox> with {len(children)} children")
        boxes.append([int(S * int((t or "").strip()) / FLICKR_FRAME) for t in texts])
    if not boxes:
        raise ValueError("no <bbox>")
    return boxes


def _read_flickr(path: Path, box_rule: str) -> GroundTruth:
    files = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.suffix.lower() == ".xml")
    ids, boxes, bad = [], [], []
    for file in files:
        try:
            boxes.append(np.asarray(_flickr_boxes(file), dtype=np.float64))
            ids.append(file.stem)
        except (ET.ParseError, ValueError, OSError) as exc:
            bad.append(f"{file.name} ({exc})")
    if bad:
        raise EvaluationError(f"{path}: {len(bad)} annotation files cannot be read: {few(bad)}")
    if not ids:
        raise EvaluationError(f"{path}: no .xml annotation files")
    return GroundTruth("flickr", "box", path, ids, None, box_rule, boxes=boxes, combine="consensus")


def load_ground_truth(
    path: str | Path,
    gt: str | None = None,
    *,
    benchmark: str | None = None,
    protocol: str | metrics.Protocol = metrics.DEFAULT_PROTOCOL,
) -> GroundTruth:
    """Read a benchmark's ground truth (see the module docstring); boxes are rasterised by `protocol`'s rule.

    Raises EvaluationError naming unreadable files, malformed entries, duplicates, missing mask files and empty
    regions, and for frames (where present; the first is checked) that are not 224×224.
    """
    box_rule = metrics.get_protocol(protocol).box_rule
    path = Path(path)
    file, bench, kind = find_ground_truth(path, gt, benchmark)
    if bench in BOX_ONLY and kind == "mask":
        raise EvaluationError(f"{file}: {bench} has box ground truth only")
    if bench == "vggss":
        truth = _read_vggss(file, box_rule)
    elif bench == "flickr":
        truth = _read_flickr(file, box_rule)
    else:
        truth = _read_entry_list(file, path if path.is_dir() else file.parent, bench, kind, box_rule)
    empty = [iid for iid, area in zip(truth.instance_ids, truth.areas()) if area == 0]
    if empty:
        raise EvaluationError(
            f"{file}: {len(empty)} instances have an empty ground-truth region in the {S}×{S} frame: {few(empty)}",
            empty,
        )
    return truth
