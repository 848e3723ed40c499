"""Demo media: short synthetic videos for a few real VGG-SS labels and a vggsound-format csv listing them.

Each label gets its own colour and tone, each clip its own 10-s window inside a longer source. With
`include_faults`, the csv also lists one row with an invalid id and one video that the server does not have, so
a demo build shows how rejects are recorded. Everything is derived from the seed: same seed, same bytes.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

from is4.manifests.atomic import atomic_write_bytes
from is4.manifests.ids import derive_seed
from is4.pipeline.demo.synthetic_media import Segment, make_video

_PALETTE = ("#d62728", "#2ca02c", "#1f77b4", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")
_SEGMENT_S = 5.0


@dataclass(frozen=True)
class DemoSet:
    """Where the demo media lives: videos in `video_dir` named `{ytid}.mp4`, rows in `csv_path`."""

    csv_path: Path
    video_dir: Path
    clips: int


def demo_ytid(seed: int, label: str, index: int) -> str:
    """A deterministic, valid 11-character YouTube-style id."""
    digest = hashlib.sha256(f"{seed}\x1f{label}\x1f{index}".encode()).digest()
    return base64.urlsafe_b64encode(digest).decode()[:11]


def label_tone_hz(label_index: int) -> float:
    """The tone of a demo label: 300 Hz, 550 Hz, 800 Hz, … (well apart on the spectrogram)."""
    return 300.0 + 250.0 * label_index


def make_demo_media(
    out_dir: str | Path,
    labels: list[str],
    *,
    clips_per_label: int = 2,
    source_seconds: float = 30.0,
    seed: int = 0,
    include_faults: bool = True,
) -> DemoSet:
    """Write the demo videos and csv under `out_dir` (existing identical videos are kept)."""
    out_dir = Path(out_dir)
    video_dir = out_dir / "videos"
    video_dir.mkdir(parents=True, exist_ok=True)
    rows: list[tuple[str, int, str, str]] = []
    n_segments = max(int(source_seconds // _SEGMENT_S), 2)
    for li, label in enumerate(labels):
        tone = label_tone_hz(li)
        for ci in range(clips_per_label):
            ytid = demo_ytid(seed, label, ci)
            rng = derive_seed(seed, "demo", ytid)
            # The label's colour and tone throughout, brightness varying per segment so frames differ over time.
            segments = [
                Segment(_SEGMENT_S, _shade(_PALETTE[li % len(_PALETTE)], (rng >> s) % 3), tone)
                for s in range(n_segments)
            ]
            max_start = int(n_segments * _SEGMENT_S - 10)
            start = (rng % (max_start // 5 + 1)) * 5
            path = video_dir / f"{ytid}.mp4"
            if not path.is_file():
                make_video(path, segments, size=(320, 240))
            rows.append((ytid, start, label, "test" if ci == clips_per_label - 1 and ci else "train"))
    if include_faults:
        rows.append(("not-a-valid-id", 0, labels[0], "train"))  # invalid: rejected before any download
        rows.append((demo_ytid(seed, "missing", 0), 0, labels[0], "train"))  # no such video on the server
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    csv_path = out_dir / "vggsound_demo.csv"
    atomic_write_bytes(csv_path, buf.getvalue().encode())
    return DemoSet(csv_path=csv_path, video_dir=video_dir, clips=len(labels) * clips_per_label)


def _shade(hex_colour: str, level: int) -> str:
    """The colour at full, 70 % or 45 % brightness."""
    factor = (1.0, 0.7, 0.45)[level]
    rgb = [int(hex_colour[i : i + 2], 16) for i in (1, 3, 5)]
    return "#" + "".join(f"{int(c * factor):02x}" for c in rgb)
