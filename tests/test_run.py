"""`run` end to end against the emulator on loopback: real HTTP, real DuckDB files, real images."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import duckdb
import pytest
from click.testing import CliRunner
from PIL import Image

from pixbatch import retry_policy
from pixbatch.cli import cli
from pixbatch.emulator import fast_test_config, start_emulator
from pixbatch.errors import AuthError, BudgetExceeded, StateLocked
from pixbatch.manifest import load_manifest
from pixbatch.runner import RunOptions, run
from pixbatch.state import read_status


@pytest.fixture(autouse=True)
def _instant_backoff():
    with retry_policy.instant():
        yield


def write_manifest(tmp_path: Path, urls: list[str], steps: str, name: str = "m", extra: str = "") -> Path:
    inputs = "\n".join(f"  - {u}" for u in urls)
    p = tmp_path / f"{name}.yaml"
    p.write_text(f"version: 1\n{extra}inputs:\n{inputs}\nsteps:\n{steps}", "utf-8")
    return p


def opts(emu, **kw) -> RunOptions:
    base = dict(base_url=emu.url, api_key=emu.api_key, concurrency=8, poll_initial=0.1, poll_max_interval=0.5,
                status_interval=0.2)
    base.update(kw)
    return RunOptions(**base)


def db_rows(state_path, sql, params=()):
    db = duckdb.connect(str(state_path), read_only=True)
    try:
        return db.execute(sql, list(params)).fetchall()
    finally:
        db.close()


MIXED = """\
  - id: recolor
    op: edit
    prompt: "the background is {color}"
    matrix:
      color: [red, blue]
  - id: hires
    op: upscale
    for_each: recolor
    upscale_mode: factor
    factor: 2
    output_format: png
  - id: thumbs
    op: upscale
    target: 1
    output_format: webp
  - id: thumbs_again
    op: upscale
    target: 1
    output_format: webp
