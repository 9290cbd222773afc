"""End to end: real manifests run against the emulator; the report is checked against its ledger.

The emulator charges by pixbatch's price table for the status and the real output size,
and keeps every settlement in its ledger: what the report says was charged must be
exactly that, request by request, and after a crash once ``pixbatch reconcile`` ran.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

import duckdb
import pytest
from click.testing import CliRunner

from pixbatch.cli import cli
from pixbatch.emulator import Dist, fast_test_config, start_emulator
from pixbatch.manifest import load_manifest
from pixbatch.money import format_usd
from pixbatch.report import build_report
from pixbatch.runner import RunOptions, run
from pixbatch.state import status_file_path


def write_manifest(tmp_path: Path, image_server) -> Path:
    """3 real images and one that is not an image; 2 recolors each, then a factor-2 upscale of every edit.

    The runs below send the non-image anyway (``preflight=False``, ``--no-preflight``), so that the
    gateway fails and charges its edits: the report must account for charged failures.
    """
    urls = [image_server.add("a.png", (640, 480)), image_server.add("b.png", (800, 600)),
            image_server.add("c.jpg", (500, 500)), image_server.add_bytes("notes.png", b"not an image at all")]
    lines = "\n".join(f"  - {u}" for u in urls)
    path = tmp_path / "batch.yaml"
    path.write_text(f"""version: 1
name: batch
inputs:
{lines}
steps:
  - id: recolor
    op: edit
    prompt: "make the background {{color}}"
    matrix:
      color: [red, blue]
  - id: hires
    op: upscale
    for_each: recolor
    upscale_mode: factor
    factor: 2
