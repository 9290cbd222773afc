"""The named queries and run bookkeeping of ``pixbatch.state``, each on a real DuckDB file."""

from __future__ import annotations

import json
from datetime import datetime, timedelta

import pytest

from pixbatch import state as st
from pixbatch.state import queries as q
from pixbatch.state import runs
from pixbatch.state.connection import connect
from pixbatch.state.writes import upsert_output

T0 = datetime(2026, 1, 1, 12, 0, 0)


@pytest.fixture
def db(tmp_path):
    conn = connect(tmp_path / "s.duckdb")
    yield conn
    conn.close()


def add(db, key: str, *, step: str = "e", idx: int = 0, state: str = "PENDING", scope: str = "s1",
        low: int = 5_000, high: int = 10_000, **cols) -> None:
    """One items row, the way ingest and a run leave it."""
    names = ["key", "step", "op", "idx", "body", "est_low_micros", "est_high_micros", "state", "scope", "attempts",
             *cols]
    values = [key, step, "edit", idx, "{}", low, high, state, scope, 0, *cols.values()]
    db.execute(f"INSERT INTO items ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})", values)


def test_last_run_is_the_latest_started_with_what_its_options_recorded(db):
    assert q.last_run(db) is None
    runs.start_run(db, st.RunStart("r1", "m.yaml", "abc", "http://gw", 1_000_000, 11,
                                   {"scope": "s-old", "fingerprint": "f-old"}))
    db.execute("UPDATE runs SET started_at = ? WHERE run_id = 'r1'", [T0])
    runs.start_run(db, st.RunStart("r2", "m.yaml", "abc", "http://gw", None, 12, {"scope": "s1", "fingerprint": "f1",
                                                                                  "concurrency": 8}))
    last = q.last_run(db)
    assert last == q.LastRun(run_id="r2", pid=12, outcome="running", manifest_path="m.yaml", budget_micros=None,
                             estimate_low_micros=None, estimate_high_micros=None, scope="s1", fingerprint="f1")
    runs.record_estimate(db, "r2", 50_000, 90_000)
    runs.finish_run(db, "r2", "completed")
    last = q.last_run(db)
    assert (last.outcome, last.estimate_low_micros, last.estimate_high_micros) == ("completed", 50_000, 90_000)
    row = db.execute("SELECT finished_at IS NOT NULL, options, manifest_sha256, base_url FROM runs "
                     "WHERE run_id = 'r2'").fetchone()
    assert row[0] and json.loads(row[1]) == {"scope": "s1", "fingerprint": "f1", "concurrency": 8}
    assert row[2:] == ("abc", "http://gw")
    assert db.execute("SELECT finished_at FROM runs WHERE run_id = 'r1'").fetchone()[0] is None  # not touched


def test_a_run_without_options_has_no_scope(db):
    runs.start_run(db, st.RunStart("r1", None, None, None, None, None))
    assert (q.last_run(db).scope, q.last_run(db).fingerprint) == (None, None)


def test_counts_and_costs_of_a_scope(db):
    add(db, "a", state="PENDING", low=5_000, high=10_000)
    add(db, "b", state="PENDING", low=5_000, high=5_000, idx=1)
    add(db, "c", state="COMPLETED", idx=2)
    add(db, "d", state="SUBMITTED", idx=3, low=7_000)
    add(db, "x", state="PENDING", scope="s-other")
    add(db, "y", state="SUBMITTING", scope="s-other", low=1_000)
    assert q.scope_size(db, "s1") == 4 and q.scope_size(db, "nope") == 0
    assert q.pending_count(db, "s1") == 2
    assert q.pending_cost(db, "s1") == q.Cost(items=2, low_micros=10_000, high_micros=15_000)
    assert q.scope_cost(db, "s1") == q.Cost(items=4, low_micros=22_000, high_micros=35_000)
    assert q.pending_cost(db, "nope") == q.Cost(0, 0, 0)
    assert q.in_flight_low_micros(db) == 8_000  # the whole file: d and y
    assert q.counts_by_step(db, "s1") == {"e": {"COMPLETED": 1, "PENDING": 2, "SUBMITTED": 1}}
    assert q.counts_by_step(db, None)["e"]["PENDING"] == 3


