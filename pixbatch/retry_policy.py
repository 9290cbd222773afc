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

The table is three predicates, one per kind of call (``submit_again``, ``poll_again``,
``download_again``): each looks at one outcome (an answer, or the transport error raised
instead) and says ``Again(...)`` or ``None`` (stop). ``retrying(policy, call, on=predicate)``
is the one loop that serves all three: it calls, asks the predicate, waits, and returns the
``Final`` outcome for the caller to turn into a result or an exception. A 429 on a paced
call (``Again(throttled=True)``) does not count against ``max_attempts``: it has its own
allowance (``MAX_THROTTLED_TRIES``) and its Retry-After goes to the rate limiter
(``ratelimit.py``), which decides who waits and how long, instead of one sleep here.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import random
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

import httpx

#: Module-level switch: when True every computed wait is 0 (tests).
INSTANT = False
#: the most throttled (429) tries one paced call makes before giving up
MAX_THROTTLED_TRIES = 200

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

    def cap_retry_after(self, retry_after: float | None) -> float | None:
        """The server's Retry-After as a wait: clamped to ``[0, max_retry_after]``; None stays None."""
        if INSTANT:
            return 0.0
        if retry_after is None:
            return None
        return min(max(retry_after, 0.0), self.max_retry_after)

    def wait_for_retry_after(self, retry_after: float | None, attempt: int) -> float:
        capped = self.cap_retry_after(retry_after)
        return self.backoff(attempt) if capped is None else capped


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

    For errors of the aiohttp transport (``transport.py``) the original aiohttp exception
    (``__cause__``) decides: only a failure to connect (``ClientConnectorError``) proves it; a
    connect *timeout* is treated as unknown. Other transports: ``httpx.ConnectError`` or
    ``ConnectTimeout``, or no free connection in the pool (``PoolTimeout``).
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


# -- the three predicates -------------------------------------------------------------------


class Answer(Protocol):
    """What the predicates look at: an HTTP answer (``transport.Reply`` or ``httpx.Response``)."""

    status_code: int
    headers: Any

    def json(self) -> Any: ...


@dataclass(frozen=True, slots=True)
class Again:
    """A predicate's verdict: try the call again."""

    retry_after: float | None = None  # seconds the server asked for (Retry-After), if it did
    throttled: bool = False  # a 429 on a paced call: own allowance, the wait goes to the rate limiter


def _retry_after(answer: Answer) -> float | None:
    return parse_retry_after(answer.headers.get("Retry-After"))


def _is_json(answer: Answer) -> bool:
    try:
        answer.json()
    except ValueError:
        return False
    return True


def submit_again(outcome: Answer | BaseException) -> Again | None:
    """Submit (POST, costs money): again only when the request certainly was not accepted."""
    if isinstance(outcome, BaseException):
        return Again() if retry_transport_error(outcome, idempotent=False) else None
    code = outcome.status_code
    if code == 429:
        return Again(_retry_after(outcome), throttled=True)
    if submit_status_is_ambiguous(code):
        return None  # may have been accepted: the caller makes it AMBIGUOUS
    return Again() if retry_status(code, idempotent=False) else None


def poll_again(outcome: Answer | BaseException) -> Again | None:
    """Status poll (GET): network errors, 429, 5xx and a 2xx whose body is not JSON are tried again."""
    if isinstance(outcome, BaseException):
        return Again() if retry_transport_error(outcome, idempotent=True) else None
    code = outcome.status_code
    if code == 429:
        return Again(_retry_after(outcome), throttled=True)
    if 200 <= code < 300:
        return None if _is_json(outcome) else Again()
    return Again() if retry_status(code, idempotent=True) else None


def download_again(outcome: Answer | BaseException) -> Again | None:
    """Output download (GET from the CDN, not paced): network errors, 429 and 5xx; a 429 counts as a try."""
    if isinstance(outcome, BaseException):
        return Again() if retry_transport_error(outcome, idempotent=True) else None
    code = outcome.status_code
    if 200 <= code < 300 or not retry_status(code, idempotent=True):
        return None
    return Again(_retry_after(outcome) if code == 429 else None)


# -- the one loop ---------------------------------------------------------------------------

R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class Final(Generic[R]):
    """How a ``retrying`` call ended."""

    outcome: R | BaseException  # the last answer, or the transport error raised instead
    tries: int  # calls that counted against ``policy.max_attempts``
    throttles: int  # throttled calls (their own allowance)
    exhausted: bool  # the predicate still said "again" when the allowance ran out


async def retrying(policy: RetryPolicy, call: Callable[[], Awaitable[R]], *,
                   on: Callable[[R | BaseException], Again | None],
                   errors: tuple[type[BaseException], ...] = (httpx.TransportError,),
                   before: Callable[[], Awaitable[None]] | None = None,
                   on_throttle: Callable[[float | None], object] | None = None,
                   max_throttles: int = MAX_THROTTLED_TRIES,
                   sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep) -> Final[R]:
    """Call ``call()`` until ``on(outcome)`` says stop or the allowance runs out; never raises ``errors``.

    ``before`` runs before every call (the rate limiter's acquire). A throttled verdict's
    Retry-After goes to ``on_throttle`` as given (capped; None when there was none: the
    limiter then backs off on its own) and the limiter makes the next ``before`` wait; without
    an ``on_throttle`` the wait (Retry-After or backoff) is slept here;
    other waits are ``policy.backoff`` or the server's Retry-After (``wait_for_retry_after``).
    Exceptions other than ``errors`` propagate at once.
    """
    tries = throttles = 0
    while True:
        if before is not None:
            await before()
        try:
            outcome: R | BaseException = await call()
        except errors as exc:
            outcome = exc
        again = on(outcome)
        if again is not None and again.throttled:
            throttles += 1
            if on_throttle is not None:
                on_throttle(policy.cap_retry_after(again.retry_after))
            if throttles >= max_throttles:
                return Final(outcome, tries, throttles, exhausted=True)
            if on_throttle is None:
                await sleep(policy.wait_for_retry_after(again.retry_after, throttles))
            continue
        tries += 1
        if again is None:
            return Final(outcome, tries, throttles, exhausted=False)
        if tries >= policy.max_attempts:
            return Final(outcome, tries, throttles, exhausted=True)
        await sleep(policy.wait_for_retry_after(again.retry_after, tries))
