"""Webhook callbacks: terminal and sync modes, duplicates, https-only, the edit body's field."""

from __future__ import annotations

import threading
import time

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from pixbatch.contract import ENDPOINTS
from pixbatch.emulator import fast_test_config, start_emulator
from pixbatch.serve import serve_in_thread

STATUS_KEYS = ["request_id", "status", "model_id", "error", "output", "created_at", "updated_at", "completed_at"]


class Receiver:
    """A loopback endpoint that records every callback it gets."""

    def __init__(self) -> None:
        self.calls: list[dict] = []
        self.headers: list[dict] = []
        self._lock = threading.Lock()

        async def hook(request: Request) -> Response:
            body = await request.json()
            with self._lock:
                self.calls.append(body)
                self.headers.append(dict(request.headers))
            return Response(status_code=200)

        self.served = serve_in_thread(Starlette(routes=[Route("/hook", hook, methods=["POST"])]))
        self.url = self.served.url + "/hook"

    def wait_for(self, predicate, timeout: float = 10.0) -> list[dict]:
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                calls = list(self.calls)
            if predicate(calls):
                return calls
            assert time.monotonic() < deadline, f"callbacks so far: {calls}"
            time.sleep(0.02)


@pytest.fixture
def receiver():
    r = Receiver()
    try:
        yield r
    finally:
        r.served.stop()


def terminal_count(calls: list[dict]) -> int:
    return sum(1 for c in calls if c["status"] in ("COMPLETED", "FAILED", "ERROR"))


def test_terminal_mode_posts_exactly_once_at_the_end(emulator, receiver, image_server):
    image = image_server.add("a.png", (64, 48))
    r = emulator.http.post(emulator.url + ENDPOINTS["upscale"], json={"image": image, "target": 1},
                           headers={**emulator.headers, "X-Webhook-URL": receiver.url})
    rid = r.json()["request_id"]
    calls = receiver.wait_for(lambda c: len(c) >= 1)
    time.sleep(0.3)  # nothing else may arrive
    assert len(receiver.calls) == 1
    call = calls[0]
    assert list(call) == STATUS_KEYS
    assert call["request_id"] == rid and call["status"] == "COMPLETED" and call["model_id"] == "p-image-upscale"
    assert call["output"]["media_url"] == [f"{emulator.url}/media/{rid}/output.jpg"]
    assert receiver.headers[0]["content-type"] == "application/json"
    status = emulator.http.get(r.json()["polling_url"], headers=emulator.headers).json()
    assert status == call  # same shape and content as the status response
    assert emulator.stats()["webhooks_delivered"] == 1


def test_terminal_mode_reports_failures_too(emulator, receiver):
    emulator.script([{"status": "ERROR", "error": "backend exploded"}])
    emulator.http.post(emulator.url + ENDPOINTS["upscale"], json={"image": "http://127.0.0.1:9/a.png"},
                       headers={**emulator.headers, "X-Webhook-URL": receiver.url, "X-Webhook-Mode": "terminal"})
    [call] = receiver.wait_for(lambda c: len(c) >= 1)
    assert call["status"] == "ERROR" and call["error"] == "backend exploded" and call["output"] is None
    assert call["completed_at"] is not None


def test_sync_mode_posts_progress_then_one_terminal(receiver):
    cfg = fast_test_config(render="lazy", queue_time=0.1, processing_time=0.5, webhook_sync_interval=0.1)
    with start_emulator(cfg) as emu:
        emu.http.post(emu.url + ENDPOINTS["edit"], json={"prompt": "p", "images": ["https://x.test/a.png"]},
                      headers={**emu.headers, "X-Webhook-URL": receiver.url, "X-Webhook-Mode": "sync"})
        calls = receiver.wait_for(lambda c: terminal_count(c) >= 1)
        time.sleep(0.2)
        calls = receiver.calls
    statuses = [c["status"] for c in calls]
    assert statuses[0] == "QUEUED" and statuses[-1] == "COMPLETED" and terminal_count(calls) == 1
    assert statuses.count("PROCESSING") >= 2  # the status change plus ticks every 0.1 s
    assert statuses == sorted(statuses, key=["QUEUED", "PROCESSING", "COMPLETED"].index)  # delivered in order


