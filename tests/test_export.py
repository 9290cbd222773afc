"""export: every table written by DuckDB's COPY and read back with duckdb, row for row."""

from __future__ import annotations

import duckdb
import pytest

from pixbatch.errors import StateError
from pixbatch.export import TABLES, export_state
from pixbatch.state.connection import connect
from test_report import ROWS, build_state


@pytest.fixture
def state(tmp_path):
    path = tmp_path / "m.pixbatch.duckdb"
    keys = build_state(path, tmp_path / "out")
    return path, keys


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_export_round_trip(state, tmp_path, fmt):
    path, keys = state
    written = export_state(path, tmp_path / "export", fmt)
    assert [w.table for w in written] == list(TABLES)
    counts = {w.table: w.rows for w in written}
    sent = sum(1 for r in ROWS if r.state not in ("PENDING", "BLOCKED"))
    answered = sum(1 for r in ROWS if r.state not in ("PENDING", "BLOCKED", "SUBMITTING"))
    assert counts == {"runs": 2, "items": len(ROWS), "aliases": 0, "attempts": sent,
                      "submit_log": sent + answered, "events": sent, "outputs": sum(1 for r in ROWS if r.output_bytes)}
    reader = "read_parquet" if fmt == "parquet" else "read_csv"
    src = duckdb.connect(str(path), read_only=True)
    out = duckdb.connect()
    try:
        for w in written:
            assert w.path == tmp_path / "export" / f"{w.table}.{fmt}" and w.path.stat().st_size > 0
            back = out.execute(f"SELECT * FROM {reader}('{w.path}')").fetchall()
            assert len(back) == w.rows
            cols = [d[0] for d in out.execute(f"DESCRIBE SELECT * FROM {reader}('{w.path}')").fetchall()]
            assert cols == [d[0] for d in src.execute(f"DESCRIBE {w.table}").fetchall()]
        # the money columns come back exactly
        exported = dict(out.execute(
            f"SELECT key, charged_micros FROM {reader}('{tmp_path / 'export' / ('items.' + fmt)}')").fetchall())
        original = dict(src.execute("SELECT key, charged_micros FROM items").fetchall())
        assert exported == original and exported[keys["r3"]] == 10000
        if fmt == "parquet":  # types survive too
            assert out.execute(f"SELECT typeof(charged_micros), typeof(finished_at) FROM "
                               f"read_parquet('{tmp_path / 'export' / 'items.parquet'}') LIMIT 1").fetchone() == (
                "BIGINT", "TIMESTAMP")
    finally:
        src.close()
        out.close()


def test_export_a_subset_and_bad_arguments(state, tmp_path):
    path, _ = state
    (w,) = export_state(path, tmp_path / "x", "csv", tables=("outputs",))
    assert w.table == "outputs" and w.rows == 6
    with pytest.raises(ValueError, match="choose one of parquet, csv"):
        export_state(path, tmp_path / "x", "xlsx")
    with pytest.raises(ValueError, match="cannot export probes"):
        export_state(path, tmp_path / "x", "csv", tables=("probes",))


def test_export_of_a_state_file_without_runs(tmp_path):
    # a DuckDB file that is not a state file (no schema_migrations) is refused, and left as it was
    db = duckdb.connect(str(tmp_path / "other.duckdb"))
    db.execute("CREATE TABLE probes (url VARCHAR)")
    db.close()
    with pytest.raises(StateError, match="not a pixbatch state file .a DuckDB database of something else: it holds "
                                         "probes and no schema_migrations"):
        export_state(tmp_path / "other.duckdb", tmp_path / "x")
    db = duckdb.connect(str(tmp_path / "other.duckdb"))
    assert db.execute("SELECT table_name FROM duckdb_tables()").fetchall() == [("probes",)]
    db.close()
    connect(tmp_path / "new.duckdb").close()
    assert {w.rows for w in export_state(tmp_path / "new.duckdb", tmp_path / "y")} == {0}
