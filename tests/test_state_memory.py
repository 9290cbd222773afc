"""The state file's small buffer pool, and the roomier one a statement that needs more gets."""

from __future__ import annotations

import duckdb
import pytest

from pixbatch.state.memory import _bytes, retry_roomier, roomier

BIG = "SELECT count(*) FROM (SELECT 'key-' || range AS k FROM range(2000000) ORDER BY k DESC)"


def _limit(db):
    return db.execute("SELECT current_setting('memory_limit')").fetchall()[0][0]


def test_a_statement_that_outgrows_the_pool_is_tried_once_more_with_room_and_the_pool_is_put_back():
    db = duckdb.connect()
    db.execute("SET memory_limit = '16MB'")
    before = _limit(db)
    with pytest.raises(duckdb.OutOfMemoryException):
        db.execute(BIG)
    assert retry_roomier(lambda: db.execute(BIG).fetchall(), db) == [(2_000_000,)]
    assert _bytes(_limit(db)) == pytest.approx(_bytes(before), rel=0.01)  # DuckDB prints it rounded


def test_roomier_never_lowers_a_larger_pool():
    db = duckdb.connect()
    db.execute("SET memory_limit = '2GB'")
    before = _limit(db)
    with roomier(db, "64MB"):
        assert _limit(db) == before
    assert _limit(db) == before


def test_the_queries_a_run_makes_over_a_big_state_file_fit_a_small_pool_or_grow_it_once(tmp_path):
    """300,000 items (half of them chained on the other half, 300 upstreams failed) in a real
    state file, and a 20 MB pool: blocking what waits on failures, the plan, the money left,
    the feeder's next page. A join of the items table with itself needs more than that (one
    did at a million items in a run's 128 MB pool): block_downstream makes none; the plan and
    the feeder's page of a chained step are reads that get a roomier pool for one statement."""
    from pixbatch import state as st
    from pixbatch.state.connection import connect

    db = connect(tmp_path / "big.pixbatch.duckdb")
    db.execute(
        "INSERT INTO items (key, step, op, idx, body, est_low_micros, est_high_micros, scope, attempts, state, "
        "upstream, output_name, input_id) SELECT printf('%032x', i), if(i % 2 = 0, 'e', 'u'), "
        "if(i % 2 = 0, 'edit', 'upscale'), i // 2, if(i % 2 = 0, '{\"prompt\": \"p\"}', "
        "'{\"upscale_mode\": \"factor\", \"factor\": 2}'), 10000, 10000, 's', 0, "
        "CASE WHEN i % 2 = 1 THEN 'PENDING' WHEN i % 1000 = 0 THEN 'FAILED' ELSE 'COMPLETED' END, "
        "if(i % 2 = 1, printf('%032x', i - 1), NULL), 'out/' || i || '.png', 'in' || (i // 2) FROM range(300000) t(i)")
    db.execute("CHECKPOINT")
    db.execute("SET memory_limit = '20MB'")
    assert st.block_downstream(db, "s", "r1") == 300  # each chained on a FAILED edit
    groups = st.plan_groups(db, "s")  # (its own pool first: 256 MB)
    assert sum(g.count for g in groups) == 300_000 and {g.state for g in groups} >= {"BLOCKED", "PENDING"}
    assert st.pending_cost(db, "s").items == 150_000 - 300
    db.execute("UPDATE items SET state = 'PENDING' WHERE step = 'u' AND state = 'BLOCKED'")  # (so some wait)
    page = st.ready_page(db, "s", "u", -1, 100, chained=True)
    assert len(page) == 100 and all(up.state == "COMPLETED" and row.upstream == up.key for row, up in page)
    assert db.execute("SELECT current_setting('memory_limit')").fetchall()[0][0].startswith(("19", "20"))  # put back
    db.close()
