"""A run's bookkeeping: its ``runs`` row (start, estimate, end) and the items its options
send again (``--force``, ``--retry-failed``, ``--retry-errors``, ``--retry-ambiguous``)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import duckdb

from .model import TERMINAL, sql_in
from .queries import Selection, one
from .writes import abandon


@dataclass(frozen=True, slots=True)
class RunStart:
    """The ``runs`` row of a run that starts (outcome ``running``)."""

    run_id: str
    manifest_path: str | None
    manifest_sha256: str | None
    base_url: str | None
    budget_micros: int | None
    pid: int | None
    options: dict[str, Any] = field(default_factory=dict)  # stored as JSON; ``scope`` and ``fingerprint`` read back


@dataclass(frozen=True, slots=True)
class Requeued:
    """How many items each reset made PENDING again."""

    forced: int = 0  # terminal items (--force [STEPS]: sent, and paid, again)
    failed: int = 0  # FAILED items (--retry-failed: the gateway charged them; sent and paid again)
    errors: int = 0  # ERROR items (--retry-errors: not charged)
    unblocked: int = 0  # BLOCKED items whose upstream is PENDING again
    ambiguous: int = 0  # AMBIGUOUS items (--retry-ambiguous; the old attempt is abandoned, its money counted)
    bad_input: int = 0  # BAD_INPUT items: every run checks their inputs again

    @property
    def total(self) -> int:
        return self.forced + self.failed + self.errors + self.unblocked + self.ambiguous + self.bad_input


def start_run(db: duckdb.DuckDBPyConnection, run: RunStart) -> None:
    db.execute("INSERT INTO runs (run_id, manifest_path, manifest_sha256, base_url, budget_micros, outcome, pid, "
               "options) VALUES (?, ?, ?, ?, ?, 'running', ?, ?)",
               [run.run_id, run.manifest_path, run.manifest_sha256, run.base_url, run.budget_micros, run.pid,
                json.dumps(run.options)])


def record_estimate(db: duckdb.DuckDBPyConnection, run_id: str, low_micros: int, high_micros: int) -> None:
    """The estimate of the expansion the run works on (what ``status`` shows next to the spend)."""
    db.execute("UPDATE runs SET estimate_low_micros = ?, estimate_high_micros = ? WHERE run_id = ?",
               [low_micros, high_micros, run_id])


def mark_ingested(db: duckdb.DuckDBPyConnection, run_id: str) -> None:
    """The run's expansion is all in the file now (``options.ingest``: "partial" -> "complete")."""
    db.execute("UPDATE runs SET options = json_merge_patch(options, '{\"ingest\": \"complete\"}') WHERE run_id = ?",
               [run_id])


def finish_run(db: duckdb.DuckDBPyConnection, run_id: str, outcome: str) -> None:
    """The run ended now with ``outcome`` (completed, incomplete, interrupted, budget, balance, auth)."""
    db.execute("UPDATE runs SET finished_at = now()::TIMESTAMP, outcome = ? WHERE run_id = ?", [outcome, run_id])


_RESET = ("UPDATE items SET state = 'PENDING', request_id = NULL, gateway_status = NULL, error = NULL, "
          "media_url = NULL, media_type = NULL, polling_path = NULL, run_id = ? WHERE scope = ? AND ")


def requeue(db: duckdb.DuckDBPyConnection, scope: str, run_id: str, *, force: bool | Iterable[str] = False,
            retry_failed: bool = False, retry_errors: bool = False, retry_ambiguous: bool = False,
            sel: Selection | None = None) -> Requeued:
    """Make PENDING again what the run's options ask for, in one transaction.

    ``force``: every terminal item (COMPLETED included: sent and paid again), or those of the
    steps it names. ``retry_failed``: FAILED items (charged by the gateway: sent and paid
    again). ``retry_errors``: ERROR items (the gateway's own failure, not charged).
    ``retry_ambiguous``: AMBIGUOUS items, whose attempt is abandoned in the log (its
    reservation stays counted: it may have been charged). Always: BAD_INPUT items, whose
    inputs the run checks again. Then the BLOCKED items whose upstream is PENDING again are
    unblocked, transitively (``block_downstream`` blocks again what still waits on a
    failure). ``sel`` (``run --steps/--limit``) limits every reset to the selected items.
    """
    cond, cparams = ("", []) if sel is None else sel.where("items")
    within = f" AND {cond}" if sel is not None else ""
    forced = failed = errors = ambiguous = bad = 0
    db.execute("BEGIN TRANSACTION")
    try:
        if force is True:
            forced, = one(db, _RESET + f"state IN {sql_in(TERMINAL)}" + within, [run_id, scope, *cparams])
        elif force:
            forced, = one(db, _RESET + f"state IN {sql_in(TERMINAL)} AND list_contains(?::VARCHAR[], step)" + within,
                          [run_id, scope, list(force), *cparams])
        if retry_failed:
            failed, = one(db, _RESET + "state = 'FAILED'" + within, [run_id, scope, *cparams])
        if retry_errors:
            errors, = one(db, _RESET + "state = 'ERROR'" + within, [run_id, scope, *cparams])
        bad, = one(db, _RESET + "state = 'BAD_INPUT'" + within, [run_id, scope, *cparams])
        if retry_ambiguous:
            keys = [r[0] for r in db.execute("SELECT key FROM items WHERE scope = ? AND state = 'AMBIGUOUS'" + within,
                                             [scope, *cparams]).fetchall()]
            if keys:
                abandon(db, keys, run_id)
                db.execute("UPDATE items SET state = 'PENDING', reserved_micros = 0, error = NULL, run_id = ? "
                           "WHERE list_contains(?::VARCHAR[], key)", [run_id, keys])
                ambiguous = len(keys)
        unblocked = 0
        while True:
            n, = one(db, "UPDATE items SET state = 'PENDING', error = NULL, run_id = ? WHERE scope = ? AND "
                     "state = 'BLOCKED' AND upstream IN (SELECT key FROM items WHERE state = 'PENDING')",
                     [run_id, scope])
            if not n:
                break
            unblocked += n
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    return Requeued(int(forced), int(failed), int(errors), int(unblocked), int(ambiguous), int(bad))
