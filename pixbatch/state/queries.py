"""Named reads of the state file, returning dataclasses or plain values.

Every read a run makes is here, so the runner holds no SQL: call them on the writer thread
(``store.call(lambda db: queries.pending_cost(db, scope))``) or on any connection of your own.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

import duckdb

from .memory import retry_roomier
from .model import IN_FLIGHT, ROW_COLUMNS, ItemRow, ItemState, Totals, sql_in

_COLS = ", ".join(f"i.{c}" for c in (*ROW_COLUMNS, "rowid"))


def one(db: duckdb.DuckDBPyConnection, sql: str, params: list | None = None) -> tuple:
    """The row of a statement that returns exactly one (an aggregate, an UPDATE's count)."""
    row = db.execute(sql, params or []).fetchone()
    assert row is not None, sql
    return row


@dataclass(frozen=True, slots=True)
class LastRun:
    """The latest ``runs`` row (by start), with what its options recorded about the expansion."""

    run_id: str
    pid: int | None
    outcome: str | None
    manifest_path: str | None
    budget_micros: int | None
    estimate_low_micros: int | None
    estimate_high_micros: int | None
    scope: str | None  # options.scope: the expansion it ran
    fingerprint: str | None  # options.fingerprint: what that expansion depended on
    ingest: str | None = None  # options.ingest: "partial" while its expansion was still being read in

    @property
    def ingested(self) -> bool:
        """Its expansion is all in the file (runs before streaming ingests wrote no ``ingest``)."""
        return self.ingest != "partial"


@dataclass(frozen=True, slots=True)
class Cost:
    """A number of items and the sum of their estimated prices (micro-dollars)."""

    items: int
    low_micros: int
    high_micros: int


@dataclass(frozen=True, slots=True)
class Redo:
    """Finished items a retry option would send again: how many, what they were charged, what they cost again."""

    items: int
    charged_micros: int  # what they were charged so far
    est_high_micros: int  # what sending them again costs at most


@dataclass(frozen=True, slots=True)
class Selection:
    """The items of an expansion a run may send (``run --steps``, ``--limit``).

    ``last_idx``: (step, the highest ``idx`` of that step it may send, None: all of them), in
    manifest order; a step not listed is not sent at all.
    """

    last_idx: tuple[tuple[str, int | None], ...]

    @property
    def steps(self) -> tuple[str, ...]:
        return tuple(s for s, _ in self.last_idx)

    def until(self, step: str) -> int | None:
        """The highest idx of ``step`` to send (None: no limit); -1 for a step not selected."""
        return dict(self.last_idx).get(step, -1)

    @staticmethod
    def steps_of(sel: Selection | None, order: list[str]) -> list[str] | tuple[str, ...]:
        """The steps to send: the selection's, else every step (``order``)."""
        return order if sel is None else sel.steps

    @staticmethod
    def until_of(sel: Selection | None, step: str) -> int | None:
        """The highest idx of ``step`` to send (None: no limit, or no selection)."""
        return None if sel is None else sel.until(step)

    def where(self, alias: str = "items") -> tuple[str, list]:
        """An SQL condition on ``alias`` (a row of ``items``) and its parameters."""
        if not self.last_idx:
            return "false", []
        parts, params = [], []
        for step, last in self.last_idx:
            if last is None:
                parts.append(f"{alias}.step = ?")
                params.append(step)
            else:
                parts.append(f"({alias}.step = ? AND {alias}.idx <= ?)")
                params += [step, last]
        return "(" + " OR ".join(parts) + ")", params


def _selected(sel: Selection | None, alias: str = "items") -> tuple[str, list]:
    if sel is None:
        return "", []
    cond, params = sel.where(alias)
    return f" AND {cond}", params


@dataclass(frozen=True, slots=True)
class OpenRequest:
    """An item whose final status or charge is unknown and that has a request id to poll."""

    key: str
    step: str
    op: str
    body: str  # canonical JSON
    state: str
    request_id: str  # the item's, or that of its latest accepted attempt
    polling_path: str | None
    input_width: int | None
    input_height: int | None
    output_width: int | None
    output_height: int | None
    upstream_width: int | None  # the upstream item's output size
    upstream_height: int | None
    started_at: datetime | None
    upstream_media_url: str | None


# -- the file -----------------------------------------------------------------------------


def table_names(db: duckdb.DuckDBPyConnection) -> set[str]:
    """Tables and views of the file (empty before the first migration)."""
    return {r[0] for r in db.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'main'").fetchall()}


def last_run(db: duckdb.DuckDBPyConnection) -> LastRun | None:
    row = db.execute(
        "SELECT run_id, pid, outcome, manifest_path, budget_micros, estimate_low_micros, estimate_high_micros, "
        "json_extract_string(options, '$.scope'), json_extract_string(options, '$.fingerprint'), "
        "json_extract_string(options, '$.ingest') "
        "FROM runs ORDER BY started_at DESC LIMIT 1").fetchone()
    return LastRun(*row) if row else None


def probed_sizes(db: duckdb.DuckDBPyConnection) -> dict[str, tuple[int, int]]:
    """Image sizes the probe cache knows: url -> (width, height)."""
    return {u: (w, h) for u, w, h in db.execute(
        "SELECT url, width, height FROM probes WHERE error IS NULL AND width IS NOT NULL").fetchall()}


def probes_fingerprint(db: duckdb.DuckDBPyConnection) -> str:
    """``"<count> <digest>"`` of the probed sizes: changes whenever one of them does."""
    n, digest = one(db, "SELECT count(*), coalesce(sum(hash(url, width, height)::HUGEINT), 0)::VARCHAR FROM probes "
                    "WHERE error IS NULL AND width IS NOT NULL")
    return f"{n} {digest}"


# -- money ----------------------------------------------------------------------------------


def totals(db: duckdb.DuckDBPyConnection) -> Totals:
    """Money in the whole file: charged, reserved, abandoned, at risk."""
    charged, reserved, at_risk = one(
        db, "SELECT coalesce(sum(charged_micros), 0), coalesce(sum(reserved_micros), 0), "
        "coalesce(sum(reserved_micros) FILTER (WHERE state = 'AMBIGUOUS'), 0) FROM items")
    abandoned, = one(db, "SELECT coalesce(sum(reserved_micros), 0) FROM submit_log WHERE event = 'abandoned'")
    return Totals(int(charged), int(reserved), int(abandoned), int(at_risk))


def _cost(db: duckdb.DuckDBPyConnection, where: str, params: list) -> Cost:
    n, lo, hi = one(db, "SELECT count(*), coalesce(sum(est_low_micros), 0), coalesce(sum(est_high_micros), 0) "
                    f"FROM items WHERE {where}", params)
    return Cost(int(n), int(lo), int(hi))


def scope_cost(db: duckdb.DuckDBPyConnection, scope: str) -> Cost:
    """The estimate of an expansion: all its items."""
    return _cost(db, "scope = ?", [scope])


def pending_cost(db: duckdb.DuckDBPyConnection, scope: str, sel: Selection | None = None) -> Cost:
    """What is left to send of an expansion: its PENDING items (of the selection, when one is given)."""
    cond, params = _selected(sel)
    return _cost(db, "scope = ? AND state = 'PENDING'" + cond, [scope, *params])


def unselected_count(db: duckdb.DuckDBPyConnection, scope: str, sel: Selection | None) -> int:
    """PENDING items of an expansion that a pilot run's selection leaves out (0 without one)."""
    return 0 if sel is None else pending_count(db, scope) - pending_count(db, scope, sel)


def left_to_send(db: duckdb.DuckDBPyConnection, scope: str,
                 sel: Selection | None) -> tuple[tuple[int, int, int], int]:
    """((PENDING items of the selection, their low and high estimate), PENDING items it leaves out)."""
    c = pending_cost(db, scope, sel)
    return (c.items, c.low_micros, c.high_micros), unselected_count(db, scope, sel)


def redo_cost(db: duckdb.DuckDBPyConnection, scope: str, states: Iterable[str], *, steps: Iterable[str] | None = None,
              sel: Selection | None = None) -> Redo:
    """Items of an expansion in ``states`` (of ``steps``, of the selection) that a retry option would send again."""
    cond, params = _selected(sel)
    if steps is not None:
        cond += " AND list_contains(?::VARCHAR[], step)"
        params.append(list(steps))
    n, charged, high = one(db, "SELECT count(*), coalesce(sum(charged_micros), 0), coalesce(sum(est_high_micros), 0) "
                           f"FROM items WHERE scope = ? AND list_contains(?::VARCHAR[], state){cond}",
                           [scope, [str(s) for s in states], *params])
    return Redo(int(n), int(charged), int(high))


def redo_cost_of_keys(db: duckdb.DuckDBPyConnection, keys: list[str], states: Iterable[str]) -> tuple[Redo, int]:
    """``redo_cost`` and ``upstream_blocked`` for the items with these keys (an expansion not ingested yet)."""
    items = charged = high = blocked = 0
    states = [str(s) for s in states]
    for i in range(0, len(keys), 50_000):
        part = keys[i:i + 50_000]
        n, c, h = one(db, "SELECT count(*), coalesce(sum(charged_micros), 0), coalesce(sum(est_high_micros), 0) "
                      "FROM items WHERE list_contains(?::VARCHAR[], state) AND key IN (SELECT unnest(?::VARCHAR[]))",
                      [states, part])
        b, = one(db, """
            WITH RECURSIVE down(key) AS (
                SELECT i.key FROM items i JOIN items u ON u.key = i.upstream
                WHERE i.state = 'BLOCKED' AND list_contains(?::VARCHAR[], u.state)
                  AND u.key IN (SELECT unnest(?::VARCHAR[]))
                UNION
                SELECT i.key FROM items i JOIN down d ON i.upstream = d.key WHERE i.state = 'BLOCKED')
            SELECT count(DISTINCT key) FROM down""", [states, part])
        items, charged, high, blocked = items + int(n), charged + int(c), high + int(h), blocked + int(b)
    return Redo(items, charged, high), blocked


def upstream_blocked(db: duckdb.DuckDBPyConnection, scope: str, states: Iterable[str], *,
                     steps: Iterable[str] | None = None, sel: Selection | None = None) -> int:
    """BLOCKED items (transitively) downstream of the items ``redo_cost`` counts: sending those again unblocks them."""
    cond, params = _selected(sel, "u")
    if steps is not None:
        cond += " AND list_contains(?::VARCHAR[], u.step)"
        params.append(list(steps))
    n, = one(db, f"""
        WITH RECURSIVE down(key) AS (
            SELECT i.key FROM items i JOIN items u ON u.key = i.upstream
            WHERE i.scope = ? AND i.state = 'BLOCKED' AND list_contains(?::VARCHAR[], u.state){cond}
            UNION
            SELECT i.key FROM items i JOIN down d ON i.upstream = d.key WHERE i.state = 'BLOCKED')
        SELECT count(DISTINCT key) FROM down""", [scope, [str(s) for s in states], *params])
    return int(n)


def in_flight_low_micros(db: duckdb.DuckDBPyConnection) -> int:
    """The lowest estimate of everything sent and not settled, in the whole file."""
    return int(one(db, f"SELECT coalesce(sum(est_low_micros), 0) FROM items WHERE state IN {sql_in(IN_FLIGHT)}")[0])


def in_flight_count(db: duckdb.DuckDBPyConnection) -> int:
    """How many items are sent and not settled, in the whole file."""
    return int(one(db, f"SELECT count(*) FROM items WHERE state IN {sql_in(IN_FLIGHT)}")[0])


# -- items ----------------------------------------------------------------------------------


def scope_size(db: duckdb.DuckDBPyConnection, scope: str) -> int:
    """How many items an expansion has in the file (0: it was never ingested)."""
    return int(one(db, "SELECT count(*) FROM items WHERE scope = ?", [scope])[0])


def pending_count(db: duckdb.DuckDBPyConnection, scope: str, sel: Selection | None = None) -> int:
    cond, params = _selected(sel)
    return int(one(db, "SELECT count(*) FROM items WHERE scope = ? AND state = 'PENDING'" + cond,
                   [scope, *params])[0])


def counts_by_step(db: duckdb.DuckDBPyConnection, scope: str | None) -> dict[str, dict[str, int]]:
    """step -> state -> count, steps in manifest order (``scope`` None: every item in the file)."""
    where, params = ("WHERE scope = ?", [scope]) if scope else ("", [])
    out: dict[str, dict[str, int]] = {}
    for step, st, n in db.execute(f"SELECT step, state, count(*) FROM items {where} GROUP BY 1, 2 "
                                  "ORDER BY min(min(rowid)) OVER (PARTITION BY step), 2", params).fetchall():
        out.setdefault(step, {})[st] = n
    return out


def alias_names(db: duckdb.DuckDBPyConnection, steps: Iterable[str]) -> dict[str, list[str]]:
    """key -> the output names its repeats elsewhere in these steps have (in step and index order)."""
    out: dict[str, list[str]] = {}
    for k, name in db.execute("SELECT key, output_name FROM aliases WHERE list_contains(?::VARCHAR[], step) "
                              "ORDER BY step, idx", [list(steps)]).fetchall():
        out.setdefault(k, []).append(name)
    return out


def select_rows(db: duckdb.DuckDBPyConnection, where: str, params: list, *, order: str = "idx",
                limit: int | None = None) -> list[ItemRow]:
    """Item rows matching an SQL condition over ``items i`` (for the named queries below, tools and tests)."""
    sql = f"SELECT {_COLS} FROM items i WHERE {where} ORDER BY {order}" + (f" LIMIT {int(limit)}" if limit else "")
    return [ItemRow.from_db(r) for r in db.execute(sql, params).fetchall()]


def submitted_rows(db: duckdb.DuckDBPyConnection) -> list[ItemRow]:
    """Every SUBMITTED item of the file, oldest submit first (a resumed run polls them)."""
    return select_rows(db, "i.state = 'SUBMITTED'", [], order="submitted_at")


def completed_page(db: duckdb.DuckDBPyConnection, scope: str, step: str, after_idx: int,
                   limit: int) -> list[ItemRow]:
    """COMPLETED items of a step with a result to download, from ``after_idx`` on (by index)."""
    return select_rows(db, "i.scope = ? AND i.step = ? AND i.idx > ? AND i.state = 'COMPLETED' "
                       "AND i.media_url IS NOT NULL", [scope, step, after_idx], limit=limit)


def completed_without_media(db: duckdb.DuckDBPyConnection, scope: str) -> list[tuple[str, str | None]]:
    """(key, error) of COMPLETED items the gateway gave no media_url: paid, and no output to fetch."""
    return [(k, e) for k, e in db.execute("SELECT key, error FROM items WHERE scope = ? AND state = 'COMPLETED' "
                                          "AND media_url IS NULL AND output_name IS NOT NULL", [scope]).fetchall()]


def ready_page(db: duckdb.DuckDBPyConnection, scope: str, step: str, after_idx: int, limit: int,
               states: tuple[str, ...] = (ItemState.PENDING,), *,
               chained: bool = True, until_idx: int | None = None,
               sel: Selection | None = None) -> list[tuple[ItemRow, ItemRow | None]]:
    """PENDING items of a step whose upstream (if any) is COMPLETED, with that upstream row
    (up to index ``until_idx``, or the pilot selection's limit for the step: ``run --limit``).

    Two light queries instead of one wide join: the page's row ids (joining only the
    upstream's key and state), then those rows. At a million items the wide join took
    several times longer, and the writer thread (with every intent waiting on it) stands
    still meanwhile. ``chained=False`` (a step that feeds on no other step) needs no join.
    """
    where = "i.scope = ? AND i.step = ? AND i.idx > ? AND list_contains(?::VARCHAR[], i.state)"
    params = [scope, step, after_idx, list(states)]
    if until_idx is None:
        until_idx = Selection.until_of(sel, step)
    if until_idx is not None:
        where += " AND i.idx <= ?"
        params.append(until_idx)
    if not chained:
        rows = db.execute(f"SELECT {_COLS} FROM items i WHERE {where} ORDER BY i.idx LIMIT ?", [*params, limit]).fetchall()
        return [(ItemRow.from_db(r), None) for r in rows]
    # (a join of the table with itself: at a million items it can outgrow a run's small pool, and
    # is a read, so it is tried again with a roomier one)
    ids = retry_roomier(lambda: db.execute(
        f"SELECT i.rowid, u.rowid FROM items i LEFT JOIN (SELECT key, state, rowid FROM items) u ON u.key = i.upstream "
        f"WHERE {where} AND (i.upstream IS NULL OR u.state = 'COMPLETED') ORDER BY i.idx LIMIT ?",
        [*params, limit]).fetchall(), db)
    if not ids:
        return []
    want = [a for a, _ in ids] + [b for _, b in ids if b is not None]
    by_rowid = {r[-1]: ItemRow.from_db(r) for r in db.execute(
        f"SELECT {_COLS} FROM items i SEMI JOIN (SELECT unnest(?::BIGINT[]) AS r) w ON i.rowid = w.r", [want]).fetchall()}
    return [(by_rowid[a], by_rowid[b] if b is not None else None) for a, b in ids]


def open_requests(db: duckdb.DuckDBPyConnection) -> list[OpenRequest]:
    """Items whose final status or charge is unknown, and that have a request id to poll
    (in flight, AMBIGUOUS with an accepted attempt, or terminal without a charge), in step
    and index order."""
    cols = {r[0] for r in db.execute(
        "SELECT column_name FROM duckdb_columns() WHERE table_name = 'items' AND schema_name = 'main'").fetchall()}
    polling = "i.polling_path" if "polling_path" in cols else "NULL"
    rows = db.execute(
        f"""
        SELECT i.key, i.step, i.op, i.body, i.state,
               coalesce(i.request_id, (SELECT a.request_id FROM attempts a WHERE a.key = i.key
                                       AND a.request_id IS NOT NULL ORDER BY a.n DESC LIMIT 1)) AS rid,
               {polling}, i.input_width, i.input_height, i.output_width, i.output_height,
               u.output_width, u.output_height, i.started_at, u.media_url
        FROM items i LEFT JOIN items u ON u.key = i.upstream
        WHERE (i.state IN ('SUBMITTING', 'SUBMITTED', 'AMBIGUOUS')
               OR (i.state IN ('COMPLETED', 'FAILED', 'ERROR') AND i.charged_micros IS NULL))
          AND rid IS NOT NULL
        ORDER BY i.step, i.idx
        """
    ).fetchall()
    return [OpenRequest(*r) for r in rows]


# -- outputs --------------------------------------------------------------------------------


def recorded_outputs(db: duckdb.DuckDBPyConnection, keys: list[str]) -> dict[tuple[str, str], str]:
    """(key, path) -> sha256 of the files recorded for these items."""
    return {(k, p): h for k, p, h in db.execute(
        "SELECT key, path, sha256 FROM outputs WHERE list_contains(?::VARCHAR[], key)", [keys]).fetchall()}


def secret(db: duckdb.DuckDBPyConnection, name: str) -> str:
    """The state file's secret ``name``, made (32 random bytes) the first time it is asked for."""
    import secrets as _secrets

    db.execute("INSERT INTO secrets VALUES (?, ?) ON CONFLICT DO NOTHING", [name, _secrets.token_hex(32)])
    return str(db.execute("SELECT value FROM secrets WHERE name = ?", [name]).fetchone()[0])


def item_row(db: duckdb.DuckDBPyConnection, key: str) -> ItemRow | None:
    """One item by its key (None when the file has no such item)."""
    rows = select_rows(db, "i.key = ?", [key], limit=1)
    return rows[0] if rows else None
