"""The HTTP face of the emulator: a Starlette app with the gateway's routes.

Gateway routes (as documented in ``shared/reference/p-image-api.txt``; paths and
parameters from ``pixbatch.contract``):

    POST /p-image-upscale/v1/p-image-upscale/generate   202 {request_id, status: QUEUED, polling_url}
    POST /p-image/v1/p-image-edit/generate              202 (same)
    GET  /v2/requests/status/{request_id}               200 the status document
    GET  /media/{request_id}/output.{ext}               the output file (no key, like the CDN)

A submit goes through, in order: added latency, key (401 missing/unknown, 403
forbidden), rate limit (429 + Retry-After), scripted answer, injected 500, JSON body
(400), model enabled (400 "Model not found"), ``contract.validate_body`` (400 with the
model-validation message), webhook URLs (400 for http unless allowed), wallet (402 when
the balance minus what in-flight jobs may cost cannot pay the most this request may
cost), then the job is created; the answer may still be dropped (connection closed, the
job stands and will be charged) or garbage. Random choices come from an RNG seeded with
``seed`` and the submit's (or poll's) ordinal.

Control routes (no key; for tests, benchmarks and the Python helpers):

    GET  /_emulator/ledger[?since=N]   settles due jobs, then every charge + balance + totals
    POST /_emulator/topup              {"amount_micros": N}
    GET  /_emulator/config             the running config
    POST /_emulator/config             {setting: value, ...}: change faults at runtime
    POST /_emulator/script             [outcome, ...]: answers for the next submits
    DELETE /_emulator/script           forget queued outcomes
    GET  /_emulator/stats              counters (submits, polls, 429s, webhooks, ...)
    POST /_emulator/advance            {"seconds": N}: move the job clock forward (no waiting)

Script entries are consumed one per submit, in order. ``{"submit": 503}`` (any 4xx/5xx,
optional ``"body"``, ``"retry_after"`` for 429) answers that submit without creating a
job; it is taken before validation. Any other entry is taken by the next submit that
creates a job and shapes it: ``"status"`` (COMPLETED/FAILED/ERROR) and ``"error"``,
``"queue_time"``/``"processing_time"`` (seconds), ``"drop_after_accept": true``,
``"garbage": true`` (202 with a body that is not JSON), ``"polls": [500, "garbage",
"drop", 200, ...]`` (answers for that job's next polls, 200 meaning a normal answer).
A scripted entry replaces the random faults for that submit.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import random
import socket
import time
from typing import Any, AsyncIterator

import anyio.to_thread
import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from ..contract import (AUTH_HEADER, COMPLETED, ENDPOINTS, MEDIA_TYPES, MODEL_IDS, STATUS_PATH, TERMINAL_STATUSES,
                        validate_body)
from ..money import format_usd
from .config import EmulatorConfig
from .jobs import Engine, Job
from .webhooks import WebhookRejected, targets_from_request

_REASONS = {400: "Bad Request", 401: "Unauthorized", 402: "Insufficient Balance", 403: "Forbidden",
            404: "Not Found", 408: "Request Timeout", 409: "Conflict", 429: "Too Many Requests",
            500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout"}
_SCRIPT_KEYS = {"submit", "body", "retry_after", "drop_after_accept", "garbage", "status", "error", "queue_time",
                "processing_time", "polls"}


class ConnectionDropped(httpx.RemoteProtocolError):
    """Raised after the status line went out: the server closes the connection mid-answer.

    An httpx transport error, so a client driving the app through ``httpx.ASGITransport``
    (no socket to close) sees the same kind of failure as one talking to a real server.
    """


class _DropFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, ConnectionDropped)


def _install_log_filter() -> None:
    logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _DropFilter) for f in logger.filters):
        logger.addFilter(_DropFilter())


_TRANSPORT = "pixbatch.emulator.transport"


class _EmulatorApp(Starlette):
    """Starlette, plus: remember the server's socket transport so a handler can drop it.

    uvicorn's ``send`` is a bound method of its request cycle, which holds the transport;
    this must be read before Starlette's middleware wraps ``send``. Other servers (or
    httpx's ASGITransport) have none, and ``_drop`` falls back.
    """

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            transport = getattr(getattr(send, "__self__", None), "transport", None)
            scope[_TRANSPORT] = transport
            if transport is not None:
                _nodelay(transport)
        await super().__call__(scope, receive, send)


def _nodelay(transport: Any) -> None:
    """Disable Nagle on the connection: uvicorn writes headers and body separately, and
    without TCP_NODELAY every keep-alive answer waits ~40 ms for the client's delayed ACK."""
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass


