"""The API-Management front door: throttling, a fixed window, a quota, HTML 5xx pages, and
the request log that says what the gateway received (all through real HTTP on loopback)."""

from __future__ import annotations

import hashlib
import json
import re
import time
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime

import httpx
import pytest

from pixbatch.contract import ENDPOINTS, STATUS_PATH
from pixbatch.emulator import EmulatorConfig, fast_test_config, start_emulator

EDIT = {"prompt": "p", "images": ["https://x.test/a.png"]}


def lazy(**kw) -> EmulatorConfig:
    return fast_test_config(render="lazy", queue_time=0, processing_time=0.01, **kw)


def submit(emu, body=EDIT, op="edit", key=None, headers=None) -> httpx.Response:
    h = dict(emu.headers, **(headers or {}))
    if key is not None:
        h["Ocp-Apim-Subscription-Key"] = key
    return emu.http.post(emu.url + ENDPOINTS[op], json=body, headers=h)


def poll(emu, rid: str) -> httpx.Response:
    return emu.http.get(emu.url + STATUS_PATH.format(request_id=rid), headers=emu.headers)


def wait_settled(emu, n: int, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while len(emu.ledger().entries) < n:
        assert time.monotonic() < deadline, "jobs did not settle"
        time.sleep(0.02)
    return emu.ledger()


# -- throttling ---------------------------------------------------------------------------


def test_throttle_answers_429_in_three_forms_and_creates_no_job():
    with start_emulator(lazy(throttle_rate=1.0, throttle_retry_after=2, seed=3)) as emu:
        answers = [submit(emu) for _ in range(30)]
        assert {r.status_code for r in answers} == {429}
        forms = {"none": 0, "date": 0, "seconds": 0}
        for r in answers:
            ra = r.headers.get("Retry-After")
            if ra is None:
                forms["none"] += 1
                assert r.json()["error"] == "Too Many Requests"
            elif ra.isdigit():
                forms["seconds"] += 1
                assert ra == "2" and r.json() == {"statusCode": 429,
                                                  "message": "Rate limit is exceeded. Try again in 2 seconds."}
            else:
                forms["date"] += 1
                when = parsedate_to_datetime(ra)
                assert ra.endswith(" GMT") and when > datetime.now(timezone.utc)
        assert all(forms.values()), forms
        assert emu.stats()["throttled"] == 30 and emu.stats()["accepted"] == 0
        assert {e.reason for e in emu.requests().submits} == {"throttle"}


def test_throttle_hits_a_fraction_deterministically_under_a_seed():
    def codes(seed: int) -> list[int]:
        with start_emulator(lazy(throttle_rate=0.25, seed=seed)) as emu:
            return [submit(emu).status_code for _ in range(80)]

    a, b, c = codes(1), codes(1), codes(2)
    assert a == b and a != c
    assert set(a) == {202, 429} and 8 <= a.count(429) <= 32


# -- the fixed window ---------------------------------------------------------------------


def test_rate_window_refuses_past_n_per_key_until_the_window_resets():
    cfg = lazy(rate_window="3/10", api_keys=("k1", "k2"))
    assert cfg.rate_window == (3, 10.0)
    with start_emulator(cfg) as emu:
        assert [submit(emu, key="k1").status_code for _ in range(3)] == [202] * 3
        refused = submit(emu, key="k1")
        assert refused.status_code == 429
        wait = int(refused.headers["Retry-After"])
        assert 1 <= wait <= 10
        assert refused.json() == {"statusCode": 429, "message": f"Rate limit is exceeded. Try again in {wait} seconds."}
        assert submit(emu, key="k2").status_code == 202  # each key has its own window
        emu.advance(10)
        assert submit(emu, key="k1").status_code == 202
        stats = emu.stats()
        assert stats["rate_window_limited"] == 1 and stats["accepted"] == 5


def test_rate_window_counts_calls_not_jobs():
    with start_emulator(lazy(rate_window=(2, 60))) as emu:
        assert submit(emu, body={"prompt": "p"}).status_code == 400  # refused by validation, but a call
        assert submit(emu).status_code == 202
        assert submit(emu).status_code == 429


# -- the quota ----------------------------------------------------------------------------


def test_quota_refuses_with_403_and_retry_after_then_the_control_api_resets_it():
    with start_emulator(lazy(quota=2, api_keys=("k1", "k2"))) as emu:
        assert submit(emu, body={"prompt": "p"}, key="k1").status_code == 400  # not accepted: not counted
        assert [submit(emu, key="k1").status_code for _ in range(2)] == [202, 202]
        refused = submit(emu, key="k1")
        assert refused.status_code == 403
        left = int(refused.headers["Retry-After"])
        assert 590 <= left <= 600
        body = refused.json()
        assert body["statusCode"] == 403
        m = re.fullmatch(r"Out of call volume quota\. Quota will be replenished in (\d\d):(\d\d):(\d\d)\.",
                         body["message"])
        assert m and int(m[1]) * 3600 + int(m[2]) * 60 + int(m[3]) == left
        assert submit(emu, key="k2").status_code == 202  # per key
        emu.reset_quota("k1")
        assert submit(emu, key="k1").status_code == 202
        assert emu.stats()["quota_refused"] == 1
        assert [e.reason for e in emu.requests().submits if e.code == 403] == ["quota"]


def test_quota_replenishes_at_the_end_of_its_period():
    with start_emulator(lazy(quota=1, quota_reset=30)) as emu:
        assert submit(emu).status_code == 202
        refused = submit(emu)
        assert refused.status_code == 403 and int(refused.headers["Retry-After"]) <= 30
        assert "00:00:" in refused.json()["message"]
        emu.advance(30)
        assert submit(emu).status_code == 202
        emu.configure(quota=None)  # the runtime switch
        assert [submit(emu).status_code for _ in range(3)] == [202] * 3
        emu.configure(quota=0)
        assert submit(emu).status_code == 403
        emu.reset_quota()
        assert submit(emu).status_code == 403  # a quota of 0 stays 0


def test_a_forbidden_key_403_has_no_retry_after():
    with start_emulator(lazy(forbidden_keys=("banned",), quota=0)) as emu:
        r = submit(emu, key="banned")
        assert r.status_code == 403 and "Retry-After" not in r.headers and "error" in r.json()
        assert emu.requests().submits[0].reason == "forbidden_key"


# -- HTML error pages ---------------------------------------------------------------------


def test_html_errors_on_submit_and_poll():
    with start_emulator(lazy(html_errors=True, submit_500_rate=1.0)) as emu:
        r = submit(emu)
        assert r.status_code == 500 and r.headers["content-type"].startswith("text/html")
        assert r.text.startswith("<!DOCTYPE html>")
        with pytest.raises(json.JSONDecodeError):
            r.json()
        emu.configure(submit_500_rate=0.0)
        rid = submit(emu).json()["request_id"]
        emu.configure(poll_500_rate=1.0)
        p = poll(emu, rid)
        assert p.status_code == 500 and p.headers["content-type"].startswith("text/html")
        emu.configure(html_errors=False)
        assert poll(emu, rid).json()["error"] == "Internal Server Error"  # the default: JSON
        assert [(e.code, e.answer) for e in emu.requests().submits] == [(500, "html"), (202, "json")]


def test_scripted_html_pages_and_retry_after_forms(emulator):
    date = "Wed, 21 Oct 2026 07:28:00 GMT"
    emulator.script([{"submit": 502, "html": True}, {"submit": 429, "retry_after": None},
                     {"submit": 429, "retry_after": date}, {"submit": 503, "retry_after": 4},
                     {"polls": ["html", {"code": 503, "html": True, "retry_after": 2}, {"code": 429}, 200]}])
    r = submit(emulator)
    assert r.status_code == 502 and "<html>" in r.text
    r = submit(emulator)
    assert r.status_code == 429 and "Retry-After" not in r.headers
    assert submit(emulator).headers["Retry-After"] == date
    r = submit(emulator)
    assert r.status_code == 503 and r.headers["Retry-After"] == "4" and r.json()["error"] == "Service Unavailable"
    rid = submit(emulator).json()["request_id"]
    p = poll(emulator, rid)
    assert p.status_code == 502 and p.headers["content-type"].startswith("text/html")
    p = poll(emulator, rid)
    assert p.status_code == 503 and p.headers["Retry-After"] == "2" and p.text.startswith("<!DOCTYPE html>")
    p = poll(emulator, rid)
    assert p.status_code == 429 and p.headers["Retry-After"] == "1"
    assert poll(emulator, rid).status_code == 200


# -- the request log ----------------------------------------------------------------------


def test_request_log_shows_every_submit_received_refused_or_accepted():
    cfg = lazy(rate_limit=1000, api_keys=("good",))
    with start_emulator(cfg) as emu:
        hook = "http://127.0.0.1:9/cb/tok%2Fen?sig=a%2Bb&x=1"
        submit(emu, key="")
        submit(emu, key="guessed")
        emu.http.post(emu.url + ENDPOINTS["edit"], content=b"{nope", headers={"Ocp-Apim-Subscription-Key": "good"})
        submit(emu, body={"prompt": "p"}, key="good")
        emu.script([{"submit": 503}, {"drop_after_accept": True}, {"garbage": True}])
        submit(emu, key="good")
        with pytest.raises(httpx.TransportError):
            submit(emu, key="good", body={"prompt": "dropped", "images": ["https://x.test/d.png"]},
                   headers={"X-Webhook-URL": hook})
        submit(emu, key="good")
        raw = b'{"image": "https://x.test/u.png", "target": 1}'
        ok = emu.http.post(emu.url + ENDPOINTS["upscale"], content=raw, headers={"Ocp-Apim-Subscription-Key": "good"})
        wait_settled(emu, 3)
        log = emu.requests()
        got = [(e.seq, e.op, e.key, e.code, e.reason, e.answer) for e in log.submits]
        assert got == [
            (0, "edit", None, 401, "missing_key", "json"),
            (1, "edit", "<unknown>", 401, "unknown_key", "json"),
            (2, "edit", "good", 400, "bad_json", "json"),
            (3, "edit", "good", 400, "invalid", "json"),
            (4, "edit", "good", 503, "scripted", "json"),
            (5, "edit", "good", 202, "accepted", "dropped"),
            (6, "edit", "good", 202, "accepted", "garbage"),
            (7, "upscale", "good", 202, "accepted", "json"),
        ]
        dropped, upscale = log.submits[5], log.submits[7]
        assert dropped.webhook_url == hook and dropped.image == "https://x.test/d.png"
        assert upscale.request_id == ok.json()["request_id"] and upscale.image == "https://x.test/u.png"
        assert upscale.body_sha256 == hashlib.sha256(raw).hexdigest()
        assert [e.seq for e in log.accepted()] == [5, 6, 7]
        assert all(e.settled == "COMPLETED" and e.charged_micros for e in log.accepted())
        assert all(e.request_id is None and e.settled is None for e in log.refused())
        ledger_ids = {x.request_id for x in emu.ledger().entries}
        assert ledger_ids == {e.request_id for e in log.accepted()}
        assert [e.seq for e in emu.requests(since=6).submits] == [6, 7]
        assert log.received_images() == {"https://x.test/a.png", "https://x.test/d.png", "https://x.test/u.png"}


def test_request_log_records_rate_limit_refusals_with_their_retry_after():
    with start_emulator(lazy(rate_limit=0.5, rate_burst=1)) as emu:
        assert submit(emu).status_code == 202
        r = submit(emu)
        assert r.status_code == 429
        [refused] = emu.requests().by_reason("rate_limit")
        assert refused.code == 429 and refused.retry_after == r.headers["Retry-After"] and not refused.accepted


def test_stray_requests_are_logged_with_whether_they_carried_the_key(emulator):
    r = emulator.http.get(emulator.url + STATUS_PATH.format(request_id="p-image_x/../../../../_stray/p-image_x"),
                          headers=emulator.headers)
    assert r.status_code == 404 and r.json() == {"statusCode": 404, "message": "Resource not found"}
    emulator.http.get(emulator.url + "/elsewhere?a=1")
    assert emulator.http.get(emulator.url + ENDPOINTS["edit"]).status_code == 405  # a known path: still 405
    strays = emulator.requests().strays
    assert [(s.method, s.path, s.query, s.had_key) for s in strays] == [
        ("GET", "/_stray/p-image_x", "", True), ("GET", "/elsewhere", "a=1", False)]
    assert emulator.stats()["strays"] == 2
