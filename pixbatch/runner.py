"""The execution loop: ``run(manifest, options=...)`` -> ``RunSummary``.

Concurrency model
-----------------
One asyncio loop. ``concurrency`` is the number of items *in flight* (submitted and not yet
terminal, plus their download): a feeder walks the PENDING items step by step (manifest
order, pages read from the store) and starts one task per item when a slot is free. Each
task does intent -> POST -> request_id -> polls -> download -> settle. Every gateway call
goes through one adaptive token bucket (``ratelimit.py``). DuckDB is touched only by the
store's writer thread; the loop queues writes and awaits the commit of the two critical
ones (intent before the POST, request_id after the 202: see ``state.py``).

Budget
------
``committed`` = charged + reserved (+ abandoned ambiguous reservations) over the whole state
file, loaded at start and kept in memory: reserving the HIGH price of an item and checking
``committed + price <= budget`` is one synchronous step, so no interleaving of tasks can
overshoot, and because reservations are committed with the intent, neither can a crash.
When the next item does not fit, the feeder waits for in-flight items to settle (a charge
can be lower than its reservation); if it still does not fit with nothing in flight, the
run stops submitting and says what is left.

Polling
-------
Per step, the runner learns how long jobs take (from the gateway's created_at/completed_at,
else from what it observed) and polls an item first at about mean + one deviation after the
202, then at growing intervals (x1.5, capped). On the emulator's default timings that is
about two polls per completed item. Webhook mode would replace the poll loop of a task with
waiting on a per-request future fed by a callback endpoint (not implemented).

Chained steps
-------------
An item with an upstream waits until the upstream is COMPLETED (it is simply not returned by
``ready_page`` until then) and is sent with the upstream's media_url; when the upstream ends
in a failure state the item is BLOCKED (``state.block_downstream``), transitively.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import json
import os
import signal
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import state as st
from .contract import MEDIA_TYPES
from .errors import (
    AuthError,
    BadRequest,
    BudgetExceeded,
    GatewayError,
    InsufficientBalance,
    NotFound,
    PixbatchError,
    API_KEY_ENV,
)
from .gateway import DEFAULT_BASE_URL, Exchange, Gateway, JobStatus, SubmitUnknown
from .items import resolve_urls
from .money import format_usd
from .pricing import PriceTable
from .progress import NullProgress, Progress
from .ratelimit import AdaptiveRateLimiter
from .sizes import MEGAPIXEL, MAX_UPSCALE_MP, output_size as predicted_output_size

EXIT_OK, EXIT_INCOMPLETE, EXIT_BUDGET, EXIT_AUTH, EXIT_BALANCE, EXIT_INTERRUPTED = 0, 1, 3, 4, 5, 130
PAGE = 2000
POLL_GIVE_UP = 6  # rounds of (already retried) poll failures before an item is left for the next run
PIL_FORMATS = {"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}
MIME_TO_EXT = {v: k for k, v in MEDIA_TYPES.items()}


@dataclass(frozen=True)
class RunOptions:
    state_path: Path | None = None  # default: the manifest's state path
    budget_micros: int | None = None  # default: the manifest's budget (None: no cap)
    concurrency: int = 16
    max_rps: float | None = None
    base_url: str = DEFAULT_BASE_URL
    api_key: str | None = None  # default: $PIXAZO_API_KEY (never stored)
    retry_ambiguous: bool = False
    retry_errors: bool = False  # resubmit items that ended ERROR (the gateway did not charge them)
    force: bool = False
    download: bool = True
    pricing_path: Path | None = None
    timeout: float = 30.0
    status_interval: float = 1.0  # seconds between status-file (and progress) refreshes
    handle_signals: bool = False  # install SIGINT/SIGTERM handlers (the CLI does)
    poll_initial: float = 2.0  # first poll delay before anything has been learned
    poll_max_interval: float = 10.0
    # webhook mode: the gateway POSTs terminal statuses to webhook_url (which must reach
    # webhook_listen, "host:port", default: the URL's own host and port). A callback only
    # wakes the item up: its status is then read once from the gateway (callbacks are not
    # authenticated), and items poll as usual if no callback comes in time.
    webhook_url: str | None = None
    webhook_listen: str | None = None
    # check output names (the deep pass of load_manifest) unless the state file already holds
    # this very expansion: a caller that loads the manifest with deep=False sets this, so a
    # resume of an unchanged manifest does not walk every item twice more
    check_names: bool = False
    # seconds to wait for the state file while another process holds it: a `status` or a
    # `report` holds it for a moment; another run holds it to the end (then StateLocked)
    lock_wait: float = 3.0

    def public(self) -> dict[str, Any]:
        """The options as recorded in runs.options (no key)."""
        return {"budget_micros": self.budget_micros, "concurrency": self.concurrency, "max_rps": self.max_rps,
                "base_url": self.base_url, "retry_ambiguous": self.retry_ambiguous,
                "retry_errors": self.retry_errors, "force": self.force,
                "download": self.download, "pricing_path": str(self.pricing_path) if self.pricing_path else None}


@dataclass(frozen=True)
class RunSummary:
    run_id: str
    outcome: str  # completed|incomplete|budget|balance|auth|interrupted
    exit_code: int
    state_path: str
    output_dir: str
    steps: dict[str, dict[str, int]]  # step -> state -> count (this manifest's items)
    counts: dict[str, int]  # state -> count
    charged_run_micros: int  # charged by items settled in this run
    charged_total_micros: int  # everything charged in this state file
    reserved_micros: int  # still reserved (in flight + AMBIGUOUS)
    at_risk_micros: int  # AMBIGUOUS reservations
    peak_committed_micros: int  # highest charged+reserved seen during the run
    budget_micros: int | None
    left_items: int  # PENDING items not submitted
    left_low_micros: int
    left_high_micros: int
    submits: int
    polls: int
    downloads: int
    output_problems: int
    duration_s: float
    messages: tuple[str, ...] = ()
    http: dict[str, int] = field(default_factory=dict)  # "POST 202" -> exchanges this run ("GET none": no answer)

    @property
    def ambiguous(self) -> int:
        return self.counts.get(st.AMBIGUOUS, 0)

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)


class _PollClock:
    """Learns a step's job duration; says when to poll next."""

    def __init__(self, initial: float, cap: float):
        self.initial, self.cap = initial, cap
        self.mean: float | None = None
        self.var = 0.0

    def observe(self, seconds: float) -> None:
        if self.mean is None:
            self.mean = seconds
            self.var = (seconds * 0.25) ** 2
            return
        a = 0.15
        d = seconds - self.mean
        self.mean += a * d
        self.var = (1 - a) * (self.var + a * d * d)

    def first(self) -> float:
        if self.mean is None:
            return self.initial
        # a small margin past mean + one deviation, scaled down for jobs that take no time
        return min(self.cap, self.mean + self.var ** 0.5 + min(0.02, 0.1 * self.mean))

    def next(self, k: int) -> float:
        base = self.initial / 2 if self.mean is None else max(0.05, 0.3 * self.mean)
        return min(self.cap, base * (1.5 ** (k - 1)))


