"""The gateway client, retry predicate and rate limiter, driven through httpx.MockTransport."""

from __future__ import annotations

import asyncio
import email.utils
import json
import time

import httpx
import pytest

from pixbatch import retry_policy
from pixbatch.contract import AUTH_HEADER, ENDPOINTS
from pixbatch.errors import (AuthError, BadRequest, GatewayProtocolError, GatewayUnreachable, InsufficientBalance,
                             ServerError, SubmitUnknown)
from pixbatch.gateway import Gateway, parse_timestamp
from pixbatch.ratelimit import AdaptiveRateLimiter
from pixbatch.retry_policy import parse_retry_after

KEY = "sk-test-secret-0123"
ACCEPTED = {"request_id": "p-image_abc", "status": "QUEUED",
            "polling_url": "https://gateway.pixazo.ai/v2/requests/status/p-image_abc"}


@pytest.fixture(autouse=True)
def _instant_backoff():
    with retry_policy.instant():
        yield


class Script:
    """A MockTransport handler answering from a list: responses or exceptions to raise."""

    def __init__(self, *answers):
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        a = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(a, Exception):
            raise a
        return a


def gateway(script: Script, **kw) -> tuple[Gateway, list]:
    seen: list = []
    gw = Gateway("https://gw.test", KEY, transport=httpx.MockTransport(script), on_exchange=seen.append, **kw)
    return gw, seen


def run(coro):
    return asyncio.run(coro)


def test_submit_sends_the_key_and_returns_the_polling_path():
    s = Script(httpx.Response(202, json=ACCEPTED))
    gw, seen = gateway(s)
    acc = run(gw.submit("edit", {"prompt": "p", "images": ["https://x.test/a.png"]}))
    assert acc.request_id == "p-image_abc" and acc.polling_path == "/v2/requests/status/p-image_abc"
    req = s.requests[0]
    assert req.url.path == ENDPOINTS["edit"] and req.headers[AUTH_HEADER] == KEY
    assert json.loads(req.content) == {"prompt": "p", "images": ["https://x.test/a.png"]}
    # exchanges are recorded without headers or key
    assert [(e.method, e.path, e.status) for e in seen] == [("POST", ENDPOINTS["edit"], 202)]
    assert KEY not in repr(seen)


def test_missing_key_is_an_auth_error():
    with pytest.raises(AuthError, match="PIXAZO_API_KEY"):
        Gateway("https://gw.test", "", transport=httpx.MockTransport(Script(httpx.Response(202))))


def test_submit_429_honours_retry_after_then_succeeds():
    s = Script(httpx.Response(429, headers={"Retry-After": "2"}), httpx.Response(202, json=ACCEPTED))
    limiter = AdaptiveRateLimiter(100)
    gw, _ = gateway(s, limiter=limiter)
    assert run(gw.submit("upscale", {"image": "https://x.test/a.png"})).request_id == "p-image_abc"
    assert len(s.requests) == 2 and limiter.throttles == 1 and limiter.rate == 50


def test_submit_500_is_a_definite_refusal_and_is_retried():
    s = Script(httpx.Response(500, json={"error": "x"}), httpx.Response(503), httpx.Response(202, json=ACCEPTED))
    gw, _ = gateway(s)
    assert run(gw.submit("upscale", {"image": "https://x.test/a.png"})).request_id == "p-image_abc"
    assert len(s.requests) == 3


def test_submit_500_forever_gives_up_with_server_error():
    s = Script(httpx.Response(500))
    gw, _ = gateway(s)
    with pytest.raises(ServerError):
        run(gw.submit("upscale", {"image": "https://x.test/a.png"}))
    assert len(s.requests) == gw.policy.max_attempts


