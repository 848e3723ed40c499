"""`is4 eval` on hostile prediction files: one line naming the file, exit 2, and nothing of a claimed size allocated.

Each run is a real `is4 eval` subprocess whose address space is capped (RLIMIT_AS), so a file that makes the reader
allocate what its headers claim shows up as a MemoryError traceback instead of passing by luck of overcommit.
"""

from __future__ import annotations

import io
import json
import os
import resource
import struct
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest

from tests.support import IS4

ADDRESS_SPACE = 3 << 30  # bytes: far above what scoring two maps needs, far below what the hostile files claim
VGGSS = [
    {"file": "--PJHxphWEs_000030", "class": "dog barking", "bbox": [[0.1, 0.2, 0.5, 0.9]]},
    {"file": "-0jeONf82dE_000021", "class": "playing cello", "bbox": [[0.0, 0.0, 0.4, 0.5]]},
]
GOOD, HOSTILE = VGGSS[0]["file"], VGGSS[1]["file"]


def _capped() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))


def _eval(tmp_path: Path, predictions: Path) -> subprocess.CompletedProcess[str]:
    (tmp_path / "vggss.json").write_text(json.dumps(VGGSS))
    return subprocess.run(
        [
            IS4,
            "eval",
            "--release",
            str(tmp_path / "vggss.json"),
            "--predictions",
            str(predictions),
            "--benchmark",
            "vggss",
            "--no-baselines",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=_capped,
        # PYTHONPATH passed on: a checkout's code under test, not only the installed one.
        env={"COLUMNS": "400", "PATH": "/usr/bin:/bin", **{k: v for k, v in os.environ.items() if k == "PYTHONPATH"}},
    )


def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def _claiming(shape: tuple[int, ...]) -> bytes:
    """An .npy header for a float32 array of `shape`, followed by a few bytes only."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False, "shape": shape})
    return buf.getvalue() + b"\0" * 64


def _archive(path: Path, hostile: bytes, compression: int) -> Path:
    good = _npy(np.random.default_rng(0).random((224, 224), dtype=np.float32))
    with zipfile.ZipFile(path, "w", compression=compression) as archive:
        archive.writestr(f"{GOOD}.npy", good)
        archive.writestr(f"{HOSTILE}.npy", hostile)
    return path


def _claim_size(path: Path, member: str, size: int) -> Path:
    """Patch the uncompressed size that the zip's central directory and local header give `member`."""
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(member)
    struct.pack_into("<I", data, info.header_offset + 22, size)
    central = data.index(b"PK\x01\x02")
    while data[central + 46 : central + 46 + len(member)] != member.encode():
        central = data.index(b"PK\x01\x02", central + 4)
    struct.pack_into("<I", data, central + 24, size)
    path.write_bytes(bytes(data))
    return path


def _one_line(result: subprocess.CompletedProcess[str], *expected: str) -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr and "MemoryError" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for text in expected:
        assert text in lines[0], lines[0]


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.npz"
    path.write_bytes(b"")
    _one_line(_eval(tmp_path, path), str(path), "cannot read predictions")


@pytest.mark.parametrize("compression", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED], ids=["stored", "compressed"])
def test_header_claiming_186_gib(tmp_path: Path, compression: int) -> None:
    path = _archive(tmp_path / "huge.npz", _claiming((224_000, 224_000)), compression)
    _one_line(_eval(tmp_path, path), str(path), HOSTILE, "(224000, 224000)")


def test_header_that_does_not_match_the_member(tmp_path: Path) -> None:
    """A plausible shape whose data is not there: refused from the header, not after reading 1 GiB."""
    path = _archive(tmp_path / "short.npz", _claiming((4096, 4096)), zipfile.ZIP_DEFLATED)
    _one_line(_eval(tmp_path, path), HOSTILE, "data bytes")


def test_an_honest_map_far_larger_than_any_frame_is_refused(tmp_path: Path) -> None:
    """A real 8192² map compresses to a few hundred KB and decompresses to 256 MiB (issue 21 item 9: a 7.9 MB
    archive made `is4 eval` peak at 4 GB): refused from its header, before it is decompressed."""
    path = _archive(tmp_path / "big.npz", _npy(np.zeros((8192, 8192), np.float32)), zipfile.ZIP_DEFLATED)
    assert path.stat().st_size < 1 << 20
    _one_line(_eval(tmp_path, path), HOSTILE, "(8192, 8192)", str(1 << 24))


@pytest.mark.parametrize("compression", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED], ids=["stored", "compressed"])
def test_zip_entry_claiming_4_gib(tmp_path: Path, compression: int) -> None:
    """The zip directory, not the .npy header, lies about the member's size."""
    path = _archive(tmp_path / "bomb.npz", _npy(np.zeros((8, 8), np.float32)), compression)
    _claim_size(path, f"{HOSTILE}.npy", 0xFFFF0000)
    _one_line(_eval(tmp_path, path), HOSTILE, "claims")


def test_honest_archive_still_scores(tmp_path: Path) -> None:
    path = _archive(tmp_path / "ok.npz", _npy(np.ones((56, 56), np.float64)), zipfile.ZIP_DEFLATED)
    result = _eval(tmp_path, path)
    assert result.returncode == 0, result.stderr
    assert "cIoU" in result.stdout
