"""One-pass extraction of a downloaded clip section: centre frame, 16 kHz mono audio and its features.

A single ffmpeg process decodes the source once and writes two temporary outputs: the frame on screen at the
clip's midpoint (JPEG) and the first `clip_seconds` of audio (16 kHz mono s16le WAV). Python then pads or trims the
audio to exactly `clip_seconds`, rejects silent clips, computes the features and only then writes the four final
files, each atomically. Every output is byte-identical across runs on the same input.
"""

from __future__ import annotations

import math
import re
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import ffmpeg
import numpy as np
from PIL import Image
from scipy.io import wavfile

from is4.manifests.atomic import atomic_path
from is4.pipeline.common.ffmpeg_tools import ffmpeg_exe
from is4.pipeline.ingest.audio_features import log_mel, log_spectrogram

FFMPEG_TIMEOUT_S = 120.0
# A frame stamped up to this much after the midpoint still counts as on screen at it (absorbs time-base rounding).
FRAME_TIME_TOLERANCE_S = 1e-3
INT16_FULL_SCALE = 32768.0
# ffmpeg lines that only restate the failure of an earlier, more specific line.
_GENERIC_FFMPEG_LINES = re.compile(r"^(Conversion failed!|Error opening (input|output) files?\b.*|Exiting .*)$")
_LOG_PREFIX = re.compile(r"^(\[[^\]]+\]\s*)+")
_EMPTY_OUTPUT = re.compile(r"\[out#\d+/(?P<muxer>\w+) @ [^\]]*\] Nothing was written into output file")


class MediaError(Exception):
    """The source cannot yield a usable clip; `reason` says why in a few words."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class ExtractedClip:
    """Where the extracted files were written and what pad/trim and level checks found."""

    frame_path: Path
    audio_path: Path
    spec_path: Path
    mel_path: Path
    source_audio_sec: float  # decoded audio length before pad/trim
    padded_sec: float
    trimmed_sec: float
    peak_dbfs: float
    frame_width: int
    frame_height: int


def _ffmpeg_args(
    source: Path,
    frame_tmp: Path,
    wav_tmp: Path,
    *,
    clip_seconds: float,
    frame_size: int | None,
    jpeg_quality: int,
    sample_rate: int,
) -> list[str]:
    """The single ffmpeg command writing the centre frame and the audio of `source`."""
    midpoint = clip_seconds / 2
    # Absolute paths: a relative name starting with '-' or containing ':' would be read as an option or protocol.
    source_in = ffmpeg.input(str(source.absolute()), t=clip_seconds)
    # Keep every frame stamped at or before the midpoint; `-update 1` overwrites the JPEG with each, so the file
    # ends up holding the last one, i.e. the frame on screen at the midpoint.
    video = source_in["v:0"].filter("select", f"lte(t,{midpoint + FRAME_TIME_TOLERANCE_S!r})")
    if frame_size is not None:
        landscape = "lt(ih,iw)"
        video = video.filter("scale", w=f"if({landscape},-2,{frame_size})", h=f"if({landscape},{frame_size},-2)")
    frame_out = ffmpeg.output(
        video,
        str(frame_tmp),
        f="image2",
        update=1,
        **{"q:v": jpeg_quality, "fflags": "+bitexact", "flags:v": "+bitexact"},
    )
    audio_out = ffmpeg.output(
        source_in["a:0"],
        str(wav_tmp),
        f="wav",
        ac=1,
        ar=sample_rate,
        **{"c:a": "pcm_s16le", "fflags": "+bitexact", "flags:a": "+bitexact"},
    )
    command = ffmpeg.merge_outputs(frame_out, audio_out).global_args("-hide_banner", "-nostdin", "-loglevel", "error")
    return command.overwrite_output().compile(cmd=ffmpeg_exe())


def _failure_reason(stderr: str, midpoint: float) -> str:
    """Classify a failed ffmpeg run from its (error-level) stderr."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    for line in lines:
        # ffmpeg 9 reports an unmatched `-map 0:a:0` as "Stream map '' matches no streams" followed by
        # "Failed to set value '0:a:0' for option 'map'"; other versions name the map in the first line.
        if "0:a:0" in line and ("matches no streams" in line or "option 'map'" in line):
            return "no audio stream"
        if ":v:0" in line and "matches no streams" in line:
            return "no video stream"
        # An output that received no packets at all fails the whole run (ffmpeg >= 7).
        empty = _EMPTY_OUTPUT.search(line)
        if empty:
            return f"no video frame at {midpoint!r} s" if empty["muxer"] == "image2" else "no audio decoded"
    meaningful = [_LOG_PREFIX.sub("", line) for line in lines if not _GENERIC_FFMPEG_LINES.match(line)]
    return f"corrupt media: {meaningful[-1] if meaningful else 'ffmpeg failed without a message'}"


