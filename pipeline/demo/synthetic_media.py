"""Synthetic test and demo media made with ffmpeg: solid-colour pictures with sine tones, and corrupt files.

A video is a sequence of `Segment`s; each shows one colour and plays one tone (or silence) for its duration. Video
and audio are laid out on separate timelines, each cut at exact frame / sample boundaries derived from the
cumulative segment end times, so neither drifts and the whole file lasts the sum of the durations. Output is
byte-identical for identical arguments (single-threaded x264, bitexact muxing, no metadata).
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from is4.manifests.atomic import atomic_path
from is4.pipeline.common.ffmpeg_tools import ffmpeg_exe

FFMPEG_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class Segment:
    """A stretch of synthetic media: one solid colour and one sine tone (None = silence)."""

    duration_s: float
    color: str  # ffmpeg colour, e.g. '#ff0000' or 'red'
    tone_hz: float | None  # None = silence


def _boundaries(segments: Sequence[Segment], rate: float) -> list[int]:
    """Per-segment unit counts (frames or samples) cut at the rounded cumulative end times, so totals never drift."""
    ends = np.cumsum([seg.duration_s for seg in segments]) * rate
    cuts = [0, *(int(round(end)) for end in ends)]
    return [b - a for a, b in zip(cuts, cuts[1:])]


def _filter_graph(
    segments: Sequence[Segment], size: tuple[int, int], fps: int, sample_rate: int, with_audio: bool
) -> str:
    """The filter_complex text producing `[v]` (and `[a]` when `with_audio`) from source filters."""
    width, height = size
    chains = []
    for i, (seg, frames) in enumerate(zip(segments, _boundaries(segments, fps))):
        chains.append(f"color=c={seg.color}:s={width}x{height}:r={fps},trim=end_frame={frames}[v{i}]")
    chains.append("".join(f"[v{i}]" for i in range(len(segments))) + f"concat=n={len(segments)}:v=1:a=0[v]")
    if with_audio:
        for i, (seg, samples) in enumerate(zip(segments, _boundaries(segments, sample_rate))):
            source = (
                f"anullsrc=channel_layout=mono:sample_rate={sample_rate}"
                if seg.tone_hz is None
                else f"sine=frequency={seg.tone_hz!r}:sample_rate={sample_rate}"
            )
            chains.append(f"{source},atrim=end_sample={samples}[a{i}]")
        chains.append("".join(f"[a{i}]" for i in range(len(segments))) + f"concat=n={len(segments)}:v=0:a=1[a]")
    return ";".join(chains)


def make_video(
    path: str | Path,
    segments: Sequence[Segment],
    *,
    size: tuple[int, int] = (320, 240),
    fps: int = 25,
    sample_rate: int = 44100,
    keyframe_interval_s: float = 1.0,
    with_audio: bool = True,
) -> Path:
    """Write an H.264 (+ AAC unless `with_audio` is False) faststart mp4 of `segments` atomically to `path`.

    `size` must have even sides (yuv420p). Keyframes fall exactly every `keyframe_interval_s` (no scene-cut
    keyframes), which makes range-seek behaviour predictable. Identical arguments give byte-identical files.
    """
    if not segments:
        raise ValueError("make_video needs at least one segment")
    path = Path(path)
    gop = max(1, round(keyframe_interval_s * fps))
    graph = _filter_graph(segments, size, fps, sample_rate, with_audio)
    video = ["-map", "[v]", "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p"]
    keyframes = ["-g", str(gop), "-keyint_min", str(gop), "-sc_threshold", "0"]
    audio = ["-map", "[a]", "-c:a", "aac", "-b:a", "96k"] if with_audio else []
    # One encoder thread, bitexact muxing/encoding (no version strings) and no metadata: reproducible bytes.
    bitexact = ["-threads", "1", "-fflags", "+bitexact", "-flags:v", "+bitexact", "-flags:a", "+bitexact"]
    container = ["-map_metadata", "-1", "-movflags", "+faststart", "-f", "mp4"]
    with atomic_path(path) as tmp:
        args = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y", "-filter_complex", graph]
        args += [*video, *keyframes, *audio, *bitexact, *container, str(tmp.absolute())]
        proc = subprocess.run(args, capture_output=True, text=True, timeout=FFMPEG_TIMEOUT_S, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"ffmpeg failed to make {path.name}: {proc.stderr.strip()[-2000:]}")
    return path


def make_corrupt_file(path: str | Path, size: int = 64 * 1024, seed: int = 0) -> Path:
    """Write `size` seeded random bytes (not decodable as media) atomically to `path`, typically named `*.mp4`."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_bytes(np.random.default_rng(seed).bytes(size))
    return path
