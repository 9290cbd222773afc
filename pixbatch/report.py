"""What a run cost, what happened, how long it took and where the files are: read from the state file.

``build_report(state)`` runs a handful of aggregate queries against the DuckDB state file
(``migrations.m002_run_state``) and returns a ``Report``: frozen dataclasses, no I/O left
to do. Renderers (``render.py``) are pure functions ``Report -> str``. Everything is
computed in SQL, so a run of millions of items costs a few grouped rows of Python memory;
only the outputs listing is limited (``outputs_limit``), because a table of a million
files is not something a person reads (JSON/CSV ask for all of them with ``None``).

Money is integer micro-dollars throughout.

Spend. Every item falls in exactly one *cause* (``CAUSES``): the estimate's upper bound
(``sum(est_high_micros)``) minus what each cause did not spend, plus what it spent above
its estimate, adds up to the charged total, to the micro-dollar. That is the "difference
explained": a completed item priced as a range (input size unknown) whose real size fixed
the price, a completed item whose real output size moved it to another tier, FAILED items
(charged, per the price table), ERROR and FAILED_VALIDATION items (not charged), items
never sent (PENDING, BLOCKED), items in flight (their reservation), AMBIGUOUS items (a
submit whose fate is unknown: at risk, up to their reservation or estimate), and terminal
items whose charge was never recorded (``pixbatch reconcile`` settles those).

Scope. By default the report covers the items of the manifest version the latest run
worked on (``items.scope`` = the run's ``options.scope``, the digest of its expansion); a note
counts (and prices) the items of other versions, which ``all_items`` includes.

A report works on a state file from an interrupted run: items still SUBMITTING/SUBMITTED
are "in flight" and a note says to run ``pixbatch reconcile``. While ``pixbatch run``
holds the file's lock, nothing else can open it; the report is then built from the status
file the run keeps next to it (``state.read_status``): live totals and counts per step and
state only (``Report.live``), and ``StateLocked`` if there is no status file yet.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import duckdb

from .errors import PixbatchError, StateError, StateLocked
from .state import open_for_reading
from .money import format_usd
from .pricing import PriceTable

#: The states of ``items.state`` (see ``migrations.m002_run_state``).
IN_FLIGHT_STATES = ("SUBMITTING", "SUBMITTED")
FAILURE_STATES = ("FAILED", "ERROR", "FAILED_VALIDATION", "AMBIGUOUS")
STATE_ORDER = ("PENDING", "SUBMITTING", "SUBMITTED", "COMPLETED", "FAILED", "ERROR",
               "FAILED_VALIDATION", "AMBIGUOUS", "BLOCKED")

#: Why an item's spend differs from its estimate. Order is the order shown.
CAUSES: dict[str, str] = {
    "as_estimated": "completed at the estimated price",
    "range_resolved": "completed; priced as a range (size unknown), the real size fixed the price",
    "tier_changed": "completed; the real output size put it in another price tier than estimated",
    "failed_charged": "FAILED: the gateway charges failed requests",
    "sent_again": "sent and charged more than once (a rerun with --force pays again)",
    "error_not_charged": "ERROR: system error, not charged",
    "rejected_not_charged": "FAILED_VALIDATION: rejected by the gateway (400), not charged",
    "blocked_not_spent": "BLOCKED: an upstream item did not complete; never sent",
    "pending_not_spent": "PENDING: not sent yet",
    "in_flight": "SUBMITTING/SUBMITTED: in flight, charge not settled yet (reserved)",
    "ambiguous_at_risk": "AMBIGUOUS: the submit may have been accepted and charged (at risk)",
    "unsettled": "terminal, but the charge was not recorded: run `pixbatch reconcile`",
    "other": "in a state this report does not know",
}

_CAUSE_SQL = """
CASE
  WHEN state IN ('SUBMITTING', 'SUBMITTED') THEN 'in_flight'
  WHEN state = 'AMBIGUOUS' THEN 'ambiguous_at_risk'
  WHEN state = 'PENDING' THEN 'pending_not_spent'
  WHEN state = 'BLOCKED' THEN 'blocked_not_spent'
  WHEN state = 'FAILED_VALIDATION' THEN 'rejected_not_charged'
  WHEN state = 'ERROR' THEN 'error_not_charged'
  WHEN state IN ('COMPLETED', 'FAILED') AND charged_micros IS NULL THEN 'unsettled'
  WHEN coalesce(sent, 0) > 1 AND charged_micros > est_high_micros THEN 'sent_again'
  WHEN state = 'FAILED' THEN 'failed_charged'
  WHEN state = 'COMPLETED' AND est_low_micros = est_high_micros AND charged_micros = est_high_micros
       THEN 'as_estimated'
  WHEN state = 'COMPLETED' AND est_low_micros < est_high_micros
       AND charged_micros BETWEEN est_low_micros AND est_high_micros THEN 'range_resolved'
  WHEN state = 'COMPLETED' THEN 'tier_changed'
  ELSE 'other'