""")
    return path


def ledger_by_request(emu) -> dict[str, tuple[str, int]]:
    return {e.request_id: (e.status, e.amount_micros) for e in emu.ledger().entries}


def items_by_request(state: Path) -> dict[str, tuple[str, int | None, str]]:
    db = duckdb.connect(str(state), read_only=True)
    try:
        return {rid: (st, ch, step) for rid, st, ch, step in db.execute(
            "SELECT request_id, state, charged_micros, step FROM items WHERE request_id IS NOT NULL").fetchall()}
    finally:
        db.close()


def report_json(*args: str) -> dict:
    res = CliRunner().invoke(cli, ["report", *args, "--format", "json"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return json.loads(res.output, parse_float=lambda s: pytest.fail(f"float in JSON: {s}"))


def test_report_matches_the_emulator_ledger(tmp_path, image_server, emulator):
    manifest = write_manifest(tmp_path, image_server)
    summary = run(load_manifest(manifest), options=RunOptions(base_url=emulator.url, api_key=emulator.api_key,
                                                               poll_initial=0.05, poll_max_interval=0.2,
                                                               preflight=False))
    assert summary.outcome == "incomplete"  # the non-image fails its edits, which blocks their upscales
    state = load_manifest(manifest).state_path
    ledger = emulator.ledger()
    data = report_json(str(manifest))
    totals = data["spend"]["totals"]
    assert totals["charged_micros"] == ledger.charged_micros == sum(e.amount_micros for e in ledger.entries)
    assert Decimal(totals["charged_usd"]) * 1_000_000 == ledger.charged_micros

    # request by request: the state's status and charge are the ledger's
    by_req = ledger_by_request(emulator)
    items = items_by_request(state)
    assert set(items) == set(by_req)
    for rid, (st, charged, _) in items.items():
        assert (st, charged) == by_req[rid], rid
    # per step, charged = the ledger's entries of that step's requests
    per_step = {s["step"]: s["charged_micros"] for s in data["spend"]["steps"]}
    for step in ("recolor", "hires"):
        assert per_step[step] == sum(by_req[r][1] for r, (_, _, s) in items.items() if s == step)

    status = data["status"]
    assert status["by_state"] == {"COMPLETED": 12, "FAILED": 2, "BLOCKED": 2}
    (fail,) = status["failures"]
    assert fail["state"] == "FAILED" and fail["count"] == 2 and "not a supported image" in fail["message"]
    assert {e["input_id"] for e in fail["examples"]} == {"notes"}
    (blocked,) = status["blocked"]
    assert blocked["count"] == 2 and "ended FAILED" in blocked["message"]
    v = {x["cause"]: x for x in data["spend"]["variance"]}
    assert v["failed_charged"]["charged_micros"] == 20000  # FAILED edits are charged
    assert v["blocked_not_spent"]["est_high_micros"] == 20000 and v["blocked_not_spent"]["charged_micros"] == 0
    assert data["spend"]["totals"]["est_high_micros"] + sum(x["delta_micros"] for x in v.values()) == \
        ledger.charged_micros

    # every output is where the report says, with that checksum and size
    outputs = data["outputs"]
    assert outputs["count"] == 12 and len(outputs["files"]) == 12
    out_dir = Path(outputs["output_dir"])
    for f in outputs["files"]:
        blob = (out_dir / f["path"]).read_bytes()
        assert hashlib.sha256(blob).hexdigest() == f["sha256"] and len(blob) == f["bytes"]
    timing = {t["step"]: t for t in data["timing"]["steps"]}
    assert timing["recolor"]["finished"] == 8 and timing["hires"]["processing_p50_ms"] >= 0
    assert sum(b["completed"] for b in data["timing"]["buckets"]) == 12


def test_every_format_from_the_cli(tmp_path, image_server, emulator):
    manifest = write_manifest(tmp_path, image_server)
    run(load_manifest(manifest), options=RunOptions(base_url=emulator.url, api_key=emulator.api_key,
                                                    poll_initial=0.05, poll_max_interval=0.2, preflight=False))
    charged = emulator.ledger().charged_micros
    runner = CliRunner()
    res = runner.invoke(cli, ["report", str(manifest), "--format", "csv"], catch_exceptions=False)
    rows = list(csv.DictReader(io.StringIO(res.output)))
    assert [int(r["value"]) for r in rows if r["section"] == "total" and r["metric"] == "charged_micros"] == [charged]
    for fmt in ("md", "html", "table"):
        target = tmp_path / f"report.{fmt}"
        res = runner.invoke(cli, ["report", str(manifest), "--format", fmt, "-o", str(target), "--limit", "3"],
                            catch_exceptions=False)
        assert res.exit_code == 0 and target.exists()
        text = target.read_text("utf-8")
        assert "recolor" in text and "hires" in text
        assert format_usd(charged) in text
    assert "the first 3 are listed" in (tmp_path / "report.md").read_text()
    assert (tmp_path / "report.html").read_text().count("<svg") == 3
    res = runner.invoke(cli, ["report"])
    assert res.exit_code == 2 and "give a MANIFEST or --state FILE" in res.output
    res = runner.invoke(cli, ["report", "--state", str(tmp_path / "missing.duckdb")])
    assert res.exit_code == 1 and "does not exist" in res.output


def test_export_from_the_cli(tmp_path, image_server, emulator):
    manifest = write_manifest(tmp_path, image_server)
    run(load_manifest(manifest), options=RunOptions(base_url=emulator.url, api_key=emulator.api_key,
                                                    poll_initial=0.05, poll_max_interval=0.2, preflight=False))
    res = CliRunner().invoke(cli, ["export", str(manifest), "-o", str(tmp_path / "x")], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    db = duckdb.connect()
    try:
        n, charged = db.execute(f"SELECT count(*), sum(charged_micros) FROM '{tmp_path / 'x' / 'items.parquet'}'"
                                ).fetchone()
        assert (n, charged) == (16, emulator.ledger().charged_micros)
        assert db.execute(f"SELECT count(*) FROM '{tmp_path / 'x' / 'attempts.parquet'}'").fetchone()[0] == 14
    finally:
        db.close()


@pytest.mark.slow
def test_a_killed_run_then_reconcile_gives_the_ledger_to_the_micro(tmp_path, image_server):
    # jobs stay QUEUED for 5 s: long enough to kill the run with every edit submitted and none finished,
    # even on a slow CI machine
    cfg = fast_test_config(queue_time=Dist(5.0), processing_time=Dist(0.1))
    with start_emulator(cfg) as emu:
        manifest = write_manifest(tmp_path, image_server)
        state = load_manifest(manifest).state_path
        env = dict(os.environ, PIXAZO_API_KEY=emu.api_key)
        proc = subprocess.Popen([sys.executable, "-m", "pixbatch", "run", str(manifest), "--base-url", emu.url,
                                 "--quiet", "--no-preflight"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 40
            while True:  # the runner's status file says when all 8 edits have their request id
                assert proc.poll() is None, proc.stderr.read()
                assert time.monotonic() < deadline, "the run never had its 8 edits submitted"
                try:
                    snap = json.loads(status_file_path(state).read_text())
                    if snap["steps"].get("recolor", {}).get("SUBMITTED") == 8:
                        break
                except (FileNotFoundError, json.JSONDecodeError):
                    pass
                time.sleep(0.05)
            live = build_report(state)  # the run holds the lock: the report reads its status file
            assert live.live and live.status.count("recolor", "SUBMITTED") == 8
            assert live.spend.totals.reserved_micros == 80000 and f"PID {proc.pid}" in live.notes[0]
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc.stderr.close()

        # the interrupted state: 8 edits in flight, nothing charged yet, and the report says what to do
        data = report_json(str(manifest))
        t = data["spend"]["totals"]
        assert (t["in_flight_items"], t["charged_micros"], t["reserved_micros"]) == (8, 0, 80000)
        assert any("pixbatch reconcile" in n for n in data["notes"])
        assert data["run"]["outcome"] == "killed"  # no run holds the file: the one that started it was killed
        status = json.loads(CliRunner().invoke(cli, ["status", str(manifest), "--json"]).output)
        assert (status["outcome"], status["running"]) == ("killed", False)
        assert "(killed, from the database)" in CliRunner().invoke(cli, ["status", str(manifest)]).output

        res = CliRunner(env={"PIXAZO_API_KEY": emu.api_key}).invoke(
            cli, ["reconcile", str(manifest), "--base-url", emu.url, "--wait", "30", "--poll-interval", "0.2"],
            catch_exceptions=False)
        assert res.exit_code == 0, res.output
        assert "checked 8 item(s): 8 settled" in res.output

        ledger = emu.ledger()
        data = report_json(str(manifest))
        assert data["run"]["outcome"] == "killed"  # reconcile settled its items; the run was still killed
        assert data["spend"]["totals"]["charged_micros"] == ledger.charged_micros == 80000  # 6 + 2 FAILED edits
        assert data["spend"]["totals"]["in_flight_items"] == 0
        by_req = ledger_by_request(emu)
        items = items_by_request(state)
        assert {r: (s, c) for r, (s, c, _) in items.items()} == by_req
        db = duckdb.connect(str(state), read_only=True)
        try:  # the audit trail says who settled them
            assert db.execute("SELECT count(*) FROM events WHERE detail->>'by' = 'reconcile'").fetchone()[0] == 8
        finally:
            db.close()
        assert CliRunner(env={"PIXAZO_API_KEY": emu.api_key}).invoke(
            cli, ["reconcile", str(manifest), "--base-url", emu.url]).output.endswith("nothing to reconcile "
                                                                                       "(every item with a request "
                                                                                       "id is settled).\n")


def test_error_is_not_charged_and_failed_is_both_in_the_report_and_the_ledger(tmp_path, image_server, emulator):
    urls = [image_server.add(n, s) for n, s in (("a.png", (640, 480)), ("b.png", (800, 600)), ("c.png", (300, 900)))]
    manifest = tmp_path / "faults.yaml"
    manifest.write_text("version: 1\ninputs:\n" + "".join(f"  - {u}\n" for u in urls) + """steps:
  - id: recolor
    op: edit
    prompt: "make it {color}"
    matrix:
      color: [red, blue]
  - id: hires
    op: upscale
    for_each: recolor
    upscale_mode: factor
    factor: 2
