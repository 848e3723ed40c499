"""Section downloads through the real yt-dlp path against the loopback server."""

from __future__ import annotations

from pathlib import Path

import pytest

from is4.config import DownloadConfig
from is4.manifests.ids import InvalidIdError
from is4.pipeline.ingest.download import DownloadFailure, classify_error, download_section
from is4.pipeline.ingest.extract import MediaError, extract_clip
from tests.conftest import CORRUPT_ID, GOOD_IDS, MISSING_ID, PRIVATE_ID, SLOW_ID


def _cfg(server, **kw) -> DownloadConfig:
    return DownloadConfig(url_template=server.url_template(), socket_timeout_s=2, retry_backoff_s=0.01, **kw)


def test_downloads_only_the_requested_section(media_server, video_dir: Path, tmp_path: Path) -> None:
    path, attempts = download_section(GOOD_IDS[0], 12, 10, tmp_path / "clip", _cfg(media_server))
    assert attempts == 1
    assert path == tmp_path / "clip.mp4"
    assert path.stat().st_size < 0.6 * (video_dir / f"{GOOD_IDS[0]}.mp4").stat().st_size
    assert not list(tmp_path.glob(".*")), "the partial-download directory is removed"
    # The section really is 12 s – 22 s of the source: 10 s long, and it can be decoded end to end.
    clip = extract_clip(path, frame_path=tmp_path / "f.jpg", audio_path=tmp_path / "a.wav",
                        spec_path=tmp_path / "s.npy", mel_path=tmp_path / "m.npy")
    assert clip.source_audio_sec == pytest.approx(10.0, abs=0.05)


def test_missing_video_is_permanent_and_not_retried(media_server, tmp_path: Path) -> None:
    with pytest.raises(DownloadFailure) as info:
        download_section(MISSING_ID, 0, 10, tmp_path / "clip", _cfg(media_server, retries=3))
    assert (info.value.kind, info.value.permanent, info.value.attempts) == ("not-found", True, 1)
    assert media_server.requests == 1


def test_private_video_is_permanent(media_server, tmp_path: Path) -> None:
    with pytest.raises(DownloadFailure) as info:
        download_section(PRIVATE_ID, 0, 10, tmp_path / "clip", _cfg(media_server, retries=3))
    assert info.value.kind == "private" and info.value.permanent
    assert "Private video" in str(info.value)


def test_stalled_server_times_out_and_is_retried_with_backoff(media_server, tmp_path: Path) -> None:
    sleeps: list[float] = []
    cfg = _cfg(media_server, retries=2)
    with pytest.raises(DownloadFailure) as info:
        download_section(SLOW_ID, 0, 10, tmp_path / "clip", cfg, sleep=sleeps.append)
    assert info.value.kind == "timeout" and not info.value.permanent
    assert info.value.attempts == 3
    assert sleeps == [cfg.retry_backoff_s, cfg.retry_backoff_s * 2]
    assert not list(tmp_path.iterdir()), "nothing is left behind by failed attempts"


def test_corrupt_source_fails_with_a_reason(media_server, tmp_path: Path) -> None:
    with pytest.raises(DownloadFailure) as info:
        download_section(CORRUPT_ID, 0, 10, tmp_path / "clip", _cfg(media_server, retries=0))
    assert info.value.kind == "ffmpeg-error"
    assert not (tmp_path / "clip.mp4").exists()


@pytest.mark.parametrize("ytid", ["../../etc/pa", "--exec=rm -rf", "abc", "a;b|c&d`e$f"])
def test_invalid_ids_never_reach_the_network(media_server, tmp_path: Path, ytid: str) -> None:
    with pytest.raises(InvalidIdError):
        download_section(ytid, 0, 10, tmp_path / "clip", _cfg(media_server))
    assert media_server.requests == 0


@pytest.mark.parametrize(
    ("message", "kind", "permanent"),
    [
        ("[youtube] abc: Video unavailable. This video has been removed by the uploader", "removed", True),
        ("[youtube] abc: Private video. Sign in if you've been granted access to this video", "private", True),
        ("[youtube] abc: Video unavailable", "unavailable", True),
        ("[youtube] abc: Sign in to confirm your age. This video may be inappropriate", "restricted", True),
        ("[youtube] abc: Requested format is not available", "no-format", True),
        ("Unable to download webpage: HTTP Error 404: Not Found", "not-found", True),
        ("Unable to download webpage: HTTP Error 503: Service Unavailable", "server-error", False),
        ("Unable to download webpage: HTTP Error 502: Bad Gateway", "server-error", False),
        ("Unable to download webpage: HTTP Error 429: Too Many Requests", "server-error", False),
        ("Read timed out. (read timeout=20)", "timeout", False),
        ("Connection reset by peer", "network", False),
    ],
)
def test_error_classification(message: str, kind: str, permanent: bool) -> None:
    assert classify_error(message) == (kind, permanent)


def test_extract_rejects_what_download_could_not_catch(video_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(MediaError, match="corrupt media"):
        extract_clip(video_dir / f"{CORRUPT_ID}.mp4", frame_path=tmp_path / "f.jpg", audio_path=tmp_path / "a.wav",
                     spec_path=tmp_path / "s.npy", mel_path=tmp_path / "m.npy")
