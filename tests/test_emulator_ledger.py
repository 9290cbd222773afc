"""The wallet and ledger account for every request exactly once; the emulator runs as a command."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from importlib import resources

import httpx
import pytest

from pixbatch.contract import ENDPOINTS, STATUS_PATH
from pixbatch.emulator import EmulatorConfig, fast_test_config, start_emulator
from pixbatch.pricing import PriceTable
from pixbatch.sizes import output_size


def settled(emu, n: int, timeout: float = 15.0):
    deadline = time.monotonic() + timeout
    while True:
        ledger = emu.ledger()
        if len(ledger.entries) >= n:
            return ledger
        assert time.monotonic() < deadline, f"{len(ledger.entries)} of {n} settled"
        time.sleep(0.02)


def test_ledger_matches_the_requests_made_without_any_polling():
    prices = PriceTable.load()
    size = (1024, 1024)
    cfg = fast_test_config(render="lazy", queue_time=0.02, processing_time=0.05, lazy_input_size=size, seed=5,
                           fail_rate=0.2, error_rate=0.2)
    requests = [("upscale", {"image": "https://x.test/a.png", "target": t}) for t in (1, 4, 5, 8)]
    requests += [("upscale", {"image": "https://x.test/a.png", "upscale_mode": "factor", "factor": f})
                 for f in (1.5, 2, 2.5, 3)]
    requests += [("edit", {"prompt": f"p{i}", "images": ["https://x.test/a.png"], "seed": i}) for i in range(8)]
    with start_emulator(cfg) as emu:
        sent = {}
        for op, body in requests:
            r = emu.http.post(emu.url + ENDPOINTS[op], json=body, headers=emu.headers)
            sent[r.json()["request_id"]] = (op, body)
        time.sleep(0.3)  # nobody polls: the scheduler settles due jobs by itself
        ledger = emu.ledger()
        assert emu.stats()["polls"] == 0
    assert sorted(e.request_id for e in ledger.entries) == sorted(sent)  # each request exactly once
    assert {e.status for e in ledger.entries} == {"COMPLETED", "FAILED", "ERROR"}
    for e in ledger.entries:
        op, body = sent[e.request_id]
        out = output_size(op, body, size)
        expected = prices.charge_for(op, e.status, out, body, size)
        assert e.amount_micros == expected, (e, body)
        assert e.model == {"upscale": "p-image-upscale", "edit": "p-image"}[op]
        if e.status != "ERROR":
            assert (e.output_width, e.output_height) == out
    assert ledger.charged_micros == sum(e.amount_micros for e in ledger.entries)
    assert ledger.balance_micros == ledger.starting_balance_micros - ledger.charged_micros
    assert ledger.reserved_micros == 0
    assert [e.seq for e in ledger.entries] == list(range(len(ledger.entries)))


def test_polling_a_finished_job_never_charges_again(emulator):
    emulator.configure(queue_time=0, processing_time=0)
    emulator.script([{"status": "FAILED", "error": "x"}])
    rid = emulator.http.post(emulator.url + ENDPOINTS["edit"], headers=emulator.headers,
                             json={"prompt": "p", "images": ["http://127.0.0.1:9/a.png"]}).json()["request_id"]
    settled(emulator, 1)
    for _ in range(20):
        assert emulator.http.get(emulator.url + STATUS_PATH.format(request_id=rid),
                                 headers=emulator.headers).json()["status"] == "FAILED"
    ledger = emulator.ledger()
    assert len(ledger.entries) == 1 and ledger.charged_micros == 10_000


def test_in_flight_jobs_hold_their_worst_case_price():
    # factor mode with an unknown input may land in the 8 MP tier: $0.01 is held, not $0.005
    cfg = fast_test_config(render="lazy", balance_micros=15_000, queue_time=5, lazy_input_size=(100, 100))
    with start_emulator(cfg) as emu:
        body = {"image": "https://x.test/a.png", "upscale_mode": "factor", "factor": 2}
        assert emu.http.post(emu.url + ENDPOINTS["upscale"], json=body, headers=emu.headers).status_code == 202
        r = emu.http.post(emu.url + ENDPOINTS["upscale"], json=body, headers=emu.headers)
        assert r.status_code == 402 and r.json()["message"].endswith("Required: $0.01")
        target1 = {"image": "https://x.test/a.png", "target": 1}
        assert emu.http.post(emu.url + ENDPOINTS["upscale"], json=target1, headers=emu.headers).status_code == 202
        doc = emu.ledger_json()
        assert doc["totals"]["reserved_micros"] == 15_000 and doc["totals"]["available_micros"] == 0


def test_ledger_paging_and_topups(emulator):
    emulator.configure(queue_time=0, processing_time=0)
    emulator.script([{"status": "ERROR"}, {"status": "ERROR"}, {"status": "ERROR"}])
    for _ in range(3):
        emulator.http.post(emulator.url + ENDPOINTS["edit"], headers=emulator.headers,
                           json={"prompt": "p", "images": ["http://127.0.0.1:9/a.png"]})
    assert len(emulator.wait_idle().entries) == 3
    page = emulator.ledger_json(since=2)
    assert [e["seq"] for e in page["entries"]] == [2] and page["totals"]["settled"] == 3
    assert page["totals"]["by_status"] == {"ERROR": {"count": 3, "amount_micros": 0}}
    assert emulator.topup(1_000_000) == 11_000_000
    with pytest.raises(httpx.HTTPStatusError):
        emulator.http.post(emulator.url + "/_emulator/topup", json={"amount_micros": "1.5"}).raise_for_status()


def test_many_jobs_in_flight_at_once():
    """Hundreds of jobs queued together in a separate process: polls see them all, all settle once."""
    cfg = fast_test_config(render="lazy", queue_time=100, processing_time=(30, 40), balance_micros=10**9)
    n = 500

    async def main(url: str, headers: dict) -> list[str]:
        async with httpx.AsyncClient(limits=httpx.Limits(max_connections=8), headers=headers) as client:
            sem = asyncio.Semaphore(8)

            async def call(method: str, path: str, **kw) -> dict:
                async with sem:
                    r = await client.request(method, url + path, **kw)
                    assert r.status_code in (200, 202), r.text
                    return r.json()

            body = {"prompt": "p", "images": ["https://x.test/a.png"]}
            ids = [d["request_id"] for d in
                   await asyncio.gather(*(call("POST", ENDPOINTS["edit"], json=body) for _ in range(n)))]
            docs = await asyncio.gather(*(call("GET", STATUS_PATH.format(request_id=rid)) for rid in ids))
            assert {d["status"] for d in docs} == {"QUEUED"}
            return ids

    with start_emulator(cfg, in_process=False) as emu:
        ids = asyncio.run(main(emu.url, emu.headers))
        assert len(set(ids)) == n
        assert emu.ledger().entries == () and emu.stats()["in_flight"] == n
        emu.advance(105)  # past every job's queue time, short of any job's end
        assert emu.stats()["in_flight"] == n
        emu.advance(40)
        ledger = settled(emu, n)
        assert sorted(e.request_id for e in ledger.entries) == sorted(ids)
        assert ledger.charged_micros == n * 10_000
        stats = emu.stats()
        assert stats["accepted"] == n and stats["polls"] == n and stats["in_flight"] == 0
        assert stats["max_in_flight"] == n


def test_emulator_command_prints_url_and_key(tmp_path):
    env = dict(os.environ, PYTHONUNBUFFERED="1", PIXBATCH_EMULATOR_KEY="cli-key")
    proc = subprocess.Popen(
        [sys.executable, "-m", "pixbatch", "emulator", "--port", "0", "--balance", "1.50", "--seed", "3",
         "--render", "lazy", "--queue-time", "0", "--processing-time", "0.01-0.02", "--rate-limit", "50",
         "--lazy-input-size", "800x600"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    try:
        url = proc.stdout.readline().strip()
        key_line = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:") and key_line == "key: cli-key"
        headers = {"Ocp-Apim-Subscription-Key": "cli-key"}
        r = httpx.post(url + ENDPOINTS["edit"], json={"prompt": "p", "images": ["https://x.test/a.png"]},
                       headers=headers)
        assert r.status_code == 202
        config = httpx.get(url + "/_emulator/config").json()
        assert config["balance_micros"] == 1_500_000 and config["seed"] == 3 and config["rate_limit"] == 50
        assert config["processing_time"] == [0.01, 0.02] and config["lazy_input_size"] == [800, 600]
    finally:
        proc.terminate()
        proc.communicate(timeout=10)
    assert proc.returncode in (0, -15)


def test_emulator_command_rejects_bad_options():
    r = subprocess.run([sys.executable, "-m", "pixbatch", "emulator", "--port", "0", "--queue-time", "soon"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "not a duration" in r.stderr


def test_subprocess_emulator_helpers_work_over_http():
    cfg = EmulatorConfig(render="lazy", queue_time=0, processing_time=0, balance_micros=50_000, api_keys=("sub",))
    with start_emulator(cfg, in_process=False) as emu:
        assert emu.api_key == "sub" and emu.config == cfg
        emu.configure(fail_rate=1.0)
        assert emu.script([{"submit": 503}]) == 1
        url = emu.url + ENDPOINTS["edit"]
        body = {"prompt": "p", "images": ["https://x.test/a.png"]}
        assert emu.http.post(url, json=body, headers=emu.headers).status_code == 503
        assert emu.http.post(url, json=body, headers=emu.headers).status_code == 202
        ledger = settled(emu, 1)
        assert ledger.entries[0].status == "FAILED" and emu.topup(5) == 50_000 - 10_000 + 5
        assert emu.stats()["scripted"] == 1
        proc = emu._proc
    assert proc is None or proc.poll() is not None


def test_prices_come_from_the_given_table_by_real_output_size(tmp_path, image_server):
    """A custom table (--pricing) is used; an upscale pays the tier of the size it really produced."""
    table = json.loads(resources.files("pixbatch").joinpath("data/pricing.json").read_text("utf-8"))
    tiers = table["operations"]["upscale"]["tiers"]
    tiers[0]["max_megapixels"] = 1.5  # outputs up to 1.5 MP are cheap, above that dear
    tiers[0]["price_usd"], tiers[1]["price_usd"] = "0.002", "0.02"
    table["charged_statuses"] = ["COMPLETED"]  # this table does not charge FAILED
    path = tmp_path / "pricing.json"
    path.write_text(json.dumps(table), "utf-8")
    cfg = fast_test_config(queue_time=0, processing_time=0, pricing_path=str(path))
    image = image_server.add("a.png", (400, 300))
    with start_emulator(cfg) as emu:
        def submit(body):
            return emu.http.post(emu.url + ENDPOINTS["upscale"], json=body, headers=emu.headers).json()["request_id"]
        small = submit({"image": image, "upscale_mode": "factor", "factor": 3})  # 1200x900 = 1.08 MP
        large = submit({"image": image, "upscale_mode": "factor", "factor": 4})  # 1600x1200 = 1.92 MP
        emu.script([{"status": "FAILED"}])
        failed = submit({"image": image, "target": 2})
        charges = {e.request_id: e.amount_micros for e in emu.wait_idle().entries}
    assert charges == {small: 2_000, large: 20_000, failed: 0}
