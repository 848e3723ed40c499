"""Checksums, the byte-reproducible archive, safe extraction and `verify_release` (checksums and item invariants)."""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import stat
import tarfile
import tempfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import yaml

from is4.manifests.checksum import sha256_file
from is4.pipeline.release.layout import MASK_THRESHOLD, ReleaseError

SUMS_NAME = "SHA256SUMS"
DEFAULT_FRAME = 224  # the frame size when a release ships no build-config.yaml
BOX_TOLERANCE = 1  # px: a box may differ from its released mask's extent by rounding
# `{image_id}_{category}` with `image_id = {c1}_{c2}_{n}` and category ids `[a-z0-9]+`
ITEM_ID_RE = re.compile(r"^(?P<image>(?P<a>[a-z0-9]+)_(?P<b>[a-z0-9]+)_[0-9]+)_(?P<category>[a-z0-9]+)$")

_SUM_LINE_RE = re.compile(r"^([0-9a-f]{64}) [ *](.+)$")
_DRIVE_RE = re.compile(r"^[A-Za-z]:")


def release_files(root: Path) -> list[str]:
    """Relative POSIX paths of every file under root (symlinks included, never followed), sorted."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            out.append(Path(dirpath, name).relative_to(root).as_posix())
    return sorted(out)


def write_checksums(root: Path) -> Path:
    """`SHA256SUMS` of every file under root except itself, sorted by path, `sha256sum` format."""
    lines = [f"{sha256_file(root / rel)}  {rel}\n" for rel in release_files(root) if rel != SUMS_NAME]
    path = root / SUMS_NAME
    path.write_text("".join(lines), encoding="utf-8")
    return path


def write_archive(root: Path, target: Path, arcroot: str) -> None:
    """A byte-reproducible .tar.gz of root's tree under `arcroot/`: sorted members, zero times and owners."""
    entries: list[tuple[str, Path]] = [("", root)]
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            entries.append((p.relative_to(root).as_posix(), p))
    entries.sort(key=lambda e: e[0])
    with open(target, "wb") as raw:
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=9) as gz:
            with tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
                for rel, p in entries:
                    st = p.lstat()
                    info = tarfile.TarInfo(f"{arcroot}/{rel}" if rel else arcroot)
                    info.mtime = 0
                    info.uid = info.gid = 0
                    info.uname = info.gname = ""
                    if stat.S_ISDIR(st.st_mode):
                        info.type, info.mode = tarfile.DIRTYPE, 0o755
                        tar.addfile(info)
                    elif stat.S_ISREG(st.st_mode):
                        info.type, info.mode, info.size = tarfile.REGTYPE, 0o644, st.st_size
                        with open(p, "rb") as fh:
                            tar.addfile(info, fh)
                    else:
                        raise ReleaseError(f"{p}: only regular files and directories go into a release")


@dataclass
class VerifyReport:
    """What `verify_release` found, paths relative to the release root."""

    root: str
    checked: int = 0
    missing: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    invalid: list[str] = field(default_factory=list)  # broken item invariants, "<file or instance>: <what>"

    @property
    def ok(self) -> bool:
        return not (self.missing or self.extra or self.changed or self.invalid)

    def summary(self) -> str:
        if self.ok:
            return f"{self.root}: {self.checked} files, all checksums match, every image a complete IS4 item"
        parts = [
            f"{label}: {', '.join(paths)}"
            for label, paths in (
                ("missing", self.missing),
                ("extra", self.extra),
                ("changed", self.changed),
                ("invalid", self.invalid),
            )
            if paths
        ]
        return f"{self.root}: " + "; ".join(parts)


def check_rel(rel: str, where: str) -> str:
    """`rel` as a plain relative POSIX path; absolute paths, `..`, backslashes and drives raise ReleaseError."""
    p = PurePosixPath(rel)
    if not rel or p.is_absolute() or ".." in p.parts or "\\" in rel or _DRIVE_RE.match(rel):
        raise ReleaseError(f"{where}: path {rel!r} is not a plain relative path")
    return p.as_posix()


