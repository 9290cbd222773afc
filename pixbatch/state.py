"""The run state in DuckDB, behind one class: ``Store``.

What makes a run resumable
--------------------------
Every item (one unique request, keyed by ``items.key``) has a lifecycle in ``items.state``
(see ``migrations.m002_run_state``). Two facts must survive any crash:

1. the **intent**, committed before the POST leaves (the runner waits for it): the attempt
   number and the budget reservation;
2. the **outcome**, committed as soon as it is known, ahead of anything later about the
   item: above all the ``request_id`` of a 202 (the runner polls meanwhile: a poll is free).

Both are rows of ``submit_log``, an append-only table (``m004_submit_log``): each batch of
them is one INSERT, atomic and durable by itself, which is the whole cost of the critical
path. ``items`` (and events and outputs) follow in bulk, at most ``bulk_interval`` later;
after a crash ``recover()`` rebuilds every in-flight item from the log: accepted -> SUBMITTED
(poll it, never resend it); an intent without an answer -> AMBIGUOUS (the POST may have
been accepted and charged; it is only resent on request, ``--retry-ambiguous``). Nothing
that matters is lost with the bulk rows: a settled item whose row was lost is polled again
(polling is free) and settled again. Reservations live in the tables too, so the budget
survives crashes: money committed = charged + reserved (+ the reservations of abandoned
ambiguous attempts, in the log).

One writer
----------
DuckDB lets one process open a file read-write and is slow at single-row transactions
(about 1,400 commits/s here) but fast at set-based ones. So the store owns one connection
used by one thread; callers (the asyncio runner) *queue* writes and never touch DuckDB on
the event loop. The thread drains the queue and commits what it found as a group: the log
rows at once (one INSERT), the rest in one transaction when due (item snapshots become one
``UPDATE items ... FROM (SELECT unnest(?), ...)``, events one ``INSERT ... SELECT
unnest(...)``). A caller that must know its write is durable passes ``wait=True`` or awaits
``commit()``; reads run on the same thread, in queue order, after everything queued before
them is committed, through ``call()``.

Status while a run holds the lock
---------------------------------
Other processes cannot open the file at all while a run has it, so the runner also keeps
``<state>.status.json`` up to date (atomically replaced about every second and at exit).
``read_status(path)`` returns the same ``StatusSnapshot`` from the database when it can
open it and from that file when it cannot.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

import duckdb

from .errors import StateError, StateLocked
from .items import WorkItem
from .migrations import connect
from .pricing import PriceTable

T = TypeVar("T")

#: item states
PENDING, SUBMITTING, SUBMITTED = "PENDING", "SUBMITTING", "SUBMITTED"
COMPLETED, FAILED, ERROR = "COMPLETED", "FAILED", "ERROR"
AMBIGUOUS, FAILED_VALIDATION, BLOCKED = "AMBIGUOUS", "FAILED_VALIDATION", "BLOCKED"
ITEM_STATES = (PENDING, SUBMITTING, SUBMITTED, COMPLETED, FAILED, ERROR, AMBIGUOUS, FAILED_VALIDATION, BLOCKED)
#: an upstream item in one of these states blocks its downstream items
BLOCKING_STATES = frozenset({FAILED, ERROR, FAILED_VALIDATION, BLOCKED, AMBIGUOUS})
TERMINAL_STATES = frozenset({COMPLETED, FAILED, ERROR, FAILED_VALIDATION, BLOCKED})
IN_FLIGHT_STATES = frozenset({SUBMITTING, SUBMITTED})

INGEST_BATCH = 20_000


def utcnow() -> datetime:
    """Naive UTC (DuckDB TIMESTAMP)."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


def status_file_path(state_path: str | Path) -> Path:
    p = Path(state_path)
    return p.with_name(p.name + ".status.json")


# -- rows ---------------------------------------------------------------------------------