END
"""

#: Example queries for the audit trail; shown in the md/html footer and the README.
AUDIT_SQL: tuple[tuple[str, str], ...] = (
    ("Every state change of one item, in order (failed HTTP exchanges: kind = 'http', key NULL)",
     "SELECT seq, ts, run_id, kind, detail FROM events WHERE key = '<item key>' ORDER BY seq;"),
    ("Every request sent (one row per submit attempt, with its request_id; a view of submit_log)",
     "SELECT key, n, run_id, intent_at, request_id, http_status, outcome FROM attempts ORDER BY intent_at;"),
    ("Charged per step and tier (micro-dollars)",
     "SELECT step, tier, count(*) AS items, sum(charged_micros) AS charged_micros\n"
     "FROM items GROUP BY ALL ORDER BY ALL;"),
    ("Failures by message",
     "SELECT state, error, count(*) AS n FROM items\n"
     "WHERE state IN ('FAILED', 'ERROR', 'FAILED_VALIDATION') GROUP BY ALL ORDER BY n DESC;"),
    ("Where an item's output is",
     "SELECT i.step, i.input_id, o.path, o.sha256, o.bytes FROM items i JOIN outputs o USING (key)\n"
     "WHERE i.input_id = '<input id>';"),
)


# -- the report ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RunInfo:
    run_id: str
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    outcome: str | None
    manifest_path: str | None
    base_url: str | None
    budget_micros: int | None
    estimate_low_micros: int | None
    estimate_high_micros: int | None
    # what this run's settlements charged (the "charged" of its events); None when it recorded none
    charged_micros: int | None = None


@dataclass(frozen=True, slots=True)
class SpendLine:
    """Spend of one (step, operation, price tier); the tier is the actual one once known."""

    step: str
    op: str
    tier: str
    items: int
    est_low_micros: int
    est_high_micros: int
    charged_micros: int  # settled charges
    charged_items: int  # items with a charge > 0
    not_charged_items: int  # ERROR, FAILED_VALIDATION
    not_charged_est_micros: int  # what those would have cost (their estimate, high)
    at_risk_items: int  # AMBIGUOUS
    at_risk_micros: int  # their reservation, else their estimate (high)
    in_flight_items: int  # SUBMITTING, SUBMITTED
    reserved_micros: int  # their reservation, else their estimate (high)
    unspent_items: int  # PENDING, BLOCKED
    unspent_est_micros: int  # their estimate (high)
    unsettled_items: int  # terminal without a recorded charge


@dataclass(frozen=True, slots=True)
class StepSpend:
    """Per step totals (for the chart and the summary)."""

    step: str
    items: int
    est_low_micros: int
    est_high_micros: int
    charged_micros: int
    planned_low_micros: int | None = None  # this step's lines of an ``Estimate`` passed to build_report
    planned_high_micros: int | None = None


@dataclass(frozen=True, slots=True)
class Variance:
    """One cause of the difference between estimate and spend."""

    cause: str  # a key of CAUSES
    explanation: str
    items: int
    est_low_micros: int
    est_high_micros: int
    charged_micros: int

    @property
    def delta_micros(self) -> int:
        """Charged minus the estimate's upper bound (negative: spent less)."""
        return self.charged_micros - self.est_high_micros


