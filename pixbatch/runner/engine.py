"""The run loop: one asyncio loop that feeds items, submits, polls, settles and downloads.

``concurrency`` is the number of items *in flight* (submitted and not yet terminal, plus
their download): the feeder walks the PENDING items step by step (manifest order, pages read
from the store) and starts one task per item when a slot is free and its price fits the
budget (``budget.BudgetLedger``). Each task does intent -> POST -> request_id -> polls ->
download -> settle. What a submit's answer means for the item is ``submit.SUBMIT_TABLE``;
waiting for the job is ``poll.Poller``; files are ``outputs.OutputDir``; how the run ends is
``outcome.conclude``. DuckDB is touched only by the store's writer thread: the loop queues
writes and awaits the commit of the critical one (the intent before the POST; the request
id after the 202 is committed ahead of anything later about the item; see ``pixbatch.state``).

An item with an upstream waits until the upstream is COMPLETED (``ready_page`` does not
return it before) and is sent with the upstream's media_url; when the upstream ends in a
failure state the item is BLOCKED (``state.block_downstream``), transitively.

When the next item does not fit the budget, the feeder waits for in-flight items to settle
(a charge can be lower than its reservation); if it still does not fit with nothing in
flight, the run stops submitting and says what is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from .. import state as st
from ..errors import BudgetExceeded, ExitCode, require_api_key
from ..gateway import Gateway, JobStatus
from ..knowledge import Knowledge, Learner, price_item
from ..money import format_usd
from ..pricing import PriceTable
from ..progress import Progress
from ..ratelimit import AdaptiveRateLimiter
from ..sizes import output_size as predicted_output_size
from .budget import BudgetLedger
from .options import RunOptions
from .outcome import RunSummary, StopReason, budget_refusal, conclude, summarize, unreachable
from .download import Downloader
from .journal import Journal
from ..storage.phase import open_outputs, upload_inputs
from .callbacks import Doubts, Receiver, Signer, adopt
from .poll import Poller
from .preflight import Preflight
from .prepare import position, prepare
from .status import StatusWriter
from .settle import settle_item
from .stream import IngestStream, streamer
from .submit import ACCEPTED, Reachability, SendLog, submit_item

PAGE = 2000


class _Stop:
    """Why the run stops, if it does: the first reason, replaced only by a higher one
    (``StopReason.replaces``), and what stopping means for the item tasks."""

    def __init__(self, tasks: _Tasks, done: _Ticker):
        self.tasks, self.done = tasks, done
        self.reason: StopReason | None = None
        self.message: str | None = None
        self.sigints = 0

    @property
    def stopping(self) -> bool:
        return self.reason is not None

    def halted(self) -> bool:
        """Stopped for a reason that also ends polling and downloads (Ctrl-C, a refused key)."""
        return self.reason in (StopReason.AUTH, StopReason.INTERRUPT)

    def on_signal(self) -> None:
        self.sigints += 1
        if self.sigints >= 2:
            # state is consistent: every critical write was committed before/after its HTTP call
            os._exit(ExitCode.INTERRUPTED)
        self.interrupt()

    def interrupt(self) -> None:
        """Stop submitting, and at once: what is not on the wire is not sent; sends on the wire
        record their answer; polling stops (a later run polls again)."""
        if self.reason is None:
            self.reason, self.message = StopReason.INTERRUPT, "interrupted"
        self.tasks.cancel_polling()
        self.tasks.cancel_unsent()
        self.done.tick()

    def request(self, reason: StopReason, message: str) -> None:
        if reason.replaces(self.reason):
            self.reason, self.message = reason, message
        if reason is StopReason.AUTH:  # polls would all get 401 too; POSTs in flight record their own answer
            self.tasks.cancel_polling()
        if reason is not StopReason.BUDGET:  # the key, the wallet, the quota, Ctrl-C: nothing more is sent
            self.tasks.cancel_unsent()
        self.done.tick()


def _api_key(options: RunOptions, gateway: Gateway | None) -> str | None:
    """The key for the gateway this run makes (none needed when one is passed in)."""
    return require_api_key(options.api_key) if gateway is None else None


class _Ticker:
    """Counts finished items (and stop requests); a waiter compares counts, so it never misses one."""

    def __init__(self) -> None:
        self.seq = 0
        self._event = asyncio.Event()

    def tick(self) -> None:
        self.seq += 1
        self._event.set()

    async def wait_after(self, seq: int, stopped: Callable[[], bool]) -> None:
        while self.seq == seq and not stopped():
            self._event.clear()
            await self._event.wait()


class _Tasks:
    """The run's item tasks: started, watched, cancelled; ``polling`` are those waiting on a job."""

    def __init__(self, on_error: Callable[[BaseException], None]):
        self.all: set[asyncio.Task] = set()
        self.polling: set[asyncio.Task] = set()
        self.sending: dict[asyncio.Task, SendLog] = {}  # tasks inside Gateway.submit, by their send log
        self.errors: list[BaseException] = []
        self.on_error = on_error

    def spawn(self, coro: Any) -> asyncio.Task:
        task = asyncio.create_task(coro)
        self.all.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task) -> None:
        self.all.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # a bug, not a gateway answer: the item keeps its committed state (a re-run resumes
            # it); the error is raised once the run has recorded everything
            exc = task.exception()
            assert exc is not None
            self.errors.append(exc)
            self.on_error(exc)

    @contextlib.contextmanager
    def polling_now(self) -> Iterator[None]:
        """The current task waits on a job: a stop cancels it (a later run polls again)."""
        task = asyncio.current_task()
        assert task is not None
        self.polling.add(task)
        try:
            yield
        finally:
            self.polling.discard(task)

    def cancel_polling(self) -> None:
        for task in list(self.polling):
            if task is not asyncio.current_task():
                task.cancel()

    def cancel_unsent(self) -> None:
        """Cancel every submit that has no request on the wire (waiting for a token, a retry, a
        Retry-After): nothing was sent, so nothing is in doubt. Sends on the wire finish."""
        for task, log in list(self.sending.items()):
            if not log.in_flight and task is not asyncio.current_task():
                task.cancel()

    async def drain(self) -> None:
        while self.all:
            await asyncio.gather(*list(self.all), return_exceptions=True)

    async def cancel(self) -> None:
        for task in list(self.all):
            task.cancel()
        await asyncio.gather(*self.all, return_exceptions=True)


