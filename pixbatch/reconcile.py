"""Settle what a run left open, so the report after a crash is exact.

A run that stops (crash, kill, Ctrl-C, lost network) can leave items whose final status
and cost are unknown to the state file: SUBMITTED (the gateway has a request id for them),
SUBMITTING with a request id that was committed just before the crash, or a terminal state
whose charge was never written. ``reconcile`` polls the gateway's status endpoint for each
of them (never submits anything), and for a terminal status writes the state, the gateway
status, the error, the timestamps, the actual price tier and the charge the price table
says that status costs (``PriceTable.charge_for``; added to what earlier attempts of the
item cost, as the runner does), releases the reservation, and appends
an ``events`` row (``kind = 'state'``, ``detail.by = 'reconcile'``). Items still QUEUED or
PROCESSING are polled again until they finish or ``wait`` seconds pass.

Upscales in factor mode are priced by their real output size: when it is not known from
the input size (the input was another item's output of unknown size), the output is
downloaded and measured. AMBIGUOUS items (no request id was ever recorded) cannot be
polled; the report lists them as money at risk.

The gateway is any object with ``async status(request_id, polling_path=None)`` returning a
``gateway.JobStatus`` (and ``async download(url)`` for the factor-mode case): the real
``gateway.Gateway``, or a fake in tests.
"""

from __future__ import annotations

import asyncio
import io
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

import duckdb

from .aio import run_sync
from .contract import TERMINAL_STATUSES
from .errors import AuthError, GatewayError, NotFound, StateLocked
from .state import ItemState, absorb_crashed_runs, connect, open_requests, utcnow
from .state.connection import reading
from .pricing import PriceTable, priced_by_output_size
from .sizes import Size, output_size


class StatusSource(Protocol):
    async def status(self, request_id: str, polling_path: str | None = None) -> Any: ...


@dataclass(frozen=True, slots=True)
class Settled:
    """What reconcile found for one item."""

    key: str
    step: str
    request_id: str
    before: str  # items.state before
    after: str  # items.state after (unchanged if still running or not found)
    gateway_status: str | None  # QUEUED/PROCESSING/COMPLETED/FAILED/ERROR; None: not answered
    charged_micros: int | None  # set when settled now
    note: str | None = None  # not found / could not poll: why


@dataclass(frozen=True, slots=True)
class ReconcileResult:
    items: tuple[Settled, ...]

    def _n(self, pred: Callable[[Settled], bool]) -> int:
        return sum(1 for s in self.items if pred(s))

    @property
    def checked(self) -> int:
        return len(self.items)

    @property
    def settled(self) -> int:
        return self._n(lambda s: s.charged_micros is not None)

    @property
    def still_running(self) -> int:
        return self._n(lambda s: s.gateway_status is not None and s.gateway_status not in TERMINAL_STATUSES)

    @property
    def unresolved(self) -> int:
        """Not answered: unknown request id, or the gateway could not be reached."""
        return self._n(lambda s: s.gateway_status is None)

    @property
    def charged_micros(self) -> int:
        return sum(s.charged_micros or 0 for s in self.items)


@dataclass
class _Open:
    key: str
    step: str
    op: str
    body: dict
    state: str
    request_id: str
    polling_path: str | None
    input_size: Size | None
    output_size: Size | None
    started_at: datetime | None
    input_url: str | None = None  # where the main image is (the upstream's media_url), to measure it


def _naive_utc(v: datetime | None) -> datetime | None:
    if v is None:
        return None
    return v.astimezone(timezone.utc).replace(tzinfo=None) if v.tzinfo else v


def open_items(db: duckdb.DuckDBPyConnection) -> list[_Open]:
    """Items whose final status or charge is unknown, and that have a request id to poll."""
    out = []
    for o in open_requests(db):
        insize = ((o.input_width, o.input_height) if o.input_width and o.input_height else
                  (o.upstream_width, o.upstream_height) if o.upstream_width and o.upstream_height else None)
        b = json.loads(o.body)
        main = b.get("image") if o.op == "upscale" else None
        url = o.upstream_media_url or (main if isinstance(main, str) and main.startswith(("http://", "https://"))
                                       else None)
        out.append(_Open(o.key, o.step, o.op, b, o.state, o.request_id, o.polling_path, insize,
                         (o.output_width, o.output_height) if o.output_width and o.output_height else None,
                         o.started_at, url))
    return out


