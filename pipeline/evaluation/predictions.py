"""Prediction maps: an `.npz` read member by member (never all maps at once), and each map checked and resized.

Format: one NumPy `.npz` archive (`np.savez` or `np.savez_compressed`), key = instance id (the file stem of the
ground truth's `image`, the VGG-SS `file`, the Flickr annotation's stem), value = a 2-D array (height, width) of
real numbers (float, integer or bool), higher meaning "more likely the sounding object", covering the whole image;
any resolution (resized to 224×224 as the protocol's map path says, `metrics.MAP_PATHS`); every value finite; no pickled objects.
"""

from __future__ import annotations

import io
import os
import struct
import threading
import zipfile
import zlib
from pathlib import Path

import numpy as np

from is4.pipeline.evaluation import metrics
from is4.pipeline.evaluation.errors import EvaluationError

NPY_MAGIC = b"\x93NUMPY"
ZIP_LOCAL_HEADER = 30  # bytes of a zip local file header before its name and extra field
HEADER_PEEK = 4096  # bytes read to parse a member's .npy header (np.save pads headers to a multiple of 64)
MAX_DEFLATE_RATIO = 1032  # deflate cannot expand data more than this
# The largest map scored: 4096 × 4096 values (64 MiB as float32), 18× the side of any benchmark frame. At 16384²
# a 7.9 MB archive of compressed maps decompressed to GiBs each and `is4 eval` peaked at 4 GB.
MAX_MAP_VALUES = 1 << 24


class MapProblem(ValueError):
    """One map cannot be scored: `kind` is the class of problem (for grouping in messages), `detail` says more."""

    def __init__(self, kind: str, detail: str):
        super().__init__(f"{kind}: {detail}")
        self.kind, self.detail = kind, detail


_HEADERS: dict[bytes, tuple] = {}  # parsed .npy headers by their bytes (np.savez writes the same one for each map)


def _npy_header(data: bytes) -> tuple[tuple[int, ...], bool, np.dtype, int] | None:
    """(shape, fortran order, dtype, data offset) of the `.npy` bytes starting `data`; None for a version or
    header this fast path does not read (np.lib.format.read_array does)."""
    if len(data) < 10 or data[:6] != NPY_MAGIC or data[6:8] not in (b"\x01\x00", b"\x02\x00"):
        return None
    size, start = (struct.unpack("<H", data[8:10])[0], 10) if data[6] == 1 else (struct.unpack("<I", data[8:12])[0], 12)
    key = data[: start + size]
    if len(key) < start + size:
        return None
    if key not in _HEADERS:
        buf = io.BytesIO(key)
        version = np.lib.format.read_magic(buf)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        _HEADERS[key] = (*read(buf), start + size)
    return _HEADERS[key]


def _npy_from_bytes(data: bytes) -> np.ndarray:
    """The array in the bytes of one `.npy` file (a read-only view of `data`); no pickled objects."""
    header = _npy_header(data)
    if header is None:
        return np.lib.format.read_array(io.BytesIO(data), allow_pickle=False)
    shape, fortran, dtype, offset = header
    if dtype.hasobject:
        raise ValueError("Object arrays cannot be loaded when allow_pickle=False")
    count = int(np.prod(shape, dtype=np.int64))
    if len(data) - offset != count * dtype.itemsize:
        raise ValueError(f"holds {len(data) - offset} data bytes, not the {count * dtype.itemsize} of {shape} {dtype}")
    arr = np.frombuffer(data, dtype=dtype, count=count, offset=offset)
    return arr.reshape(shape[::-1]).T if fortran else arr.reshape(shape)


def _check_sizes(info: zipfile.ZipInfo, head: bytes) -> tuple[tuple[int, ...], bool, np.dtype, int]:
    """The `.npy` header at the start of member `info` (bytes `head`), checked against the member's size and the
    largest map scored: a header claiming more than the member holds is refused before anything is allocated."""
    try:
        header = _npy_header(head)
    except ValueError as exc:
        raise ValueError(f"member {info.filename}: bad .npy header: {exc}") from None
    if header is None:
        raise ValueError(f"member {info.filename} is not a .npy array of version 1 or 2")
    shape, _fortran, dtype, offset = header
    count = int(np.prod(shape, dtype=np.float64))  # float: a hostile shape cannot overflow the product
    if count > MAX_MAP_VALUES:
        raise ValueError(f"member {info.filename} claims shape {shape}, more than {MAX_MAP_VALUES} values")
    if info.file_size - offset != count * dtype.itemsize:
        raise ValueError(
            f"member {info.filename} holds {info.file_size - offset} data bytes, not the "
            f"{count * dtype.itemsize} of {shape} {dtype}"
        )
    return header


