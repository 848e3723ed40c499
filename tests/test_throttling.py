"""Ingest against a server that throttles like YouTube: the shared governor, pauses, giving up, resuming, sessions.

Time is scaled down: the server's window and cool-down and the governor's pauses are fractions of a second, a cap
of thousands of videos per hour. Real yt-dlp, real ffmpeg, every server and the proxy on 127.0.0.1.
"""

from __future__ import annotations

import http.client
import http.server
import json
import logging
import random
import re
import shlex
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from is4.config import DownloadConfig, ExtractConfig, IngestConfig, parse_config
from is4.manifests.io import manifest_path, read_manifest
from is4.manifests.journal import Journal
from is4.pipeline.demo.media_server import MediaServer, RangeRequestHandler, Throttle
from is4.pipeline.ingest.download import retry_after_seconds
from is4.pipeline.ingest.governor import GiveUp, Governor
from is4.pipeline.ingest.ingest import JOURNAL, IngestIncomplete, ingest_stage, run_ingest
from is4.pipeline.ingest.session import CookiesError, Session, load_cookies
from is4.pipeline.registry import BY_NAME
from tests.conftest import GOOD_IDS
from tests.support import IS4

# --------------------------------------------------------------------------------------------------------------
# The governor, on a fake clock
# --------------------------------------------------------------------------------------------------------------