def _price(table: PriceTable, knowledge: Knowledge, row: st.ItemRow,
           up: st.ItemRow | None) -> tuple[Any, tuple[int, int] | None, bool]:
    """The item's price, the input size it rests on, and whether that size is real: a chained
    item's input is its upstream's output (its real size once downloaded or measured, else a
    size learned for edits like it, else the predicted one, as a range)."""
    if up is None:
        return price_item(table, knowledge, row.op, row.body_dict, row.input_size)
    out = (up.output_width, up.output_height) if up.output_width and up.output_height else None
    predicted = row.input_size or predicted_output_size(up.op, up.body_dict, up.input_size)
    return price_item(table, knowledge, row.op, row.body_dict, predicted, chained=True, upstream_op=up.op,
                      upstream_output=out)


def _reserve(row: st.ItemRow, up: st.ItemRow | None, price: Any, input_size: tuple[int, int] | None, real: bool,
             emit: Callable[..., None]) -> None:
    """Write the item's reservation (its price's upper bound, already taken from the ledger), saying
    so when it is not the estimate's: something was learned since (an upstream's real output, an
    edit size, the reading of MP)."""
    amount = price.high_micros
    if (amount, price.low_micros) != (row.est_high_micros, row.est_low_micros):
        emit("price", row.key, event="reserve", estimated=[row.est_low_micros, row.est_high_micros],
             reserved=amount, exact=price.exact, input_size=list(input_size) if input_size else None,
             why=("the real output size of its upstream" if up is not None and real
                  else price.reason or "learned from completed items"))
    row.reserved_micros = amount
    row.tier = price.high.name if price.exact else f"{price.low.name} .. {price.high.name}"
    # the checks and the charge use a real input size only (a prediction would flag correct outputs)
    row.input_width, row.input_height = input_size if input_size and real else (None, None)