class NpzMaps:
    """The maps of an `.npz`, read one member at a time, safely from several threads.

    Uncompressed members (`np.savez`) are read straight from their offset with `os.pread` and checked against their
    CRC-32; compressed ones (`np.savez_compressed`) go through `zipfile` under a lock.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            with open(self.path, "rb") as fh:
                if fh.read(len(NPY_MAGIC)) == NPY_MAGIC:
                    raise EvaluationError(
                        f"{path}: expected an .npz archive of one 2-D map per instance, got a single array (.npy)"
                    )
            self._zip = zipfile.ZipFile(self.path)
        except (OSError, zipfile.BadZipFile, ValueError) as exc:
            if isinstance(exc, EvaluationError):
                raise
            raise EvaluationError(f"{path}: cannot read predictions: {getattr(exc, 'strerror', None) or exc}") from None
        self._members = {info.filename[:-4]: info for info in self._zip.infolist() if info.filename.endswith(".npy")}
        self._fd = os.open(self.path, os.O_RDONLY)
        self._size = os.fstat(self._fd).st_size
        self._lock = threading.Lock()

    def keys(self):
        """The instance ids the archive holds maps for."""
        return self._members.keys()

    def _stored(self, key: str) -> tuple[zipfile.ZipInfo, int] | None:
        """(member, offset of its bytes in the file) for an uncompressed member, else None."""
        info = self._members[key]
        if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 0x1:
            return None
        header = os.pread(self._fd, ZIP_LOCAL_HEADER, info.header_offset)
        if len(header) != ZIP_LOCAL_HEADER or header[:4] != b"PK\x03\x04":
            raise ValueError(f"member {info.filename}: bad zip local header")
        name_len, extra_len = struct.unpack("<HH", header[26:30])
        return info, info.header_offset + ZIP_LOCAL_HEADER + name_len + extra_len

    def read(self, key: str) -> np.ndarray:
        """The array stored under `key`; ValueError for a corrupt member, a pickled object, or sizes that do not
        add up (checked from the `.npy` header before anything of the claimed size is allocated)."""
        stored = self._stored(key)
        if stored is None:
            with self._lock, self._zip.open(self._members[key]) as member:
                return self._read_compressed(self._members[key], member)
        info, offset = stored
        if offset + info.file_size > self._size:
            raise ValueError(f"member {info.filename} claims {info.file_size} bytes past the end of the archive")
        _check_sizes(info, os.pread(self._fd, min(info.file_size, HEADER_PEEK), offset))
        data = os.pread(self._fd, info.file_size, offset)
        if len(data) != info.file_size or zlib.crc32(data) != info.CRC:
            raise ValueError(f"member {info.filename} is truncated or corrupt (CRC-32 mismatch)")
        return _npy_from_bytes(data)

    @staticmethod
    def _read_compressed(info: zipfile.ZipInfo, member) -> np.ndarray:
        if info.file_size > info.compress_size * MAX_DEFLATE_RATIO + HEADER_PEEK:
            raise ValueError(
                f"member {info.filename} claims {info.file_size} bytes from {info.compress_size} "
                "compressed: more than deflate can produce"
            )
        head = member.read(min(info.file_size, HEADER_PEEK))
        _check_sizes(info, head)
        data = head + member.read(info.file_size - len(head))
        if len(data) != info.file_size:
            raise ValueError(f"member {info.filename} is truncated")
        return _npy_from_bytes(data)

    def read_into(self, key: str, out: np.ndarray) -> bool:
        """Read the map under `key` straight into the C-contiguous row `out` (224·224 values) when it is stored
        uncompressed as a 224×224 C-order array of `out`'s dtype (no copy); False (nothing read) otherwise."""
        stored = self._stored(key)
        if stored is None:
            return False
        info, offset = stored
        head = os.pread(self._fd, min(info.file_size, 4096), offset)
        header = _npy_header(head)
        if header is None:
            return False
        shape, fortran, dtype, start = header
        if fortran or dtype != out.dtype or tuple(shape) != (metrics.FRAME, metrics.FRAME):
            return False
        if info.file_size != start + out.nbytes:
            raise ValueError(f"member {info.filename} holds {info.file_size - start} data bytes, not {out.nbytes}")
        view = memoryview(out).cast("B")
        if (
            os.preadv(self._fd, [view], offset + start) != out.nbytes
            or zlib.crc32(view, zlib.crc32(head[:start])) != info.CRC
        ):
            raise ValueError(f"member {info.filename} is truncated or corrupt (CRC-32 mismatch)")
        return True

    def close(self) -> None:
        """Close the archive."""
        self._zip.close()
        os.close(self._fd)

    def __enter__(self) -> NpzMaps:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def prepare_map(arr: np.ndarray, protocol: metrics.Protocol) -> np.ndarray:
    """A map ready to score: (224, 224), resized when it has another shape as the protocol's map path says
    (`metrics.resize_map`); float32 under the reference map paths (the authors' maps are float32 tensors), else
    float32 or float64 (integers and bools exactly as float64). MapProblem when it cannot be."""
    arr = np.asarray(arr)
    if arr.ndim != 2 or 0 in arr.shape:
        raise MapProblem("not 2-D", f"shape {arr.shape}")
    if arr.dtype.kind not in "biuf":
        raise MapProblem("not real numbers", f"dtype {arr.dtype}")
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise MapProblem("NaN/inf values", f"{int(np.count_nonzero(~np.isfinite(arr)))} pixels")
    size = metrics.FRAME
    if protocol.map_path != "exact":
        arr = arr.astype(np.float32, copy=False)
    if arr.shape != (size, size):
        return metrics.resize_map(arr, protocol, size)
    if arr.dtype in (np.float32, np.float64):
        return arr
    return arr.astype(np.float64)