_EXPANSION_CODE = ("expand.py", "items.py", "sizes.py", "contract.py",
                   *sorted(f"manifest/{p.name}" for p in (Path(__file__).resolve().parent / "manifest").glob("*.py")))


def _expansion_fingerprint(db: Any, manifest: Any, pricing_path: Path | None) -> str | None:
    """A digest of everything the expansion depends on, or None when it cannot be known.

    The manifest as loaded (its repr: steps, defaults, inline inputs, paths), the bytes of
    its ``from:`` files, the probed sizes in the state file, the pricing file and the code
    that expands. Equal fingerprints give equal expansions, so a resume of an unchanged
    manifest reuses the last run's scope instead of walking a million items again.
    """
    h = hashlib.sha256(b"pixbatch-expansion-1\n")
    try:
        h.update(repr(manifest).encode())
        for src in manifest.sources:
            path = getattr(src, "path", None)
            if path is not None:
                h.update(f"\nfile {path}\n".encode())
                with open(path, "rb") as f:
                    for chunk in iter(lambda: f.read(1 << 20), b""):
                        h.update(chunk)
        here = Path(__file__).resolve().parent
        for name in _EXPANSION_CODE:
            h.update((here / name).read_bytes())
        if pricing_path is not None:
            h.update(b"\npricing\n" + Path(pricing_path).read_bytes())
    except (OSError, ValueError):
        return None
    n, digest = db.execute("SELECT count(*), coalesce(sum(hash(url, width, height)::HUGEINT), 0)::VARCHAR FROM probes "
                           "WHERE error IS NULL AND width IS NOT NULL").fetchone()
    h.update(f"\nprobes {n} {digest}\n".encode())
    return h.hexdigest()[:32]


def _durable(fut: Any) -> Any:
    return fut if isinstance(fut, asyncio.Future) else asyncio.wrap_future(fut)


