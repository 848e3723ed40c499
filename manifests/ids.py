"""Id rules (DESIGN §3) and seeds derived from stable ids.

Every id that ends up in a file path or on a command line is built here from validated parts, so nothing read
from a csv reaches yt-dlp or the file system unchecked.
"""

from __future__ import annotations

import hashlib
import re

from is4.manifests.errors import FatalError

YTID_RE = re.compile(r"^[A-Za-z0-9_-]{11}$")
CLIP_ID_RE = re.compile(r"^(?P<ytid>[A-Za-z0-9_-]{11})_(?P<start>[0-9]{6})$")
CATEGORY_ID_RE = re.compile(r"^[a-z0-9]+$")
# An id that names a file (image, instance): no path separators, no leading dot.
FILE_ID_RE = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]*$")
MAX_START_SEC = 999_999  # the 6-digit field of a clip id


class InvalidIdError(FatalError, ValueError):
    """An id or id part does not follow the rules."""


def validate_ytid(ytid: str) -> str:
    """Return `ytid` if it is an 11-character YouTube id (letters, digits, `-`, `_`), else raise."""
    if not isinstance(ytid, str) or not YTID_RE.fullmatch(ytid):
        raise InvalidIdError(f"YouTube id {ytid!r} is not 11 characters of [A-Za-z0-9_-]")
    return ytid


def make_clip_id(ytid: str, start_sec: int) -> str:
    """`{ytid}_{start:06d}`, e.g. `glLQrEijrKg_000300`."""
    validate_ytid(ytid)
    if isinstance(start_sec, bool) or not isinstance(start_sec, int) or not 0 <= start_sec <= MAX_START_SEC:
        raise InvalidIdError(f"start second {start_sec!r} is not an integer in [0, {MAX_START_SEC}]")
    return f"{ytid}_{start_sec:06d}"


def parse_clip_id(clip_id: str) -> tuple[str, int]:
    """Split a clip id into (ytid, start second), raising on anything malformed."""
    match = CLIP_ID_RE.fullmatch(clip_id) if isinstance(clip_id, str) else None
    if not match:
        raise InvalidIdError(f"clip id {clip_id!r} is not of the form <11-char ytid>_<6-digit start>")
    return match["ytid"], int(match["start"])


def category_id(object_name: str) -> str:
    """IS4 category id: lower case with spaces (and any non-alphanumerics) removed (`alarm clock` → `alarmclock`)."""
    cid = re.sub(r"[^a-z0-9]", "", object_name.lower())
    if not cid:
        raise InvalidIdError(f"object name {object_name!r} gives an empty category id")
    return cid


def derive_seed(global_seed: int, *parts: str) -> int:
    """A 32-bit seed from the global seed and stable ids, independent of iteration order or worker count."""
    digest = hashlib.sha256("\x1f".join([str(global_seed), *parts]).encode()).digest()
    return int.from_bytes(digest[:4], "big")


def stable_rank(global_seed: int, *parts: str) -> str:
    """A sort key for seeded, order-independent sampling (smallest ranks are picked first)."""
    return hashlib.sha256("\x1f".join([str(global_seed), *parts]).encode()).hexdigest()