@pytest.mark.parametrize("answer", [
    httpx.ReadError("connection reset"),
    httpx.ReadTimeout("timed out"),
    httpx.RemoteProtocolError("server disconnected"),
    httpx.Response(502),
    httpx.Response(504),
    httpx.Response(202, content=b"<html>oops"),
    httpx.Response(202, json={"status": "QUEUED"}),
])
def test_submit_with_unknown_outcome_is_ambiguous_and_never_retried(answer):
    s = Script(answer, httpx.Response(202, json=ACCEPTED))
    gw, _ = gateway(s)
    with pytest.raises(SubmitUnknown):
        run(gw.submit("upscale", {"image": "https://x.test/a.png"}))
    assert len(s.requests) == 1


def test_submit_connect_error_never_left_so_it_is_retried():
    s = Script(httpx.ConnectError("refused"), httpx.Response(202, json=ACCEPTED))
    gw, _ = gateway(s)
    assert run(gw.submit("upscale", {"image": "https://x.test/a.png"})).request_id == "p-image_abc"
    s2 = Script(httpx.ConnectError("refused"))
    gw2, _ = gateway(s2)
    with pytest.raises(GatewayUnreachable, match="cannot reach"):
        run(gw2.submit("upscale", {"image": "https://x.test/a.png"}))


@pytest.mark.parametrize("code,exc", [(400, BadRequest), (401, AuthError), (403, AuthError),
                                      (402, InsufficientBalance)])
def test_submit_definite_errors(code, exc):
    s = Script(httpx.Response(code, json={"error": "E", "message": f"echo {KEY}"}))
    gw, _ = gateway(s)
    with pytest.raises(exc) as info:
        run(gw.submit("upscale", {"image": "https://x.test/a.png"}))
    assert len(s.requests) == 1
    assert KEY not in str(info.value)


def test_status_retries_5xx_network_and_garbage():
    done = {"request_id": "r1", "status": "COMPLETED", "error": None,
            "output": {"media_url": ["https://cdn.test/o.jpg"], "media_type": "image/jpeg"},
            "created_at": "2026-03-31T07:32:03.749Z", "completed_at": "2026-03-31 07:32:20"}
    s = Script(httpx.Response(503), httpx.ReadError("reset"), httpx.Response(200, content=b"{not json"),
               httpx.Response(429, headers={"Retry-After": "0"}), httpx.Response(200, json=done))
    gw, seen = gateway(s)
    st = run(gw.status("r1", "/v2/requests/status/r1"))
    assert st.status == "COMPLETED" and st.media_urls == ("https://cdn.test/o.jpg",)
    assert st.server_seconds == pytest.approx(16.251)
    assert [e.status for e in seen] == [503, None, 200, 429, 200]


def test_status_garbage_forever_is_a_protocol_error():
    gw, _ = gateway(Script(httpx.Response(200, content=b"garbage")))
    with pytest.raises(GatewayProtocolError):
        run(gw.status("r1"))
    gw, _ = gateway(Script(httpx.Response(200, json={"status": "WEIRD"})))
    with pytest.raises(GatewayProtocolError):
        run(gw.status("r1"))


def test_download_does_not_send_the_key():
    s = Script(httpx.Response(500), httpx.Response(200, content=b"img", headers={"content-type": "image/png"}))
    gw, _ = gateway(s)
    d = run(gw.download("https://cdn.test/o.png"))
    assert d.data == b"img" and d.content_type == "image/png"
    assert all(AUTH_HEADER not in r.headers for r in s.requests)


def test_retry_after_parsing():
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after("") is None and parse_retry_after("soon") is None
    future = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 28 <= parse_retry_after(future) <= 31
    assert parse_retry_after(email.utils.formatdate(time.time() - 30, usegmt=True)) == 0.0


def test_predicate_names_its_conditions():
    assert retry_policy.retry_status(429, idempotent=False)
    assert retry_policy.retry_status(500, idempotent=False) and not retry_policy.retry_status(502, idempotent=False)
    assert retry_policy.retry_status(502, idempotent=True)
    assert not retry_policy.retry_status(400, idempotent=True)
    assert not retry_policy.retry_transport_error(httpx.ReadTimeout("x"), idempotent=False)
    assert retry_policy.retry_transport_error(httpx.ReadTimeout("x"), idempotent=True)
    assert not retry_policy.retry_transport_error(ValueError("x"), idempotent=True)  # type: ignore[arg-type]


