"""Audio views from a wav: the alignment method's log spectrogram of a time window (authors' inference input)."""

from __future__ import annotations

import numpy as np
from scipy import signal

from is4.config import AlignmentAudioConfig


def fit_clip(wav: np.ndarray, sample_rate: int, seconds: float) -> np.ndarray:
    """The clip tiled (if short) and cut to `seconds` (authors: tiled to 10 s)."""
    n = int(round(seconds * sample_rate))
    if len(wav) == 0:
        return np.zeros(n, dtype=np.float32)
    if len(wav) < n:
        wav = np.tile(wav, n // len(wav) + 1)
    return wav[:n]


def window_spectrogram(wav: np.ndarray, sample_rate: int, start: float, cfg: AlignmentAudioConfig) -> np.ndarray:
    """log(S + 1e-7) / scale of the window [start, start + window length) of the fitted clip, (F, T) float32.

    With the defaults this is SSLalignment's test input: 3.5-6.5 s of the 10-s clip, `scipy.signal.spectrogram(x,
    16000, nperseg=512, noverlap=353)` -> 257 x 299.
    """
    if sample_rate != cfg.sample_rate:
        raise ValueError(f"audio at {sample_rate} Hz, expected {cfg.sample_rate} Hz")
    clip = fit_clip(wav, sample_rate, cfg.clip_seconds)
    length = cfg.window[1] - cfg.window[0]
    a = int(round(start * sample_rate))
    x = np.clip(clip[a : a + int(round(length * sample_rate))], -1.0, 1.0).astype(np.float64)
    _, _, spec = signal.spectrogram(x, sample_rate, nperseg=cfg.nperseg, noverlap=cfg.noverlap)
    return (np.log(spec + 1e-7) / cfg.scale).astype(np.float32)


def random_start(rng: np.random.Generator, cfg: AlignmentAudioConfig) -> float:
    """A random window start in the clip (the paper's a_aug 'time-window shift'), on the sample grid."""
    length = cfg.window[1] - cfg.window[0]
    last = int(round((cfg.clip_seconds - length) * cfg.sample_rate))
    return int(rng.integers(0, max(last, 0) + 1)) / cfg.sample_rate