async def _drop(scope: Any, receive: Any, send: Any) -> None:
    """An ASGI answer that never comes: the connection is closed, the client sees a transport error."""
    transport = scope.get(_TRANSPORT)
    if transport is not None and hasattr(transport, "abort"):
        transport.abort()  # no status line, no body: like a gateway dying after accepting
        await asyncio.sleep(0.01)  # let the server notice the disconnect before we return
        return
    # no handle on the socket: start a 202 promising a body, then die mid-answer
    await send({"type": "http.response.start", "status": 202,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"200")]})
    raise ConnectionDropped("emulated connection drop after the request was accepted")


class _Gateway:
    def __init__(self, engine: Engine):
        self.e = engine

    # -- helpers ------------------------------------------------------------------

    def _count(self, code: int) -> None:
        r = self.e.stats["responses"]
        r[str(code)] = r.get(str(code), 0) + 1

    def error(self, code: int, error: str | None = None, message: str | None = None,
              headers: dict[str, str] | None = None, body: Any = None) -> Response:
        self._count(code)
        if body is None:
            body = {"error": error or _REASONS.get(code, "Error"), "message": message or _REASONS.get(code, "Error")}
        return JSONResponse(body, status_code=code, headers=headers)

    def ok(self, body: Any, code: int = 200) -> Response:
        self._count(code)
        return JSONResponse(body, status_code=code)

    def garbage(self, code: int, request_id: str) -> Response:
        self._count(code)
        return Response(b'{"request_id": "' + request_id.encode()[:12] + b'", "status": "QUEU<html>502 Bad Gateway',
                        status_code=code, media_type="application/json")

    def _enter(self, request: Request) -> str:
        """Per request: make sure the scheduler runs; the base URL this client used."""
        self.e.ensure_started()
        base = str(request.base_url).rstrip("/")
        self.e.base_url = base  # webhooks (sent outside any request) use the latest one
        return base

    def _auth(self, request: Request) -> Response | None:
        key = request.headers.get(AUTH_HEADER)
        cfg = self.e.config
        if not key:
            return self.error(401, "Unauthorized", f"Access denied due to missing subscription key. Include the "
                                                   f"{AUTH_HEADER} header.")
        if key in cfg.forbidden_keys:
            return self.error(403, "Forbidden", "This subscription key is not allowed to use this API.")
        if key not in cfg.api_keys:
            return self.error(401, "Unauthorized", "Access denied due to invalid subscription key. Make sure to "
                                                   "provide a valid key for an active subscription.")
        return None

    def _rate_limit(self, key: str) -> float:
        """Seconds to wait, 0 when a token was taken."""
        cfg = self.e.config
        if cfg.rate_limit is None:
            return 0.0
        now = time.monotonic()
        burst = cfg.burst
        tokens, last = self.e.buckets.get(key, (float(burst), now))
        tokens = min(float(burst), tokens + (now - last) * cfg.rate_limit)
        if tokens >= 1.0:
            self.e.buckets[key] = (tokens - 1.0, now)
            return 0.0
        self.e.buckets[key] = (tokens, now)
        return (1.0 - tokens) / cfg.rate_limit

    def _scripted_answer(self, entry: dict) -> Response:
        code = int(entry["submit"])
        headers = {}
        if code == 429:
            headers["Retry-After"] = str(int(entry.get("retry_after", 1)))
        if code == 402 and "body" not in entry:
            return self.error(402, body={"error": "Insufficient Balance",
                                         "message": "Your wallet does not have enough balance. Required: $0.01"})
        return self.error(code, headers=headers, body=entry.get("body"))

    # -- gateway routes -------------------------------------------------------------

    async def submit(self, request: Request, op: str) -> Any:
        base = self._enter(request)
        e, cfg = self.e, self.e.config
        n = e.stats["submits"]
        e.stats["submits"] += 1
        rng = random.Random(f"{cfg.seed}:submit:{n}")
        latency, u500, udrop, ugarbage = cfg.submit_latency.sample(rng), rng.random(), rng.random(), rng.random()
        if latency:
            await asyncio.sleep(latency)
        denied = self._auth(request)
        if denied is not None:
            return denied
        wait = self._rate_limit(request.headers[AUTH_HEADER])
        if wait:
            e.stats["rate_limited"] += 1
            seconds = max(1, math.ceil(wait))
            return self.error(429, "Too Many Requests", f"Rate limit exceeded. Retry after {seconds} seconds.",
                              headers={"Retry-After": str(seconds)})
        if e.script and "submit" in e.script[0]:
            e.stats["scripted"] += 1
            return self._scripted_answer(e.script.popleft())
        if u500 < cfg.submit_500_rate:
            e.stats["injected_submit_500"] += 1
            return self.error(500, "Internal Server Error", "The service encountered an unexpected error (emulated).")
        raw = await request.body()
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            return self.error(400, "Bad Request", f"Request body is not valid JSON: {exc}")
        model = MODEL_IDS[op]
        if model in cfg.disabled_models:
            return self.error(400, "Model not found", f"Model '{model}' not found or is disabled")
        problems = validate_body(op, body)
        if problems:
            return self.error(400, "Bad Request", f"Model validation failed for '{model}': " + "; ".join(problems))
        try:
            webhooks = targets_from_request(request.headers, body, op, allow_http=cfg.allow_http_webhooks)
        except WebhookRejected as exc:
            return self.error(400, "Bad Request", str(exc))
        price = e.prices.price(op, body, None).high_micros
        if not e.wallet.can_reserve(price):
            return self.error(402, "Insufficient Balance",
                              f"Your wallet does not have enough balance. Required: {format_usd(price)}")
        scripted = e.script.popleft() if e.script else None
        if scripted:
            e.stats["scripted"] += 1
        job = e.create_job(op, body, price, webhooks, scripted)
        if (scripted or {}).get("drop_after_accept") or (not scripted and udrop < cfg.drop_after_accept_rate):
            e.stats["dropped_after_accept"] += 1
            self._count(202)
            return _drop
        if (scripted or {}).get("garbage") or (not scripted and ugarbage < cfg.submit_garbage_rate):
            e.stats["garbage_submit"] += 1
            return self.garbage(202, job.request_id)
        return self.ok({
            "request_id": job.request_id,
            "status": "QUEUED",
            "polling_url": base + STATUS_PATH.format(request_id=job.request_id),
        }, 202)

    async def status(self, request: Request) -> Any:
        base = self._enter(request)
        e, cfg = self.e, self.e.config
        n = e.stats["polls"]
        e.stats["polls"] += 1
        rng = random.Random(f"{cfg.seed}:poll:{n}")
        latency, u500, ugarbage = cfg.poll_latency.sample(rng), rng.random(), rng.random()
        if latency:
            await asyncio.sleep(latency)
        denied = self._auth(request)
        if denied is not None:
            return denied
        rid = request.path_params["request_id"]
        job = e.jobs.get(rid)
        if job is None:
            return self.error(404, "Not Found", f"Request '{rid}' not found. Check the request_id returned by the "
                                                "generate call.")
        e.settle_due()
        if job.poll_script:
            scripted = job.poll_script.popleft()
            e.stats["scripted"] += 1
            if scripted == "garbage":
                e.stats["garbage_poll"] += 1
                return self.garbage(200, rid)
            if scripted == "drop":
                self._count(200)
                return _drop
            if isinstance(scripted, int) and scripted != 200:
                return self._scripted_answer({"submit": scripted})
        elif u500 < cfg.poll_500_rate:
            e.stats["injected_poll_500"] += 1
            return self.error(500, "Internal Server Error", "The service encountered an unexpected error (emulated).")
        elif ugarbage < cfg.poll_garbage_rate:
            e.stats["garbage_poll"] += 1
            return self.garbage(200, rid)
        return self.ok(job.view(e.now(), base))

    async def media(self, request: Request) -> Response:
        self._enter(request)
        e = self.e
        e.stats["media_gets"] += 1
        rid, name = request.path_params["request_id"], request.path_params["name"]
        e.settle_due()
        job: Job | None = e.jobs.get(rid)
        if job is None or job.final != COMPLETED or name != f"output.{job.ext}":
            return self.error(404, "Not Found", f"No media at /media/{rid}/{name}")
        if job.media_path is None:  # lazy mode: draw it now (in a worker thread, file included)
            job.media_path = await anyio.to_thread.run_sync(e.lazy_media, job, limiter=e.limiter)
        self._count(200)
        return FileResponse(job.media_path, media_type=MEDIA_TYPES[job.ext])

    async def unknown_model(self, request: Request) -> Response:
        self._enter(request)
        denied = self._auth(request)
        if denied is not None:
            return denied
        model = request.path_params["model"]
        return self.error(400, "Model not found", f"Model '{model}' not found or is disabled")

    # -- control routes -----------------------------------------------------------

    async def ledger(self, request: Request) -> Response:
        self._enter(request)
        self.e.settle_due()
        try:
            since = int(request.query_params.get("since", "0"))
        except ValueError:
            return JSONResponse({"error": "Bad Request", "message": "since must be an integer"}, 400)
        return JSONResponse(self.e.wallet.to_dict(since))

    async def topup(self, request: Request) -> Response:
        self._enter(request)
        try:
            data = await request.json()
            amount = data["amount_micros"]
            if isinstance(amount, bool) or not isinstance(amount, int):
                raise TypeError
        except (json.JSONDecodeError, KeyError, TypeError):
            return JSONResponse({"error": "Bad Request",
                                 "message": 'send {"amount_micros": <integer micro-dollars>}'}, 400)
        self.e.wallet.topup(amount)
        return JSONResponse({"balance_micros": self.e.wallet.balance_micros})

    async def config(self, request: Request) -> Response:
        self._enter(request)
        if request.method == "POST":
            try:
                changes = await request.json()
                if not isinstance(changes, dict):
                    raise ValueError("send a JSON object of settings")
                self.e.config = self.e.config.runtime_replace(changes)
            except (json.JSONDecodeError, ValueError, TypeError) as exc:
                return JSONResponse({"error": "Bad Request", "message": str(exc)}, 400)
        return JSONResponse(self.e.config.to_dict())

    async def script(self, request: Request) -> Response:
        self._enter(request)
        if request.method == "DELETE":
            self.e.script.clear()
            return JSONResponse({"queued": 0})
        try:
            data = await request.json()
            entries = data.get("outcomes") if isinstance(data, dict) else data
            problems = [p for i, entry in enumerate(entries) for p in _check_script_entry(i, entry)]
        except (json.JSONDecodeError, TypeError, AttributeError):
            return JSONResponse({"error": "Bad Request", "message": "send a JSON array of outcomes"}, 400)
        if problems:
            return JSONResponse({"error": "Bad Request", "message": "; ".join(problems)}, 400)
        self.e.script.extend(entries)
        return JSONResponse({"queued": len(self.e.script)})

    async def advance(self, request: Request) -> Response:
        self._enter(request)
        try:
            data = await request.json()
            seconds = data["seconds"]
            if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or seconds < 0:
                raise TypeError
        except (json.JSONDecodeError, KeyError, TypeError):
            return JSONResponse({"error": "Bad Request", "message": 'send {"seconds": <number >= 0>}'}, 400)
        self.e.advance(float(seconds))
        return JSONResponse({"offset_seconds": self.e.offset})

    async def stats(self, request: Request) -> Response:
        self._enter(request)
        self.e.settle_due()
        out = dict(self.e.stats)
        out["balance_micros"] = self.e.wallet.balance_micros
        out["charged_micros"] = self.e.wallet.charged_micros
        out["script_queued"] = len(self.e.script)
        return JSONResponse(out)