def test_counts_by_step_keeps_the_manifest_order_of_steps(db):
    add(db, "z1", step="zeta", idx=0)
    add(db, "a1", step="alpha", idx=0, state="COMPLETED")
    add(db, "z2", step="zeta", idx=1)
    assert list(q.counts_by_step(db, "s1")) == ["zeta", "alpha"]  # first ingested first, not by name


def test_probed_sizes_and_their_fingerprint(db):
    assert q.probed_sizes(db) == {} and q.probes_fingerprint(db) == "0 0"
    db.execute("INSERT INTO probes (url, width, height) VALUES ('https://x.test/a.png', 640, 480)")
    db.execute("INSERT INTO probes (url, error) VALUES ('https://x.test/gone.png', 'HTTP 404')")
    assert q.probed_sizes(db) == {"https://x.test/a.png": (640, 480)}
    before = q.probes_fingerprint(db)
    # the very digest the resume fingerprint has always hashed (changing it would re-ingest every file once)
    n, digest = db.execute("SELECT count(*), coalesce(sum(hash(url, width, height)::HUGEINT), 0)::VARCHAR "
                           "FROM probes WHERE error IS NULL AND width IS NOT NULL").fetchone()
    assert before == f"{n} {digest}" and before.startswith("1 ")
    db.execute("INSERT INTO probes (url, error) VALUES ('https://x.test/gone2.png', 'timeout')")
    assert q.probes_fingerprint(db) == before  # failures do not count
    db.execute("UPDATE probes SET width = 641 WHERE url = 'https://x.test/a.png'")
    assert q.probes_fingerprint(db) != before


def test_alias_names_by_key_in_step_order(db):
    db.execute("INSERT INTO aliases VALUES ('k1', 'u', 0, 'u/0.jpg'), ('k1', 'e', 3, 'e/3.jpg'), "
               "('k1', 'e', 1, 'e/1.jpg'), ('k2', 'e', 2, 'e/2.jpg'), ('k3', 'old', 0, 'old/0.jpg')")
    assert q.alias_names(db, ["e", "u"]) == {"k1": ["e/1.jpg", "e/3.jpg", "u/0.jpg"], "k2": ["e/2.jpg"]}
    assert q.alias_names(db, []) == {}


def test_submitted_rows_oldest_submit_first(db):
    add(db, "late", state="SUBMITTED", idx=0, submitted_at=T0 + timedelta(seconds=5), request_id="r-late")
    add(db, "early", state="SUBMITTED", idx=1, submitted_at=T0, request_id="r-early", scope="s-other")
    add(db, "p", state="PENDING", idx=2)
    rows = q.submitted_rows(db)
    assert [(r.key, r.request_id, r.state) for r in rows] == [("early", "r-early", "SUBMITTED"),
                                                              ("late", "r-late", "SUBMITTED")]
    assert all(isinstance(r, st.ItemRow) and r.rowid is not None for r in rows)


def test_completed_page_pages_the_downloadable_results_of_a_step(db):
    for i in range(5):
        add(db, f"c{i}", idx=i, state="COMPLETED", media_url=f"https://cdn.test/{i}.jpg")
    add(db, "nomedia", idx=5, state="COMPLETED")
    add(db, "failed", idx=6, state="FAILED", media_url="https://cdn.test/f.jpg")
    add(db, "other-step", step="u", idx=0, state="COMPLETED", media_url="https://cdn.test/u.jpg")
    add(db, "other-scope", idx=7, state="COMPLETED", media_url="https://cdn.test/o.jpg", scope="s2")
    first = q.completed_page(db, "s1", "e", -1, 3)
    assert [r.key for r in first] == ["c0", "c1", "c2"]
    rest = q.completed_page(db, "s1", "e", first[-1].idx, 3)
    assert [r.key for r in rest] == ["c3", "c4"]
    assert q.completed_page(db, "s1", "e", rest[-1].idx, 3) == []


