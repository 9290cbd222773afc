"""Which failures are retried, and how long to wait before the next try.

An explicit predicate over named conditions, never "any exception":

=====================  ==========================  ==================================
condition              idempotent call (GET)        submit (POST, costs money)
=====================  ==========================  ==================================
429 Too Many Requests  retry after Retry-After       retry after Retry-After (a 429 is
                                                     a definite "not accepted")
500, 503               retry with backoff           retry with backoff (a complete
                                                     response: the gateway answered)
502, 504               retry with backoff           AMBIGUOUS: a proxy's answer, the
                                                     gateway may have accepted it
other 5xx              retry with backoff           AMBIGUOUS
connection never made  retry with backoff           retry (the request never left)
dropped / timed out    retry with backoff           AMBIGUOUS, never retried
garbage body           retry with backoff           AMBIGUOUS on 2xx, else as its status
400/401/402/403/404    not retried                  not retried
=====================  ==========================  ==================================

Backoff is capped exponential with full jitter. ``INSTANT`` (or ``instant()``) makes every
wait zero so tests of retry storms run in milliseconds; it is an explicit switch, not a
"am I under pytest" guess.
"""

from __future__ import annotations

import contextlib
import email.utils
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx

#: Module-level switch: when True every computed wait is 0 (tests).
INSTANT = False

#: 5xx statuses that are a definite answer from the gateway itself (request not accepted).
DEFINITE_5XX = frozenset({500, 503})


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int = 8  # tries in all, including the first
    base: float = 0.25  # seconds
    cap: float = 30.0  # longest single wait
    max_retry_after: float = 300.0  # never sleep longer than this on a server's Retry-After

    def backoff(self, attempt: int, rng: random.Random | None = None) -> float:
        """Wait before try number ``attempt + 1`` (attempt counts from 1): full jitter."""
        if INSTANT:
            return 0.0
        hi = min(self.cap, self.base * (2 ** max(0, attempt - 1)))
        return (rng or random).uniform(hi / 2, hi)

    def wait_for_retry_after(self, retry_after: float | None, attempt: int) -> float:
        if INSTANT:
            return 0.0
        if retry_after is None:
            return self.backoff(attempt)
        return min(max(retry_after, 0.0), self.max_retry_after)


DEFAULT_POLICY = RetryPolicy()


@contextlib.contextmanager
def instant() -> Iterator[None]:
    """``with instant(): ...`` makes backoff zero inside the block."""
    global INSTANT
    old, INSTANT = INSTANT, True
    try:
        yield
    finally:
        INSTANT = old


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Retry-After is either delta-seconds or an HTTP date; returns seconds (>= 0) or None."""
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        dt = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if dt is None:
        return None
    return max(0.0, dt.timestamp() - (time.time() if now is None else now))


# -- the predicate ------------------------------------------------------------------


def request_never_sent(exc: BaseException) -> bool:
    """True only when the transport error proves the request did not leave this machine.

    httpx_aiohttp maps every aiohttp connection error (including "server disconnected",
    which happens after the request was sent) to ``httpx.ConnectTimeout``, so the original
    aiohttp exception is inspected when there is one.
    """
    if isinstance(exc, httpx.PoolTimeout):
        return True
    cause = exc.__cause__
    if cause is not None and type(cause).__module__.startswith("aiohttp"):
        import aiohttp

        return isinstance(cause, aiohttp.ClientConnectorError) and not isinstance(cause, aiohttp.ServerTimeoutError)
    return isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout)


def retry_status(status: int, *, idempotent: bool) -> bool:
    """Is an HTTP status worth another try?"""
    if status == 429:
        return True
    if 500 <= status <= 599:
        return idempotent or status in DEFINITE_5XX
    return False


def submit_status_is_ambiguous(status: int) -> bool:
    """A submit answered with this status may still have been accepted (and charged)."""
    return 500 <= status <= 599 and status not in DEFINITE_5XX


def retry_transport_error(exc: BaseException, *, idempotent: bool) -> bool:
    """Network failures: always retried for GETs; for a POST only if it never left."""
    if not isinstance(exc, httpx.TransportError):
        return False
    return idempotent or request_never_sent(exc)
