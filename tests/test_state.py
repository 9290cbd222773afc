"""The DuckDB store: group commits, ingest, crash recovery, blocking, status while locked."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import duckdb
import pytest

from pixbatch import state as st
from pixbatch.errors import StateLocked
from pixbatch.items import WorkItem, upstream_ref
from pixbatch.pricing import PriceTable
from pixbatch.state.connection import connect
from pixbatch.state.migrations import MIGRATIONS, applied, migrate


def edit(i: int, n_images: int = 1000) -> WorkItem:
    return WorkItem.build(step="e", op="edit", body={"prompt": "p", "images": [f"https://x.test/{i % n_images}.png"]},
                          input_id=f"i{i}", output_name=f"e/{i}.jpg", index=i)


def chain(n: int = 6) -> list[WorkItem]:
    ups = [edit(i) for i in range(n)]
    downs = [WorkItem.build(step="u", op="upscale", body={"image": upstream_ref(u.key)}, input_id=u.input_id,
                            output_name=f"u/{i}.jpg", upstream=u.key, index=i) for i, u in enumerate(ups)]
    twice = [WorkItem.build(step="v", op="upscale", body={"image": upstream_ref(d.key), "target": 8},
                            input_id=d.input_id, output_name=f"v/{i}.jpg", upstream=d.key, index=i)
             for i, d in enumerate(downs)]
    return ups + downs + twice


def open_ingested(path, items):
    store = st.Store.open(path)
    scope, _ = st.expansion_scope(items)
    store.call_sync(lambda db: st.ingest(db, items, scope, PriceTable.load(), ["e", "u", "v"]))
    return store, scope


def test_migrations_are_applied_and_m004_moves_the_attempts_of_an_older_file_into_the_log(tmp_path):
    path = tmp_path / "s.duckdb"
    old = duckdb.connect(str(path))  # a state file written before m004
    migrate(old, MIGRATIONS[:3])
    old.execute("INSERT INTO attempts VALUES ('k1', 1, 'run0', TIMESTAMP '2026-01-01 00:00:00', 10000, 'p-image_1', "
                "TIMESTAMP '2026-01-01 00:00:01', 202, 'accepted')")
    old.close()
    db = connect(path)
    assert applied(db)[2:5] == ["m003_item_scope_attempts", "m004_submit_log", "m005_object_storage"]
    cols = {r[0] for r in db.execute("SELECT column_name FROM information_schema.columns WHERE table_name='items'")
            .fetchall()}
    assert {"scope", "attempts", "polling_path"} <= cols
    assert db.execute("SELECT key, n, request_id, outcome FROM attempts").fetchall() == [
        ("k1", 1, "p-image_1", "accepted")]
    assert db.execute("SELECT event, request_id FROM submit_log ORDER BY ts").fetchall() == [
        ("intent", None), ("accepted", "p-image_1")]  # the old row, as log rows
    # no DuckDB progress bar on stdout (it would corrupt --json output), read-write or read-only
    db.close()
    for ro in (False, True):
        db = connect(path, read_only=ro)
        assert db.execute("SELECT current_setting('enable_progress_bar')").fetchone()[0] is False
        db.close()


def test_ingest_dedups_into_aliases_prices_and_is_idempotent(tmp_path):
    items = [edit(i, n_images=5) for i in range(12)]  # 5 unique requests, 7 repeats
    store, scope = open_ingested(tmp_path / "s.duckdb", items)
    with store:
        r = store.call_sync(lambda db: st.ingest(db, items, scope, PriceTable.load(), ["e"]))
        assert (r.items, r.new, r.aliases) == (5, 0, 7)
        rows = store.call_sync(lambda db: db.execute(
            "SELECT count(*), sum(est_high_micros), min(state) FROM items WHERE scope = ?", [scope]).fetchone())
        assert rows == (5, 50_000, "PENDING")


def test_queued_writes_group_commit_and_critical_writes_are_awaited(tmp_path):
    items = [edit(i) for i in range(300)]
    store, scope = open_ingested(tmp_path / "s.duckdb", items)

    async def go():
        rows = await store.call(lambda db: st.select_rows(db, "i.scope = ?", [scope]))
        for r in rows:
            r.state, r.reserved_micros = st.SUBMITTING, 10_000
            store.put_item(r)
            store.put_event("run1", r.key, "state", {"state": r.state})
        last = rows[-1]
        last.state, last.request_id = st.SUBMITTED, "p-image_1"
        await asyncio.wrap_future(store.put_item(last, wait=True))  # durable once this returns
        return await store.call(st.totals)

    with store:
        commits_before = store.commits
        t = asyncio.run(go())
        assert t.reserved_micros == 300 * 10_000 and t.committed_micros == 3_000_000
        assert store.commits - commits_before < 300  # grouped, not one commit per write
        ev = store.call_sync(lambda db: db.execute("SELECT count(*) FROM events WHERE run_id='run1'").fetchone()[0])
        assert ev == 300


_CRASHING_WRITER = """
import asyncio, os, sys
from pixbatch import state as st
store = st.Store.open(sys.argv[1], bulk_interval=3600)  # item snapshots stay in memory
rows = store.call_sync(lambda db: st.select_rows(db, "true", [], order="idx"))
outcomes = [None, ("accepted", 202), ("rejected", 400), ("rejected", 402), ("ambiguous", 502)]
for row, outcome in zip(rows, outcomes):
    row.attempts, row.state, row.reserved_micros, row.run_id = 1, st.SUBMITTING, 10_000, "run1"
    intent = st.Intent(row.key, 1, "run1", st.utcnow(), 10_000)
    store.put_item(row, wait=True, intent=intent).result()  # (1) durable before the POST
    if outcome:
        kind, code = outcome
        row.state = {"accepted": st.SUBMITTED, "ambiguous": st.AMBIGUOUS}.get(kind, st.PENDING)
        row.request_id = "p-image_" + row.key[:8] if kind == "accepted" else None
        store.put_item(row, wait=True, attempt=st.Attempt.of(
            intent, kind, http_status=code, request_id=row.request_id, accepted_at=st.utcnow(),
            polling_path="/v2/requests/status/" + (row.request_id or ""))).result()  # (2) durable on the answer