@dataclass(frozen=True, slots=True)
class SpendTotals:
    items: int
    est_low_micros: int
    est_high_micros: int
    charged_micros: int
    charged_items: int
    not_charged_items: int
    not_charged_est_micros: int
    at_risk_items: int
    at_risk_micros: int
    in_flight_items: int
    reserved_micros: int
    unspent_items: int
    unspent_est_micros: int
    unsettled_items: int
    budget_micros: int | None
    abandoned_attempts: int = 0  # AMBIGUOUS attempts that were resent: may have been charged too
    abandoned_micros: int = 0  # their reservations (at risk, on top of at_risk_micros)

    @property
    def delta_micros(self) -> int:
        return self.charged_micros - self.est_high_micros


@dataclass(frozen=True, slots=True)
class Spend:
    lines: tuple[SpendLine, ...]
    steps: tuple[StepSpend, ...]
    variance: tuple[Variance, ...]  # sums to totals: est_high + sum(delta) == charged
    totals: SpendTotals
    planned_low_micros: int | None = None  # from an ``Estimate`` passed to build_report
    planned_high_micros: int | None = None


@dataclass(frozen=True, slots=True)
class StatusCount:
    step: str
    state: str
    count: int


@dataclass(frozen=True, slots=True)
class Example:
    key: str
    step: str
    input_id: str | None
    output_name: str | None


@dataclass(frozen=True, slots=True)
class IssueGroup:
    """Items of one state with the same error message."""

    state: str
    message: str
    count: int
    examples: tuple[Example, ...]


@dataclass(frozen=True, slots=True)
class Status:
    counts: tuple[StatusCount, ...]  # per step and state
    steps: tuple[str, ...]  # in manifest order
    by_state: tuple[tuple[str, int], ...]  # totals per state
    failures: tuple[IssueGroup, ...]  # FAILED, ERROR, FAILED_VALIDATION, AMBIGUOUS; biggest first
    blocked: tuple[IssueGroup, ...]  # BLOCKED, grouped by why
    more_failure_groups: int = 0  # groups not listed (limit)
    more_blocked_groups: int = 0

    def count(self, step: str | None = None, state: str | None = None) -> int:
        return sum(c.count for c in self.counts
                   if (step is None or c.step == step) and (state is None or c.state == state))


@dataclass(frozen=True, slots=True)
class StepTiming:
    """Milliseconds. queue: submitted -> started; processing: started -> finished."""

    step: str
    finished: int  # items with a terminal status seen
    queue_n: int
    queue_p50_ms: int | None
    queue_p95_ms: int | None
    processing_n: int
    processing_p50_ms: int | None
    processing_p95_ms: int | None


@dataclass(frozen=True, slots=True)
class ThroughputBucket:
    start: dt.datetime
    completed: int
    failed: int  # FAILED or ERROR


@dataclass(frozen=True, slots=True)
class Timing:
    steps: tuple[StepTiming, ...]  # plus an "(all)" row last
    bucket_seconds: int
    buckets: tuple[ThroughputBucket, ...]
    first_finished_at: dt.datetime | None
    last_finished_at: dt.datetime | None


@dataclass(frozen=True, slots=True)
class OutputFile:
    key: str
    step: str
    input_id: str | None
    path: str
    sha256: str
    bytes: int
    width: int | None
    height: int | None
    media_type: str | None


