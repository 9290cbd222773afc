"""An expansion into the state file: its items (one per unique request) and aliases (the same
request again, elsewhere in the manifest), tagged with the expansion's ``scope``."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from typing import Any

import duckdb

from ..items import WorkItem
from ..pricing import PriceTable
from .model import IngestResult

INGEST_BATCH = 20_000


def expansion_scope(items: Iterable[WorkItem]) -> tuple[str, int]:
    """A digest of an expansion (keys, places and names, in order): equal digests, same work."""
    h = hashlib.sha256()
    n = 0
    for it in items:
        h.update(f"{it.key}\t{it.step}\t{it.index}\t{it.output_name}\t{it.input_size}\n".encode())
        n += 1
    return h.hexdigest()[:32], n


def _vars_json(v: Any) -> str | None:
    """An item's matrix values as JSON (None when it has none)."""
    return json.dumps(dict(v), ensure_ascii=False, default=str) if v else None


def ingest(db: duckdb.DuckDBPyConnection, items: Iterable[WorkItem], scope: str, table: PriceTable,
           steps: Iterable[str], *, batch: int = INGEST_BATCH,
           before_commit: Callable[[], None] | None = None) -> IngestResult:
    """Insert the expansion's items (new keys) and aliases (repeated keys), tagging all with ``scope``.

    Items already in the file keep their state (so completed results are reused); only
    their ``scope`` changes. Batched inserts from Python lists via ``unnest``. ``before_commit``
    runs after the last item, inside the transaction: raising from it keeps nothing.
    """
    seen: set[str] = set()
    buf: list[WorkItem] = []
    aliases: list[tuple[str, str, int, str]] = []
    new = total = 0
    db.execute("BEGIN TRANSACTION")
    try:
        step_list = list(steps)
        if step_list:
            db.execute("DELETE FROM aliases WHERE list_contains(?::VARCHAR[], step)", [step_list])

        def flush() -> int:
            if not buf:
                return 0
            prices = [table.price(it.op, dict(it.body), it.input_size) for it in buf]
            before = db.execute("SELECT count(*) FROM items").fetchone()[0]
            db.execute("CREATE OR REPLACE TEMP TABLE _ingest AS SELECT unnest(?::VARCHAR[]) AS key, "
                       "unnest(?::VARCHAR[]) AS step, unnest(?::VARCHAR[]) AS op, unnest(?::BIGINT[]) AS idx, "
                       "unnest(?::VARCHAR[]) AS body, unnest(?::VARCHAR[]) AS input_id, "
                       "unnest(?::VARCHAR[]) AS output_name, unnest(?::VARCHAR[]) AS upstream, "
                       "unnest(?::INTEGER[]) AS input_width, unnest(?::INTEGER[]) AS input_height, "
                       "unnest(?::BIGINT[]) AS est_low_micros, unnest(?::BIGINT[]) AS est_high_micros, "
                       "unnest(?::VARCHAR[]) AS tier, unnest(?::VARCHAR[])::JSON AS vars",
                       [[i.key for i in buf], [i.step for i in buf], [i.op for i in buf], [i.index for i in buf],
                        [i.body_json for i in buf], [i.input_id for i in buf], [i.output_name for i in buf],
                        [i.upstream for i in buf],
                        [i.input_size[0] if i.input_size else None for i in buf],
                        [i.input_size[1] if i.input_size else None for i in buf],
                        [p.low_micros for p in prices], [p.high_micros for p in prices],
                        [p.high.name if p.exact else f"{p.low.name} .. {p.high.name}" for p in prices],
                        [_vars_json(i.vars) for i in buf]])
            db.execute("UPDATE items SET scope = ? FROM _ingest n WHERE items.key = n.key", [scope])
            db.execute("INSERT INTO items (key, step, op, idx, body, input_id, output_name, upstream, input_width, "
                       "input_height, est_low_micros, est_high_micros, tier, vars, scope, attempts) "
                       "SELECT n.*, ?, 0 FROM _ingest n ANTI JOIN items USING (key)", [scope])
            added = db.execute("SELECT count(*) FROM items").fetchone()[0] - before
            buf.clear()
            return added

        def flush_aliases() -> None:
            if aliases:
                db.execute("INSERT OR REPLACE INTO aliases (key, step, idx, output_name) SELECT unnest(?::VARCHAR[]), "
                           "unnest(?::VARCHAR[]), unnest(?::BIGINT[]), unnest(?::VARCHAR[])",
                           [list(c) for c in zip(*aliases)])
                aliases.clear()

        for it in items:
            if it.key in seen:
                aliases.append((it.key, it.step, it.index, it.output_name))
                if len(aliases) >= batch:
                    flush_aliases()
                continue
            seen.add(it.key)
            total += 1
            buf.append(it)
            if len(buf) >= batch:
                new += flush()
        new += flush()
        flush_aliases()
        n_alias = db.execute("SELECT count(*) FROM aliases WHERE list_contains(?::VARCHAR[], step)",
                             [step_list]).fetchone()[0] if step_list else 0
        db.execute("DROP TABLE IF EXISTS _ingest")
        if before_commit is not None:
            before_commit()  # may raise: nothing of this ingest is kept
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    return IngestResult(scope=scope, items=total, new=new, aliases=n_alias, reused=False)


def bulk_insert_items_for_bench(db: duckdb.DuckDBPyConnection, n: int, scope: str = "bench") -> list[str]:
    """Synthetic rows for ``bench/state.py`` (not used by runs)."""
    keys = [f"{i:032x}" for i in range(n)]
    for b in range(0, n, INGEST_BATCH):
        ks = keys[b:b + INGEST_BATCH]
        db.execute("INSERT INTO items (key, step, op, idx, body, est_low_micros, est_high_micros, scope, attempts) "
                   "SELECT unnest(?::VARCHAR[]), 'bench', 'edit', unnest(?::BIGINT[]), '{}', 10000, 10000, ?, 0",
                   [ks, list(range(b, b + len(ks))), scope])
    return keys
