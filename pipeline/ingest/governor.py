"""The rate governor: one token bucket and one throttling pause for every download of a work directory.

YouTube limits a *session* (an IP address, a cookie identity), not a worker: 16 workers, or 4 processes on one
machine, share one budget. So the bucket and the pause live in one small JSON file in the work directory, read and
written under `fcntl.flock` (and a thread lock, for the workers of one process); times in it are wall-clock
seconds, since monotonic clocks are not comparable across processes.

- **Pacing.** The bucket holds one token, refilled every `3600 / max_videos_per_hour` seconds (and not before a
  jittered `sleep_interval_s` has passed): any window of W seconds holds at most `W * cap / 3600 + 1` video starts.
- **Throttling.** A throttling failure pauses the whole session for `cooldown_s * 2**level` (at most
  `cooldown_max_s`), or for the site's `Retry-After` when that is longer; failures of attempts that started before
  the pause ended are the same episode and do not add to it (a longer `Retry-After` of theirs extends the pause).
- **Probing.** When a pause ends, one attempt (the probe) goes first; every other worker, of every process, waits
  until it succeeds, which ends the episode; the next episode starts with the pause that ended this one (the site's
  cool-down does not get shorter by knocking earlier). A probe that is throttled starts the next pause;
  one that fails otherwise (or whose process died) hands the probe to the next attempt. So a session that is still
  refused hears one knock per pause, not one per worker.
- **Giving up.** When a pause would end more than `give_up_after_s` after the session was first throttled (counted
  from this run's start at the earliest), the run stops: `acquire` raises `GiveUp` in every worker.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import json
import os
import random
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from is4.config import DownloadConfig

STATE_FILE = "state/ingest-governor.json"
_PROBE_POLL_S = 0.2  # how often a worker waiting for another process's probe looks again
_LIVE: weakref.WeakValueDictionary[str, Governor] = weakref.WeakValueDictionary()  # this process's governors
_NUMBERS = itertools.count()  # names them (an id() can be reused once a governor is gone)


class GiveUp(Exception):  # noqa: N818 - a signal to stop, not an error
    """The session stayed throttled past `give_up_after_s`, or the run is stopping: take no further clip."""


@dataclass(frozen=True)
class Ticket:
    """Permission to start one download attempt, granted at `granted_at` (wall-clock seconds)."""

    granted_at: float
    probe: bool = False  # the one attempt after a pause; the others wait for its outcome


@dataclass(frozen=True)
class Pause:
    """A pause of the whole session that a throttling failure started."""

    seconds: float
    level: int  # doublings of cooldown_s
    kind: str
    retry_after: float | None = None  # the site's Retry-After, when it made the pause longer


@dataclass
class _State:
    next_at: float = 0.0  # when the bucket holds a token again
    last_at: float = 0.0  # when the last token was taken
    paused_until: float = 0.0  # end of the current (or last) throttling pause
    level: int = 0  # doublings of cooldown_s the next pause gets
    throttled_since: float | None = None  # first throttling failure since the last success
    probe: str | None = None  # "pid:governor" of the probe in flight

    @classmethod
    def parse(cls, text: str) -> _State:
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            return cls()  # empty (new) or torn: start afresh, which only errs towards one early request
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names}) if isinstance(data, dict) else cls()


class Governor:
    """Pacing and throttling pauses shared through `state_path`; `clock` and `wait` can be replaced in tests."""

    def __init__(
        self,
        state_path: str | Path,
        cfg: DownloadConfig,
        *,
        clock: Callable[[], float] = time.time,
        wait: Callable[[float], object] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.path = Path(state_path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.cfg = cfg
        self._clock = clock
        self._stop = threading.Event()
        self._wait = wait or self._stop.wait
        self._rng = rng or random.Random()
        self._lock = threading.Lock()
        self._run_started = clock()
        self._owner = f"{os.getpid()}:{next(_NUMBERS)}"
        _LIVE[self._owner] = self

    def stop(self) -> None:
        """Make every waiting and later `acquire` raise `GiveUp`."""
        self._stop.set()

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    @contextlib.contextmanager
    def _state(self) -> Iterator[_State]:
        with self._lock, open(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644), "r+", encoding="utf-8") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            state = _State.parse(fh.read())
            before = asdict(state)
            try:
                yield state
            finally:  # a pause recorded just before giving up is kept for the other workers and processes
                if asdict(state) != before:
                    fh.seek(0)
                    fh.truncate()
                    fh.write(json.dumps(asdict(state), sort_keys=True))
                    fh.flush()

    def _spacing(self, longest: bool = False) -> float:
        """Seconds until the next token: the cap's interval, or the jittered sleep if longer (its maximum)."""
        low, high = self.cfg.sleep_range()
        cap = self.cfg.max_videos_per_hour
        sleep = high if longest else self._rng.uniform(low, high) if high > low else low
        return max(3600.0 / cap if cap else 0.0, sleep)

    def _deadline(self, state: _State) -> float:
        if self.cfg.give_up_after_s is None or state.throttled_since is None:
            return float("inf")
        return max(state.throttled_since, self._run_started) + self.cfg.give_up_after_s

    def acquire(self) -> Ticket:
        """Wait for the bucket's token, the end of any pause and the success of the probe after it (or become
        the probe); raises `GiveUp` when the run must stop."""
        while True:
            if self.stopped:
                raise GiveUp("the run is stopping")
            with self._state() as state:
                now = self._clock()
                if state.paused_until > now:
                    if state.paused_until > self._deadline(state):
                        raise GiveUp(self._give_up_message(state))
                    delay = state.paused_until - now
                # A token promised by a process with slower settings (an earlier run) is not waited for longer than
                # these settings ask.
                elif (ready := min(state.next_at, state.last_at + self._spacing(longest=True))) > now:
                    delay = ready - now
                elif state.throttled_since is not None and _probing(state.probe):
                    delay = _PROBE_POLL_S
                else:
                    state.next_at, state.last_at = now + self._spacing(), now
                    probe = state.throttled_since is not None
                    state.probe = self._owner if probe else None
                    return Ticket(now, probe)
            self._wait(delay)

    def throttled(self, ticket: Ticket, kind: str, retry_after: float | None = None) -> Pause | None:
        """Record a throttling failure of the attempt `ticket` allowed: the new pause, or None if one covers it.

        `retry_after` is the site's `Retry-After` in seconds: the pause lasts at least that long. Raises `GiveUp`
        (after recording the pause, which other processes then respect too) when the pause would end past the
        give-up deadline.
        """
        with self._state() as state:
            self._drop_probe(state, ticket)
            now = self._clock()
            if ticket.granted_at < state.paused_until:  # started before the current pause ended: the same episode
                if retry_after is not None and now + retry_after > state.paused_until:
                    state.paused_until = now + retry_after
                return None
            seconds = min(self.cfg.cooldown_s * 2**state.level, self.cfg.cooldown_max_s)
            longer = retry_after if retry_after is not None and retry_after > seconds else None
            pause = Pause(longer or seconds, state.level, kind, longer)
            seconds = pause.seconds
            state.level += 1
            state.paused_until = now + seconds
            if state.throttled_since is None:
                state.throttled_since = now
            if state.paused_until > self._deadline(state):
                raise GiveUp(self._give_up_message(state))
            return pause

    def succeeded(self, ticket: Ticket) -> None:
        """A download that `ticket` allowed worked: a throttling episode it followed is over."""
        with self._state() as state:
            self._drop_probe(state, ticket)
            if ticket.granted_at >= state.paused_until and state.throttled_since is not None:
                state.level = max(state.level - 1, 0)  # the pause that worked is the next episode's first
                state.throttled_since = None

    def released(self, ticket: Ticket) -> None:
        """The attempt `ticket` allowed ended without telling whether the session is throttled (it failed for
        another reason, or was interrupted): if it was the probe, the next attempt probes instead."""
        if ticket.probe:
            with self._state() as state:
                self._drop_probe(state, ticket)

    def _drop_probe(self, state: _State, ticket: Ticket) -> None:
        if ticket.probe and state.probe == self._owner:
            state.probe = None

    def _give_up_message(self, state: _State) -> str:
        since = state.throttled_since if state.throttled_since is not None else self._clock()
        return (
            f"throttled for {format_duration(self._clock() - since)} with no success and the next pause ends "
            f"after give_up_after_s ({format_duration(self.cfg.give_up_after_s or 0)})"
        )


def _probing(owner: str | None) -> bool:
    """Whether the probe `owner` ("pid:governor") is still in flight: its process lives, and in this process its
    governor does (a governor that is gone cannot report its probe)."""
    if owner is None:
        return False
    pid = int(owner.split(":", 1)[0])
    if pid == os.getpid():
        return owner in _LIVE
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process: alive
    return True


def format_duration(seconds: float) -> str:
    """`42 s`, `15 min`, `2 h 05 min`: a duration for a log line."""
    if seconds < 90:
        return f"{seconds:.3g} s" if seconds < 10 else f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    return f"{minutes} min" if minutes < 120 else f"{minutes // 60} h {minutes % 60:02d} min"