@dataclass(frozen=True, slots=True)
class Outputs:
    count: int
    total_bytes: int
    files: tuple[OutputFile, ...]  # the first ``outputs_limit`` (all when the limit is None)
    output_dir: str | None  # where paths are relative to, when the run recorded it

    @property
    def truncated(self) -> bool:
        return len(self.files) < self.count


@dataclass(frozen=True, slots=True)
class Report:
    state_path: str
    generated_at: dt.datetime
    scope_run_id: str | None  # --run: only the items that run touched
    run: RunInfo | None  # the run asked for, else the latest
    runs: int  # runs recorded in the state file
    spend: Spend
    status: Status
    timing: Timing
    outputs: Outputs
    notes: tuple[str, ...]
    audit_sql: tuple[tuple[str, str], ...] = AUDIT_SQL
    live: bool = False  # built from the status file of a run that holds the state file (partial)
    scope: str | None = None  # the expansion (manifest version) reported on; None: every item
    excluded_items: int = 0  # items of other manifest versions, not in this report (see all_items)
    excluded_charged_micros: int = 0


# -- building it --------------------------------------------------------------------------


def build_report(state: str | Path | duckdb.DuckDBPyConnection, *, run_id: str | None = None,
                 all_items: bool = False, estimate: object | None = None, outputs_limit: int | None = 20,
                 issue_limit: int = 20, examples: int = 3, table: PriceTable | None = None,
                 output_dir: str | Path | None = None, now: dt.datetime | None = None) -> Report:
    """Build the report from a state file (path, opened read-only) or an open connection.

    By default it covers the items of the manifest version the latest run worked on (a
    state file outlives manifest edits); ``all_items`` covers every item in the file, and
    ``run_id`` only the items that run touched. ``estimate`` (an ``estimate.Estimate``)
    adds the plan's totals next to the state's own estimates. ``outputs_limit=None`` lists
    every output file. ``table`` names the price tiers (default: the run's ``--pricing``
    table if it recorded one, else the built-in table). ``output_dir`` is where output
    paths are relative to (the manifest's ``output_dir``), when known.

    While a run holds the state file's lock, the report is built from the run's status
    file (``state.read_status``): live totals and counts only, ``Report.live`` is true.
    """
    opts = dict(run_id=run_id, all_items=all_items, estimate=estimate, outputs_limit=outputs_limit,
                issue_limit=issue_limit, examples=examples, table=table,
                output_dir=None if output_dir is None else str(output_dir), now=now)
    if isinstance(state, duckdb.DuckDBPyConnection):
        return _build(state, "<connection>", **opts)
    path = Path(state)
    try:
        db = open_for_reading(path)
    except StateLocked as exc:
        return _live_report(path, str(exc), now)
    try:
        return _build(db, str(path), **opts)
    finally:
        db.close()


def _live_report(path: Path, locked: str, now: dt.datetime | None) -> Report:
    """A partial report from the status file a running ``pixbatch run`` keeps next to the state file."""
    from .state import read_status

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
        unspent_items=by_state.get("PENDING", 0) + by_state.get("BLOCKED", 0), unspent_est_micros=0,
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
           now) -> Report:
    tables = {r[0] for r in db.execute(
        "SELECT table_name FROM duckdb_tables() WHERE schema_name = 'main'").fetchall()}
    if not {"items", "runs", "outputs", "submit_log"} <= tables:
        raise StateError(f"{label} holds no run yet (no items table); run `pixbatch run` first, "
                         "or pass the --state file of a run.")
    runs = db.execute("SELECT count(*) FROM runs").fetchone()[0]
    if run_id is not None:
        if not db.execute("SELECT 1 FROM runs WHERE run_id = ?", [run_id]).fetchone():
            known = [r[0] for r in db.execute(
                "SELECT run_id FROM runs ORDER BY started_at DESC LIMIT 5").fetchall()]
            raise StateError(f"run {run_id!r} is not in {label}; recent runs: "
                             f"{', '.join(known) or '(none)'}. Drop --run for the whole state file.")
    run = _run_info(db, run_id)
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
    q = _Scoped(db, run_id, scope)
    spend = _spend(q, run, estimate, table or run_price_table(db, run.run_id if run else None))
    status = _status(q, issue_limit, examples)
    timing = _timing(q)
    outputs = _outputs(q, db, run, outputs_limit, output_dir)
    notes = _notes(run, spend, status)
    if excluded[0]:
        notes += (f"{excluded[0]:,} item(s) of other versions of the manifest are not in this report (charged "
                  f"{format_usd(int(excluded[1]))}); `--all` includes them.",)
    return Report(
        state_path=label,
        generated_at=now or dt.datetime.now(dt.UTC).replace(tzinfo=None, microsecond=0),
        scope_run_id=run_id, run=run, runs=runs, spend=spend, status=status, timing=timing,
        outputs=outputs, notes=notes, scope=scope, excluded_items=excluded[0],
        excluded_charged_micros=int(excluded[1]),
    )


