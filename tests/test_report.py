"""The report's numbers, checked against values computed by hand on a state file built here.

``build_state`` writes a realistic state file the way a run leaves it (through
``pixbatch.state.connection.connect`` and plain INSERTs): three steps, two operations, three
price tiers, every item state, failures with messages, blocked and ambiguous items,
reservations, real output files with their checksums, and timings. The last run did not
record an end: the file is what an interrupted run leaves behind.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from pixbatch import state as st
from pixbatch.errors import StateError, StateLocked
from pixbatch.items import WorkItem, upstream_ref
from pixbatch.state.connection import connect
from pixbatch.report import CAUSES, build_report

T0 = dt.datetime(2026, 5, 22, 10, 0, 0)
EDIT, UP_LOW, UP_HIGH = "edit", "upscale <=4MP", "upscale 4-8MP"


def at(seconds: float | None) -> dt.datetime | None:
    return None if seconds is None else T0 + dt.timedelta(seconds=seconds)


@dataclass
class Row:
    name: str
    step: str
    op: str
    input_id: str
    state: str
    est: tuple[int, int]
    tier: str
    charged: int | None = None
    reserved: int = 0
    error: str | None = None
    times: tuple[float | None, float | None, float | None] = (None, None, None)  # submitted, started, finished
    run: str = "run-2"
    upstream: str | None = None  # name of the upstream row
    output_bytes: int | None = None  # writes an output file of this size


# The plan, with the expected numbers worked out in the tests below.
ROWS = [
    # step recolor: edit, $0.01 each, 8 items
    Row("r1", "recolor", "edit", "a", "COMPLETED", (10000, 10000), EDIT, 10000, times=(0, 2, 10), output_bytes=1000),
    Row("r2", "recolor", "edit", "b", "COMPLETED", (10000, 10000), EDIT, 10000, times=(0, 4, 16), output_bytes=2000),
    Row("r3", "recolor", "edit", "c", "FAILED", (10000, 10000), EDIT, 10000, error="content policy violation",
        times=(1, 3, 5)),
    Row("r4", "recolor", "edit", "d", "ERROR", (10000, 10000), EDIT, 0, error="upstream timeout", times=(1, 1, 31)),
    Row("r5", "recolor", "edit", "e", "ERROR", (10000, 10000), EDIT, 0, error="upstream timeout",
        times=(2, None, 32)),
    Row("r6", "recolor", "edit", "f", "FAILED_VALIDATION", (10000, 10000), EDIT, 0,
        error="400: 'images[0]' is not an image"),
    Row("r7", "recolor", "edit", "g", "AMBIGUOUS", (10000, 10000), EDIT, reserved=10000,
        error="connection reset after the request was sent"),
    Row("r8", "recolor", "edit", "h", "SUBMITTED", (10000, 10000), EDIT, reserved=10000, times=(5, None, None)),
    # step hires: upscale factor 2 of the edits; priced as a range when the size was unknown
    Row("h1", "hires", "upscale", "a", "COMPLETED", (5000, 10000), UP_HIGH, 10000, times=(11, 12, 20),
        upstream="r1", output_bytes=3000),
    Row("h2", "hires", "upscale", "b", "COMPLETED", (5000, 5000), UP_HIGH, 10000, times=(17, 18, 25),
        upstream="r2", output_bytes=4000),
    Row("h3", "hires", "upscale", "c", "BLOCKED", (5000, 10000), UP_LOW, error="upstream item FAILED: content policy violation",
        upstream="r3"),
    Row("h4", "hires", "upscale", "d", "BLOCKED", (5000, 10000), UP_LOW, error="upstream item ERROR: upstream timeout",
        upstream="r4"),
    Row("h5", "hires", "upscale", "h", "PENDING", (5000, 10000), UP_LOW, upstream="r8"),
    # step thumbs: upscale target 1 MP of the inputs, $0.005 each
    Row("t1", "thumbs", "upscale", "a", "COMPLETED", (5000, 5000), UP_LOW, 5000, times=(0, 1, 3), run="run-1",
        output_bytes=500),
    Row("t2", "thumbs", "upscale", "b", "SUBMITTING", (5000, 5000), UP_LOW, reserved=5000),
    Row("t3", "thumbs", "upscale", "c", "COMPLETED", (5000, 5000), UP_LOW, None, times=(0, 1, 4), output_bytes=600),
]


def _body(r: Row, keys: dict[str, str]) -> tuple[str, dict]:
    src = f"https://img.test/{r.input_id}.png"
    if r.op == "edit":
        return r.op, {"prompt": f"recolor {r.name}", "images": [src]}
    if r.step == "hires":
        return r.op, {"image": upstream_ref(keys[r.upstream]), "upscale_mode": "factor", "factor": 2}
    return r.op, {"image": src, "target": 1}


def build_state(path: Path, out_dir: Path) -> dict[str, str]:
    """Write the state file of ROWS; returns {row name: item key}."""
    db = connect(path)
    keys: dict[str, str] = {}
    db.execute("INSERT INTO runs (run_id, started_at, finished_at, manifest_path, base_url, budget_micros,"
               " estimate_low_micros, estimate_high_micros, outcome, pid, options) VALUES"
               " ('run-1', ?, ?, 'm.yaml', 'http://127.0.0.1:9', 1000000, 120000, 140000, 'interrupted', 11, ?),"
               " ('run-2', ?, NULL, 'm.yaml', 'http://127.0.0.1:9', 1000000, 120000, 140000, 'running', 12, ?)",
               [T0 - dt.timedelta(minutes=5), T0 - dt.timedelta(minutes=4), json.dumps({"output_dir": str(out_dir)}),
                T0 - dt.timedelta(seconds=1), json.dumps({"output_dir": str(out_dir)})])
    per_step: dict[str, int] = {}
    for r in ROWS:
        op, body = _body(r, keys)
        item = WorkItem.build(step=r.step, op=op, body=body, input_id=r.input_id, output_name=f"{r.step}/{r.input_id}.jpg",
                              upstream=keys.get(r.upstream) if r.upstream else None)
        keys[r.name] = item.key
        idx = per_step.get(r.step, 0)
        per_step[r.step] = idx + 1
        submitted, started, finished = (at(t) for t in r.times)
        sent = r.state not in ("PENDING", "BLOCKED")
        request_id = f"{'p-image' if op == 'edit' else 'p-image-upscale'}_{r.name}" if submitted else None
        db.execute(
            "INSERT INTO items (key, step, op, idx, body, input_id, output_name, upstream, est_low_micros,"
            " est_high_micros, tier, state, request_id, gateway_status, error, reserved_micros, charged_micros,"
            " submitted_at, started_at, finished_at, run_id, attempts) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            [item.key, r.step, op, idx, item.body_json, r.input_id, item.output_name, item.upstream, r.est[0],
             r.est[1], r.tier, r.state, request_id,
             r.state if r.state in ("COMPLETED", "FAILED", "ERROR") else ("QUEUED" if submitted else None),
             r.error, r.reserved, r.charged, submitted, started, finished, r.run if sent else None, 1 if sent else 0],
        )
        if sent:
            st.log_attempt(db, st.Attempt(
                item.key, 1, r.run, at(r.times[0] or 0), r.est[1], request_id, submitted,
                400 if r.state == "FAILED_VALIDATION" else (202 if submitted else None),
                {"FAILED_VALIDATION": "rejected", "AMBIGUOUS": "ambiguous", "SUBMITTING": "pending"}.get(
                    r.state, "accepted")))
            db.execute("INSERT INTO events (ts, run_id, key, kind, detail) VALUES (?, ?, ?, 'state', ?)",
                       [at(r.times[0] or 0), r.run, item.key, json.dumps({"to": r.state})])
        if r.output_bytes:
            rel = item.output_name
            data = (r.name.encode() * r.output_bytes)[: r.output_bytes]
            (out_dir / rel).parent.mkdir(parents=True, exist_ok=True)
            (out_dir / rel).write_bytes(data)
            db.execute("INSERT INTO outputs (key, path, sha256, bytes, width, height, media_type) VALUES"
                       " (?, ?, ?, ?, 1024, 768, 'image/jpeg')",
                       [item.key, rel, hashlib.sha256(data).hexdigest(), len(data)])
    db.close()
    return keys


@pytest.fixture
def state(tmp_path) -> tuple[Path, dict[str, str]]:
    path = tmp_path / "m.pixbatch.duckdb"
    keys = build_state(path, tmp_path / "out")
    return path, keys


# -- spend -------------------------------------------------------------------------------


def test_spend_totals_by_hand(state):
    path, _ = state
    t = build_report(path).spend.totals
    assert t.items == 16
    # est high: recolor 8 x 10000 + hires 10000+5000+3 x 10000 + thumbs 3 x 5000
    assert t.est_high_micros == 80000 + 45000 + 15000 == 140000
    assert t.est_low_micros == 80000 + 5 * 5000 + 15000 == 120000
    # r1 r2 r3(FAILED, charged) h1 h2 t1; t3 finished without a recorded charge
    assert t.charged_micros == 10000 * 5 + 5000 == 55000
    assert t.charged_items == 6
    assert (t.not_charged_items, t.not_charged_est_micros) == (3, 30000)  # r4 r5 ERROR, r6 FAILED_VALIDATION
    assert (t.at_risk_items, t.at_risk_micros) == (1, 10000)  # r7
    assert (t.in_flight_items, t.reserved_micros) == (2, 15000)  # r8 SUBMITTED, t2 SUBMITTING
    assert (t.unspent_items, t.unspent_est_micros) == (3, 30000)  # h3 h4 BLOCKED, h5 PENDING
    assert t.unsettled_items == 1  # t3
    assert t.budget_micros == 1_000_000


def test_the_difference_is_explained_to_the_micro(state):
    path, _ = state
    spend = build_report(path).spend
    v = {x.cause: x for x in spend.variance}
    assert {c: (x.items, x.delta_micros) for c, x in v.items()} == {
        "as_estimated": (3, 0),  # r1 r2 t1
        "range_resolved": (1, 0),  # h1: 5000..10000, charged 10000
        "tier_changed": (1, +5000),  # h2: estimated 5000, real output size cost 10000
        "failed_charged": (1, 0),  # r3
        "error_not_charged": (2, -20000),  # r4 r5
        "rejected_not_charged": (1, -10000),  # r6
        "blocked_not_spent": (2, -20000),  # h3 h4
        "pending_not_spent": (1, -10000),  # h5
        "in_flight": (2, -15000),  # r8 t2
        "ambiguous_at_risk": (1, -10000),  # r7
        "unsettled": (1, -5000),  # t3
    }
    assert list(v) == [c for c in CAUSES if c in v]  # shown in a fixed order
    assert spend.totals.est_high_micros + sum(x.delta_micros for x in spend.variance) == spend.totals.charged_micros
    assert v["range_resolved"].est_low_micros == 5000


def test_spend_lines_per_step_operation_and_tier(state):
    path, _ = state
    spend = build_report(path).spend
    lines = {(ln.step, ln.op, ln.tier): ln for ln in spend.lines}
    assert list(lines) == [("recolor", "edit", EDIT), ("hires", "upscale", UP_HIGH),
                           ("hires", "upscale", UP_LOW), ("thumbs", "upscale", UP_LOW)]
    hi = lines["hires", "upscale", UP_HIGH]
    assert (hi.items, hi.est_low_micros, hi.est_high_micros, hi.charged_micros) == (2, 10000, 15000, 20000)
    lo = lines["hires", "upscale", UP_LOW]
    assert (lo.items, lo.charged_micros, lo.unspent_items, lo.unspent_est_micros) == (3, 0, 3, 30000)
    rc = lines["recolor", "edit", EDIT]
    assert (rc.charged_micros, rc.not_charged_items, rc.at_risk_micros, rc.reserved_micros) == (30000, 3, 10000, 10000)
    assert [(s.step, s.items, s.est_high_micros, s.charged_micros) for s in spend.steps] == [
        ("recolor", 8, 80000, 30000), ("hires", 5, 45000, 20000), ("thumbs", 3, 15000, 5000)]


# -- status ------------------------------------------------------------------------------


def test_status_counts_failures_and_blocked(state):
    path, keys = state
    st = build_report(path).status
    assert st.steps == ("recolor", "hires", "thumbs")
    assert st.count() == 16
    assert st.count("recolor") == 8 and st.count("recolor", "ERROR") == 2
    assert st.count(state="COMPLETED") == 6  # r1 r2 h1 h2 t1 t3
    assert dict(st.by_state) == {"PENDING": 1, "SUBMITTING": 1, "SUBMITTED": 1, "COMPLETED": 6, "FAILED": 1,
                                 "ERROR": 2, "FAILED_VALIDATION": 1, "AMBIGUOUS": 1, "BLOCKED": 2}
    assert [(g.state, g.message, g.count) for g in st.failures] == [
        ("ERROR", "upstream timeout", 2),
        ("AMBIGUOUS", "connection reset after the request was sent", 1),
        ("FAILED", "content policy violation", 1),
        ("FAILED_VALIDATION", "400: 'images[0]' is not an image", 1),
    ]
    assert [(e.key, e.input_id) for e in st.failures[0].examples] == [(keys["r4"], "d"), (keys["r5"], "e")]
    # a BLOCKED item is grouped by what its upstream item did, and its example names that item
    assert sorted((g.message, g.count, g.examples[0].key, g.examples[0].upstream) for g in st.blocked) == [
        ("upstream recolor ended ERROR: upstream timeout", 1, keys["h4"], "recolor/d.jpg"),
        ("upstream recolor ended FAILED: content policy violation", 1, keys["h3"], "recolor/c.jpg"),
    ]


def test_failure_groups_are_limited_with_a_note(state):
    path, _ = state
    r = build_report(path, issue_limit=2, examples=1)
    assert len(r.status.failures) == 2 and r.status.more_failure_groups == 2
    assert all(len(g.examples) == 1 for g in r.status.failures)
    assert any("2 more failure message(s)" in n for n in r.notes)


# -- timing ------------------------------------------------------------------------------


def test_queue_and_processing_percentiles(state):
    path, _ = state
    timing = build_report(path).timing
    by = {s.step: s for s in timing.steps}
    rc = by["recolor"]
    # queue (started - submitted): r1 2s, r2 4s, r3 2s, r4 0s -> sorted 0, 2, 2, 4 (s)
    # p50 = 2000 ms; p95 = x[2] + 0.85 * (x[3] - x[2]) = 2000 + 0.85 * 2000 = 3700 ms
    assert (rc.queue_n, rc.queue_p50_ms, rc.queue_p95_ms) == (4, 2000, 3700)
    # processing (finished - started): 8, 12, 2, 30 s -> 2, 8, 12, 30; p50 = 10 s; p95 = 12 + 0.85 * 18 = 27.3 s
    assert (rc.processing_n, rc.processing_p50_ms, rc.processing_p95_ms) == (4, 10000, 27300)
    assert rc.finished == 5  # r5 finished without a start
    hi = by["hires"]
    assert (hi.queue_p50_ms, hi.processing_p50_ms, hi.processing_p95_ms) == (1000, 7500, 7950)
    assert by["(all)"].finished == 9


def test_throughput_buckets(state):
    path, _ = state
    timing = build_report(path).timing
    # terminal items finished between T0+3s and T0+32s: a 29 s span -> 1 s buckets, gaps filled
    assert timing.bucket_seconds == 1
    assert timing.first_finished_at == at(3) and timing.last_finished_at == at(32)
    assert len(timing.buckets) == 30
    done = {b.start: b.completed for b in timing.buckets if b.completed}
    assert done == {at(3): 1, at(4): 1, at(10): 1, at(16): 1, at(20): 1, at(25): 1}
    assert sum(b.failed for b in timing.buckets) == 3  # r3 FAILED, r4 r5 ERROR


# -- outputs -----------------------------------------------------------------------------


def test_outputs_listing_is_limited_but_counted(state, tmp_path):
    path, keys = state
    r = build_report(path, outputs_limit=2)
    assert (r.outputs.count, r.outputs.total_bytes) == (6, 1000 + 2000 + 3000 + 4000 + 500 + 600)
    assert len(r.outputs.files) == 2 and r.outputs.truncated
    full = build_report(path, outputs_limit=None).outputs
    assert not full.truncated and len(full.files) == 6
    assert full.output_dir == str(tmp_path / "out")
    for f in full.files:  # every listed file is where the report says, with that checksum and size
        data = (Path(full.output_dir) / f.path).read_bytes()
        assert (hashlib.sha256(data).hexdigest(), len(data)) == (f.sha256, f.bytes)
    assert {f.key for f in full.files} == {keys[n] for n in ("r1", "r2", "h1", "h2", "t1", "t3")}


# -- scope, interrupted runs, errors -----------------------------------------------------


def test_interrupted_run_says_to_reconcile(state):
    path, _ = state
    r = build_report(path)
    # no process holds the file, so the run that recorded no end was killed: it says so, here and everywhere
    assert r.run.run_id == "run-2" and r.run.outcome == "killed" and r.runs == 2
    assert r.run.charged_micros is None  # its events recorded no settlement
    assert any("was killed" in n and "pixbatch reconcile" in n and "$0.015" in n for n in r.notes)
    assert any("AMBIGUOUS" in n and "$0.01 at risk" in n for n in r.notes)
    assert any("no recorded charge" in n for n in r.notes)
    assert any(n.startswith("1 item(s) were being sent when the run stopped") for n in r.notes)  # t2


def test_report_for_one_run(state):
    path, keys = state
    r = build_report(path, run_id="run-1")
    assert r.scope_run_id == "run-1" and r.run.outcome == "interrupted"
    assert r.status.count() == 1 and r.spend.totals.charged_micros == 5000
    assert [f.key for f in r.outputs.files] == [keys["t1"]]
    with pytest.raises(StateError, match="run 'nope' is not in .*recent runs: run-2, run-1"):
        build_report(path, run_id="nope")


def test_the_plan_of_pixbatch_estimate_is_shown_next_to_the_state(state):
    from pixbatch.estimate import Estimate, EstimateLine
    from pixbatch.render import render

    path, _ = state
    # the plan, before the hires inputs' sizes were known: all 5 hires items priced as a range
    plan = Estimate(lines=(EstimateLine("recolor", "edit", EDIT, 8, 10000, 10000),
                           EstimateLine("hires", "upscale", f"{UP_LOW} .. {UP_HIGH}", 5, 5000, 10000, "size unknown"),
                           EstimateLine("thumbs", "upscale", UP_LOW, 3, 5000, 5000)),
                    low_micros=80000 + 25000 + 15000, high_micros=80000 + 50000 + 15000, item_count=16)
    s = build_report(path, estimate=plan).spend
    assert (s.planned_low_micros, s.planned_high_micros) == (120000, 145000)
    assert [(x.step, x.planned_low_micros, x.planned_high_micros) for x in s.steps] == [
        ("recolor", 80000, 80000), ("hires", 25000, 50000), ("thumbs", 15000, 15000)]
    md = render(build_report(path, estimate=plan), "md")
    # h2's size became known: the state's upper bound is $0.005 below the plan's
    assert "| sizes learned since the plan (probes, upstream outputs) and items added or reused |  |  |  | -$0.005 |" in md
    assert "planned (high)" in render(build_report(path, estimate=plan), "html")


def test_missing_or_empty_state_files(tmp_path):
    with pytest.raises(StateError, match="does not exist"):
        build_report(tmp_path / "nope.duckdb")
    db = connect(tmp_path / "empty.duckdb")
    db.close()
    r = build_report(tmp_path / "empty.duckdb")
    assert r.spend.totals.items == 0 and r.timing.buckets == () and r.run is None
    assert r.notes == ("No run is recorded in this state file yet.",)


def test_locked_state_file_gives_a_clear_message(state, tmp_path):
    import subprocess
    import sys

    path, _ = state
    holder = subprocess.Popen([sys.executable, "-c",
                               "import duckdb, sys, time; db = duckdb.connect(sys.argv[1]); print('ok', flush=True);"
                               " time.sleep(30)", str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ok"
        with pytest.raises(StateLocked, match="in use by another pixbatch process .*run the report again"):
            build_report(path)
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()
    assert build_report(path).spend.totals.items == 16


def test_while_a_run_holds_the_lock_the_report_reads_its_status_file(state):
    import subprocess
    import sys

    from pixbatch.state import StatusSnapshot, write_status_file

    path, _ = state
    holder = subprocess.Popen([sys.executable, "-c",
                               "import duckdb, sys, time; db = duckdb.connect(sys.argv[1]); print('ok', flush=True);"
                               " time.sleep(30)", str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ok"
        write_status_file(StatusSnapshot(
            state_path=str(path), source="database", running=True, updated_at="2026-05-22T10:00:40Z",
            run_id="run-3", pid=holder.pid, outcome="running",
            steps={"recolor": {"COMPLETED": 5, "SUBMITTED": 2, "AMBIGUOUS": 1}, "hires": {"PENDING": 8}},
            charged_micros=50000, reserved_micros=30000, at_risk_micros=10000, budget_micros=1_000_000,
            estimate_low_micros=120000, estimate_high_micros=160000))
        r = build_report(path)
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()
    assert r.live and r.run.run_id == "run-3"
    t = r.spend.totals
    assert (t.items, t.charged_micros, t.reserved_micros, t.at_risk_micros, t.in_flight_items) == (
        16, 50000, 20000, 10000, 2)
    assert r.status.count("hires", "PENDING") == 8 and set(r.status.steps) == {"recolor", "hires"}
    assert f"PID {holder.pid}" in r.notes[0] and "live totals" in r.notes[0]
    from pixbatch.render import render

    for fmt in ("table", "json", "csv", "md", "html"):
        assert "$0.05" in render(r, fmt) or "50000" in render(r, fmt)
    md = render(r, "md")
    assert "## Status" in md and "## Failures" not in md and "## Outputs" not in md


def test_items_of_other_manifest_versions_are_counted_apart(state):
    path, keys = state
    db = connect(path)
    db.execute("UPDATE runs SET options = json_object('scope', 'v2')")
    db.execute("UPDATE items SET scope = CASE WHEN step = 'thumbs' THEN 'v1' ELSE 'v2' END")
    st.abandon(db, [keys["r7"]], "run-3")
    db.close()
    r = build_report(path)
    assert r.scope == "v2" and r.status.steps == ("recolor", "hires")
    assert (r.excluded_items, r.excluded_charged_micros) == (3, 5000)  # t1..t3; only t1 was charged
    assert r.spend.totals.charged_micros == 50000
    assert (r.spend.totals.abandoned_attempts, r.spend.totals.abandoned_micros) == (1, 10000)
    assert any("3 item(s) of other versions" in n and "$0.005" in n for n in r.notes)
    assert any("resent" in n for n in r.notes)
    everything = build_report(path, all_items=True)
    assert everything.scope is None and everything.spend.totals.charged_micros == 55000


def test_tiers_follow_the_charge_and_messages_group_without_ids(state):
    path, keys = state
    db = connect(path)
    # the runner records the tier it reserved (the top of a range); the charge says what was paid
    db.execute("UPDATE items SET tier = 'upscale <=4MP .. upscale 4-8MP', charged_micros = 5000, "
               "est_low_micros = 5000, est_high_micros = 10000 WHERE key = ?", [keys["h1"]])
    db.execute("UPDATE items SET error = 'cannot identify image file <_io.BytesIO object at 0x7f' || "
               "right(key, 6) || '>' WHERE state = 'ERROR'")
    db.execute("UPDATE items SET error = 'request ' || key || ' violates the policy' WHERE state = 'FAILED'")
    db.close()
    r = build_report(path)
    hires = {ln.tier: (ln.items, ln.charged_micros) for ln in r.spend.lines if ln.step == "hires"}
    assert hires == {UP_LOW: (4, 5000), UP_HIGH: (1, 10000)}
    (err,) = [g for g in r.status.failures if g.state == "ERROR"]
    assert (err.message, err.count) == ("cannot identify image file <_io.BytesIO object at …>", 2)
    # a blocked item's group is its upstream's error, without the ids in it
    assert ("upstream recolor ended FAILED: request … violates the policy", 1) in [
        (g.message, g.count) for g in r.status.blocked]
