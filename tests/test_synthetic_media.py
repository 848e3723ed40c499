"""Synthetic media: exact timelines, the requested colours and tones, faststart layout, reproducible bytes."""

from __future__ import annotations

import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

from is4.pipeline.common.ffmpeg_tools import ffmpeg_exe
from is4.pipeline.demo.synthetic_media import Segment, make_corrupt_file, make_video

SEGMENTS = [
    Segment(1.0, "red", 500.0),
    Segment(0.5, "#00ff00", 1000.0),
    Segment(1.0, "blue", None),
    Segment(0.5, "white", 3000.0),
]
RGB = {"red": (255, 0, 0), "#00ff00": (0, 255, 0), "blue": (0, 0, 255), "white": (255, 255, 255)}
SIZE, FPS, SR = (64, 48), 20, 16000


def _decode(path: Path, *output_args: str, input_args: tuple[str, ...] = ()) -> subprocess.CompletedProcess[bytes]:
    cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", *input_args, "-i", str(path), *output_args]
    return subprocess.run(cmd, capture_output=True, timeout=60, check=False)


def _frames(path: Path, *, keyframes_only: bool = False) -> np.ndarray:
    """All decoded frames as (n, h, w, 3) uint8."""
    skip = ("-skip_frame", "nokey") if keyframes_only else ()
    out = _decode(
        path, "-map", "0:v:0", "-fps_mode", "passthrough", "-pix_fmt", "rgb24", "-f", "rawvideo", "-", input_args=skip
    )
    assert out.returncode == 0, out.stderr
    return np.frombuffer(out.stdout, np.uint8).reshape(-1, SIZE[1], SIZE[0], 3)


def _audio(path: Path) -> np.ndarray:
    out = _decode(path, "-map", "0:a:0", "-ar", str(SR), "-ac", "1", "-f", "s16le", "-")
    assert out.returncode == 0, out.stderr
    return np.frombuffer(out.stdout, np.int16).astype(np.float64) / 32768


def _top_level_boxes(path: Path) -> list[str]:
    data, boxes, offset = path.read_bytes(), [], 0
    while offset < len(data):
        size, kind = struct.unpack(">I4s", data[offset : offset + 8])
        boxes.append(kind.decode())
        offset += size
    return boxes


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_video(tmp_path_factory.mktemp("synth") / "clip.mp4", SEGMENTS, size=SIZE, fps=FPS, sample_rate=SR)


def test_video_is_byte_identical_across_runs(video: Path, tmp_path: Path) -> None:
    again = make_video(tmp_path / "again.mp4", SEGMENTS, size=SIZE, fps=FPS, sample_rate=SR)
    assert again.read_bytes() == video.read_bytes()
    other = [*SEGMENTS[:-1], Segment(0.5, "white", 2500.0)]
    different = make_video(tmp_path / "other.mp4", other, size=SIZE, fps=FPS, sample_rate=SR)
    assert different.read_bytes() != video.read_bytes()


def test_video_is_faststart_mp4_and_leaves_no_temp_files(video: Path) -> None:
    boxes = _top_level_boxes(video)
    assert boxes[0] == "ftyp"
    assert boxes.index("moov") < boxes.index("mdat")
    assert [p.name for p in video.parent.iterdir()] == ["clip.mp4"]


def test_video_frames_show_each_segment_colour_for_its_duration(video: Path) -> None:
    frames = _frames(video)
    assert len(frames) == 3 * FPS
    start = 0
    for seg in SEGMENTS:
        n = round(seg.duration_s * FPS)
        means = frames[start : start + n].reshape(n, -1, 3).mean(axis=1)
        np.testing.assert_allclose(means, np.broadcast_to(RGB[seg.color], means.shape), atol=6)
        start += n


def test_keyframes_follow_the_interval(tmp_path: Path) -> None:
    path = make_video(tmp_path / "k.mp4", [Segment(3.0, "red", 440.0)], size=SIZE, fps=FPS, keyframe_interval_s=0.5)
    assert len(_frames(path, keyframes_only=True)) == 6


def test_audio_lasts_the_timeline_and_plays_each_tone(video: Path) -> None:
    audio = _audio(video)
    assert len(audio) == 3 * SR
    start = 0.0
    for seg in SEGMENTS:
        window = audio[round((start + 0.1) * SR) : round((start + seg.duration_s - 0.1) * SR)]
        start += seg.duration_s
        if seg.tone_hz is None:
            assert np.abs(window).max() < 1e-3
            continue
        spectrum = np.abs(np.fft.rfft(window * np.hanning(len(window))))
        assert abs(spectrum.argmax() * SR / len(window) - seg.tone_hz) <= SR / len(window)
        assert 0.1 < np.abs(window).max() < 0.15  # ffmpeg's sine source plays at 1/8 full scale


def test_video_without_audio_has_no_audio_stream(tmp_path: Path) -> None:
    path = make_video(tmp_path / "mute.mp4", SEGMENTS[:1], size=SIZE, fps=FPS, with_audio=False)
    assert len(_frames(path)) == FPS
    out = _decode(path, "-map", "0:a:0", "-f", "s16le", "-")
    assert out.returncode != 0
    assert b"0:a:0" in out.stderr


def test_make_video_needs_segments(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        make_video(tmp_path / "empty.mp4", [])


def test_corrupt_file_is_seeded_and_undecodable(tmp_path: Path) -> None:
    first = make_corrupt_file(tmp_path / "a.mp4", size=4096, seed=1)
    assert first.stat().st_size == 4096
    assert make_corrupt_file(tmp_path / "b.mp4", size=4096, seed=1).read_bytes() == first.read_bytes()
    assert make_corrupt_file(tmp_path / "c.mp4", size=4096, seed=2).read_bytes() != first.read_bytes()
    out = _decode(first, "-f", "null", "-")
    assert out.returncode != 0