def _verify_dir(root: Path, shown_root: str) -> VerifyReport:
    sums = root / SUMS_NAME
    if not sums.is_file() or sums.is_symlink():
        raise ReleaseError(f"{shown_root}: no {SUMS_NAME} file")
    expected: dict[str, str] = {}
    for line_no, line in enumerate(sums.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        m = _SUM_LINE_RE.fullmatch(line)
        if not m:
            raise ReleaseError(f"{shown_root}/{SUMS_NAME}:{line_no}: not a sha256sum line: {line!r}")
        rel = check_rel(m[2], f"{shown_root}/{SUMS_NAME}:{line_no}")
        expected[rel] = m[1]
    report = VerifyReport(root=shown_root, checked=len(expected))
    for rel, digest in sorted(expected.items()):
        p = root / rel
        if not os.path.lexists(p):
            report.missing.append(rel)
        elif p.is_symlink() or not p.is_file() or sha256_file(p) != digest:
            report.changed.append(rel)
    report.extra = [rel for rel in release_files(root) if rel != SUMS_NAME and rel not in expected]
    report.invalid = check_items(root)
    return report


def _frame_size(root: Path, problems: list[str]) -> int:
    """`release.image_size` of the shipped build-config.yaml; DEFAULT_FRAME when there is none."""
    path = root / "build-config.yaml"
    if not path.is_file():
        return DEFAULT_FRAME
    try:
        size = yaml.safe_load(path.read_text(encoding="utf-8"))["release"]["image_size"]
    except (OSError, UnicodeDecodeError, yaml.YAMLError, KeyError, TypeError) as exc:
        problems.append(f"build-config.yaml: no readable release.image_size ({type(exc).__name__}: {exc})")
        return DEFAULT_FRAME
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        problems.append(f"build-config.yaml: release.image_size {size!r} is not a positive integer")
        return DEFAULT_FRAME
    return size


def _entries(root: Path, name: str, problems: list[str]) -> list[Any]:
    try:
        entries = json.loads((root / name).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        problems.append(f"{name}: not readable ({type(exc).__name__}: {exc})")
        return []
    if not isinstance(entries, list):
        problems.append(f"{name}: not a JSON list of entries")
        return []
    return entries


def _file(root: Path, rel: Any, where: str, what: str, problems: list[str]) -> Path | None:
    """root/rel when `rel` is a plain relative path to a file; else a problem and None."""
    try:
        path = root / check_rel(rel, where) if isinstance(rel, str) else None
    except ReleaseError:
        path = None
    if path is None or not path.is_file():
        problems.append(f"{where}: {what} {rel!r} is not a file of the release")
        return None
    return path


def _box_problem(box: Any, size: int) -> str | None:
    """Why `box` is not `[x1, y1, x2, y2]` with 0 ≤ x1 < x2 ≤ size and 0 ≤ y1 < y2 ≤ size (None when it is)."""
    numbers = (
        isinstance(box, list)
        and len(box) == 4
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) for v in box)
    )
    if not numbers:
        return f"gt_box {box!r} is not four numbers"
    x1, y1, x2, y2 = box
    if not (0 <= x1 < x2 <= size and 0 <= y1 < y2 <= size):
        return f"gt_box {box} is not inside the {size}×{size} frame"
    return None