class _Scoped:
    """Queries over ``s``: the items in scope (all, one manifest version, or those one run touched)."""

    def __init__(self, db: duckdb.DuckDBPyConnection, run_id: str | None, scope: str | None = None):
        self.db = db
        self.run_id = run_id
        self.scope = scope

    def cte(self) -> str:
        if self.run_id is not None:
            return ("WITH s AS (SELECT *, rowid AS _row FROM items WHERE run_id = $run"
                    " OR key IN (SELECT key FROM attempts WHERE run_id = $run))")
        if self.scope is not None:
            return "WITH s AS (SELECT *, rowid AS _row FROM items WHERE scope = $scope)"
        return "WITH s AS (SELECT *, rowid AS _row FROM items)"

    def all(self, sql: str, **params) -> list[tuple]:
        if self.run_id is not None:
            params["run"] = self.run_id
        elif self.scope is not None:
            params["scope"] = self.scope
        return self.db.execute(f"{self.cte()}\n{sql}", params).fetchall()


def _run_info(db, run_id) -> RunInfo | None:
    sql = ("SELECT run_id, started_at, finished_at, outcome, manifest_path, base_url, budget_micros,"
           " estimate_low_micros, estimate_high_micros FROM runs")
    row = (db.execute(sql + " WHERE run_id = ?", [run_id]).fetchone() if run_id is not None
           else db.execute(sql + " ORDER BY started_at DESC, run_id DESC LIMIT 1").fetchone())
    if not row:
        return None
    n, charged = db.execute(
        "SELECT count(*), coalesce(sum(TRY_CAST(detail->>'charged' AS BIGINT)), 0) FROM events "
        "WHERE run_id = ? AND kind = 'state' AND detail->>'charged' IS NOT NULL", [row[0]]).fetchone()
    return RunInfo(*row, charged_micros=int(charged) if n else None)


def _exposure(col: str = "reserved_micros") -> str:
    # what an unsettled item may cost: its reservation, else its estimate's upper bound
    return f"coalesce(nullif({col}, 0), est_high_micros)"


def _sql_str(v: str) -> str:
    return "'" + v.replace("'", "''") + "'"


def actual_tier_sql(table: PriceTable) -> str:
    """SQL for an item's price tier: the one its charge matches (unique per operation), else ``items.tier``.

    The runner records the tier it reserved; the charge tells which tier was really paid.
    """
    by_price: dict[tuple[str, int], list[str]] = {}
    for t in table.tiers:
        by_price.setdefault((t.op, t.price_micros), []).append(t.name)
    whens = [f"WHEN op = {_sql_str(op)} AND charged_micros = {price} THEN {_sql_str(names[0])}"
             for (op, price), names in by_price.items() if len(names) == 1]
    return f"CASE {' '.join(whens)} ELSE coalesce(tier, '(unknown)') END" if whens else "coalesce(tier, '(unknown)')"


