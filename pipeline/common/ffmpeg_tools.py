"""Locate the ffmpeg binary and expose it under the name other tools look for.

The `imageio-ffmpeg` wheel ships a static ffmpeg whose file name is not `ffmpeg`. yt-dlp decides whether it can do
a section download by looking for a program literally named `ffmpeg` on PATH (its `ffmpeg_location` option is not
consulted for that check when yt-dlp is used as a library), so we keep a small tools directory holding an `ffmpeg`
symlink and put it on PATH. That directory is the user's private cache (`$XDG_CACHE_HOME/is4/ffmpeg-tools`, else
`~/.cache/is4/ffmpeg-tools`), created 0700 and refused unless it is a real directory owned by the user with no
access for others: a predictable path in a shared directory (`/tmp`) would let another local user put a program
there that yt-dlp then runs as us.
"""

from __future__ import annotations

import os
import shutil
import stat
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


def tools_cache_dir() -> Path:
    """The user's private directory for the `ffmpeg` link (not yet checked; `private_dir` does)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "is4" / "ffmpeg-tools"


def private_dir(path: Path) -> Path:
    """`path` created 0700 if missing; refused (FFmpegNotFoundError, one line) unless it is a directory, not a link,
    owned by this user and closed to group and others."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = os.lstat(path)
    uid = os.getuid()
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != uid or st.st_mode & 0o077:
        raise FFmpegNotFoundError(
            f"{path}: not a private directory (owner uid {st.st_uid}, mode {stat.filemode(st.st_mode)}; needs a "
            f"directory of uid {uid} with mode drwx------): remove it, or set IS4_FFMPEG or put ffmpeg on PATH"
        )
    return path


@lru_cache(maxsize=1)
def ffmpeg_tools_dir() -> Path:
    """A directory containing a program named `ffmpeg`, prepended to this process's PATH (idempotent)."""
    exe = Path(ffmpeg_exe())
    if exe.name == "ffmpeg":
        tools = exe.parent
    else:
        tools = private_dir(tools_cache_dir())
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
