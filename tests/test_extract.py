"""One-pass clip extraction on real (synthetic) media: frame, audio, features, failures and reproducibility."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.io import wavfile

from is4.pipeline.common.ffmpeg_tools import ffmpeg_exe
from is4.pipeline.demo.synthetic_media import Segment, make_corrupt_file, make_video
from is4.pipeline.ingest.audio_features import log_mel, log_spectrogram
from is4.pipeline.ingest.extract import ExtractedClip, MediaError, extract_clip

SR = 16000
# Tones on exact spectrogram bins (16000 / 512 = 31.25 Hz spacing).
FOUR_SEGMENTS = [
    Segment(2.5, "red", 500.0),
    Segment(2.5, "#00ff00", 1000.0),
    Segment(2.5, "blue", 2000.0),
    Segment(2.5, "white", 3000.0),
]
SMALL = (160, 120)


def _outputs(directory: Path) -> dict[str, Path]:
    return {
        "frame_path": directory / "frame.jpg",
        "audio_path": directory / "audio.wav",
        "spec_path": directory / "spec.npy",
        "mel_path": directory / "mel.npy",
    }


def _assert_nothing_written(directory: Path) -> None:
    assert not directory.exists() or list(directory.iterdir()) == []


def _dominant_hz(samples: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(spectrum.argmax() * SR / len(samples))


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("media")


@pytest.fixture(scope="module")
def four_colour_video(media: Path) -> Path:
    return make_video(media / "four.mp4", FOUR_SEGMENTS, size=SMALL)


@pytest.fixture(scope="module")
def extracted(four_colour_video: Path, tmp_path_factory: pytest.TempPathFactory) -> ExtractedClip:
    return extract_clip(four_colour_video, **_outputs(tmp_path_factory.mktemp("out")), frame_size=96)


def test_centre_frame_is_the_frame_on_screen_at_five_seconds(extracted: ExtractedClip) -> None:
    with Image.open(extracted.frame_path) as image:
        assert image.format == "JPEG"
        pixels = np.asarray(image.convert("RGB"), dtype=np.float64)
    np.testing.assert_allclose(pixels.reshape(-1, 3).mean(axis=0), (0, 0, 255), atol=8)  # third segment: blue
    assert (extracted.frame_width, extracted.frame_height) == (128, 96)
    assert pixels.shape == (96, 128, 3)


@pytest.mark.parametrize(("clip_seconds", "expected_rgb"), [(10.0, (0, 0, 255)), (9.9, (255, 0, 0))])
def test_centre_frame_is_the_last_frame_stamped_at_or_before_the_midpoint(
    media: Path, tmp_path: Path, clip_seconds: float, expected_rgb: tuple[int, int, int]
) -> None:
    # 4 fps: frames at 4.75 s (red) and 5.0 s (blue). At 5.0 s blue is on screen; at 4.95 s red still is.
    halves = [Segment(5.0, "red", 500.0), Segment(5.0, "blue", 500.0)]
    source = make_video(media / "4fps.mp4", halves, size=SMALL, fps=4)
    clip = extract_clip(source, **_outputs(tmp_path), clip_seconds=clip_seconds)
    with Image.open(clip.frame_path) as image:
        np.testing.assert_allclose(np.asarray(image).reshape(-1, 3).mean(axis=0), expected_rgb, atol=8)


@pytest.mark.parametrize(
    ("frame_size", "size", "expected"), [(None, (160, 120), (160, 120)), (64, (96, 128), (64, 86))]
)
def test_frame_size_scales_the_shorter_side(
    media: Path, tmp_path: Path, frame_size: int | None, size: tuple[int, int], expected: tuple[int, int]
) -> None:
    source = make_video(media / f"size-{size[0]}x{size[1]}.mp4", [Segment(6.0, "red", 500.0)], size=size)
    clip = extract_clip(source, **_outputs(tmp_path), frame_size=frame_size)
    with Image.open(clip.frame_path) as image:
        assert image.size == expected == (clip.frame_width, clip.frame_height)


def test_audio_is_16k_mono_exact_length_with_each_segment_tone(extracted: ExtractedClip) -> None:
    rate, samples = wavfile.read(extracted.audio_path)
    assert rate == SR
    assert samples.dtype == np.int16 and samples.ndim == 1
    assert len(samples) == 10 * SR
    for i, seg in enumerate(FOUR_SEGMENTS):
        window = samples[round((2.5 * i + 0.2) * SR) : round((2.5 * (i + 1) - 0.2) * SR)].astype(np.float64)
        assert abs(_dominant_hz(window) - seg.tone_hz) <= 2 * SR / len(window)
    assert extracted.source_audio_sec == 10.0
    assert extracted.padded_sec == 0.0 and extracted.trimmed_sec == 0.0
    peak = np.abs(samples.astype(np.int32)).max() / 32768
    assert extracted.peak_dbfs == pytest.approx(20 * np.log10(peak))
    assert -22.0 < extracted.peak_dbfs < -10.0  # ffmpeg's sine plays at 1/8 full scale (-18 dBFS)


def test_spectrogram_and_mel_files_hold_the_features_of_the_wav(extracted: ExtractedClip) -> None:
    _, samples = wavfile.read(extracted.audio_path)
    audio = samples.astype(np.float32) / 32768
    spec, mel = np.load(extracted.spec_path), np.load(extracted.mel_path)
    assert spec.dtype == mel.dtype == np.float32
    assert spec.shape == (257, 671) and mel.shape == (998, 128)
    np.testing.assert_array_equal(spec, log_spectrogram(audio))
    np.testing.assert_array_equal(mel, log_mel(audio))
    columns_per_second = 16000 / 238
    for i, seg in enumerate(FOUR_SEGMENTS):
        cols = spec[:, round((2.5 * i + 0.2) * columns_per_second) : round((2.5 * (i + 1) - 0.2) * columns_per_second)]
        assert np.all(cols.argmax(axis=0) * SR / 512 == seg.tone_hz)


def test_short_source_is_padded_with_silence(media: Path, tmp_path: Path) -> None:
    source = make_video(media / "seven.mp4", [Segment(3.5, "red", 1000.0), Segment(3.5, "blue", 2000.0)], size=SMALL)
    clip = extract_clip(source, **_outputs(tmp_path))
    _, samples = wavfile.read(clip.audio_path)
    assert len(samples) == 10 * SR
    assert clip.padded_sec == pytest.approx(3.0, abs=0.05)
    assert clip.source_audio_sec + clip.padded_sec == pytest.approx(10.0)
    assert np.all(samples[7 * SR :] == 0)
    assert np.abs(samples[round(6.5 * SR) : round(6.9 * SR)]).max() > 1000
    with Image.open(clip.frame_path) as image:  # 5.0 s falls in the blue half
        np.testing.assert_allclose(np.asarray(image).reshape(-1, 3).mean(axis=0), (0, 0, 255), atol=8)


def test_long_source_is_cut_to_the_clip(media: Path, tmp_path: Path) -> None:
    source = make_video(media / "twelve.mp4", [Segment(9.0, "red", 500.0), Segment(3.0, "blue", 1000.0)], size=SMALL)
    clip = extract_clip(source, **_outputs(tmp_path))
    _, samples = wavfile.read(clip.audio_path)
    assert len(samples) == 10 * SR and clip.source_audio_sec == 10.0
    assert _dominant_hz(samples[round(9.2 * SR) :].astype(np.float64)) == pytest.approx(1000.0, abs=20)


def _audio_only(video: Path, target: Path) -> Path:
    cmd = [ffmpeg_exe(), "-loglevel", "error", "-nostdin", "-i", str(video), "-vn", "-c:a", "copy", str(target)]
    subprocess.run(cmd, check=True, capture_output=True, timeout=60)
    return target


def _video_starting_late(video: Path, target: Path) -> Path:
    cmd = [ffmpeg_exe(), "-loglevel", "error", "-nostdin", "-i", str(video), "-itsoffset", "6", "-i", str(video)]
    cmd += ["-map", "1:v", "-map", "0:a", "-c", "copy", str(target)]
    subprocess.run(cmd, check=True, capture_output=True, timeout=60)
    return target


@pytest.mark.parametrize(
    ("make_source", "reason"),
    [
        (
            lambda d, v: make_video(d / "silent.mp4", [Segment(10.0, "red", None)], size=SMALL),
            "silent audio (peak -inf dBFS)",
        ),
        (lambda d, v: make_video(d / "mute.mp4", FOUR_SEGMENTS, size=SMALL, with_audio=False), "no audio stream"),
        (lambda d, v: make_corrupt_file(d / "corrupt.mp4"), "corrupt media: "),
        (lambda d, v: _audio_only(v, d / "audio-only.m4a"), "no video stream"),
        (lambda d, v: _video_starting_late(v, d / "late.mp4"), "no video frame at 5.0 s"),
    ],
    ids=["silent", "no-audio", "corrupt", "no-video", "late-video"],
)
def test_bad_sources_raise_and_leave_no_files(
    make_source: Callable[[Path, Path], Path], reason: str, four_colour_video: Path, tmp_path: Path
) -> None:
    source = make_source(tmp_path, four_colour_video)
    out_dir = tmp_path / "out"
    with pytest.raises(MediaError) as info:
        extract_clip(source, **_outputs(out_dir))
    assert info.value.reason.startswith(reason)
    assert str(info.value) == info.value.reason
    _assert_nothing_written(out_dir)


def test_silence_threshold_is_configurable(four_colour_video: Path, tmp_path: Path) -> None:
    with pytest.raises(MediaError, match="silent audio"):
        extract_clip(four_colour_video, **_outputs(tmp_path / "out"), silence_dbfs=-3.0)
    _assert_nothing_written(tmp_path / "out")


def test_missing_source_is_not_a_media_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        extract_clip(tmp_path / "absent.mp4", **_outputs(tmp_path / "out"))


def test_extraction_is_byte_identical_across_runs(
    four_colour_video: Path, extracted: ExtractedClip, tmp_path: Path
) -> None:
    again = extract_clip(four_colour_video, **_outputs(tmp_path), frame_size=96)
    for name in ("frame_path", "audio_path", "spec_path", "mel_path"):
        assert getattr(again, name).read_bytes() == getattr(extracted, name).read_bytes(), name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["audio.wav", "frame.jpg", "mel.npy", "spec.npy"]
