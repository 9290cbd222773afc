"""Bringing a state file up to date after a crash, and the consequences of failures.

``recover`` replays the submit log over ``items`` (the next run, or a reader when no run
holds the file); ``block_downstream`` marks the items whose upstream failed.
"""

from __future__ import annotations

import os
from pathlib import Path

import duckdb

from ..errors import StateError, StateLocked
from .connection import connect, reading
from .memory import retry_roomier
from .model import BLOCKING, sql_in

_AMBIGUOUS_ERROR = ("the run stopped between sending this request and recording its answer: it may have been "
                    "accepted (and charged)")


def recover(db: duckdb.DuckDBPyConnection, run_id: str, *, decide: bool = True) -> int:
    """After a crash, bring ``items`` up to what the submit log says (one transaction).

    For each key whose latest intent (from a run that never finished) is newer than its
    items row: accepted -> SUBMITTED with the request id (polled again, never resent);
    rejected -> FAILED_VALIDATION (400/404) or PENDING; an ambiguous outcome, or none at all
    (the POST may have been accepted and charged) -> AMBIGUOUS, reservation kept, and the
    log says so; the runs that never finished get the outcome ``killed``. Returns how many
    items became AMBIGUOUS. Idempotent.

    ``decide=False`` (readers: report, export, reconcile) applies what the log knows and
    leaves an intent without an answer SUBMITTING (with its reservation): deciding that it is
    AMBIGUOUS is for the next run.
    """
    unanswered = "'AMBIGUOUS'" if decide else "'SUBMITTING'"
    db.execute("BEGIN TRANSACTION")
    try:
        db.execute(
            "CREATE OR REPLACE TEMP TABLE _replay AS "
            "WITH latest AS (SELECT key, max(n) AS n FROM submit_log WHERE event = 'intent' AND run_id IN "
            "  (SELECT run_id FROM runs WHERE finished_at IS NULL) GROUP BY key), "
            "r AS (SELECT l.key, l.n, a.run_id, a.intent_at, a.reserved_micros, i.state AS old_state, "
            "  i.attempts AS old_n, CASE WHEN a.outcome IN ('accepted', 'rejected', 'ambiguous') THEN a.outcome "
            "  END AS outcome, a.request_id, a.polling_path, a.accepted_at, a.http_status "
            "  FROM latest l JOIN items i USING (key) JOIN attempts a ON a.key = l.key AND a.n = l.n "
            "  WHERE i.attempts < l.n OR (i.attempts = l.n AND i.state = 'SUBMITTING')) "
            "SELECT *, CASE WHEN outcome = 'accepted' THEN 'SUBMITTED' "
            "  WHEN outcome = 'rejected' AND http_status IN (400, 404) THEN 'FAILED_VALIDATION' "
            f"  WHEN outcome = 'rejected' THEN 'PENDING' WHEN outcome = 'ambiguous' THEN 'AMBIGUOUS' "
            f"  ELSE {unanswered} END AS new_state FROM r")
        db.execute("DELETE FROM _replay WHERE new_state = old_state AND n = old_n")  # nothing to do
        db.execute(
            "UPDATE items SET state = r.new_state, attempts = r.n, run_id = r.run_id, updated_at = now()::TIMESTAMP, "
            "request_id = CASE WHEN r.new_state = 'SUBMITTED' THEN r.request_id END, "
            "polling_path = CASE WHEN r.new_state = 'SUBMITTED' THEN r.polling_path END, "
            "submitted_at = CASE WHEN r.new_state = 'SUBMITTED' THEN r.accepted_at END, "
            "gateway_status = CASE WHEN r.new_state = 'SUBMITTED' THEN 'QUEUED' END, "
            "reserved_micros = CASE WHEN r.outcome = 'rejected' THEN 0 ELSE r.reserved_micros END, "
            "charged_micros = CASE WHEN r.new_state = 'FAILED_VALIDATION' THEN coalesce(items.charged_micros, 0) "
            "  ELSE items.charged_micros END, "
            "finished_at = CASE WHEN r.new_state = 'FAILED_VALIDATION' THEN now()::TIMESTAMP END, "
            "error = CASE WHEN r.new_state IN ('SUBMITTED', 'SUBMITTING') THEN NULL WHEN r.outcome = 'rejected' THEN "
            "  'the gateway refused the submit (HTTP ' || coalesce(r.http_status::VARCHAR, 'none') || ')' ELSE ? END "
            "FROM _replay r WHERE items.key = r.key", [_AMBIGUOUS_ERROR])
        db.execute("INSERT INTO submit_log (key, n, run_id, ts, event, reserved_micros) SELECT key, n, run_id, "
                   "now()::TIMESTAMP, 'ambiguous', reserved_micros FROM _replay WHERE outcome IS NULL "
                   "AND new_state = 'AMBIGUOUS'")
        db.execute("INSERT INTO events (ts, run_id, key, kind, detail) SELECT now()::TIMESTAMP, ?, key, 'state', "
                   "json_object('state', new_state, 'reason', 'recovered from the submit log') FROM _replay", [run_id])
        replayed = db.execute("SELECT count(*) FILTER (WHERE new_state = 'AMBIGUOUS') FROM _replay").fetchone()[0]
        db.execute("DROP TABLE _replay")
        # state files written before m004 whose items lack a logged intent: the state column says it all
        db.execute("UPDATE items SET state = 'SUBMITTED' WHERE state = 'SUBMITTING' AND request_id IS NOT NULL")
        # (and a SUBMITTED item without a request id, which only a damaged file holds: it cannot be
        # polled, and it may have been accepted)
        keys = [r[0] for r in db.execute(
            "SELECT key FROM items WHERE state IN ('SUBMITTING', 'SUBMITTED') AND request_id IS NULL"
        ).fetchall()] if decide else []
        if keys:
            db.execute("UPDATE items SET state = 'AMBIGUOUS', run_id = ?, updated_at = now()::TIMESTAMP, error = ? "
                       "WHERE state IN ('SUBMITTING', 'SUBMITTED') AND request_id IS NULL", [run_id, _AMBIGUOUS_ERROR])
            db.execute("INSERT INTO events (ts, run_id, key, kind, detail) SELECT now()::TIMESTAMP, ?, unnest(?), "
                       "'state', '{\"state\": \"AMBIGUOUS\", \"reason\": \"recovered SUBMITTING without request_id\"}'",
                       [run_id, keys])
        if decide:  # the runs that never finished are over: they were killed (ended: their last trace)
            db.execute("UPDATE runs SET outcome = 'killed', finished_at = greatest(runs.started_at, coalesce("
                       "(SELECT max(ts) FROM submit_log l WHERE l.run_id = runs.run_id), runs.started_at)) "
                       "WHERE finished_at IS NULL AND run_id <> ?", [run_id])
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    return int(replayed) + len(keys)