def _check_script_entry(i: int, entry: Any) -> list[str]:
    if not isinstance(entry, dict):
        return [f"outcome {i} must be an object"]
    out = [f"outcome {i}: unknown key {k!r} (known: {', '.join(sorted(_SCRIPT_KEYS))})"
           for k in entry if k not in _SCRIPT_KEYS]
    if "submit" in entry and not (isinstance(entry["submit"], int) and 400 <= entry["submit"] <= 599):
        out.append(f"outcome {i}: 'submit' must be an HTTP error status (400-599)")
    if "status" in entry and entry["status"] not in TERMINAL_STATUSES:
        out.append(f"outcome {i}: 'status' must be one of {', '.join(sorted(TERMINAL_STATUSES))}")
    for k in ("queue_time", "processing_time"):
        if k in entry and not (isinstance(entry[k], (int, float)) and entry[k] >= 0):
            out.append(f"outcome {i}: {k!r} must be a number of seconds >= 0")
    for p in entry.get("polls", ()):
        if not (p in ("garbage", "drop") or isinstance(p, int) and (p == 200 or 400 <= p <= 599)):
            out.append(f"outcome {i}: each of 'polls' must be an HTTP status, 'garbage' or 'drop'")
    return out


def create_app(config: EmulatorConfig | None = None) -> Starlette:
    """The emulator as an ASGI app; ``app.state.engine`` is its state (for in-process tests)."""
    engine = Engine(config or EmulatorConfig())
    gw = _Gateway(engine)
    _install_log_filter()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        engine.ensure_started()
        try:
            yield
        finally:
            await engine.aclose()

    def route(op: str):
        async def endpoint(request: Request) -> Any:
            return await gw.submit(request, op)
        endpoint.__name__ = f"submit_{op}"
        return endpoint

    routes = [
        Route(ENDPOINTS["upscale"], route("upscale"), methods=["POST"]),
        Route(ENDPOINTS["edit"], route("edit"), methods=["POST"]),
        Route("/{service}/v1/{model}/generate", gw.unknown_model, methods=["POST"]),
        Route(STATUS_PATH, gw.status, methods=["GET"]),
        Route("/media/{request_id}/{name}", gw.media, methods=["GET"]),
        Route("/_emulator/ledger", gw.ledger, methods=["GET"]),
        Route("/_emulator/topup", gw.topup, methods=["POST"]),
        Route("/_emulator/config", gw.config, methods=["GET", "POST"]),
        Route("/_emulator/script", gw.script, methods=["POST", "DELETE"]),
        Route("/_emulator/stats", gw.stats, methods=["GET"]),
        Route("/_emulator/advance", gw.advance, methods=["POST"]),
    ]
    app = _EmulatorApp(routes=routes, lifespan=lifespan)
    app.state.engine = engine
    return app


@contextlib.asynccontextmanager
async def emulator_app(config: EmulatorConfig | None = None) -> AsyncIterator[Starlette]:
    """``create_app`` with its lifespan run, for in-process use without a server::

        async with emulator_app(cfg) as app:
            client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://emulator")

    On exit the scheduler stops and the emulator's own HTTP clients and temporary files
    are closed (httpx's ASGITransport does not run lifespans by itself).
    """
    app = create_app(config)
    async with app.router.lifespan_context(app):
        yield app