def _mask_problem(path: Path, box: list[float] | None, size: int) -> str | None:
    """Why the mask at `path` is not a non-empty size×size mask whose extent is `box` within BOX_TOLERANCE."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            mask = np.asarray(im.convert("L")) > MASK_THRESHOLD
    except (OSError, Image.UnidentifiedImageError) as exc:
        return f"mask {path.name} is not readable ({exc})"
    if mask.shape != (size, size):
        return f"mask {path.name} is {mask.shape[1]}×{mask.shape[0]}, not {size}×{size}"
    cols, rows = np.flatnonzero(mask.any(axis=0)), np.flatnonzero(mask.any(axis=1))
    if not len(cols):
        return f"mask {path.name} is empty"
    extent = [int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1]
    if box is not None and max(abs(a - b) for a, b in zip(box, extent)) > BOX_TOLERANCE:
        return f"gt_box {box} is not its mask's extent {extent} (±{BOX_TOLERANCE} px)"
    return None


def check_items(root: Path) -> list[str]:
    """Where a release directory breaks IS4's item invariants, each naming the file or instance.

    Every entry of `is4_bbox.json` is an instance `{image_id}_{category}` (`image_id = {c1}_{c2}_{n}`, category c1
    or c2) with its frame and audio file; its box lies inside the frame (`release.image_size` of
    `build-config.yaml`, else 224) and equals the extent of its non-empty mask `gt_masks/<instance_id>.jpg` (object >
    127) within ±1 px; every image has exactly two instances, one per category; `is4_seg.json` lists the same
    instances.
    """
    from PIL import Image

    problems: list[str] = []
    size = _frame_size(root, problems)
    by_image: dict[str, list[str]] = defaultdict(list)
    pairs: dict[str, tuple[str, str]] = {}
    seen: set[str] = set()
    for i, entry in enumerate(_entries(root, "is4_bbox.json", problems)):
        where = f"is4_bbox.json[{i}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("image"), str):
            problems.append(f"{where}: not an entry with an image path")
            continue
        iid = PurePosixPath(entry["image"]).stem
        where = f"{where} {iid}"
        if iid in seen:
            problems.append(f"{where}: the instance appears twice")
            continue
        seen.add(iid)
        m = ITEM_ID_RE.fullmatch(iid)
        if not m:
            problems.append(f"{where}: the instance id is not {{c1}}_{{c2}}_{{n}}_{{category}}")
            continue
        if m["a"] == m["b"] or m["category"] not in (m["a"], m["b"]):
            problems.append(
                f"{where}: category {m['category']!r} is not one of the image's two ({m['a']!r}, {m['b']!r})"
            )
        by_image[m["image"]].append(m["category"])
        pairs[m["image"]] = (m["a"], m["b"])
        frame = _file(root, entry["image"], where, "image", problems)
        _file(root, entry.get("audio"), where, "audio", problems)
        if frame is not None:
            try:
                with Image.open(frame) as im:
                    frame_size = im.size
            except (OSError, Image.UnidentifiedImageError) as exc:
                problems.append(f"{where}: frame {entry['image']} is not readable ({exc})")
            else:
                if frame_size != (size, size):
                    problems.append(f"{where}: frame is {frame_size[0]}×{frame_size[1]}, not {size}×{size}")
        box_problem = _box_problem(entry.get("gt_box"), size)
        if box_problem:
            problems.append(f"{where}: {box_problem}")
        mask = _file(root, f"gt_masks/{iid}.jpg", where, "mask", problems)
        if mask is not None:
            mask_problem = _mask_problem(mask, None if box_problem else entry["gt_box"], size)
            if mask_problem:
                problems.append(f"{where}: {mask_problem}")
    for image_id, categories in sorted(by_image.items()):
        expected = sorted(set(pairs[image_id]))
        if sorted(categories) != expected or len(expected) != 2:
            problems.append(
                f"image {image_id}: instances {', '.join(f'{image_id}_{c}' for c in sorted(categories))}; "
                f"an IS4 item has exactly two, {' and '.join(f'{image_id}_{c}' for c in expected)}"
            )
    seg = {
        PurePosixPath(e["image"]).stem
        for e in _entries(root, "is4_seg.json", problems)
        if isinstance(e, dict) and isinstance(e.get("image"), str)
    }
    if seg != seen:
        problems.append(
            "is4_seg.json: not the instances of is4_bbox.json (only in seg: "
            f"{', '.join(sorted(seg - seen)) or '–'}; only in bbox: {', '.join(sorted(seen - seg)) or '–'})"
        )
    return problems


def _member_kind(m: tarfile.TarInfo) -> str:
    if m.issym():
        return "symlink"
    if m.islnk():
        return "hard link"
    if m.ischr() or m.isblk():
        return "device file"
    if m.isfifo():
        return "fifo"
    return "special member"


def check_members(tar: tarfile.TarFile) -> list[tarfile.TarInfo]:
    """Every member of `tar` checked before anything is extracted; the first unsafe one raises ReleaseError."""
    members = tar.getmembers()
    seen: set[str] = set()
    for m in members:
        name = m.name
        p = PurePosixPath(name)
        if not name or p.is_absolute() or name.startswith("/") or _DRIVE_RE.match(name) or "\\" in name:
            raise ReleaseError(f"archive member {name!r}: absolute path refused")
        if ".." in p.parts:
            raise ReleaseError(f"archive member {name!r}: '..' path component refused")
        if m.issym() or m.islnk():
            target = PurePosixPath(m.linkname)
            outside = target.is_absolute() or ".." in target.parts
            raise ReleaseError(
                f"archive member {name!r}: {_member_kind(m)} to {m.linkname!r} refused"
                + (" (points outside the release)" if outside else " (a release has no links)")
            )
        if not (m.isfile() or m.isdir()):
            raise ReleaseError(f"archive member {name!r}: {_member_kind(m)} refused")
        norm = p.as_posix()
        if norm in seen and not m.isdir():
            raise ReleaseError(f"archive member {name!r}: appears twice")
        seen.add(norm)
    return members


def safe_extract(archive: Path, dest: Path) -> None:
    """Extract a release archive into `dest` after checking every member (see `check_members`)."""
    try:
        with tarfile.open(archive, mode="r:*") as tar:
            members = check_members(tar)
            dest_resolved = dest.resolve()
            for m in members:
                out = dest / PurePosixPath(m.name).as_posix()
                if not out.resolve().is_relative_to(dest_resolved):
                    raise ReleaseError(f"archive member {m.name!r}: resolves outside the extraction directory")
                if m.isdir():
                    out.mkdir(parents=True, exist_ok=True)
                    continue
                out.parent.mkdir(parents=True, exist_ok=True)
                src = tar.extractfile(m)
                assert src is not None
                with src, open(out, "wb") as fh:
                    shutil.copyfileobj(src, fh)
    except (tarfile.TarError, EOFError, OSError, gzip.BadGzipFile) as exc:
        raise ReleaseError(f"{archive}: not a readable release archive: {exc}") from exc


def verify_release(path: str | Path) -> VerifyReport:
    """Recompute every checksum of a release directory or .tar.gz and check its items (`check_items`); report
    missing, extra and changed files and broken invariants."""
    path = Path(path)
    if path.is_dir():
        return _verify_dir(path, path.name)
    if not path.is_file():
        raise ReleaseError(f"{path}: no such release directory or archive")
    with tempfile.TemporaryDirectory(prefix="is4-verify-") as tmp:
        tmp_path = Path(tmp)
        safe_extract(path, tmp_path)
        if (tmp_path / SUMS_NAME).exists():
            return _verify_dir(tmp_path, path.name)
        tops = sorted(p.name for p in tmp_path.iterdir())
        if len(tops) != 1 or not (tmp_path / tops[0]).is_dir():
            raise ReleaseError(f"{path}: expected one top-level release directory, found {tops}")
        return _verify_dir(tmp_path / tops[0], tops[0])