def absorb_crashed_runs(db: duckdb.DuckDBPyConnection) -> int:
    """``recover(decide=False)`` on behalf of a run that was killed (no ``finished_at``):
    called by readers that open the file read-write when no run holds it.

    Such a run is over (no process holds the file), so its outcome becomes ``killed`` at once,
    for ``status``, ``report``, ``runs`` and their JSON alike; its ``finished_at`` stays empty,
    so that the next run still replays its submit log (``recover``). A run of this very
    process is left alone: it may be running in another thread.
    """
    row = db.execute("SELECT run_id FROM runs WHERE finished_at IS NULL ORDER BY started_at DESC LIMIT 1").fetchone()
    n = recover(db, row[0], decide=False) if row else 0
    db.execute("UPDATE runs SET outcome = 'killed' WHERE finished_at IS NULL AND outcome = 'running' "
               "AND pid IS DISTINCT FROM ?", [os.getpid()])
    return n


def open_for_reading(path: str | Path) -> duckdb.DuckDBPyConnection:
    """A read-only connection to a state file that is first brought up to date when no run
    holds it: migrated to this version's schema, and the submit log of a killed run absorbed
    (its last item rows can lag the log by a fraction of a second). ``StateLocked`` while a
    run holds it; a file that cannot be opened for writing (permissions) is read as it is."""
    path = Path(path)
    if path.exists():
        try:
            db = connect(path)
        except StateLocked:
            raise
        except StateError:
            if os.access(path, os.W_OK) and os.access(path.parent, os.W_OK):
                raise  # writable: the file itself is the problem (damaged, another program's, newer)
            # not writable (permissions, a read-only disk): read it as it is
        else:
            try:
                with reading(path):
                    absorb_crashed_runs(db)
            finally:
                db.close()
    return connect(path, read_only=True)


def block_downstream(db: duckdb.DuckDBPyConnection, scope: str, run_id: str) -> int:
    """PENDING items whose upstream ended in a blocking state become BLOCKED (transitively)."""
    total = 0
    while True:
        # two narrow steps (a semi-join on the blocking keys, then those few upstream rows): a join
        # of the table with itself built a hash table of every PENDING item, more than the pool holds
        # (most often nothing has failed: one scan of a column says so; the join is a read, tried
        # again with a roomier pool if the run's small one is full)
        if not db.execute(f"SELECT count(*) FROM items WHERE state IN {sql_in(BLOCKING)}").fetchall()[0][0]:
            return total
        pairs = retry_roomier(lambda: db.execute(
            "SELECT i.key, i.upstream FROM items i WHERE i.scope = ? AND i.state = 'PENDING' AND i.upstream IN "
            f"(SELECT key FROM items WHERE state IN {sql_in(BLOCKING)})", [scope]).fetchall(), db)
        ups = {u[0]: u for u in db.execute(
            "SELECT key, state, step, output_name, error FROM items WHERE key IN (SELECT unnest(?::VARCHAR[]))",
            [list({up for _, up in pairs})]).fetchall()} if pairs else {}
        rows = [(key, *ups[up]) for key, up in pairs if up in ups]
        if not rows:
            return total
        keys = [r[0] for r in rows]
        # the upstream item by name and key, and why it failed: what the user needs to act on it
        reasons = [f"upstream item {name or key} (step {step}) ended {state}" + (f": {error}" if error else "")
                   for _, key, state, step, name, error in rows]
        db.execute("BEGIN TRANSACTION")
        try:
            db.execute("UPDATE items SET state = 'BLOCKED', error = u.reason, run_id = ?, updated_at = now()::TIMESTAMP "
                       "FROM (SELECT unnest(?::VARCHAR[]) AS key, unnest(?::VARCHAR[]) AS reason) u "
                       "WHERE items.key = u.key", [run_id, keys, reasons])
            db.execute("INSERT INTO events (ts, run_id, key, kind, detail) SELECT now()::TIMESTAMP, ?, "
                       "unnest(?::VARCHAR[]), 'state', json_object('state', 'BLOCKED', 'reason', unnest(?::VARCHAR[]))",
                       [run_id, keys, reasons])
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        total += len(keys)