def _tier(table: PriceTable, it: _Open, size: Size | None) -> str:
    if size is not None and priced_by_output_size(it.op, it.body):
        return table.upscale_tier_for_size(size).name
    p = table.price(it.op, it.body, it.input_size)
    return p.high.name if p.exact else f"{p.low.name} .. {p.high.name}"


async def _measure(gateway: Any, url: str) -> Size | None:
    from PIL import Image

    download = getattr(gateway, "download", None)
    if download is None:
        return None
    try:
        d = await download(url)
        with Image.open(io.BytesIO(d.data)) as img:
            return img.size
    except (GatewayError, OSError):  # unreachable or not an image: priced without the size (upper bound)
        return None


async def _poll(gateway: StatusSource, table: PriceTable, it: _Open) -> tuple[Settled, dict | None]:
    """Poll one item; returns the outcome and, for a terminal status, the columns to write."""
    try:
        st = await gateway.status(it.request_id, it.polling_path)
    except NotFound:
        return Settled(it.key, it.step, it.request_id, it.state, it.state, None, None,
                       "the gateway does not know this request id"), None
    except AuthError:
        raise
    except GatewayError as exc:
        return Settled(it.key, it.step, it.request_id, it.state, it.state, None, None, str(exc)), None
    if st.status not in TERMINAL_STATUSES:
        cols = {"gateway_status": st.status, "state": ItemState.SUBMITTED}
        return Settled(it.key, it.step, it.request_id, it.state, ItemState.SUBMITTED, st.status, None), cols
    media_url = st.media_urls[0] if st.media_urls else None
    factor = priced_by_output_size(it.op, it.body)
    measured = it.output_size  # a real output size (recorded, or measured now); never a prediction
    size = None  # the output size the price depends on
    if st.status == "COMPLETED":
        size = measured or output_size(it.op, it.body, it.input_size)
        if size is None and factor and media_url:
            size = measured = await _measure(gateway, media_url)
    elif factor and it.input_size is None and it.input_url:
        # a failed factor upscale is priced by the output its input would have made
        it.input_size = await _measure(gateway, it.input_url)
    charge = table.charge_for(it.op, st.status, size, it.body, it.input_size)
    cols = {
        "state": st.status, "gateway_status": st.status, "error": st.error, "charged_micros": charge,
        "reserved_micros": 0, "tier": _tier(table, it, size), "media_url": media_url, "media_type": st.media_type,
        "output_width": measured[0] if measured else None, "output_height": measured[1] if measured else None,
        "finished_at": _naive_utc(st.completed_at) or utcnow(),
    }
    return Settled(it.key, it.step, it.request_id, it.state, st.status, st.status, charge), cols


def _write(db: duckdb.DuckDBPyConnection, results: list[tuple[Settled, dict | None]], *, now: datetime) -> None:
    db.execute("BEGIN TRANSACTION")
    try:
        for s, cols in results:
            if cols is None:
                db.execute("INSERT INTO events (ts, key, kind, detail) VALUES (?, ?, 'reconcile', ?)",
                           [now, s.key, json.dumps({"by": "reconcile", "request_id": s.request_id,
                                                    "problem": s.note})])
                continue
            # a charge adds to what earlier attempts of the item cost (a --force rerun pays again)
            sets = ", ".join(f"{c} = coalesce({c}, 0) + ?" if c == "charged_micros" else f"{c} = ?" for c in cols)
            params = list(cols.values())
            extra = ", polls = polls + 1, updated_at = ?, request_id = coalesce(request_id, ?)"
            start = []
            if cols.get("gateway_status") == "PROCESSING":  # first seen processing now (at the latest)
                extra += ", started_at = coalesce(started_at, ?)"
                start = [now]
            db.execute(f"UPDATE items SET {sets}{extra} WHERE key = ?",
                       params + [now, s.request_id] + start + [s.key])
            if s.before != s.after or s.charged_micros is not None:
                detail = {"by": "reconcile", "from": s.before, "state": s.after, "request_id": s.request_id,
                          "gateway_status": s.gateway_status}
                if s.charged_micros is not None:
                    detail["charged_micros"] = s.charged_micros
                db.execute("INSERT INTO events (ts, key, kind, detail) VALUES (?, ?, 'state', ?)",
                           [now, s.key, json.dumps(detail)])
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise


