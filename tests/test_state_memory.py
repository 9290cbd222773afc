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
