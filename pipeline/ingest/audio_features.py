"""Audio features stored beside each clip: the localisation log-spectrogram and a Kaldi-style log-mel filterbank."""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from scipy import signal

FRAME_LENGTH_MS = 25
FRAME_SHIFT_MS = 10
PREEMPHASIS = 0.97
LOW_FREQ_HZ = 20.0
INT16_SCALE = 32768.0
_LOG_FLOOR = float(np.finfo(np.float32).eps)


def log_spectrogram(audio: np.ndarray, sample_rate: int = 16000) -> np.ndarray:
    """Log power spectrogram as used by the public EZ-VSL / SLAVC localisation code, shape (257, T), float32.

    Exactly `scipy.signal.spectrogram(audio, sample_rate, nperseg=512, noverlap=274)` (scipy defaults otherwise:
    Tukey(0.25) window, constant detrend, density scaling) followed by `np.log(S + 1e-7)`. `audio` is float in
    [-1, 1]; 10 s at 16 kHz gives T = 671.
    """
    _, _, spec = signal.spectrogram(audio, sample_rate, nperseg=512, noverlap=274)
    return np.log(spec + 1e-7).astype(np.float32)


def mel_scale(freq_hz: np.ndarray | float) -> np.ndarray:
    """HTK/Kaldi mel scale: 1127 * ln(1 + f / 700)."""
    return 1127.0 * np.log1p(np.asarray(freq_hz, dtype=np.float64) / 700.0)


def mel_band_edges(sample_rate: int = 16000, n_mels: int = 128) -> np.ndarray:
    """Mel-scale (left, centre, right) points of each triangle, shape (n_mels, 3): equally spaced in mel."""
    mel_low, mel_high = mel_scale(LOW_FREQ_HZ), mel_scale(sample_rate / 2)
    points = mel_low + (mel_high - mel_low) / (n_mels + 1) * np.arange(n_mels + 2)
    return np.stack([points[:-2], points[1:-1], points[2:]], axis=1)


def frame_geometry(sample_rate: int = 16000) -> tuple[int, int, int]:
    """(frame length, frame shift, FFT size) in samples, Kaldi-style: (400, 160, 512) at 16 kHz."""
    length = int(sample_rate * FRAME_LENGTH_MS / 1000)
    shift = int(sample_rate * FRAME_SHIFT_MS / 1000)
    return length, shift, 1 << (length - 1).bit_length()


def mel_filterbank(sample_rate: int = 16000, n_mels: int = 128) -> np.ndarray:
    """Kaldi triangular filters over the n_fft // 2 + 1 power-spectrum bins, shape (n_mels, 257) at 16 kHz.

    Triangles are linear in mel (not Hz); the Nyquist bin gets weight 0, as in Kaldi / torchaudio. Low triangles
    are narrower than the 31.25 Hz bin spacing, so one can catch no bin at all (band 3 at 16 kHz / 128 bands) and
    always reads log(eps), exactly as in torchaudio.
    """
    n_fft = frame_geometry(sample_rate)[2]
    bin_mel = mel_scale(np.arange(n_fft // 2) * sample_rate / n_fft)[None, :]
    left, centre, right = (edge[:, None] for edge in mel_band_edges(sample_rate, n_mels).T)
    rising = (bin_mel - left) / (centre - left)
    falling = (right - bin_mel) / (right - centre)
    weights = np.maximum(0.0, np.minimum(rising, falling))
    return np.pad(weights, ((0, 0), (0, 1)))


def _povey_window(length: int) -> np.ndarray:
    """Kaldi's Povey window: a symmetric Hann window raised to 0.85."""
    n = np.arange(length)
    return (0.5 - 0.5 * np.cos(2 * np.pi * n / (length - 1))) ** 0.85


def log_mel(audio: np.ndarray, sample_rate: int = 16000, n_mels: int = 128) -> np.ndarray:
    """Kaldi-fbank-style log-mel filterbank, as BEATs / AST feed their encoders; shape (T, n_mels), float32.

    Conventions (those of `torchaudio.compliance.kaldi.fbank` with its defaults): `audio` is float in [-1, 1]
    and is scaled by 32768 to int16 range first (BEATs does the same); no dither; 25 ms frames (400 samples at
    16 kHz) every 10 ms (160 samples), snip edges (no padding), so T = 1 + (N - 400) // 160, 998 for 10 s; per
    frame the DC offset is removed, then pre-emphasis 0.97 (x[n] - 0.97 x[n-1], with x[-1] = x[0]), then the
    Povey window (symmetric Hann ** 0.85); the frame is zero-padded to the next power of two (512-point FFT)
    and its power spectrum |X|^2 is summed through `n_mels` HTK-mel triangles (1127 ln(1 + f/700), triangles
    linear in mel) spanning 20 Hz to sample_rate / 2; output is log(max(energy, float32 eps)). No
    per-utterance mean/std normalisation is applied; that is left to the model's own preprocessing.
    """
    length, shift, n_fft = frame_geometry(sample_rate)
    samples = np.asarray(audio, dtype=np.float64) * INT16_SCALE
    if samples.ndim != 1 or samples.size < length:
        raise ValueError(f"log_mel needs mono audio of at least {length} samples, got shape {samples.shape}")
    frames = sliding_window_view(samples, length)[::shift]
    frames = frames - frames.mean(axis=1, keepdims=True)
    previous = np.concatenate([frames[:, :1], frames[:, :-1]], axis=1)
    frames = (frames - PREEMPHASIS * previous) * _povey_window(length)
    power = np.abs(np.fft.rfft(frames, n=n_fft, axis=1)) ** 2
    energies = power @ mel_filterbank(sample_rate, n_mels).T
    return np.log(np.maximum(energies, _LOG_FLOOR)).astype(np.float32)