class FakeClock:
    """A clock that only moves when someone waits."""

    def __init__(self, start: float = 1_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def wait(self, seconds: float) -> bool:
        self.now += seconds
        return False


def _governor(tmp_path: Path, clock: FakeClock, **settings) -> Governor:
    return Governor(
        tmp_path / "governor.json", DownloadConfig(**settings), clock=clock, wait=clock.wait, rng=random.Random(0)
    )


def _max_in_window(times: list[float], window: float) -> int:
    """The most events in any half-open window [t, t + window) (a window starting at an event holds the most)."""
    ordered = sorted(times)
    return max(sum(1 for u in ordered if t <= u < t + window) for t in ordered)


def test_bucket_spaces_video_starts_by_the_cap(tmp_path: Path) -> None:
    clock = FakeClock()
    governor = _governor(tmp_path, clock, max_videos_per_hour=720.0)  # one every 5 s
    grants = [governor.acquire().granted_at for _ in range(12)]
    assert [round(b - a, 9) for a, b in zip(grants, grants[1:])] == [5.0] * 11
    for window in (5.0, 12.5, 30.0):
        assert _max_in_window(grants, window) <= window * 720 / 3600 + 1


def test_without_a_cap_there_is_no_waiting(tmp_path: Path) -> None:
    clock = FakeClock()
    governor = _governor(tmp_path, clock)
    assert {governor.acquire().granted_at for _ in range(5)} == {clock.now}


def test_a_token_promised_under_slower_settings_is_not_waited_for(tmp_path: Path) -> None:
    clock = FakeClock()
    _governor(tmp_path, clock, max_videos_per_hour=1.0).acquire()  # an earlier run: the next token in an hour
    start = clock.now
    _governor(tmp_path, clock, max_videos_per_hour=3600.0).acquire()
    assert clock.now == pytest.approx(start + 1.0), "waits what its own cap asks (1 s), not the old hour"


def test_sleep_interval_is_jittered_within_its_bounds(tmp_path: Path) -> None:
    clock = FakeClock()
    governor = _governor(tmp_path, clock, sleep_interval_s=[2.0, 4.0])
    grants = [governor.acquire().granted_at for _ in range(30)]
    gaps = [b - a for a, b in zip(grants, grants[1:])]
    assert all(2.0 <= g <= 4.0 for g in gaps) and max(gaps) - min(gaps) > 1.0


def test_throttling_pauses_the_session_with_capped_exponential_cooldown(tmp_path: Path) -> None:
    clock = FakeClock()
    governor = _governor(tmp_path, clock, cooldown_s=10.0, cooldown_max_s=40.0, give_up_after_s=None)
    in_flight = governor.acquire()  # a second worker's attempt, started before the first pause
    pauses = []
    for _ in range(4):
        ticket = governor.acquire()  # waits out the previous pause
        pauses.append(governor.throttled(ticket, "rate-limited").seconds)
        assert governor.throttled(in_flight, "rate-limited") is None, "an attempt from before the pause adds none"
    assert pauses == [10.0, 20.0, 40.0, 40.0]
    paused_from = clock.now
    ticket = governor.acquire()
    assert clock.now == pytest.approx(paused_from + 40.0), "nobody starts while the session is paused"
    governor.succeeded(ticket)
    assert governor.throttled(governor.acquire(), "http-429").seconds == 40.0, "the pause that worked comes first"


def test_a_run_throttled_past_give_up_after_stops_and_the_pause_stays_for_others(tmp_path: Path) -> None:
    clock = FakeClock()
    governor = _governor(tmp_path, clock, cooldown_s=10.0, cooldown_max_s=40.0, give_up_after_s=60.0)
    governor.throttled(governor.acquire(), "bot-check")  # pause 10 s, until t0 + 10
    governor.throttled(governor.acquire(), "bot-check")  # pause 20 s, until t0 + 30
    with pytest.raises(GiveUp, match="give_up_after_s"):
        governor.throttled(governor.acquire(), "bot-check")  # would end at t0 + 70 > t0 + 60
    other = _governor(tmp_path, clock, cooldown_s=10.0, cooldown_max_s=40.0, give_up_after_s=None)
    before = clock.now
    other.acquire()
    assert clock.now == pytest.approx(before + 40.0), "another process waits out the pause that was recorded"


def test_after_a_pause_one_probe_goes_first_and_the_others_wait_for_its_success(tmp_path: Path) -> None:
    clock = FakeClock()
    outcomes: list = []  # what the probe's download does while a second worker waits

    def wait(seconds: float) -> bool:
        clock.wait(seconds)
        if outcomes:
            outcomes.pop(0)()
        return False

    settings = DownloadConfig(cooldown_s=10.0, cooldown_max_s=40.0, give_up_after_s=None)
    governor = Governor(tmp_path / "governor.json", settings, clock=clock, wait=wait, rng=random.Random(0))
    start = clock.now
    governor.throttled(governor.acquire(), "http-429")  # pause 10 s
    probe = governor.acquire()
    assert probe.probe and clock.now == pytest.approx(start + 10.0)
    outcomes.append(lambda: governor.throttled(probe, "http-429"))  # still refused: pause 20 s
    second = governor.acquire()
    assert second.probe, "the pause after a throttled probe ends with a probe again"
    assert clock.now > start + 10.0 + 20.0 - 1e-6, "nobody went before the probe was answered and the pause ended"
    outcomes += [lambda: None, lambda: None, lambda: governor.released(second)]  # it fails for another reason
    third = governor.acquire()
    assert third.probe and clock.now > second.granted_at, "the next worker waits, then probes in its place"
    outcomes += [lambda: None, lambda: governor.succeeded(third)]
    others = [governor.acquire() for _ in range(3)]
    assert not any(t.probe for t in others) and min(t.granted_at for t in others) > third.granted_at
    assert {t.granted_at for t in others} == {clock.now}, "after the probe's success everyone goes at once"


def test_the_next_episode_starts_with_the_pause_that_ended_the_last_one(tmp_path: Path) -> None:
    clock = FakeClock()
    governor = _governor(tmp_path, clock, cooldown_s=10.0, cooldown_max_s=80.0, give_up_after_s=None)
    first = [governor.throttled(governor.acquire(), "http-429") for _ in range(3)]  # 10, 20, 40 s
    governor.succeeded(governor.acquire())  # the probe after 40 s worked
    for _ in range(3):  # later episodes: one pause of 40 s each, one probe, no knock after 10 or 20 s
        later = governor.throttled(governor.acquire(), "http-429")
        governor.succeeded(governor.acquire())
        assert later is not None and later.seconds == 40.0
    assert [p.seconds for p in first if p] == [10.0, 20.0, 40.0]


def test_a_probe_whose_process_died_does_not_hold_the_others(tmp_path: Path) -> None:
    clock = FakeClock()
    governor = _governor(tmp_path, clock, cooldown_s=10.0, give_up_after_s=None)
    governor.throttled(governor.acquire(), "http-429")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    state = json.loads((tmp_path / "governor.json").read_text())
    state.update(paused_until=clock.now, probe=f"{int(dead.stdout)}:0")
    (tmp_path / "governor.json").write_text(json.dumps(state))
    assert governor.acquire().probe, "the dead process's probe is taken over at once"


@pytest.mark.parametrize(("retry_after", "pause"), [(25.0, 25.0), (3.0, 10.0), (None, 10.0)])
def test_the_sites_retry_after_lengthens_a_pause_but_never_shortens_it(
    tmp_path: Path, retry_after: float | None, pause: float
) -> None:
    clock = FakeClock()
    governor = _governor(tmp_path, clock, cooldown_s=10.0, cooldown_max_s=40.0, give_up_after_s=None)
    in_flight = governor.acquire()
    start = clock.now
    taken = governor.throttled(governor.acquire(), "http-429", retry_after)
    assert taken is not None and taken.seconds == pause
    assert taken.retry_after == (retry_after if retry_after and retry_after > 10.0 else None)
    governor.throttled(in_flight, "http-429", 30.0)  # an attempt of the same episode: its Retry-After extends
    governor.acquire()
    assert clock.now == pytest.approx(start + max(pause, 30.0))


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("120", 120.0), (" 7 ", 7.0), ("Wed, 21 Oct 2015 07:28:30 GMT", 30.0), ("soon", None), ("-5", None), (None, None)],
)
def test_retry_after_values_are_read_as_rfc_9110_says(value: str | None, seconds: float | None) -> None:
    now = 1445412480.0  # Wed, 21 Oct 2015 07:28:00 GMT
    assert retry_after_seconds(value, now=now) == seconds


