"""Job lifecycle: the queue, the scheduler, and settlement (charging exactly once).

No task per job. A job is a record of timestamps: accepted at ``created``, PROCESSING
from ``start = created + queue_time``, terminal from ``due = start + processing_time``
(or when its image work finishes, if that is later). A status poll reads the record, so
it costs O(1). One scheduler task keeps a heap of events (start, due, sync-webhook tick)
and sleeps until the earliest: at ``start`` it launches the image work (real mode) and
sync callbacks; at ``due`` it settles the job. ``settle_due()`` runs the same event
processing synchronously, and every poll and the ledger call it first, so the answer
never lags the clock even if the scheduler has not woken yet.

Settling a job fixes its terminal status, charges the wallet per the price table and
the gateway's size rule (``sizing.py``, by the real output size), appends one ledger
entry, and fires the terminal webhooks. A job settles once: ``Wallet.settle`` refuses a
second settlement.

Everything here runs on the event loop thread; the image work is the ``Studio``'s
(``work.py``), whose Pillow calls run in worker threads.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import random
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..contract import COMPLETED, ERROR, FAILED, MEDIA_TYPES, MODEL_IDS, PROCESSING, QUEUED
from ..pricing import PriceTable
from . import imaging
from .config import EmulatorConfig
from .faults import shape_status, traversal_id
from .requestlog import RequestLog
from .sizing import SizeRule
from .wallet import Wallet
from .webhooks import SYNC, Deliverer, WebhookTarget
from .work import Studio

START, DUE, TICK = 0, 1, 2
log = logging.getLogger("pixbatch.emulator")


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.") + f"{int(ts * 1000) % 1000:03d}Z"


def new_request_id(model: str) -> str:
    """``<model>_<uuid7>``: time-ordered like the gateway's ids, never reused across runs."""
    ms = time.time_ns() // 1_000_000
    rand = uuid.uuid4().int & ((1 << 74) - 1)
    value = (ms << 80) | (0x7 << 76) | ((rand >> 62) << 64) | (0b10 << 62) | (rand & ((1 << 62) - 1))
    return f"{model}_{uuid.UUID(int=value)}"


@dataclass(eq=False)
class Job:
    request_id: str
    op: str
    body: dict
    seq: int
    created_wall: float
    created_mono: float
    start_mono: float
    due_mono: float
    outcome: str  # planned terminal status
    error: str | None
    reserved_micros: int
    webhooks: tuple[WebhookTarget, ...] = ()
    edit_seed: int = 0  # used when the body has no seed
    poll_script: deque | None = None  # scripted answers for this job's next polls
    faults: frozenset[str] = frozenset()  # faults.FAULTS names shaping what the client is told
    lazy_input: tuple[int, int] | None = None  # lazy mode: this job's assumed input size (scripted)
    public_id: str = field(default="")  # the request_id the client is told (differs under a fault)
    # filled in as the job runs
    started: bool = False
    work_done: bool = False
    work_done_mono: float = 0.0
    input_size: tuple[int, int] | None = None
    output_size: tuple[int, int] | None = None
    ext: str = "jpg"
    media_path: Path | None = None
    final: str | None = None
    completed_wall: float | None = None

    def __post_init__(self) -> None:
        if not self.public_id:
            self.public_id = traversal_id(self.request_id) if "request_id_traversal" in self.faults \
                else self.request_id

    @property
    def model(self) -> str:
        return MODEL_IDS[self.op]

    def wall(self, mono: float) -> float:
        return self.created_wall + (mono - self.created_mono)

    def status(self, now: float) -> str:
        if self.final is not None:
            return self.final
        return QUEUED if now < self.start_mono else PROCESSING

    def view(self, now: float, base_url: str) -> dict[str, Any]:
        """The status response (and webhook payload) for this job at ``now``."""
        status = self.status(now)
        if self.final is not None:
            updated = self.completed_wall
        elif status == PROCESSING:
            updated = self.wall(self.start_mono)
        else:
            updated = self.created_wall
        output = None
        if status == COMPLETED:
            output = {"media_url": [f"{base_url}/media/{self.request_id}/output.{self.ext}"],
                      "media_type": MEDIA_TYPES[self.ext]}
        return shape_status({
            "request_id": self.public_id,
            "status": status,
            "model_id": self.model,
            "error": self.error if self.final in (FAILED, ERROR) else None,
            "output": output,
            "created_at": iso(self.created_wall),
            "updated_at": iso(updated),  # type: ignore[arg-type]
            "completed_at": iso(self.completed_wall) if self.completed_wall is not None else None,
        }, self.faults)


