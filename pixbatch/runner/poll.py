"""Waiting for a submitted job to end: the poll clock, the poll loop, the webhook receiver.

Per step, a ``PollClock`` learns how long jobs take (from the gateway's created_at and
completed_at, else from what the runner observed) and says when to poll: first at about
mean + one deviation after the 202, then at growing intervals (x1.5, capped). On the
emulator's default timings that is about two polls per completed item.

In webhook mode the gateway POSTs terminal statuses to the run's callback URL; the
``WebhookReceiver`` only wakes the item up, whose status is then read once from the gateway
(a callback is not trusted on its own), and an item polls as usual if no callback comes in time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from .. import state as st
from ..errors import AuthError, GatewayError, NotFound, QuotaExceeded
from ..gateway import Gateway, JobStatus
from .outcome import StopReason

POLL_GIVE_UP = 6  # rounds of (already retried) poll failures before an item is left for the next run


class PollClock:
    """Learns a step's job duration; says when to poll next."""

    def __init__(self, initial: float, cap: float):
        self.initial, self.cap = initial, cap
        self.mean: float | None = None
        self.var = 0.0

    def observe(self, seconds: float) -> None:
        if self.mean is None:
            self.mean = seconds
            self.var = (seconds * 0.25) ** 2
            return
        a = 0.15
        d = seconds - self.mean
        self.mean += a * d
        self.var = (1 - a) * (self.var + a * d * d)

    def first(self) -> float:
        if self.mean is None:
            return self.initial
        # a small margin past mean + one deviation, scaled down for jobs that take no time
        return min(self.cap, self.mean + self.var ** 0.5 + min(0.02, 0.1 * self.mean))

    def next(self, k: int) -> float:
        base = self.initial / 2 if self.mean is None else max(0.05, 0.3 * self.mean)
        return min(self.cap, base * (1.5 ** (k - 1)))


class WebhookReceiver:
    """Callbacks by request id: ``wait(request_id)`` returns once called back (or timed out); the
    HTTP endpoint that verifies them is ``callbacks.Receiver``."""

    MAX_EARLY = 100_000  # only verified callbacks get here

    def __init__(self) -> None:
        self.waiting: dict[str, asyncio.Event] = {}
        self.early: set[str] = set()  # callbacks that beat our own record of the 202

    def wake(self, request_id: str) -> None:
        ev = self.waiting.get(request_id)
        if ev is not None:
            ev.set()
        elif len(self.early) < self.MAX_EARLY:
            self.early.add(request_id)

    async def wait(self, request_id: str, timeout: float) -> None:
        if request_id in self.early:
            self.early.discard(request_id)
            return
        ev = self.waiting.setdefault(request_id, asyncio.Event())
        try:
            await asyncio.wait_for(ev.wait(), timeout=timeout)
        except asyncio.TimeoutError:
            pass  # no callback in time: poll as usual from now on
        finally:
            self.waiting.pop(request_id, None)


class Poller:
    """Polls one item until its job ends; records status changes through ``put``."""

    def __init__(self, gateway: Gateway, *, initial: float, cap: float, put: Callable[..., Any],
                 on_stop: Callable[[StopReason, str], None], webhooks: WebhookReceiver | None = None):
        self.gw = gateway
        self.initial, self.cap = initial, cap
        self.put = put
        self.on_stop = on_stop  # a refused key, a used-up quota: the whole run stops
        self.webhooks = webhooks
        self.clocks: dict[str, PollClock] = {}
        self.polls = 0

    def clock(self, step: str) -> PollClock:
        return self.clocks.setdefault(step, PollClock(self.initial, self.cap))

    async def until_done(self, row: st.ItemRow, *, resumed: bool) -> JobStatus | None:
        """The terminal status, or None when the item is left SUBMITTED for a later run."""
        assert row.request_id is not None
        clock = self.clock(row.step)
        t_submit = time.monotonic()
        delay = 0.0 if resumed else clock.first()
        k = failures = 0
        last = row.gateway_status
        if self.webhooks is not None and not resumed:
            await self.webhooks.wait(row.request_id, timeout=max(30.0, 4 * clock.first()))
            delay = 0.0
        while True:
            await asyncio.sleep(delay)
            try:
                s = await self.gw.status(row.request_id, row.polling_path)
            except QuotaExceeded as exc:  # the item stays SUBMITTED: a later run polls it
                self.on_stop(StopReason.QUOTA, str(exc))
                return None
            except AuthError as exc:
                self.on_stop(StopReason.AUTH, str(exc))
                return None
            except NotFound as exc:
                row.error = f"polling failed: {exc}"
                self.put(row, reason=row.error)
                return None
            except GatewayError as exc:
                # the request is accepted and polling is free: outlast a storm before giving up
                # (the item stays SUBMITTED with its request id; a re-run polls it again)
                failures += 1
                if failures >= POLL_GIVE_UP:
                    row.error = f"polling failed: {exc}"
                    self.put(row, reason=row.error)
                    return None
                delay = self.gw.policy.backoff(failures + 3)
                continue
            failures = 0
            self.polls += 1
            row.polls += 1
            if s.status != last:
                if s.status == "PROCESSING" and row.started_at is None:
                    row.started_at = st.utcnow()
                row.gateway_status = last = s.status
                if not s.terminal:
                    self.put(row, gateway_status=s.status)
            if s.terminal:
                if not resumed:
                    clock.observe(s.server_seconds if s.server_seconds is not None else time.monotonic() - t_submit)
                elif s.server_seconds is not None:
                    clock.observe(s.server_seconds)
                return s
            k += 1
            delay = clock.next(k)
