"""Locate the ffmpeg binary and expose it under the name other tools look for.

The `imageio-ffmpeg` wheel ships a static ffmpeg whose file name is not `ffmpeg`. yt-dlp decides whether it can do
a section download by looking for a program literally named `ffmpeg` on PATH (its `ffmpeg_location` option is not
consulted for that check when yt-dlp is used as a library), so we keep a small tools directory holding an `ffmpeg`
symlink and put it on PATH.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from functools import lru_cache
from pathlib import Path

from is4.manifests.errors import FatalError


class FFmpegNotFoundError(FatalError, RuntimeError):
    """No usable ffmpeg binary: the run cannot proceed."""


@lru_cache(maxsize=1)
def ffmpeg_exe() -> str:
    """Absolute path of the ffmpeg binary: `IS4_FFMPEG`, then `ffmpeg` on PATH, then the imageio-ffmpeg wheel."""
    explicit = os.environ.get("IS4_FFMPEG")
    if explicit:
        if not os.access(explicit, os.X_OK):
            raise FFmpegNotFoundError(f"IS4_FFMPEG={explicit!r} is not an executable file")
        return explicit
    on_path = shutil.which("ffmpeg")
    if on_path:
        return on_path
    try:
        import imageio_ffmpeg

        return imageio_ffmpeg.get_ffmpeg_exe()
    except (ImportError, RuntimeError) as exc:
        raise FFmpegNotFoundError(
            "ffmpeg not found: install the imageio-ffmpeg wheel, put ffmpeg on PATH or set IS4_FFMPEG"
        ) from exc


@lru_cache(maxsize=1)
def ffmpeg_tools_dir() -> Path:
    """A directory containing a program named `ffmpeg`, prepended to this process's PATH (idempotent)."""
    exe = Path(ffmpeg_exe())
    if exe.name == "ffmpeg":
        tools = exe.parent
    else:
        tools = Path(tempfile.gettempdir()) / f"is4-ffmpeg-{os.getuid()}"
        tools.mkdir(parents=True, exist_ok=True)
        link = tools / "ffmpeg"
        if not (link.is_symlink() and Path(os.readlink(link)) == exe):
            tmp = tools / f".ffmpeg.{os.getpid()}"
            tmp.unlink(missing_ok=True)
            tmp.symlink_to(exe)
            os.replace(tmp, link)
    path = os.environ.get("PATH", "")
    if str(tools) not in path.split(os.pathsep):
        os.environ["PATH"] = os.pathsep.join([str(tools), path]) if path else str(tools)
    return tools
