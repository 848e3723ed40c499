"""No program runs from a predictable path another local user can write (issue 21 item 2).

Ingest links the imageio-ffmpeg binary as `ffmpeg` in a tools directory that yt-dlp runs. That directory was
`$TMPDIR/is4-ffmpeg-<uid>`, taken as found: another user could create it first and put a program there. Now it is the
user's private cache, created 0700, and refused in one line when it is another user's or open to others.
"""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import imageio_ffmpeg
import pytest

from is4.pipeline.common import ffmpeg_tools
from is4.pipeline.common.ffmpeg_tools import FFmpegNotFoundError, ffmpeg_tools_dir


@pytest.fixture()
def fresh(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """A fresh tools lookup with the wheel's binary (not named `ffmpeg`), TMPDIR and the cache under tmp_path."""
    monkeypatch.setenv("IS4_FFMPEG", imageio_ffmpeg.get_ffmpeg_exe())
    monkeypatch.setenv("PATH", os.environ.get("PATH", ""))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    (tmp_path / "shared").mkdir(mode=0o777)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "shared"))
    ffmpeg_tools.ffmpeg_exe.cache_clear()
    ffmpeg_tools_dir.cache_clear()
    yield tmp_path
    ffmpeg_tools.ffmpeg_exe.cache_clear()
    ffmpeg_tools_dir.cache_clear()


def plant(directory: Path, owner: int, mode: int) -> Path:
    """What another user would leave: the directory, a program named `ffmpeg` in it."""
    directory.mkdir(parents=True, exist_ok=True)
    program = directory / "ffmpeg"
    program.write_text('#!/bin/sh\ntouch "$0.ran"\n')
    program.chmod(0o755)
    os.chown(directory, owner, owner)
    directory.chmod(mode)
    return program


def test_tools_dir_is_private_and_not_in_a_shared_directory(fresh: Path) -> None:
    tools = ffmpeg_tools_dir()
    st = os.lstat(tools)
    assert stat.S_IMODE(st.st_mode) == 0o700 and st.st_uid == os.getuid()
    assert not tools.is_relative_to(fresh / "shared")
    assert os.path.realpath(tools / "ffmpeg") == os.path.realpath(imageio_ffmpeg.get_ffmpeg_exe())
    assert os.environ["PATH"].split(os.pathsep)[0] == str(tools)


@pytest.mark.skipif(os.getuid() != 0, reason="giving a directory to another user needs root")
def test_a_directory_planted_by_another_user_is_refused(fresh: Path) -> None:
    other = 4242
    # Where the tools directory was (the shared temp dir) and where it is now (the user's cache).
    plant(fresh / "shared" / f"is4-ffmpeg-{os.getuid()}", other, 0o777)
    plant(fresh / "cache" / "is4" / "ffmpeg-tools", other, 0o777)
    with pytest.raises(FFmpegNotFoundError, match="not a private directory") as err:
        ffmpeg_tools_dir()
    assert "\n" not in str(err.value)


def test_an_own_directory_open_to_others_is_refused(fresh: Path) -> None:
    plant(fresh / "shared" / f"is4-ffmpeg-{os.getuid()}", os.getuid(), 0o777)
    plant(fresh / "cache" / "is4" / "ffmpeg-tools", os.getuid(), 0o777)
    with pytest.raises(FFmpegNotFoundError, match="mode drwxrwxrwx"):
        ffmpeg_tools_dir()
