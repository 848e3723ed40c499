"""Ground truth of the localisation benchmarks, read from their public formats into one `GroundTruth`.

Every benchmark is one declared `Format` (the `FORMATS` table at the end: how its files are named and read, the
instance id rule, the IIoU grouping, the id lists it accepts, the authors' default id list, the tasks it
supports); `formats_table()` renders them for the README and the CLI help lists `BENCHMARKS`. Adding a benchmark
is one reader and one `Format(...)` here (docs/architecture.md, "Adding a benchmark or a task").

`load_ground_truth(path, gt, benchmark=…, protocol=…, ids=…, empty=…)` takes a directory (a release, the
authors' `metadata/` folder, a benchmark's annotation folder) or the ground-truth file itself. The benchmark is
the one named, else the first format whose name pattern matches the file names, else the one the entries' shape
says (VGG-SS, Flickr XML); `gt` (box or mask) likewise. Everything is read as the authors' evaluation code reads it
(kaistmm/SSLalignment `datasets_lvs.load_all_bboxes` / `bbox2gtmap`, the test loader's mask reading):

- **is4, avsbench-s4, avsbench-ms3, vpo-ss, vpo-ms** (`is4_bbox.json`, the authors' `synthetic3240_bbox.json`,
  `s4_box.json`, `ms3_seg.json`, `vpo_ms_bbox.json`, …): a JSON list, one entry per instance, `{"image":
  ".../<id>.jpg", "audio": …, "gt_box": [x1, y1, x2, y2]}` in pixels of the 224×224 frame (drawn as
  `gt[int(y1):int(y2), int(x1):int(x2)] = 1`), or `"gt_box": ".../<id>.png"` a mask of any size, read as
  `np.array(Image.open(f).resize((224, 224))) >= 128` (`read_mask`). Paths may be relative to the folder or
  absolute paths from another machine: every file is looked up by its name inside the folder. The instance id is
  the file stem of `image`; IIoU / IAUC group instances by the authors' short name, the id less its last `_part`,
  and are reported wherever an image holds more than one instance.
- **vggss** (`vggss.json`): `[{"file": "<ytid>_<start s>", "class": …, "bbox": [[x1, y1, x2, y2], …]}, …]`
  normalised to [0, 1]; each box becomes `(np.clip(box, 0, 1) * 224).astype(int)`, the region is their union.
  Id lists may name a clip in the authors' `<ytid>_<start ms>_<end ms>` form (`ours_vggss.txt`).
- **flickr** (`Annotations/<id>.xml`): every `<bbox>` grandchild of the root, its first child skipped and the next
  four read in order as x1, y1, x2, y2 in the 256×256 annotation frame, each `int(224 * v / 256)`; the region is
  the annotators' consensus: the boxes' count map halved and capped at 1.

An instance whose region is empty in the 224×224 frame (a VGG-SS box clipped away, a `[0, 0, 0, 0]` box, a black
mask) is kept and scored as the authors score it, a failure (`GroundTruth.empty` counts them; `empty="exclude"`
leaves them out). `ids` (an id list, `read_id_list`) keeps the instances it names. Malformed entries, duplicate
instances, missing or unreadable mask files are named in an EvaluationError.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath

import numpy as np

from is4.pipeline.evaluation import metrics
from is4.pipeline.evaluation.errors import EvaluationError, EvaluationWarning, few

GT_KINDS = ("box", "mask")
IS4_FILES = {"box": ("is4_bbox.json", "synthetic3240_bbox.json"), "mask": ("is4_seg.json", "synthetic3240_seg.json")}
FLICKR_FRAME = 256
EMPTY_RULES = ("score", "exclude")  # an instance whose region is empty: scored as a failure (the authors), or left out
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
    empty: list[str] = field(default_factory=list)  # instances whose region is empty in the 224×224 frame
    excluded: list[str] = field(default_factory=list)  # instances left out (`empty="exclude"`, an id list)
    classes: list[str] | None = None  # each instance's class where the file names one (VGG-SS `class`)
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

    def subset(self, keep: np.ndarray, excluded: list[str]) -> GroundTruth:
        """The instances at the indices `keep` (in this order), with `excluded` added to those left out."""
        keep = np.asarray(keep, dtype=np.int64)
        ids = [self.instance_ids[i] for i in keep]
        kept = set(ids)
        return replace(
            self,
            instance_ids=ids,
            image_ids=None if self.image_ids is None else [self.image_ids[i] for i in keep],
            boxes=None if self.boxes is None else [self.boxes[i] for i in keep],
            packed=None if self.packed is None else self.packed[keep],
            classes=None if self.classes is None else [self.classes[i] for i in keep],
            empty=[i for i in self.empty if i in kept],
            excluded=self.excluded + excluded,
        )

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
    """The benchmark a file or folder name says (the first declared format whose `pattern` matches), or None."""
    n = name.lower()
    return next((f.name for f in FORMATS if re.search(f.pattern, n)), None)


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
                found.append((path, bench, "box" if FORMAT[bench].gt == ("box",) else _gt_of_name(path.name)))
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
        kind = gt or ("box" if bench and FORMAT[bench].gt == ("box",) else _gt_of_name(path.name))
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


def read_mask(file: Path) -> np.ndarray:
    """A mask file as the authors read it: `np.array(Image.open(f).resize((224, 224))) >= 128` (Pillow's default
    filter: nearest for palette and 1-bit images, bicubic otherwise; a palette image compares its indices). A
    colour image, which their loader cannot use, is read as its grey level."""
    from PIL import Image

    with Image.open(file) as img:
        grey = np.asarray(img.resize((S, S)))
        if grey.ndim != 2:
            grey = np.asarray(img.convert("L").resize((S, S)))
    return grey >= 128


def _read_masks(path: Path, finder: FileFinder, ids: list[str], refs: list) -> np.ndarray:
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
            packed[i] = np.packbits(read_mask(file).reshape(-1))
        except (OSError, ValueError) as exc:
            bad.append((iid, f"cannot read {ref}: {exc}"))
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
    common = dict(benchmark=benchmark, gt=gt, source=path, instance_ids=ids, image_ids=None, box_rule=box_rule)
    if gt == "mask":
        return GroundTruth(**common, packed=_read_masks(path, finder, ids, [e["gt_box"] for e in entries]))
    bad = [(iid, e["gt_box"]) for iid, e in zip(ids, entries) if not _is_box(e["gt_box"])]
    if bad:  # a box with x1 >= x2 or y1 >= y2 is read: its region is empty, as in the authors' code
        raise EvaluationError(
            f"{path}: {len(bad)} boxes are not [x1, y1, x2, y2] (four finite numbers): "
            f"{few(bad, lambda b: f'{b[0]} {b[1]!r}')}",
            [b[0] for b in bad],
        )
    boxes = [np.asarray([e["gt_box"]], dtype=np.float64) for e in entries]
    _off_frame_warning(path, ids, boxes)
    return GroundTruth(**common, boxes=boxes)


def _read_vggss(path: Path, root: Path, benchmark: str, gt: str | None, box_rule: str) -> GroundTruth:
    entries = _read_json_list(path)
    ids, boxes, bad, classes = [], [], [], []
    for pos, entry in enumerate(entries):
        name = entry.get("file") if isinstance(entry, dict) else None
        raw = entry.get("bbox") if isinstance(entry, dict) else None
        if not isinstance(name, str) or not isinstance(raw, list) or not all(map(_is_box, raw)):
            bad.append(f"entry {pos}" + (f" ({name})" if isinstance(name, str) else ""))
            continue
        ids.append(name)
        classes.append(str(entry.get("class", "")))
        clipped = (np.clip(np.array(raw, dtype=np.float64).reshape(-1, 4), 0, 1) * S).astype(int)
        boxes.append(clipped.astype(np.float64))
    if bad:
        raise EvaluationError(
            f"{path}: {len(bad)} entries lack a 'file' and a 'bbox' list of [x1, y1, x2, y2] in [0, 1]: {few(bad)}"
        )
    _no_duplicates(path, ids)
    return GroundTruth("vggss", "box", path, ids, None, box_rule, boxes=boxes, combine="union", classes=classes)


def _flickr_boxes(file: Path) -> list[list[int]]:
    """The boxes of one Flickr-SoundNet annotation as the authors read it: every `<bbox>` grandchild of the root
    (`<annotation><object><bbox>…`), its first child skipped and the next four read in order as x1, y1, x2, y2,
    each `int(224 * int(text) / 256)`; other grandchildren are ignored."""
    root = ET.parse(file).getroot()
    boxes = []
    for child in root:
        for bbox in child:
            if bbox.tag != "bbox":
                continue
            values = list(bbox)[1:]
            if len(values) != 4:
                raise ValueError(f"a <bbox> with {len(values)} values after its first child, not 4")
            boxes.append([int(S * int((v.text or "").strip()) / FLICKR_FRAME) for v in values])
    if not boxes:
        raise ValueError("no <bbox> under the root's children")
    return boxes


def _read_flickr(path: Path, root: Path, benchmark: str, gt: str | None, box_rule: str) -> GroundTruth:
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


def read_id_list(path: str | Path) -> list[str]:
    """The ids of an id list: one per line, or the first field of each CSV row (`flickr_test.csv` holds
    `<id>,<count>`); blank lines are skipped. Reads the authors' `ours_vggss.txt`, `flickr_test.csv`,
    `vggss_heard_test.csv` / `vggss_unheard_test.csv` as shipped."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise EvaluationError(f"{path}: cannot read the id list: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise EvaluationError(f"{path}: the id list is not UTF-8 text: {exc}") from None
    ids = [row[0].strip() for row in csv.reader(text.splitlines()) if row and row[0].strip()]
    if not ids:
        raise EvaluationError(f"{path}: the id list holds no ids")
    return ids


