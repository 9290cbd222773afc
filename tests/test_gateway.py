"""The gateway client and retry predicate, through httpx.MockTransport (the rate limiter: test_ratelimit.py)."""

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
