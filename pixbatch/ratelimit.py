"""An adaptive token bucket in front of every gateway call.

- ``--max-rps R`` is the ceiling; without it the bucket starts unlimited.
- The gateway limits *submits*: ``acquire()`` paces them; status polls call
  ``acquire_poll()``, which only honours a pause (and the ceiling, when one is given), so
  polls neither use up nor distort what is learned about the submit limit.
- A 429 pauses *every* caller until ``Retry-After`` has passed, and sets the submit rate
  from what the gateway actually accepted (``on_accept()`` per 202): a 429 means the
  gateway's bucket is empty, so the accepts between two 429 episodes, over the time
  between them, measure its refill rate; the bucket then runs at ``margin`` (97 %) of that.
  Without such a measurement (the first 429, or too few accepts) it falls back to halving
  (from unlimited: half the rate observed over the last second).
- While no 429 has been seen for ``probe_interval`` seconds the rate grows: by
  ``probe_factor`` per interval while well below the learned rate (or when nothing was
  learned), by ``fine_probe`` (2 %) near it, up to the ceiling (or back to unlimited
  when there is none and the rate has doubled past what triggered the first 429).

Halving on every 429 and probing up by 25 % per second kept the accepted rate oscillating
around 89 % of a 50/s limit; learning the limit keeps it within a few percent of it.

Waiters are served first come, first served. ``clock`` and ``sleep`` are injectable so the
behaviour is testable without waiting.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable


class AdaptiveRateLimiter:
    def __init__(self, max_rps: float | None = None, *, min_rps: float = 0.5, probe_interval: float = 1.0,
                 probe_factor: float = 1.25, fine_probe: float = 1.02, margin: float = 0.97,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep):
        if max_rps is not None and max_rps <= 0:
            raise ValueError("max_rps must be positive")
        self.ceiling = max_rps
        self.rate: float | None = max_rps  # None: unlimited
        self.min_rps = min_rps
        self.probe_interval = probe_interval
        self.probe_factor = probe_factor
        self.fine_probe = fine_probe
        self.margin = margin
        self.learned: float | None = None  # the gateway's submit rate as last measured
        self._accepts = 0  # 202s so far
        self._episode: tuple[float, int] | None = None  # (time, accepts) at the last 429 episode
        self._clock = clock
        self._sleep = sleep
        self._tokens = 1.0
        self._last_refill = clock()
        self._paused_until = 0.0
        self._last_change = clock()
        self._last_decrease = float("-inf")
        self._throttle_origin: float | None = None  # observed rate when unlimited hit a 429
        self._recent: deque[float] = deque()
        self._lock = asyncio.Lock()
        self.throttles = 0

    # -- feedback -------------------------------------------------------------------

    def observed_rps(self) -> float:
        now = self._clock()
        while self._recent and self._recent[0] < now - 1.0:
            self._recent.popleft()
        return float(len(self._recent))

    def on_accept(self) -> None:
        """A submit was accepted (202): what the gateway's limit is learned from."""
        self._accepts += 1

    def _measure(self, now: float) -> float | None:
        """Accepts per second since the last 429 episode (the gateway's bucket was empty at both)."""
        prev, self._episode = self._episode, (now, self._accepts)
        if prev is None:
            return None
        seconds, accepts = now - prev[0], self._accepts - prev[1]
        if seconds < 2 * self.probe_interval or accepts < 10:
            return None
        return accepts / seconds

    def on_throttle(self, retry_after: float | None) -> None:
        """A 429: slow down and pause everyone for ``retry_after`` seconds."""
        now = self._clock()
        self.throttles += 1
        if retry_after:
            self._paused_until = max(self._paused_until, now + retry_after)
        # several requests in flight all see the same 429 burst: decrease once per interval
        if now - self._last_decrease < self.probe_interval / 4 and self.rate is not None:
            return
        measured = self._measure(now)
        if measured is not None:
            self.learned = measured
            if self._throttle_origin is None:
                self._throttle_origin = measured
            self.rate = max(self.min_rps, measured * self.margin)
            if self.ceiling is not None:
                self.rate = min(self.rate, self.ceiling)
        elif self.rate is None:
            seen = max(self.observed_rps(), self.min_rps * 2)
            self._throttle_origin = seen
            self.rate = max(self.min_rps, seen / 2)
        else:
            self.rate = max(self.min_rps, self.rate / 2)
        self._tokens = min(self._tokens, 1.0)
        self._last_change = self._last_decrease = now

    def _probe_up(self, now: float) -> None:
        if self.rate is None or now - self._last_change < self.probe_interval:
            return
        if self.ceiling is not None and self.rate >= self.ceiling:
            return
        near = self.learned is not None and self.rate >= 0.9 * self.learned
        self.rate *= self.fine_probe if near else self.probe_factor
        self._last_change = now
        if self.ceiling is not None:
            self.rate = min(self.rate, self.ceiling)
        elif self._throttle_origin is not None and self.rate >= 2 * self._throttle_origin:
            self.rate = None  # well past where it hurt: back to unlimited

    # -- the bucket -----------------------------------------------------------------

    async def acquire_poll(self) -> None:
        """Before a status poll: wait out a pause; pace only under a ceiling (polls are not limited by the gateway)."""
        if self.ceiling is not None:
            await self.acquire()
            return
        while True:
            now = self._clock()
            if now >= self._paused_until:
                return
            await self._sleep(self._paused_until - now)

    async def acquire(self) -> None:
        async with self._lock:
            while True:
                now = self._clock()
                if now < self._paused_until:
                    await self._sleep(self._paused_until - now)
                    continue
                self._probe_up(now)
                if self.rate is None:
                    break
                burst = max(1.0, self.rate / 10)
                self._tokens = min(burst, self._tokens + (now - self._last_refill) * self.rate)
                self._last_refill = now
                if self._tokens >= 1.0 - 1e-9:  # tolerance: float refills can stall just below 1
                    self._tokens = max(0.0, self._tokens - 1.0)
                    break
                await self._sleep((1.0 - self._tokens) / self.rate)
            self._recent.append(self._clock())
            if len(self._recent) > 100_000:
                self.observed_rps()
