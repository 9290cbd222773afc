"""The rest of an expansion, read into the state file while the run sends what is already there.

``prepare`` writes the first batch (``prepare.FIRST_BATCH`` unique items) before anything is
sent; ``IngestStream.run()`` writes the rest, batch by batch in expansion order: the walk
(pure Python: expansion, keys, prices, output names) on the event loop in short slices, each
write on another thread. Into a fresh items table (the common case: a first run) the writes go
through a DuckDB connection and thread of their own, ``COMMIT_BATCHES`` batches a transaction
(``_Appender``); otherwise (a changed manifest on a resume: keys already in the file keep their
row) each batch is a transaction of the store's writer thread, queued behind the intents like
any other write. After each commit the feeder is woken (``on_batch``): the new items are
sendable at once.

What streaming changes, and what it keeps:

- **Budget.** The total is not known before the walk ends. After a batch (at most every
  ``POSITION_EVERY`` seconds, and only when there is a budget) the pre-check runs again on
  what is in the file so far (charged + the least the in-flight and the
  PENDING items of the expansion read so far can cost): a lower bound of the final figure,
  so a refusal is never wrong, and it comes as soon as the items read prove it. Items sent
  before that point fitted the budget (the ledger never lets charged + reserved pass it)
  and are collected; nothing more is sent (exit 3, as before). An expansion that fits in the
  first batch gets the exact pre-check before anything is sent, as before.
- **Output names** are checked as the walk passes them (``NameCheck``): a name that escapes
  output_dir or repeats one earlier in its step raises before its batch is written, so no
  item with a bad name is ever sent or downloaded. The batches written before it stay in the
  file (their items and names were fine; a fixed manifest reuses them by key, since names
  are not part of keys) and the run stops with the problems (``ManifestError``, exit 2).
  Within the first batch, nothing is kept and nothing is sent, as before.
- **Order.** Batches are written in expansion order, so an upstream item is always in the
  file before the items chained on it; the feeder's ``ready_page`` already waits for an
  upstream to complete.
- **Crash.** The run's row says ``ingest: partial`` until the walk ends; a resume of the
  same manifest walks again from the start (keys already in the file keep their row and
  state: nothing is sent twice) and adds the rest.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .. import state as st
from .prepare import Position, finish_ingest, position

#: unique items per batch after the first: big enough to keep DuckDB's per-statement cost
#: small, small enough that a write does not hold the writer thread (and the intents queued
#: behind it) for long
BATCH = 10_000
#: unique items walked between two looks at the clock (about 2.5 ms of CPU)
SLICE = 256
#: seconds of walking between two turns of the event loop. The walk holds the GIL meanwhile, so
#: the sends wait up to this long; in exchange the expansion is all in (the budget check exact,
#: the total known) in a fraction of the time it takes when the walk yields every slice
TURN = 0.02
#: the walk starts once the first answers are in (``started()``), or after this many seconds:
#: the first batch is in the file, and the feeder's first page and sends should not queue
#: behind a batch being walked and written
START_WAIT = 1.0
#: batches handed to the writer thread and not written yet, at most: the walk goes on while they
#: are written (a walk and a write take about as long), and waits only when the writer is behind
WRITES_QUEUED = 2
#: seconds between two reads of the money position while the stream goes on (``_write``)
POSITION_EVERY = 2.0
#: batches of a fresh expansion committed together by the ingest's own connection (``_Appender``):
#: 50,000 rows at the default batch
COMMIT_BATCHES = 5


@dataclass
class IngestProgress:
    """What the walk has done so far (the status file and the progress display show it)."""

    walked: int = 0  # items walked (repeats included)
    expected: int | None = None  # items the expansion has (repeats included), counted without expanding
    items: int = 0  # unique items in the file
    done: bool = False
    seconds: float = 0.0
    # where the seconds went: walking (the event loop's thread), waiting for the writer to take the
    # next batch, and writing (the writer thread, alongside the walk)
    walk_s: float = 0.0
    wait_s: float = 0.0
    write_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"walked": self.walked, "expected": self.expected, "items": self.items, "done": self.done,
                "seconds": round(self.seconds, 3), "walk_s": round(self.walk_s, 3), "wait_s": round(self.wait_s, 3),
                "write_s": round(self.write_s, 3)}


class IngestStream:
    def __init__(self, ingest: st.Ingest, store: st.Store, *, manifest: Any, run_id: str, scope: str,
                 steps: list[str], on_batch: Callable[[Position | None], None],
                 on_done: Callable[[tuple[int, int], dict[str, list[str]]], None], batch: int = BATCH,
                 started: Callable[[], bool] = lambda: True, budgeted: bool = True):
        self.ingest = ingest
        self.store = store
        self.manifest = manifest
        self.run_id = run_id
        self.scope = scope
        self.steps = steps
        self.on_batch = on_batch
        self.on_done = on_done
        self.batch = batch
        self.started = started
        self.budgeted = budgeted  # the budget pre-check wants the money position after the batches
        self._next_position = 0.0
        self.progress = IngestProgress(walked=ingest.walked, items=ingest.items)
        self.t0 = time.monotonic()

    def _count(self) -> None:
        from ..expand import count_items

        try:
            n = getattr(self.manifest, "input_count", None)  # validation counted them
            self.progress.expected = sum(count_items(self.manifest, n_inputs=n).values())
        except Exception:  # noqa: BLE001 - a count is only for the display; the walk says what is there
            self.progress.expected = None

    async def run(self) -> None:
        """Walk and write until the expansion is all in; then ``on_done``. Raises what the walk raises.

        The walk runs on the event loop in slices of ``SLICE`` items (a few milliseconds each),
        not in a thread: a thread that holds the GIL for whole batches makes every wake-up of
        the loop wait for it (the GIL convoy), and the sends crawl. Each batch is written by
        the store's writer thread (DuckDB works without the GIL) while the next one is walked.
        """
        ing, store, p = self.ingest, self.store, self.progress
        if getattr(self.manifest, "input_count", None) is not None:
            self._count()  # from validation's count: no second pass over the files
        else:
            await asyncio.to_thread(self._count)
        wait_until = time.monotonic() + START_WAIT
        while not self.started() and time.monotonic() < wait_until:
            await asyncio.sleep(0.01)
        writing: collections.deque[asyncio.Future] = collections.deque()
        appender = await _Appender.open(store, self) if ing.append_only else None
        try:
            await self._walk(writing, appender)
        finally:
            for queued in writing:  # behind a failure or a cancel: their outcome is the failure's
                queued.add_done_callback(lambda f: f.cancelled() or f.exception())
            if appender is not None:
                # after the writes queued before it: what they wrote is kept (a cancelled or failed
                # walk, like a finished one; a resume walks again from the start either way)
                await asyncio.shield(appender.close())
        est, aliases = await store.call(lambda db: finish_ingest(db, run_id=self.run_id, scope=self.scope,
                                                                 steps=self.steps))
        p.done, p.seconds = True, time.monotonic() - self.t0
        self.on_done(est, aliases)

    async def _walk(self, writing: collections.deque[asyncio.Future], appender: _Appender | None) -> None:
        ing, store, p = self.ingest, self.store, self.progress
        while not ing.done:
            batch = ing.batch()
            turn = time.monotonic() + TURN
            while len(batch) < self.batch and not ing.done:
                t = time.monotonic()
                ing.take(min(SLICE, self.batch - len(batch)), into=batch)
                now = time.monotonic()
                p.walk_s += now - t
                if now >= turn:
                    await asyncio.sleep(0)
                    turn = time.monotonic() + TURN
            t = time.monotonic()
            while len(writing) >= WRITES_QUEUED:
                self._written(await writing.popleft())
            p.wait_s += time.monotonic() - t
            if appender is not None:
                writing.append(appender.write(batch, last=ing.done))
            else:
                writing.append(asyncio.ensure_future(store.call(lambda db, b=batch: self._write(db, b))))
        t = time.monotonic()
        while writing:
            self._written(await writing.popleft())
        p.wait_s += time.monotonic() - t

    def _write(self, db: Any, batch: st.IngestBatch, appender: _Appender | None = None,
               last: bool = False) -> Position | None:
        """One batch into the file; the money position after it when the budget check wants it, at most
        every ``POSITION_EVERY`` seconds and after the last (it reads every PENDING item: after every batch of a million-item
        expansion that grows quadratic). Items sent meanwhile are held by the ledger, which never lets
        charged + reserved pass the budget; the position only makes the refusal come early."""
        t = time.monotonic()
        if appender is None:
            self.ingest.write(db, batch)
        elif not appender.add(batch, last):
            self.progress.write_s += time.monotonic() - t
            return None  # not committed yet: nothing new to send or to count
        now = time.monotonic()
        self.progress.write_s += now - t
        if not self.budgeted or now < self._next_position and not self.ingest.done:
            return None  # (the last batch always looks: the figure is then exact)
        self._next_position = now + POSITION_EVERY
        return position(db, self.scope)

    def _written(self, pos: Position | None) -> None:
        p, ing = self.progress, self.ingest
        p.walked, p.items, p.seconds = ing.walked, ing.items, time.monotonic() - self.t0
        self.on_batch(pos)


class _Appender:
    """The rest of a fresh expansion (the items table was empty) written through a DuckDB connection
    and a thread of its own, ``COMMIT_BATCHES`` batches a transaction.

    DuckDB writes the full row groups of a transaction straight into the file (compressed once, no
    WAL; ``state.connection.ROW_GROUP_SIZE``): 1M rows in transactions of 50,000 beside the walk,
    121,000 -> 155,000 rows/s against one transaction per batch of 10,000. On
    the store's connection such a transaction would hold back the run's own writes (an intent
    must be committed before its POST); on a connection of its own it only appends rows that no
    one else writes, so it never conflicts with the run's updates of the rows already in. The
    run sees a transaction's items when it commits, as it saw each batch's before.
    """

    def __init__(self, stream: IngestStream, cursor: Any):
        self.stream = stream
        self.cursor = cursor
        self.open_batches: int | None = None  # batches in the open transaction (None: none open)
        self.failed = False  # a write failed: the batches queued behind it are not written
        self.pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="pixbatch-ingest")

    @classmethod
    async def open(cls, store: st.Store, stream: IngestStream) -> _Appender:
        return cls(stream, await store.call(st.cursor))

    def write(self, batch: st.IngestBatch, *, last: bool) -> asyncio.Future:
        return asyncio.get_running_loop().run_in_executor(self.pool, self.stream._write, self.cursor, batch, self,
                                                          last)

    def add(self, batch: st.IngestBatch, last: bool) -> bool:
        """(The ingest's thread) one batch into the open transaction; True when it committed."""
        db = self.cursor
        if self.failed:
            raise RuntimeError("an earlier write of this stream failed")  # (never a gap in the file)
        if self.open_batches is None:
            db.execute("BEGIN TRANSACTION")
            self.open_batches = 0
        try:
            self.stream.ingest.write(db, batch, transaction=False)
        except BaseException:
            self.open_batches, self.failed = None, True
            db.execute("ROLLBACK")
            raise
        self.open_batches += 1
        if self.open_batches < COMMIT_BATCHES and not last:
            return False
        self.open_batches = None
        db.execute("COMMIT")
        return True

    async def close(self) -> None:
        """Commit what is written (after the writes queued before), close the connection and the thread."""
        def finish() -> None:
            try:
                if self.open_batches is not None:
                    self.open_batches = None
                    self.cursor.execute("COMMIT")
            finally:
                self.cursor.close()

        try:
            await asyncio.get_running_loop().run_in_executor(self.pool, finish)
        finally:
            self.pool.shutdown(wait=False)


class streamer:  # noqa: N801 - a namespace of the engine's hooks around a stream's task
    """Starting and stopping a stream's task, and merging the aliases it found, for the engine."""

    @staticmethod
    def start_for(run: Any, ingest: st.Ingest) -> tuple[IngestStream, asyncio.Task]:
        """The stream of an ``engine._Run``: after each batch the budget pre-check runs again on what
        is in the file and the feeder is woken; at the end the estimate and aliases are updated;
        a failure (a bad output name: ManifestError) stops the run and is raised at its end."""
        from .outcome import StopReason, budget_refusal

        def on_batch(pos: Position | None) -> None:
            refusal = budget_refusal(run.ledger.cap, pos) if pos is not None else None
            if refusal and not run.stop.stopping:
                run.log.emit("budget", None, event="refused", message=refusal)
                run.stop.request(StopReason.BUDGET, refusal)
            run.done.tick()  # new items: the feeder looks again

        def on_done(est: tuple[int, int], aliases: dict[str, list[str]]) -> None:
            run.estimate = run.status.estimate = est
            streamer.add_aliases(run.aliases, aliases, run.dl.done if run.dl else set())
            run.done.tick()

        def on_error(exc: BaseException) -> None:
            run.tasks.errors.append(exc)
            run.stop.request(StopReason.INTERRUPT, f"reading the manifest failed: {exc}")

        stream = IngestStream(ingest, run.store, manifest=run.m, run_id=run.run_id, scope=run.scope,
                              steps=run.steps_order, on_batch=on_batch, on_done=on_done,
                              batch=max(1, run.o.ingest_batch),
                              started=lambda: bool(run.log.http) or run.stop.stopping,
                              budgeted=run.ledger.cap is not None)
        run.status.ingest = stream.progress
        return stream, streamer.start(stream, on_error=on_error)

    @staticmethod
    def start(stream: IngestStream, *, on_error: Callable[[BaseException], Any]) -> asyncio.Task:
        task = asyncio.create_task(stream.run())

        def failed(t: asyncio.Task) -> None:
            if not t.cancelled() and t.exception() is not None:
                exc = t.exception()
                assert exc is not None
                on_error(exc)  # raised once the run has recorded everything (a ManifestError: exit 2)

        task.add_done_callback(failed)
        return task

    @staticmethod
    async def stop(task: asyncio.Task, *, finish: bool) -> None:
        """``finish``: let it read the rest in (a budget refusal: exact figures, and a resume reuses
        them); else cancel it (the next run reads the rest in)."""
        if task.done():
            return
        if finish:
            await asyncio.wait([task])
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    @staticmethod
    def add_aliases(into: dict[str, list[str]], found: dict[str, list[str]], downloaded: set[str]) -> None:
        """The aliases the walk found, for the downloader; items downloaded before their aliases were
        known are checked again by its final ``verify`` (which then writes the alias copies)."""
        into.update(found)
        downloaded.difference_update(found)
