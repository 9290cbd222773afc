"""The gateway's routes: submit, status, and whatever else a client asks for.

A submit goes through, in order: added latency, the front door (``frontdoor.py``: key,
quota, fixed window, token bucket, throttling), a scripted answer, an injected 500, JSON
body (400), model enabled (400 "Model not found"), ``contract.validate_body`` (400 with
the model-validation message), webhook URLs (400 for http unless allowed), wallet (402
when the balance minus what in-flight jobs may cost cannot pay the most this request
may cost), then the job is created; the answer may still be dropped (connection closed,
the job stands and will be charged) or garbage. Random choices come from an RNG seeded
with ``seed`` and the submit's (or poll's) ordinal. Every submit is logged with its
answer (``requestlog.py``).

A status poll answers, in order: the key, 404 for an unknown id, the job's scripted poll
answers, its ``status_*`` faults, an injected 500 or garbage, else the job's status
document (shaped by its ``media_url_*`` faults).

Any other path is a stray: logged with whether it carried the key, answered 404 in API
Management's JSON (a wrong method on a known path still gets 405).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..contract import AUTH_HEADER, MODEL_IDS, STATUS_PATH, WEBHOOK_URL_HEADER, validate_body
from ..money import format_usd
from .answers import Answers
from .asgi import drop
from .cdn import Cdn
from .faults import wrong_shape
from .frontdoor import FrontDoor, Refusal
from .jobs import Engine, iso
from .requestlog import ACCEPTED, DROPPED, GARBAGE, HTML, Received
from .webhooks import WebhookRejected, targets_from_request


class GatewayRoutes:
    def __init__(self, engine: Engine, answers: Answers, door: FrontDoor):
        self.e = engine
        self.a = answers
        self.door = door
        self.cdn = Cdn(engine, answers)

    def enter(self, request: Request) -> str:
        """Per request: make sure the scheduler runs; the base URL this client used."""
        self.e.ensure_started()
        base = str(request.base_url).rstrip("/")
        self.e.base_url = base  # webhooks (sent outside any request) use the latest one
        return base

    def scripted_answer(self, entry: dict) -> Response:
        """``{"submit": code}`` with optional ``body``, ``retry_after`` (int, str or null), ``html``."""
        code = int(entry["submit"])
        retry_after = entry.get("retry_after", 1 if code == 429 else None)
        headers = {} if retry_after is None else {"Retry-After": str(retry_after)}
        if entry.get("html"):
            return self.a.html(code, headers)
        if code == 402 and "body" not in entry:
            return self.a.error(402, body={"error": "Insufficient Balance",
                                           "message": "Your wallet does not have enough balance. Required: $0.01"})
        return self.a.error(code, headers=headers, body=entry.get("body"))

    # -- submit -------------------------------------------------------------------

    async def submit(self, request: Request, op: str) -> Any:
        base = self.enter(request)
        e, cfg = self.e, self.e.config
        n = e.stats["submits"]
        e.stats["submits"] += 1
        rng = random.Random(f"{cfg.seed}:submit:{n}")
        latency, draws = cfg.submit_latency.sample(rng), (rng.random(), rng.random(), rng.random())
        if latency:
            await asyncio.sleep(latency)
        raw = await request.body()
        body = _parse(raw)
        entry = e.received.add(Received(
            seq=n, at=iso(time.time()), op=op, key=self.door.label(request.headers.get(AUTH_HEADER)),
            body_sha256=hashlib.sha256(raw).hexdigest(), image=_first_image(body),
            webhook_url=request.headers.get(WEBHOOK_URL_HEADER)))
        answer, entry.reason = await self._submit(request, op, n, base, body, draws, entry)
        if answer is drop:
            entry.code, entry.answer = 202, DROPPED
        else:
            entry.code = answer.status_code
            entry.retry_after = answer.headers.get("retry-after")
            if answer.media_type == "text/html":
                entry.answer = HTML
        return answer

    async def _submit(self, request: Request, op: str, n: int, base: str, body: Any,
                      draws: tuple[float, float, float], entry: Received) -> tuple[Any, str]:
        e, cfg = self.e, self.e.config
        u500, udrop, ugarbage = draws
        refused: Refusal | None = self.door.auth(request) or self.door.admit(request.headers[AUTH_HEADER], n)
        if refused is not None:
            return refused
        key = request.headers[AUTH_HEADER]
        if e.script and "submit" in e.script[0]:
            e.stats["scripted"] += 1
            return self.scripted_answer(e.script.popleft()), "scripted"
        if u500 < cfg.submit_500_rate:
            e.stats["injected_submit_500"] += 1
            return self.a.error(500, "Internal Server Error",
                                "The service encountered an unexpected error (emulated)."), "injected_500"
        if isinstance(body, ValueError):
            return self.a.error(400, "Bad Request", f"Request body is not valid JSON: {body}"), "bad_json"
        model = MODEL_IDS[op]
        if model in cfg.disabled_models:
            return self.a.error(400, "Model not found", f"Model '{model}' not found or is disabled"), "model_disabled"
        problems = validate_body(op, body)
        if problems:
            return self.a.error(400, "Bad Request", f"Model validation failed for '{model}': "
                                + "; ".join(problems)), "invalid"
        try:
            webhooks = targets_from_request(request.headers, body, op, allow_http=cfg.allow_http_webhooks)
        except WebhookRejected as exc:
            return self.a.error(400, "Bad Request", str(exc)), "webhook_rejected"
        price = e.rule.most(e.prices, op, body)
        if not e.wallet.can_reserve(price):
            return self.a.error(402, "Insufficient Balance", f"Your wallet does not have enough balance. "
                                                             f"Required: {format_usd(price)}"), "insufficient_balance"
        scripted = e.script.popleft() if e.script else None
        if scripted:
            e.stats["scripted"] += 1
        job = e.create_job(op, body, price, webhooks, scripted)
        self.door.accepted(key)
        entry.request_id = job.request_id
        if (scripted or {}).get("drop_after_accept") or (not scripted and udrop < cfg.drop_after_accept_rate):
            e.stats["dropped_after_accept"] += 1
            self.a.count(202)
            return drop, ACCEPTED
        if (scripted or {}).get("garbage") or (not scripted and ugarbage < cfg.submit_garbage_rate):
            e.stats["garbage_submit"] += 1
            entry.answer = GARBAGE
            return self.a.garbage(202, job.request_id), ACCEPTED
        polling = base + STATUS_PATH.format(request_id=job.public_id)
        if "polling_url_elsewhere" in job.faults:
            polling = (cfg.stray_base_url or base + "/_elsewhere").rstrip("/") \
                + STATUS_PATH.format(request_id=job.request_id)
        return self.a.ok({"request_id": job.public_id, "status": "QUEUED", "polling_url": polling}, 202), ACCEPTED

    # -- status -------------------------------------------------------------------

    async def status(self, request: Request) -> Any:
        base = self.enter(request)
        e, cfg = self.e, self.e.config
        n = e.stats["polls"]
        e.stats["polls"] += 1
        rng = random.Random(f"{cfg.seed}:poll:{n}")
        latency, u500, ugarbage = cfg.poll_latency.sample(rng), rng.random(), rng.random()
        if latency:
            await asyncio.sleep(latency)
        refused = self.door.auth(request)
        if refused is not None:
            return refused[0]
        rid = request.path_params["request_id"]
        job = e.jobs.get(rid)
        if job is None:
            return self.a.error(404, "Not Found", f"Request '{rid}' not found. Check the request_id returned by the "
                                                  "generate call.")
        e.settle_due()
        if job.poll_script:
            scripted = job.poll_script.popleft()
            e.stats["scripted"] += 1
            if scripted == "garbage":
                e.stats["garbage_poll"] += 1
                return self.a.garbage(200, rid)
            if scripted == "drop":
                self.a.count(200)
                return drop
            if scripted == "html":
                return self.a.html(502)
            if isinstance(scripted, dict):
                return self.scripted_answer({"submit": scripted["code"], **scripted})
            if isinstance(scripted, int) and scripted != 200:
                return self.scripted_answer({"submit": scripted})
        elif "status_garbage" in job.faults:
            e.stats["garbage_poll"] += 1
            return self.a.garbage(200, rid)
        elif "status_wrong_shape" in job.faults:
            return self.a.ok(wrong_shape(job.public_id))
        elif u500 < cfg.poll_500_rate:
            e.stats["injected_poll_500"] += 1
            return self.a.error(500, "Internal Server Error", "The service encountered an unexpected error (emulated).")
        elif ugarbage < cfg.poll_garbage_rate:
            e.stats["garbage_poll"] += 1
            return self.a.garbage(200, rid)
        return self.a.ok(job.view(e.now(), base))

    # -- the rest -----------------------------------------------------------------

    async def media(self, request: Request) -> Response:
        self.enter(request)
        return await self.cdn.serve(request)

    async def unknown_model(self, request: Request) -> Response:
        self.enter(request)
        refused = self.door.auth(request)
        if refused is not None:
            return refused[0]
        model = request.path_params["model"]
        return self.a.error(400, "Model not found", f"Model '{model}' not found or is disabled")

    async def stray(self, request: Request, exc: Exception) -> Response:
        """Any path no route serves (Starlette's 404): logged, with whether it carried the key."""
        self.e.stats["strays"] += 1
        self.e.received.stray(iso(time.time()), request.method, request.url.path, request.url.query,
                              bool(request.headers.get(AUTH_HEADER)))
        self.a.count(404)
        return JSONResponse({"statusCode": 404, "message": "Resource not found"}, status_code=404)


def _parse(raw: bytes) -> Any:
    """The body as JSON, or the ``ValueError`` that says why not (answered 400 later, in order)."""
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return ValueError(str(exc))


def _first_image(body: Any) -> str | None:
    if not isinstance(body, dict):
        return None
    image = body.get("image")
    if image is None and isinstance(body.get("images"), list) and body["images"]:
        image = body["images"][0]
    return image if isinstance(image, str) else None