def test_recorded_outputs_of_some_items(db):
    for key, path in (("k1", "e/1.jpg"), ("k1", "e/1-again.jpg"), ("k2", "e/2.jpg")):
        upsert_output(db, st.OutputRow(key, path, "sha-" + path, 10, 1, 1, "image/jpeg"))
    upsert_output(db, st.OutputRow("k1", "e/1.jpg", "sha-new", 11, 1, 1, "image/jpeg"))  # replaced
    assert q.recorded_outputs(db, ["k1"]) == {("k1", "e/1.jpg"): "sha-new", ("k1", "e/1-again.jpg"): "sha-e/1-again.jpg"}
    assert q.recorded_outputs(db, []) == {}


def test_table_names(tmp_path, db):
    import duckdb

    assert {"items", "runs", "submit_log", "attempts", "schema_migrations"} <= q.table_names(db)
    blank = duckdb.connect(str(tmp_path / "blank.duckdb"))
    assert q.table_names(blank) == set()
    blank.close()


def test_open_requests_are_those_with_a_request_id_and_an_unknown_end(db):
    add(db, "sub", idx=0, state="SUBMITTED", request_id="r1", polling_path="/v2/requests/status/r1",
        input_width=100, input_height=80)
    add(db, "done-uncharged", idx=1, state="COMPLETED", request_id="r2")
    add(db, "done-charged", idx=2, state="COMPLETED", request_id="r3", charged_micros=10_000)
    add(db, "amb", idx=3, state="AMBIGUOUS")
    add(db, "amb-unknown", idx=4, state="AMBIGUOUS")
    add(db, "sending", idx=5, state="SUBMITTING")
    add(db, "up", step="u", idx=0, state="SUBMITTED", request_id="r5", upstream="sub")
    db.execute("UPDATE items SET output_width = 200, output_height = 160, media_url = 'https://cdn.test/s.jpg' "
               "WHERE key = 'sub'")
    st.log_attempt(db, st.Attempt("amb", 1, "run1", T0, 10_000, request_id="r4", accepted_at=T0, http_status=202,
                                  outcome="accepted"))
    got = q.open_requests(db)
    assert [(o.key, o.request_id) for o in got] == [("sub", "r1"), ("done-uncharged", "r2"), ("amb", "r4"),
                                                    ("up", "r5")]
    assert got[0].polling_path == "/v2/requests/status/r1" and (got[0].input_width, got[0].input_height) == (100, 80)
    up = got[-1]
    assert (up.upstream_width, up.upstream_height, up.upstream_media_url) == (200, 160, "https://cdn.test/s.jpg")


# -- requeue ----------------------------------------------------------------------------------


def _states(db) -> dict[str, str]:
    return dict(db.execute("SELECT key, state FROM items").fetchall())


@pytest.fixture
def finished(db):
    """A scope with one item in each state after a run (the BLOCKED one waits on the FAILED one), and an
    item of another scope."""
    for i, s in enumerate(st.ItemState):
        add(db, s.lower(), idx=i, state=s, request_id=f"r{i}", media_url=f"https://cdn.test/{i}.jpg",
            error="why" if s in st.BLOCKING else None, reserved_micros=10_000 if s == "AMBIGUOUS" else 0,
            upstream="failed" if s == "BLOCKED" else None)
    add(db, "other", idx=0, state="ERROR", scope="s2")
    st.log_attempt(db, st.Attempt("ambiguous", 1, "run1", T0, 10_000, outcome="ambiguous"))
    return db