#: the columns of ``items`` a run changes, with their DuckDB types (snapshot order)
MUTABLE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("state", "VARCHAR"), ("request_id", "VARCHAR"), ("gateway_status", "VARCHAR"), ("error", "VARCHAR"),
    ("reserved_micros", "BIGINT"), ("charged_micros", "BIGINT"), ("tier", "VARCHAR"),
    ("media_url", "VARCHAR"), ("media_type", "VARCHAR"), ("output_width", "INTEGER"),
    ("output_height", "INTEGER"), ("polls", "INTEGER"), ("submitted_at", "TIMESTAMP"),
    ("started_at", "TIMESTAMP"), ("finished_at", "TIMESTAMP"), ("run_id", "VARCHAR"),
    ("attempts", "INTEGER"), ("polling_path", "VARCHAR"),
)
_FIXED = ("key", "step", "op", "idx", "body", "output_name", "upstream", "input_width", "input_height",
          "est_low_micros", "est_high_micros")
ROW_COLUMNS = _FIXED + tuple(c for c, _ in MUTABLE_COLUMNS)


@dataclass(slots=True)
class ItemRow:
    """The runner's working copy of one ``items`` row (mutable; snapshotted when queued)."""

    key: str
    step: str
    op: str
    idx: int
    body: str  # canonical JSON, upstream placeholders kept
    output_name: str | None
    upstream: str | None
    input_width: int | None
    input_height: int | None
    est_low_micros: int
    est_high_micros: int
    state: str = PENDING
    request_id: str | None = None
    gateway_status: str | None = None
    error: str | None = None
    reserved_micros: int = 0
    charged_micros: int | None = None
    tier: str | None = None
    media_url: str | None = None
    media_type: str | None = None
    output_width: int | None = None
    output_height: int | None = None
    polls: int = 0
    submitted_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    run_id: str | None = None
    attempts: int = 0
    polling_path: str | None = None
    rowid: int | None = None  # DuckDB's row id, for fast updates (checked against the key)

    def snapshot(self) -> tuple:
        return (self.key, self.rowid) + tuple(getattr(self, c) for c, _ in MUTABLE_COLUMNS)

    @property
    def input_size(self) -> tuple[int, int] | None:
        return (self.input_width, self.input_height) if self.input_width and self.input_height else None

    @property
    def body_dict(self) -> dict[str, Any]:
        return json.loads(self.body)

    @classmethod
    def from_db(cls, row: tuple) -> ItemRow:
        r = cls(*row)
        r.polls = r.polls or 0
        r.attempts = r.attempts or 0
        r.reserved_micros = r.reserved_micros or 0
        return r


@dataclass(frozen=True, slots=True)
class Intent:
    """A submit about to be sent: its ``submit_log`` row is committed before the POST leaves."""

    key: str
    n: int  # the item's attempt number (items.attempts after this submit)
    run_id: str
    intent_at: datetime
    reserved_micros: int


@dataclass(frozen=True, slots=True)
class Attempt:
    """A submit's outcome: its ``submit_log`` row is committed as soon as it is known (the
    ``attempts`` view shows intent and outcome side by side)."""

    key: str
    n: int
    run_id: str
    intent_at: datetime
    reserved_micros: int
    request_id: str | None = None
    accepted_at: datetime | None = None
    http_status: int | None = None
    outcome: str | None = None  # accepted|rejected|ambiguous (|abandoned, set later)
    polling_path: str | None = None  # of an accepted one

    @classmethod
    def of(cls, intent: Intent, outcome: str, **kw: Any) -> Attempt:
        return cls(intent.key, intent.n, intent.run_id, intent.intent_at, intent.reserved_micros, outcome=outcome, **kw)


@dataclass(frozen=True, slots=True)
class OutputRow:
    key: str
    path: str  # relative to the output directory
    sha256: str
    bytes: int
    width: int | None
    height: int | None
    media_type: str | None


@dataclass(frozen=True, slots=True)
class Totals:
    """Money in the whole state file (micro-dollars)."""

    charged_micros: int
    reserved_micros: int  # SUBMITTING/SUBMITTED reservations plus AMBIGUOUS ones (money at risk)
    abandoned_micros: int  # reservations of ambiguous attempts that were resent (--retry-ambiguous)
    at_risk_micros: int  # reservations of AMBIGUOUS items (part of reserved_micros)

    @property
    def committed_micros(self) -> int:
        """What the budget must cover: spent, plus everything that may still be charged."""
        return self.charged_micros + self.reserved_micros + self.abandoned_micros


@dataclass(frozen=True, slots=True)
class IngestResult:
    scope: str
    items: int  # unique items in the manifest
    new: int  # inserted now
    aliases: int
    reused: bool  # the expansion was unchanged: nothing written