def _spend(q: _Scoped, run: RunInfo | None, estimate, table: PriceTable) -> Spend:
    rows = q.all(
        f"""
        SELECT step, op, {actual_tier_sql(table)} AS tier, count(*),
          sum(est_low_micros), sum(est_high_micros),
          coalesce(sum(charged_micros), 0),
          count(*) FILTER (WHERE charged_micros > 0),
          count(*) FILTER (WHERE state IN ('ERROR', 'FAILED_VALIDATION')),
          coalesce(sum(est_high_micros) FILTER (WHERE state IN ('ERROR', 'FAILED_VALIDATION')), 0),
          count(*) FILTER (WHERE state = 'AMBIGUOUS'),
          coalesce(sum({_exposure()}) FILTER (WHERE state = 'AMBIGUOUS'), 0),
          count(*) FILTER (WHERE state IN ('SUBMITTING', 'SUBMITTED')),
          coalesce(sum({_exposure()}) FILTER (WHERE state IN ('SUBMITTING', 'SUBMITTED')), 0),
          count(*) FILTER (WHERE state IN ('PENDING', 'BLOCKED')),
          coalesce(sum(est_high_micros) FILTER (WHERE state IN ('PENDING', 'BLOCKED')), 0),
          count(*) FILTER (WHERE state IN ('COMPLETED', 'FAILED') AND charged_micros IS NULL),
          min(_row) AS first
        FROM s GROUP BY ALL ORDER BY first, op, tier
        """
    )
    lines = tuple(SpendLine(*(r[:3]), *(int(x) for x in r[3:17])) for r in rows)
    steps: dict[str, list[int]] = {}
    for ln in lines:
        acc = steps.setdefault(ln.step, [0, 0, 0, 0])
        for i, v in enumerate((ln.items, ln.est_low_micros, ln.est_high_micros, ln.charged_micros)):
            acc[i] += v
    step_spend = tuple(StepSpend(s, *v) for s, v in steps.items())
    var_rows = dict((r[0], r[1:]) for r in q.all(
        f"""
        SELECT {_CAUSE_SQL} AS cause, count(*), sum(est_low_micros), sum(est_high_micros),
               coalesce(sum(charged_micros), 0)
        FROM s LEFT JOIN (SELECT key, count(*) AS sent FROM attempts WHERE request_id IS NOT NULL
                          GROUP BY key) a USING (key)
        GROUP BY cause
        """
    ))
    variance = tuple(Variance(c, text, *(int(x) for x in var_rows[c]))
                     for c, text in CAUSES.items() if c in var_rows)

    def tot(attr: str) -> int:
        return sum(getattr(ln, attr) for ln in lines)

    abandoned = q.all("SELECT count(*), coalesce(sum(reserved_micros), 0) FROM attempts "
                      "WHERE outcome = 'abandoned' AND key IN (SELECT key FROM s)")[0]

    totals = SpendTotals(
        items=tot("items"), est_low_micros=tot("est_low_micros"), est_high_micros=tot("est_high_micros"),
        charged_micros=tot("charged_micros"), charged_items=tot("charged_items"),
        not_charged_items=tot("not_charged_items"), not_charged_est_micros=tot("not_charged_est_micros"),
        at_risk_items=tot("at_risk_items"), at_risk_micros=tot("at_risk_micros"),
        in_flight_items=tot("in_flight_items"), reserved_micros=tot("reserved_micros"),
        unspent_items=tot("unspent_items"), unspent_est_micros=tot("unspent_est_micros"),
        unsettled_items=tot("unsettled_items"),
        budget_micros=run.budget_micros if run else None,
        abandoned_attempts=int(abandoned[0]), abandoned_micros=int(abandoned[1]),
    )
    planned_low, planned_high, per_step = _planned(estimate)
    if per_step:
        step_spend = tuple(dataclasses.replace(x, planned_low_micros=per_step.get(x.step, (0, 0))[0],
                                               planned_high_micros=per_step.get(x.step, (0, 0))[1])
                           for x in step_spend)
    return Spend(lines, step_spend, variance, totals, planned_low, planned_high)


