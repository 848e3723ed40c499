"""Checksums, the byte-reproducible archive, safe extraction and `verify_release`."""

from __future__ import annotations

import gzip
import os
import re
import shutil
import stat
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from is4.manifests.checksum import sha256_file
from is4.pipeline.release.layout import ReleaseError

SUMS_NAME = "SHA256SUMS"

_SUM_LINE_RE = re.compile(r"^([0-9a-f]{64}) [ *](.+)$")
_DRIVE_RE = re.compile(r"^[A-Za-z]:")


def _release_files(root: Path) -> list[str]:
    """Relative POSIX paths of every file under root (symlinks included, never followed), sorted."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            out.append(Path(dirpath, name).relative_to(root).as_posix())
    return sorted(out)


def write_checksums(root: Path) -> Path:
    """`SHA256SUMS` of every file under root except itself, sorted by path, `sha256sum` format."""
    lines = [f"{sha256_file(root / rel)}  {rel}\n" for rel in _release_files(root) if rel != SUMS_NAME]
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

    @property
    def ok(self) -> bool:
        return not (self.missing or self.extra or self.changed)

    def summary(self) -> str:
        if self.ok:
            return f"{self.root}: {self.checked} files, all checksums match"
        parts = [f"{label}: {', '.join(paths)}" for label, paths in
                 (("missing", self.missing), ("extra", self.extra), ("changed", self.changed)) if paths]
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
    report.extra = [rel for rel in _release_files(root) if rel != SUMS_NAME and rel not in expected]
    return report


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
            raise ReleaseError(f"archive member {name!r}: {_member_kind(m)} to {m.linkname!r} refused"
                               + (" (points outside the release)" if outside else " (a release has no links)"))
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
    """Recompute every checksum of a release directory or .tar.gz; report missing, extra and changed files."""
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
