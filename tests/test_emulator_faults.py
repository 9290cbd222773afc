"""Faults the emulator injects on demand, deterministically under a seed."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from pixbatch.contract import ENDPOINTS, STATUS_PATH
from pixbatch.emulator import Dist, EmulatorConfig, emulator_app, fast_test_config, start_emulator

EDIT = {"prompt": "p", "images": ["https://x.test/a.png"]}
UPSCALE = {"image": "https://x.test/a.png", "target": 1}


def submit(emu, body=EDIT, op="edit") -> httpx.Response:
    return emu.http.post(emu.url + ENDPOINTS[op], json=body, headers=emu.headers)


def poll(emu, rid: str) -> httpx.Response:
    return emu.http.get(emu.url + STATUS_PATH.format(request_id=rid), headers=emu.headers)


def wait_settled(emu, n: int, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while True:
        ledger = emu.ledger()
        if len(ledger.entries) >= n:
            return ledger
        assert time.monotonic() < deadline, f"only {len(ledger.entries)} of {n} jobs settled"
        time.sleep(0.02)


def lazy(**kw) -> EmulatorConfig:
    return fast_test_config(render="lazy", queue_time=0, processing_time=0.01, **kw)


def test_submit_500_creates_no_job():
    with start_emulator(lazy(submit_500_rate=1.0)) as emu:
        r = submit(emu)
        assert r.status_code == 500 and set(r.json()) == {"error", "message"}
        assert emu.stats()["injected_submit_500"] == 1 and emu.stats()["accepted"] == 0
        assert emu.ledger().entries == ()


def test_poll_500_then_recovery(emulator):
    rid = submit(emulator).json()["request_id"]
    emulator.configure(poll_500_rate=1.0)
    assert poll(emulator, rid).status_code == 500
    emulator.configure(poll_500_rate=0.0)
    assert poll(emulator, rid).status_code == 200
    assert emulator.stats()["injected_poll_500"] == 1


def test_drop_after_accept_still_charges():
    with start_emulator(lazy(drop_after_accept_rate=1.0)) as emu:
        with pytest.raises(httpx.TransportError):
            submit(emu)
        stats = emu.stats()
        assert stats["accepted"] == 1 and stats["dropped_after_accept"] == 1
        ledger = wait_settled(emu, 1)
        assert [(e.model, e.status, e.amount_micros) for e in ledger.entries] == [("p-image", "COMPLETED", 10_000)]
        assert ledger.balance_micros == 10_000_000 - 10_000


def test_failed_and_error_fractions_are_deterministic_under_a_seed():
    def outcomes(seed: int) -> list[str]:
        with start_emulator(lazy(seed=seed, fail_rate=0.3, error_rate=0.2)) as emu:
            ids = [submit(emu).json()["request_id"] for _ in range(40)]
            ledger = wait_settled(emu, 40)
            by_id = {e.request_id: e for e in ledger.entries}
            for e in ledger.entries:  # FAILED is charged, ERROR is not
                assert e.amount_micros == {"COMPLETED": 10_000, "FAILED": 10_000, "ERROR": 0}[e.status]
            failed = poll(emu, next(i for i in ids if by_id[i].status == "FAILED")).json()
            assert failed["status"] == "FAILED" and failed["error"] and failed["output"] is None
            errored = poll(emu, next(i for i in ids if by_id[i].status == "ERROR")).json()
            assert errored["status"] == "ERROR" and errored["error"] and errored["output"] is None
            return [by_id[i].status for i in ids]

    a, b, c = outcomes(1), outcomes(1), outcomes(2)
    assert a == b and a != c
    assert 5 <= a.count("FAILED") <= 20 and 2 <= a.count("ERROR") <= 16 and a.count("COMPLETED") >= 10


def test_garbage_json_on_submit_and_poll():
    with start_emulator(lazy(submit_garbage_rate=1.0)) as emu:
        r = submit(emu)
        assert r.status_code == 202 and r.headers["content-type"] == "application/json"
        with pytest.raises(ValueError):
            r.json()
        assert wait_settled(emu, 1).charged_micros == 10_000  # the job was accepted all the same
        emu.configure(submit_garbage_rate=0.0, poll_garbage_rate=1.0)
        rid = submit(emu).json()["request_id"]
        p = poll(emu, rid)
        assert p.status_code == 200
        with pytest.raises(ValueError):
            p.json()
        stats = emu.stats()
        assert stats["garbage_submit"] == 1 and stats["garbage_poll"] == 1


def test_latency_slows_submit_and_poll():
    with start_emulator(lazy(submit_latency=0.3, poll_latency=Dist(0.2, 0.25))) as emu:
        t0 = time.monotonic()
        rid = submit(emu).json()["request_id"]
        t1 = time.monotonic()
        assert poll(emu, rid).status_code == 200
        t2 = time.monotonic()
        assert t1 - t0 >= 0.3 and t2 - t1 >= 0.2


def test_timings_are_configurable_and_sampled_per_job():
    with start_emulator(fast_test_config(render="lazy", queue_time=Dist(10, 20), processing_time=30)) as emu:
        ids = [submit(emu).json()["request_id"] for _ in range(5)]
        assert {poll(emu, rid).json()["status"] for rid in ids} == {"QUEUED"}
        emu.advance(20.5)  # past every queue time (10-20 s), before any job's end (>= 10 s + 30 s)
        docs = [poll(emu, rid).json() for rid in ids]
        assert {d["status"] for d in docs} == {"PROCESSING"}
        queued_for = {_seconds(d["updated_at"]) - _seconds(d["created_at"]) for d in docs}
        assert all(9.99 <= q <= 20.01 for q in queued_for) and len(queued_for) > 1  # sampled per job
        emu.advance(30)
        assert {poll(emu, rid).json()["status"] for rid in ids} == {"COMPLETED"}


def _seconds(stamp: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def test_script_queues_exact_outcomes():
    with start_emulator(lazy()) as emulator:
        assert emulator.script([
            {"submit": 500}, {"submit": 500},
            {"status": "FAILED", "error": "the model refused"},
            {"drop_after_accept": True},
            {"submit": 429, "retry_after": 7},
            {"polls": [503, "garbage", 200]},
        ]) == 6
        assert submit(emulator).status_code == 500
        assert submit(emulator).status_code == 500
        failed = submit(emulator).json()["request_id"]
        with pytest.raises(httpx.TransportError):
            submit(emulator)
        limited = submit(emulator)
        assert limited.status_code == 429 and limited.headers["Retry-After"] == "7"
        flaky = submit(emulator).json()["request_id"]
        assert poll(emulator, flaky).status_code == 503
        with pytest.raises(ValueError):
            poll(emulator, flaky).json()
        assert poll(emulator, flaky).status_code == 200
        ledger = wait_settled(emulator, 3)
        by_id = {e.request_id: e for e in ledger.entries}
        assert by_id[failed].status == "FAILED" and by_id[failed].amount_micros == 10_000
        doc = poll(emulator, failed).json()
        assert doc["status"] == "FAILED" and doc["error"] == "the model refused"
        assert len(ledger.entries) == 3 and ledger.charged_micros == 30_000  # failed + dropped + flaky
        assert emulator.stats()["script_queued"] == 0


def test_script_and_config_reject_nonsense(emulator):
    with pytest.raises(ValueError, match="unknown key 'sumbit'"):
        emulator.script([{"sumbit": 500}])
    with pytest.raises(ValueError, match="'status' must be one of"):
        emulator.script([{"status": "DONE"}])
    with pytest.raises(ValueError, match="fail_rate must be a fraction"):
        emulator.configure(fail_rate=2)
    with pytest.raises(ValueError, match="cannot change render at runtime"):
        emulator.configure(render="lazy")
    with pytest.raises(ValueError, match="unknown emulator setting"):
        EmulatorConfig.from_dict({"fail_rat": 0.1})


def test_runtime_config_changes_apply_to_new_jobs(emulator, image_server):
    body = {"image": image_server.add("a.png", (64, 48)), "target": 1}
    emulator.configure(fail_rate=1.0, queue_time=0, processing_time=0.01)
    failed = submit(emulator, body, "upscale").json()["request_id"]
    emulator.configure(fail_rate=0.0)
    done = submit(emulator, body, "upscale").json()["request_id"]
    by_id = {e.request_id: e for e in wait_settled(emulator, 2).entries}
    assert by_id[failed].status == "FAILED" and by_id[done].status == "COMPLETED"
    assert "emulated" in poll(emulator, failed).json()["error"]
    # an emulated failure is still priced by the real output size
    assert (by_id[failed].output_width, by_id[failed].output_height) == (by_id[done].output_width,
                                                                         by_id[done].output_height)


def test_in_process_app_behaves_the_same_through_asgi_transport(image_server):
    """``emulator_app`` + ``httpx.ASGITransport``: no server, same contract, drops are transport errors."""
    image = image_server.add("a.png", (64, 48))

    async def main() -> None:
        cfg = fast_test_config(queue_time=0, processing_time=0.01)
        async with emulator_app(cfg) as app:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://emulator") as client:
                headers = {"Ocp-Apim-Subscription-Key": cfg.api_key}
                r = await client.post(ENDPOINTS["upscale"], json={"image": image, "target": 1}, headers=headers)
                assert r.status_code == 202 and r.json()["polling_url"].startswith("http://emulator/v2/")
                for _ in range(500):
                    doc = (await client.get(r.json()["polling_url"], headers=headers)).json()
                    if doc["status"] == "COMPLETED":
                        break
                    await asyncio.sleep(0.01)
                assert doc["status"] == "COMPLETED"
                assert (await client.get(doc["output"]["media_url"][0])).status_code == 200
                app.state.engine.script.append({"drop_after_accept": True})
                with pytest.raises(httpx.TransportError):
                    await client.post(ENDPOINTS["upscale"], json={"image": image, "target": 1}, headers=headers)
                assert app.state.engine.stats["accepted"] == 2

    asyncio.run(main())


@pytest.mark.parametrize("text,expected", [
    ("0.5", Dist(0.5, 0.5)), ("0.1-2", Dist(0.1, 2.0)), (3, Dist(3.0)), ([0.2, 0.4], Dist(0.2, 0.4)),
    ({"min": 1, "max": 2}, Dist(1.0, 2.0)),
])
def test_durations_parse_from_cli_and_json(text, expected):
    assert Dist.parse(text) == expected


@pytest.mark.parametrize("bad", ["soon", "-1", "2-1", True, [1, 2, 3]])
def test_bad_durations_are_refused(bad):
    with pytest.raises(ValueError):
        Dist.parse(bad)
