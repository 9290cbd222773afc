"""Item states and the status snapshot, alone (no run, no gateway)."""

from __future__ import annotations

import json

import duckdb

from pixbatch import state as st
from pixbatch.state import ItemState
from pixbatch.state.connection import connect


def test_item_states_are_the_strings_stored_in_the_file():
    assert [s.value for s in ItemState] == ["PENDING", "SUBMITTING", "SUBMITTED", "COMPLETED", "FAILED", "ERROR",
                                            "AMBIGUOUS", "FAILED_VALIDATION", "BAD_INPUT", "BLOCKED"]
    assert ItemState.PENDING == "PENDING" and {"PENDING": 1}[ItemState.PENDING] == 1
    assert f"{ItemState.AMBIGUOUS}" == "AMBIGUOUS" and json.dumps({ItemState.ERROR: ItemState.ERROR}) == \
        '{"ERROR": "ERROR"}'
    # the names callers used before the enum still work
    assert st.ITEM_STATES == tuple(ItemState) and st.PENDING is ItemState.PENDING
    assert st.BLOCKING_STATES is st.BLOCKING and st.TERMINAL_STATES is st.TERMINAL
    assert st.IN_FLIGHT_STATES is st.IN_FLIGHT


def test_the_state_sets_partition_the_lifecycle():
    assert st.BLOCKING == {"FAILED", "ERROR", "FAILED_VALIDATION", "BAD_INPUT", "BLOCKED", "AMBIGUOUS"}
    assert st.TERMINAL == {"COMPLETED", "FAILED", "ERROR", "FAILED_VALIDATION", "BAD_INPUT", "BLOCKED"}
    assert st.IN_FLIGHT == {"SUBMITTING", "SUBMITTED"}
    assert st.FAILURES == {"FAILED", "ERROR", "FAILED_VALIDATION", "BAD_INPUT", "AMBIGUOUS"}
    assert st.REMAINING == {"PENDING", "SUBMITTING", "SUBMITTED"}
    # every state is exactly one of: not sent, in flight, at risk, settled
    parts = [{ItemState.PENDING}, st.IN_FLIGHT, {ItemState.AMBIGUOUS}, st.TERMINAL]
    assert sorted(s for p in parts for s in p) == sorted(ItemState)
    assert st.sql_in(st.IN_FLIGHT) == "('SUBMITTED', 'SUBMITTING')"


def test_states_round_trip_through_duckdb():
    db = duckdb.connect()
    db.execute("CREATE TABLE t (state VARCHAR)")
    db.execute("INSERT INTO t SELECT unnest(?)", [[ItemState.SUBMITTED, "PENDING"]])
    got = [r[0] for r in db.execute("SELECT state FROM t ORDER BY 1").fetchall()]
    assert got == [ItemState.PENDING, ItemState.SUBMITTED] and all(type(s) is str for s in got)
    assert db.execute(f"SELECT count(*) FROM t WHERE state IN {st.sql_in(st.REMAINING)}").fetchone()[0] == 2


def test_item_row_snapshot_and_sizes():
    row = st.ItemRow("k", "e", "edit", 0, '{"prompt": "p"}', "e/0.jpg", None, 640, None, 5_000, 10_000)
    assert row.state == ItemState.PENDING and row.input_size is None and row.body_dict == {"prompt": "p"}
    row.input_height, row.state = 480, ItemState.SUBMITTING
    snap = row.snapshot()
    assert row.input_size == (640, 480) and snap[:3] == ("k", None, "SUBMITTING")
    assert len(snap) == 2 + len(st.MUTABLE_COLUMNS)


def test_totals_commit_what_may_still_be_charged():
    t = st.Totals(charged_micros=30, reserved_micros=20, abandoned_micros=5, at_risk_micros=10)
    assert t.committed_micros == 55


def test_snapshot_totals_and_json_round_trip(tmp_path):
    snap = st.StatusSnapshot(state_path=str(tmp_path / "s.duckdb"), source="runner", running=True,
                             updated_at="2026-01-01T00:00:00Z", steps={"e": {"COMPLETED": 3, "AMBIGUOUS": 1},
                                                                       "u": {"PENDING": 4}})
    totals = snap.totals()
    assert list(totals) == [s.value for s in ItemState] and all(type(k) is str for k in totals)
    assert (totals["COMPLETED"], totals["PENDING"], totals["FAILED"], snap.ambiguous) == (3, 4, 0, 1)
    data = json.loads(snap.to_json())
    assert data["version"] == 1
    assert st.StatusSnapshot.from_dict({**data, "from_a_newer_version": True}) == snap
    path = st.write_status_file(snap)
    assert path == st.status_file_path(snap.state_path) == tmp_path / "s.duckdb.status.json"
    assert json.loads(path.read_text("utf-8")) == data
    assert [p.name for p in tmp_path.iterdir()] == ["s.duckdb.status.json"]  # no temp file left behind


def test_snapshot_of_a_file_before_its_first_run(tmp_path):
    path = tmp_path / "s.duckdb"
    blank = duckdb.connect(str(path))  # not even migrated
    snap = st.snapshot_from_db(blank, str(path))
    blank.close()
    assert (snap.source, snap.running, snap.run_id, snap.steps) == ("database", False, None, {})
    db = connect(path)
    db.execute("INSERT INTO items (key, step, op, idx, body, est_low_micros, est_high_micros, scope) "
               "VALUES ('a', 'e', 'edit', 0, '{}', 1, 2, 'old'), ('b', 'e', 'edit', 1, '{}', 1, 2, 'new')")
    assert st.snapshot_from_db(db, str(path)).steps == {"e": {"PENDING": 2}}  # no run yet: every item
    st.start_run(db, st.RunStart("r1", "m.yaml", None, None, 5_000_000, 42, {"scope": "new"}))
    snap = st.snapshot_from_db(db, str(path))
    db.close()
    assert snap.steps == {"e": {"PENDING": 1}}  # the last run's expansion only
    assert (snap.run_id, snap.pid, snap.outcome, snap.budget_micros) == ("r1", 42, "running", 5_000_000)
