"""Submit pacing that adapts to the gateway: AIMD with checked decreases, Retry-After, a retry budget.

The scheme is **additive increase / multiplicative decrease** (AIMD, TCP's congestion
avoidance, RFC 5681) on the submit rate, with the server's **Retry-After** honoured (RFC 9110
10.2.3) and a **retry budget** (a share of submits that may be refused and retried without
slowing down, as in Finagle's and Envoy's retry budgets). It is built for gateways whose 429s
are not all caused by our rate: a key shared with other clients, or a busy backend, refuses a
share of requests whatever the rate, and a limiter that slows down for each of those ratchets
down to its floor.

1. **Each refused request waits its own Retry-After** (seconds or an HTTP date, capped by the
   retry policy; none given: capped exponential backoff with jitter) before it is sent again.
   The others go on: one 429 says nothing about them. Only when ``run_length`` (5) submits in
   a row are refused does every submit pause, until the latest of their Retry-Afters.
2. **A fixed window is learned, not fought** (API Management's ``rate-limit-by-key``). A run of
   429s whose Retry-After (>= ``long_wait``, 2 s) all point at one moment says: the window is
   used up until then. Every submit pauses until that moment; the rate is not cut. What the
   gateway let through in the window that closed is its quota: in the next window, once that
   many submits went out and were answered, one more goes as a probe and the rest wait for
   its answer (a 429: pause to the next reset; a 202: the window is larger, go on). Once a
   window is known, one such 429 closes it. A long Retry-After never cuts the rate.
3. **Multiplicative decrease, checked.** A short 429 (Retry-After under 2 s, or none) beyond the
   retry budget halves the rate (``beta``; unlimited: half the rate observed; not below
   ``floor``, 90 %, of a limit already learned, as TCP Westwood falls back to its bandwidth
   estimate). Then one sample of answers at each rate decides, much as TCP undoes a spurious
   window reduction (RFC 3522, RFC 4015): ``check_answers`` (30) answers to submits sent at
   the lower rate from that 429's Retry-After on, against those before the cut (if those
   cannot tell, the rate goes back up for a sample of its own). Rates are timed from the
   first refused send of a sample on: a token bucket's stock, spent before, is no measure.
   - the 429s stopped (down to the budget), and with a budget known, the refusals before the cut
     were more than it explains beyond chance (``_above``: a binomial tail under 0.1 %; a
     background shows a sample with many now and then, and a check follows every 429 beyond
     the budget): our rate caused them. The decrease is kept and the limit learned
     (``learned``): the 202s from the last kept decrease to this one over the time between
     (the gateway's bucket was empty at both), else the 202/s at the higher rate; the rate
     becomes ``margin`` (97 %) of it (nothing measured: halfway back);
   - the share refused fell (beyond chance: a two-proportion z-test), as many 202/s came at
     the lower rate, or more than half are still refused: still above the limit; halve again.
     The lower rate did not slow the sends down (it did not bind): halve again too;
   - as many refused and fewer 202/s: the 429s do not depend on our rate. The episode's
     decreases are undone, and the share refused becomes the **retry budget** (``budget``,
     at most 50 %, pooled over such episodes, or all answers since a limit was last
     confirmed, whichever is larger): later 429s within it, plus 3 standard deviations,
     leave the rate alone.
4. **Additive increase.** While no decrease is being checked, the rate grows every ``interval``
   (1 s) by ``increase`` (2 %) of the limit learned (10 % while below 90 % of it), up to the
   ceiling (``--max-rps``), or back to unlimited once it is twice what was first cut from
   unlimited and there is no ceiling.

Polls call ``acquire_poll()``: they honour their own Retry-After, are paced only under a
ceiling, and never count as submits (the gateway limits submits). The gateway calls
``acquire()`` before every send, ``on_throttle(retry_after)`` on every 429 (seconds, or None when
the answer named no wait) and ``on_accept()`` on every 202, all from the task that makes the
request: the limiter keeps per-task state (which send was refused, when it may go again) in a
context variable. ``clock`` and ``sleep`` are injectable, so the behaviour is testable without
waiting (``tests/test_ratelimit.py`` runs it in virtual time).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass, field

from .retry_policy import DEFAULT_POLICY

SUBMIT, POLL = "submit", "poll"
#: seconds between two looks at the probe's answer while a learned window's quota is used up
PROBE_LOOK = 0.05
#: a probe whose answer never came (the call failed otherwise) is replaced after this long
PROBE_TIMEOUT = 5.0
#: the largest share of refusals tolerated as not caused by our rate
MAX_BUDGET = 0.5
#: how unlikely the refusals before a decrease must be under the background share for the decrease
#: to be kept (``_above``)
ABOVE_P = 0.001


@dataclass(slots=True)
class _Send:
    """One caller's (asyncio task's) current request, as the limiter knows it."""

    limiter: object
    task: object
    kind: str = SUBMIT
    granted: float | None = None  # when acquire() let it go
    not_before: float = 0.0  # its own Retry-After (or backoff) runs until then
    refusals: int = 0  # 429s in a row, for the backoff
    retrying: bool = False  # the next acquire() is this request's retry after a 429
    window: int = -1  # the number of the window it was sent in
    probe: bool = False  # sent past the window's quota to see whether the window is larger


_SEND: ContextVar[_Send | None] = ContextVar("pixbatch_ratelimit_send", default=None)


@dataclass(slots=True)
class _Busy:
    """The answers to sends made from the first refused one on: the gateway while it refuses."""

    first: float  # when the first refused submit was sent
    answers: int = 0
    refused: int = 0
    last: float = -math.inf

    @property
    def share(self) -> float:
        return self.refused / self.answers if self.answers else 0.0


@dataclass(slots=True)
class _Tally:
    """The answers to the submits sent since ``since`` (by send time)."""

    since: float
    answers: int = 0
    refused: int = 0
    busy: _Busy | None = None

    def add(self, granted: float, refused: bool) -> None:
        self.answers += 1
        self.refused += refused
        if self.busy is None and refused:
            self.busy = _Busy(granted)
        b = self.busy
        if b is not None and granted >= b.first:
            b.answers += 1
            b.refused += refused
            b.last = max(b.last, granted)

    @property
    def share(self) -> float:
        return self.refused / self.answers if self.answers else 0.0

    def rates(self, min_span: float) -> tuple[float, float] | None:
        """(sent, accepted) per second while the gateway refused some; None when too few to tell.

        Counted from the first refused send on: a token bucket's stock, spent before that, would
        make its refill rate look higher (and a rate-independent refusal share look rate-dependent).
        """
        b = self.busy
        if b is None or b.answers < 10 or b.last - b.first < min_span:
            return None
        per = (b.answers - 1) / (b.last - b.first)
        return per, per * (1 - b.share)


def _fell(before: _Tally, after: _Tally) -> bool:
    """Did the share refused (while refusing) fall, beyond chance (a two-proportion z-test at 2 sigma)?"""
    b1 = before.busy or _Busy(before.since, before.answers, before.refused)
    b2 = after.busy or _Busy(after.since, after.answers, after.refused)
    n1, n2 = b1.answers, b2.answers
    if not n1 or not n2:
        return False
    p = (b1.refused + b2.refused) / (n1 + n2)
    return b1.share - b2.share > 2 * math.sqrt(p * (1 - p) * (1 / n1 + 1 / n2))


def _above(sample: _Tally, share: float) -> bool:
    """Were more of ``sample``'s answers refused than a background ``share`` explains, beyond chance:
    at least that many refused has a probability under ``ABOVE_P`` (a one-sided binomial test)?

    With a background known, a decrease is kept only then: a 15 % background shows 9 refused of 27
    answers 0.5 % of the time, and a check after every 429 beyond the budget met such samples
    (they confirmed limits that were not there, 2 % of runs, at 0.63x the speed)."""
    n, k = sample.answers, sample.refused
    if k == 0 or share >= 1.0:
        return False
    if share <= 0.0:
        return True
    # P(X >= k), summed from k up in logs (a sample of thousands: no float overflow, no 1 - sum)
    lp, lq, ln = math.log(share), math.log1p(-share), math.lgamma(n + 1)
    tail = 0.0
    for i in range(k, n + 1):
        term = math.exp(ln - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * lp + (n - i) * lq)
        tail += term
        if tail >= ABOVE_P or i > n * share and term < 1e-12 * tail:
            break
    return tail < ABOVE_P


@dataclass(slots=True)
class _Check:
    """A decrease being checked: the answers at the higher rate and at the lower, compared.

    First the lower rate's are collected (the higher rate's are what came before the cut). If
    those could not show how the gateway answers while it refuses, the rate goes back up for a
    sample of its own (``up``): one measurement at each rate, in whichever order.
    """

    start: float | None  # the rate an undo restores (None: unlimited)
    high_rate: float  # the rate cut from (observed, when it was unlimited)
    low_rate: float
    other: _Tally  # the sample not being collected now (the higher rate's, or the lower's when up)
    until: float  # sends before this belong to ``other`` (answers come late)
    up: bool = False  # the higher rate's sample is being collected (the lower one's is ``other``)


class _Aimd:
    """The submit rate: additive increase, multiplicative decrease checked by the answers after it."""

    def __init__(self, ceiling: float | None, *, min_rps: float, interval: float, beta: float, floor: float,
                 increase: float, margin: float, check_answers: int, now: float):
        self.ceiling = ceiling
        self.rate: float | None = ceiling  # None: unlimited
        self.min_rps, self.interval, self.beta, self.floor = min_rps, interval, beta, floor
        self.increase, self.margin, self.check_answers = increase, margin, check_answers
        self.learned: float | None = None  # the gateway's submit rate, from the last confirmed decrease
        self.budget = 0.0  # the retry budget: the share of refusals that does not depend on our rate
        self._evidence = [0, 0]  # refusals, answers behind the budget
        self._long = _Tally(now)  # every answer since the last limit confirmed (or the start)
        self._accepted = 0  # 202s so far
        self._episode: tuple[float, int] | None = None  # (when, 202s) at the last decrease that was kept
        self._chain: tuple[float, int] = (now, 0)  # the same at the first decrease of the episode
        self._tally = _Tally(now)  # the sample being collected
        self._check: _Check | None = None
        self._grown = now
        self._top: float | None = None  # the rate the last confirmed decrease was from (or the limit learned)
        self._origin: float | None = None  # the observed rate when unlimited was first cut

    def allowance(self, answers: int) -> float:
        """Refusals among ``answers`` that the retry budget explains (the budget plus 3 sigma)."""
        p = self.budget
        return answers * p + 3 * math.sqrt(answers * p * (1 - p))

    def answer(self, granted: float, refused: bool, now: float, observed: float, deadline: float = 0.0) -> None:
        self._long.add(granted, refused)
        self._accepted += not refused
        t, check = self._tally, self._check
        if granted < t.since:
            if check is not None and check.other.since <= granted < check.until:
                check.other.add(granted, refused)  # a late answer to a send of the other sample
            return  # else sent before the last decision: says nothing about the rate now
        t.add(granted, refused)
        if check is not None:
            if t.answers >= self.check_answers or (  # (refusals go on at a slow rate: no need to wait for all)
                    t.answers >= 10 and now - t.since >= 3 * self.interval and t.refused > self.allowance(t.answers)):
                self._verdict(now)
        elif refused and t.refused > self.allowance(t.answers):
            if self.rate is None:  # what was sent: over the last second, or the sample if it says more
                rates = t.rates(self.interval)
                observed = max(observed, rates[0] if rates else 0.0, 2 * self.min_rps)
                if self._origin is None:
                    self._origin = observed
            self._chain = (now, self._accepted)
            self._cut(now, self.rate, self.rate or observed, t, deadline)
        elif t.answers >= 500 and not refused:
            self._tally = _Tally(now)  # a fresh sample: a limit that appears later is seen at once

    def _cut(self, now: float, start: float | None, current: float, sample: _Tally, deadline: float) -> None:
        """Halve ``current``; the sends from ``deadline`` on (when the gateway said it would take
        them again: the Retry-After of the 429 that caused it) will tell whether that helped."""
        lower = current * self.beta
        if self.learned is not None and lower < self.floor * self.learned < current:
            lower = self.floor * self.learned  # not far below the limit learned (as TCP Westwood)
        self.rate = max(self.min_rps, lower)
        self._check = _Check(start, current, self.rate, sample, now)
        self._tally = _Tally(max(now, deadline))

    def _verdict(self, now: float) -> None:
        check, sample = self._check, self._tally
        assert check is not None
        high, low = (sample, check.other) if check.up else (check.other, sample)
        if (not check.up and low.refused <= self.allowance(low.answers)
                and (not self.budget or _fell(high, low) and _above(high, self.budget))):
            self._confirm(now, check, low)  # the 429s stopped at the lower rate: our rate caused them
            return
        at_high, at_low = high.rates(self.interval / 2), low.rates(self.interval / 2)
        if at_low is None and not check.up and low.answers < 3 * self.check_answers:
            return  # the refusals started late in the sample: more answers at the lower rate
        if (low.busy or low).share > MAX_BUDGET:  # more refused than a background is allowed: a limit
            self._cut(now, check.high_rate, check.low_rate, low, now)
            return
        if at_high is None and not check.up:  # nothing to compare with: a sample at the higher rate
            self._check = _Check(check.start, check.high_rate, check.low_rate, low, now, up=True)
            self.rate, self._tally = check.high_rate, _Tally(now)
            return
        if at_high is None or at_low is None:
            limit = _fell(high, low)  # (refusals too rare to time at one of the rates)
        elif at_low[0] > 0.8 * at_high[0]:  # the lower rate did not bind: no experiment; lower still
            self._cut(now, check.start, check.low_rate, low, now)
            return
        else:  # fewer refused, or as many accepted, at the lower rate
            limit = _fell(high, low) or at_low[1] >= 0.8 * at_high[1]
        if limit:  # still above the limit
            self._cut(now, check.high_rate, check.low_rate, low, now)
            return
        # as many refused, and fewer accepted, at the lower rate: not our rate. Undo, and
        # tolerate that share (measured at both rates: it does not depend on the rate)
        self._evidence[0] += high.refused + low.refused
        self._evidence[1] += high.answers + low.answers
        long_run = self._long.share if self._long.answers >= 100 else 0.0  # all refused, since no limit
        self.budget = min(MAX_BUDGET, max(self._evidence[0] / self._evidence[1], long_run))
        self.rate, self._check = check.start, None
        self._tally = _Tally(now)
        self._grown = now

    def _confirm(self, now: float, check: _Check, low: _Tally) -> None:
        self._check = None
        # the limit: the 202s from the last kept decrease to this one (the gateway's bucket was
        # empty at both), else the 202/s of the sample that was cut
        rates = check.other.rates(self.interval)
        limit = rates[1] if rates is not None else None
        if self._episode is not None:
            seconds, accepted = self._chain[0] - self._episode[0], self._chain[1] - self._episode[1]
            if seconds >= 2 * self.interval and accepted >= 10:
                limit = accepted / seconds
        self._episode = self._chain
        if limit is not None:
            self.learned = limit
            self.rate = min(check.high_rate, max(check.low_rate, self.margin * limit))
        else:  # nothing measured: the limit is between the two rates
            self.rate = (check.low_rate + check.high_rate) / 2
        self._top = self.learned or check.high_rate
        if self.budget:  # below the limit now: what is still refused is the background
            self._evidence = [low.refused, low.answers]
            self.budget = low.share
        self._long = _Tally(low.since)
        self._tally = _Tally(now)
        self._grown = now

    def grow(self, now: float) -> None:
        """Additive increase, once per interval, while no decrease is being checked."""
        if self.rate is None or self._check is not None or now - self._grown < self.interval:
            return
        self._grown = now
        if self.ceiling is not None and self.rate >= self.ceiling:
            return
        top = self._top or self.rate
        # two speeds: back toward where it hurt in a few steps, then past it slowly
        self.rate += self.increase * top * (5 if self.rate < 0.9 * top else 1)
        if self.ceiling is not None:
            self.rate = min(self.rate, self.ceiling)
        elif self._origin is not None and self.rate >= 2 * self._origin:
            self.rate = None  # well past where it hurt: back to unlimited


@dataclass(slots=True)
class _Count:
    sent: int = 0
    refused: int = 0  # refused by the window (long Retry-After)


@dataclass(slots=True)
class _Window:
    """A fixed window (API Management's rate-limit-by-key), learned from the 429s that close it."""

    number: int = 0  # windows closed so far: the current one's number
    reset: float = -math.inf  # when the current window opened (the latest reset)
    quota: int | None = None  # submits the gateway let through in the last window that closed
    current: _Count = field(default_factory=_Count)
    ending: _Count | None = None  # the window that closed last, until its quota is taken
    unanswered: dict[int, float] = field(default_factory=dict)  # this window's sends in flight: id -> when
    probe_at: float | None = None  # when the probe past the quota went out
    open: bool = False  # a probe was accepted: no cap until the next reset

    @property
    def known(self) -> bool:
        return self.number > 0

    def close(self, deadline: float) -> bool:
        """The gateway says: closed until ``deadline``. False if that is the reset already known."""
        if deadline <= self.reset + 1.0:
            return False
        self.number += 1
        self.reset = deadline
        self.ending, self.current = self.current, _Count()
        self.unanswered.clear()
        self.probe_at, self.open = None, False
        return True

    def admit(self, now: float, send: _Send) -> float:
        """0: the submit may go now (counted); else seconds to look again.

        Past the quota, one probe goes, and only once every earlier send of the window has
        its answer: the gateway counts in the order requests arrive, not the order they left.
        """
        if self.ending is not None:
            self.quota = max(1, self.ending.sent - self.ending.refused)
            self.ending = None
        if self.quota is not None and not self.open and self.current.sent >= self.quota:
            if self.probe_at is not None and now - self.probe_at < PROBE_TIMEOUT:
                return PROBE_LOOK
            self.unanswered.pop(id(send), None)
            if any(now - t < PROBE_TIMEOUT for t in self.unanswered.values()):
                return PROBE_LOOK
            self.probe_at = now
            send.probe = True
        self.current.sent += 1
        send.window = self.number
        if self.quota is not None:  # (only then is anything waiting on the answers)
            self.unanswered[id(send)] = now
        return 0.0

    def refused(self, send: _Send) -> None:
        """A send of ours was refused by the window (not counted by the gateway)."""
        if send.window == self.number:
            self.current.refused += 1
        elif send.window == self.number - 1 and self.ending is not None:
            self.ending.refused += 1

    def accepted(self, send: _Send) -> None:
        self.answered(send)
        if send.probe and send.window == self.number:
            self.open, self.probe_at = True, None

    def answered(self, send: _Send) -> None:
        if send.window == self.number:
            self.unanswered.pop(id(send), None)


class AdaptiveRateLimiter:
    """The limiter in front of every gateway call (the scheme: this module's docstring).

    ``max_rps``: the ceiling (``--max-rps``); None: unlimited until the answers say otherwise.
    """

    def __init__(self, max_rps: float | None = None, *, min_rps: float = 0.5, interval: float = 1.0,
                 beta: float = 0.5, floor: float = 0.9, increase: float = 0.02, margin: float = 0.97,
                 check_answers: int = 30, run_length: int = 5, long_wait: float = 2.0,
                 backoff: Callable[[int], float] = DEFAULT_POLICY.backoff,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep):
        if max_rps is not None and max_rps <= 0:
            raise ValueError("max_rps must be positive")
        self.ceiling = max_rps
        self.min_rps = min_rps
        self.run_length = run_length
        self.long_wait = long_wait
        self._backoff = backoff
        self._clock = clock
        self._sleep = sleep
        self._aimd = _Aimd(max_rps, min_rps=min_rps, interval=interval, beta=beta, floor=floor, increase=increase,
                           margin=margin, check_answers=check_answers, now=clock())
        self.window = _Window()
        self._tokens = 1.0
        self._last_refill = clock()
        self._paused_until = 0.0  # every submit waits until then
        self._run: deque[tuple[float, bool]] = deque(maxlen=run_length)  # (deadline, long) of 429s in a row
        self._recent: deque[float] = deque()
        self._lock = asyncio.Lock()
        self.throttles = 0

    # -- what the rest of the program reads ---------------------------------------------

    @property
    def rate(self) -> float | None:
        """Submits per second now; None: unlimited."""
        return self._aimd.rate

    @property
    def learned(self) -> float | None:
        """The gateway's submit rate as last measured (a decrease our rate had caused)."""
        return self._aimd.learned

    @property
    def budget(self) -> float:
        """The retry budget: the share of submits refused whatever our rate."""
        return self._aimd.budget

    def observed_rps(self) -> float:
        """Submits let through in the last second."""
        now = self._clock()
        while self._recent and self._recent[0] < now - 1.0:
            self._recent.popleft()
        return float(len(self._recent))

    # -- feedback -----------------------------------------------------------------------

    def _me(self) -> _Send:
        """The calling task's send (a context copied into a child task is not reused)."""
        try:
            task: object = asyncio.current_task()
        except RuntimeError:
            task = None
        me = _SEND.get()
        if me is None or me.limiter is not self or me.task is not task:
            me = _Send(self, task)
            _SEND.set(me)
        return me

    def on_accept(self) -> None:
        """A submit was accepted (202)."""
        me, now = self._me(), self._clock()
        me.refusals = 0
        self._run.clear()
        self.window.accepted(me)
        self._aimd.answer(now if me.granted is None else me.granted, False, now, self.observed_rps())

    def on_throttle(self, retry_after: float | None) -> float:
        """A 429: this request waits ``retry_after`` seconds (None: backoff); the rest as the answers show.

        Returns the seconds this request waits (its next ``acquire()`` waits them out).
        """
        me, now = self._me(), self._clock()
        self.throttles += 1
        me.refusals += 1
        me.retrying = True
        deadline = now + (self._backoff(me.refusals) if retry_after is None else retry_after)
        me.not_before = max(me.not_before, deadline)
        if me.kind == POLL:
            return deadline - now  # polls are not what the gateway limits: this one waits, the others go on
        self.window.answered(me)
        long = retry_after is not None and retry_after >= self.long_wait
        run = self._run
        run.append((deadline, long))
        if long:
            self.window.refused(me)
            deadlines = [d for d, is_long in run if is_long]
            if (self.window.known and me.window == self.window.number) or (
                    len(deadlines) == self.run_length and max(deadlines) - min(deadlines) <= 1.5):
                if self.window.close(max(deadline, *deadlines)):
                    self._pause(self.window.reset)
                return deadline - now
        if len(run) == self.run_length:
            self._pause(max(d for d, _ in run))
        if not long:
            self._aimd.answer(now if me.granted is None else me.granted, True, now, self.observed_rps(), deadline)
        return deadline - now

    def _pause(self, until: float) -> None:
        """Every submit waits until ``until``."""
        self._paused_until = max(self._paused_until, until)

    # -- waiting ------------------------------------------------------------------------

    async def _own_turn(self, me: _Send, kind: str) -> None:
        """Wait out this request's own Retry-After (a new request starts a new count of refusals)."""
        if not me.retrying:
            me.refusals = 0
        me.kind, me.probe, me.retrying = kind, False, False
        while (wait := me.not_before - self._clock()) > 0:
            await self._sleep(wait)

    async def acquire_poll(self) -> None:
        """Before a status poll: its own Retry-After; paced only under a ceiling (never counted as a submit)."""
        me = self._me()
        await self._own_turn(me, POLL)
        if self.ceiling is not None:
            async with self._lock:
                await self._token()

    async def acquire(self) -> None:
        """Before a submit: its own Retry-After, a pause, the window's quota, the rate."""
        me = self._me()
        await self._own_turn(me, SUBMIT)
        async with self._lock:
            while True:
                now = self._clock()
                wait = self._paused_until - now
                if wait <= 0:
                    wait = self.window.admit(now, me)
                if wait > 0:
                    await self._sleep(wait)
                    continue
                break
            await self._token()
            now = self._clock()
            me.granted = now
            self._recent.append(now)
            if len(self._recent) > 100_000:
                self.observed_rps()

    async def _token(self) -> None:
        """The token bucket at the current rate (nothing to wait for when unlimited)."""
        while True:
            now = self._clock()
            self._aimd.grow(now)
            rate = self._aimd.rate
            if rate is None:
                return
            burst = max(1.0, rate / 10)
            self._tokens = min(burst, self._tokens + (now - self._last_refill) * rate)
            self._last_refill = now
            if self._tokens >= 1.0 - 1e-9:  # tolerance: float refills can stall just below 1
                self._tokens = max(0.0, self._tokens - 1.0)
                return
            await self._sleep((1.0 - self._tokens) / rate)