def _select(truth: GroundTruth, fmt: Format, wanted: list[str], source: Path) -> GroundTruth:
    """The instances an id list names (matched by id or by one of the format's `aliases`), in ground-truth order;
    ids that name no instance are reported in a warning, as the authors' loader drops them."""
    index: dict[str, int] = {}
    for i, iid in enumerate(truth.instance_ids):
        for name in (iid, *(fmt.aliases(iid) if fmt.aliases else ())):
            index.setdefault(name, i)
    picked = {index[w] for w in wanted if w in index}
    unknown = [w for w in wanted if w not in index]
    if not picked:
        raise EvaluationError(f"{source}: none of its {len(wanted)} ids is an instance of {truth.source}")
    if unknown:
        warnings.warn(
            f"{source}: {len(unknown)} of {len(wanted)} ids are not in {truth.source.name} (left out): {few(unknown)}",
            EvaluationWarning,
            stacklevel=3,
        )
    keep = sorted(picked)
    left = [iid for i, iid in enumerate(truth.instance_ids) if i not in picked]
    return truth.subset(np.array(keep, dtype=np.int64), left)


def _group(ids: list[str], rule: str) -> list[str] | None:
    """Image ids for IIoU / IAUC: the authors' short name (`'_'.join(id.split('_')[:-1])`) when the format groups
    and some image holds more than one instance, else None."""
    if rule != "last-part":
        return None
    images = ["_".join(iid.split("_")[:-1]) for iid in ids]
    return images if len(set(images)) < len(images) else None


