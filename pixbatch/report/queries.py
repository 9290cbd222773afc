"""The report's aggregate queries over the state file, each returning part of a ``Report``.

Everything is computed in SQL over ``s``, the items in scope (``Scoped``: every item, one
manifest version, or the items one run touched), so a run of millions of items costs a few
grouped rows of Python memory.
"""

from __future__ import annotations

import dataclasses
import datetime as dt

import duckdb

from ..pricing import PriceTable
from .model import (CAUSES, FAILURE_STATES, STATE_ORDER, Example, FailedItem, IssueGroup, OutputFile, Outputs, RunInfo,
                    RunRow, Spend, SpendLine, SpendTotals, Status, StatusCount, StepSpend, StepTiming,
                    ThroughputBucket, Timing, Variance)

_CAUSE_SQL = """
CASE
  WHEN state IN ('SUBMITTING', 'SUBMITTED') THEN 'in_flight'
  WHEN state = 'AMBIGUOUS' THEN 'ambiguous_at_risk'
  WHEN state = 'PENDING' THEN 'pending_not_spent'
  WHEN state = 'BLOCKED' THEN 'blocked_not_spent'
  WHEN state = 'BAD_INPUT' THEN 'bad_input_not_sent'
  WHEN state = 'FAILED_VALIDATION' THEN 'rejected_not_charged'
  WHEN state = 'ERROR' THEN 'error_not_charged'
  WHEN state IN ('COMPLETED', 'FAILED') AND charged_micros IS NULL THEN 'unsettled'
  WHEN coalesce(sent, 0) > 1 AND charged_micros > est_high_micros THEN 'sent_again'
  WHEN state = 'FAILED' THEN 'failed_charged'
  WHEN state = 'COMPLETED' AND est_low_micros = est_high_micros AND charged_micros = est_high_micros
       THEN 'as_estimated'
  WHEN state = 'COMPLETED' AND upstream IS NOT NULL AND u_width IS NOT NULL AND est_low_micros < est_high_micros
       AND charged_micros BETWEEN est_low_micros AND est_high_micros THEN 'learned_upstream'
  WHEN state = 'COMPLETED' AND est_low_micros < est_high_micros
       AND charged_micros BETWEEN est_low_micros AND est_high_micros THEN 'range_resolved'
  WHEN state = 'COMPLETED' THEN 'tier_changed'
  ELSE 'other'
END
"""



class Scoped:
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


def run_info(db, run_id) -> RunInfo | None:
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