async def reconcile_db(db: duckdb.DuckDBPyConnection, gateway: StatusSource, table: PriceTable, *,
                       wait: float = 0.0, poll_interval: float = 1.0, concurrency: int = 16,
                       on_pass: Callable[[int, int], None] | None = None,
                       items: list[_Open] | None = None) -> ReconcileResult:
    """Poll every open item once, then again every ``poll_interval`` s while some still run (up to ``wait`` s)."""
    pending = open_items(db) if items is None else items
    final: dict[str, Settled] = {}
    sem = asyncio.Semaphore(concurrency)
    deadline = time.monotonic() + wait

    async def one(it: _Open) -> tuple[Settled, dict | None]:
        async with sem:
            return await _poll(gateway, table, it)

    passes = 0
    while pending:
        passes += 1
        results = await asyncio.gather(*(one(it) for it in pending))
        _write(db, results, now=utcnow())
        still = []
        by_key = {it.key: it for it in pending}
        for s, _ in results:
            final[s.key] = s
            if s.gateway_status is not None and s.gateway_status not in TERMINAL_STATUSES:
                it = by_key[s.key]
                it.state = ItemState.SUBMITTED
                still.append(it)
        if on_pass is not None:
            on_pass(passes, len(still))
        if not still or time.monotonic() + poll_interval > deadline:
            break
        await asyncio.sleep(poll_interval)
        pending = still
    return ReconcileResult(tuple(final.values()))


async def reconcile_async(state_path: str | Path, gateway_factory: Callable[[], Any], table: PriceTable | None = None,
                          *, wait: float = 0.0, poll_interval: float = 1.0, concurrency: int = 16) -> ReconcileResult:
    """The coroutine form of ``reconcile``, for callers that already have an event loop."""
    try:
        db = connect(state_path)
    except StateLocked as exc:
        raise StateLocked(f"{exc} A running `pixbatch run` settles its own items; reconcile after it ends.") from None
    try:
        absorb_crashed_runs(db)  # a killed run's last item rows may lag its submit log
        pending = open_items(db)
        if not pending:
            return ReconcileResult(())
        from .report import run_price_table

        prices = table or run_price_table(db)
        gw = gateway_factory()
        try:
            return await reconcile_db(db, gw, prices, wait=wait, poll_interval=poll_interval,
                                      concurrency=concurrency, items=pending)
        finally:
            close = getattr(gw, "aclose", None)
            if close is not None:
                await close()
    finally:
        db.close()


def reconcile(state_path: str | Path, gateway_factory: Callable[[], Any], table: PriceTable | None = None, *,
              wait: float = 0.0, poll_interval: float = 1.0, concurrency: int = 16) -> ReconcileResult:
    """Open the state file read-write and reconcile it; ``gateway_factory()`` makes the (async) gateway.

    ``table`` None: the price table the last run used (``report.run_price_table``).

    Raises ``StateLocked`` while a run holds the file: that run settles its own items. When
    nothing is open, the gateway is not made (no key needed). Inside a running event loop,
    ``await reconcile_async(...)`` instead.
    """
    with reading(state_path):  # a file that is damaged past its header: a StateError, not a traceback
        return run_sync(lambda: reconcile_async(state_path, gateway_factory, table, wait=wait,
                                                poll_interval=poll_interval, concurrency=concurrency),
                        name="reconcile", instead="reconcile_async")
