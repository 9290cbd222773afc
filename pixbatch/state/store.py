"""``Store``: one state file, one writer thread.

DuckDB lets one process open a file read-write, and a transaction costs about the same for
one row as for thousands (each is a commit, made durable): it is slow at single-row
transactions and fast at set-based ones. So the store owns one connection used by one
thread; callers (the asyncio runner) *queue* writes and never touch DuckDB on the event
loop. The thread drains the queue and commits what it found as a group (``writes.py``):
the submit log rows at once (one INSERT), the rest in one transaction when due (item
snapshots become one ``UPDATE items ... FROM (SELECT unnest(?), ...)``, events one
``INSERT ... SELECT unnest(...)``). A caller that must know its write is durable passes
``wait=True`` or awaits ``commit()``; reads run on the same thread, in queue order, after
everything queued before them is committed, through ``call()``. ``bench/state.py``
measures what this sustains.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import queue
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import duckdb

from ..errors import StateError
from .memory import retry_roomier
from .connection import connect, damaged, is_damage
from .model import Attempt, Intent, ItemRow, OutputRow, utcnow
from .writes import insert_events, insert_log, update_items, upsert_output

T = TypeVar("T")

_STOP = object()

#: DuckDB's buffer pool for a run's state file (see ``Store.__init__``)
STORE_MEMORY_LIMIT = "64MB"


def _resolve(f: concurrent.futures.Future | None, exc: BaseException | None = None, result: Any = None) -> None:
    """Complete a caller's future unless the caller gave up on it (its asyncio task was
    cancelled, which cancels the future): the write itself is committed either way."""
    if f is None or f.cancelled():
        return
    try:
        if exc is not None:
            f.set_exception(exc)
        else:
            f.set_result(result)
    except concurrent.futures.InvalidStateError:  # cancelled between the check and the set
        pass


def _settle_all(futures: list[asyncio.Future], exc: BaseException | None) -> None:
    for f in futures:
        if not f.done():  # a cancelled waiter gave up; its write is committed all the same
            if exc is not None:
                f.set_exception(exc)
            else:
                f.set_result(None)


Waiter = concurrent.futures.Future | asyncio.Future


class _Op:
    __slots__ = ("kind", "payload", "future")

    def __init__(self, kind: str, payload: Any, future: Waiter | None = None):
        self.kind = kind
        self.payload = payload
        self.future = future


@dataclass
class _Pending:
    """Queued writes not committed yet: the submit log rows (intents and outcomes: committed
    first, at every batch) and the rest (items, events, outputs, SQL: committed in bulk)."""

    intents: list[Intent] = field(default_factory=list)
    outcomes: list[Attempt] = field(default_factory=list)
    log_waiters: list[Waiter] = field(default_factory=list)
    items: dict[str, tuple] = field(default_factory=dict)
    events: list[tuple] = field(default_factory=list)
    outputs: dict[tuple[str, str], OutputRow] = field(default_factory=dict)
    sqls: list[tuple[str, list]] = field(default_factory=list)
    waiters: list[Waiter] = field(default_factory=list)
    since: float | None = None  # monotonic time of the oldest uncommitted item/event/...
    ops: int = 0

    def add(self, op: _Op) -> None:
        kind, payload, fut = op.kind, op.payload, op.future
        to_log = False
        if kind == "item":
            snap, attempt, intent = payload
            self.items[snap[0]] = snap  # a later snapshot of the same key wins
            if intent is not None:
                self.intents.append(intent)
                to_log = True
            if attempt is not None:
                self.outcomes.append(attempt)
                to_log = True
        elif kind == "event":
            self.events.append(payload)
        elif kind == "output":
            self.outputs[(payload.key, payload.path)] = payload
        elif kind == "sql":
            self.sqls.append(payload)
        if kind in ("item", "event", "output", "sql"):
            self.ops += 1
            if self.since is None:
                self.since = time.monotonic()
        if fut is not None:
            # an intent or a request id is durable once its log row is; anything else waits
            # for the bulk commit (a barrier, a plain put_item(wait=True), SQL)
            (self.log_waiters if to_log else self.waiters).append(fut)


class Store:
    """One state file, one writer thread. Open with ``Store.open(path)``; ``close()`` flushes.

    ``bulk_interval``: the longest an item snapshot, event or output row waits in memory
    before its bulk commit (reads, barriers and ``close`` commit at once). A crash loses at
    most that much of them, and nothing that matters: ``recover()`` rebuilds every
    in-flight item from the log rows, which are committed before their waiters go on.
    """

    def __init__(self, path: str | Path, db: duckdb.DuckDBPyConnection, *, max_batch: int = 50_000,
                 bulk_interval: float = 1.0, bulk_max: int = 20_000):
        self.path = Path(path)
        self._db = db
        # DuckDB checkpoints (rewrites changed row groups) whenever the WAL passes 16 MB; under
        # a stream of small updates that costs much of the writer's time. Until a checkpoint,
        # though, the changes are held in memory the buffer pool cannot evict (at a million
        # items, 1 GB let a run's updates outgrow the 128 MB pool): 32 MB, about one
        # checkpoint (0.1-0.2 s) per 150,000 items sent
        db.execute("SET checkpoint_threshold = '32MB'")
        # DuckDB keeps every block it has read or written cached up to its memory limit (80 % of
        # the machine by default): a run that writes a million items would grow by gigabytes.
        # A bounded buffer pool evicts them (they are in the file, or spill to a temp file).
        # 64 MB: a checkpoint fills whatever pool it gets (at a million items, 128 MB put a
        # run's peak RSS at ~345 MB, 64 MB at ~290); a commit that runs out is tried again
        # with a roomier pool (memory.retry_roomier), and so is the plan's self-join
        db.execute(f"SET memory_limit = '{STORE_MEMORY_LIMIT}'")
        wal = Path(f"{path}.wal")
        if wal.exists() and wal.stat().st_size > 1 << 20:
            # a killed run's log, replayed into memory when the file was opened (at a million
            # items, ~40 MB of the buffer pool that cannot be evicted): into the file with it
            db.execute("CHECKPOINT")
        self._q: queue.SimpleQueue[_Op | object] = queue.SimpleQueue()
        self._max_batch = max_batch
        self._bulk_interval = bulk_interval
        self._bulk_max = bulk_max
        self._pending = _Pending()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._error: BaseException | None = None
        self._closed = False
        self.commits = 0
        self.rows_committed = 0
        self._thread = threading.Thread(target=self._writer, name=f"pixbatch-store:{self.path.name}", daemon=True)
        self._thread.start()

    @classmethod
    def open(cls, path: str | Path, *, wait: float = 0.0, **kw: Any) -> Store:
        """Open (creating and migrating) a state file for writing; ``StateLocked`` if it is still
        in use after ``wait`` seconds."""
        return cls(path, connect(path, wait=wait), **kw)

    # -- queued writes (any thread, never blocks) ----------------------------------------

    def _put(self, op: _Op) -> None:
        if self._error is not None:
            raise StateError(f"the state file {self.path} can no longer be written: {self._error}")
        if self._closed:
            raise StateError(f"state file {self.path} is closed")
        self._q.put(op)

    def bind_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """Waits asked for from ``loop``'s thread get futures of that loop, all those a commit
        releases completed with one wake-up of the loop (not one per waiter: each wake-up is a
        system call that hands the GIL back and forth between the writer and the loop)."""
        self._loop, self._loop_thread = loop, threading.get_ident()

    def _future(self, wait: bool) -> Waiter | None:
        if not wait:
            return None
        if self._loop is not None and threading.get_ident() == self._loop_thread:
            return self._loop.create_future()
        return concurrent.futures.Future()

    def _release(self, waiters: Iterable[Waiter], exc: BaseException | None = None) -> None:
        mine = []
        for f in waiters:
            if isinstance(f, asyncio.Future):
                mine.append(f)
            else:
                _resolve(f, exc)
        if mine and self._loop is not None:
            try:
                self._loop.call_soon_threadsafe(_settle_all, mine, exc)
            except RuntimeError:  # the loop is closed: nobody is waiting any more
                pass

    def put_item(self, row: ItemRow, *, wait: bool = False, attempt: Attempt | None = None,
                 intent: Intent | None = None) -> Waiter | None:
        """Queue the row's snapshot, with the log row of a submit's intent or outcome.

        With ``wait``, the future completes once the log row is committed (or, without one,
        once the snapshot is).
        """
        f = self._future(wait)
        self._put(_Op("item", (row.snapshot(), attempt, intent), f))
        return f

    def put_event(self, run_id: str | None, key: str | None, kind: str, detail: dict[str, Any] | None = None) -> None:
        self._put(_Op("event", (utcnow(), run_id, key, kind, json.dumps(detail or {}, default=str))))

    def put_output(self, out: OutputRow) -> None:
        self._put(_Op("output", out))

    def put_sql(self, sql: str, params: list | None = None, *, wait: bool = False) -> Waiter | None:
        f = self._future(wait)
        self._put(_Op("sql", (sql, params or []), f))
        return f

    async def commit(self) -> None:
        """Wait until everything queued so far is committed."""
        f = self._future(True)
        self._put(_Op("barrier", None, f))
        await (f if isinstance(f, asyncio.Future) else asyncio.wrap_future(f))  # type: ignore[arg-type]

    def commit_sync(self) -> None:
        f: concurrent.futures.Future = concurrent.futures.Future()
        self._put(_Op("barrier", None, f))
        f.result()

    async def call(self, fn: Callable[[duckdb.DuckDBPyConnection], T]) -> T:
        """Run ``fn(connection)`` on the writer thread after the writes queued before it."""
        f: concurrent.futures.Future = concurrent.futures.Future()
        self._put(_Op("call", fn, f))
        return await asyncio.wrap_future(f)

    def call_sync(self, fn: Callable[[duckdb.DuckDBPyConnection], T]) -> T:
        f: concurrent.futures.Future = concurrent.futures.Future()
        self._put(_Op("call", fn, f))
        return f.result()

    def close(self) -> None:
        if self._closed:
            return
        self._q.put(_STOP)
        self._closed = True
        self._thread.join()
        if self._error is None:
            try:
                self._db.execute("CHECKPOINT")
            except duckdb.Error:
                pass
        self._db.close()
        if self._error is not None:
            raise StateError(f"writing the state file {self.path} failed: {self._error}")

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the writer thread ---------------------------------------------------------------

    def _writer(self) -> None:
        stop = False
        while not stop:
            pend = self._pending
            timeout = None if pend.since is None else max(0.0, pend.since + self._bulk_interval - time.monotonic())
            try:
                first = self._q.get(timeout=timeout)
            except queue.Empty:
                self._guarded([], lambda: self._commit_bulk())
                continue
            batch: list[_Op] = []
            if first is _STOP:
                break
            batch.append(first)  # type: ignore[arg-type]
            while len(batch) < self._max_batch:
                try:
                    nxt = self._q.get_nowait()
                except queue.Empty:
                    break
                if nxt is _STOP:
                    stop = True
                    break
                batch.append(nxt)  # type: ignore[arg-type]
            self._guarded(batch, lambda: self._process(batch))
        self._guarded([], lambda: self._commit_bulk())  # close: nothing stays in memory

    def _guarded(self, batch: list[_Op], fn: Callable[[], None]) -> None:
        try:
            fn()
        except BaseException as exc:  # never let the writer die silently: callers would wait forever
            self._fail(exc, [op.future for op in batch if op.future is not None])

    def _fail(self, exc: BaseException, futures: Iterable[Waiter]) -> None:
        self._error = self._error or exc
        pend, self._pending = self._pending, _Pending()
        self._release([*futures, *pend.log_waiters, *pend.waiters],
                      StateError(f"writing the state file {self.path} failed: {exc}"))

    def _process(self, batch: list[_Op]) -> None:
        for op in batch:
            if op.kind == "call":
                self._commit_log()
                self._commit_bulk()
                try:
                    res = op.payload(self._db)
                except BaseException as exc:  # handed to the caller, not swallowed
                    if is_damage(exc):  # a truncated file is found out when a missing block is read
                        exc = damaged(self.path, exc)
                    _resolve(op.future, exc)
                else:
                    _resolve(op.future, result=res)
            else:
                self._pending.add(op)
        self._commit_log()
        pend = self._pending
        if pend.waiters or pend.ops >= self._bulk_max or (
                pend.since is not None and time.monotonic() - pend.since >= self._bulk_interval):
            self._commit_bulk()

    def _transaction(self, body: Callable[[duckdb.DuckDBPyConnection], None]) -> None:
        if self._error is not None:
            raise StateError(f"state file {self.path} is not writable: {self._error}")
        db = self._db
        db.execute("BEGIN TRANSACTION")
        try:
            body(db)
            db.execute("COMMIT")
        except BaseException:
            try:
                db.execute("ROLLBACK")
            except duckdb.Error:
                pass
            raise
        self.commits += 1

    def _commit_log(self) -> None:
        """Commit the intents and outcomes queued so far (one INSERT: atomic and durable by
        itself, so no explicit transaction); then release their waiters."""
        pend = self._pending
        if not pend.intents and not pend.outcomes:
            return
        if self._error is not None:
            raise StateError(f"state file {self.path} is not writable: {self._error}")
        intents, outcomes, waiters = pend.intents, pend.outcomes, pend.log_waiters
        retry_roomier(lambda: insert_log(self._db, intents, outcomes), self._db)  # one INSERT: all or nothing
        self.commits += 1
        pend.intents, pend.outcomes, pend.log_waiters = [], [], []
        self.rows_committed += len(intents) + len(outcomes)
        self._release(waiters)

    def _commit_bulk(self) -> None:
        """Commit item snapshots, events, outputs and SQL queued so far; release their waiters."""
        self._commit_log()
        pend = self._pending
        if not pend.ops and not pend.waiters:
            return

        def body(db: duckdb.DuckDBPyConnection) -> None:
            if pend.items:
                update_items(db, list(pend.items.values()))
            if pend.events:
                insert_events(db, pend.events)
            for o in pend.outputs.values():
                upsert_output(db, o)
            for sql, params in pend.sqls:
                db.execute(sql, params)

        if pend.ops:
            # one transaction, rolled back on failure: all or nothing, so it can be tried again
            retry_roomier(lambda: self._transaction(body), self._db)
        self._pending = _Pending()
        self.rows_committed += len(pend.items) + len(pend.events)
        self._release(pend.waiters)

