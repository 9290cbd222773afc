"""The set-based statements that write a run's progress: the submit log, item snapshots,
events and outputs.

``Store``'s writer thread commits each group of queued writes with these (one statement per
group, values passed as lists and ``unnest``-ed); tools and tests may call them on a
connection of their own.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

import duckdb

from .model import MUTABLE_COLUMNS, Attempt, Intent, OutputRow, utcnow

_LOG_TYPES = ("VARCHAR", "INTEGER", "VARCHAR", "TIMESTAMP", "VARCHAR", "BIGINT", "VARCHAR", "INTEGER", "VARCHAR")


def insert_log(db: duckdb.DuckDBPyConnection, intents: Iterable[Intent] = (),
               outcomes: Iterable[Attempt] = ()) -> None:
    """Append intents and outcomes to ``submit_log`` in one statement (atomic and durable by itself)."""
    rows = [(i.key, i.n, i.run_id, i.intent_at, "intent", i.reserved_micros, None, None, None) for i in intents]
    rows += [(a.key, a.n, a.run_id, a.accepted_at or utcnow(), a.outcome, a.reserved_micros, a.request_id,
              a.http_status, a.polling_path) for a in outcomes]
    if not rows:
        return
    cols = [list(c) for c in zip(*rows)]
    # typed casts only where DuckDB cannot infer the type (all NULL): casting lists is slower
    sel = ", ".join(f"unnest(?::{t}[])" if all(v is None for v in vals) else "unnest(?)"
                    for t, vals in zip(_LOG_TYPES, cols))
    db.execute("INSERT INTO submit_log (key, n, run_id, ts, event, reserved_micros, request_id, http_status, "
               f"polling_path) SELECT {sel}", cols)


def log_attempt(db: duckdb.DuckDBPyConnection, attempt: Attempt) -> None:
    """Write a whole attempt (its intent, and its outcome unless "pending"): for tools and tests."""
    intent = Intent(attempt.key, attempt.n, attempt.run_id, attempt.intent_at, attempt.reserved_micros)
    done = attempt.outcome not in (None, "pending")
    insert_log(db, [intent], [attempt] if done and attempt.outcome != "abandoned" else [])
    if attempt.outcome == "abandoned":
        insert_log(db, (), [replace(attempt, outcome="ambiguous"), replace(attempt, outcome="abandoned")])


def abandon(db: duckdb.DuckDBPyConnection, keys: list[str], run_id: str) -> None:
    """--retry-ambiguous: the ambiguous attempts of ``keys`` are given up (their money stays counted)."""
    db.execute("INSERT INTO submit_log (key, n, run_id, ts, event, reserved_micros) SELECT key, n, ?, "
               "now()::TIMESTAMP, 'abandoned', reserved_micros FROM attempts WHERE outcome = 'ambiguous' AND "
               "list_contains(?::VARCHAR[], key)", [run_id, keys])


def update_items(db: duckdb.DuckDBPyConnection, snaps: list[tuple]) -> None:
    """One UPDATE for a group of item snapshots (``ItemRow.snapshot()``: key, rowid, mutable columns...).

    It joins on ``rowid``, which spares a scan of the key column (several times faster at a
    million rows); the key is checked too, and if any row did not match (no rowid, or a row
    id that moved) the whole group is applied again by key: same values, so idempotent.
    """
    cols = [list(c) for c in zip(*snaps)]
    # typed casts only where DuckDB cannot infer the type (all NULL): casting lists is slower
    sel = ", ".join([
        f"unnest(?::{t}[]) AS {c}" if all(v is None for v in vals) else f"unnest(?) AS {c}"
        for (c, t), vals in zip((("key", "VARCHAR"), ("rid", "BIGINT"), *MUTABLE_COLUMNS), cols)])
    sets = ", ".join(f"{c} = u.{c}" for c, _ in MUTABLE_COLUMNS)
    sql = f"UPDATE items SET {sets}, updated_at = now()::TIMESTAMP FROM (SELECT {sel}) u WHERE "
    n = db.execute(sql + "items.rowid = u.rid AND items.key = u.key", cols).fetchone()[0]
    if n != len(snaps):
        db.execute(sql + "items.key = u.key", cols)


def insert_events(db: duckdb.DuckDBPyConnection, events: list[tuple]) -> None:
    """Append ``(ts, run_id, key, kind, detail_json)`` rows to ``events`` in one statement."""
    ts, run, key, kind, detail = (list(c) for c in zip(*events))
    db.execute("INSERT INTO events (ts, run_id, key, kind, detail) SELECT unnest(?::TIMESTAMP[]), "
               "unnest(?::VARCHAR[]), unnest(?::VARCHAR[]), unnest(?::VARCHAR[]), unnest(?::JSON[])",
               [ts, run, key, kind, detail])


def upsert_output(db: duckdb.DuckDBPyConnection, o: OutputRow) -> None:
    """Record (or replace) the file written for an item."""
    db.execute("INSERT OR REPLACE INTO outputs (key, path, sha256, bytes, width, height, media_type, "
               "downloaded_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
               [o.key, o.path, o.sha256, o.bytes, o.width, o.height, o.media_type, utcnow()])
