"""Audio features: the localisation spectrogram equals scipy's, the log-mel matches a slow Kaldi reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import signal

from is4.pipeline.ingest.audio_features import log_mel, log_spectrogram

SR = 16000


def _sine(freq_hz: float, seconds: float = 10.0, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(round(seconds * SR)) / SR
    return (amplitude * np.sin(2 * np.pi * freq_hz * t)).astype(np.float32)


def _mel(freq_hz: float) -> float:
    return 1127.0 * math.log(1.0 + freq_hz / 700.0)


def _inverse_mel(mel: float) -> float:
    return 700.0 * (math.exp(mel / 1127.0) - 1.0)


def _band_centres_hz(n_mels: int = 128) -> np.ndarray:
    low, high = _mel(20.0), _mel(SR / 2)
    return np.array([_inverse_mel(low + (high - low) * (b + 1) / (n_mels + 1)) for b in range(n_mels)])


def _reference_fbank(audio: np.ndarray, n_mels: int = 128) -> np.ndarray:
    """Straightforward per-frame Kaldi fbank (torchaudio.compliance.kaldi.fbank defaults), loops everywhere."""
    x = [float(v) * 32768.0 for v in audio]
    length, shift, n_fft = 400, 160, 512
    window = [(0.5 - 0.5 * math.cos(2 * math.pi * n / (length - 1))) ** 0.85 for n in range(length)]
    low, high = _mel(20.0), _mel(SR / 2)
    delta = (high - low) / (n_mels + 1)
    weights = np.zeros((n_mels, n_fft // 2 + 1))
    for b in range(n_mels):
        left, centre, right = low + b * delta, low + (b + 1) * delta, low + (b + 2) * delta
        for k in range(n_fft // 2):  # Kaldi leaves the Nyquist bin out of every filter
            m = _mel(k * SR / n_fft)
            if left < m < right:
                weights[b, k] = (m - left) / (centre - left) if m <= centre else (right - m) / (right - centre)
    rows = []
    for start in range(0, len(x) - length + 1, shift):
        frame = x[start : start + length]
        mean = sum(frame) / length
        frame = [v - mean for v in frame]
        emphasised = [frame[n] - 0.97 * frame[n - 1] if n else frame[0] - 0.97 * frame[0] for n in range(length)]
        windowed = np.array([v * w for v, w in zip(emphasised, window)] + [0.0] * (n_fft - length))
        power = np.abs(np.fft.rfft(windowed)) ** 2
        eps = float(np.finfo(np.float32).eps)
        rows.append([math.log(max(float(weights[b] @ power), eps)) for b in range(n_mels)])
    return np.array(rows)


def test_log_spectrogram_shape_dtype_and_tone_bin() -> None:
    spec = log_spectrogram(_sine(1000.0))
    assert spec.dtype == np.float32
    assert spec.shape == (257, 671)
    peak_bins = spec.argmax(axis=0)
    assert np.all(peak_bins * SR / 512 == 1000.0)


def test_log_spectrogram_is_exactly_the_scipy_formula() -> None:
    audio = np.random.default_rng(7).uniform(-1, 1, 3 * SR)
    _, _, expected = signal.spectrogram(audio, SR, nperseg=512, noverlap=274)
    np.testing.assert_array_equal(log_spectrogram(audio, SR), np.log(expected + 1e-7).astype(np.float32))


@pytest.mark.parametrize(("n_samples", "frames"), [(10 * SR, 998), (SR, 98), (400, 1), (559, 1), (560, 2)])
def test_log_mel_frame_count_snips_edges(n_samples: int, frames: int) -> None:
    mel = log_mel(np.zeros(n_samples, dtype=np.float32))
    assert mel.shape == (frames, 128)
    assert mel.dtype == np.float32


def test_log_mel_rejects_audio_shorter_than_a_frame() -> None:
    with pytest.raises(ValueError):
        log_mel(np.zeros(399))


def test_log_mel_of_silence_is_the_log_floor() -> None:
    mel = log_mel(np.zeros(SR))
    assert np.all(mel == np.float32(math.log(np.finfo(np.float32).eps)))


@pytest.mark.parametrize("freq_hz", [440.0, 3000.0])
def test_log_mel_tone_peaks_in_nearest_band(freq_hz: float) -> None:
    mel = log_mel(_sine(freq_hz))
    assert mel.shape == (998, 128)
    nearest = int(np.abs(_band_centres_hz() - freq_hz).argmin())
    assert np.all(mel.argmax(axis=1) == nearest)


def test_log_mel_matches_slow_reference() -> None:
    audio = np.random.default_rng(3).uniform(-0.5, 0.5, 4000).astype(np.float32)
    expected = _reference_fbank(audio)
    actual = log_mel(audio)
    assert actual.shape == expected.shape == (23, 128)
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-4)


def test_log_mel_scales_with_amplitude_like_a_power_spectrum() -> None:
    quiet, loud = log_mel(_sine(1000.0, 1.0, 0.05)), log_mel(_sine(1000.0, 1.0, 0.5))
    band = int(quiet.mean(axis=0).argmax())
    np.testing.assert_allclose(loud[:, band] - quiet[:, band], 2 * math.log(10.0), atol=1e-3)