def test_backoff_is_capped_and_instant_switch_works():
    p = retry_policy.RetryPolicy(base=1, cap=4)
    assert p.backoff(10) == 0.0  # instant (autouse fixture)
    retry_policy.INSTANT = False
    try:
        waits = [p.backoff(n) for n in range(1, 8)]
        assert all(0 < w <= 4 for w in waits) and waits[-1] >= 2
    finally:
        retry_policy.INSTANT = True


def test_gateway_timestamps():
    assert parse_timestamp("2026-05-22 13:19:23").year == 2026
    assert parse_timestamp(None) is None and parse_timestamp("nope") is None


class FakeClock:
    def __init__(self):
        self.t = 0.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.t

    async def sleep(self, s: float) -> None:
        self.slept.append(s)
        self.t += s


def test_rate_limiter_paces_halves_on_429_and_probes_back_up():
    c = FakeClock()
    rl = AdaptiveRateLimiter(10, clock=c, sleep=c.sleep)

    async def take(n):
        for _ in range(n):
            await rl.acquire()

    asyncio.run(take(21))
    assert 1.7 <= c.t <= 2.1  # ~10 per second
    rl.on_throttle(3.0)
    assert rl.rate == 5
    t0 = c.t
    asyncio.run(take(1))
    assert c.t - t0 >= 2.999  # everyone paused for Retry-After
    asyncio.run(take(60))  # a few quiet seconds: the rate grows back to the ceiling
    assert rl.rate == 10


def test_rate_limiter_unlimited_until_throttled():
    c = FakeClock()
    rl = AdaptiveRateLimiter(None, clock=c, sleep=c.sleep)

    async def take(n):
        for _ in range(n):
            await rl.acquire()

    asyncio.run(take(100))
    assert c.t == 0  # no pacing without a ceiling
    rl.on_throttle(None)
    assert rl.rate == 50  # half of the 100/s just observed


def test_rate_limiter_learns_the_gateways_submit_rate_and_sits_just_under_it():
    """A gateway bucket refilling 40/s, burst 40: the limiter settles near 40/s, not at half of it."""
    c = FakeClock()
    rl = AdaptiveRateLimiter(None, clock=c, sleep=c.sleep)
    server = {"tokens": 40.0, "at": 0.0}
    accepted: list[float] = []
    throttled = 0

    async def submit():
        nonlocal throttled
        while True:
            await rl.acquire()
            c.t += 0.001  # the request's own time
            server["tokens"] = min(40.0, server["tokens"] + (c.t - server["at"]) * 40)
            server["at"] = c.t
            if server["tokens"] >= 1:
                server["tokens"] -= 1
                rl.on_accept()
                accepted.append(c.t)
                return
            throttled += 1
            rl.on_throttle(1.0)

    async def main():
        for _ in range(2000):
            await submit()

    asyncio.run(main())
    assert rl.learned is not None and 38 <= rl.learned <= 43
    late = [t for t in accepted if t >= accepted[-1] - 20]
    assert len(late) / (late[-1] - late[0]) >= 0.95 * 40
    assert throttled <= 0.02 * len(accepted)


def test_polls_are_not_paced_by_the_submit_rate_but_wait_out_a_pause():
    c = FakeClock()
    rl = AdaptiveRateLimiter(None, clock=c, sleep=c.sleep)
    rl.on_throttle(2.0)
    asyncio.run(rl.acquire_poll())
    assert c.t == 2.0  # the pause holds for polls too
    assert rl.rate is not None
    for _ in range(100):
        asyncio.run(rl.acquire_poll())
    assert c.t == 2.0 and rl.observed_rps() == 0  # not paced, not counted as submits