class Engine:
    """The emulator's state: config, wallet, jobs, scheduler, counters."""

    def __init__(self, config: EmulatorConfig, prices: PriceTable | None = None):
        self.config = config
        self.prices = prices or PriceTable.load(config.pricing_path)
        self.rule = SizeRule.from_config(config)
        self.wallet = Wallet(config.balance_micros)
        self.jobs: dict[str, Job] = {}
        self.stats: dict[str, Any] = {k: 0 for k in (
            "submits", "accepted", "polls", "media_gets", "rate_limited", "injected_submit_500", "injected_poll_500",
            "dropped_after_accept", "garbage_submit", "garbage_poll", "scripted", "webhooks_delivered",
            "webhooks_failed", "webhook_duplicates", "in_flight", "max_in_flight", "work_started", "work_failed",
            "throttled", "rate_window_limited", "quota_refused", "strays", "media_faults",
        )}
        self.stats["responses"] = {}
        self.stats["jobs"] = {s: 0 for s in (COMPLETED, FAILED, ERROR)}
        self.script: deque[dict] = deque()
        self.received = RequestLog()  # every submit as received and answered, and stray requests
        self.base_url = ""  # set from the first request (absolute URLs in responses)
        self.deliverer = Deliverer(self.stats, lambda: self.config)
        self.studio = Studio(lambda: self.config, self.rule, self.stats, self.now)
        self._heap: list[tuple[float, int, int, Job]] = []
        self._heap_seq = 0
        self.offset = 0.0  # seconds added to the clock by advance()
        self._webhook_sends = 0
        self._wake: asyncio.Event | None = None
        self._scheduler: asyncio.Task | None = None
        self._work: set[asyncio.Task] = set()

    # -- the clock ----------------------------------------------------------------

    def now(self) -> float:
        """The emulator's monotonic clock: real time plus whatever ``advance`` added."""
        return time.monotonic() + self.offset

    def advance(self, seconds: float) -> None:
        """Move the clock forward: jobs become due sooner, reported times shift with it."""
        if seconds < 0:
            raise ValueError("the clock only moves forward")
        self.offset += seconds
        self.settle_due()
        if self._wake is not None:
            self._wake.set()

    # -- lifecycle ---------------------------------------------------------------

    def ensure_started(self) -> None:
        """Start the scheduler on the running loop (first request or lifespan startup)."""
        if self._scheduler is not None and not self._scheduler.done():
            return
        self.studio.open()
        self._wake = asyncio.Event()
        self._scheduler = asyncio.get_running_loop().create_task(self._run_scheduler())

    async def aclose(self) -> None:
        if self._scheduler is not None:
            self._scheduler.cancel()
            await asyncio.gather(self._scheduler, return_exceptions=True)
        for t in list(self._work):
            t.cancel()
        if self._work:
            await asyncio.gather(*self._work, return_exceptions=True)
        await self.deliverer.aclose()
        await self.studio.aclose()

    # -- submit -----------------------------------------------------------------

    def job_rng(self, n: int) -> random.Random:
        return random.Random(f"{self.config.seed}:job:{n}")

    def create_job(self, op: str, body: dict, reserved_micros: int, webhooks: tuple[WebhookTarget, ...],
                   scripted: dict | None) -> Job:
        cfg = self.config
        n = self.stats["accepted"]
        rng = self.job_rng(n)
        queue_s = cfg.queue_time.sample(rng)
        proc_s = cfg.processing_time.sample(rng)
        u = rng.random()
        edit_seed = rng.randrange(2**31)
        if u < cfg.fail_rate:
            outcome, error = FAILED, "Prediction failed: the model could not process this input (emulated failure)"
        elif u < cfg.fail_rate + cfg.error_rate:
            outcome, error = ERROR, "Internal error while processing the request (emulated system error)"
        else:
            outcome, error = COMPLETED, None
        polls: deque | None = None
        faults = set(cfg.faults)
        scripted = scripted or {}
        if scripted:
            if "status" in scripted:
                outcome = scripted["status"]
                error = scripted.get("error") or (None if outcome == COMPLETED else f"scripted {outcome}")
            if "queue_time" in scripted:
                queue_s = float(scripted["queue_time"])
            if "processing_time" in scripted:
                proc_s = float(scripted["processing_time"])
            if scripted.get("polls"):
                polls = deque(scripted["polls"])
            faults.update(scripted.get("faults", ()))
        now_mono, now_wall = self.now(), time.time() + self.offset
        job = Job(
            request_id=new_request_id(MODEL_IDS[op]), op=op, body=body, seq=n,
            created_wall=now_wall, created_mono=now_mono, start_mono=now_mono + queue_s,
            due_mono=now_mono + queue_s + proc_s, outcome=outcome, error=error, reserved_micros=reserved_micros,
            webhooks=webhooks, edit_seed=edit_seed, poll_script=polls, faults=frozenset(faults),
            lazy_input=tuple(scripted["input_size"]) if "input_size" in scripted else None,  # type: ignore[arg-type]
            ext=body.get("output_format", "jpg") if op == "upscale" else imaging.EDIT_FORMAT,
        )
        self.wallet.reserve(reserved_micros)
        self.jobs[job.request_id] = job
        self.stats["accepted"] += 1
        self.stats["in_flight"] += 1
        self.stats["max_in_flight"] = max(self.stats["max_in_flight"], self.stats["in_flight"])
        self._push(job.start_mono, START, job)
        self._push(job.due_mono, DUE, job)
        self._notify(job, terminal=False)  # sync mode: the QUEUED callback
        return job

    # -- the scheduler --------------------------------------------------------------

    def _push(self, at: float, kind: int, job: Job) -> None:
        self._heap_seq += 1
        first = not self._heap or at < self._heap[0][0]
        heapq.heappush(self._heap, (at, self._heap_seq, kind, job))
        if first and self._wake is not None:
            self._wake.set()

    async def _run_scheduler(self) -> None:
        assert self._wake is not None
        while True:
            try:
                self.settle_due()
            except Exception:  # noqa: BLE001 - keep settling other jobs; the bug is logged
                log.exception("emulator scheduler: settling due jobs failed")
            self._wake.clear()
            timeout = None if not self._heap else max(0.0, self._heap[0][0] - self.now())
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
            except asyncio.TimeoutError:
                pass

    def settle_due(self, now: float | None = None) -> None:
        """Process every event that is due: start work, send sync ticks, settle jobs."""
        now = self.now() if now is None else now
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, _, kind, job = heapq.heappop(heap)
            if kind == START:
                self._start(job)
            elif kind == DUE:
                if job.work_done or self.config.render == "lazy" or job.outcome == ERROR:
                    self._settle(job)
                # else: the work task settles it when it finishes
            elif kind == TICK and job.final is None:
                self._notify(job, terminal=False)
                self._schedule_tick(job, now)

    def _schedule_tick(self, job: Job, now: float) -> None:
        if any(t.mode == SYNC for t in job.webhooks):
            interval = max(0.01, min(15.0, self.config.webhook_sync_interval))
            if now + interval < job.due_mono:
                self._push(now + interval, TICK, job)

    def _start(self, job: Job) -> None:
        job.started = True
        self._notify(job, terminal=False)  # sync mode: the PROCESSING callback
        self._schedule_tick(job, job.start_mono)
        if self.config.render == "lazy":
            self.studio.measure_lazily(job)
        elif job.outcome != ERROR:
            task = asyncio.get_running_loop().create_task(self._work_then_settle(job))
            self._work.add(task)
            task.add_done_callback(self._work.discard)

    async def _work_then_settle(self, job: Job) -> None:
        await self.studio.work(job)
        if self.now() >= job.due_mono and job.final is None:
            self._settle(job)

    # -- settlement ---------------------------------------------------------------

    def _settle(self, job: Job) -> None:
        if job.final is not None:
            return
        status = job.outcome
        # terminal at the due time, or when the work finished if that was later (not when
        # someone happened to look)
        job.completed_wall = job.wall(max(job.due_mono, job.work_done_mono))
        charge = self.charge(job, status)
        self.wallet.settle(request_id=job.request_id, model=job.model, status=status,
                           reserved_micros=job.reserved_micros, amount_micros=charge,
                           output_size=job.output_size, at=iso(job.completed_wall))
        job.final = status
        self.stats["jobs"][status] += 1
        self.stats["in_flight"] -= 1
        self._notify(job, terminal=True)

    def charge(self, job: Job, status: str) -> int:
        """What the gateway takes for ``job`` ending in ``status`` (see ``SizeRule.charge``)."""
        return self.rule.charge(self.prices, job.op, status, job.body, job.output_size)

    def _notify(self, job: Job, *, terminal: bool) -> None:
        if not job.webhooks:
            return
        payload = None
        for target in job.webhooks:
            status = job.status(self.now()) if not terminal else job.final
            assert status is not None
            if target.wants(status, terminal):
                payload = payload or job.view(self.now(), self.base_url)
                if terminal or target.mode == SYNC:
                    copies = 2 if self._dup_rng(job).random() < self.config.webhook_duplicate_rate else 1
                    self.deliverer.send(job.request_id, target, payload, copies)

    def _dup_rng(self, job: Job) -> random.Random:
        self._webhook_sends += 1
        return random.Random(f"{self.config.seed}:webhook:{job.seq}:{self._webhook_sends}")