def find_default_ids(truth: GroundTruth) -> Path:
    """The authors' default id list of the benchmark (`Format.default_ids`) beside the ground truth file."""
    fmt = FORMAT[truth.benchmark]
    folder = truth.source if truth.source.is_dir() else truth.source.parent
    if not fmt.default_ids:
        raise EvaluationError(f"{truth.benchmark} has no default id list: name one with --ids FILE")
    for place in (folder, folder.parent):
        if (place / fmt.default_ids).is_file():
            return place / fmt.default_ids
    raise EvaluationError(f"{folder}: no {fmt.default_ids} (the authors' default id list of {truth.benchmark}) here")


def load_ground_truth(
    path: str | Path,
    gt: str | None = None,
    *,
    benchmark: str | None = None,
    protocol: str | metrics.Protocol = metrics.DEFAULT_PROTOCOL,
    ids: str | Path | None = None,
    empty: str = "score",
) -> GroundTruth:
    """Read a benchmark's ground truth (see the module docstring); boxes are rasterised by `protocol`'s rule.

    `ids`: an id list (`read_id_list`; "auto": the format's `default_ids` beside the file) keeps only the
    instances it names. `empty`: an instance whose region is empty in the 224×224 frame (a box clipped away, a
    `[0, 0, 0, 0]` box, a black mask) is scored as the authors score it, a failure ("score", counted in
    `GroundTruth.empty`), or left out ("exclude"). Raises EvaluationError naming unreadable files, malformed
    entries, duplicates, missing mask files, and frames (where present; the first is checked) that are not 224×224.
    """
    if empty not in EMPTY_RULES:
        raise EvaluationError(f"empty must be one of {', '.join(EMPTY_RULES)}, not {empty!r}")
    box_rule = metrics.get_protocol(protocol).box_rule
    path = Path(path)
    file, bench, kind = find_ground_truth(path, gt, benchmark)
    fmt = FORMAT[bench]
    if kind is not None and kind not in fmt.gt:
        raise EvaluationError(f"{file}: {bench} has {' and '.join(fmt.gt)} ground truth only")
    truth = fmt.reader(file, path if path.is_dir() else file.parent, bench, kind, box_rule)
    truth.image_ids = _group(truth.instance_ids, fmt.grouping)
    if ids is not None:
        source = find_default_ids(truth) if str(ids) == "auto" else Path(ids)
        truth = _select(truth, fmt, read_id_list(source), source)
    truth.empty = [iid for iid, area in zip(truth.instance_ids, truth.areas()) if area == 0]
    if empty == "exclude" and truth.empty:
        gone = set(truth.empty)
        keep = [i for i, iid in enumerate(truth.instance_ids) if iid not in gone]
        if not keep:
            raise EvaluationError(f"{file}: every instance has an empty region; nothing is left to score")
        truth = truth.subset(np.array(keep, dtype=np.int64), sorted(gone))
    return truth