def test_a_stopped_governor_wakes_its_waiting_workers(tmp_path: Path) -> None:
    governor = Governor(tmp_path / "governor.json", DownloadConfig(cooldown_s=30.0))
    governor.throttled(governor.acquire(), "http-429")
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            governor.acquire()
        except GiveUp as exc:
            errors.append(exc)

    thread = threading.Thread(target=worker)
    thread.start()
    time.sleep(0.1)
    governor.stop()
    thread.join(timeout=5)
    assert not thread.is_alive() and len(errors) == 1


def test_processes_on_one_work_directory_share_one_bucket(tmp_path: Path) -> None:
    """Three processes take 5 tokens each from one state file: together they keep the spacing of one cap."""
    script = textwrap.dedent(f"""
        import json, sys
        from is4.config import DownloadConfig
        from is4.pipeline.ingest.governor import Governor
        g = Governor({str(tmp_path / "governor.json")!r}, DownloadConfig(max_videos_per_hour=36000.0))
        print(json.dumps([g.acquire().granted_at for _ in range(5)]))
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True) for _ in range(3)]
    grants = sorted(t for p in procs for t in json.loads(p.communicate(timeout=120)[0]))
    assert all(p.returncode == 0 for p in procs) and len(grants) == 15
    assert min(b - a for a, b in zip(grants, grants[1:])) >= 0.1 - 1e-6  # 36000/h: one every 0.1 s


# --------------------------------------------------------------------------------------------------------------
# Session settings: cookies, proxies, secrets
# --------------------------------------------------------------------------------------------------------------

COOKIE = "SESSION=letmein"


def _cookies_file(path: Path, value: str = "letmein") -> Path:
    path.write_text(f"# Netscape HTTP Cookie File\n127.0.0.1\tFALSE\t/\tFALSE\t0\tSESSION\t{value}\n")
    return path


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("127.0.0.1\tFALSE\t/\tFALSE\t0\tSESSION\tsecretvalue\n", "line 1: not a Netscape cookies file"),
        ('[{"name": "SESSION", "value": "secretvalue"}]\n', "looks like JSON"),
        ("# Netscape HTTP Cookie File\n\n127.0.0.1\tFALSE\t/\tSESSION\tsecretvalue\n", "line 3: expected 7"),
        ("# Netscape HTTP Cookie File\n.127.0.0.1\tFALSE\t/\tFALSE\t0\tSESSION\tsecretvalue\n", "line 2: field 2"),
        ("# Netscape HTTP Cookie File\n127.0.0.1\tFALSE\t/\tFALSE\tsoon\tSESSION\tsecretvalue\n", "line 2: field 5"),
        ("# Netscape HTTP Cookie File\n# nothing here\n", "holds no cookie"),
    ],
)
def test_a_bad_cookies_file_is_refused_naming_the_line_never_the_value(tmp_path: Path, text: str, error: str) -> None:
    path = tmp_path / "cookies.txt"
    path.write_text(text)
    with pytest.raises(CookiesError, match=error) as info:
        load_cookies(path)
    assert str(path) in str(info.value) and "secretvalue" not in str(info.value)


def test_each_worker_has_its_proxy_and_moves_on_when_throttled() -> None:
    session = Session(DownloadConfig(proxy=["http://127.0.0.1:1", "http://127.0.0.1:2", "http://127.0.0.1:3"]))
    seen: dict[str, list[str | None]] = {}

    def worker(name: str) -> None:
        seen[name] = [session.proxy()]
        session.throttled_by(None, "http-429")
        seen[name].append(session.proxy())

    for name in ("a", "b"):
        thread = threading.Thread(target=worker, args=(name,))
        thread.start()
        thread.join()
    assert seen == {
        "a": ["http://127.0.0.1:1", "http://127.0.0.1:2"],
        "b": ["http://127.0.0.1:2", "http://127.0.0.1:3"],
    }
    assert session.ydl_options()["proxy"] == "http://127.0.0.1:3"  # this thread is the third worker


def test_secrets_and_pacing_stay_out_of_the_dump_and_provenance(tmp_path: Path) -> None:
    secret = {
        "proxy": "http://alice:s3cret@127.0.0.1:3128",
        "cookies_file": str(tmp_path / "cookies.txt"),
        "extractor_args": {"youtube": {"po_token": ["web.gvs+tokenvalue"]}},
    }
    pacing = {
        "max_videos_per_hour": 300.0,
        "sleep_interval_s": [5.0, 10.0],
        "sleep_requests_s": 0.75,
        "cooldown_s": 60.0,
        "cooldown_max_s": 120.0,
        "give_up_after_s": 600.0,
        "user_agent": "Mozilla/5.0 x",
        "source_address": "127.0.0.1",
    }
    cfg = parse_config({"ingest": {"download": secret | pacing}})
    assert cfg.ingest.download.proxies() == [secret["proxy"]]  # the settings are there for yt-dlp ...
    dumped = json.dumps(cfg.model_dump(mode="json"))  # ... but not in what manifests, logs and releases show
    for value in ("s3cret", "cookies.txt", "tokenvalue"):
        assert value not in dumped
    ingest = BY_NAME["ingest"]
    assert ingest.provenance(cfg, tmp_path) == ingest.provenance(parse_config({}), tmp_path)


# --------------------------------------------------------------------------------------------------------------
# End to end against the throttling server
# --------------------------------------------------------------------------------------------------------------


def _csv(path: Path, n: int) -> Path:
    """`n` distinct clips of the three good videos (starts 0, 1, 2, …)."""
    rows = [f"{GOOD_IDS[i % 3]},{i // 3},dog barking,train" for i in range(n)]
    path.write_text("\n".join(rows) + "\n")
    return path


def _ingest_cfg(template: str, **download) -> IngestConfig:
    settings = {
        "workers": 2,
        "retries": 0,
        "socket_timeout_s": 5,
        "force_keyframes_at_cuts": False,
        "cooldown_s": 0.3,
        "cooldown_max_s": 1.2,
        "give_up_after_s": 30.0,
    } | download
    return IngestConfig(
        download=DownloadConfig(url_template=template, **settings), extract=ExtractConfig(clip_seconds=4)
    )


def _pages(server: MediaServer, route: str) -> list[float]:
    return [e.t for e in server.log if e.path.startswith(f"/{route}/")]


def test_sixty_clips_through_a_server_that_rate_limits_twice_all_end_ok(
    video_dir: Path, tmp_path: Path, caplog
) -> None:
    cap_per_s, window = 3.0, 30.0
    csv = _csv(tmp_path / "sixty.csv", 60)
    messages: list[str] = []
    caplog.set_level(logging.WARNING, logger="is4.pipeline.ingest.ingest")
    # 20 watch pages per 30 s, then 429 for 1 s: 60 clips at up to 3/s are refused after the 20th and the 40th.
    with MediaServer(video_dir, throttle=Throttle(limit=20, window_s=window, cooldown_s=1.0)) as server:
        cfg = _ingest_cfg(server.page_template("throttled"), max_videos_per_hour=cap_per_s * 3600)
        summary = run_ingest(csv, tmp_path / "work", cfg, progress=lambda d, t, m: messages.append(m))
        episodes, pages = server.throttle_episodes, _pages(server, "throttled")
    assert (summary.ok, summary.failed, summary.pending, summary.complete) == (60, 0, 0, True)
    assert episodes == 2 and summary.pauses >= 2 and summary.throttled_by_kind.keys() == {"http-429"}
    clips = read_manifest(tmp_path / "work", "clips")
    assert set(clips["status"]) == {"ok"} and set(clips["attempts"]) == {1}, "throttled tries are not attempts"
    # The measured rate of watch pages (every try, refused ones too) never beats the cap by more than one.
    for seconds in (1.0, 2.0, window):
        assert _max_in_window(pages, seconds) <= cap_per_s * seconds + 1, seconds
    pauses = [r.getMessage() for r in caplog.records if "pausing" in r.getMessage()]
    assert pauses and all(re.fullmatch(r"http-429: pausing [\d.]+ s, \d+ clips left", p) for p in pauses)
    assert any(re.search(r"clips/h \(cap 10800/h\) · ETA ", m) for m in messages)


def test_four_workers_knock_at_most_twice_per_throttled_window_and_honour_retry_after(
    video_dir: Path, tmp_path: Path, caplog
) -> None:
    csv = _csv(tmp_path / "twelve.csv", 12)
    caplog.set_level(logging.WARNING, logger="is4.pipeline.ingest.ingest")
    # 5 pages per window, then 2 s of 429 with `Retry-After: 2`; the governor's own pauses are far shorter. Pages
    # 0.4 s apart, so that no page is already on its way when the one that starts a cool-down is refused.
    throttle = Throttle(limit=5, window_s=60.0, cooldown_s=2.0, retry_after=True)
    with MediaServer(video_dir, throttle=throttle) as server:
        template = server.page_template("throttled")
        cfg = _ingest_cfg(template, workers=4, cooldown_s=0.1, cooldown_max_s=0.4, max_videos_per_hour=9000.0)
        summary = run_ingest(csv, tmp_path / "work", cfg)
        episodes = server.throttle_episodes
        refused = [e for e in server.log if e.path.startswith("/throttled/") and e.status == 429]
    assert (summary.ok, summary.failed, summary.pending) == (12, 0, 0)
    assert episodes >= 2 and len(refused) <= 2 * episodes, (len(refused), episodes)
    pauses = [r.getMessage() for r in caplog.records if "pausing" in r.getMessage()]
    assert pauses and all("pausing 2 s (the site's Retry-After)" in p for p in pauses), pauses


def test_403_on_media_fetches_pauses_and_gives_the_bytes_of_an_unthrottled_run(video_dir: Path, tmp_path: Path) -> None:
    csv = _csv(tmp_path / "twelve.csv", 12)
    with MediaServer(video_dir) as plain:
        run_ingest(csv, tmp_path / "reference", _ingest_cfg(plain.page_template("watch")))
    # Pages are always served; after 5 in the window the media urls answer 403 for 0.8 s.
    with MediaServer(video_dir, throttle=Throttle(limit=5, window_s=30.0, cooldown_s=0.8)) as server:
        summary = run_ingest(csv, tmp_path / "work", _ingest_cfg(server.page_template("forbidden")))
        refused = [e for e in server.log if e.path.startswith("/forbidden-media/") and e.status == 403]
    assert (summary.ok, summary.failed, summary.pending) == (12, 0, 0)
    assert refused and summary.throttled_by_kind.keys() == {"http-403-media"}
    assert (
        manifest_path(tmp_path / "work", "clips").read_bytes()
        == manifest_path(tmp_path / "reference", "clips").read_bytes()
    )
    records = [Journal(tmp_path / w / JOURNAL, key_field="clip_id").load() for w in ("work", "reference")]
    assert records[0] == records[1], "the journal records do not depend on the throttling either"


def test_a_run_stopped_while_throttled_exits_0_says_how_to_continue_and_the_rerun_finishes(
    video_dir: Path, tmp_path: Path
) -> None:
    csv = _csv(tmp_path / "eight.csv", 8)
    work = tmp_path / "work"
    # 4 pages per window, then 2 s of 429; the governor gives up after 0.5 s of throttling.
    with MediaServer(video_dir, throttle=Throttle(limit=4, window_s=60.0, cooldown_s=2.0)) as server:
        config = tmp_path / "ingest.yaml"
        download = {
            "url_template": server.page_template("throttled"),
            "workers": 2,
            "retries": 0,
            "force_keyframes_at_cuts": False,
            "cooldown_s": 0.2,
            "cooldown_max_s": 0.4,
            "give_up_after_s": 0.5,
        }
        config.write_text(yaml.safe_dump({"ingest": {"download": download, "extract": {"clip_seconds": 4}}}))
        first = subprocess.run(
            [IS4, "ingest", "--csv", str(csv), "--workdir", str(work), "--config", str(config)],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert first.returncode == 0, first.stderr
        assert "4 clips pending" in first.stdout and "Nothing is lost" in first.stdout
        journal = Journal(work / JOURNAL, key_field="clip_id").load()
        assert len(journal) == 4 and {r["status"] for r in journal.values()} == {"ok"}, "none is marked failed"
        assert not manifest_path(work, "clips").exists() and not (work / "exports").exists()

        status = subprocess.run(
            [IS4, "ingest", "--status", "--workdir", str(work)], capture_output=True, text=True, timeout=120
        )
        assert status.returncode == 0, status.stderr
        assert re.search(r"pending\s*│\s*4", status.stdout) and re.search(r"retryable\s*│\s*4", status.stdout)
        command = status.stdout.split("continue with:")[1].strip().splitlines()[0].strip()
        assert shlex.split(command)[:2] == ["is4", "ingest"] and str(csv.resolve()) in command

        time.sleep(2.2)  # the server's cool-down ends
        again = subprocess.run([IS4, *shlex.split(command)[1:]], capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    clips = read_manifest(work, "clips")
    assert len(clips) == 8 and set(clips["status"]) == {"ok"}
    assert (work / "exports/vggsound/ids.csv").is_file()


def test_the_flow_entry_refuses_to_go_on_without_the_clips(video_dir: Path, tmp_path: Path) -> None:
    csv = _csv(tmp_path / "four.csv", 4)
    with MediaServer(video_dir, throttle=Throttle(limit=1, window_s=60.0, cooldown_s=5.0)) as server:
        cfg = parse_config(
            {
                "ingest": {
                    "download": {
                        "workers": 1,
                        "cooldown_s": 0.05,
                        "cooldown_max_s": 0.1,
                        "give_up_after_s": 0.12,
                        "force_keyframes_at_cuts": False,
                    },
                    "extract": {"clip_seconds": 4.0},
                }
            }
        )
        with pytest.raises(IngestIncomplete, match="3 of 4 clips pending"):
            ingest_stage(tmp_path / "work", cfg, {}, csv_path=csv, url_template=server.page_template("throttled"))


def test_cookies_reach_yt_dlp_and_the_users_file_is_left_alone(video_dir: Path, tmp_path: Path) -> None:
    csv = _csv(tmp_path / "two.csv", 2)
    cookies = _cookies_file(tmp_path / "cookies.txt")
    before = cookies.read_bytes()
    with MediaServer(video_dir, cookie=COOKIE) as server:
        with_cookies = run_ingest(
            csv, tmp_path / "with", _ingest_cfg(server.page_template("session"), cookies_file=cookies)
        )
        seen = [e for e in server.log if e.path.startswith("/session/")]
        server.reset_counters()
        # Without the cookie the page is YouTube's bot check: throttling, so the clips wait (and the run gives up).
        without = run_ingest(
            csv,
            tmp_path / "without",
            _ingest_cfg(server.page_template("session"), cooldown_s=0.05, cooldown_max_s=0.1, give_up_after_s=0.12),
        )
    assert with_cookies.ok == 2
    assert len(seen) == 2 and all(e.cookie for e in seen), "yt-dlp sent the cookie with every page"
    assert cookies.read_bytes() == before, "yt-dlp never writes the user's cookies file back"
    assert (without.ok, without.failed, without.pending, without.complete) == (0, 0, 2, False)
    assert without.throttled_by_kind == {"bot-check": without.pauses}


class TeapotHandler(RangeRequestHandler):
    """Answers one video with a status no rule of the message table knows."""

    def do_GET(self) -> None:  # noqa: N802
        if "teapotVid01" in self.path:
            self.send_error(418, "I'm a teapot")
            return
        super().do_GET()


def test_an_unknown_message_is_retryable_and_counted_by_its_text(video_dir: Path, tmp_path: Path) -> None:
    csv = tmp_path / "teapot.csv"
    csv.write_text(
        f"teapotVid01,0,dog barking,train\nteapotVid01,5,dog barking,train\n{GOOD_IDS[0]},0,dog barking,train\n"
    )
    with MediaServer(video_dir, handler=TeapotHandler) as server:
        summary = run_ingest(csv, tmp_path / "work", _ingest_cfg(server.url_template()))
    assert (summary.ok, summary.failed, summary.failures_by_reason) == (1, 2, {"unknown": 2})
    assert summary.unknown_errors == {
        "Unable to download webpage: HTTP Error 418: I'm a teapot (caused by <HTTPError 418: I'm a teapot>)": 2
    }
    clips = read_manifest(tmp_path / "work", "clips")
    assert clips.loc[clips["ytid"] == "teapotVid01", "retryable"].tolist() == [True, True]


class CountingProxy(http.server.ThreadingHTTPServer):
    """A loopback HTTP forward proxy that counts the requests it carries and marks them with a Via header."""

    daemon_threads = True

    def __init__(self, name: str) -> None:
        super().__init__(("127.0.0.1", 0), _ProxyHandler)
        self.name, self.count, self.lock = name, 0, threading.Lock()
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def __enter__(self) -> CountingProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
        self.server_close()


class _ProxyHandler(http.server.BaseHTTPRequestHandler):
    server: CountingProxy
    protocol_version = "HTTP/1.0"  # one request per connection keeps the forwarding simple

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass

    def do_GET(self) -> None:  # noqa: N802
        target = urlsplit(self.path)
        assert target.hostname == "127.0.0.1", "the proxy only forwards to loopback"
        with self.server.lock:
            self.server.count += 1
        hop = {"connection", "proxy-connection", "keep-alive", "proxy-authorization"}
        headers = {k: v for k, v in self.headers.items() if k.lower() not in hop} | {"Via": f"1.0 {self.server.name}"}
        upstream = http.client.HTTPConnection(target.hostname, target.port, timeout=10)
        upstream.request("GET", target.path or "/", headers=headers)
        response = upstream.getresponse()
        self.send_response(response.status, response.reason)
        for key, value in response.getheaders():
            if key.lower() not in hop | {"transfer-encoding"}:
                self.send_header(key, value)
        self.send_header("Connection", "close")
        self.end_headers()
        try:
            while chunk := response.read(64 * 1024):
                self.wfile.write(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
        finally:
            upstream.close()


def test_every_request_goes_through_the_configured_proxies(video_dir: Path, tmp_path: Path) -> None:
    csv = _csv(tmp_path / "four.csv", 4)
    with CountingProxy("proxy-a") as a, CountingProxy("proxy-b") as b, MediaServer(video_dir) as server:
        summary = run_ingest(csv, tmp_path / "work", _ingest_cfg(server.page_template("watch"), proxy=[a.url, b.url]))
        time.sleep(0.2)
        log = server.log
    assert summary.ok == 4
    assert log and all(e.via in ("1.0 proxy-a", "1.0 proxy-b") for e in log), "nothing bypassed the proxies"
    assert a.count + b.count == len(log) and a.count and b.count, "one proxy per worker"


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["--status"], "no ingest has run in this work directory"),
        ([], "--csv is required"),
    ],
)
def test_ingest_without_its_input_exits_2_with_one_line(tmp_path: Path, args: list[str], error: str) -> None:
    from typer.testing import CliRunner

    from is4.cli import app

    result = CliRunner().invoke(app, ["ingest", "--workdir", str(tmp_path / "empty"), *args])
    text = " ".join(result.output.split())  # rich wraps the line to the terminal's width
    assert result.exit_code == 2 and error in text and "Traceback" not in text