@contextlib.contextmanager
def _signal_handlers(loop: asyncio.AbstractEventLoop, handler: Callable[[], None], enabled: bool) -> Iterator[None]:
    """SIGINT and SIGTERM call ``handler`` while inside (the CLI enables it; a library caller keeps its own)."""
    sigs = (signal.SIGINT, signal.SIGTERM) if enabled else ()
    for sig in sigs:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, handler)
    try:
        yield
    finally:
        for sig in sigs:
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)


class _Run:
    def __init__(self, manifest: Any, options: RunOptions, gateway: Gateway | None, progress: Progress):
        self.m = manifest
        self.o = options
        self.progress = progress
        self.key = _api_key(options, gateway)
        self.table = PriceTable.load(options.pricing_path)
        self.state_path = Path(options.state_path or manifest.state_path)
        self.out = open_outputs(manifest)  # a local OutputDir, or a bucket (storage.s3out)
        self.uploads: Any = None  # storage.uploads.Uploader when pending items name local files
        budget = options.budget_micros if options.budget_micros is not None else manifest.budget_micros
        self.ledger = BudgetLedger(budget)
        self.run_id = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + uuid.uuid4().hex[:8]
        self._gateway = gateway
        self.gw: Gateway | None = None
        self.poller: Poller | None = None
        self.dl: Downloader | None = None
        self.callbacks: Receiver | None = None  # webhook mode: the endpoint, its signer and wake-ups
        self.doubts = Doubts()  # AMBIGUOUS items a signed callback may settle
        self.store: st.Store | None = None
        self.log: Journal  # set with the store (main)
        self.plan: Any = None  # estimate.Estimate of this run's items, printed at the start (main)
        self.learner: Learner  # what completed items teach about sizes, as they settle (main)
        self.status: StatusWriter  # set with the parts (_build)
        self.scope = ""
        self.aliases: dict[str, list[str]] = {}
        self.estimate = (0, 0)
        self.slots = asyncio.Semaphore(max(1, options.concurrency))
        self.inflight: set[str] = set()  # keys of items being sent, polled or downloaded
        self.skip: set[str] = set()  # keys this run will not send again
        self.tasks = _Tasks(lambda exc: self.stop.request(StopReason.INTERRUPT, f"internal error: {exc!r}"))
        self.done = _Ticker()  # items finished (and stop requests)
        self.stop = _Stop(self.tasks, self.done)
        self.charged_run = self.submits = self.finished_this_run = 0
        self.t0 = time.monotonic()
        self.reach = Reachability(answered=lambda: self.log.answered, on_cause=lambda cause: self.stop.request(
            StopReason.UNREACHABLE, unreachable(options.base_url, cause)))
        self.steps_order = [s.id for s in manifest.steps]
        self.stream: IngestStream | None = None  # the rest of the expansion, read in while the run sends

    # -- main -----------------------------------------------------------------------------------

    def _expand(self, sizes: Callable[[str], Any] | None):
        from ..expand import expand

        return expand(self.m, sizes=sizes, unique=True)

    async def main(self) -> RunSummary:
        self.store = st.Store.open(self.state_path, wait=self.o.lock_wait)
        self.store.bind_loop(asyncio.get_running_loop())
        self.log = Journal(self.store, self.progress, self.run_id, lambda: self.ledger.committed)
        self.preflight: Preflight = Preflight.of(self.store, self.log.put, self.o)  # input URLs, before sending
        try:
            return await self._main()
        finally:
            with contextlib.suppress(Exception):
                self.store.close()

    async def _main(self) -> RunSummary:
        store = self.store
        assert store is not None
        p = await store.call(lambda db: prepare(db, manifest=self.m, options=self.o, run_id=self.run_id,
                                                budget=self.ledger.cap, table=self.table, expand=self._expand))
        self.scope, self.aliases, self.estimate, self.selection = p.scope, p.aliases, p.estimate, p.selection
        self.plan, self.learner = p.plan, Learner(self.table, p.knowledge)
        self.ledger = BudgetLedger(self.ledger.cap, p.position.totals.committed_micros)
        if p.ambiguous_now:
            self.log.emit("run", None, message=f"{p.ambiguous_now} item(s) were being submitted when the last run "
                          "stopped: now AMBIGUOUS")
        refusal = budget_refusal(self.ledger.cap, p.position)
        if refusal and not p.position.in_flight:
            await self._finish_run("budget")
            raise BudgetExceeded(refusal)
        loop = asyncio.get_running_loop()
        if self.o.webhook_url:  # callback URLs are signed with the state file's own secret
            secret = await store.call(lambda db: st.secret(db, "webhook"))
            self.callbacks = Receiver(Signer(secret, self.o.webhook_url), loop, self._on_callback)
        status_task = self._build(store, loop)
        # the rest of the expansion is read in while the run sends (``stream.py`` says what that changes)
        self.stream, stream_task = streamer.start_for(self, p.ingest) if p.ingest is not None else (None, None)
        try:
            with _signal_handlers(loop, self.stop.on_signal, self.o.handle_signals):
                try:
                    self.uploads = await upload_inputs(self.m, store, self.scope, self.log.emit, self.out, p,  # local
                                                       on_refusal=lambda: self._finish_run("failed"))  # files, first
                    await self._resume_in_flight()
                    if refusal:
                        # items already paid for are collected first; then the budget is looked at again
                        await self.tasks.drain()
                        refusal = budget_refusal(self.ledger.cap, await store.call(
                            lambda db: position(db, self.scope, self.selection)))
                        if refusal:
                            self.stop.request(StopReason.BUDGET, refusal)
                    await self._feed()
                    await self.tasks.drain()
                    if self.doubts.open:  # callbacks may still settle what this run left in doubt
                        await self.doubts.wait(self.o.webhook_grace, lambda: self.stop.stopping)
                        await self.tasks.drain()
                    if self.o.download and not self.stop.halted():
                        assert self.dl is not None
                        await self.dl.verify(self.scope, self.steps_order, self.stop.halted)
                finally:
                    await self.tasks.cancel()
        finally:
            if stream_task is not None:  # stopped early: the rest is read in by the next run (or now, for a budget refusal)
                await streamer.stop(stream_task, finish=self.stop.reason is StopReason.BUDGET)
            status_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await status_task
            if self.callbacks is not None:
                await self.callbacks.stop()
            if self._gateway is None and self.gw is not None:
                await self.gw.aclose()
        summary = await self._summary()
        await self._finish_run(summary.outcome)
        self.log.emit("run", None, event="end", outcome=summary.outcome, exit_code=summary.exit_code, http=self.log.http)
        await store.commit()
        await self.status.write(running=False, outcome=summary.outcome)
        self.progress.stop(summary)
        if self.tasks.errors:
            raise self.tasks.errors[0]
        return summary

    def _build(self, store: st.Store, loop: asyncio.AbstractEventLoop) -> asyncio.Task:
        """The gateway client, webhook receiver, downloader, poller and status writer; starts the status loop."""
        self.gw = self._gateway or Gateway(
            self.o.base_url, self.key, timeout=self.o.timeout,
            limiter=AdaptiveRateLimiter(self.o.max_rps), on_exchange=self.log.on_exchange,
            max_connections=max(16, self.o.concurrency * 2))
        if self._gateway is not None and self._gateway.on_exchange is None:
            self._gateway.on_exchange = self.log.on_exchange
        if self.callbacks is not None:
            self.callbacks.start(self.o.webhook_listen)
        self.dl = Downloader(self.gw, store, self.out, self.aliases, emit=self.log.emit, timeout=self.o.timeout,
                             concurrency=self.o.concurrency)
        self.poller = Poller(self.gw, initial=self.o.poll_initial, cap=self.o.poll_max_interval, put=self.log.put,
                             on_stop=self.stop.request,
                             webhooks=self.callbacks.wakeups if self.callbacks else None)
        budget = self.ledger.cap
        self.progress.start({"run_id": self.run_id, "state_path": str(self.state_path), "budget_micros": budget,
                             "estimate_low_micros": self.estimate[0], "estimate_high_micros": self.estimate[1],
                             "plan": self.plan})
        self.log.emit("run", None, event="start", pid=os.getpid(), budget_micros=budget, committed=self.ledger.committed)
        self.status = StatusWriter(store, self.progress, state_path=self.state_path, run_id=self.run_id,
                                   manifest_path=str(self.m.path), scope=self.scope, budget=budget,
                                   estimate=self.estimate, finished=lambda: self.finished_this_run, errors=self.log)
        return asyncio.create_task(self.status.loop(self.o.status_interval))

    def _reading(self) -> bool:  # the expansion is still being read into the state file
        return self.stream is not None and not self.stream.progress.done and not self.stop.stopping

    async def _finish_run(self, outcome: str) -> None:
        assert self.store is not None
        await self.store.call(lambda db: st.finish_run(db, self.run_id, outcome))

    # -- feeding --------------------------------------------------------------------------------

    async def _resume_in_flight(self) -> None:
        assert self.store is not None
        rows = await self.store.call(st.submitted_rows)
        for row in rows:
            await self.slots.acquire()
            self.inflight.add(row.key)
            self.tasks.spawn(self._item(row, None, resumed=True))

    async def _feed(self) -> None:
        assert self.store is not None
        store = self.store
        while not self.stop.stopping:
            seq0 = self.done.seq
            for step in st.Selection.steps_of(self.selection, self.steps_order):
                after = -1
                while not self.stop.stopping:
                    page = await store.call(lambda db, s=step, a=after: st.ready_page(
                        db, self.scope, s, a, PAGE, chained=self.m.step(s).upstream is not None, sel=self.selection))
                    if not page:
                        break
                    after = page[-1][0].idx
                    async for row, up in self.preflight.admit(page):
                        if row.key in self.inflight or row.key in self.skip:
                            continue
                        if not await self._start(row, up):
                            return
            if self.stop.stopping:
                return
            await store.call(lambda db: st.block_downstream(db, self.scope, self.run_id))
            pending = await store.call(lambda db: st.pending_count(db, self.scope, self.selection))
            if pending - len(self.skip) <= 0 and not self._reading():
                return
            if self.done.seq != seq0:
                continue  # something finished (or was read in) during the pass: look again
            if not self.tasks.all and not self._reading():
                return  # what is left waits on items this run will not send
            await self.done.wait_after(seq0, lambda: self.stop.stopping)

    async def _start(self, row: st.ItemRow, up: st.ItemRow | None) -> bool:
        """Take a slot, reserve the price, start the item. False: stop feeding."""
        await self.slots.acquire()
        if self.stop.stopping:
            self.slots.release()
            return False
        price, input_size, real = _price(self.learner.table, self.learner.knowledge, row, up)
        amount = price.high_micros
        while not self.ledger.try_reserve(amount):
            if not self.inflight:
                self.slots.release()
                self.stop.reason = StopReason.BUDGET
                self.stop.message = f"the next item ({format_usd(amount)}) would not fit the budget"
                self.log.emit("budget", row.key, event="stop", committed=self.ledger.committed, budget=self.ledger.cap,
                          next=amount)
                return False
            await self.done.wait_after(self.done.seq, lambda: self.stop.stopping)
            if self.stop.stopping:
                self.slots.release()
                return False
        _reserve(row, up, price, input_size, real, self.log.emit)
        self.inflight.add(row.key)
        self.tasks.spawn(self._item(row, up, resumed=False))
        return True

    # -- one item -------------------------------------------------------------------------------

    async def _item(self, row: st.ItemRow, up: st.ItemRow | None, *, resumed: bool) -> None:
        assert self.poller is not None
        try:
            if not resumed and (not await self._submit(row, up) or self.stop.halted()):
                return
            with self.tasks.polling_now():
                status = await self.poller.until_done(row, resumed=resumed)
            if status is not None:
                await self._settle(row, status)
        except asyncio.CancelledError:
            pass
        finally:
            self.inflight.discard(row.key)
            self.slots.release()
            self.done.tick()

    async def _submit(self, row: st.ItemRow, up: st.ItemRow | None) -> bool:
        """Send the item; True when the gateway accepted it."""
        assert self.gw is not None
        self.submits += 1
        log = SendLog(row, self.log.put, self.run_id, on_refused=self.reach.refused)
        task = asyncio.current_task()
        assert task is not None
        self.tasks.sending[task] = log
        try:
            rule = await submit_item(row, up, gateway=self.gw, ledger=self.ledger, put=self.log.put,
                                     run_id=self.run_id, log=log,
                                     webhook_url=self.callbacks.url_for(row) if self.callbacks else None,
                                     file_url=self.uploads.url_for if self.uploads is not None else None)
        finally:
            del self.tasks.sending[task]
        if rule.skip:
            self.skip.add(row.key)
        if rule.state == st.AMBIGUOUS and self.callbacks is not None:
            heard = self.doubts.became_ambiguous(row.key)
            if heard is not None:
                self.tasks.spawn(self._adopt(row.key, *heard))
        if rule.state == st.PENDING:
            self.reach.refused(None, row.error or "")
        if rule.stop is not None:
            self.stop.request(rule.stop, row.error or rule.stop.outcome)
        return rule is ACCEPTED

    def _on_callback(self, key: str, n: int, request_id: str) -> None:
        if key in self.inflight:
            self.doubts.heard_early(key, n, request_id)
        else:
            self.tasks.spawn(self._adopt(key, n, request_id))

    async def _adopt(self, key: str, n: int, request_id: str) -> None:
        row = await adopt(self.store, self.gw, key, n, request_id, put=self.log.put, emit=self.log.emit)
        if row is not None:
            self.doubts.open.discard(key)
            await self.slots.acquire()
            self.inflight.add(key)
            await self._item(row, None, resumed=True)

    async def _settle(self, row: st.ItemRow, s: JobStatus) -> None:
        assert self.dl is not None
        charge = await settle_item(row, s, downloader=self.dl, download=self.o.download, table=self.table,
                                   ledger=self.ledger, put=self.log.put, learner=self.learner)
        self.charged_run += charge  # after the await: `x += await f()` would read x before it
        self.finished_this_run += 1

    # -- status and summary ---------------------------------------------------------------------

    async def _summary(self) -> RunSummary:
        assert self.store is not None
        snap = await self.status.snapshot(running=False)  # (a store call: everything queued is committed first)
        left, unselected = await self.store.call(lambda db: st.left_to_send(db, self.scope, self.selection))
        problems, missing = (self.dl.problems, self.dl.missing if self.o.download else None) if self.dl else (0, None)
        c = conclude(self.stop.reason, self.stop.message, snap.totals(), left=left, budget=self.ledger.cap,
                     at_risk=snap.at_risk_micros, output_problems=problems, unselected=unselected,
                     missing_outputs=missing, last_error=self.log.last_error)
        return summarize(c, snap, run_id=self.run_id, output_dir=str(self.out.root), charged_run=self.charged_run,
                         peak=self.ledger.peak, left=left, submits=self.submits,
                         polls=self.poller.polls if self.poller else 0, downloads=self.dl.downloads if self.dl else 0,
                         output_problems=problems, duration_s=round(time.monotonic() - self.t0, 3), http=self.log.http)
