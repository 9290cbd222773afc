"""Callbacks as a client correlating attempts needs them: to the URL exactly as given (tokens
in path and query kept), carrying the request_id, and sent even when the submit's answer was
lost (the connection dropped after the job was accepted)."""

from __future__ import annotations

import threading
import time

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from pixbatch.contract import ENDPOINTS
from pixbatch.emulator import fast_test_config, start_emulator
from pixbatch.serve import serve_in_thread

TOKEN_PATH = "/cb/run-7/tok%2Fen_AZaz-09~.;v=1?sig=a%2Bb%3D%3D&item=k%201&attempt=2&attempt=3&empty="


class RawReceiver:
    """Records each callback's raw request target (path and query as the bytes sent) and body."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict]] = []
        self._lock = threading.Lock()

        async def hook(request: Request) -> Response:
            target = request.scope["raw_path"].decode()
            if request.scope["query_string"]:
                target += "?" + request.scope["query_string"].decode()
            body = await request.json()
            with self._lock:
                self.calls.append((target, body))
            return Response(status_code=200)

        self.served = serve_in_thread(Starlette(routes=[Route("/{rest:path}", hook, methods=["POST"])]))
        self.url = self.served.url

    def wait(self, n: int, timeout: float = 10.0) -> list[tuple[str, dict]]:
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                if len(self.calls) >= n:
                    return list(self.calls)
            assert time.monotonic() < deadline, f"callbacks so far: {self.calls}"
            time.sleep(0.02)


@pytest.fixture
def receiver():
    r = RawReceiver()
    try:
        yield r
    finally:
        r.served.stop()


def lazy(**kw):
    return fast_test_config(render="lazy", queue_time=0, processing_time=0.05, **kw)


def test_the_callback_goes_to_the_url_exactly_as_given_and_names_the_request(receiver):
    with start_emulator(lazy()) as emu:
        header_url = receiver.url + TOKEN_PATH
        body_url = receiver.url + "/edit-hook/AbC_-x%3D%3D?run=r1&sig=Zm9v%2Fbar%3D"
        r = emu.http.post(emu.url + ENDPOINTS["edit"], headers=dict(emu.headers, **{"X-Webhook-URL": header_url}),
                          json={"prompt": "p", "images": ["https://x.test/a.png"], "webhook": body_url})
        rid = r.json()["request_id"]
        calls = receiver.wait(2)
        assert sorted(target for target, _ in calls) == sorted([TOKEN_PATH, body_url[len(receiver.url):]])
        assert {body["request_id"] for _, body in calls} == {rid}
        assert {body["status"] for _, body in calls} == {"COMPLETED"}
        assert emu.requests().submits[0].webhook_url == header_url


def test_a_dropped_submit_still_calls_back_and_is_charged_once(receiver):
    with start_emulator(lazy()) as emu:
        emu.script([{"drop_after_accept": True}])
        url = receiver.url + "/cb/attempt-token-1?k=v%2F1"
        with pytest.raises(httpx.TransportError):
            emu.http.post(emu.url + ENDPOINTS["upscale"], json={"image": "https://x.test/a.png", "target": 1},
                          headers=dict(emu.headers, **{"X-Webhook-URL": url}))
        [(target, payload)] = receiver.wait(1)
        assert target == "/cb/attempt-token-1?k=v%2F1" and payload["status"] == "COMPLETED"
        [received] = emu.requests().submits
        assert (received.code, received.answer, received.reason) == (202, "dropped", "accepted")
        assert received.request_id == payload["request_id"] and received.webhook_url == url
        ledger = emu.wait_idle()
        assert [(e.request_id, e.amount_micros) for e in ledger.entries] == [(payload["request_id"], 5_000)]
        assert received.request_id in {e.request_id for e in emu.requests().accepted()}


def test_random_drops_call_back_too(receiver):
    with start_emulator(lazy(drop_after_accept_rate=1.0)) as emu:
        for i in range(3):
            with pytest.raises(httpx.TransportError):
                emu.http.post(emu.url + ENDPOINTS["edit"], json={"prompt": "p", "images": ["https://x.test/a.png"]},
                              headers=dict(emu.headers, **{"X-Webhook-URL": f"{receiver.url}/cb/{i}",
                                                           "X-Webhook-Mode": "terminal"}))
        calls = receiver.wait(3)
        assert sorted(t for t, _ in calls) == ["/cb/0", "/cb/1", "/cb/2"]
        assert {b["request_id"] for _, b in calls} == {e.request_id for e in emu.requests().submits}


def test_media_url_faults_shape_the_callback_too(receiver):
    with start_emulator(lazy()) as emu:
        emu.script([{"faults": ["media_url_file"]}, {"faults": ["request_id_traversal"]}])
        for i in range(2):
            emu.http.post(emu.url + ENDPOINTS["edit"], json={"prompt": "p", "images": ["https://x.test/a.png"]},
                          headers=dict(emu.headers, **{"X-Webhook-URL": f"{receiver.url}/cb/{i}"}))
        calls = dict(receiver.wait(2))
        assert calls["/cb/0"]["output"]["media_url"] == ["file:///etc/passwd"]
        assert "/../" in calls["/cb/1"]["request_id"]
