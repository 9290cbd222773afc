"""Schema migrations alone: the whole schema pinned, atomic migrations, clear errors."""

from __future__ import annotations

import duckdb
import pytest

from pixbatch.errors import StateError
from pixbatch.state.connection import connect
from pixbatch.state.migrations import MIGRATIONS, applied, migrate

#: the schema an empty file has after every migration (table -> "column TYPE, ...")
SCHEMA = {
    "aliases": "key VARCHAR, step VARCHAR, idx BIGINT, output_name VARCHAR",
    "attempts": "key VARCHAR, n INTEGER, run_id VARCHAR, intent_at TIMESTAMP, reserved_micros BIGINT, "
                "request_id VARCHAR, accepted_at TIMESTAMP, http_status INTEGER, outcome VARCHAR, polling_path VARCHAR",
    "events": "seq BIGINT, ts TIMESTAMP, run_id VARCHAR, key VARCHAR, kind VARCHAR, detail JSON",
    "items": "key VARCHAR, step VARCHAR, op VARCHAR, idx BIGINT, body VARCHAR, input_id VARCHAR, output_name VARCHAR, "
             "upstream VARCHAR, input_width INTEGER, input_height INTEGER, est_low_micros BIGINT, "
             "est_high_micros BIGINT, tier VARCHAR, state VARCHAR, request_id VARCHAR, gateway_status VARCHAR, "
             "error VARCHAR, reserved_micros BIGINT, charged_micros BIGINT, media_url VARCHAR, media_type VARCHAR, "
             "output_width INTEGER, output_height INTEGER, polls INTEGER, submitted_at TIMESTAMP, "
             "started_at TIMESTAMP, finished_at TIMESTAMP, updated_at TIMESTAMP, run_id VARCHAR, scope VARCHAR, "
             "attempts INTEGER, polling_path VARCHAR, vars VARCHAR",
    "outputs": "key VARCHAR, path VARCHAR, sha256 VARCHAR, bytes BIGINT, width INTEGER, height INTEGER, "
               "media_type VARCHAR, downloaded_at TIMESTAMP, etag VARCHAR",
    "probes": "url VARCHAR, width INTEGER, height INTEGER, format VARCHAR, bytes_read INTEGER, error VARCHAR, "
              "probed_at TIMESTAMP",
    "runs": "run_id VARCHAR, started_at TIMESTAMP, finished_at TIMESTAMP, manifest_path VARCHAR, "
            "manifest_sha256 VARCHAR, base_url VARCHAR, budget_micros BIGINT, estimate_low_micros BIGINT, "
            "estimate_high_micros BIGINT, outcome VARCHAR, pid INTEGER, options JSON",
    "schema_migrations": "id INTEGER, name VARCHAR, applied_at TIMESTAMP",
    "secrets": "name VARCHAR, value VARCHAR",
    "uploads": "object VARCHAR, sha256 VARCHAR, bytes BIGINT, media_type VARCHAR, etag VARCHAR, how VARCHAR, "
               "uploaded_at TIMESTAMP",
    "submit_log": "key VARCHAR, n INTEGER, run_id VARCHAR, ts TIMESTAMP, event VARCHAR, reserved_micros BIGINT, "
                  "request_id VARCHAR, http_status INTEGER, polling_path VARCHAR",
}


def schema(db: duckdb.DuckDBPyConnection) -> dict[str, str]:
    out: dict[str, list[str]] = {}
    for t, c, ty in db.execute("SELECT table_name, column_name, data_type FROM information_schema.columns "
                               "WHERE table_schema = 'main' ORDER BY table_name, ordinal_position").fetchall():
        out.setdefault(t, []).append(f"{c} {ty}")
    return {t: ", ".join(cs) for t, cs in out.items()}


def test_an_empty_file_gets_the_whole_schema_once(tmp_path):
    db = connect(tmp_path / "s.duckdb")
    assert schema(db) == SCHEMA
    assert applied(db) == [name for name, _ in MIGRATIONS] == [
        "m001_probe_cache", "m002_run_state", "m003_item_scope_attempts", "m004_submit_log", "m005_object_storage",
        "m006_secrets", "m007_item_vars", "m008_items_unindexed", "m009_items_compact"]
    assert db.execute("SELECT table_name FROM information_schema.tables WHERE table_type = 'VIEW'").fetchall() == [
        ("attempts",)]
    assert db.execute("SELECT index_name FROM duckdb_indexes()").fetchall() == []  # m008: items has none
    assert migrate(db) == []  # nothing left to apply
    db.close()


def test_a_failed_migration_leaves_the_file_as_it_was(tmp_path):
    db = duckdb.connect(str(tmp_path / "s.duckdb"))
    migrate(db, MIGRATIONS[:2])

    def m003_broken(d: duckdb.DuckDBPyConnection) -> None:
        d.execute("ALTER TABLE items ADD COLUMN half_done VARCHAR")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        migrate(db, [*MIGRATIONS[:2], ("m003_broken", m003_broken)])
    assert applied(db) == ["m001_probe_cache", "m002_run_state"]
    cols = {r[0] for r in db.execute("SELECT column_name FROM information_schema.columns "
                                     "WHERE table_name = 'items'").fetchall()}
    assert "half_done" not in cols
    assert migrate(db) == ["m003_item_scope_attempts", "m004_submit_log", "m005_object_storage",
        "m006_secrets", "m007_item_vars", "m008_items_unindexed", "m009_items_compact"]  # the real ones still apply
    db.close()


