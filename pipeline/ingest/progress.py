"""The figures a person watching a long ingest wants: counts, the current rate against the cap, the ETA.

The rate is downloads finished per hour over the last `window_s` seconds (or since the start, if shorter), so a
pause shows in it and it recovers after one; the ETA divides the clips left by it.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from collections.abc import Callable

from is4.pipeline.ingest.governor import format_duration

RATE_WINDOW_S = 900.0


class RunMeter:
    """Counts and the recent download rate of one run; thread-safe."""

    def __init__(
        self,
        total: int,
        done: int,
        cap_per_hour: float | None,
        *,
        clock: Callable[[], float] = time.monotonic,
        window_s: float = RATE_WINDOW_S,
    ) -> None:
        self.total, self.done, self.cap_per_hour = total, done, cap_per_hour
        self.statuses: Counter[str] = Counter()
        self._clock, self._window = clock, window_s
        self._started = clock()
        self._downloads: deque[float] = deque()
        self.downloaded = 0
        self._lock = threading.Lock()

    def finished(self, status: str, downloaded: bool) -> None:
        """One clip got its record (`downloaded`: a section was fetched for it in this run)."""
        with self._lock:
            self.done += 1
            self.statuses[status] += 1
            if downloaded:
                self.downloaded += 1
                self._downloads.append(self._clock())

    @property
    def elapsed_s(self) -> float:
        return self._clock() - self._started

    def rate_per_hour(self) -> float:
        """Downloads per hour over the recent window."""
        with self._lock:
            now = self._clock()
            while self._downloads and self._downloads[0] < now - self._window:
                self._downloads.popleft()
            span = min(self._window, now - self._started)
            return len(self._downloads) * 3600.0 / span if span > 0 else 0.0

    def overall_per_hour(self) -> float:
        """Downloads per hour since the run started."""
        elapsed = self.elapsed_s
        return self.downloaded * 3600.0 / elapsed if elapsed > 0 else 0.0

    def line(self, throttled: int) -> str:
        """`ok 120 · failed 3 · throttled 2 · 290 clips/h (cap 300/h) · ETA 4 h 10 min`."""
        rate = self.rate_per_hour()
        cap = f" (cap {self.cap_per_hour:g}/h)" if self.cap_per_hour else ""
        left = self.total - self.done
        eta = format_duration(left * 3600.0 / rate) if rate > 0 and left else "-" if left else "0 s"
        return (
            f"ok {self.statuses['ok']} · failed {self.statuses['failed']} · throttled {throttled} · "
            f"{rate:.0f} clips/h{cap} · ETA {eta}"
        )
