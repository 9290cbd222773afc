"""The one retry loop (``retry_policy.retrying``) and its three predicates, with fake calls: no HTTP."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from pixbatch import retry_policy
from pixbatch.retry_policy import Again, RetryPolicy, download_again, poll_again, retrying, submit_again
from pixbatch.transport import Reply


def reply(code: int, body: bytes = b"{}", **headers: str) -> Reply:
    return Reply(code, httpx.Headers(headers), body)


class Calls:
    """A fake call answering from a list (the last answer repeats); exceptions are raised."""

    def __init__(self, *answers):
        self.answers = list(answers)
        self.n = 0

    async def __call__(self):
        a = self.answers[min(self.n, len(self.answers) - 1)]
        self.n += 1
        if isinstance(a, BaseException):
            raise a
        return a


class Sleeps:
    def __init__(self):
        self.waits: list[float] = []

    async def __call__(self, s: float) -> None:
        self.waits.append(s)


def go(calls, on, policy=RetryPolicy(max_attempts=4), **kw):
    sleeps = Sleeps()
    final = asyncio.run(retrying(policy, calls, on=on, sleep=sleeps, **kw))
    return final, sleeps.waits


def test_stops_at_once_when_the_predicate_says_stop():
    calls = Calls(reply(202))
    final, waits = go(calls, submit_again)
    assert final.outcome.status_code == 202 and final.tries == 1 and not final.exhausted
    assert calls.n == 1 and waits == []


def test_retries_until_an_answer_then_returns_it():
    calls = Calls(httpx.ConnectError("refused"), reply(503), reply(202))
    final, waits = go(calls, submit_again)
    assert final.outcome.status_code == 202 and final.tries == 3 and calls.n == 3 and len(waits) == 2


def test_gives_up_after_max_attempts_with_the_last_outcome():
    calls = Calls(reply(500))
    final, waits = go(calls, submit_again)
    assert final.exhausted and final.tries == 4 and calls.n == 4 and len(waits) == 3
    assert final.outcome.status_code == 500


def test_backoff_grows_and_a_retry_after_is_honoured():
    policy = RetryPolicy(max_attempts=5, base=1, cap=4)
    old, retry_policy.INSTANT = retry_policy.INSTANT, False
    try:
        _, waits = go(Calls(reply(503)), poll_again, policy)
        _, after = go(Calls(reply(429, **{"Retry-After": "3"}), reply(200, b"{}")), download_again, policy)
    finally:
        retry_policy.INSTANT = old
    assert [0.5 <= waits[0] <= 1, 1 <= waits[1] <= 2, 2 <= waits[2] <= 4, 2 <= waits[3] <= 4] == [True] * 4
    assert after == [3.0]


def test_the_instant_switch_makes_every_wait_zero():
    with retry_policy.instant():
        _, waits = go(Calls(reply(503)), poll_again, RetryPolicy(max_attempts=3, base=10))
    assert waits == [0.0, 0.0]


def test_throttles_have_their_own_allowance_and_go_to_the_limiter():
    throttled: list[float] = []
    calls = Calls(reply(429, **{"Retry-After": "2"}), reply(429, **{"Retry-After": "2"}), reply(503), reply(202))
    final, waits = go(calls, submit_again, RetryPolicy(max_attempts=2), on_throttle=throttled.append)
    assert final.outcome.status_code == 202 and not final.exhausted
    assert final.throttles == 2 and final.tries == 2  # the 429s did not use up the two tries
    assert throttled == [2.0, 2.0] and len(waits) == 1  # the limiter waits for 429s; the loop slept once (503)


def test_throttles_run_out():
    throttled: list[float] = []
    final, _ = go(Calls(reply(429)), poll_again, on_throttle=throttled.append, max_throttles=5)
    assert final.exhausted and final.throttles == 5 and final.tries == 0 and len(throttled) == 5


def test_before_runs_before_every_call():
    order: list[str] = []

    async def before():
        order.append("acquire")

    async def call():
        order.append("call")
        return reply(503) if len(order) < 4 else reply(200)

    final, _ = go(call, poll_again, before=before)
    assert order == ["acquire", "call"] * 2 and final.outcome.status_code == 200


def test_unlisted_exceptions_propagate_at_once():
    calls = Calls(ValueError("a bug"))
    with pytest.raises(ValueError):
        go(calls, poll_again)
    assert calls.n == 1


# -- the predicates: what each kind of call retries (the table in retry_policy's docstring) --


@pytest.mark.parametrize("outcome,submit,poll,download", [
    (reply(202), None, None, None),
    (reply(200, b"<html>"), None, Again(), None),  # garbage body: polls try again; a submit is AMBIGUOUS
    (reply(429, **{"Retry-After": "7"}), Again(7.0, True), Again(7.0, True), Again(7.0)),
    (reply(500), Again(), Again(), Again()),
    (reply(503), Again(), Again(), Again()),
    (reply(502), None, Again(), Again()),  # a proxy's answer: the submit may have been accepted
    (reply(504), None, Again(), Again()),
    (reply(400), None, None, None),
    (reply(401), None, None, None),
    (reply(402), None, None, None),
    (reply(404), None, None, None),
    (httpx.ConnectError("refused"), Again(), Again(), Again()),  # never left: a submit may go again
    (httpx.ReadTimeout("slow"), None, Again(), Again()),  # left: the submit's fate is unknown
    (httpx.RemoteProtocolError("closed"), None, Again(), Again()),
    (httpx.PoolTimeout("busy"), Again(), Again(), Again()),
])
def test_predicates(outcome, submit, poll, download):
    assert (submit_again(outcome), poll_again(outcome), download_again(outcome)) == (submit, poll, download)