def _planned(estimate) -> tuple[int | None, int | None, dict[str, tuple[int, int]]]:
    """Totals, and per step subtotals, of an ``estimate.Estimate`` (duck-typed: ``low_micros``,
    ``high_micros``, and ``lines`` with ``step``, ``subtotal_low_micros``, ``subtotal_high_micros``)."""
    if estimate is None:
        return None, None, {}
    low = getattr(estimate, "low_micros", None)
    high = getattr(estimate, "high_micros", None)
    if not isinstance(low, int) or not isinstance(high, int):
        raise TypeError(f"estimate must have integer low_micros/high_micros, got {estimate!r}")
    per_step: dict[str, tuple[int, int]] = {}
    for line in getattr(estimate, "lines", ()):
        lo, hi = per_step.get(line.step, (0, 0))
        per_step[line.step] = (lo + line.subtotal_low_micros, hi + line.subtotal_high_micros)
    return low, high, per_step


def _status(q: _Scoped, issue_limit: int, examples: int) -> Status:
    rows = q.all(
        "SELECT step, state, count(*) AS n, min(_row) AS first FROM s GROUP BY ALL ORDER BY first, state")
    first: dict[str, int] = {}
    for step, _, _, f in rows:
        first[step] = min(first.get(step, f), f)
    steps = tuple(sorted(first, key=first.__getitem__))
    order = {s: i for i, s in enumerate(STATE_ORDER)}
    counts = tuple(sorted((StatusCount(r[0], r[1], r[2]) for r in rows),
                          key=lambda c: (steps.index(c.step), order.get(c.state, 99), c.state)))
    by_state: dict[str, int] = {}
    for c in counts:
        by_state[c.state] = by_state.get(c.state, 0) + c.count
    by_state_t = tuple(sorted(by_state.items(), key=lambda kv: (order.get(kv[0], 99), kv[0])))
    failures, more_f = _issues(q, FAILURE_STATES, issue_limit, examples)
    blocked, more_b = _issues(q, ("BLOCKED",), issue_limit, examples)
    return Status(counts, steps, by_state_t, failures, blocked, more_f, more_b)


#: what makes otherwise equal messages differ: item keys, request ids, UUIDs, object addresses
_VARYING = r"([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|\b[0-9a-f]{32}\b|0x[0-9a-fA-F]+)"


def _normalised(col: str) -> str:
    """Messages are grouped with keys, ids and addresses replaced by '…' (examples keep the specifics)."""
    return f"regexp_replace({col}, '{_VARYING}', '…', 'g')"


def _issues(q: _Scoped, states: tuple[str, ...], limit: int, n_examples: int):
    rows = q.all(
        f"""
        , f AS (SELECT state, coalesce({_normalised('error')}, '(no message recorded)') AS msg, key, step, idx,
                       input_id, output_name FROM s WHERE list_contains($states, state)),
        g AS (SELECT state, msg, count(*) AS n FROM f GROUP BY ALL),
        top AS (SELECT * FROM g ORDER BY n DESC, state, msg LIMIT $limit),
        ex AS (SELECT f.*, row_number() OVER (PARTITION BY f.state, f.msg ORDER BY f.step, f.idx) AS rn
               FROM f SEMI JOIN top USING (state, msg))
        SELECT top.state, top.msg, top.n, ex.key, ex.step, ex.input_id, ex.output_name,
               (SELECT count(*) FROM g) AS groups
        FROM top JOIN ex USING (state, msg)
        WHERE ex.rn <= $examples
        ORDER BY top.n DESC, top.state, top.msg, ex.rn
        """,
        states=list(states), limit=limit, examples=n_examples,
    )
    groups: dict[tuple[str, str], tuple[int, list[Example]]] = {}
    total_groups = 0
    for state, msg, n, key, step, input_id, output_name, ngroups in rows:
        total_groups = ngroups
        groups.setdefault((state, msg), (n, []))[1].append(Example(key, step, input_id, output_name))
    out = tuple(IssueGroup(s, m, n, tuple(ex)) for (s, m), (n, ex) in groups.items())
    return out, max(0, total_groups - len(out))


