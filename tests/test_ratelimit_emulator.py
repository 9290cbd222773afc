"""The rate limiter end to end: ``Gateway.submit`` against the emulator's front door on loopback.

One short run per kind of limit (a few seconds each, real time): a token bucket, an API
Management fixed window, throttling whatever the rate. The long forms, with the targets,
are ``bench/ratelimit.py``.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from pixbatch.emulator import fast_test_config, start_emulator
from pixbatch.gateway import Gateway
from pixbatch.ratelimit import AdaptiveRateLimiter

EDIT = {"prompt": "p", "images": ["https://x.test/a.png"]}

pytestmark = pytest.mark.slow


def submit_all(emu, n: int, concurrency: int) -> tuple[AdaptiveRateLimiter, float]:
    """``n`` submits from ``concurrency`` tasks through one Gateway; (its limiter, seconds taken)."""
    rl = AdaptiveRateLimiter(None)

    async def main():
        async with Gateway(emu.url, emu.api_key, limiter=rl) as gw:
            left = iter(range(n))

            async def worker():
                for _ in left:
                    await gw.submit("edit", EDIT)

            await asyncio.gather(*(worker() for _ in range(concurrency)))

    t0 = time.monotonic()
    asyncio.run(main())
    return rl, time.monotonic() - t0


def config(**kw):
    return fast_test_config(render="lazy", queue_time=0, processing_time=0, **kw)


def test_token_bucket():
    with start_emulator(config(rate_limit=40)) as emu:
        rl, took = submit_all(emu, 120, 16)
        log = emu.requests()
    accepted, refused = len(log.accepted()), len(log.by_reason("rate_limit"))
    assert accepted == 120 and refused <= 0.15 * (accepted + refused)  # (most in the first burst)
    assert took <= 120 / 40 * 1.6  # the 40 of the burst, then ~40/s


def test_fixed_window_pauses_to_the_reset_and_learns_the_quota():
    with start_emulator(config(rate_window=(30, 2))) as emu:
        rl, _ = submit_all(emu, 100, 16)
        log = emu.requests()
    submits = sorted(log.submits, key=lambda e: e.seq)
    assert len(log.accepted()) == 100 and rl.window.quota == 30 and rl.rate is None
    # the first closing: what was in flight is refused; then one probe per window (2-3 windows left)
    first = next(i for i, e in enumerate(submits) if e.reason == "rate_window")
    reopened = next(i for i in range(first, len(submits)) if submits[i].accepted)
    assert sum(1 for e in submits[reopened:] if e.reason == "rate_window") <= 3


def test_throttling_whatever_the_rate_does_not_slow_the_run_down():
    with start_emulator(config(throttle_rate=0.15, seed=5)) as emu:
        rl, took = submit_all(emu, 150, 16)
        log = emu.requests()
    assert len(log.accepted()) == 150 and len(log.by_reason("throttle")) >= 10
    # a decrease was tried, found not to help and undone: the refused share became the retry budget
    assert rl.learned is None and rl.budget > 0
    assert took < 12  # (the decreases tried at the start cost a few seconds at a lower rate)
