"""Caches check content, not existence (issue 16 item 4): the hash cache that makes the check cheap.

The real build on a damaged copy of the demo is in tests/e2e/test_damaged_build.py.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from is4.manifests.checksum import HashCache, sha256_file
from tests.support import BUILD_TIMEOUT_S

EXPORT = Path("exports/vggsound")
pytestmark = pytest.mark.timeout(BUILD_TIMEOUT_S)


def test_hash_cache_hashes_once_and_again_on_any_write(tmp_path: Path) -> None:
    file = tmp_path / "media" / "a.bin"
    file.parent.mkdir()
    file.write_bytes(b"x" * 100)
    cache = HashCache(tmp_path, "t")
    assert cache.sha256("media/a.bin") == sha256_file(file)
    assert cache.sha256("media/missing.bin") is None
    cache.save()
    st = file.stat()
    # Same size, same mtime, same inode: the remembered hash is used without reading the file (cheap) ...
    with open(file, "r+b") as fh:
        fh.write(b"y")
    os.utime(file, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert HashCache(tmp_path, "t").sha256("media/a.bin") == cache.sha256("media/a.bin") != sha256_file(file)
    # ... any ordinary write changes the stat, and the file is hashed again.
    file.write_bytes(b"z" * 100)
    assert HashCache(tmp_path, "t").sha256("media/a.bin") == sha256_file(file)
    file.unlink()
    file.write_bytes(b"x" * 100)  # replaced by a new file (another inode), even with the old bytes
    assert HashCache(tmp_path, "t").sha256("media/a.bin") == sha256_file(file)
