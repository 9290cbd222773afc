"""An expansion into the state file: its items (one per unique request) and aliases (the same
request again, elsewhere in the manifest), tagged with the expansion's ``scope``.

``Ingest`` streams an expansion in batches, in expansion order, so a run can send the first
items while the rest are still being read:

- ``take(n)`` (any thread, one at a time; pure Python, no DuckDB) walks the expansion until
  it has ``n`` new unique items: it prices them, sets repeats aside as aliases, and checks
  each output name as it passes (``NameCheck``): a bad name raises ``ManifestError`` before
  the batch that holds it is returned, so it is never written, let alone sent. For the
  common manifest the walk is ``expand_columns.column_walk`` (the same columns, appended
  without a WorkItem per item); otherwise the WorkItems of ``expand``.
- ``write(db, batch)`` (the store's writer thread, or the stream's own: ``runner.stream``)
  writes one batch in one transaction (or into the caller's, ``transaction=False``)
  through DuckDB's Arrow scan (``INSERT ... SELECT`` from a ``pyarrow`` table: DuckDB's
  bulk path for data that lives in Python; row-by-row INSERTs cost ~100x more per row).
  Into a table that held no item when the ingest began it is a plain append; otherwise keys
  already in the file keep their row and state (completed results are reused) and only
  get the new ``scope``.

Memory: the price memo and one batch of columns; ~20 bytes per unique key (a ``KeySet``: to
tell a repeat from a new request) only when the walk does not mark repeats itself.

``ingest(db, items, ...)`` is the whole expansion at once, in one transaction (a caller
that must keep nothing on failure).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import duckdb

from ..expand_columns import ColumnWalk
from ..items import WorkItem
from ..keyset import KeySet
from ..pricing import Price, PriceTable
from .model import IngestResult

INGEST_BATCH = 20_000
CHECKPOINT_ROWS = 60_000
_MEMO_MAX = 10_000
_COLUMNS = ("key", "step", "op", "idx", "body", "input_id", "output_name", "upstream", "input_width",
            "input_height", "est_low_micros", "est_high_micros", "tier", "vars")
_INT64 = ("idx", "est_low_micros", "est_high_micros")
_INT32 = ("input_width", "input_height")


def expansion_scope(items: Iterable[WorkItem]) -> tuple[str, int]:
    """A digest of an expansion (keys, places and names, in order): equal digests, same work."""
    h = hashlib.sha256()
    n = 0
    for it in items:
        h.update(f"{it.key}\t{it.step}\t{it.index}\t{it.output_name}\t{it.input_size}\n".encode())
        n += 1
    return h.hexdigest()[:32], n


class IngestBatch:
    """Columns of the new unique items of one stretch of the walk, and the aliases seen in it."""

    __slots__ = ("cols", "aliases", "first")

    def __init__(self, first: bool):
        self.cols: dict[str, list[Any]] = {c: [] for c in _COLUMNS}
        self.aliases: list[tuple[str, str, int, str]] = []
        self.first = first  # the first batch of the walk: the aliases of its steps start afresh

    def __len__(self) -> int:
        return len(self.cols["key"])


def _arrow_table(cols: dict[str, list[Any]]) -> Any:
    import pyarrow as pa  # only a run that ingests needs it (about 25 MB once imported)

    def kind(name: str) -> Any:
        return pa.int64() if name in _INT64 else pa.int32() if name in _INT32 else pa.string()

    # the C library's allocator, not Arrow's default jemalloc, which keeps the pages of freed
    # batches: a 1M-item run peaked ~30 MB higher with it (296-305 MB against 269)
    pool = pa.system_memory_pool()
    return pa.table({name: pa.array(values, type=kind(name), memory_pool=pool) for name, values in cols.items()})


class Ingest:
    """An expansion written into the state file batch by batch (see the module docstring)."""

    def __init__(self, items: Iterable[WorkItem], scope: str, table: PriceTable, steps: Iterable[str], *,
                 names: Any = None, columns: ColumnWalk | None = None):
        self.scope = scope
        # the same expansion as columns (expand_columns.column_walk): walked instead of ``items``
        self.columns = columns
        self.table = table
        self.steps = list(steps)
        self.names = names  # a NameCheck whose wrap() the items already passed through, or None
        self._it: Iterator[WorkItem] = iter(items)
        self._seen: KeySet | None = None  # made on the first item whose walk does not tell repeats
        self._memo: dict[tuple[Any, ...], tuple[int, int, str]] = {}
        self._vars_memo: dict[tuple[Any, ...], str] = {}
        self._vars_by_id: dict[int, tuple[Any, str]] = {}
        self._append_only: bool | None = None
        self._unflushed = 0  # rows written since the last checkpoint  # the items table was empty when the ingest began
        self.walked = 0  # items walked (repeats included)
        self.items = 0  # unique items taken
        self.new = 0  # rows inserted
        self.alias_rows = 0
        self.batches = 0
        self.done = False

    # -- the walk (no DuckDB) -------------------------------------------------------------

    def _price(self, it: WorkItem) -> tuple[int, int, str]:
        # a chained item's input size is a prediction: its price is a range (pricing.REASON_ASSUMED)
        return self._price_of(it.op, it.body, it.input_size, it.upstream is not None)

    def _price_of(self, op: str, body: Any, size: Any, assumed: bool) -> tuple[int, int, str]:
        # what a price depends on (PriceTable.price): the operation, an upscale's mode, target
        # and factor, the input size and whether it is a prediction; nothing else of the body
        k = (op, body.get("upscale_mode"), body.get("target"), body.get("factor"), size, assumed)
        try:
            hit = self._memo.get(k)
        except TypeError:  # an unhashable value where a number belongs (the price says what is wrong)
            return _priced(self.table.price(op, dict(body), size, assumed=assumed))
        if hit is None:
            hit = _priced(self.table.price(op, dict(body), size, assumed=assumed))
            if len(self._memo) < _MEMO_MAX:
                self._memo[k] = hit
        return hit

    def _vars(self, v: Any) -> str:
        """An item's matrix values as JSON (``items.vars``), memoised: a manifest has few combinations,
        and items of one combination share its dict (looked up by identity first)."""
        hit = self._vars_by_id.get(id(v))
        if hit is not None and hit[0] is v:
            return hit[1]
        try:
            k = tuple(v.items())
            text = self._vars_memo.get(k)
        except TypeError:  # an unhashable value
            return json.dumps(dict(v), ensure_ascii=False, default=str)
        if text is None:
            text = json.dumps(dict(v), ensure_ascii=False, default=str)
            if len(self._vars_memo) < _MEMO_MAX:
                self._vars_memo[k] = text
        if len(self._vars_by_id) < _MEMO_MAX:
            self._vars_by_id[id(v)] = (v, text)  # holds v: its id stays its own
        return text

    @property
    def append_only(self) -> bool:
        """Whether the items table held no item when the ingest began (known after the first write):
        every row it writes is then new, and nothing else writes those rows meanwhile."""
        return self._append_only is True

    def batch(self) -> IngestBatch:
        """An empty batch to ``take`` into."""
        return IngestBatch(first=self.batches == 0)

    def take(self, n: int, into: IngestBatch | None = None) -> IngestBatch:
        """The next ``n`` unique items of the walk, added to ``into`` (default: a new batch);
        fewer at the end of the walk, which sets ``done``. A caller that wants to stay
        responsive takes a few hundred at a time into the same batch."""
        batch = into if into is not None else self.batch()
        if self.columns is not None:
            count = self.columns.fill(batch.cols, batch.aliases, n, self._price_of, self._vars)
            self.walked, self.done = self.columns.walked, self.columns.done
        else:
            count = self._take(n, batch)
        self.items += count
        names = self.names
        if names is not None and names.suspect:
            # a name of this batch repeats or escapes (or two hashes collide): nothing of it is written
            names.verify()  # raises ManifestError
            names.suspect = False  # a hash collision of two different names
        return batch

    def _take(self, n: int, batch: IngestBatch) -> int:
        c = batch.cols
        key_, step_, op_, idx_, body_, input_, name_, up_, w_, h_, lo_, hi_, tier_, vars_ = (c[x] for x in _COLUMNS)
        aliases = batch.aliases
        count = 0
        for it in self._it:
            self.walked += 1
            first = it.first  # the walk knows (expand(..., unique=True)), or the KeySet tells
            if first is None:
                if self._seen is None:  # made when an item needs it (most walks mark ``first``)
                    self._seen = KeySet()
                first = self._seen.add_hex(it.key)
            if not first:
                aliases.append((it.key, it.step, it.index, it.output_name))
                continue
            lo, hi, tier = self._price(it)
            size = it.input_size
            key_.append(it.key)
            step_.append(it.step)
            op_.append(it.op)
            idx_.append(it.index)
            body_.append(it.body_json)
            input_.append(it.input_id)
            name_.append(it.output_name)
            up_.append(it.upstream)
            w_.append(size[0] if size else None)
            h_.append(size[1] if size else None)
            lo_.append(lo)
            hi_.append(hi)
            tier_.append(tier)
            vars_.append(self._vars(it.vars) if it.vars else None)
            count += 1
            if count >= n:
                break
        else:
            self.done = True
        return count

    # -- the writes (the store's writer thread) ----------------------------------------------

    def write(self, db: duckdb.DuckDBPyConnection, batch: IngestBatch, *, transaction: bool = True) -> int:
        """Write one batch (in its own transaction unless ``transaction=False``); rows inserted."""
        if transaction:
            db.execute("BEGIN TRANSACTION")
        try:
            added = self._write(db, batch)
            if transaction:
                db.execute("COMMIT")
        except BaseException:
            if transaction:
                db.execute("ROLLBACK")
            raise
        self._unflushed += added
        if transaction and self._unflushed >= CHECKPOINT_ROWS:
            # the new rows, compressed into the file: until then DuckDB holds them in its buffer
            # pool, and under the store's memory limit it would spill them to a temp file instead
            db.execute("CHECKPOINT")
            self._unflushed = 0
        return added

    def _write(self, db: duckdb.DuckDBPyConnection, batch: IngestBatch) -> int:
        self.batches += 1
        if self._append_only is None:
            self._append_only = not db.execute("SELECT count(*) FROM items").fetchall()[0][0]  # type: ignore[index]
        if batch.first and self.steps:
            db.execute("DELETE FROM aliases WHERE list_contains(?::VARCHAR[], step)", [self.steps])
        added = 0
        if len(batch):
            db.register("_ingest_batch", _arrow_table(batch.cols))
            try:
                cols = ", ".join(_COLUMNS)
                if self._append_only:
                    # a fresh table: every key is new (repeats were set aside by take())
                    added = len(batch)
                    db.execute(f"INSERT INTO items ({cols}, scope, attempts) SELECT {cols}, ?, 0 FROM _ingest_batch",
                               [self.scope]).fetchall()
                else:
                    db.execute("UPDATE items SET scope = ? FROM _ingest_batch n WHERE items.key = n.key "
                               "AND items.scope IS DISTINCT FROM ?", [self.scope, self.scope]).fetchall()
                    before = db.execute("SELECT count(*) FROM items").fetchall()[0][0]  # type: ignore[index]
                    db.execute(f"INSERT INTO items ({cols}, scope, attempts) SELECT n.*, ?, 0 FROM "
                               f"(SELECT {cols} FROM _ingest_batch) n ANTI JOIN items USING (key)", [self.scope]).fetchall()
                    added = db.execute("SELECT count(*) FROM items").fetchall()[0][0] - before  # type: ignore[index]
            finally:
                with contextlib.suppress(duckdb.Error):  # an aborted transaction refuses it: the cause is raised
                    db.unregister("_ingest_batch")
        if batch.aliases:
            db.execute("INSERT OR REPLACE INTO aliases (key, step, idx, output_name) SELECT unnest(?::VARCHAR[]), "
                       "unnest(?::VARCHAR[]), unnest(?::BIGINT[]), unnest(?::VARCHAR[])",
                       [list(c) for c in zip(*batch.aliases)])
            self.alias_rows += len(batch.aliases)
        self.new += added
        return added

    def result(self) -> IngestResult:
        return IngestResult(scope=self.scope, items=self.items, new=self.new, aliases=self.alias_rows, reused=False)


def _priced(p: Price) -> tuple[int, int, str]:
    return p.low_micros, p.high_micros, p.high.name if p.exact else f"{p.low.name} .. {p.high.name}"


def ingest(db: duckdb.DuckDBPyConnection, items: Iterable[WorkItem], scope: str, table: PriceTable,
           steps: Iterable[str], *, batch: int = INGEST_BATCH,
           before_commit: Callable[[], None] | None = None) -> IngestResult:
    """Insert the whole expansion (new keys as items, repeated keys as aliases) under ``scope``,
    in one transaction. Items already in the file keep their state (so completed results are
    reused); only their ``scope`` changes. ``before_commit`` runs after the last item, inside
    the transaction: raising from it keeps nothing.
    """
    ing = Ingest(items, scope, table, steps)
    db.execute("BEGIN TRANSACTION")
    try:
        while not ing.done:
            ing.write(db, ing.take(batch), transaction=False)
        if before_commit is not None:
            before_commit()  # may raise: nothing of this ingest is kept
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    step_list = ing.steps
    n_alias = db.execute("SELECT count(*) FROM aliases WHERE list_contains(?::VARCHAR[], step)",
                         [step_list]).fetchall()[0][0] if step_list else 0  # type: ignore[index]
    return IngestResult(scope=scope, items=ing.items, new=ing.new, aliases=n_alias, reused=False)


def bulk_insert_items_for_bench(db: duckdb.DuckDBPyConnection, n: int, scope: str = "bench") -> list[str]:
    """Synthetic rows for ``bench/state.py`` (not used by runs)."""
    keys = [f"{i:032x}" for i in range(n)]
    for b in range(0, n, INGEST_BATCH):
        ks = keys[b:b + INGEST_BATCH]
        db.execute("INSERT INTO items (key, step, op, idx, body, est_low_micros, est_high_micros, scope, attempts) "
                   "SELECT unnest(?::VARCHAR[]), 'bench', 'edit', unnest(?::BIGINT[]), '{}', 10000, 10000, ?, 0",
                   [ks, list(range(b, b + len(ks))), scope])
    return keys