""")
    # the 6 edits are submitted first: one ends ERROR (not charged), one FAILED (charged)
    emulator.script([{"status": "ERROR"}, {"status": "FAILED"}] + [{"status": "COMPLETED"}] * 4)
    run(load_manifest(manifest), options=RunOptions(base_url=emulator.url, api_key=emulator.api_key,
                                                    poll_initial=0.05, poll_max_interval=0.2))
    ledger = emulator.ledger()
    data = report_json(str(manifest))
    assert data["status"]["by_state"] == {"COMPLETED": 8, "FAILED": 1, "ERROR": 1, "BLOCKED": 2}
    t = data["spend"]["totals"]
    assert t["charged_micros"] == ledger.charged_micros
    assert (t["not_charged_items"], t["not_charged_est_micros"]) == (1, 10000)
    v = {x["cause"]: x for x in data["spend"]["variance"]}
    assert (v["error_not_charged"]["items"], v["error_not_charged"]["charged_micros"]) == (1, 0)
    assert (v["failed_charged"]["items"], v["failed_charged"]["charged_micros"]) == (1, 10000)
    by_req = ledger_by_request(emulator)
    assert {r: (s, c) for r, (s, c, _) in items_by_request(load_manifest(manifest).state_path).items()} == by_req
    assert sorted(s for s, _ in by_req.values()) == ["COMPLETED"] * 8 + ["ERROR", "FAILED"]


def test_a_forced_rerun_is_paid_twice_and_the_report_says_why(tmp_path, image_server, emulator):
    manifest = tmp_path / "twice.yaml"
    manifest.write_text(f"""version: 1
inputs:
  - {image_server.add("a.png", (500, 500))}
  - {image_server.add("b.png", (600, 400))}
steps:
  - id: e
    op: edit
    prompt: "make it blue"
""")
    opts = dict(base_url=emulator.url, api_key=emulator.api_key, poll_initial=0.05, poll_max_interval=0.2)
    run(load_manifest(manifest), options=RunOptions(**opts))
    run(load_manifest(manifest), options=RunOptions(force=True, **opts))
    data = report_json(str(manifest))
    assert data["spend"]["totals"]["charged_micros"] == emulator.ledger().charged_micros == 4 * 10000
    (v,) = data["spend"]["variance"]
    assert (v["cause"], v["items"], v["delta_micros"]) == ("sent_again", 2, 20000)
    # what the second run itself cost: its own settlements, not the items' whole history
    assert data["run"]["charged_micros"] == 20000
    first = load_manifest(manifest).state_path
    db = duckdb.connect(str(first), read_only=True)
    try:
        first_run = db.execute("SELECT run_id FROM runs ORDER BY started_at LIMIT 1").fetchone()[0]
    finally:
        db.close()
    older = report_json(str(manifest), "--run", first_run)
    assert older["run"]["charged_micros"] == 20000 and older["spend"]["totals"]["charged_micros"] == 40000
