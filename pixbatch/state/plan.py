"""Reads for prices that know what is done: sizes learned from outputs, and the items a plan counts.

- ``size_observations``: the outputs of completed items, grouped (a batch has few distinct
  sizes), for ``knowledge.learn``;
- ``touched_items``: every item that is not PENDING, with its money and output size, for the
  estimate's walk of a manifest (an item of the expansion found here is paid, in flight, at
  risk or not sent again; a chained item's upstream found COMPLETED gives its real size);
- ``plan_groups``: the items of one expansion grouped by everything their plan line depends
  on, so ``estimate.plan_from_groups`` prices a million items as a few hundred groups.

A chained item's input size in ``items`` is the one predicted at ingest; its upstream's real
output size comes from the upstream's row (``upstream_*``), never from the item's own.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import duckdb

from ..knowledge import Observation
from .memory import retry_roomier, roomier

_PARAMS = ("upscale_mode", "target", "factor", "aspect_ratio")
_PARAM_SQL = ", ".join(f"json_extract_string(i.body, '$.{p}')" for p in _PARAMS)
# what prices an item: an upscale's mode, target and factor (an edit has one price)
_UPSCALE_PARAM_SQL = ", ".join(f"CASE WHEN op = 'upscale' THEN json_extract_string(body, '$.{p}') END AS p{n}"
                               for n, p in enumerate(_PARAMS))


def _params(values: tuple) -> dict[str, Any]:
    """The pricing parameters of a body, from their JSON text (numbers stay int or float)."""
    out: dict[str, Any] = {}
    for name, v in zip(_PARAMS, values):
        if v is not None:
            out[name] = v if name in ("upscale_mode", "aspect_ratio") else json.loads(v)
    return out


def _size(w: int | None, h: int | None) -> tuple[int, int] | None:
    return (int(w), int(h)) if w and h else None


def size_observations(db: duckdb.DuckDBPyConnection) -> list[Observation]:
    """Completed items with a recorded output size: one per distinct (parameters, input, output)."""
    rows = db.execute(
        f"""
        SELECT any_value(i.key), i.op, {_PARAM_SQL},
               CASE WHEN i.upstream IS NULL THEN i.input_width ELSE u.output_width END,
               CASE WHEN i.upstream IS NULL THEN i.input_height ELSE u.output_height END,
               i.output_width, i.output_height
        FROM items i LEFT JOIN items u ON u.key = i.upstream
        WHERE i.state = 'COMPLETED' AND i.output_width IS NOT NULL AND i.output_height IS NOT NULL
        GROUP BY ALL ORDER BY 1
        """).fetchall()
    return [Observation(r[0], r[1], _params(r[2:6]), _size(r[6], r[7]), (int(r[8]), int(r[9]))) for r in rows]


def touched_items(db: duckdb.DuckDBPyConnection,
                  batch: int = 50_000) -> Iterator[tuple[str, str, bool, int, int, int]]:
    """(key, state, charged, money, output width, output height) of every item that is not PENDING.

    Money is the charge of a settled item (``charged``), else its reservation (0 when none).
    """
    cur = db.execute(
        "SELECT key, state, charged_micros IS NOT NULL AND state IN ('COMPLETED', 'FAILED') AS charged, "
        "CASE WHEN charged THEN charged_micros ELSE coalesce(reserved_micros, 0) END, "
        "coalesce(output_width, 0), coalesce(output_height, 0) FROM items WHERE state <> 'PENDING'")
    while rows := cur.fetchmany(batch):
        yield from rows


@dataclass(frozen=True, slots=True)
class PlanGroup:
    """Items of one expansion that share everything their place in a plan depends on."""

    step: str
    op: str
    state: str
    money: int | None  # the charge of a settled item, else its reservation
    charged: bool  # money is a recorded charge
    params: dict[str, Any]
    input_size: tuple[int, int] | None
    chained: bool
    upstream_op: str | None
    upstream_output: tuple[int, int] | None  # the upstream's real output size, once it COMPLETED
    count: int
    example: str | None  # "name (input id)" of the first PENDING item


#: the buffer pool ``plan_groups`` may use (a run's is ``store.STORE_MEMORY_LIMIT``)
PLAN_MEMORY_LIMIT = "256MB"


def plan_groups(db: duckdb.DuckDBPyConnection, scope: str) -> list[PlanGroup]:
    """The items of ``scope`` grouped for a plan, steps in order of their first item."""
    # Narrow rows into the join (the body's parameters read below it, the example's text looked
    # up afterwards for the few groups), and only the items that are some item's upstream on its
    # hash side (at a million items, 330 -> 241 MB peak for the query alone, 0.56 -> 0.47 s); it
    # still needs more than a run's buffer pool (store.STORE_MEMORY_LIMIT) to run at full
    # speed (at 64 MB it spills: 1.0 s): the pool grows for this query only
    with roomier(db, PLAN_MEMORY_LIMIT):  # read only: tried again with more room if that is not enough
        rows = retry_roomier(lambda: _plan_rows(db, scope), db)
    wanted = [r[16] for r in rows if r[16] is not None]
    text = dict(db.execute(
        "SELECT rowid, coalesce(output_name, key) || ' (input ' || coalesce(input_id, '?') || ')' FROM items "
        "SEMI JOIN (SELECT unnest(?::BIGINT[]) AS r) w ON items.rowid = w.r", [wanted]).fetchall()) if wanted else {}
    rows = [(*r[:16], text.get(r[16])) for r in rows]
    return [PlanGroup(r[0], r[1], r[2], None if r[3] is None else int(r[3]), bool(r[4]), _params(r[5:9]),
                      _size(r[9], r[10]), bool(r[11]), r[12], _size(r[13], r[14]), int(r[15]), r[16])
            for r in rows]


def _plan_rows(db: duckdb.DuckDBPyConnection, scope: str) -> list[tuple]:
    return db.execute(
        f"""
        WITH i AS (
          SELECT step, op, state, charged_micros, reserved_micros, {_UPSCALE_PARAM_SQL},
                 input_width, input_height, upstream, idx, rowid AS rid
          FROM items WHERE scope = ?),
        g AS (
          SELECT i.step, i.op, i.state,
                 CASE WHEN i.charged_micros IS NOT NULL AND i.state IN ('COMPLETED', 'FAILED')
                      THEN i.charged_micros ELSE i.reserved_micros END AS money,
                 i.charged_micros IS NOT NULL AND i.state IN ('COMPLETED', 'FAILED') AS charged,
                 i.p0, i.p1, i.p2, i.p3, i.input_width, i.input_height, i.upstream IS NOT NULL, u.op,
                 CASE WHEN u.state = 'COMPLETED' THEN u.output_width END,
                 CASE WHEN u.state = 'COMPLETED' THEN u.output_height END,
                 count(*),  -- an example is needed only for what is still to pay
                 arg_min(i.rid, i.idx) FILTER (WHERE i.state = 'PENDING') AS example,
                 min(i.rid) AS first
          FROM i LEFT JOIN (SELECT key, op, state, output_width, output_height FROM items
                            SEMI JOIN (SELECT DISTINCT upstream FROM items WHERE scope = ? AND upstream IS NOT NULL) ups
                            ON items.key = ups.upstream) u ON u.key = i.upstream
          GROUP BY ALL)
        SELECT * EXCLUDE (first) FROM g ORDER BY min(first) OVER (PARTITION BY step), first
        """, [scope, scope]).fetchall()