def _run_ffmpeg(args: list[str], midpoint: float) -> None:
    """Run ffmpeg, turning failures and time-outs into `MediaError`."""
    try:
        proc = subprocess.run(args, capture_output=True, text=True, errors="replace", timeout=FFMPEG_TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        raise MediaError(f"ffmpeg timed out after {FFMPEG_TIMEOUT_S:g} s") from exc
    if proc.returncode != 0:
        raise MediaError(_failure_reason(proc.stderr, midpoint))


def _frame_size(frame_tmp: Path, midpoint: float) -> tuple[int, int]:
    """(width, height) of the extracted JPEG; `MediaError` if ffmpeg produced none."""
    if not frame_tmp.exists() or frame_tmp.stat().st_size == 0:
        raise MediaError(f"no video frame at {midpoint!r} s")
    try:
        with Image.open(frame_tmp) as image:
            image.load()
            return image.size
    except OSError as exc:
        raise MediaError(f"unreadable centre frame: {exc}") from exc


def _read_audio(wav_tmp: Path, sample_rate: int) -> np.ndarray:
    """The int16 mono samples ffmpeg decoded."""
    try:
        rate, samples = wavfile.read(wav_tmp)
    except (OSError, ValueError) as exc:
        raise MediaError(f"corrupt media: unreadable decoded audio ({exc})") from exc
    if rate != sample_rate or samples.dtype != np.int16 or samples.ndim != 1:
        raise MediaError(f"corrupt media: unexpected decoded audio ({rate} Hz, {samples.dtype}, {samples.shape})")
    return samples


def _fit_length(samples: np.ndarray, n_samples: int) -> np.ndarray:
    """`samples` zero-padded at the end or trimmed to exactly `n_samples`."""
    if samples.size >= n_samples:
        return samples[:n_samples]
    return np.concatenate([samples, np.zeros(n_samples - samples.size, dtype=samples.dtype)])


def peak_dbfs(samples: np.ndarray) -> float:
    """Peak level of int16 samples in dBFS (full scale = 32768); -inf for digital silence."""
    peak = int(np.max(np.abs(samples.astype(np.int32)))) if samples.size else 0
    return 20 * math.log10(peak / INT16_FULL_SCALE) if peak else -math.inf


def _write_finals(writers: list[tuple[Path, Callable[[BinaryIO], None]]]) -> None:
    """Write each final file atomically; if one fails, remove those already written and re-raise."""
    written: list[Path] = []
    try:
        for target, write in writers:
            with atomic_path(target) as tmp, open(tmp, "wb") as fh:
                write(fh)
            written.append(target)
    except BaseException:
        for target in written:
            target.unlink(missing_ok=True)
        raise


def extract_clip(
    source: Path,
    *,
    frame_path: Path,
    audio_path: Path,
    spec_path: Path,
    mel_path: Path,
    clip_seconds: float = 10.0,
    frame_size: int | None = 224,
    jpeg_quality: int = 2,
    sample_rate: int = 16000,
    silence_dbfs: float = -60.0,
) -> ExtractedClip:
    """Extract the centre frame, exactly `clip_seconds` of 16-bit mono audio and its features from `source`.

    The centre frame is the frame on screen at `clip_seconds / 2` (the last one stamped at or before it), scaled
    so its shorter side is `frame_size` (None keeps the source size), JPEG at `-q:v jpeg_quality`. The audio is
    the first `clip_seconds` of the first audio stream, downmixed and resampled, zero-padded at the end or
    trimmed to length. `spec_path` gets `log_spectrogram` (257, T) and `mel_path` `log_mel` (T, 128), both float32
    `.npy`. Raises `MediaError` for undecodable input, a missing audio or video stream, no frame at the midpoint,
    or audio whose peak is below `silence_dbfs`; then no final file is written.
    """
    if not Path(source).is_file():
        raise FileNotFoundError(f"no source file {source}")
    midpoint = clip_seconds / 2
    n_samples = round(clip_seconds * sample_rate)
    with tempfile.TemporaryDirectory(prefix="is4-extract-") as tmp_dir:
        frame_tmp, wav_tmp = Path(tmp_dir) / "frame.jpg", Path(tmp_dir) / "audio.wav"
        _run_ffmpeg(
            _ffmpeg_args(
                Path(source),
                frame_tmp,
                wav_tmp,
                clip_seconds=clip_seconds,
                frame_size=frame_size,
                jpeg_quality=jpeg_quality,
                sample_rate=sample_rate,
            ),
            midpoint,
        )
        width, height = _frame_size(frame_tmp, midpoint)
        decoded = _read_audio(wav_tmp, sample_rate)
        samples = _fit_length(decoded, n_samples)
        peak = peak_dbfs(samples)
        if peak < silence_dbfs:
            raise MediaError(f"silent audio (peak {peak:.1f} dBFS)")
        audio = samples.astype(np.float32) / INT16_FULL_SCALE
        spec, mel = log_spectrogram(audio, sample_rate), log_mel(audio, sample_rate)
        _write_finals(
            [
                (Path(frame_path), lambda fh: fh.write(frame_tmp.read_bytes())),
                (Path(audio_path), lambda fh: wavfile.write(fh, sample_rate, samples)),
                (Path(spec_path), lambda fh: np.save(fh, spec)),
                (Path(mel_path), lambda fh: np.save(fh, mel)),
            ]
        )
    return ExtractedClip(
        frame_path=Path(frame_path),
        audio_path=Path(audio_path),
        spec_path=Path(spec_path),
        mel_path=Path(mel_path),
        source_audio_sec=decoded.size / sample_rate,
        padded_sec=max(0, n_samples - decoded.size) / sample_rate,
        trimmed_sec=max(0, decoded.size - n_samples) / sample_rate,
        peak_dbfs=peak,
        frame_width=width,
        frame_height=height,
    )
