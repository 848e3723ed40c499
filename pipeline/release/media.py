"""The released media: frames and masks resized to the release frame, boxes scaled to it, audio checked."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from is4.pipeline.release.encoders import jpeg_bytes
from is4.pipeline.release.layout import SAMPLE_RATE, ReleaseError


def _half_up(value: float) -> int:
    return int(math.floor(value + 0.5))


def scale_box(box: list[float], width: int, height: int, size: int) -> list[int]:
    """A pixel-edge box `[x1, y1, x2, y2]` (x2/y2 exclusive) of a W×H image in the size×size frame.

    The frame is a plain resize (x × size/W, y × size/H), so edges scale by the same factors; they are rounded
    half up, which is where a nearest-neighbour resize of the mask puts the object's first and one-past-last
    pixel (output pixel j samples source pixel floor((j + 0.5) · W/size)). The box keeps at least one pixel.
    """
    sx, sy = size / width, size / height
    x1, y1, x2, y2 = (_half_up(box[0] * sx), _half_up(box[1] * sy), _half_up(box[2] * sx), _half_up(box[3] * sy))
    x1, y1 = min(max(x1, 0), size - 1), min(max(y1, 0), size - 1)
    x2, y2 = min(max(x2, x1 + 1), size), min(max(y2, y1 + 1), size)
    return [x1, y1, x2, y2]


def frame_and_size(path: Path, size: int) -> tuple[bytes, int, int]:
    """The image at `path` as a size×size JPEG frame (bicubic), and its original width and height."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            rgb = im.convert("RGB")
    except (OSError, Image.UnidentifiedImageError) as exc:
        raise ReleaseError(f"{path}: cannot read image: {exc}") from exc
    width, height = rgb.size
    frame = rgb.resize((size, size), Image.Resampling.BICUBIC)
    return jpeg_bytes(frame), width, height


def mask_jpeg(path: Path, width: int, height: int, size: int, instance_id: str) -> bytes:
    """The W×H mask at `path`, binarised and resized to size×size, as JPEG bytes.

    Enlarging is nearest neighbour (its edges are where `scale_box` puts them); shrinking keeps a pixel wherever any
    of its footprint is object (nearest neighbour would drop 1-px-thin parts and move the extent off the box).
    """
    from PIL import Image

    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("L"))
    except (OSError, Image.UnidentifiedImageError) as exc:
        raise ReleaseError(f"{instance_id}: cannot read mask {path}: {exc}") from exc
    if arr.shape != (height, width):
        raise ReleaseError(f"{instance_id}: mask {path} is {arr.shape[1]}x{arr.shape[0]}, the image {width}x{height}")
    binary = arr >= 128
    if size < width or size < height:
        # Shrinking: a pixel is object when any part of its footprint is, so thin parts survive and the mask's
        # extent stays within a pixel of the box scaled from the full-resolution mask (`scale_box`).
        coverage = np.asarray(Image.fromarray(binary.astype(np.float32)).resize((size, size), Image.Resampling.BOX))
        resized = Image.fromarray(np.where(coverage > 0, 255, 0).astype(np.uint8))
    else:
        resized = Image.fromarray(np.where(binary, 255, 0).astype(np.uint8)).resize(
            (size, size), Image.Resampling.NEAREST
        )
    return jpeg_bytes(resized)


def check_wav(path: Path, instance_id: str) -> None:
    """Refuse a clip that cannot be read or is not at the release's sample rate."""
    from scipy.io import wavfile

    try:
        rate, _ = wavfile.read(path, mmap=True)
    except (OSError, ValueError) as exc:
        raise ReleaseError(f"{instance_id}: cannot read audio {path}: {exc}") from exc
    if rate != SAMPLE_RATE:
        raise ReleaseError(f"{instance_id}: audio {path} is {rate} Hz, the release ships {SAMPLE_RATE} Hz")