@dataclass(frozen=True)
class StatusSnapshot:
    """Progress of the manifest a state file was last run with (what ``status`` shows)."""

    state_path: str
    source: str  # "database" | "status-file"
    running: bool
    updated_at: str  # ISO 8601 UTC
    run_id: str | None = None
    pid: int | None = None
    outcome: str | None = None
    manifest_path: str | None = None
    steps: dict[str, dict[str, int]] = field(default_factory=dict)  # step -> state -> count
    charged_micros: int = 0
    reserved_micros: int = 0
    at_risk_micros: int = 0
    budget_micros: int | None = None
    estimate_low_micros: int | None = None
    estimate_high_micros: int | None = None
    rate_per_s: float | None = None  # items finished per second (running only)
    eta_s: float | None = None

    def totals(self) -> dict[str, int]:
        out: dict[str, int] = {s: 0 for s in ITEM_STATES}
        for counts in self.steps.values():
            for s, n in counts.items():
                out[s] = out.get(s, 0) + n
        return out

    @property
    def ambiguous(self) -> int:
        return self.totals().get(AMBIGUOUS, 0)

    def to_json(self) -> str:
        return json.dumps({"version": 1, **asdict(self)}, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StatusSnapshot:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def write_status_file(snapshot: StatusSnapshot) -> Path:
    """Atomically replace ``<state>.status.json`` (temp file + os.replace)."""
    target = status_file_path(snapshot.state_path)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    tmp.write_text(snapshot.to_json(), "utf-8")
    os.replace(tmp, target)
    return target


def read_status(state_path: str | Path) -> StatusSnapshot:
    """Progress per step from the state file (with what a killed run's submit log knows applied:
    ``open_for_reading``), or from its status file while a run holds it."""
    state_path = Path(state_path)
    try:
        db = open_for_reading(state_path)
    except StateLocked:
        sf = status_file_path(state_path)
        try:
            data = json.loads(sf.read_text("utf-8"))
        except (FileNotFoundError, json.JSONDecodeError):
            raise StateLocked(f"state file {state_path} is in use by a running pixbatch and its status file {sf} "
                              "is not readable yet; try again in a second.") from None
        snap = StatusSnapshot.from_dict(data)
        return StatusSnapshot(**{**asdict(snap), "source": "status-file", "state_path": str(state_path)})
    try:
        return snapshot_from_db(db, str(state_path))
    finally:
        db.close()


def snapshot_from_db(db: duckdb.DuckDBPyConnection, state_path: str, *, running: bool = False) -> StatusSnapshot:
    names = {r[0] for r in db.execute("SELECT table_name FROM information_schema.tables").fetchall()}
    if "items" not in names:
        return StatusSnapshot(state_path=state_path, source="database", running=False, updated_at=_iso(utcnow()))
    run = db.execute(
        "SELECT run_id, pid, outcome, manifest_path, budget_micros, estimate_low_micros, estimate_high_micros, "
        "json_extract_string(options, '$.scope') FROM runs ORDER BY started_at DESC LIMIT 1").fetchone()
    scope = run[7] if run else None
    where, params = ("WHERE scope = ?", [scope]) if scope else ("", [])
    steps: dict[str, dict[str, int]] = {}
    for step, st, n in db.execute(
            f"SELECT step, state, count(*) FROM items {where} GROUP BY 1, 2 "
            "ORDER BY min(min(rowid)) OVER (PARTITION BY step), 2", params).fetchall():  # steps in manifest order
        steps.setdefault(step, {})[st] = n
    t = totals(db)
    return StatusSnapshot(
        state_path=state_path, source="database", running=running, updated_at=_iso(utcnow()),
        run_id=run[0] if run else None, pid=run[1] if run else None, outcome=run[2] if run else None,
        manifest_path=run[3] if run else None, steps=steps, charged_micros=t.charged_micros,
        reserved_micros=t.reserved_micros, at_risk_micros=t.at_risk_micros,
        budget_micros=run[4] if run else None, estimate_low_micros=run[5] if run else None,
        estimate_high_micros=run[6] if run else None)


def totals(db: duckdb.DuckDBPyConnection) -> Totals:
    charged, reserved, at_risk = db.execute(
        "SELECT coalesce(sum(charged_micros), 0), coalesce(sum(reserved_micros), 0), "
        "coalesce(sum(reserved_micros) FILTER (WHERE state = 'AMBIGUOUS'), 0) FROM items").fetchone()
    abandoned = db.execute(
        "SELECT coalesce(sum(reserved_micros), 0) FROM submit_log WHERE event = 'abandoned'").fetchone()[0]
    return Totals(int(charged), int(reserved), int(abandoned), int(at_risk))


def _iso(dt: datetime) -> str:
    return dt.replace(tzinfo=timezone.utc).isoformat().replace("+00:00", "Z")


# -- the store ------------------------------------------------------------------------------

_STOP = object()


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
    most that much of them, and nothing that matters: ``absorb_log`` rebuilds every
    in-flight item from the log rows, which are committed before their waiters go on.
    """

    def __init__(self, path: str | Path, db: duckdb.DuckDBPyConnection, *, max_batch: int = 50_000,
                 bulk_interval: float = 1.0, bulk_max: int = 20_000):
        self.path = Path(path)
        self._db = db
        # DuckDB checkpoints (rewrites changed row groups) whenever the WAL passes 16 MB; with
        # a stream of small updates that halved throughput. Checkpoint rarely, and at close.
        db.execute("SET checkpoint_threshold = '1GB'")
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
        insert_log(self._db, intents, outcomes)
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
                _update_items(db, list(pend.items.values()))
            if pend.events:
                _insert_events(db, pend.events)
            for o in pend.outputs.values():
                db.execute("INSERT OR REPLACE INTO outputs (key, path, sha256, bytes, width, height, media_type, "
                           "downloaded_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                           [o.key, o.path, o.sha256, o.bytes, o.width, o.height, o.media_type, utcnow()])
            for sql, params in pend.sqls:
                db.execute(sql, params)

        if pend.ops:
            self._transaction(body)
        self._pending = _Pending()
        self.rows_committed += len(pend.items) + len(pend.events)
        self._release(pend.waiters)


def _update_items(db: duckdb.DuckDBPyConnection, snaps: list[tuple]) -> None:
    """One UPDATE for a group of item snapshots (key, rowid, mutable columns...).

    Joining on ``rowid`` is 3-4x faster than on the key at a million rows (no scan of the
    key column); the key is checked too, and if any row did not match (no rowid, or a row
    id that moved) the whole group is applied again by key: same values, so idempotent.
    """
    cols = [list(c) for c in zip(*snaps)]
    # typed casts only where DuckDB cannot infer the type (all NULL): casting lists is slower
    sel = ", ".join([
        f"unnest(?::{t}[]) AS {c}" if all(v is None for v in vals) else f"unnest(?) AS {c}"
        for (c, t), vals in zip((("key", "VARCHAR"), ("rid", "BIGINT"), *MUTABLE_COLUMNS), cols)])
    sets = ", ".join(f"{c} = u.{c}" for c, _ in MUTABLE_COLUMNS)
    sql = f"UPDATE items SET {sets}, updated_at = now()::TIMESTAMP FROM (SELECT {sel}) u WHERE "
    n = db.execute(sql + "items.rowid = u.rid AND items.key = u.key", cols).fetchone()[0]
    if n != len(snaps):
        db.execute(sql + "items.key = u.key", cols)


def insert_log(db: duckdb.DuckDBPyConnection, intents: Iterable[Intent] = (),
               outcomes: Iterable[Attempt] = ()) -> None:
    """Append intents and outcomes to ``submit_log`` in one statement."""
    rows = [(i.key, i.n, i.run_id, i.intent_at, "intent", i.reserved_micros, None, None, None) for i in intents]
    rows += [(a.key, a.n, a.run_id, a.accepted_at or utcnow(), a.outcome, a.reserved_micros, a.request_id,
              a.http_status, a.polling_path) for a in outcomes]
    if not rows:
        return
    cols = [list(c) for c in zip(*rows)]
    # typed casts only where DuckDB cannot infer the type (all NULL): casting lists is slower
    sel = ", ".join(f"unnest(?::{t}[])" if all(v is None for v in vals) else "unnest(?)"
                    for t, vals in zip(_LOG_TYPES, cols))
    db.execute("INSERT INTO submit_log (key, n, run_id, ts, event, reserved_micros, request_id, http_status, "
               f"polling_path) SELECT {sel}", cols)


_LOG_TYPES = ("VARCHAR", "INTEGER", "VARCHAR", "TIMESTAMP", "VARCHAR", "BIGINT", "VARCHAR", "INTEGER", "VARCHAR")


def log_attempt(db: duckdb.DuckDBPyConnection, attempt: Attempt) -> None:
    """Write a whole attempt (its intent, and its outcome unless "pending"): for tools and tests."""
    intent = Intent(attempt.key, attempt.n, attempt.run_id, attempt.intent_at, attempt.reserved_micros)
    done = attempt.outcome not in (None, "pending")
    insert_log(db, [intent], [attempt] if done and attempt.outcome != "abandoned" else [])
    if attempt.outcome == "abandoned":
        insert_log(db, (), [replace(attempt, outcome="ambiguous"), replace(attempt, outcome="abandoned")])


def abandon(db: duckdb.DuckDBPyConnection, keys: list[str], run_id: str) -> None:
    """--retry-ambiguous: the ambiguous attempts of ``keys`` are given up (their money stays counted)."""
    db.execute("INSERT INTO submit_log (key, n, run_id, ts, event, reserved_micros) SELECT key, n, ?, "
               "now()::TIMESTAMP, 'abandoned', reserved_micros FROM attempts WHERE outcome = 'ambiguous' AND "
               "list_contains(?::VARCHAR[], key)", [run_id, keys])


def _insert_events(db: duckdb.DuckDBPyConnection, events: list[tuple]) -> None:
    ts, run, key, kind, detail = (list(c) for c in zip(*events))
    db.execute("INSERT INTO events (ts, run_id, key, kind, detail) SELECT unnest(?::TIMESTAMP[]), "
               "unnest(?::VARCHAR[]), unnest(?::VARCHAR[]), unnest(?::VARCHAR[]), unnest(?::JSON[])",
               [ts, run, key, kind, detail])


# -- set-based operations (run on the writer thread through Store.call) ---------------------


def expansion_scope(items: Iterable[WorkItem]) -> tuple[str, int]:
    """A digest of an expansion (keys, places and names, in order): equal digests, same work."""
    import hashlib

    h = hashlib.sha256()
    n = 0
    for it in items:
        h.update(f"{it.key}\t{it.step}\t{it.index}\t{it.output_name}\t{it.input_size}\n".encode())
        n += 1
    return h.hexdigest()[:32], n


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
                       "unnest(?::VARCHAR[]) AS tier",
                       [[i.key for i in buf], [i.step for i in buf], [i.op for i in buf], [i.index for i in buf],
                        [i.body_json for i in buf], [i.input_id for i in buf], [i.output_name for i in buf],
                        [i.upstream for i in buf],
                        [i.input_size[0] if i.input_size else None for i in buf],
                        [i.input_size[1] if i.input_size else None for i in buf],
                        [p.low_micros for p in prices], [p.high_micros for p in prices],
                        [p.high.name if p.exact else f"{p.low.name} .. {p.high.name}" for p in prices]])
            db.execute("UPDATE items SET scope = ? FROM _ingest n WHERE items.key = n.key", [scope])
            db.execute("INSERT INTO items (key, step, op, idx, body, input_id, output_name, upstream, input_width, "
                       "input_height, est_low_micros, est_high_micros, tier, scope, attempts) "
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
        keys = [r[0] for r in db.execute(
            "SELECT key FROM items WHERE state = 'SUBMITTING' AND request_id IS NULL").fetchall()] if decide else []
        if keys:
            db.execute("UPDATE items SET state = 'AMBIGUOUS', run_id = ?, updated_at = now()::TIMESTAMP, error = ? "
                       "WHERE state = 'SUBMITTING' AND request_id IS NULL", [run_id, _AMBIGUOUS_ERROR])
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
    called by readers that open the file read-write when no run holds it."""
    row = db.execute("SELECT run_id FROM runs WHERE finished_at IS NULL ORDER BY started_at DESC LIMIT 1").fetchone()
    return recover(db, row[0], decide=False) if row else 0


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
            pass
        else:
            try:
                absorb_crashed_runs(db)
            finally:
                db.close()
    return connect(path, read_only=True)


def block_downstream(db: duckdb.DuckDBPyConnection, scope: str, run_id: str) -> int:
    """PENDING items whose upstream ended in a blocking state become BLOCKED (transitively)."""
    total = 0
    while True:
        rows = db.execute(
            "SELECT i.key, u.key, u.state FROM items i JOIN items u ON u.key = i.upstream "
            "WHERE i.scope = ? AND i.state = 'PENDING' AND u.state IN ('FAILED', 'ERROR', 'FAILED_VALIDATION', "
            "'BLOCKED', 'AMBIGUOUS')", [scope]).fetchall()
        if not rows:
            return total
        keys = [r[0] for r in rows]
        reasons = [f"upstream item {r[1]} ended {r[2]}" for r in rows]
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


def select_rows(db: duckdb.DuckDBPyConnection, where: str, params: list, *, order: str = "idx",
                limit: int | None = None) -> list[ItemRow]:
    cols = ", ".join(f"i.{c}" for c in (*ROW_COLUMNS, "rowid"))
    sql = f"SELECT {cols} FROM items i WHERE {where} ORDER BY {order}" + (f" LIMIT {int(limit)}" if limit else "")
    return [ItemRow.from_db(r) for r in db.execute(sql, params).fetchall()]


def ready_page(db: duckdb.DuckDBPyConnection, scope: str, step: str, after_idx: int, limit: int,
               states: tuple[str, ...] = (PENDING,), *, chained: bool = True) -> list[tuple[ItemRow, ItemRow | None]]:
    """PENDING items of a step whose upstream (if any) is COMPLETED, with that upstream row.

    Two light queries instead of one wide join: the page's row ids (joining only the
    upstream's key and state), then those rows. At 1,000,000 items a page of 2,000 takes
    20-35 ms this way, 150-300 ms as one join of whole rows (the writer thread, and every
    intent waiting on it, stood still meanwhile). ``chained=False`` (a step that feeds on no
    other step) needs no join at all.
    """
    cols = ", ".join(f"i.{c}" for c in (*ROW_COLUMNS, "rowid"))
    where = "i.scope = ? AND i.step = ? AND i.idx > ? AND list_contains(?::VARCHAR[], i.state)"
    params = [scope, step, after_idx, list(states)]
    if not chained:
        rows = db.execute(f"SELECT {cols} FROM items i WHERE {where} ORDER BY i.idx LIMIT ?", [*params, limit]).fetchall()
        return [(ItemRow.from_db(r), None) for r in rows]
    ids = db.execute(
        f"SELECT i.rowid, u.rowid FROM items i LEFT JOIN (SELECT key, state, rowid FROM items) u ON u.key = i.upstream "
        f"WHERE {where} AND (i.upstream IS NULL OR u.state = 'COMPLETED') ORDER BY i.idx LIMIT ?",
        [*params, limit]).fetchall()
    if not ids:
        return []
    want = [a for a, _ in ids] + [b for _, b in ids if b is not None]
    by_rowid = {r[-1]: ItemRow.from_db(r) for r in db.execute(
        f"SELECT {cols} FROM items i SEMI JOIN (SELECT unnest(?::BIGINT[]) AS r) w ON i.rowid = w.r", [want]).fetchall()}
    return [(by_rowid[a], by_rowid[b] if b is not None else None) for a, b in ids]


def counts_by_step(db: duckdb.DuckDBPyConnection, scope: str) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for step, st, n in db.execute("SELECT step, state, count(*) FROM items WHERE scope = ? GROUP BY 1, 2 "
                                  "ORDER BY min(min(rowid)) OVER (PARTITION BY step), 2", [scope]).fetchall():
        out.setdefault(step, {})[st] = n
    return out


def bulk_insert_items_for_bench(db: duckdb.DuckDBPyConnection, n: int, scope: str = "bench") -> list[str]:
    """Synthetic rows for ``bench/state.py`` (not used by runs)."""
    keys = [f"{i:032x}" for i in range(n)]
    for b in range(0, n, INGEST_BATCH):
        ks = keys[b:b + INGEST_BATCH]
        db.execute("INSERT INTO items (key, step, op, idx, body, est_low_micros, est_high_micros, scope, attempts) "
                   "SELECT unnest(?::VARCHAR[]), 'bench', 'edit', unnest(?::BIGINT[]), '{}', 10000, 10000, ?, 0",
                   [ks, list(range(b, b + len(ks))), scope])
    return keys