"""


def test_mixed_manifest_runs_to_completion_and_matches_the_ledger(tmp_path, emulator, image_server):
    urls = [image_server.add(f"p{i}.png", (640 + 32 * i, 480)) for i in range(3)]
    m = load_manifest(write_manifest(tmp_path, urls, MIXED))
    s = run(m, options=opts(emulator))
    assert s.outcome == "completed" and s.exit_code == 0, s.messages
    # 6 edits + 6 chained upscales + 3 thumbs; thumbs_again repeats thumbs: sent once (aliases)
    assert s.counts["COMPLETED"] == 15 and s.submits == 15
    ledger = emulator.ledger()
    assert len(ledger.entries) == 15
    assert ledger.charged_micros == s.charged_total_micros == s.charged_run_micros
    assert s.reserved_micros == 0
    by_rid = {e.request_id: e for e in ledger.entries}
    rows = db_rows(m.state_path, "SELECT i.key, i.request_id, i.output_name, o.path, o.sha256, o.width, o.height "
                   "FROM items i JOIN outputs o USING (key)")
    assert len(rows) == 18  # 15 items + 3 aliases
    for key, rid, name, path, sha, w, h in rows:
        f = m.output_dir / path
        assert hashlib.sha256(f.read_bytes()).hexdigest() == sha
        with Image.open(f) as im:
            assert im.size == (w, h) == (by_rid[rid].output_width, by_rid[rid].output_height)
            if path.startswith("hires/"):
                assert im.format == "PNG"
            if path.startswith("thumbs"):
                assert im.format == "WEBP" and w * h <= 1_000_000
    assert (m.output_dir / "thumbs_again").is_dir()
    # again: nothing is sent or paid twice
    again = run(m, options=opts(emulator))
    assert again.submits == 0 and again.charged_run_micros == 0 and again.exit_code == 0
    assert len(emulator.ledger().entries) == 15
    # status, without the gateway
    res = CliRunner().invoke(cli, ["status", str(m.path), "--json"])
    assert res.exit_code == 0, res.output
    snap = json.loads(res.output)
    assert snap["steps"]["hires"] == {"COMPLETED": 6} and snap["charged_micros"] == ledger.charged_micros


def test_polls_per_item_stay_low_on_default_timings(tmp_path, image_server):
    url = image_server.add("a.png", (320, 240))
    steps = "  - id: e\n    op: edit\n    prompt: \"v{n}\"\n    matrix:\n      n: [" + ", ".join(map(str, range(24))) + "]\n"
    m = load_manifest(write_manifest(tmp_path, [url], steps))
    cfg = fast_test_config(queue_time=(0.2, 1.0), processing_time=(0.5, 2.0))  # the emulator's defaults
    with start_emulator(cfg) as emu:
        s = run(m, options=RunOptions(base_url=emu.url, api_key=emu.api_key, concurrency=12, download=False))
    assert s.exit_code == 0
    assert s.polls / s.counts["COMPLETED"] <= 3, s.polls


def test_dropped_connection_after_accept_is_ambiguous_and_never_paid_twice(tmp_path, emulator, image_server):
    urls = [image_server.add(f"d{i}.png", (320, 240)) for i in range(4)]
    steps = "  - id: e\n    op: edit\n    prompt: make it red\n  - id: u\n    op: upscale\n    for_each: e\n"
    m = load_manifest(write_manifest(tmp_path, urls, steps))
    emulator.script([{"drop_after_accept": True}])
    s = run(m, options=opts(emulator, concurrency=1))
    assert s.counts["AMBIGUOUS"] == 1 and s.counts["BLOCKED"] == 1 and s.counts["COMPLETED"] == 6
    assert s.exit_code == 1 and s.at_risk_micros == 10_000
    assert any("1 AMBIGUOUS" in msg and "--retry-ambiguous" in msg and "$0.01" in msg for msg in s.messages)
    ledger = emulator.ledger()
    # the gateway accepted (and charged) the dropped request: it is exactly the money at risk
    assert ledger.charged_micros == s.charged_total_micros + s.at_risk_micros
    # a plain re-run does not resend it
    again = run(m, options=opts(emulator))
    assert again.submits == 0 and again.counts["AMBIGUOUS"] == 1
    assert len(emulator.ledger().entries) == 7  # 6 completed + the dropped one
    # on request it is resent (and its downstream item unblocked)
    retried = run(m, options=opts(emulator, retry_ambiguous=True))
    assert retried.submits == 2 and retried.exit_code == 0 and retried.counts["COMPLETED"] == 8
    assert emulator.ledger().charged_micros == retried.charged_total_micros + 10_000  # the abandoned attempt


def test_budget_is_never_exceeded_at_concurrency_32(tmp_path):
    urls = [f"https://img.test/{i}.png" for i in range(60)]  # lazy emulator: inputs are not fetched
    steps = "  - id: big\n    op: upscale\n    upscale_mode: factor\n    factor: 2\n"
    m = load_manifest(write_manifest(tmp_path, urls, steps))
    # unknown input size: each item is $0.005-$0.01, reserved at $0.01; 1024x1024 x2 costs $0.01
    with start_emulator(fast_test_config(render="lazy")) as emu:
        s = run(m, options=opts(emu, concurrency=32, budget_micros=455_000, download=False,
                                preflight=False))
        ledger = emu.ledger()
    assert s.outcome == "budget" and s.exit_code == 3
    assert s.peak_committed_micros <= 455_000 and ledger.charged_micros <= 455_000
    assert ledger.charged_micros == s.charged_total_micros == 450_000
    assert s.left_items == 15 and s.left_low_micros == 75_000 and s.left_high_micros == 150_000
    assert any("15 item(s) left" in msg for msg in s.messages)
    committed = [json.loads(d)["committed"] for (d,) in db_rows(
        m.state_path, "SELECT detail FROM events WHERE kind = 'state'")]
    assert max(committed) <= 455_000
    # the lower bound of what is left no longer fits: refuse to start
    with pytest.raises(BudgetExceeded, match="cannot cover"):
        run(m, options=opts(emu, budget_micros=460_000, download=False))


def test_429_storm_is_ridden_out(tmp_path, image_server):
    url = image_server.add("a.png", (320, 240))
    steps = "  - id: e\n    op: edit\n    prompt: \"v{n}\"\n    matrix:\n      n: [" + ", ".join(map(str, range(30))) + "]\n"
    m = load_manifest(write_manifest(tmp_path, [url], steps))
    with start_emulator(fast_test_config(rate_limit=15, rate_burst=3)) as emu:
        with retry_policy.instant():
            retry_policy.INSTANT = False  # honour the real Retry-After here
            s = run(m, options=opts(emu, concurrency=16, download=False))
        stats, ledger = emu.stats(), emu.ledger()
    assert s.exit_code == 0 and stats["rate_limited"] > 0
    assert len(ledger.entries) == 30 and ledger.charged_micros == s.charged_total_micros


def test_5xx_and_garbage_storm(tmp_path, emulator, image_server):
    urls = [image_server.add(f"s{i}.png", (320, 240)) for i in range(10)]
    steps = "  - id: e\n    op: edit\n    prompt: make it red\n  - id: u\n    op: upscale\n    for_each: e\n"
    m = load_manifest(write_manifest(tmp_path, urls, steps))
    emulator.configure(submit_500_rate=0.3, poll_500_rate=0.3, poll_garbage_rate=0.15, seed=7)
    s = run(m, options=opts(emulator))
    stats, ledger = emulator.stats(), emulator.ledger()
    assert stats["injected_submit_500"] > 0 and stats["garbage_poll"] > 0
    assert s.exit_code == 0 and s.counts["COMPLETED"] == 20
    assert len(ledger.entries) == 20 and ledger.charged_micros == s.charged_total_micros
    # every exchange is counted; the state file keeps the failed ones one by one
    assert s.http["POST 202"] == 20 and s.http["POST 500"] == stats["injected_submit_500"]
    assert sum(n for tag, n in s.http.items() if tag.startswith("POST")) == stats["submits"]
    db = duckdb.connect(str(m.state_path), read_only=True)
    rows = db.execute("SELECT detail->>'method', (detail->>'status')::INT FROM events WHERE kind = 'http'").fetchall()
    end = json.loads(db.execute("SELECT detail FROM events WHERE kind = 'run' AND detail->>'event' = 'end'").fetchone()[0])
    db.close()
    assert len(rows) == sum(n for tag, n in s.http.items() if not tag.split()[1].startswith("2"))
    assert all(status >= 300 for _, status in rows) and end["http"] == s.http


def test_402_mid_run_then_resume_after_top_up(tmp_path, image_server):
    url = image_server.add("a.png", (320, 240))
    steps = "  - id: e\n    op: edit\n    prompt: \"v{n}\"\n    matrix:\n      n: [" + ", ".join(map(str, range(10))) + "]\n"
    m = load_manifest(write_manifest(tmp_path, [url], steps))
    with start_emulator(fast_test_config(balance_micros=50_000)) as emu:
        s = run(m, options=opts(emu, concurrency=2))
        assert s.outcome == "balance" and s.exit_code == 5
        assert any("top up" in msg for msg in s.messages)
        assert s.counts["SUBMITTED"] == 0 and s.counts["COMPLETED"] == 5  # in-flight items were finished
        assert emu.ledger().charged_micros == s.charged_total_micros == 50_000
        emu.topup(1_000_000)
        again = run(m, options=opts(emu, concurrency=2))
        ledger = emu.ledger()
    assert again.exit_code == 0 and again.counts["COMPLETED"] == 10
    assert len(ledger.entries) == 10 and ledger.charged_micros == again.charged_total_micros == 100_000


def test_401_stops_at_once_and_a_missing_key_is_exit_4(tmp_path, emulator, image_server):
    url = image_server.add("a.png", (320, 240))
    m = load_manifest(write_manifest(tmp_path, [url], "  - id: e\n    op: edit\n    prompt: p\n"))
    s = run(m, options=opts(emulator, api_key="wrong-key"))
    assert s.outcome == "auth" and s.exit_code == 4 and s.counts["PENDING"] == 1
    assert emulator.ledger().charged_micros == 0 and s.reserved_micros == 0
    with pytest.raises(AuthError, match="PIXAZO_API_KEY"):
        run(m, options=RunOptions(base_url=emulator.url))
    res = CliRunner().invoke(cli, ["run", str(m.path), "--base-url", emulator.url])
    assert res.exit_code == 4 and "PIXAZO_API_KEY" in res.output
    res = CliRunner().invoke(cli, ["run", str(m.path), "--base-url", emulator.url, "--quiet"],
                             env={"PIXAZO_API_KEY": "wrong-key"})
    assert res.exit_code == 4 and "wrong-key" not in res.output


def test_failed_and_rejected_items_block_their_downstream(tmp_path, emulator, image_server):
    urls = [image_server.add(f"f{i}.png", (320, 240)) for i in range(3)]
    steps = "  - id: e\n    op: edit\n    prompt: p\n  - id: u\n    op: upscale\n    for_each: e\n"
    m = load_manifest(write_manifest(tmp_path, urls, steps))
    emulator.script([{"status": "FAILED"}, {"submit": 400}])
    s = run(m, options=opts(emulator, concurrency=1))
    assert s.counts == {**s.counts, "FAILED": 1, "FAILED_VALIDATION": 1, "BLOCKED": 2, "COMPLETED": 2}
    assert s.exit_code == 1
    assert emulator.ledger().charged_micros == s.charged_total_micros  # FAILED is charged, 400 is not
    reasons = [r for (r,) in db_rows(m.state_path, "SELECT error FROM items WHERE state = 'BLOCKED'")]
    assert all("upstream item" in r for r in reasons)


def test_a_new_output_dir_gets_every_output_without_a_new_request(tmp_path, emulator, image_server):
    # the resume fingerprint leaves output_dir out (no item holds it): the outputs still follow it
    urls = [image_server.add(f"o{i}.png", (320, 240)) for i in range(2)]
    mp = write_manifest(tmp_path, urls, "  - id: t\n    op: upscale\n    target: 1\n")
    assert run(load_manifest(mp), options=opts(emulator)).exit_code == 0
    mp.write_text(mp.read_text().replace("version: 1\n", "version: 1\noutput_dir: moved\n"))
    m = load_manifest(mp)
    again = run(m, options=opts(emulator))
    assert again.submits == 0 and again.downloads == 2 and again.exit_code == 0
    assert m.output_dir.name == "moved" and len(list((m.output_dir / "t").iterdir())) == 2
    assert len(emulator.ledger().entries) == 2


def test_corrupt_or_missing_outputs_are_fetched_again_not_resubmitted(tmp_path, emulator, image_server):
    urls = [image_server.add(f"c{i}.png", (320, 240)) for i in range(3)]
    m = load_manifest(write_manifest(tmp_path, urls, "  - id: t\n    op: upscale\n    target: 1\n"))
    assert run(m, options=opts(emulator)).exit_code == 0
    files = sorted((m.output_dir / "t").iterdir())
    good = files[0].read_bytes()
    files[0].write_bytes(good[:100] + b"corrupt" + good[107:])  # same size, different bytes
    files[1].unlink()
    again = run(m, options=opts(emulator))
    assert again.submits == 0 and again.downloads == 2 and again.exit_code == 0
    assert files[0].read_bytes() == good and files[1].exists()
    assert len(emulator.ledger().entries) == 3


def test_a_second_runner_is_refused_and_status_works_during_the_run(tmp_path, image_server):
    url = image_server.add("a.png", (320, 240))
    steps = "  - id: e\n    op: edit\n    prompt: \"v{n}\"\n    matrix:\n      n: [1, 2, 3, 4]\n"
    mp = write_manifest(tmp_path, [url], steps)
    m = load_manifest(mp)
    with start_emulator(fast_test_config(queue_time=6, processing_time=0.5)) as emu:  # outlasts 3 s of lock wait
        env = {**os.environ, "PIXAZO_API_KEY": emu.api_key}
        proc = subprocess.Popen([sys.executable, "-m", "pixbatch", "run", str(mp), "--base-url", emu.url, "--quiet",
                                 "--first-poll", "0.5"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            status_file = Path(str(m.state_path) + ".status.json")
            deadline = time.monotonic() + 20
            while not status_file.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            with pytest.raises(StateLocked, match="in use by another pixbatch process"):
                run(m, options=opts(emu, lock_wait=0))
            res = CliRunner().invoke(cli, ["run", str(mp), "--base-url", emu.url], env={"PIXAZO_API_KEY": emu.api_key})
            assert res.exit_code == 6 and "in use" in res.output
            snap = read_status(m.state_path)
            assert snap.source == "status-file" and snap.running and sum(snap.totals().values()) == 4
            res = CliRunner().invoke(cli, ["status", "--state", str(m.state_path)])
            assert res.exit_code == 0 and "status-file" in res.output
            out, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        assert proc.returncode == 0, err.decode()
    done = read_status(m.state_path)
    assert done.source == "database" and done.totals()["COMPLETED"] == 4 and not done.running


def test_the_log_and_the_status_file_show_the_latest_gateway_error(tmp_path, image_server):
    # half the polls answer 500: the run rides them out, and whoever watches sees why it is slow
    url = image_server.add("a.png", (320, 240))
    mp = write_manifest(tmp_path, [url], "  - id: e\n    op: edit\n    prompt: \"v{n}\"\n    matrix:\n      n: [1, 2]\n")
    m = load_manifest(mp)
    with start_emulator(fast_test_config(queue_time=2.5, processing_time=0.2, poll_500_rate=0.5)) as emu:
        proc = subprocess.run([sys.executable, "-m", "pixbatch", "run", str(mp), "--base-url", emu.url,
                               "--first-poll", "0.1", "--progress-interval", "0.1"],
                              env={**os.environ, "PIXAZO_API_KEY": emu.api_key}, capture_output=True, timeout=60)
    err = proc.stderr.decode()
    assert proc.returncode == 0, err
    lines = [x for x in err.splitlines() if x.startswith("latest gateway error at ")]
    assert lines and re.fullmatch(r"latest gateway error at \d\d:\d\d:\d\d UTC: GET /v2/requests/status/\S+: HTTP 500",
                                  lines[0]), lines
    snap = json.loads(Path(str(m.state_path) + ".status.json").read_text())
    assert snap["last_error"].endswith("HTTP 500") and snap["last_error_at"].endswith("Z")
    assert emu.api_key not in err


def test_json_lines_progress(tmp_path, emulator, image_server):
    url = image_server.add("a.png", (320, 240))
    mp = write_manifest(tmp_path, [url], "  - id: e\n    op: edit\n    prompt: p\n")
    res = CliRunner().invoke(cli, ["run", str(mp), "--base-url", emulator.url, "--json", "--first-poll", "0.1"],
                             env={"PIXAZO_API_KEY": emulator.api_key})
    assert res.exit_code == 0, res.output
    lines = [json.loads(x) for x in res.output.splitlines() if x.strip()]
    kinds = Counter(x["kind"] for x in lines)
    assert kinds["state"] >= 3 and kinds["http"] >= 2 and lines[-1]["kind"] == "summary"
    assert lines[-1]["outcome"] == "completed" and emulator.api_key not in res.output


def test_ctrl_c_stops_submitting_records_state_and_exits_130(tmp_path, image_server):
    import signal

    url = image_server.add("a.png", (320, 240))
    steps = "  - id: e\n    op: edit\n    prompt: \"v{n}\"\n    matrix:\n      n: [" + ", ".join(map(str, range(12))) + "]\n"
    mp = write_manifest(tmp_path, [url], steps)
    m = load_manifest(mp)
    with start_emulator(fast_test_config(queue_time=2.0, processing_time=0.2)) as emu:
        env = {**os.environ, "PIXAZO_API_KEY": emu.api_key}
        proc = subprocess.Popen([sys.executable, "-m", "pixbatch", "run", str(mp), "--base-url", emu.url, "--quiet",
                                 "--concurrency", "4", "--first-poll", "0.2"], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        status_file = Path(str(m.state_path) + ".status.json")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if status_file.exists() and json.loads(status_file.read_text()).get("steps", {}).get("e", {}).get(
                    "SUBMITTED", 0) >= 4:
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=20)
        assert proc.returncode == 130, err.decode()
        assert "Interrupted" in err.decode()
        snap = read_status(m.state_path)
        t = snap.totals()
        assert t["SUBMITTING"] == 0 and t["AMBIGUOUS"] == 0 and t["SUBMITTED"] == 4 and t["PENDING"] == 8
        # resume: the 4 submitted are polled, not resent
        s = run(m, options=opts(emu))
        ledger = emu.ledger()
    assert s.exit_code == 0 and s.submits == 8 and len(ledger.entries) == 12
    assert ledger.charged_micros == s.charged_total_micros


def test_force_redoes_finished_items_and_pays_again(tmp_path, emulator, image_server):
    url = image_server.add("a.png", (320, 240))
    mp = write_manifest(tmp_path, [url], "  - id: t\n    op: upscale\n    target: 1\n")
    m = load_manifest(mp)
    res = CliRunner().invoke(cli, ["run", str(mp), "--base-url", emulator.url, "--first-poll", "0.1"],
                             env={"PIXAZO_API_KEY": emulator.api_key})  # the rich display, not a terminal
    assert res.exit_code == 0, res.output
    forced = run(m, options=opts(emulator, force=True))
    assert forced.submits == 1 and forced.charged_total_micros == 10_000 == emulator.ledger().charged_micros


def test_no_download_still_prices_factor_upscales_by_their_real_size(tmp_path, emulator, image_server):
    # 640x480 x2 = 1.2 MP ($0.005), 1100x1000 x2 = 4.4 MP ($0.01): the input
    # sizes are unknown to pixbatch (not declared, not probed), so only the output can tell
    urls = [image_server.add("small.png", (640, 480)), image_server.add("large.png", (1100, 1000))]
    m = load_manifest(write_manifest(tmp_path, urls, "  - id: x\n    op: upscale\n    upscale_mode: factor\n"
                                                     "    factor: 2\n"))
    s = run(m, options=opts(emulator, download=False))
    assert s.exit_code == 0 and s.downloads == 0 and not (m.output_dir / "x").exists()
    assert s.charged_total_micros == emulator.ledger().charged_micros == 15_000


def test_webhook_mode_wakes_items_up_instead_of_polling(tmp_path, emulator, image_server):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    urls = [image_server.add(f"w{i}.png", (320, 240)) for i in range(4)]
    m = load_manifest(write_manifest(tmp_path, urls, "  - id: t\n    op: upscale\n    target: 1\n"))
    # without the callbacks the first poll would come only after 20 s
    s = run(m, options=opts(emulator, poll_initial=20.0, webhook_url=f"http://127.0.0.1:{port}/pixbatch/callback"))
    assert s.exit_code == 0 and s.duration_s < 10
    assert s.polls == 4  # one confirming poll per item
    assert emulator.stats()["webhooks_delivered"] >= 4
    assert emulator.ledger().charged_micros == s.charged_total_micros


@pytest.mark.parametrize("budget", [40_000 - 1, 0])  # 0: below what the items in flight already committed
def test_a_resume_over_budget_collects_paid_items_before_refusing_new_ones(tmp_path, image_server, budget):
    urls = [image_server.add(f"b{i}.png", (320, 240)) for i in range(4)]
    m = load_manifest(write_manifest(tmp_path, urls, "  - id: e\n    op: edit\n    prompt: p\n"))
    with start_emulator(fast_test_config(poll_500_rate=1.0, balance_micros=20_000)) as emu:
        first = run(m, options=opts(emu, concurrency=2))
        # two accepted (their polls all failed), then 402: two left PENDING
        assert first.counts["SUBMITTED"] == 2 and first.counts["PENDING"] == 2 and first.outcome == "balance"
        emu.configure(poll_500_rate=0.0)
        emu.topup(1_000_000)
        emu.wait_idle()
        # the budget no longer covers the PENDING items, but the SUBMITTED ones are paid for: collected first
        again = run(m, options=opts(emu, budget_micros=budget))
        ledger = emu.ledger()
    assert again.outcome == "budget" and again.exit_code == 3
    assert again.counts["COMPLETED"] == 2 and again.counts["PENDING"] == 2 and again.submits == 0
    assert ledger.charged_micros == again.charged_total_micros == 20_000 and len(ledger.entries) == 2


def test_a_used_up_quota_stops_the_run_without_failing_anything_and_a_later_run_resumes(tmp_path, image_server):
    url = image_server.add("q.png", (320, 240))
    steps = "  - id: e\n    op: edit\n    prompt: \"v{n}\"\n    matrix:\n      n: [" + ", ".join(map(str, range(6))) + "]\n"
    m = load_manifest(write_manifest(tmp_path, [url], steps))
    with start_emulator(fast_test_config(quota=3, quota_reset=600)) as emu:
        s = run(m, options=opts(emu, concurrency=2))
        assert (s.outcome, s.exit_code) == ("quota", 7)
        assert s.counts["COMPLETED"] == 3 and s.counts["PENDING"] == 3 and s.reserved_micros == 0
        assert not {"FAILED", "FAILED_VALIDATION", "AMBIGUOUS"} & {k for k, v in s.counts.items() if v}
        assert any("quota" in msg and re.search(r"comes back in 0:(09:5\d|10:00)", msg) for msg in s.messages), s.messages
        emu.reset_quota()
        again = run(m, options=opts(emu, concurrency=2))
        ledger = emu.ledger()
    assert again.exit_code == 0 and again.counts["COMPLETED"] == 6
    assert len(ledger.entries) == 6 and ledger.charged_micros == again.charged_total_micros


def test_a_gateway_that_cannot_be_reached_stops_the_run_soon_with_its_url_and_error(tmp_path, image_server):
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = image_server.add("u.png", (320, 240))
    m = write_manifest(tmp_path, [url], "  - id: e\n    op: edit\n    prompt: \"v{n}\"\n    matrix:\n      n: [1, 2, 3]\n")
    t0 = time.monotonic()
    with retry_policy.instant():
        retry_policy.INSTANT = False  # real backoff: the run must give up on its own clock
        res = CliRunner().invoke(cli, ["run", str(m), "--base-url", f"http://127.0.0.1:{port}", "--quiet"],
                                 env={"PIXAZO_API_KEY": "k"})
    took = time.monotonic() - t0
    assert res.exit_code == 8, res.output
    assert f"cannot reach the gateway at http://127.0.0.1:{port}" in res.output and "ConnectError" in res.output
    assert took < 15
    states = db_rows(tmp_path / "m.pixbatch.duckdb", "SELECT state, count(*) FROM items GROUP BY 1")
    assert states == [("PENDING", 3)]  # nothing AMBIGUOUS: nothing was sent
    listed = CliRunner().invoke(cli, ["failures", str(m), "--format", "json"])
    unsent = json.loads(listed.output)
    unsent = unsent["items"] if isinstance(unsent, dict) else unsent
    assert len(unsent) == 3 and all(i["kind"] == "unsent" and "ConnectError" in i["error"] for i in unsent), unsent


def test_failed_factor_upscales_are_charged_by_the_size_the_gateway_saw(tmp_path, emulator, image_server):
    """The run does not know the inputs' sizes (no estimate was run); the gateway prices a FAILED
    factor upscale by the input it read: 2 x 640x480 is 1.2 MP, $0.005, not the $0.01 reserved."""
    urls = [image_server.add(f"f{i}.png", (640, 480)) for i in range(3)]
    m = load_manifest(write_manifest(tmp_path, urls, "  - id: u\n    op: upscale\n    upscale_mode: factor\n"
                                                     "    factor: 2\n"))
    emulator.script([{"status": "FAILED"}, {"status": "FAILED"}, {"status": "FAILED"}])
    s = run(m, options=opts(emulator))
    ledger = emulator.ledger()
    assert s.counts["FAILED"] == 3 and ledger.charged_micros == 15_000
    assert s.charged_total_micros == ledger.charged_micros and s.reserved_micros == 0


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_signed_callback_settles_an_item_whose_connection_dropped_after_acceptance(tmp_path, emulator,
                                                                                     image_server):
    urls = [image_server.add(f"d{i}.png", (320, 240)) for i in range(3)]
    m = load_manifest(write_manifest(tmp_path, urls, "  - id: t\n    op: upscale\n    target: 1\n"))
    emulator.script([{"drop_after_accept": True}])
    hook = f"http://127.0.0.1:{_free_port()}/pixbatch/callback"
    s = run(m, options=opts(emulator, webhook_url=hook))
    ledger = emulator.ledger()
    assert s.exit_code == 0 and s.counts["COMPLETED"] == 3 and s.counts.get("AMBIGUOUS", 0) == 0
    assert s.at_risk_micros == 0 and s.submits == 3  # nothing sent twice
    assert len(ledger.entries) == 3 and ledger.charged_micros == s.charged_total_micros
    sent = [e.webhook_url for e in emulator.requests().submits]
    assert all("pb_sig=" in u and "pb_key=" in u for u in sent)  # each send names itself
    secret = db_rows(m.state_path, "SELECT value FROM secrets")[0][0]
    for table in ("items", "events", "runs", "submit_log"):  # the secret is never written anywhere else
        assert secret not in repr(db_rows(m.state_path, f"SELECT * FROM {table}"))
    adopted = db_rows(m.state_path, "SELECT count(*) FROM events WHERE kind = 'state' AND "
                                    "detail->>'reason' LIKE 'a signed callback%'")
    assert adopted == [(1,)]


def test_forged_or_oversized_callbacks_are_refused_and_change_nothing(tmp_path, image_server):
    import httpx

    from pixbatch.runner.callbacks import MAX_BODY, Receiver, Signer

    signer = Signer("s" * 64, "http://127.0.0.1:9/cb")
    heard = []

    async def go():
        import asyncio

        rx = Receiver(signer, asyncio.get_running_loop(), lambda *a: heard.append(a))
        transport = httpx.ASGITransport(app=rx)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:9") as c:
            good = signer.url_for("k1", 2)
            ok = await c.post(good, json={"request_id": "p-image_0123", "status": "COMPLETED"})
            dup = await c.post(good, json={"request_id": "p-image_0123", "status": "COMPLETED"})
            forged = await c.post("/cb?pb_key=k1&pb_n=2&pb_sig=" + "0" * 40, json={"request_id": "p-image_9"})
            unsigned = await c.post("/cb", json={"request_id": "p-image_9"})
            big = await c.post(good, content=b"{" + b" " * (MAX_BODY + 10) + b"}")
            bad_id = await c.post(good, json={"request_id": "../../x"})
        await asyncio.sleep(0.05)
        return [r.status_code for r in (ok, dup, forged, unsigned, big, bad_id)], rx.forged

    codes, forged = asyncio_run(go())
    assert codes == [200, 200, 403, 403, 413, 400] and forged == 2
    assert heard == [("k1", 2, "p-image_0123")]  # once, however often it is delivered


def asyncio_run(coro):
    import asyncio

    return asyncio.run(coro)


def test_ctrl_c_during_a_long_retry_after_exits_at_once_and_nothing_is_sent_later(tmp_path, image_server):
    """Every submit is answered 429 with Retry-After: 120. Ctrl-C must not wait it out: nothing
    that is not on the wire is sent, the process exits within seconds, no item is in doubt."""
    import signal

    url = image_server.add("r.png", (320, 240))
    steps = "  - id: e\n    op: edit\n    prompt: \"v{n}\"\n    matrix:\n      n: [1, 2, 3, 4, 5, 6]\n"
    mp = write_manifest(tmp_path, [url], steps)
    m = load_manifest(mp)
    with start_emulator(fast_test_config(rate_window=(1, 120))) as emu:  # 1 submit per 120 s window
        env = {**os.environ, "PIXAZO_API_KEY": emu.api_key}
        proc = subprocess.Popen([sys.executable, "-m", "pixbatch", "run", str(mp), "--base-url", emu.url, "--quiet",
                                 "--concurrency", "4", "--first-poll", "0.2"], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and sum(1 for e in emu.requests().submits if e.code == 429) < 2:
            time.sleep(0.05)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
        took = time.monotonic() - t0
        sent_at_exit = len(emu.requests().submits)
        time.sleep(1.0)
        assert len(emu.requests().submits) == sent_at_exit  # nothing goes out after the process is gone
    assert proc.returncode == 130, err.decode()[-2000:]
    assert took < 10
    t = read_status(m.state_path).totals()
    assert t["AMBIGUOUS"] == 0 and t["SUBMITTING"] == 0 and t["PENDING"] + t.get("SUBMITTED", 0) + \
        t.get("COMPLETED", 0) == 6
