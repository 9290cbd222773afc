"""``build_report``: the state file (or, while a run holds it, its status file) -> ``Report``.

Opens the state file read-only, decides the scope (the latest run's manifest version, every
item, or one run's items), runs the queries of ``queries.py`` and adds the notes that tell
what to do next (reconcile, retry ambiguous items, ...).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import duckdb

from ..errors import PixbatchError, StateError, StateLocked
from ..money import format_usd
from ..pricing import PriceTable
from ..state import open_for_reading
from ..state.connection import reading
from . import queries
from .gallery import build_gallery
from .model import (IN_FLIGHT_STATES, STATE_ORDER, FailedItem, Outputs, Report, RunInfo, RunRow, Spend, SpendTotals,
                    Status, StatusCount, Timing)

def build_report(state: str | Path | duckdb.DuckDBPyConnection, *, run_id: str | None = None,
                 all_items: bool = False, estimate: object | None = None, outputs_limit: int | None = 20,
                 issue_limit: int = 20, examples: int = 3, table: PriceTable | None = None,
                 output_dir: str | Path | None = None, now: dt.datetime | None = None,
                 gallery: int = 0) -> Report:
    """Build the report from a state file (path, opened read-only) or an open connection.

    By default it covers the items of the manifest version the latest run worked on (a
    state file outlives manifest edits); ``all_items`` covers every item in the file, and
    ``run_id`` only the items that run touched. ``estimate`` (an ``estimate.Estimate``)
    adds the plan's totals next to the state's own estimates. ``outputs_limit=None`` lists
    every output file. ``table`` names the price tiers (default: the run's ``--pricing``
    table if it recorded one, else the built-in table). ``output_dir`` is where output
    paths are relative to (the manifest's ``output_dir``), when known. ``gallery``: embed up to
    that many thumbnails of the outputs (``gallery.py``; 0: no gallery), for the HTML page.

    While a run holds the state file's lock, the report is built from the run's status
    file (``state.read_status``): live totals and counts only, ``Report.live`` is true.
    """
    opts = dict(run_id=run_id, all_items=all_items, estimate=estimate, outputs_limit=outputs_limit,
                issue_limit=issue_limit, examples=examples, table=table,
                output_dir=None if output_dir is None else str(output_dir), now=now, gallery=gallery)
    if isinstance(state, duckdb.DuckDBPyConnection):
        return _build(state, "<connection>", **opts)
    path = Path(state)
    try:
        db = open_for_reading(path)
    except StateLocked as exc:
        return _live_report(path, str(exc), now)
    try:
        with reading(path):
            return _build(db, str(path), **opts)
    finally:
        db.close()


def _live_report(path: Path, locked: str, now: dt.datetime | None) -> Report:
    """A partial report from the status file a running ``pixbatch run`` keeps next to the state file."""
    from ..state import read_status

    try:
        snap = read_status(path)
    except StateLocked:
        raise StateLocked(f"{locked} Its live status file is not there (yet): run the report again in a few "
                          "seconds, or when the run ends.") from None
    counts = tuple(StatusCount(step, st, n) for step, by in snap.steps.items() for st, n in by.items() if n)
    order = {s: i for i, s in enumerate(STATE_ORDER)}
    steps = tuple(snap.steps)
    counts = tuple(sorted(counts, key=lambda c: (steps.index(c.step), order.get(c.state, 99), c.state)))
    by_state: dict[str, int] = {}
    for c in counts:
        by_state[c.state] = by_state.get(c.state, 0) + c.count
    status = Status(counts, steps, tuple(sorted(by_state.items(), key=lambda kv: (order.get(kv[0], 99), kv[0]))),
                    (), ())
    n = sum(by_state.values())
    in_flight = sum(by_state.get(s, 0) for s in IN_FLIGHT_STATES)
    at_risk = by_state.get("AMBIGUOUS", 0)
    totals = SpendTotals(
        items=n, est_low_micros=snap.estimate_low_micros or 0, est_high_micros=snap.estimate_high_micros or 0,
        charged_micros=snap.charged_micros, charged_items=0,
        not_charged_items=by_state.get("ERROR", 0) + by_state.get("FAILED_VALIDATION", 0), not_charged_est_micros=0,
        at_risk_items=at_risk, at_risk_micros=snap.at_risk_micros, in_flight_items=in_flight,
        reserved_micros=snap.reserved_micros - snap.at_risk_micros,
        unspent_items=by_state.get("PENDING", 0) + by_state.get("BLOCKED", 0) + by_state.get("BAD_INPUT", 0),
        unspent_est_micros=0,
        unsettled_items=0, budget_micros=snap.budget_micros)
    run = RunInfo(snap.run_id, None, None, snap.outcome or "running", snap.manifest_path, None, snap.budget_micros,
                  snap.estimate_low_micros, snap.estimate_high_micros) if snap.run_id else None
    note = (f"A run (PID {snap.pid}) holds the state file: these are its live totals and counts from its status "
            f"file (updated {snap.updated_at}). Spend per tier, failures, timing and outputs are in the full "
            "report, when the run ends.")
    return Report(
        state_path=str(path),
        generated_at=now or dt.datetime.now(dt.UTC).replace(tzinfo=None, microsecond=0),
        scope_run_id=None, run=run, runs=0,
        spend=Spend((), (), (), totals), status=status, timing=Timing((), 1, (), None, None),
        outputs=Outputs(0, 0, (), None), notes=(note,), live=True,
    )


def run_price_table(db: duckdb.DuckDBPyConnection, run_id: str | None = None) -> PriceTable:
    """The price table a run used: its ``--pricing`` file if it recorded one that still loads, else the built-in.

    ``run_id`` None: the latest run.
    """
    sql = "SELECT json_extract_string(options, '$.pricing_path') FROM runs"
    row = (db.execute(sql + " WHERE run_id = ?", [run_id]).fetchone() if run_id is not None
           else db.execute(sql + " ORDER BY started_at DESC LIMIT 1").fetchone())
    if row and row[0] and Path(row[0]).is_file():
        try:
            return PriceTable.load(row[0])
        except PixbatchError:
            pass  # fall back to the built-in table
    return PriceTable.load()


def _build(db, label, *, run_id, all_items, estimate, outputs_limit, issue_limit, examples, table, output_dir,
           now, gallery) -> Report:
    _check_tables(db, label)
    runs = db.execute("SELECT count(*) FROM runs").fetchone()[0]
    _check_run(db, label, run_id)
    run, q, excluded = _scoped(db, run_id, all_items)
    scope = q.scope
    prices = table or run_price_table(db, run.run_id if run else None)
    spend = queries.spend(q, run, estimate, prices)
    status = queries.status(q, issue_limit, examples)
    timing = queries.timing(q)
    outputs = queries.outputs(q, db, run, outputs_limit, output_dir)
    notes = _notes(run, spend, status)
    reading = queries.reading_note(q, db, prices)
    if reading:
        notes += (reading,)
    if excluded[0]:
        notes += (f"{excluded[0]:,} item(s) of other versions of the manifest are not in this report (charged "
                  f"{format_usd(int(excluded[1]))}); `--all` includes them.",)
    return Report(
        state_path=label,
        generated_at=now or dt.datetime.now(dt.UTC).replace(tzinfo=None, microsecond=0),
        scope_run_id=run_id, run=run, runs=runs, spend=spend, status=status, timing=timing,
        outputs=outputs, notes=notes, scope=scope, excluded_items=excluded[0],
        excluded_charged_micros=int(excluded[1]),
        gallery=build_gallery(q, outputs.output_dir, limit=gallery) if gallery else None,
    )



def _notes(run: RunInfo | None, spend: Spend, status: Status) -> tuple[str, ...]:
    t = spend.totals
    notes: list[str] = []
    if run is None:
        notes.append("No run is recorded in this state file yet.")
    elif run.outcome in (None, "running", "killed") and t.in_flight_items:
        notes.append(f"Run {run.run_id} was killed (it recorded no end): {t.in_flight_items} item(s) were "
                     f"in flight, up to {format_usd(t.reserved_micros)} reserved. Run `pixbatch reconcile` to "
                     "settle their final status and cost, then report again.")
    elif t.in_flight_items:
        notes.append(f"{t.in_flight_items} item(s) are still SUBMITTING/SUBMITTED (up to "
                     f"{format_usd(t.reserved_micros)}); `pixbatch reconcile` settles them.")
    submitting = status.count(state="SUBMITTING")
    if submitting:
        notes.append(f"{submitting} item(s) were being sent when the run stopped and have no request id: "
                     "reconcile cannot poll them; the next `pixbatch run` marks them AMBIGUOUS (they may have "
                     "been accepted and charged).")
    if t.at_risk_items:
        notes.append(f"{t.at_risk_items} item(s) are AMBIGUOUS: their submit may have been accepted and charged "
                     f"(up to {format_usd(t.at_risk_micros)} at risk). `pixbatch run MANIFEST --retry-ambiguous` resubmits "
                     "them, at the risk of paying twice.")
    if t.abandoned_attempts:
        notes.append(f"{t.abandoned_attempts} AMBIGUOUS attempt(s) were resent: the first sends may have been "
                     f"charged too (up to {format_usd(t.abandoned_micros)} at risk).")
    if t.unsettled_items:
        notes.append(f"{t.unsettled_items} finished item(s) have no recorded charge; `pixbatch reconcile` "
                     "settles them.")
    if t.budget_micros is not None and t.charged_micros > t.budget_micros:
        notes.append(f"Charged {format_usd(t.charged_micros)} is over the budget of {format_usd(t.budget_micros)}.")
    if status.more_failure_groups:
        notes.append(f"{status.more_failure_groups} more failure message(s) not listed; see the audit SQL.")
    return tuple(notes)


def _check_tables(db, label: str) -> None:
    tables = {r[0] for r in db.execute(
        "SELECT table_name FROM duckdb_tables() WHERE schema_name = 'main'").fetchall()}
    if not {"items", "runs", "outputs", "submit_log"} <= tables:
        raise StateError(f"{label} holds no run yet (no items table); run `pixbatch run` first, "
                         "or pass the --state file of a run.")


def _check_run(db, label: str, run_id: str | None) -> None:
    if run_id is not None and not db.execute("SELECT 1 FROM runs WHERE run_id = ?", [run_id]).fetchone():
        known = [r[0] for r in db.execute("SELECT run_id FROM runs ORDER BY started_at DESC LIMIT 5").fetchall()]
        raise StateError(f"run {run_id!r} is not in {label}; recent runs: "
                         f"{', '.join(known) or '(none)'}. Drop --run for the whole state file.")


def _scoped(db, run_id: str | None, all_items: bool) -> tuple[RunInfo | None, queries.Scoped, tuple[int, int]]:
    """The run reported on, the items in scope, and (count, charged) of the items of other manifest versions."""
    run = queries.run_info(db, run_id)
    scope = None
    excluded = (0, 0)
    has_scope = db.execute("SELECT count(*) FROM duckdb_columns() WHERE schema_name = 'main' "
                           "AND table_name = 'items' AND column_name = 'scope'").fetchone()[0]
    if has_scope and run_id is None and not all_items and run is not None:
        scope = db.execute("SELECT json_extract_string(options, '$.scope') FROM runs WHERE run_id = ?",
                           [run.run_id]).fetchone()[0]
        if scope is not None:
            excluded = db.execute("SELECT count(*), coalesce(sum(charged_micros), 0) FROM items "
                                  "WHERE scope IS DISTINCT FROM ?", [scope]).fetchone()
    return run, queries.Scoped(db, run_id, scope), excluded


def _open(state: str | Path | duckdb.DuckDBPyConnection):
    if isinstance(state, duckdb.DuckDBPyConnection):
        return state, "<connection>", False
    return open_for_reading(Path(state)), str(state), True


def list_failures(state: str | Path | duckdb.DuckDBPyConnection, *, run_id: str | None = None,
                  all_items: bool = False) -> list[FailedItem]:
    """Every item that did not complete (failed, blocked, unsent BAD_INPUT, AMBIGUOUS) or whose output
    failed its checks, with its output name, input and error: ``pixbatch failures``. Same scope as
    ``build_report``. ``StateLocked`` while a run holds the state file."""
    db, label, close = _open(state)
    try:
        _check_tables(db, label)
        _check_run(db, label, run_id)
        _, q, _ = _scoped(db, run_id, all_items)
        return queries.failed_items(q)
    finally:
        if close:
            db.close()


def list_runs(state: str | Path | duckdb.DuckDBPyConnection) -> list[RunRow]:
    """The runs of a state file, oldest first: ``pixbatch runs``."""
    db, label, close = _open(state)
    try:
        _check_tables(db, label)
        return queries.runs_list(db)
    finally:
        if close:
            db.close()