_BUCKETS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21600, 43200, 86400)


def _timing(q: _Scoped) -> Timing:
    per = """
        SELECT {name} AS step,
          count(finished_at),
          count(qms), quantile_cont(qms, 0.5), quantile_cont(qms, 0.95),
          count(pms), quantile_cont(pms, 0.5), quantile_cont(pms, 0.95)
          {first}
        FROM (SELECT *, date_diff('millisecond', submitted_at, started_at) AS qms,
                        date_diff('millisecond', started_at, finished_at) AS pms FROM s)
        {group}
    """
    rows = q.all(per.format(name="step", first=", min(_row) AS first", group="GROUP BY step ORDER BY first"))
    rows += q.all(per.format(name="'(all)'", first="", group=""))

    def ms(v):
        return None if v is None else int(round(v))

    steps = tuple(StepTiming(r[0], r[1], r[2], ms(r[3]), ms(r[4]), r[5], ms(r[6]), ms(r[7])) for r in rows)
    first, last = q.all(
        "SELECT min(finished_at), max(finished_at) FROM s "
        "WHERE state IN ('COMPLETED', 'FAILED', 'ERROR') AND finished_at IS NOT NULL")[0]
    if first is None:
        return Timing(steps, 1, (), None, None)
    span = (last - first).total_seconds()
    width = next((b for b in _BUCKETS if span / b <= 120), _BUCKETS[-1])
    counts = {r[0]: (r[1], r[2]) for r in q.all(
        """
        SELECT time_bucket(to_seconds($w::BIGINT), finished_at) AS b,
               count(*) FILTER (WHERE state = 'COMPLETED'),
               count(*) FILTER (WHERE state IN ('FAILED', 'ERROR'))
        FROM s WHERE state IN ('COMPLETED', 'FAILED', 'ERROR') AND finished_at IS NOT NULL
        GROUP BY b ORDER BY b
        """, w=width)}
    buckets = []
    t = min(counts)
    end = max(counts)
    step = dt.timedelta(seconds=width)
    while t <= end:  # fill empty buckets: at most ~121 of them
        c, f = counts.get(t, (0, 0))
        buckets.append(ThroughputBucket(t, c, f))
        t += step
    return Timing(steps, width, tuple(buckets), first, last)


def _outputs(q: _Scoped, db, run: RunInfo | None, limit: int | None, out_dir: str | None) -> Outputs:
    count, total = q.all("SELECT count(*), coalesce(sum(o.bytes), 0) FROM outputs o SEMI JOIN s USING (key)")[0]
    lim = "" if limit is None else "LIMIT $limit"
    params = {} if limit is None else {"limit": limit}
    rows = q.all(
        f"""
        SELECT o.key, s.step, s.input_id, o.path, o.sha256, o.bytes, o.width, o.height, o.media_type
        FROM outputs o JOIN s USING (key) ORDER BY o.path, o.key {lim}
        """, **params)
    if out_dir is None and run is not None:
        row = db.execute("SELECT json_extract_string(options, '$.output_dir') FROM runs WHERE run_id = ?",
                         [run.run_id]).fetchone()
        out_dir = row[0] if row else None
    return Outputs(count, int(total), tuple(OutputFile(*r) for r in rows), out_dir)


def _notes(run: RunInfo | None, spend: Spend, status: Status) -> tuple[str, ...]:
    t = spend.totals
    notes: list[str] = []
    if run is None:
        notes.append("No run is recorded in this state file yet.")
    elif run.outcome in (None, "running") and t.in_flight_items:
        notes.append(f"Run {run.run_id} did not record an end (interrupted?): {t.in_flight_items} item(s) were "
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