def test_duplicate_deliveries_when_configured(receiver):
    cfg = fast_test_config(render="lazy", queue_time=0, processing_time=0.01, webhook_duplicate_rate=1.0)
    with start_emulator(cfg) as emu:
        rid = emu.http.post(emu.url + ENDPOINTS["edit"], json={"prompt": "p", "images": ["https://x.test/a.png"]},
                            headers={**emu.headers, "X-Webhook-URL": receiver.url}).json()["request_id"]
        calls = receiver.wait_for(lambda c: len(c) >= 2)
        assert [c["request_id"] for c in calls] == [rid, rid] and calls[0] == calls[1]
        stats = emu.stats()
        assert stats["webhooks_delivered"] == 2 and stats["webhook_duplicates"] == 1


def test_http_webhooks_are_rejected_unless_allowed():
    with start_emulator(fast_test_config(render="lazy", allow_http_webhooks=False)) as emu:
        body = {"prompt": "p", "images": ["https://x.test/a.png"]}
        r = emu.http.post(emu.url + ENDPOINTS["edit"], json=body,
                          headers={**emu.headers, "X-Webhook-URL": "http://127.0.0.1:9/hook"})
        assert r.status_code == 400 and "https" in r.json()["message"]
        r = emu.http.post(emu.url + ENDPOINTS["edit"], json={**body, "webhook": "http://127.0.0.1:9/hook"},
                          headers=emu.headers)
        assert r.status_code == 400 and "https" in r.json()["message"]
        r = emu.http.post(emu.url + ENDPOINTS["edit"], json=body,
                          headers={**emu.headers, "X-Webhook-URL": "https://127.0.0.1:9/hook", "X-Webhook-Mode": "x"})
        assert r.status_code == 400 and "X-Webhook-Mode" in r.json()["message"]
        assert emu.stats()["accepted"] == 0


def test_edit_body_webhook_field_and_events_filter(receiver):
    with start_emulator(fast_test_config(render="lazy", queue_time=0, processing_time=0.01)) as emu:
        body = {"prompt": "p", "images": ["https://x.test/a.png"], "webhook": receiver.url}
        emu.script([{"status": "COMPLETED"}, {"status": "FAILED", "error": "nope"}, {"status": "COMPLETED"}])
        url = emu.url + ENDPOINTS["edit"]
        first = emu.http.post(url, headers=emu.headers,
                              json={**body, "webhook_events_filter": ["completed"]}).json()["request_id"]
        emu.http.post(url, headers=emu.headers, json={**body, "webhook_events_filter": ["completed"]})  # filtered
        third = emu.http.post(url, headers=emu.headers, json=body).json()["request_id"]  # no filter: any terminal
        receiver.wait_for(lambda c: len(c) >= 2)
        time.sleep(0.3)
        assert sorted(c["request_id"] for c in receiver.calls) == sorted([first, third])
        assert {c["status"] for c in receiver.calls} == {"COMPLETED"}


def test_unreachable_webhook_is_counted_not_fatal():
    cfg = fast_test_config(render="lazy", queue_time=0, processing_time=0.01, webhook_retries=1)
    with start_emulator(cfg) as emu:
        emu.http.post(emu.url + ENDPOINTS["edit"], json={"prompt": "p", "images": ["https://x.test/a.png"]},
                      headers={**emu.headers, "X-Webhook-URL": "http://127.0.0.1:9/hook"})
        deadline = time.monotonic() + 5
        while emu.stats()["webhooks_failed"] < 1:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert emu.stats()["webhooks_delivered"] == 0 and len(emu.ledger().entries) == 1


def test_callbacks_need_no_polling(receiver):
    """Charges and callbacks happen when jobs become due, whether or not anyone polls."""
    cfg = fast_test_config(render="lazy", queue_time=0.05, processing_time=0.05)
    with start_emulator(cfg) as emu:
        for _ in range(5):
            emu.http.post(emu.url + ENDPOINTS["edit"], json={"prompt": "p", "images": ["https://x.test/a.png"]},
                          headers={**emu.headers, "X-Webhook-URL": receiver.url})
        receiver.wait_for(lambda c: len(c) >= 5)
        stats = emu.stats()
        assert stats["polls"] == 0 and stats["jobs"]["COMPLETED"] == 5