def spend(q: Scoped, run: RunInfo | None, estimate, table: PriceTable) -> Spend:
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
          count(*) FILTER (WHERE state IN ('PENDING', 'BLOCKED', 'BAD_INPUT')),
          coalesce(sum(est_high_micros) FILTER (WHERE state IN ('PENDING', 'BLOCKED', 'BAD_INPUT')), 0),
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
        FROM {_VARIANCE_FROM}
        GROUP BY cause
        """
    ))
    moved = _moved_examples(q)
    variance = tuple(Variance(c, text, int(var_rows[c][0]), int(var_rows[c][1]), int(var_rows[c][2]),
                              int(var_rows[c][3]), examples=moved.get(c, ()))
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
    planned_low, planned_high, per_step = planned(estimate)
    if per_step:
        step_spend = tuple(dataclasses.replace(x, planned_low_micros=per_step.get(x.step, (0, 0))[0],
                                               planned_high_micros=per_step.get(x.step, (0, 0))[1])
                           for x in step_spend)
    return Spend(lines, step_spend, variance, totals, planned_low, planned_high)


#: the items in scope with what decides their cause: attempts sent, the upstream's real output size
_VARIANCE_FROM = """s LEFT JOIN (SELECT key, count(*) AS sent FROM attempts WHERE request_id IS NOT NULL
                          GROUP BY key) a USING (key)
         LEFT JOIN (SELECT key AS u_key, output_width AS u_width, output_height AS u_height FROM items) u
                ON u.u_key = s.upstream"""
#: causes whose items moved away from a point estimate: a few of them are named, with why
_MOVED = ("learned_upstream", "range_resolved", "tier_changed", "sent_again")


def _moved_examples(q: Scoped, n: int = 3) -> dict[str, tuple[str, ...]]:
    """cause -> a few items that moved: "name: estimated $a-$b, charged $c (output WxH; upstream WxH)"."""
    from ..money import format_usd

    rows = q.all(
        f"""
        , c AS (SELECT {_CAUSE_SQL} AS cause, * FROM {_VARIANCE_FROM}),
        r AS (SELECT *, row_number() OVER (PARTITION BY cause ORDER BY _row) AS rn FROM c
              WHERE list_contains($moved, cause))
        SELECT cause, coalesce(output_name, key), est_low_micros, est_high_micros, charged_micros, output_width,
               output_height, u_width, u_height FROM r WHERE rn <= $n ORDER BY cause, rn
        """, moved=list(_MOVED), n=n)
    out: dict[str, list[str]] = {}
    for cause, name, lo, hi, charged, w, h, uw, uh in rows:
        est = format_usd(hi) if lo == hi else f"{format_usd(lo)}-{format_usd(hi)}"
        sizes = [f"output {w}x{h}"] if w and h else []
        if uw and uh:
            sizes.append(f"upstream output {uw}x{uh}")
        why = f" ({'; '.join(sizes)})" if sizes else ""
        out.setdefault(cause, []).append(f"{name}: estimated {est}, charged {format_usd(charged or 0)}{why}")
    return {k: tuple(v) for k, v in out.items()}


def reading_note(q: Scoped, db, table: PriceTable) -> str | None:
    """A note on charges that rest on the price table's default reading of MP: factor upscales whose
    real output lies between the readings of a tier boundary, charged at the upper tier."""
    from ..knowledge import learn, megapixel_text
    from ..money import format_usd
    from ..state.plan import size_observations

    rows = q.all(
        """
        SELECT output_width, output_height, charged_micros, count(*) FROM s
        WHERE op = 'upscale' AND json_extract_string(body, '$.upscale_mode') = 'factor'
          AND state IN ('COMPLETED', 'FAILED') AND charged_micros > 0 AND output_width IS NOT NULL
        GROUP BY ALL
        """)
    n = less = 0
    for w, h, charged, count in rows:
        lo, hi = table.tiers_for_size((w, h))
        if lo != hi and charged == hi.price_micros:
            n += count
            less += (hi.price_micros - lo.price_micros) * count
    if not n:
        return None
    known = learn(size_observations(db), table).megapixel
    default = megapixel_text(table.megapixel)
    if known is not None and known != table.megapixel:
        return (f"{n:,} charge(s) were recorded by the price table's default reading of MP ({default}) before a run "
                f"learned that the gateway reads 1 MP = {megapixel_text(known)}: it charged {format_usd(less)} less "
                "for them than this report says.")
    if known is None:
        return (f"{n:,} charge(s) of factor upscales whose outputs lie between the two readings of a tier boundary "
                f"were recorded by the price table's default reading (1 MP = {default}); if the gateway reads 2^20 px "
                f"they cost {format_usd(less)} less. A target-mode upscale in a run tells pixbatch the reading.")
    return None


def planned(estimate) -> tuple[int | None, int | None, dict[str, tuple[int, int]]]:
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


def status(q: Scoped, issue_limit: int, examples: int) -> Status:
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
    # a completed output that failed its checks is paid for and counted in the run's summary: listed here too
    checked, more_c = _issues(q, ("COMPLETED",), issue_limit, examples, error_like="output check:%")
    failures = tuple(sorted(failures + checked, key=lambda g: -g.count))
    blocked, more_b = _issues(q, ("BLOCKED",), issue_limit, examples)
    return Status(counts, steps, by_state_t, failures, blocked, more_f + more_c, more_b)


#: what makes otherwise equal messages differ: item keys, request ids, UUIDs, object addresses
_VARYING = r"([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|\b[0-9a-f]{32}\b|\b0x[0-9a-fA-F]+)"


def _normalised(col: str) -> str:
    """Messages are grouped with keys, ids and addresses replaced by '…' (examples keep the specifics)."""
    return f"regexp_replace({col}, '{_VARYING}', '…', 'g')"


def _issues(q: Scoped, states: tuple[str, ...], limit: int, n_examples: int, error_like: str = "%"):
    """Items of ``states`` (whose error is ``LIKE error_like``) grouped by message, biggest group first,
    with a few examples each.

    A BLOCKED item is grouped by what happened to its upstream item (its state and error), and
    its examples name that upstream item.
    """
    blocked = states == ("BLOCKED",)
    msg = (f"'upstream ' || coalesce(u.step, '?') || ' ended ' || coalesce(u.state, '?') || "
           f"coalesce(': ' || {_normalised('u.error')}, '')" if blocked
           else f"coalesce({_normalised('s.error')}, '(no message recorded)')")
    rows = q.all(
        f"""
        , f AS (SELECT s.state, {msg} AS msg, s.key, s.step, s.idx, s.input_id, s.output_name,
                       coalesce(u.output_name, u.key) AS up
                FROM s LEFT JOIN items u ON u.key = s.upstream
                WHERE list_contains($states, s.state) AND coalesce(s.error, '') LIKE $error_like),
        g AS (SELECT state, msg, count(*) AS n FROM f GROUP BY ALL),
        top AS (SELECT * FROM g ORDER BY n DESC, state, msg LIMIT $limit),
        ex AS (SELECT f.*, row_number() OVER (PARTITION BY f.state, f.msg ORDER BY f.step, f.idx) AS rn
               FROM f SEMI JOIN top USING (state, msg))
        SELECT top.state, top.msg, top.n, ex.key, ex.step, ex.input_id, ex.output_name, ex.up,
               (SELECT count(*) FROM g) AS groups
        FROM top JOIN ex USING (state, msg)
        WHERE ex.rn <= $examples
        ORDER BY top.n DESC, top.state, top.msg, ex.rn
        """,
        states=list(states), limit=limit, examples=n_examples, error_like=error_like,
    )
    groups: dict[tuple[str, str], tuple[int, list[Example]]] = {}
    total_groups = 0
    for state, m, n, key, step, input_id, output_name, up, ngroups in rows:
        total_groups = ngroups
        groups.setdefault((state, m), (n, []))[1].append(
            Example(key, step, input_id, output_name, up if blocked else None))
    out = tuple(IssueGroup(s, m, n, tuple(ex)) for (s, m), (n, ex) in groups.items())
    return out, max(0, total_groups - len(out))


#: what ``pixbatch failures`` lists, by kind
FAILED_KINDS = {"FAILED": "failed", "ERROR": "failed", "FAILED_VALIDATION": "failed", "AMBIGUOUS": "at-risk",
                "BAD_INPUT": "unsent", "BLOCKED": "blocked"}


def failed_items(q: Scoped) -> list[FailedItem]:
    """Every item in scope that did not complete, and every completed one whose output failed its checks
    (or its download), in step and index order."""
    states = list(FAILED_KINDS)
    rows = q.all(
        """
        SELECT s.state, s.step, s.output_name, s.input_id,
               coalesce(json_extract_string(s.body, '$.image'), json_extract_string(s.body, '$.images[0]')) AS url,
               coalesce(u.output_name, u.key), u.state, s.error, s.charged_micros, s.key, u.error
        FROM s LEFT JOIN items u ON u.key = s.upstream
        WHERE list_contains($states, s.state) OR (s.state IN ('COMPLETED', 'PENDING') AND s.error IS NOT NULL)
        ORDER BY s._row
        """, states=states)
    out = []
    for state, step, name, input_id, url, up, up_state, error, charged, key, up_error in rows:
        # a PENDING item with an error was refused or never reached the gateway: left unsent, and why
        kind = FAILED_KINDS.get(state, "unsent" if state == "PENDING" else "check-failed")
        if url is not None and not url.startswith(("http://", "https://")):
            url = None  # an upstream placeholder: the input is the upstream item's output
        out.append(FailedItem(kind, state, step, name, input_id, url, up, up_state, error, charged, key,
                              up_error if state == "BLOCKED" else None))
    return out


def runs_list(db: duckdb.DuckDBPyConnection) -> list[RunRow]:
    """Every run of the file, oldest first: when, how it ended, what it sent and what it was charged."""
    rows = db.execute(
        """
        SELECT r.run_id, r.started_at,
               coalesce(r.finished_at, (SELECT max(e.ts) FROM events e WHERE e.run_id = r.run_id)),
               r.outcome,
               (SELECT count(DISTINCT l.key) FROM submit_log l WHERE l.run_id = r.run_id AND l.event = 'intent'),
               coalesce((SELECT sum(TRY_CAST(e.detail->>'charged' AS BIGINT)) FROM events e
                         WHERE e.run_id = r.run_id AND e.kind = 'state'), 0),
               r.manifest_path
        FROM runs r ORDER BY r.started_at, r.run_id
        """).fetchall()
    return [RunRow(a, b, c, d, int(n), int(ch), m) for a, b, c, d, n, ch, m in rows]


_BUCKETS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21600, 43200, 86400)


def timing(q: Scoped) -> Timing:
    # queue and processing only where a poll saw the item PROCESSING before it finished
    # (an item first seen finished has started_at = finished_at: it says nothing about either)
    per = """
        SELECT {name} AS step,
          count(finished_at),
          count(qms), quantile_cont(qms, 0.5), quantile_cont(qms, 0.95),
          count(pms), quantile_cont(pms, 0.5), quantile_cont(pms, 0.95)
          {first}
        FROM (SELECT *, CASE WHEN started_at < finished_at
                             THEN date_diff('millisecond', submitted_at, started_at) END AS qms,
                        CASE WHEN started_at < finished_at
                             THEN date_diff('millisecond', started_at, finished_at) END AS pms FROM s)
        {group}
    """
    rows = q.all(per.format(name="step", first=", min(_row) AS first", group="GROUP BY step ORDER BY first"))
    rows += q.all(per.format(name="'(all)'", first="", group=""))
    gw = {r[0]: r[1:] for r in q.all(
        """
        , g AS (SELECT s.step, TRY_CAST(e.detail->>'gateway_ms' AS BIGINT) AS ms FROM events e JOIN s USING (key)
                WHERE e.kind = 'state' AND e.detail->>'gateway_ms' IS NOT NULL)
        SELECT step, count(ms), quantile_cont(ms, 0.5), quantile_cont(ms, 0.95) FROM g GROUP BY step
        UNION ALL SELECT '(all)', count(ms), quantile_cont(ms, 0.5), quantile_cont(ms, 0.95) FROM g
        """)}

    def ms(v):
        return None if v is None else int(round(v))

    steps = tuple(StepTiming(r[0], r[1], r[2], ms(r[3]), ms(r[4]), r[5], ms(r[6]), ms(r[7]),
                             int(gw.get(r[0], (0,))[0]), *(ms(v) for v in gw.get(r[0], (0, None, None))[1:]))
                  for r in rows)
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


def outputs(q: Scoped, db, run: RunInfo | None, limit: int | None, out_dir: str | None) -> Outputs:
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