def test_m008_keeps_every_item_row_in_order_and_drops_the_items_indexes(tmp_path):
    db = duckdb.connect(str(tmp_path / "s.duckdb"))
    migrate(db, MIGRATIONS[:7])
    db.execute("INSERT INTO items (key, step, op, idx, body, est_low_micros, est_high_micros, state, scope, vars) "
               "SELECT printf('%032x', 99 - i), 's', 'edit', i, '{}', 10000, 10000, 'COMPLETED', 'x', '{\"c\": 1}' "
               "FROM range(100) t(i)")
    before = db.execute("SELECT * FROM items ORDER BY rowid").fetchall()
    assert migrate(db, MIGRATIONS[:8]) == ["m008_items_unindexed"]
    assert db.execute("SELECT * FROM items ORDER BY rowid").fetchall() == before
    assert db.execute("SELECT count(*) FROM duckdb_constraints() WHERE table_name = 'items' "
                      "AND constraint_type = 'PRIMARY KEY'").fetchone()[0] == 0
    assert db.execute("SELECT count(*) FROM duckdb_indexes() WHERE table_name = 'items'").fetchone()[0] == 0
    db.close()


def test_m009_keeps_every_item_row_and_stores_the_long_strings_with_zstd(tmp_path):
    db = duckdb.connect(str(tmp_path / "s.duckdb"))
    migrate(db, MIGRATIONS[:8])
    db.execute("INSERT INTO items (key, step, op, idx, body, input_id, output_name, upstream, est_low_micros, "
               "est_high_micros, state, scope, vars) SELECT printf('%032x', 999 - i), 's', 'edit', i, "
               "'{\"prompt\": \"p' || i || '\"}', 'in' || i, 's/in' || i || '.jpg', printf('%032x', i), 10000, 10000, "
               "'COMPLETED', 'x', '{\"c\": 1}' FROM range(1000) t(i)")
    before = db.execute("SELECT * FROM items ORDER BY rowid").fetchall()
    assert migrate(db) == ["m009_items_compact"]
    assert db.execute("SELECT * FROM items ORDER BY rowid").fetchall() == before
    db.execute("CHECKPOINT")
    kinds = dict(db.execute("SELECT column_name, any_value(compression) FROM pragma_storage_info('items') "
                            "WHERE column_name IN ('key', 'body', 'input_id', 'output_name', 'upstream', 'step') "
                            "AND segment_type <> 'VALIDITY' GROUP BY ALL").fetchall())
    assert kinds == {"key": "ZSTD", "body": "ZSTD", "input_id": "ZSTD", "output_name": "ZSTD", "upstream": "ZSTD",
                     "step": kinds["step"]} and kinds["step"] != "ZSTD"  # a handful of values: DuckDB's choice
    db.close()


def test_connect_explains_what_it_cannot_open(tmp_path):
    with pytest.raises(StateError, match="does not exist"):
        connect(tmp_path / "missing.duckdb", read_only=True)
    bad = tmp_path / "notes.duckdb"
    bad.write_text("not a database\n" * 100)
    with pytest.raises(StateError):
        connect(bad)


def test_a_read_only_file_is_not_migrated(tmp_path):
    path = tmp_path / "s.duckdb"
    old = duckdb.connect(str(path))
    migrate(old, MIGRATIONS[:1])
    old.close()
    db = connect(path, read_only=True)
    assert applied(db) == ["m001_probe_cache"]
    db.close()


def test_a_state_file_spills_beside_itself_with_small_row_groups(tmp_path, monkeypatch):
    # the file is attached (for its row group size): DuckDB's temp files still go beside it, never
    # into the directory the user runs pixbatch from
    from pixbatch.state.connection import ROW_GROUP_SIZE

    monkeypatch.chdir(tmp_path)
    path = tmp_path / "d" / "s.duckdb"
    db = connect(path)
    try:
        assert db.execute("SELECT current_setting('temp_directory')").fetchone()[0] == f"{path}.tmp"
        db.execute("CREATE TABLE t AS SELECT range AS i FROM range(100000)")
        db.execute("CHECKPOINT")
        groups = db.execute("SELECT count(DISTINCT row_group_id) FROM pragma_storage_info('t')").fetchone()[0]
        assert groups == -(-100_000 // ROW_GROUP_SIZE)
    finally:
        db.close()
    assert not (tmp_path / ".tmp").exists()


def test_migrations_run_in_a_small_pool_and_the_default_comes_back(tmp_path, monkeypatch):
    # a migration that rebuilds the items table of a million-item file would otherwise cache what it
    # reads and writes up to 80 % of the machine (m009 at 1M: 1.3 GB); it spills beside the file instead
    from pixbatch.state import migrations

    seen: list[str] = []

    def m099_look(db):
        seen.append(db.execute("SELECT current_setting('memory_limit')").fetchone()[0])

    monkeypatch.setattr(migrations, "MIGRATIONS", [*MIGRATIONS, ("m099_look", m099_look)])
    db = connect(tmp_path / "s.duckdb")
    try:
        assert seen and seen[0].startswith("122") and "MiB" in seen[0]  # 128MB, as DuckDB prints it
        after = db.execute("SELECT current_setting('memory_limit')").fetchone()[0]
        assert after != seen[0] and after.endswith("GiB")  # DuckDB's default (80 % of the machine) again
    finally:
        db.close()
