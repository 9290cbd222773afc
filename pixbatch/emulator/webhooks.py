"""Webhook callbacks: who gets told, and the deliveries themselves.

A job carries zero or more ``WebhookTarget``s: the ``X-Webhook-URL`` header (mode from
``X-Webhook-Mode``: ``terminal`` or ``sync``) and, for edit, the body's ``webhook`` field
(terminal mode, filtered by ``webhook_events_filter`` when given). ``terminal`` gets exactly
one POST at the terminal status; ``sync`` gets one per status change and one per sync
interval while processing, plus the terminal one. The payload has the shape of the
status response. Deliveries for one target go out in order (each waits for the
previous one); a configurable fraction is sent twice, as the docs warn real deliveries
can be. Failed deliveries are retried a few times, then counted and dropped.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any, Callable

import httpx

TERMINAL, SYNC = "terminal", "sync"
MODES = (TERMINAL, SYNC)


class WebhookRejected(ValueError):
    """The submit names a webhook the gateway refuses (400)."""


@dataclass(frozen=True, slots=True)
class WebhookTarget:
    url: str
    mode: str = TERMINAL
    events: frozenset[str] | None = None  # lower-case statuses to deliver; None = all

    def wants(self, status: str, terminal: bool) -> bool:
        if self.mode == TERMINAL and not terminal:
            return False
        return self.events is None or status.lower() in self.events


def check_url(url: Any, *, allow_http: bool, where: str) -> str:
    if not isinstance(url, str) or not url.strip():
        raise WebhookRejected(f"{where} must be an https URL")
    if url.startswith("https://") and len(url) > 8:
        return url
    if url.startswith("http://") and len(url) > 7:
        if allow_http:
            return url
        raise WebhookRejected(f"{where} must use https; plain http:// URLs are rejected")
    raise WebhookRejected(f"{where} must be an https URL, got {url[:100]!r}")


def targets_from_request(headers: Any, body: dict, op: str, *, allow_http: bool) -> tuple[WebhookTarget, ...]:
    out: list[WebhookTarget] = []
    url = headers.get("x-webhook-url")
    if url is not None:
        mode = (headers.get("x-webhook-mode") or TERMINAL).strip().lower()
        if mode not in MODES:
            raise WebhookRejected(f"X-Webhook-Mode must be 'terminal' or 'sync', got {mode!r}")
        out.append(WebhookTarget(check_url(url, allow_http=allow_http, where="X-Webhook-URL"), mode))
    if op == "edit" and body.get("webhook") is not None:
        events = body.get("webhook_events_filter")
        out.append(WebhookTarget(
            check_url(body["webhook"], allow_http=allow_http, where="'webhook'"), TERMINAL,
            frozenset(e.lower() for e in events) if events else None,
        ))
    return tuple(out)


class Deliverer:
    """Sends callbacks with one shared client; counts what happened in ``stats``."""

    def __init__(self, stats: dict[str, Any], settings: Callable[[], Any]):
        self._stats = stats
        self._settings = settings  # -> current EmulatorConfig (faults change at runtime)
        self._client: httpx.AsyncClient | None = None
        self._last: dict[tuple[str, str], asyncio.Task] = {}
        self._tasks: set[asyncio.Task] = set()

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self._settings().webhook_timeout)
        return self._client

    def send(self, request_id: str, target: WebhookTarget, payload: dict, copies: int = 1) -> None:
        """Schedule ``copies`` POSTs of ``payload`` to ``target``, after its earlier deliveries."""
        body = json.dumps(payload).encode()
        key = (request_id, target.url)
        previous = self._last.get(key)
        task = asyncio.get_running_loop().create_task(self._deliver(previous, target.url, body, copies, payload))
        self._last[key] = task
        self._tasks.add(task)
        task.add_done_callback(self._done(key))

    def _done(self, key: tuple[str, str]) -> Callable[[asyncio.Task], None]:
        def cb(task: asyncio.Task) -> None:
            self._tasks.discard(task)
            if self._last.get(key) is task:
                del self._last[key]
        return cb

    async def _deliver(self, previous: asyncio.Task | None, url: str, body: bytes, copies: int, payload: dict) -> None:
        if previous is not None:
            await asyncio.wait([previous])
        cfg = self._settings()
        for copy in range(copies):
            for attempt in range(cfg.webhook_retries + 1):
                try:
                    r = await self._http().post(url, content=body, headers={"Content-Type": "application/json"})
                    ok = 200 <= r.status_code < 300
                except httpx.HTTPError:
                    ok = False
                if ok:
                    self._stats["webhooks_delivered"] += 1
                    if copy:
                        self._stats["webhook_duplicates"] += 1
                    break
                if attempt < cfg.webhook_retries:
                    await asyncio.sleep(0.2 * (attempt + 1))
            else:
                self._stats["webhooks_failed"] += 1

    async def drain(self, timeout: float = 5.0) -> None:
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=timeout)

    async def aclose(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=1.0)
        if self._client is not None:
            await self._client.aclose()
            self._client = None