class _Run:
    def __init__(self, manifest: Any, options: RunOptions, gateway: Gateway | None, progress: Progress):
        self.m = manifest
        self.o = options
        self.progress = progress
        self.key = options.api_key or os.environ.get(API_KEY_ENV) or None
        if gateway is None and not self.key:
            raise AuthError(f"no API key: set {API_KEY_ENV} to your Pixazo subscription key and run again "
                            "(the key is read from the environment only, never stored).")
        self.table = PriceTable.load(options.pricing_path)
        self.state_path = Path(options.state_path or manifest.state_path)
        self.output_dir = Path(manifest.output_dir)
        self.budget = options.budget_micros if options.budget_micros is not None else manifest.budget_micros
        self.run_id = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + uuid.uuid4().hex[:8]
        self._gateway = gateway
        self.gw: Gateway | None = None
        self.store: st.Store | None = None
        self.scope = ""
        self.committed = 0
        self.peak = 0
        self.charged_run = 0
        self.stop_reason: str | None = None  # interrupt|balance|auth|budget
        self.stop_message: str | None = None
        self.inflight: set[str] = set()
        self.skip: set[str] = set()
        self.tasks: set[asyncio.Task] = set()
        self.task_errors: list[BaseException] = []
        self.polling: set[asyncio.Task] = set()
        self.item_done = asyncio.Event()
        self.done_seq = 0  # items finished (and stop requests): waiters compare, never miss one
        self.clocks: dict[str, _PollClock] = {}
        self.aliases: dict[str, list[str]] = {}
        self.downloaded: set[str] = set()
        self.submits = self.polls = self.downloads = self.output_problems = 0
        self.http: dict[str, int] = {}
        self.finished_this_run = 0
        self.left = (0, 0, 0)
        self.t0 = time.monotonic()
        self.sigints = 0
        self.steps_order = [s.id for s in manifest.steps]
        self.wakeups: dict[str, asyncio.Event] = {}
        self.early_wakeups: set[str] = set()
        self.estimate = (0, 0)

    # -- events ---------------------------------------------------------------------------

    def emit(self, kind: str, key: str | None, **detail: Any) -> None:
        assert self.store is not None
        self.store.put_event(self.run_id, key, kind, detail)
        self.progress.event(kind, key, detail)

    def on_exchange(self, ex: Exchange) -> None:
        """Every exchange is counted and shown to the progress (``--json`` lines); the state
        file keeps the ones that went wrong (no answer, or not 2xx) one by one, and the counts
        of all in the run's end event: a row per successful poll was a fifth of its writes."""
        tag = f"{ex.method} {ex.status if ex.status is not None else 'none'}"
        self.http[tag] = self.http.get(tag, 0) + 1
        d = {"method": ex.method, "path": ex.path, "status": ex.status, "ms": ex.ms}
        if ex.error:
            d["error"] = ex.error
        if ex.status is None or not 200 <= ex.status < 300:
            assert self.store is not None
            self.store.put_event(self.run_id, None, "http", d)
        self.progress.event("http", None, d)

    def _track(self, delta: int) -> None:
        self.committed += delta
        self.peak = max(self.peak, self.committed)
        if self.budget is not None and self.committed > self.budget:  # a bug, never a user error
            raise AssertionError(f"budget invariant broken: committed {self.committed} > budget {self.budget}")

    # -- setup ----------------------------------------------------------------------------

    def _expand(self, sizes: Callable[[str], Any] | None):
        from .expand import expand

        return expand(self.m, sizes=sizes)

    def _setup(self, db: Any) -> dict[str, Any]:
        """On the writer thread, before anything is sent: ingest, recover, reset, totals."""
        fingerprint = _expansion_fingerprint(db, self.m, self.o.pricing_path)
        last = db.execute("SELECT json_extract_string(options, '$.scope'), json_extract_string(options, "
                          "'$.fingerprint') FROM runs ORDER BY started_at DESC LIMIT 1").fetchone()
        scope = None
        if fingerprint is not None and last and last[0] and last[1] == fingerprint:
            # same manifest, input files, probed sizes and code as the last run, whose row is
            # written only after its ingest committed: its scope is this expansion's
            if db.execute("SELECT count(*) FROM items WHERE scope = ?", [last[0]]).fetchone()[0]:
                scope = last[0]
        if scope is None:
            from .manifest.names import NameCheck

            probes = {u: (w, h) for u, w, h in db.execute(
                "SELECT url, width, height FROM probes WHERE error IS NULL AND width IS NOT NULL").fetchall()}
            sizes = probes.get if probes else None
            # output names are checked on the first walk of the expansion (not one of their own)
            names = NameCheck(self.m) if self.o.check_names or not self.m.names_checked else None
            first_walk = names.wrap(self._expand(sizes)) if names else self._expand(sizes)

            def check_names() -> None:
                if names:
                    names.verify()

            if last is None and fingerprint is not None:
                # a fresh state file: one walk (ingest). The fingerprint names the expansion as
                # well as its digest would (equal fingerprints, equal expansions); a later run
                # whose fingerprint differs computes the digest, which differs, and ingests again
                scope = "f" + fingerprint[:31]
                st.ingest(db, first_walk, scope, self.table, self.steps_order, before_commit=check_names)
            else:
                scope, _n = st.expansion_scope(first_walk)
                check_names()
                have = db.execute("SELECT count(*) FROM items WHERE scope = ?", [scope]).fetchone()[0]
                if not (last and last[0] == scope and have):
                    st.ingest(db, self._expand(sizes), scope, self.table, self.steps_order)
        self.scope = scope
        manifest_sha = hashlib.sha256(Path(self.m.path).read_bytes()).hexdigest() if Path(self.m.path).exists() else None
        db.execute("INSERT INTO runs (run_id, manifest_path, manifest_sha256, base_url, budget_micros, outcome, pid, "
                   "options) VALUES (?, ?, ?, ?, ?, 'running', ?, ?)",
                   [self.run_id, str(self.m.path), manifest_sha, self.o.base_url, self.budget, os.getpid(),
                    json.dumps({**self.o.public(), "scope": scope, "fingerprint": fingerprint})])
        ambiguous_now = st.recover(db, self.run_id)
        db.execute("BEGIN TRANSACTION")
        if self.o.force:
            db.execute("UPDATE items SET state = 'PENDING', request_id = NULL, gateway_status = NULL, error = NULL, "
                       "media_url = NULL, media_type = NULL, polling_path = NULL, run_id = ? WHERE scope = ? AND "
                       "state IN ('COMPLETED', 'FAILED', 'ERROR', 'FAILED_VALIDATION', 'BLOCKED')",
                       [self.run_id, scope])
        if self.o.retry_errors and not self.o.force:
            # ERROR is the gateway's own failure and is not charged: sending again costs nothing extra
            db.execute("UPDATE items SET state = 'PENDING', request_id = NULL, gateway_status = NULL, error = NULL, "
                       "media_url = NULL, media_type = NULL, polling_path = NULL, run_id = ? WHERE scope = ? AND "
                       "state = 'ERROR'", [self.run_id, scope])
        if self.o.retry_ambiguous or self.o.retry_errors:
            db.execute("UPDATE items SET state = 'PENDING', error = NULL WHERE scope = ? AND state = 'BLOCKED'", [scope])
        if self.o.retry_ambiguous:
            keys = [r[0] for r in db.execute("SELECT key FROM items WHERE scope = ? AND state = 'AMBIGUOUS'",
                                             [scope]).fetchall()]
            if keys:
                # the old attempt's reservation stays counted (it may have been charged)
                st.abandon(db, keys, self.run_id)
                db.execute("UPDATE items SET state = 'PENDING', reserved_micros = 0, error = NULL, run_id = ? "
                           "WHERE list_contains(?::VARCHAR[], key)", [self.run_id, keys])
        db.execute("COMMIT")
        st.block_downstream(db, scope, self.run_id)
        t = st.totals(db)
        low, high, n_left = db.execute(
            "SELECT coalesce(sum(est_low_micros), 0), coalesce(sum(est_high_micros), 0), count(*) FROM items "
            "WHERE scope = ? AND state = 'PENDING'", [scope]).fetchone()
        in_flight_low = db.execute("SELECT coalesce(sum(est_low_micros), 0) FROM items WHERE state IN "
                                   "('SUBMITTING', 'SUBMITTED')").fetchone()[0]
        est = db.execute("SELECT coalesce(sum(est_low_micros), 0), coalesce(sum(est_high_micros), 0) FROM items "
                         "WHERE scope = ?", [scope]).fetchone()
        db.execute("UPDATE runs SET estimate_low_micros = ?, estimate_high_micros = ? WHERE run_id = ?",
                   [est[0], est[1], self.run_id])
        aliases: dict[str, list[str]] = {}
        for k, name in db.execute("SELECT key, output_name FROM aliases WHERE list_contains(?::VARCHAR[], step) "
                                  "ORDER BY step, idx", [self.steps_order]).fetchall():
            aliases.setdefault(k, []).append(name)
        self.aliases = aliases
        return {"totals": t, "pending_low": int(low), "pending_high": int(high), "pending": int(n_left),
                "in_flight_low": int(in_flight_low), "ambiguous_now": ambiguous_now, "estimate": est}

    # -- main -----------------------------------------------------------------------------

    async def main(self) -> RunSummary:
        self.store = st.Store.open(self.state_path, wait=self.o.lock_wait)
        self.store.bind_loop(asyncio.get_running_loop())
        try:
            return await self._main()
        finally:
            with contextlib.suppress(Exception):
                self.store.close()

    async def _main(self) -> RunSummary:
        store = self.store
        assert store is not None
        info = await store.call(self._setup)
        t: st.Totals = info["totals"]
        self.estimate = info["estimate"]
        self.committed = t.committed_micros
        self.peak = self.committed
        if info["ambiguous_now"]:
            self.emit("run", None, message=f"{info['ambiguous_now']} item(s) were being submitted when the last run "
                      "stopped: now AMBIGUOUS")
        if self.budget is not None:
            lower = t.charged_micros + t.abandoned_micros + info["pending_low"] + info["in_flight_low"]
            if lower > self.budget:
                await self._finish_run("budget")
                raise BudgetExceeded(
                    f"the budget {format_usd(self.budget)} cannot cover this run: already charged "
                    f"{format_usd(t.charged_micros)}, and the {info['pending']} remaining item(s) cost at least "
                    f"{format_usd(info['pending_low'] + info['in_flight_low'])}. Raise --budget (or budget_usd in the "
                    "manifest), or trim the manifest; `pixbatch estimate` shows the breakdown.")
        self.gw = self._gateway or Gateway(
            self.o.base_url, self.key, timeout=self.o.timeout,
            limiter=AdaptiveRateLimiter(self.o.max_rps), on_exchange=self.on_exchange,
            max_connections=max(16, self.o.concurrency * 2))
        if self._gateway is not None and self._gateway.on_exchange is None:
            self._gateway.on_exchange = self.on_exchange
        self.slots = asyncio.Semaphore(max(1, self.o.concurrency))
        loop = asyncio.get_running_loop()
        if self.o.handle_signals:
            for sig in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.add_signal_handler(sig, self.on_signal)
        self.progress.start({"run_id": self.run_id, "state_path": str(self.state_path), "budget_micros": self.budget,
                             "estimate_low_micros": self.estimate[0], "estimate_high_micros": self.estimate[1]})
        self.emit("run", None, event="start", pid=os.getpid(), budget_micros=self.budget, committed=self.committed)
        status_task = asyncio.create_task(self._status_loop())
        hook = self._start_webhook_receiver(loop) if self.o.webhook_url else None
        try:
            await self._resume_in_flight()
            await self._feed()
            await self._drain()
            if self.o.download and self.stop_reason not in ("auth", "interrupt"):
                await self._verify_outputs()
        finally:
            for task in list(self.tasks):
                task.cancel()
            await asyncio.gather(*self.tasks, return_exceptions=True)
            status_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await status_task
            if hook is not None:
                await asyncio.to_thread(hook.stop)
            if self._gateway is None and self.gw is not None:
                await self.gw.aclose()
            if self.o.handle_signals:
                for sig in (signal.SIGINT, signal.SIGTERM):
                    with contextlib.suppress(NotImplementedError, RuntimeError):
                        loop.remove_signal_handler(sig)
        summary = await self._summary()
        await self._finish_run(summary.outcome)
        self.emit("run", None, event="end", outcome=summary.outcome, exit_code=summary.exit_code, http=self.http)
        await store.commit()
        await self._write_status(running=False, outcome=summary.outcome)
        self.progress.stop(summary)
        if self.task_errors:
            raise self.task_errors[0]
        return summary

    def _start_webhook_receiver(self, loop: asyncio.AbstractEventLoop) -> Any:
        from urllib.parse import urlsplit

        from starlette.applications import Starlette
        from starlette.requests import Request
        from starlette.responses import Response
        from starlette.routing import Route

        from .serve import serve_in_thread

        assert self.o.webhook_url is not None
        url = urlsplit(self.o.webhook_url)
        listen = self.o.webhook_listen or f"{url.hostname}:{url.port or (443 if url.scheme == 'https' else 80)}"
        host, _, port = listen.rpartition(":")

        async def callback(request: Request) -> Response:
            try:
                data = json.loads(await request.body())
                rid = data["request_id"]
            except (ValueError, KeyError, TypeError):
                return Response(status_code=400)
            if isinstance(rid, str):
                loop.call_soon_threadsafe(self._wake, rid)
            return Response(status_code=200)

        app = Starlette(routes=[Route(url.path or "/", callback, methods=["POST"])])
        return serve_in_thread(app, host=host or "127.0.0.1", port=int(port))

    def _wake(self, request_id: str) -> None:
        ev = self.wakeups.get(request_id)
        if ev is not None:
            ev.set()
        elif len(self.early_wakeups) < 1_000_000:
            self.early_wakeups.add(request_id)  # the callback beat our own record of the 202

    def on_signal(self) -> None:
        self.sigints += 1
        if self.sigints >= 2:
            # state is consistent: every critical write was committed before/after its HTTP call
            os._exit(EXIT_INTERRUPTED)
        self.interrupt()

    def interrupt(self) -> None:
        """Stop submitting; let POSTs in flight record their request id; stop polling."""
        if self.stop_reason is None:
            self.stop_reason = "interrupt"
            self.stop_message = "interrupted"
        for task in list(self.polling):
            task.cancel()
        self._signal_done()

    async def _finish_run(self, outcome: str) -> None:
        assert self.store is not None
        self.store.put_sql("UPDATE runs SET finished_at = now()::TIMESTAMP, outcome = ? WHERE run_id = ?",
                           [outcome, self.run_id])
        await self.store.commit()

    # -- feeding ----------------------------------------------------------------------------

    def _spawn(self, coro: Any) -> asyncio.Task:
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # a bug, not a gateway answer: the item keeps its committed state (re-run resumes
            # it); the error is raised once the run has recorded everything
            self.task_errors.append(task.exception())  # type: ignore[arg-type]
            self._stop("interrupt", f"internal error: {task.exception()!r}")

    async def _resume_in_flight(self) -> None:
        assert self.store is not None
        rows = await self.store.call(lambda db: st.select_rows(db, "i.state = 'SUBMITTED'", [], order="submitted_at"))
        for row in rows:
            await self.slots.acquire()
            self.inflight.add(row.key)
            self._spawn(self._item(row, None, resumed=True))

    async def _feed(self) -> None:
        assert self.store is not None
        store = self.store
        while self.stop_reason is None:
            seq0 = self.done_seq
            for step in self.steps_order:
                after = -1
                while self.stop_reason is None:
                    page = await store.call(lambda db, s=step, a=after: st.ready_page(
                        db, self.scope, s, a, PAGE, chained=self.m.step(s).upstream is not None))
                    if not page:
                        break
                    after = page[-1][0].idx
                    for row, up in page:
                        if row.key in self.inflight or row.key in self.skip:
                            continue
                        if not await self._start(row, up):
                            return
            if self.stop_reason is not None:
                return
            await store.call(lambda db: st.block_downstream(db, self.scope, self.run_id))
            pending = await store.call(lambda db: db.execute(
                "SELECT count(*) FROM items WHERE scope = ? AND state = 'PENDING'", [self.scope]).fetchone()[0])
            waiting = pending - len(self.skip)
            if waiting <= 0:
                return
            if self.done_seq != seq0:
                continue  # something finished during the pass: its downstream may be ready now
            if not self.tasks:
                return  # what is left waits on items this run will not send
            await self._wait_done(seq0)

    async def _wait_done(self, seq: int) -> None:
        """Until an item finishes after ``seq`` (or the run is told to stop)."""
        while self.done_seq == seq and self.stop_reason is None:
            self.item_done.clear()
            await self.item_done.wait()

    def _signal_done(self) -> None:
        self.done_seq += 1
        self.item_done.set()

    async def _start(self, row: st.ItemRow, up: st.ItemRow | None) -> bool:
        """Take a slot, reserve the price, start the item. False: stop feeding."""
        await self.slots.acquire()
        if self.stop_reason is not None:
            self.slots.release()
            return False
        body = row.body_dict
        input_size = row.input_size
        if up is not None:
            if up.output_width and up.output_height:
                input_size = (up.output_width, up.output_height)
            elif input_size is None:
                input_size = predicted_output_size(up.op, up.body_dict, up.input_size)
        price = self.table.price(row.op, body, input_size)
        amount = price.high_micros
        while self.budget is not None and self.committed + amount > self.budget:
            if not self.inflight:
                self.slots.release()
                self.stop_reason = "budget"
                await self._left_over(extra=(1, price.low_micros, price.high_micros))
                self.stop_message = (
                    f"the next item would not fit the budget {format_usd(self.budget)} "
                    f"(committed {format_usd(self.committed)}, next {format_usd(amount)}).")
                self.emit("budget", row.key, event="stop", committed=self.committed, budget=self.budget, next=amount)
                return False
            await self._wait_done(self.done_seq)
            if self.stop_reason is not None:
                self.slots.release()
                return False
        self._track(amount)
        row.reserved_micros = amount
        row.tier = price.high.name
        if input_size:
            row.input_width, row.input_height = input_size
        self.inflight.add(row.key)
        self._spawn(self._item(row, up, resumed=False))
        return True

    async def _left_over(self, extra: tuple[int, int, int] = (0, 0, 0)) -> None:
        assert self.store is not None
        n, lo, hi = await self.store.call(lambda db: db.execute(
            "SELECT count(*), coalesce(sum(est_low_micros), 0), coalesce(sum(est_high_micros), 0) FROM items "
            "WHERE scope = ? AND state = 'PENDING'", [self.scope]).fetchone())
        self.left = (int(n), int(lo), int(hi))

    async def _drain(self) -> None:
        while self.tasks:
            await asyncio.gather(*list(self.tasks), return_exceptions=True)

    # -- one item -----------------------------------------------------------------------------

    async def _item(self, row: st.ItemRow, up: st.ItemRow | None, *, resumed: bool) -> None:
        try:
            if not resumed:
                if not await self._submit(row, up):
                    return
                if self.stop_reason in ("interrupt", "auth"):
                    return
            task = asyncio.current_task()
            assert task is not None
            self.polling.add(task)
            try:
                status = await self._poll(row, resumed=resumed)
            finally:
                self.polling.discard(task)
            if status is not None:
                await self._settle(row, status)
        except asyncio.CancelledError:
            pass
        finally:
            self.inflight.discard(row.key)
            self.slots.release()
            self._signal_done()

    def _put(self, row: st.ItemRow, *, wait: bool = False, attempt: st.Attempt | None = None,
             intent: st.Intent | None = None, **event: Any):
        assert self.store is not None
        row.run_id = self.run_id
        fut = self.store.put_item(row, wait=wait, attempt=attempt, intent=intent)
        self.emit("state", row.key, state=row.state, step=row.step, committed=self.committed, **event)
        return fut

    def _release(self, row: st.ItemRow) -> None:
        self._track(-row.reserved_micros)
        row.reserved_micros = 0

    async def _submit(self, row: st.ItemRow, up: st.ItemRow | None) -> bool:
        assert self.store is not None and self.gw is not None
        body = row.body_dict
        if up is not None:
            body = resolve_urls(body, {up.key: up.media_url or ""})
        row.attempts += 1
        n = row.attempts
        row.state = st.SUBMITTING
        row.error = None
        intent = st.Intent(row.key, n, self.run_id, st.utcnow(), row.reserved_micros)
        await _durable(self._put(row, wait=True, intent=intent, reserved=row.reserved_micros))  # (1) before the POST
        self.submits += 1
        try:
            acc = await self.gw.submit(row.op, body, webhook_url=self.o.webhook_url)
        except SubmitUnknown as exc:
            row.state = st.AMBIGUOUS
            row.error = str(exc)
            self._put(row, attempt=st.Attempt.of(intent, "ambiguous", http_status=exc.status_code), reason=str(exc))
            return False
        except (BadRequest, NotFound) as exc:
            self._release(row)
            row.state = st.FAILED_VALIDATION
            row.error = str(exc)
            row.charged_micros = row.charged_micros or 0
            row.finished_at = st.utcnow()
            self._put(row, attempt=st.Attempt.of(intent, "rejected", http_status=exc.status_code), reason=str(exc))
            return False
        except (InsufficientBalance, AuthError) as exc:
            self._release(row)
            row.state = st.PENDING
            row.error = str(exc)
            self.skip.add(row.key)
            self._put(row, attempt=st.Attempt.of(intent, "rejected", http_status=exc.status_code), reason=str(exc))
            self._stop("balance" if isinstance(exc, InsufficientBalance) else "auth", str(exc))
            return False
        except GatewayError as exc:  # definite refusals that outlasted the retries, or never sent
            self._release(row)
            row.state = st.PENDING
            row.error = str(exc)
            self.skip.add(row.key)
            self._put(row, attempt=st.Attempt.of(intent, "rejected", http_status=exc.status_code), reason=str(exc))
            return False
        row.state = st.SUBMITTED
        row.request_id = acc.request_id
        row.polling_path = acc.polling_path
        row.gateway_status = acc.status
        row.submitted_at = st.utcnow()
        accepted = st.Attempt.of(intent, "accepted", request_id=acc.request_id, accepted_at=row.submitted_at,
                                 http_status=202, polling_path=acc.polling_path)
        # (2) the request id: queued at once, committed ahead of anything later about this item;
        # polling (free, no side effects) need not wait for it: a crash before the commit
        # leaves the item AMBIGUOUS whether or not its first poll had gone out
        self._put(row, attempt=accepted, request_id=acc.request_id)
        return True

    def _stop(self, reason: str, message: str) -> None:
        if self.stop_reason in (None, "budget", "interrupt") or reason == "auth":
            self.stop_reason = reason
            self.stop_message = message
        if reason == "auth":  # polls would all get 401 too; POSTs in flight record their own answer
            for task in list(self.polling):
                if task is not asyncio.current_task():
                    task.cancel()
        self._signal_done()

    async def _poll(self, row: st.ItemRow, *, resumed: bool) -> JobStatus | None:
        assert self.gw is not None and row.request_id is not None
        clock = self.clocks.setdefault(row.step, _PollClock(self.o.poll_initial, self.o.poll_max_interval))
        t_submit = time.monotonic()
        delay = 0.0 if resumed else clock.first()
        k = failures = 0
        last = row.gateway_status
        if self.o.webhook_url and not resumed:
            delay = await self._await_callback(row.request_id, clock)
        while True:
            await asyncio.sleep(delay)
            try:
                s = await self.gw.status(row.request_id, row.polling_path)
            except AuthError as exc:
                self._stop("auth", str(exc))
                return None
            except NotFound as exc:
                row.error = f"polling failed: {exc}"
                self._put(row, reason=row.error)
                return None
            except GatewayError as exc:
                # the request is accepted and polling is free: outlast a storm before giving up
                # (the item stays SUBMITTED with its request id; a re-run polls it again)
                failures += 1
                if failures >= POLL_GIVE_UP:
                    row.error = f"polling failed: {exc}"
                    self._put(row, reason=row.error)
                    return None
                delay = self.gw.policy.backoff(failures + 3)
                continue
            failures = 0
            self.polls += 1
            row.polls += 1
            if s.status != last:
                if s.status == "PROCESSING" and row.started_at is None:
                    row.started_at = st.utcnow()
                row.gateway_status = last = s.status
                if not s.terminal:
                    self._put(row, gateway_status=s.status)
            if s.terminal:
                if not resumed:
                    clock.observe(s.server_seconds if s.server_seconds is not None else time.monotonic() - t_submit)
                elif s.server_seconds is not None:
                    clock.observe(s.server_seconds)
                return s
            k += 1
            delay = clock.next(k)

    async def _await_callback(self, request_id: str, clock: _PollClock) -> float:
        """Wait for the webhook; returns the delay before the first poll (0 once called back)."""
        if request_id in self.early_wakeups:
            self.early_wakeups.discard(request_id)
            return 0.0
        ev = self.wakeups.setdefault(request_id, asyncio.Event())
        try:
            await asyncio.wait_for(ev.wait(), timeout=max(30.0, 4 * clock.first()))
            return 0.0
        except asyncio.TimeoutError:
            return 0.0  # no callback in time: poll as usual from now on
        finally:
            self.wakeups.pop(request_id, None)

    async def _settle(self, row: st.ItemRow, s: JobStatus) -> None:
        body = row.body_dict
        row.finished_at = st.utcnow()
        if row.started_at is None:
            row.started_at = row.finished_at
        row.gateway_status = s.status
        row.error = s.error
        if s.status == "COMPLETED":
            row.media_url = s.media_urls[0] if s.media_urls else None
            row.media_type = s.media_type
            if self.o.download and row.media_url:
                try:
                    await self._download(row)
                except (PixbatchError, OSError) as exc:  # the item is done and paid; the file comes next run
                    row.error = f"download failed: {exc}"
        out_size = (row.output_width, row.output_height) if row.output_width and row.output_height else None
        if (out_size is None and s.status == "COMPLETED" and row.media_url and row.op == "upscale"
                and body.get("upscale_mode", "target") == "factor"):
            out_size = await self._measure(row)  # the price depends on it: read just the image header
        charge = self.table.charge_for(row.op, s.status, out_size, body, row.input_size)
        reserved = row.reserved_micros
        self._track(charge - reserved)
        row.reserved_micros = 0
        row.charged_micros = (row.charged_micros or 0) + charge
        self.charged_run += charge
        row.state = s.status
        self.finished_this_run += 1
        self._put(row, charged=charge, released=reserved)

    # -- outputs ------------------------------------------------------------------------------

    async def _measure(self, row: st.ItemRow) -> tuple[int, int] | None:
        """Output size from the first bytes of the media URL (no download): prices factor upscales."""
        from .probe import probe_sizes_async

        assert row.media_url is not None
        got = (await probe_sizes_async([row.media_url], concurrency=1, timeout=self.o.timeout)).get(row.media_url)
        if got is None or got.size is None:
            self.emit("download", row.key, ok=False, error=f"could not measure the output: {got.error if got else '?'}")
            return None
        row.output_width, row.output_height = got.size
        return got.size

    def _target(self, name: str) -> Path:
        root = self.output_dir.resolve()
        p = (root / name).resolve()
        if root != p and root not in p.parents:
            raise PixbatchError(f"output name {name!r} escapes the output directory {root}; fix the naming template.")
        return p

    async def _download(self, row: st.ItemRow) -> None:
        assert self.gw is not None and self.store is not None and row.media_url
        names = [n for n in [row.output_name, *self.aliases.get(row.key, [])] if n]
        if not names:
            return
        try:
            dl = await self.gw.download(row.media_url)
        except GatewayError as exc:
            self.emit("download", row.key, ok=False, error=str(exc))
            raise
        self.downloads += 1
        info = await asyncio.to_thread(self._write_outputs, row, dl.data, dl.content_type, names)
        row.output_width, row.output_height = info["width"], info["height"]
        if info["problems"]:
            self.output_problems += 1
            row.error = "output check: " + "; ".join(info["problems"])
        for name in names:
            self.store.put_output(st.OutputRow(row.key, name, info["sha256"], len(dl.data), info["width"],
                                               info["height"], info["media_type"]))
        self.downloaded.add(row.key)
        self.emit("download", row.key, ok=not info["problems"], bytes=len(dl.data), width=info["width"],
                  height=info["height"], problems=info["problems"])

    def _write_outputs(self, row: st.ItemRow, data: bytes, content_type: str | None, names: list[str]) -> dict:
        from PIL import Image

        problems: list[str] = []
        width = height = None
        fmt = None
        try:
            with Image.open(io.BytesIO(data)) as im:
                width, height = im.size
                fmt = im.format
        except Exception as exc:  # Pillow raises many types for bad data; recorded, not hidden
            problems.append(f"not a readable image ({type(exc).__name__})")
        body = row.body_dict
        media_type = row.media_type or (content_type or "").split(";")[0] or None
        if row.op == "upscale":
            want = PIL_FORMATS.get(body.get("output_format", "jpg"))
        else:
            want = PIL_FORMATS.get(MIME_TO_EXT.get(media_type or "", ""), None)
        if fmt and want and fmt != want:
            problems.append(f"format {fmt}, expected {want}")
        if width and height:
            pixels = width * height
            if row.op == "upscale":
                cap = (body.get("target", 4) if body.get("upscale_mode", "target") == "target" else MAX_UPSCALE_MP)
                if pixels > cap * MEGAPIXEL:
                    problems.append(f"{width}x{height} is more than {cap} MP")
                exp = predicted_output_size(row.op, body, row.input_size)
                if exp and (width, height) != tuple(exp):
                    problems.append(f"{width}x{height}, expected {exp[0]}x{exp[1]}")
            elif pixels > 2 * MEGAPIXEL:
                problems.append(f"{width}x{height} is far more than the ~1 MP an edit produces")
        sha = hashlib.sha256(data).hexdigest()
        for name in names:
            target = self._target(name)
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.{os.getpid()}.part")
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        return {"sha256": sha, "width": width, "height": height, "media_type": media_type, "problems": problems}

    async def _verify_outputs(self) -> None:
        """Completed items whose files are missing or corrupt are downloaded again (never resubmitted)."""
        assert self.store is not None
        for step in self.steps_order:
            after = -1
            while self.stop_reason not in ("auth", "interrupt"):
                rows = await self.store.call(lambda db, s=step, a=after: st.select_rows(
                    db, "i.scope = ? AND i.step = ? AND i.idx > ? AND i.state = 'COMPLETED' AND i.media_url IS NOT NULL",
                    [self.scope, s, a], limit=PAGE))
                if not rows:
                    break
                after = rows[-1].idx
                todo = [r for r in rows if r.key not in self.downloaded]
                if not todo:
                    continue
                keys = [r.key for r in todo]
                recorded = await self.store.call(lambda db: {(k, p): h for k, p, h in db.execute(
                    "SELECT key, path, sha256 FROM outputs WHERE list_contains(?::VARCHAR[], key)", [keys]).fetchall()})
                stale = await asyncio.to_thread(self._stale, todo, recorded)
                sem = asyncio.Semaphore(max(1, self.o.concurrency))

                async def refetch(r: st.ItemRow) -> None:
                    async with sem:
                        try:
                            await self._download(r)
                        except (PixbatchError, OSError) as exc:
                            self.emit("download", r.key, ok=False, error=str(exc))
                        else:
                            self.store.put_item(r)  # type: ignore[union-attr]

                await asyncio.gather(*(refetch(r) for r in stale))

    def _stale(self, rows: list[st.ItemRow], recorded: dict[tuple[str, str], str]) -> list[st.ItemRow]:
        out = []
        for r in rows:
            for name in [n for n in [r.output_name, *self.aliases.get(r.key, [])] if n]:
                sha = recorded.get((r.key, name))
                p = self._target(name)
                if sha is None or not p.exists() or _sha256_file(p) != sha:
                    out.append(r)
                    break
        return out

    # -- status and summary -------------------------------------------------------------------

    async def _snapshot(self, *, running: bool, outcome: str | None = None) -> st.StatusSnapshot:
        assert self.store is not None
        steps, t = await self.store.call(lambda db: (st.counts_by_step(db, self.scope), st.totals(db)))
        elapsed = max(1e-6, time.monotonic() - self.t0)
        rate = self.finished_this_run / elapsed if running else None
        remaining = sum(n for c in steps.values() for s, n in c.items() if s in (st.PENDING, st.SUBMITTING, st.SUBMITTED))
        eta = remaining / rate if rate else None
        return st.StatusSnapshot(
            state_path=str(self.state_path), source="runner", running=running, updated_at=st._iso(st.utcnow()),
            run_id=self.run_id, pid=os.getpid(), outcome=outcome or "running", manifest_path=str(self.m.path),
            steps=steps, charged_micros=t.charged_micros, reserved_micros=t.reserved_micros,
            at_risk_micros=t.at_risk_micros, budget_micros=self.budget, estimate_low_micros=int(self.estimate[0]),
            estimate_high_micros=int(self.estimate[1]), rate_per_s=rate, eta_s=eta)

    async def _write_status(self, *, running: bool, outcome: str | None = None) -> None:
        snap = await self._snapshot(running=running, outcome=outcome)
        await asyncio.to_thread(st.write_status_file, snap)
        self.progress.update(snap)

    async def _status_loop(self) -> None:
        while True:
            with contextlib.suppress(PixbatchError, OSError):
                await self._write_status(running=True)
            await asyncio.sleep(self.o.status_interval)

    async def _summary(self) -> RunSummary:
        assert self.store is not None
        await self.store.commit()
        snap = await self._snapshot(running=False)
        await self._left_over()
        counts = snap.totals()
        n_left, lo, hi = self.left
        msgs: list[str] = []
        if self.stop_reason == "auth":
            outcome, code = "auth", EXIT_AUTH
            msgs.append(f"Stopped: {self.stop_message}")
        elif self.stop_reason == "balance":
            outcome, code = "balance", EXIT_BALANCE
            msgs.append("The gateway answered 402 Insufficient Balance: top up the Pixazo wallet, then run the same "
                        f"command again to resume ({n_left} item(s) not submitted yet).")
        elif self.stop_reason == "interrupt":
            outcome, code = "interrupted", EXIT_INTERRUPTED
            msgs.append("Interrupted: run the same command again to resume; submitted items will be polled, "
                        "not resent.")
        elif self.stop_reason == "budget":
            outcome, code = "budget", EXIT_BUDGET
            cost = format_usd(lo) if lo == hi else f"{format_usd(lo)} to {format_usd(hi)}"
            msgs.append(f"Stopped at the budget ({format_usd(self.budget or 0)}): {n_left} item(s) left, which would "
                        f"cost {cost}. Raise --budget and run again to continue.")
        else:
            done = counts.get(st.COMPLETED, 0) == sum(counts.values())
            outcome, code = ("completed", EXIT_OK) if done else ("incomplete", EXIT_INCOMPLETE)
        amb = counts.get(st.AMBIGUOUS, 0)
        if amb:
            msgs.append(f"{amb} AMBIGUOUS item(s) ({format_usd(snap.at_risk_micros)} at risk): the gateway may have "
                        "accepted and charged them. Re-run with --retry-ambiguous to resubmit them.")
        bad = {s: counts.get(s, 0) for s in (st.FAILED, st.ERROR, st.FAILED_VALIDATION, st.BLOCKED) if counts.get(s)}
        if bad:
            msgs.append(", ".join(f"{n} {s}" for s, n in bad.items()) +
                        ": see `pixbatch report` for the errors; --force resubmits them (and pays again).")
        if counts.get(st.ERROR):
            msgs.append(f"{counts[st.ERROR]} ERROR item(s) were not charged: re-run with --retry-errors to resubmit "
                        "them (and what they blocked).")
        inflight = counts.get(st.SUBMITTED, 0)
        if inflight and outcome not in ("interrupted",):
            msgs.append(f"{inflight} submitted item(s) not finished yet: run again to collect them.")
        if n_left and outcome in ("completed", "incomplete"):
            msgs.append(f"{n_left} item(s) not submitted (gateway errors): run again to retry them.")
        if self.output_problems:
            msgs.append(f"{self.output_problems} output(s) failed their checks: see `pixbatch report`.")
        return RunSummary(
            run_id=self.run_id, outcome=outcome, exit_code=code, state_path=str(self.state_path),
            output_dir=str(self.output_dir), steps=snap.steps, counts=counts, charged_run_micros=self.charged_run,
            charged_total_micros=snap.charged_micros, reserved_micros=snap.reserved_micros,
            at_risk_micros=snap.at_risk_micros, peak_committed_micros=self.peak, budget_micros=self.budget,
            left_items=n_left, left_low_micros=lo, left_high_micros=hi, submits=self.submits, polls=self.polls,
            downloads=self.downloads, output_problems=self.output_problems,
            duration_s=round(time.monotonic() - self.t0, 3), messages=tuple(msgs), http=dict(self.http))


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


async def run_async(manifest: Any, *, options: RunOptions, gateway: Gateway | None = None,
                    progress: Progress | None = None) -> RunSummary:
    return await _Run(manifest, options, gateway, progress or NullProgress()).main()


def run(manifest: Any, *, options: RunOptions, gateway: Gateway | None = None,
        progress: Progress | None = None) -> RunSummary:
    """Run (or resume) a manifest to completion; see the module docstring.

    ``manifest`` is a ``pixbatch.manifest.Manifest`` (``load_manifest(path)``). Raises
    ``StateLocked`` when another process runs the same state file, ``AuthError`` without a
    key, ``BudgetExceeded`` when the budget cannot cover the remaining work; every other
    outcome (402, budget reached, interruption, failures) is in the returned summary.
    """
    return asyncio.run(run_async(manifest, options=options, gateway=gateway, progress=progress))
