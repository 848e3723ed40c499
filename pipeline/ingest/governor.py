"""The rate governor: one token bucket and one throttling pause for every download of a work directory.

YouTube limits a *session* (an IP address, a cookie identity), not a worker: 16 workers, or 4 processes on one
machine, share one budget. So the bucket and the pause live in one small JSON file in the work directory, read and
written under `fcntl.flock` (and a thread lock, for the workers of one process); times in it are wall-clock
seconds, since monotonic clocks are not comparable across processes.

- **Pacing.** The bucket holds one token, refilled every `3600 / max_videos_per_hour` seconds (and not before a
  jittered `sleep_interval_s` has passed): any window of W seconds holds at most `W * cap / 3600 + 1` video starts.
- **Throttling.** A throttling failure pauses the whole session for `cooldown_s * 2**level` (at most
  `cooldown_max_s`); failures of attempts that started before the pause ended are the same episode and do not add
  to it. A success after a pause resets the level.
- **Giving up.** When a pause would end more than `give_up_after_s` after the session was first throttled (counted
  from this run's start at the earliest), the run stops: `acquire` raises `GiveUp` in every worker.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from is4.config import DownloadConfig

STATE_FILE = "state/ingest-governor.json"


class GiveUp(Exception):  # noqa: N818 - a signal to stop, not an error
    """The session stayed throttled past `give_up_after_s`, or the run is stopping: take no further clip."""


@dataclass(frozen=True)
class Ticket:
    """Permission to start one download attempt, granted at `granted_at` (wall-clock seconds)."""

    granted_at: float


@dataclass(frozen=True)
class Pause:
    """A pause of the whole session that a throttling failure started."""

    seconds: float
    level: int  # 0 for the first pause of an episode
    kind: str


@dataclass
class _State:
    next_at: float = 0.0  # when the bucket holds a token again
    last_at: float = 0.0  # when the last token was taken
    paused_until: float = 0.0  # end of the current (or last) throttling pause
    level: int = 0  # pauses in the current episode
    throttled_since: float | None = None  # first throttling failure since the last success

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
        """Wait for the bucket's token (and the end of any pause); raises `GiveUp` when the run must stop."""
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
                else:
                    state.next_at, state.last_at = now + self._spacing(), now
                    return Ticket(now)
            self._wait(delay)

    def throttled(self, ticket: Ticket, kind: str) -> Pause | None:
        """Record a throttling failure of the attempt `ticket` allowed: the new pause, or None if one covers it.

        Raises `GiveUp` (after recording the pause, which other processes then respect too) when the pause would
        end past the give-up deadline.
        """
        with self._state() as state:
            if ticket.granted_at < state.paused_until:
                return None  # started before the current pause ended: the same episode
            now = self._clock()
            seconds = min(self.cfg.cooldown_s * 2**state.level, self.cfg.cooldown_max_s)
            pause = Pause(seconds, state.level, kind)
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
            if ticket.granted_at >= state.paused_until and (state.level or state.throttled_since is not None):
                state.level = 0
                state.throttled_since = None

    def _give_up_message(self, state: _State) -> str:
        since = state.throttled_since if state.throttled_since is not None else self._clock()
        return (
            f"throttled for {format_duration(self._clock() - since)} with no success and the next pause ends "
            f"after give_up_after_s ({format_duration(self.cfg.give_up_after_s or 0)})"
        )


def format_duration(seconds: float) -> str:
    """`42 s`, `15 min`, `2 h 05 min`: a duration for a log line."""
    if seconds < 90:
        return f"{seconds:.3g} s" if seconds < 10 else f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    return f"{minutes} min" if minutes < 120 else f"{minutes // 60} h {minutes % 60:02d} min"
