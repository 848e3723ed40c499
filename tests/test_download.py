"""Section downloads through the real yt-dlp path against the loopback server."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import yt_dlp
from yt_dlp.extractor.youtube._video import YoutubeIE
from yt_dlp.networking import Response
from yt_dlp.networking.exceptions import HTTPError
from yt_dlp.utils import DownloadError, ExtractorError

from is4.config import DownloadConfig
from is4.manifests.ids import InvalidIdError
from is4.pipeline.ingest.download import DownloadFailure, _clean_message, _CollectingLogger, download_section
from is4.pipeline.ingest.errors import RULES, THROTTLING, classify_error, is_throttling, message_key, redact
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
    clip = extract_clip(
        path,
        frame_path=tmp_path / "f.jpg",
        audio_path=tmp_path / "a.wav",
        spec_path=tmp_path / "s.npy",
        mel_path=tmp_path / "m.npy",
    )
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


def test_corrupt_source_is_permanent_and_never_retried(media_server, tmp_path: Path) -> None:
    # A junk file served as a video: ffmpeg only says "exited with code 1"; the probe finds that it is no media.
    with pytest.raises(DownloadFailure) as info:
        download_section(CORRUPT_ID, 0, 10, tmp_path / "clip", _cfg(media_server, retries=2))
    assert (info.value.kind, info.value.permanent, info.value.attempts) == ("corrupt-source", True, 1)
    assert "ffmpeg exited with code" in str(info.value) and "media probe: " in str(info.value)
    assert "http://" not in str(info.value), "the media url is not in the reason"
    assert not (tmp_path / "clip.mp4").exists()


@pytest.mark.parametrize("ytid", ["../../etc/pa", "--exec=rm -rf", "abc", "a;b|c&d`e$f"])
def test_invalid_ids_never_reach_the_network(media_server, tmp_path: Path, ytid: str) -> None:
    with pytest.raises(InvalidIdError):
        download_section(ytid, 0, 10, tmp_path / "clip", _cfg(media_server))
    assert media_server.requests == 0


# --- The message table against the messages of the installed yt-dlp ----------------------------------------------
#
# Each case is (message, kind, permanent, cited file under yt_dlp/, text that must be in that file). Messages the
# YouTube extractor composes from YouTube's playability reason are made by the installed extractor itself, fed a
# player response with that reason (`_youtube_error`); the reasons are YouTube's words, cited in `errors.py`.

YT_DLP = Path(yt_dlp.__file__).parent
VIDEO = "extractor/youtube/_video.py"


def _youtube_error(monkeypatch, reason: str, subreason: str | None = None, captcha: bool = False) -> str:
    """The error the installed YouTube extractor reports for a video whose player response says `reason`."""
    pemr = {"reason": {"simpleText": reason}} | ({"subreason": {"simpleText": subreason}} if subreason else {})
    screen = {"playerErrorMessageRenderer": pemr} | (
        {"playerCaptchaViewModel": {"title": "captcha"}} if captcha else {}
    )
    response = {"playabilityStatus": {"status": "UNPLAYABLE", "reason": reason, "errorScreen": screen}}
    # Everything but the download of the player response runs: webpage, initial data and player are skipped.
    monkeypatch.setattr(YoutubeIE, "_initial_extract", lambda *_a, **_k: (None, {}, None, False, [response], None))
    logger = _CollectingLogger()
    # A dead loopback proxy: were any request made after all, it would fail here, never reach the network.
    opts = {"logger": logger, "quiet": True, "cachedir": False, "proxy": "http://127.0.0.1:9"}
    with yt_dlp.YoutubeDL(opts) as ydl, pytest.raises(DownloadError):
        ydl.extract_info("https://www.youtube.com/watch?v=abcdefghijk", download=False)
    return _clean_message(logger.errors[-1])


def _http_error(status: int, reason: str) -> HTTPError:
    return HTTPError(Response(io.BytesIO(b""), "http://127.0.0.1/x", {}, status=status, reason=reason))


def _webpage_error(status: int, reason: str) -> str:
    # extractor/common.py _request_webpage: errmsg = f'{errnote}: {err}'; ExtractorError(errmsg, cause=err)
    err = _http_error(status, reason)
    return str(ExtractorError(f"Unable to download webpage: {err}", cause=err, expected=True))


YOUTUBE_REASONS = [
    # (reason, subreason, captcha), kind, permanent, cited file, cited text
    (
        ("Video unavailable", "This content isn't available, try again later.", False),
        "rate-limited",
        False,
        VIDEO,
        "has been rate-limited by YouTube for up to an hour",
    ),
    (
        ("Sign in to confirm you\u2019re not a bot", "This helps protect our community. Learn more", False),
        "bot-check",
        False,
        VIDEO,
        "if 'sign in' in reason.lower():",
    ),
    (
        ("Video unavailable", None, True),
        "bot-check",
        False,
        VIDEO,
        "YouTube is requiring a captcha challenge before playback",
    ),
    (
        ("Private video", "Sign in if you've been granted access to this video", False),
        "private",
        True,
        VIDEO,
        "'skip': 'Private video'",
    ),
    (
        ("Sign in to confirm your age", "This video may be inappropriate for some users.", False),
        "age-restricted",
        True,
        VIDEO,
        "'confirm your age', 'age-restricted', 'inappropriate',",
    ),
    (
        (
            "Join this channel to get access to members-only content like this video, and other exclusive perks.",
            None,
            False,
        ),
        "members-only",
        True,
        VIDEO,
        "self.raise_no_formats(reason, expected=True)",
    ),
    (
        ("Video unavailable", "This video has been removed by the uploader", False),
        "removed",
        True,
        VIDEO,
        "if subreason != reason:",
    ),
    (
        ("This video has been removed for violating YouTube's policy on hate speech.", None, False),
        "removed",
        True,
        VIDEO,
        "removed for violating YouTube",
    ),
    (
        (
            "Video unavailable",
            "This video is no longer available because the YouTube account associated with this "
            "video has been terminated.",
            False,
        ),
        "account-terminated",
        True,
        VIDEO,
        "reason += f'. {subreason}'",
    ),
    (
        ("Video unavailable", "This video is no longer available due to a copyright claim by Sarah Ann Kennedy", False),
        "copyright",
        True,
        VIDEO,
        "reason += f'. {subreason}'",
    ),
    (
        (
            "Video unavailable",
            "This video contains content from Paramount Global (CBS), who has blocked it in your "
            "country on copyright grounds",
            False,
        ),
        "copyright",
        True,
        VIDEO,
        "reason += f'. {subreason}'",
    ),
    (
        ("Video unavailable", "The uploader has not made this video available in your country", False),
        "geo-blocked",
        True,
        VIDEO,
        "self.raise_geo_restricted(subreason, countries, metadata_available=True)",
    ),
    (("Premieres in 6 hours", None, False), "live-or-premiere", False, VIDEO, "is_upcoming"),
    (("This live event will begin in 2 days.", None, False), "live-or-premiere", False, VIDEO, "is_upcoming"),
    (("Video unavailable", None, False), "unavailable", True, VIDEO, "'skip': 'Video unavailable'"),
    (
        ("This video is not available.", None, False),
        "unavailable",
        True,
        VIDEO,
        "'skip': 'This video is not available.'",
    ),
    (("This video does not exist.", None, False), "not-found", True, VIDEO, "'skip': 'This video does not exist.'"),
]

YT_DLP_MESSAGES = [
    # message (as yt-dlp's own code writes it), kind, permanent, cited file, cited text
    (
        _webpage_error(429, "Too Many Requests"),
        "http-429",
        False,
        "networking/exceptions.py",
        "msg = f'HTTP Error {response.status}: {response.reason}'",
    ),
    (
        f"unable to download video data: {_http_error(403, 'Forbidden')}",
        "http-403-media",
        False,
        "YoutubeDL.py",
        "self.report_error(f'unable to download video data: {err}')",
    ),
    (
        f"ffmpeg exited with code 8; media fetch: {_http_error(403, 'Forbidden')}",
        "http-403-media",
        False,
        "downloader/external.py",
        "'%s exited with code %d'",
    ),
    (
        f"ffmpeg exited with code 8; media fetch: {_http_error(429, 'Too Many Requests')}",
        "http-429",
        False,
        "downloader/external.py",
        "'%s exited with code %d'",
    ),
    ("ffmpeg exited with code 8", "ffmpeg-error", False, "downloader/external.py", "'%s exited with code %d'"),
    (
        "The downloaded file is empty",
        "empty-file",
        False,
        "downloader/fragment.py",
        "self.report_error('The downloaded file is empty')",
    ),
    (
        "All player responses are invalid. Your IP is likely being blocked by Youtube",
        "bot-check",
        False,
        VIDEO,
        "'All player responses are invalid. Your IP is likely being blocked by Youtube'",
    ),
    (_webpage_error(404, "Not Found"), "not-found", True, "networking/exceptions.py", "class HTTPError"),
    (_webpage_error(410, "Gone"), "not-found", True, "networking/exceptions.py", "class HTTPError"),
    (_webpage_error(503, "Service Unavailable"), "server-error", False, "networking/exceptions.py", "class HTTPError"),
    (_webpage_error(502, "Bad Gateway"), "server-error", False, "networking/exceptions.py", "class HTTPError"),
    (
        "[youtube] abcdefghijk: Requested format is not available. Use --list-formats for a list of available formats",
        "no-format",
        True,
        "YoutubeDL.py",
        "'Requested format is not available. Use --list-formats for a list of available formats'",
    ),
    ("[generic] abcdefghijk: No video formats found!", "no-format", True, "YoutubeDL.py", "'No video formats found!'"),
    (
        "[youtube] abcdefghijk: This video is DRM protected",
        "drm",
        True,
        "extractor/common.py",
        "self.raise_no_formats('This video is DRM protected'",
    ),
    (
        "[youtube] abcdefghijk: This video is only available for registered users. Use --cookies-from-browser or "
        "--cookies for the authentication.",
        "login-required",
        True,
        "extractor/common.py",
        "msg='This video is only available for registered users'",
    ),
    (
        "[youtube:tab] Login details are needed to download this content.",
        "login-required",
        True,
        "extractor/youtube/_base.py",
        "f'Login details are needed to download this content.",
    ),
    (
        "[youtube] abcdefghijk: This video is not available from your location due to geo restriction",
        "geo-blocked",
        True,
        "extractor/common.py",
        "msg='This video is not available from your location due to geo restriction'",
    ),
    (
        "Postprocessing: Invalid data found when processing input",
        "corrupt-source",
        True,
        "YoutubeDL.py",
        "self.report_error(f'Postprocessing: {err}')",
    ),
    (
        "Unable to download webpage: <urlopen error timed out> (caused by TransportError('timed out'))",
        "timeout",
        False,
        "networking/_urllib.py",
        "raise TransportError(cause=e) from e",
    ),
    (
        "Connection to 127.0.0.1 timed out. (connect timeout=20.0)",
        "timeout",
        False,
        "networking/_requests.py",
        "f'Connection to {self.host} timed out. (connect timeout={self.timeout})'",
    ),
    (
        "Got error: 1000 bytes read, 9000 more expected",
        "network",
        False,
        "networking/exceptions.py",
        "msg = f'{partial} bytes read'",
    ),
    # Not an expected error: yt-dlp appends its bug-report note ("…Confirm you are on the latest version…"),
    # which must not read as a bot check: an unknown message, transient.
    (
        str(ExtractorError("[youtube] abcdefghijk: Failed to extract any player response")),
        "unknown",
        False,
        VIDEO,
        "raise ExtractorError('Failed to extract any player response')",
    ),
]


@pytest.mark.parametrize(
    ("reason", "kind", "permanent", "cited", "text"),
    YOUTUBE_REASONS,
    ids=[c[1] + ":" + c[0][0][:24] for c in YOUTUBE_REASONS],
)
def test_youtube_extractor_messages(monkeypatch, reason, kind: str, permanent: bool, cited: str, text: str) -> None:
    message = _youtube_error(monkeypatch, *reason)
    assert message.startswith("[youtube] abcdefghijk: ")
    assert classify_error(message) == (kind, permanent), message
    assert is_throttling(kind) == (kind in THROTTLING) and not (is_throttling(kind) and permanent)


@pytest.mark.parametrize(
    ("message", "kind", "permanent", "cited", "text"),
    YT_DLP_MESSAGES,
    ids=[c[1] + ":" + c[0][:30] for c in YT_DLP_MESSAGES],
)
def test_yt_dlp_messages(message: str, kind: str, permanent: bool, cited: str, text: str) -> None:
    assert classify_error(message) == (kind, permanent), message


def test_the_rate_limit_message_of_the_issue_is_throttling_not_unavailable(monkeypatch) -> None:
    message = _youtube_error(monkeypatch, "Video unavailable", "This content isn't available, try again later.")
    assert message.startswith(
        "[youtube] abcdefghijk: Video unavailable. This content isn't available, try again "
        "later. The current session has been rate-limited by YouTube for up to an hour."
    )
    kind, permanent = classify_error(message)
    assert (kind, permanent, is_throttling(kind)) == ("rate-limited", False, True)


def test_every_cited_text_is_in_the_installed_yt_dlp_and_every_rule_is_exercised() -> None:
    for *_, cited, text in YOUTUBE_REASONS + YT_DLP_MESSAGES:
        assert text in (YT_DLP / cited).read_text(encoding="utf-8"), f"{cited} no longer says {text!r}"
    covered = {c[1] for c in YOUTUBE_REASONS + YT_DLP_MESSAGES}
    assert {rule.kind for rule in RULES} <= covered
    assert THROTTLING <= covered and all(not rule.permanent for rule in RULES if rule.kind in THROTTLING)


def test_unknown_messages_are_transient_and_counted_by_their_text() -> None:
    assert classify_error("Something YouTube never said before") == ("unknown", False)
    assert (
        message_key("ERROR: [youtube] abcdefghijk: Weird thing for abcdefghijk", "abcdefghijk")
        == "Weird thing for {ytid}"
    )


def test_proxy_credentials_never_reach_a_message() -> None:
    proxy = "http://alice:s3cret@127.0.0.1:3128"
    text = f"Unable to connect to proxy {proxy}; retried via https://bob:pw@127.0.0.1:1"
    cleaned = redact(text, (proxy,))
    assert "s3cret" not in cleaned and "pw@" not in cleaned and "alice" not in cleaned
    assert cleaned.count("<redacted>") == 2


def test_extract_rejects_what_download_could_not_catch(video_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(MediaError, match="corrupt media"):
        extract_clip(
            video_dir / f"{CORRUPT_ID}.mp4",
            frame_path=tmp_path / "f.jpg",
            audio_path=tmp_path / "a.wav",
            spec_path=tmp_path / "s.npy",
            mel_path=tmp_path / "m.npy",
        )