# --- the declared formats -----------------------------------------------------------------------------------


def vggss_aliases(clip_id: str) -> tuple[str, ...]:
    """The other name of a VGG-SS clip `<ytid>_<start s>` in the authors' lists: `<ytid>_<start ms>_<end ms>`
    (their `vgg_filename`: `name[:11]`, start × 1000, (start + 10) × 1000)."""
    try:
        start = int(clip_id[12:])
    except ValueError:
        return ()
    return (f"{clip_id[:11]}_{start * 1000}_{(start + 10) * 1000}",)


@dataclass(frozen=True)
class Format:
    """One benchmark's ground-truth format: how it is found, read, named, grouped and subset, and what it scores.

    `reader(file, root, benchmark, gt or None, box_rule)` returns a GroundTruth; `pattern` is a regex on a
    lower-cased file or folder name that says the benchmark (formats are tried in declaration order);
    `grouping` is "last-part" (IIoU / IAUC over the authors' short name, reported where an image has several
    instances) or "none"; `aliases(id)` gives the other names an id list may use; `default_ids` is the authors'
    default id list (a file name, `--ids auto`); `tasks` are the evaluation tasks (`tasks.TASKS`) it supports.
    """

    name: str
    files: str
    pattern: str
    reader: Callable[[Path, Path, str, str | None, str], GroundTruth]
    gt: tuple[str, ...]
    id_rule: str
    grouping: str = "last-part"
    aliases: Callable[[str], tuple[str, ...]] | None = None
    default_ids: str | None = None
    default_ids_note: str = "all instances"
    tasks: tuple[str, ...] = ("localisation", "segmentation", "robust")


_ENTRY_IDS = "file stem of `image`"
FORMATS: tuple[Format, ...] = (
    Format(
        "vggss",
        "`vggss.json`: `[{file, class, bbox: [[x1, y1, x2, y2] in 0…1, …]}]`",
        r"vggss",
        _read_vggss,
        ("box",),
        "`file` (`<ytid>_<start s>`); id lists may use `<ytid>_<start ms>_<end ms>`",
        grouping="none",
        aliases=vggss_aliases,
        default_ids="ours_vggss.txt",
        default_ids_note="all 5,158 clips for the other methods; `ours_vggss.txt` (4,655) for the authors' own model",
        tasks=("localisation", "extended", "retrieval", "alignment"),
    ),
    Format(
        "is4",
        "`is4_bbox.json` / `is4_seg.json` (the authors' `synthetic3240_bbox.json` / `_seg.json`)",
        r"synthetic3240|(^|[^a-z0-9])is4",
        _read_entry_list,
        ("box", "mask"),
        _ENTRY_IDS,
        tasks=("localisation", "segmentation", "retrieval", "alignment", "robust"),
    ),
    Format(
        "flickr",
        "`Annotations/<id>.xml` (Flickr-SoundNet test set)",
        r"flickr|^annotations$",
        _read_flickr,
        ("box",),
        "the XML file's stem",
        grouping="none",
        default_ids="flickr_test.csv",
        default_ids_note="`flickr_test.csv` (250 ids)",
        tasks=("localisation", "extended"),
    ),
    Format(
        "vpo-ss",
        "`vpo_ss_bbox.json` / `vpo_ss_seg.json`",
        r"vpo[-_ ]?ss",
        _read_entry_list,
        ("box", "mask"),
        _ENTRY_IDS,
    ),
    Format(
        "vpo-ms",
        "`vpo_ms_bbox.json` / `vpo_ms_seg.json`",
        r"vpo[-_ ]?ms",
        _read_entry_list,
        ("box", "mask"),
        _ENTRY_IDS,
    ),
    Format("avsbench-ms3", "`ms3_box.json` / `ms3_seg.json`", r"ms3", _read_entry_list, ("box", "mask"), _ENTRY_IDS),
    Format(
        "avsbench-s4",
        "`s4_box.json` / `s4_seg.json`",
        r"(^|[^a-z0-9])s4",
        _read_entry_list,
        ("box", "mask"),
        _ENTRY_IDS,
    ),
)
FORMAT = {f.name: f for f in FORMATS}
BENCHMARKS = tuple(FORMAT)


def formats_table() -> str:
    """The declared formats as the Markdown table of README "Scoring a model"."""
    lines = [
        "| benchmark | files | ground truth | instance id | IIoU / IAUC | authors' id list | tasks |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for f in FORMATS:
        grouping = "by `id` less its last `_part`" if f.grouping == "last-part" else "no"
        tasks = ", ".join(f.tasks)
        lines.append(
            f"| {f.name} | {f.files} | {', '.join(f.gt)} | {f.id_rule} | {grouping} | {f.default_ids_note} | {tasks} |"
        )
    return "\n".join(lines)