def test_requeue_with_no_option_only_checks_bad_inputs_again(finished):
    before = _states(finished)
    assert runs.requeue(finished, "s1", "run2") == runs.Requeued(bad_input=1)
    assert _states(finished) == {**before, "bad_input": "PENDING"}


def test_requeue_force_sends_every_terminal_item_again(finished):
    r = runs.requeue(finished, "s1", "run2", force=True)
    assert r == runs.Requeued(forced=6) and r.total == 6
    s = _states(finished)
    assert {k for k, v in s.items() if v == "PENDING"} == {"pending", "completed", "failed", "error",
                                                           "failed_validation", "bad_input", "blocked"}
    assert (s["submitting"], s["submitted"], s["ambiguous"], s["other"]) == (
        "SUBMITTING", "SUBMITTED", "AMBIGUOUS", "ERROR")  # in flight, at risk, another scope: untouched
    assert finished.execute("SELECT request_id, media_url, error, run_id FROM items WHERE key = 'completed'"
                            ).fetchone() == (None, None, None, "run2")


def test_requeue_force_steps_and_a_selection_touch_only_those_items(finished):
    add(finished, "hires-done", step="u", idx=0, state="COMPLETED")
    add(finished, "hires-done-2", step="u", idx=1, state="COMPLETED")
    assert runs.requeue(finished, "s1", "run2", force=("u",)) == runs.Requeued(forced=2, bad_input=1)
    assert _states(finished)["completed"] == "COMPLETED"
    finished.execute("UPDATE items SET state = 'COMPLETED' WHERE step = 'u'")
    sel = q.Selection((("u", 0),))  # --steps u --limit 1: the first place of step u
    assert runs.requeue(finished, "s1", "run3", force=True, sel=sel) == runs.Requeued(forced=1)
    assert (_states(finished)["hires-done"], _states(finished)["hires-done-2"]) == ("PENDING", "COMPLETED")


def test_requeue_retry_errors_sends_errors_only(finished):
    assert runs.requeue(finished, "s1", "run2", retry_errors=True) == runs.Requeued(errors=1, bad_input=1)
    s = _states(finished)
    assert (s["error"], s["blocked"], s["failed"], s["other"]) == ("PENDING", "BLOCKED", "FAILED", "ERROR")


def test_requeue_retry_failed_sends_failed_items_and_unblocks_what_they_blocked(finished):
    assert runs.requeue(finished, "s1", "run2", retry_failed=True) == runs.Requeued(failed=1, unblocked=1,
                                                                                     bad_input=1)
    s = _states(finished)
    assert (s["failed"], s["blocked"], s["error"], s["completed"]) == ("PENDING", "PENDING", "ERROR", "COMPLETED")


def test_requeue_retry_ambiguous_abandons_the_attempt_and_keeps_its_money_counted(finished):
    before = q.totals(finished)
    assert runs.requeue(finished, "s1", "run2", retry_ambiguous=True) == runs.Requeued(ambiguous=1, bad_input=1)
    assert _states(finished)["ambiguous"] == "PENDING"
    assert finished.execute("SELECT reserved_micros FROM items WHERE key = 'ambiguous'").fetchone()[0] == 0
    assert finished.execute("SELECT outcome FROM attempts WHERE key = 'ambiguous'").fetchone()[0] == "abandoned"
    after = q.totals(finished)
    assert after.abandoned_micros == 10_000 and after.committed_micros == before.committed_micros


def test_requeue_is_one_transaction(finished, monkeypatch):
    def broken(*a, **kw):
        raise RuntimeError("disk full")

    monkeypatch.setattr(runs, "abandon", broken)
    before = _states(finished)
    with pytest.raises(RuntimeError):
        runs.requeue(finished, "s1", "run2", retry_errors=True, retry_ambiguous=True)
    assert _states(finished) == before  # the ERROR and BLOCKED resets were rolled back too