print("logged", flush=True)
os._exit(0)  # the crash: nothing else is flushed
"""


def test_a_crash_loses_no_submit_the_log_rebuilds_every_in_flight_item(tmp_path):
    path = tmp_path / "s.duckdb"
    store, scope = open_ingested(path, [edit(i) for i in range(6)])
    with store:
        store.call_sync(lambda db: db.execute("INSERT INTO runs (run_id, outcome) VALUES ('run1', 'running')"))
        keys = [r.key for r in store.call_sync(lambda db: st.select_rows(db, "true", [], order="idx"))]
    out = subprocess.run([sys.executable, "-c", _CRASHING_WRITER, str(path)], capture_output=True, text=True)
    assert out.stdout.strip() == "logged", out.stderr
    store = st.Store.open(path)
    with store:
        # nothing but the log rows reached the file
        assert store.call_sync(lambda db: db.execute("SELECT count(*) FROM items WHERE state <> 'PENDING'")
                               .fetchone()[0]) == 0
        assert store.call_sync(lambda db: st.recover(db, "run2")) == 2
        got = {k: v for k, *v in store.call_sync(lambda db: db.execute(
            "SELECT key, state, request_id, reserved_micros, attempts FROM items").fetchall())}
        assert got[keys[0]] == ["AMBIGUOUS", None, 10_000, 1]  # no answer recorded: may have been charged
        assert got[keys[1]] == ["SUBMITTED", "p-image_" + keys[1][:8], 10_000, 1]  # polled, never resent
        assert got[keys[2]] == ["FAILED_VALIDATION", None, 0, 1]
        assert got[keys[3]] == ["PENDING", None, 0, 1]  # 402: sent again after a top-up
        assert got[keys[4]] == ["AMBIGUOUS", None, 10_000, 1]
        assert got[keys[5]] == ["PENDING", None, 0, 0]  # never started
        t = store.call_sync(st.totals)
        assert t.at_risk_micros == 20_000 and t.committed_micros == 30_000
        attempts = store.call_sync(lambda db: db.execute("SELECT key, outcome FROM attempts ORDER BY key").fetchall())
        assert sorted(attempts) == sorted([(keys[0], "ambiguous"), (keys[1], "accepted"), (keys[2], "rejected"),
                                           (keys[3], "rejected"), (keys[4], "ambiguous")])  # one row per attempt
        assert store.call_sync(lambda db: db.execute("SELECT polling_path FROM items WHERE key = ?", [keys[1]])
                               .fetchone()[0]) == "/v2/requests/status/p-image_" + keys[1][:8]
        assert store.call_sync(lambda db: st.recover(db, "run3")) == 0  # recovering again changes nothing
        assert store.call_sync(lambda db: db.execute("SELECT count(*) FROM attempts").fetchone()[0]) == 5
        run1 = store.call_sync(lambda db: db.execute(
            "SELECT outcome, finished_at = (SELECT max(ts) FROM submit_log) FROM runs").fetchall())
        assert run1 == [("killed", True)]  # ended at its last trace


def test_status_and_report_on_the_file_of_a_killed_run_see_what_the_log_says(tmp_path):
    from pixbatch.report import build_report

    path = tmp_path / "s.duckdb"
    store, _scope = open_ingested(path, [edit(i) for i in range(6)])
    with store:
        store.call_sync(lambda db: db.execute("INSERT INTO runs (run_id, outcome) VALUES ('run1', 'running')"))
    out = subprocess.run([sys.executable, "-c", _CRASHING_WRITER, str(path)], capture_output=True, text=True)
    assert out.stdout.strip() == "logged", out.stderr
    snap = st.read_status(path)  # no run holds the file: what the killed run's log knows is applied first
    assert {k: v for k, v in snap.totals().items() if v} == {
        "PENDING": 2, "SUBMITTING": 1, "SUBMITTED": 1, "AMBIGUOUS": 1, "FAILED_VALIDATION": 1}
    r = build_report(path)
    states = {c.state: c.count for c in r.status.counts}
    # the intent without an answer stays SUBMITTING (reserved): calling it AMBIGUOUS is the next run's call
    assert states == {"PENDING": 2, "SUBMITTING": 1, "SUBMITTED": 1, "AMBIGUOUS": 1, "FAILED_VALIDATION": 1}
    t = r.spend.totals
    assert (t.at_risk_micros, t.in_flight_items, t.reserved_micros) == (10_000, 2, 20_000)
    store = st.Store.open(path)
    with store:
        assert store.call_sync(lambda db: st.recover(db, "run2")) == 1  # the next run decides


def test_recover_reads_state_files_from_before_the_submit_log(tmp_path):
    items = [edit(i) for i in range(3)]
    store, scope = open_ingested(tmp_path / "s.duckdb", items)
    with store:  # what an older pixbatch left: SUBMITTING items (no intents rows)
        rows = store.call_sync(lambda db: st.select_rows(db, "i.scope = ?", [scope]))
        a, b, _ = rows
        for r, rid in ((a, None), (b, "p-image_b")):
            r.state, r.reserved_micros, r.request_id = st.SUBMITTING, 10_000, rid
            store.put_item(r)
        store.commit_sync()
    store = st.Store.open(tmp_path / "s.duckdb")
    with store:
        assert store.call_sync(lambda db: st.recover(db, "run2")) == 1
        states = dict(store.call_sync(lambda db: db.execute("SELECT key, state FROM items").fetchall()))
        assert states[a.key] == st.AMBIGUOUS and states[b.key] == st.SUBMITTED
        t = store.call_sync(st.totals)
        assert t.at_risk_micros == 10_000 and t.committed_micros == 20_000


def test_failed_upstream_blocks_downstream_transitively(tmp_path):
    items = chain(3)
    store, scope = open_ingested(tmp_path / "s.duckdb", items)
    with store:
        first = store.call_sync(lambda db: st.select_rows(db, "i.step = 'e' AND i.idx = 0", []))[0]
        first.state = st.FAILED
        store.put_item(first)
        assert store.call_sync(lambda db: st.block_downstream(db, scope, "r")) == 2
        counts = store.call_sync(lambda db: st.counts_by_step(db, scope))
        assert counts == {"e": {"FAILED": 1, "PENDING": 2}, "u": {"BLOCKED": 1, "PENDING": 2},
                          "v": {"BLOCKED": 1, "PENDING": 2}}
        # only items whose upstream completed are ready
        first2 = store.call_sync(lambda db: st.select_rows(db, "i.step = 'e' AND i.idx = 1", []))[0]
        first2.state, first2.media_url = st.COMPLETED, "https://cdn.test/1.jpg"
        store.put_item(first2)
        ready = store.call_sync(lambda db: st.ready_page(db, scope, "u", -1, 10))
        assert [(r.idx, up.media_url) for r, up in ready] == [(1, "https://cdn.test/1.jpg")]


def test_status_reads_the_status_file_while_another_process_holds_the_lock(tmp_path):
    path = tmp_path / "s.duckdb"
    store, scope = open_ingested(path, [edit(i) for i in range(4)])
    store.close()
    snap = st.read_status(path)
    assert snap.source == "database" and snap.totals()["PENDING"] == 4
    st.write_status_file(st.StatusSnapshot(state_path=str(path), source="runner", running=True,
                                           updated_at="2026-01-01T00:00:00Z", steps={"e": {"SUBMITTED": 4}}))
    holder = subprocess.Popen([sys.executable, "-c", (
        "import duckdb, sys, time; db = duckdb.connect(sys.argv[1]); print('locked', flush=True); time.sleep(30)"),
        str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(StateLocked, match="in use"):
            st.Store.open(path)
        snap = st.read_status(path)
        assert snap.source == "status-file" and snap.running and snap.steps == {"e": {"SUBMITTED": 4}}
        assert json.loads(snap.to_json())["version"] == 1
    finally:
        holder.kill()
        holder.communicate()


def test_opening_for_a_run_waits_out_a_reader_that_holds_the_file_for_a_moment(tmp_path):
    import time

    path = tmp_path / "s.duckdb"
    open_ingested(path, [edit(0)])[0].close()
    reader = subprocess.Popen([sys.executable, "-c", (
        "import duckdb, sys, time; db = duckdb.connect(sys.argv[1], read_only=True); print('reading', flush=True); "
        "time.sleep(0.8)"), str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert reader.stdout.readline().strip() == "reading"
        t0 = time.monotonic()
        with pytest.raises(StateLocked):
            st.Store.open(path, wait=0.2)  # not long enough
        st.Store.open(path, wait=5).close()  # the reader let go: the run goes on
        assert time.monotonic() - t0 < 5
    finally:
        reader.kill()
        reader.communicate()


def test_concurrent_transitions_are_group_committed(tmp_path):
    """Many tasks changing items at once share transactions (speed is bench/state.py's job)."""
    import asyncio

    store, scope = open_ingested(tmp_path / "s.duckdb", [edit(i) for i in range(400)])
    with store:
        rows = store.call_sync(lambda db: st.select_rows(db, "i.scope = ?", [scope]))
        before = store.commits

        async def worker(part):
            for j, r in enumerate(part):
                r.state, r.polls = st.SUBMITTED, r.polls + 1
                store.put_event("t", r.key, "state", {"state": r.state})
                fut = store.put_item(r, wait=(j % 3 == 0))
                if fut is not None:
                    await asyncio.wrap_future(fut)

        async def main():
            await asyncio.gather(*(worker(rows[k::40]) for k in range(40)))
            await store.commit()

        asyncio.run(main())
        transitions = len(rows)
        assert 0 < store.commits - before < transitions / 4, (store.commits - before, transitions)
        got = store.call_sync(lambda db: db.execute(
            "SELECT state, polls, count(*) FROM items WHERE scope = ? GROUP BY ALL", [scope]).fetchall())
        assert got == [("SUBMITTED", 1, 400)]
        events = store.call_sync(lambda db: db.execute("SELECT count(*) FROM events WHERE run_id = 't'").fetchone()[0])
        assert events == 400


def test_item_updates_join_on_rowid_but_fall_back_to_the_key(tmp_path):
    store, scope = open_ingested(tmp_path / "s.duckdb", [edit(i) for i in range(5)])
    with store:
        rows = store.call_sync(lambda db: st.select_rows(db, "i.scope = ?", [scope]))
        assert all(r.rowid is not None for r in rows)
        rows[0].rowid, rows[1].rowid = rows[1].rowid, None  # a stale and a missing row id
        for r in rows:
            r.state, r.polls = st.SUBMITTED, 2
            store.put_item(r)
        store.commit_sync()
        got = store.call_sync(lambda db: db.execute("SELECT state, polls, count(*) FROM items GROUP BY ALL")
                              .fetchall())
        assert got == [("SUBMITTED", 2, 5)]


def test_a_caller_that_gives_up_does_not_kill_the_writer(tmp_path):
    """Cancelling a task that awaits a write (Ctrl-C, end of run) must not stop the writer thread."""
    import threading

    store, scope = open_ingested(tmp_path / "s.duckdb", [edit(i) for i in range(50)])
    gate = threading.Event()

    async def go():
        store.put_sql("SELECT 1")  # keep the writer busy until the callers below have given up
        blocker = asyncio.ensure_future(store.call(lambda db: gate.wait(5)))
        waiting = [asyncio.ensure_future(store.call(lambda db: db.execute("SELECT count(*) FROM items").fetchone()))
                   for _ in range(5)]
        await asyncio.sleep(0.05)
        for t in waiting:
            t.cancel()
        gate.set()
        await blocker
        await store.commit()  # hung forever when the writer died on a cancelled future
        return await store.call(lambda db: db.execute("SELECT count(*) FROM items").fetchone()[0])

    with store:
        assert asyncio.run(asyncio.wait_for(go(), 10)) == 50
