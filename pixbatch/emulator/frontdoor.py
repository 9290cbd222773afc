"""The API-Management front door: who may submit, how often, how much.

The real gateway is an Azure-API-Management-style front end before the queue. Its
policies answer before the request reaches the queue, in this order:

1. the key (401 missing or unknown, 403 forbidden);
2. ``quota``: at most N *accepted* submits per key per quota period (``quota_reset``
   seconds, periods counted from the emulator's start). Past it: 403, ``Retry-After``
   (seconds to the period's end) and ``{"statusCode": 403, "message": "Out of call volume
   quota. Quota will be replenished in 00:10:00."}``. ``POST /_emulator/quota/reset``
   forgets what was used;
3. ``rate_window`` (N, SECONDS): a fixed window per key, counted from the emulator's start;
   every submit that gets past it counts. Past N: 429, ``Retry-After`` (seconds to the
   window's reset) and ``{"statusCode": 429, "message": "Rate limit is exceeded. Try
   again in 7 seconds."}``;
4. ``rate_limit``/``rate_burst``: a token bucket per key (429, ``Retry-After`` in seconds,
   the queue's JSON shape), as before;
5. ``throttle_rate``: a fraction of submits answered 429 whatever the rate (a key shared
   with others, a busy backend). The form is drawn per submit: no ``Retry-After``, an
   HTTP date, or seconds (``throttle_retry_after``); the latter in API Management's JSON.

Windows and quota periods follow the emulator's clock, so ``POST /_emulator/advance``
moves them too; the token bucket follows real time. Random draws use their own RNG
(``seed``, ``"throttle"``, the submit's ordinal), so turning throttling on does not change
which submits other faults hit.
"""

from __future__ import annotations

import math
import random
import time
from email.utils import format_datetime
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import Response

from ..contract import AUTH_HEADER
from .answers import Answers

if TYPE_CHECKING:
    from .jobs import Engine

Refusal = tuple[Response, str]  # the answer, and the reason logged for it


class FrontDoor:
    def __init__(self, engine: Engine, answers: Answers):
        self.e = engine
        self.a = answers
        self.epoch = engine.now()
        self.buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, last refill)
        self.windows: dict[str, tuple[int, int]] = {}  # key -> (window index, submits counted)
        self.quota_used: dict[str, tuple[int, int]] = {}  # key -> (period index, accepted)

    def label(self, key: str | None) -> str | None:
        """The key as the request log names it: known keys by name, anything else anonymised."""
        cfg = self.e.config
        if not key:
            return None
        return key if key in cfg.api_keys or key in cfg.forbidden_keys else "<unknown>"

    def auth(self, request: Request) -> Refusal | None:
        key = request.headers.get(AUTH_HEADER)
        cfg = self.e.config
        if not key:
            return self.a.error(401, "Unauthorized", f"Access denied due to missing subscription key. Include the "
                                                     f"{AUTH_HEADER} header."), "missing_key"
        if key in cfg.forbidden_keys:
            return self.a.error(403, "Forbidden", "This subscription key is not allowed to use this API."), \
                "forbidden_key"
        if key not in cfg.api_keys:
            return self.a.error(401, "Unauthorized", "Access denied due to invalid subscription key. Make sure to "
                                                     "provide a valid key for an active subscription."), "unknown_key"
        return None

    def admit(self, key: str, n: int) -> Refusal | None:
        """Quota, fixed window, token bucket, throttling: the first that refuses answers."""
        return self._quota(key) or self._window(key) or self._bucket(key) or self._throttle(n)

    def accepted(self, key: str) -> None:
        """A job was created for ``key``: it counts against the quota."""
        period, used = self._period(key)
        self.quota_used[key] = (period, used + 1)

    def reset_quota(self, key: str | None = None) -> None:
        if key is None:
            self.quota_used.clear()
        else:
            self.quota_used.pop(key, None)

    # -- the policies ---------------------------------------------------------------

    def _period(self, key: str) -> tuple[int, int]:
        period = int((self.e.now() - self.epoch) // self.e.config.quota_reset)
        last, used = self.quota_used.get(key, (period, 0))
        return period, used if last == period else 0

    def _quota(self, key: str) -> Refusal | None:
        cfg = self.e.config
        if cfg.quota is None:
            return None
        period, used = self._period(key)
        if used < cfg.quota:
            return None
        self.e.stats["quota_refused"] += 1
        left = max(1, math.ceil(self.epoch + (period + 1) * cfg.quota_reset - self.e.now()))
        hms = f"{left // 3600:02d}:{left % 3600 // 60:02d}:{left % 60:02d}"
        return self.a.apim(403, f"Out of call volume quota. Quota will be replenished in {hms}.",
                           {"Retry-After": str(left)}), "quota"

    def _window(self, key: str) -> Refusal | None:
        cfg = self.e.config
        if cfg.rate_window is None:
            return None
        limit, seconds = cfg.rate_window
        now = self.e.now()
        index = int((now - self.epoch) // seconds)
        last, count = self.windows.get(key, (index, 0))
        count = count if last == index else 0
        if count < limit:
            self.windows[key] = (index, count + 1)
            return None
        self.windows[key] = (index, count)
        self.e.stats["rate_window_limited"] += 1
        wait = max(1, math.ceil(self.epoch + (index + 1) * seconds - now))
        return self.a.apim(429, f"Rate limit is exceeded. Try again in {wait} seconds.",
                           {"Retry-After": str(wait)}), "rate_window"

    def _bucket(self, key: str) -> Refusal | None:
        cfg = self.e.config
        if cfg.rate_limit is None:
            return None
        now = time.monotonic()
        burst = cfg.burst
        tokens, last = self.buckets.get(key, (float(burst), now))
        tokens = min(float(burst), tokens + (now - last) * cfg.rate_limit)
        if tokens >= 1.0:
            self.buckets[key] = (tokens - 1.0, now)
            return None
        self.buckets[key] = (tokens, now)
        self.e.stats["rate_limited"] += 1
        seconds = max(1, math.ceil((1.0 - tokens) / cfg.rate_limit))
        return self.a.error(429, "Too Many Requests", f"Rate limit exceeded. Retry after {seconds} seconds.",
                            headers={"Retry-After": str(seconds)}), "rate_limit"

    def _throttle(self, n: int) -> Refusal | None:
        cfg = self.e.config
        if not cfg.throttle_rate:
            return None
        rng = random.Random(f"{cfg.seed}:throttle:{n}")
        if rng.random() >= cfg.throttle_rate:
            return None
        self.e.stats["throttled"] += 1
        form = rng.choice(("none", "date", "seconds"))
        wait = cfg.throttle_retry_after
        if form == "none":
            return self.a.error(429, "Too Many Requests", "The service is busy. Try again later."), "throttle"
        if form == "date":
            when = datetime.fromtimestamp(math.ceil(time.time() + wait), timezone.utc)
            date = format_datetime(when, usegmt=True)
            return self.a.error(429, "Too Many Requests", f"The service is busy. Try again after {date}.",
                                headers={"Retry-After": date}), "throttle"
        seconds = math.ceil(wait)
        return self.a.apim(429, f"Rate limit is exceeded. Try again in {seconds} seconds.",
                           {"Retry-After": str(seconds)}), "throttle"
