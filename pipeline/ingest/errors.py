"""What a yt-dlp error message means for a clip: its kind, whether retrying can ever help, whether it is throttling.

`RULES` is the one table, taken from the messages the installed yt-dlp raises (file names are relative to the
`yt_dlp` package; `tests/test_download.py` checks each message against its rule and that every cited piece of text
is still in the cited file). Many YouTube messages are YouTube's own `playabilityStatus` reason, which
`extractor/youtube/_video.py` passes on (adding a cookies hint after "sign in", the rate-limit explanation after
"try again later"); those are cited to the issue threads that quote them. First match wins.

Throttling kinds are never permanent: the session is paused and the same clip tried again. A message no rule knows
is transient (`unknown`) and is counted by its text, so a new YouTube message shows up in the run's summary.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

THROTTLING = frozenset({"rate-limited", "bot-check", "http-429", "http-403-media", "empty-file"})
UNKNOWN = "unknown"


@dataclass(frozen=True)
class Rule:
    """A message pattern and what it means."""

    pattern: re.Pattern[str]
    kind: str
    permanent: bool


def _rule(pattern: str, kind: str, permanent: bool) -> Rule:
    return Rule(re.compile(pattern, re.I), kind, permanent)


# YouTube writes "you’re" with a typographic apostrophe, yt-dlp "isn't" with a plain one; logs mangle either.
_QUOTE = ".?"

RULES: tuple[Rule, ...] = (
    # --- throttling: the session, not the video (never permanent) -------------------------------------------
    # extractor/youtube/_video.py: "This content isn't available, try again later" + "…has been rate-limited by
    # YouTube for up to an hour…"; the reason starts with "Video unavailable", so this precedes `unavailable`.
    _rule(rf"rate-limited by YouTube|content isn{_QUOTE}t available, try again later", "rate-limited", False),
    # YouTube's "Sign in to confirm you’re not a bot" (yt-dlp issues #10128, #10507), passed on with the cookies
    # hint by extractor/youtube/_video.py; "YouTube is requiring a captcha challenge before playback" and
    # "All player responses are invalid. Your IP is likely being blocked by Youtube" come from the same file.
    _rule(rf"confirm you{_QUOTE}re not a bot|captcha challenge|IP is likely being blocked", "bot-check", False),
    # networking/exceptions.py: HTTPError is "HTTP Error {status}: {reason}".
    _rule(r"HTTP Error 429\b", "http-429", False),
    # YoutubeDL.py: "unable to download video data: {err}"; `download.py` adds "media fetch: {err}" when ffmpeg,
    # which fetches the section, fails and a probe of the media url answers 403.
    _rule(r"(unable to download video data|media fetch): HTTP Error 403\b", "http-403-media", False),
    # downloader/fragment.py: "The downloaded file is empty"; `download.py` says the same of an empty section.
    _rule(r"downloaded file is empty", "empty-file", False),
    # --- the video: permanent ------------------------------------------------------------------------------
    # YouTube's "Private video. Sign in if you've been granted access to this video" (_video.py test cases).
    _rule(r"private video|video is private", "private", True),
    # YouTube's "Join this channel to get access to members-only content like this video, and other exclusive
    # perks." (ytdl-org/youtube-dl issue #31238).
    _rule(r"members-only|members only|available to this channel.s members", "members-only", True),
    # extractor/youtube/_video.py AGE_GATE_REASONS: 'confirm your age', 'age-restricted', 'inappropriate'.
    _rule(r"confirm your age|age-restricted|age restricted|inappropriate for some users", "age-restricted", True),
    # YouTube's "This video is no longer available because the YouTube account associated with this video has
    # been terminated." (the reason for videos of terminated channels, yt-dlp issue #9367).
    _rule(
        r"account associated with this video has been terminated|account has been terminated",
        "account-terminated",
        True,
    ),
    # YouTube's "…no longer available due to a copyright claim by X" (meeb/tubesync issue #478) and "…who has
    # blocked it in your country on copyright grounds" (chelaxian/tg-ytdlp-bot issue #176).
    _rule(r"copyright", "copyright", True),
    # YouTube's "This video has been removed by the uploader" / "…removed for violating YouTube's policy on hate
    # speech." (_video.py test cases).
    _rule(r"has been removed|been removed for violating|no longer available", "removed", True),
    # extractor/common.py raise_geo_restricted: "This video is not available from your location due to geo
    # restriction"; _video.py passes on YouTube's "The uploader has not made this video available in your country".
    _rule(r"geo restriction|available in your country|not available from your location", "geo-blocked", True),
    # extractor/common.py raise_login_required: "This video is only available for registered users";
    # extractor/youtube/_base.py: "Login details are needed to download this content".
    _rule(r"only available for registered users|login details are needed|login required", "login-required", True),
    # extractor/common.py report_drm / YoutubeDL.py raise_no_formats: "This video is DRM protected".
    _rule(r"DRM protected", "drm", True),
    # ffmpeg's words for bytes that are no media (`download.py` adds them from a probe when the media url serves
    # a file ffmpeg cannot read): before `not-found`, which "moov atom not found" would otherwise match.
    _rule(r"Invalid data found|moov atom not found|could not find codec|error opening input", "corrupt-source", True),
    # HTTP 404/410 (networking/exceptions.py) and YouTube's "This video does not exist." (_video.py test cases).
    _rule(r"HTTP Error 4(04|10)\b|not found|does not exist", "not-found", True),
    # YoutubeDL.py: "Requested format is not available…", "No video formats found!"; "Unsupported URL".
    _rule(r"unsupported url|requested format is not available|no video formats", "no-format", True),
    # --- the video, but only for now ------------------------------------------------------------------------
    # YouTube's "Premieres in 6 hours" / "This live event will begin in 2 days." (jmbannon/ytdl-sub issue #1323).
    _rule(r"premieres? in|premiere will begin|live event will begin", "live-or-premiere", False),
    # YouTube's bare "Video unavailable" / "This video is not available." (_video.py test cases): after every more
    # specific reason above.
    _rule(r"video unavailable|not available|unavailable", "unavailable", True),
    # --- the network and the tools: transient ----------------------------------------------------------------
    # networking/exceptions.py HTTPError 5xx; a server error whatever its reason phrase ("503 Service Unavailable").
    _rule(r"HTTP Error 5\d\d\b", "server-error", False),
    _rule(r"timed out|timeout", "timeout", False),
    # downloader/external.py: "ffmpeg exited with code N" (a broken source and a broken connection alike).
    _rule(r"ffmpeg exited with code", "ffmpeg-error", False),
    _rule(
        r"connection (reset|refused|aborted)|remote end closed|name or service not known|temporary failure in "
        r"name resolution|network is unreachable|incomplete ?read|bytes read",
        "network",
        False,
    ),
)

# A server error wins over the words of its reason phrase ("HTTP Error 503: Service Unavailable").
_SERVER_ERROR = re.compile(r"HTTP Error 5\d\d\b")
_PREFIX = re.compile(r"^(ERROR:\s*)?(\[[\w:+-]+\]\s*)?([\w-]{11}:\s*)?")


def classify_error(message: str) -> tuple[str, bool]:
    """(kind, permanent) for a yt-dlp error message; unknown messages are transient."""
    if _SERVER_ERROR.search(message) and not any(r.pattern.search(message) for r in RULES if r.kind in THROTTLING):
        return "server-error", False
    for rule in RULES:
        if rule.pattern.search(message):
            return rule.kind, rule.permanent
    return UNKNOWN, False


def is_throttling(kind: str) -> bool:
    """True for the kinds that mean the session is being throttled (pause and retry the same clip)."""
    return kind in THROTTLING


def reason_kind(reason: str) -> str:
    """The class of a recorded failure reason (`timeout: …` → `timeout`), for counting failures by reason."""
    return re.split(r"[:(]", reason, maxsplit=1)[0].strip()


def message_key(message: str, ytid: str | None = None) -> str:
    """A message without its `ERROR: [extractor] <id>:` prefix and with the video id replaced, for counting."""
    text = _PREFIX.sub("", message.strip(), count=1)
    if ytid:
        text = text.replace(ytid, "{ytid}")
    return text[:200]


def redact(message: str, secrets: tuple[str, ...] = ()) -> str:
    """`message` with every configured secret (proxy urls) and any `user:password@` in a url taken out."""
    for secret in secrets:
        if secret:
            message = message.replace(secret, "<redacted>")
    return re.sub(r"(\b[a-z][a-z0-9+.-]*://)[^/\s:@]+:[^/\s@]+@", r"\1<redacted>@", message, flags=re.I)
