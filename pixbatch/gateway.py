"""Async client for the P-Image gateway (Pixazo): submit, status, download.

One ``Gateway`` per run. It speaks the documented contract (``contract.py``): POST the
request body to the operation's endpoint with the key in ``Ocp-Apim-Subscription-Key``,
get ``202 {request_id, status, polling_url}``; GET the polling URL's *path* under the
base URL until a terminal status; download ``output.media_url`` (public CDN URLs: the key
is never sent there). Swapping the emulator for the real gateway changes only the base URL.

Transport: ``httpx_aiohttp.AiohttpTransport`` by default (about 10x the throughput of
httpx's own pool at 64 concurrent requests), and gateway calls then go straight to the
aiohttp session behind it (no httpx request/response objects: half the client CPU per
call; errors are mapped to the same httpx exceptions). Tests pass
``transport=httpx.MockTransport`` or ``httpx.ASGITransport``, which take the httpx path.

What is retried is decided by ``retry_policy`` (see the table there); the rule that matters
for money: a submit whose outcome is unknown (connection dropped or timed out after the
request left, a 2xx with a body we cannot read, a 502/504) raises ``SubmitUnknown`` and is
never retried here. Every HTTP exchange is reported to ``on_exchange`` (method, path,
status, milliseconds: never headers, never the key).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urljoin, urlsplit

import aiohttp
import httpx

from . import retry_policy
from .contract import (
    AUTH_HEADER,
    ENDPOINTS,
    STATUS_PATH,
    STATUSES,
    TERMINAL_STATUSES,
    WEBHOOK_MODE_HEADER,
    WEBHOOK_URL_HEADER,
)
from .errors import (
    AuthError,
    BadRequest,
    GatewayError,
    InsufficientBalance,
    GatewayProtocolError,
    GatewayUnreachable,
    NotFound,
    RateLimited,
    ServerError,
    SubmitUnknown,
    redact,
    require_api_key,
)
from .ratelimit import AdaptiveRateLimiter
from .retry_policy import DEFAULT_POLICY, RetryPolicy

DEFAULT_BASE_URL = "https://gateway.pixazo.ai"
#: the most throttled (429) tries one call makes before giving up
MAX_THROTTLED_TRIES = 200


@dataclass(frozen=True, slots=True)
class Accepted:
    request_id: str
    status: str
    polling_path: str  # path (and query) of polling_url, to be joined with the base URL


@dataclass(frozen=True, slots=True)
class JobStatus:
    request_id: str
    status: str  # QUEUED | PROCESSING | COMPLETED | FAILED | ERROR
    media_urls: tuple[str, ...] = ()
    media_type: str | None = None
    error: str | None = None
    created_at: datetime | None = None
    completed_at: datetime | None = None

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    @property
    def server_seconds(self) -> float | None:
        """completed_at - created_at as the gateway saw it (None when unknown)."""
        if self.created_at and self.completed_at:
            return max(0.0, (self.completed_at - self.created_at).total_seconds())
        return None


@dataclass(frozen=True, slots=True)
class Download:
    data: bytes
    content_type: str | None


@dataclass(frozen=True, slots=True)
class Exchange:
    """One HTTP exchange, as reported to ``on_exchange`` (the runner keeps the failed ones in events)."""

    method: str
    path: str
    status: int | None  # None: no response (network error)
    ms: float
    error: str | None = None


def parse_timestamp(value: Any) -> datetime | None:
    """The gateway writes both ``2026-03-31T07:32:20.000Z`` and ``2026-05-22 13:19:23``."""
    if not isinstance(value, str) or not value.strip():
        return None
    v = value.strip().replace("Z", "+00:00")
    try:
        dt = datetime.fromisoformat(v)
    except ValueError:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt


@dataclass(frozen=True, slots=True)
class Reply:
    """A gateway answer, read whole: what the callers look at, from either transport path."""

    status_code: int
    headers: Any  # case-insensitive mapping (httpx.Headers or aiohttp's CIMultiDictProxy)
    content: bytes

    def json(self) -> Any:
        return json.loads(self.content)

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")


def _message(resp: Reply | httpx.Response) -> str:
    try:
        data = resp.json()
    except ValueError:
        return resp.text[:300]
    if isinstance(data, dict):
        parts = [str(data[k]) for k in ("error", "message") if data.get(k)]
        if parts:
            return ": ".join(parts)
    return resp.text[:300]


class Gateway:
    def __init__(self, base_url: str = DEFAULT_BASE_URL, api_key: str | None = None, *,
                 transport: httpx.AsyncBaseTransport | None = None, timeout: float = 30.0,
                 limiter: AdaptiveRateLimiter | None = None, policy: RetryPolicy = DEFAULT_POLICY,
                 on_exchange: Callable[[Exchange], None] | None = None, max_connections: int = 256,
                 download_transport: httpx.AsyncBaseTransport | None = None):
        api_key = require_api_key(api_key)
        self.base_url = base_url.rstrip("/")
        self._key = api_key
        self.limiter = limiter or AdaptiveRateLimiter(None)
        self.policy = policy
        self.on_exchange = on_exchange
        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        if transport is None:
            from httpx_aiohttp import AiohttpTransport

            transport = AiohttpTransport(limits=limits)
        if download_transport is None:
            download_transport = transport if not _is_aiohttp(transport) else _aiohttp_transport(limits)
        # httpx stores the header; it is never logged or put in exceptions by this module
        self._client = httpx.AsyncClient(base_url=self.base_url, transport=transport, timeout=timeout,
                                         headers={AUTH_HEADER: api_key, "Cache-Control": "no-cache"})
        self._cdn = httpx.AsyncClient(transport=download_transport, timeout=timeout, follow_redirects=True)
        # gateway calls skip the client's per-request work (URL merging and parsing, header
        # merging, cookies, auth and redirect machinery: two thirds of the per-call CPU at
        # high rates): the request is built once from pre-merged headers and handed to the
        # same transport, with the same timeouts
        self._transport = transport
        self._headers = list(self._client.headers.raw)
        self._timeouts = httpx.Timeout(timeout).as_dict()
        self._aio_headers = {k.decode(): v.decode() for k, v in self._headers}
        self._aio = (aiohttp.ClientTimeout(sock_connect=timeout, sock_read=timeout, connect=timeout)
                     if _is_aiohttp(transport) else None)

    async def aclose(self) -> None:
        await self._client.aclose()
        await self._cdn.aclose()

    async def __aenter__(self) -> Gateway:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- plumbing ---------------------------------------------------------------------

    def _record(self, method: str, path: str, status: int | None, t0: float, error: str | None = None) -> None:
        if self.on_exchange is not None:
            self.on_exchange(Exchange(method, path, status, round((time.perf_counter() - t0) * 1000, 2),
                                      redact(error, (self._key,)) if error else None))

    async def _call(self, method: str, path: str, content: bytes | None = None,
                    headers: list[tuple[bytes, bytes]] | None = None) -> Reply:
        """One gateway exchange; the body is read before returning."""
        t0 = time.perf_counter()
        try:
            if self._aio is not None:
                reply = await self._call_aiohttp(method, path, content, headers)
            else:
                request = httpx.Request(method, self.base_url + path, headers=self._headers + headers if headers
                                        else self._headers, content=content, extensions={"timeout": self._timeouts})
                resp = await self._transport.handle_async_request(request)
                try:
                    await resp.aread()
                finally:
                    await resp.aclose()
                reply = Reply(resp.status_code, resp.headers, resp.content)
        except httpx.TransportError as exc:
            self._record(method, path.split("?")[0], None, t0, f"{type(exc).__name__}: {exc}")
            raise
        self._record(method, path.split("?")[0], reply.status_code, t0)
        return reply

    async def _call_aiohttp(self, method: str, path: str, content: bytes | None,
                            headers: list[tuple[bytes, bytes]] | None) -> Reply:
        """The same exchange straight on the aiohttp session behind ``AiohttpTransport``: no
        httpx request or response objects (half the client CPU per call at high rates).
        aiohttp's errors become the same httpx exceptions the transport would raise."""
        from httpx_aiohttp.transport import map_aiohttp_exceptions

        transport = self._transport
        session = transport.client
        if not isinstance(session, aiohttp.ClientSession):
            session = transport.client = transport.get_client()  # what the transport does on first use
        hdrs = self._aio_headers
        if headers:
            hdrs = {**hdrs, **{k.decode(): v.decode() for k, v in headers}}
        with map_aiohttp_exceptions():
            async with session.request(method, self.base_url + path, headers=hdrs, data=content,
                                       allow_redirects=False, timeout=self._aio) as r:
                return Reply(r.status, r.headers, await r.read())

    async def _send(self, client: httpx.AsyncClient, method: str, url: str, path: str, **kw: Any) -> httpx.Response:
        t0 = time.perf_counter()
        try:
            resp = await client.request(method, url, **kw)
        except httpx.TransportError as exc:
            self._record(method, path, None, t0, f"{type(exc).__name__}: {exc}")
            raise
        self._record(method, path, resp.status_code, t0)
        return resp

    def _raise_for_definite(self, resp: Reply | httpx.Response, what: str) -> None:
        code = resp.status_code
        msg = redact(_message(resp), (self._key,))
        if code in (401, 403):
            raise AuthError(
                f"the gateway refused the API key ({code} {msg}) on {what}. Check PIXAZO_API_KEY "
                "(and that the key is allowed to use this model), then run again.", status_code=code)
        if code == 402:
            raise InsufficientBalance(
                f"insufficient balance ({msg}). Top up the Pixazo wallet, then run the same command again "
                "to resume.", status_code=code, body=msg)
        if code == 400:
            raise BadRequest(f"the gateway rejected {what}: {msg}", status_code=code, body=msg)
        if code == 404:
            raise NotFound(f"{what}: not found ({msg})", status_code=code, body=msg)

    # -- submit -------------------------------------------------------------------------

    async def submit(self, op: str, body: dict[str, Any], *, webhook_url: str | None = None) -> Accepted:
        """POST one request; returns the acceptance or raises.

        Raises ``SubmitUnknown`` when it may have been accepted; ``BadRequest``/``NotFound``
        (not accepted, not charged); ``AuthError``; ``InsufficientBalance``; ``RateLimited``
        or ``ServerError`` when definite refusals outlast the retries.
        """
        path = ENDPOINTS[op]
        content = json.dumps(body, separators=(",", ":")).encode()
        headers = [(b"Content-Type", b"application/json")]
        if webhook_url:
            headers += [(WEBHOOK_URL_HEADER.encode(), webhook_url.encode()), (WEBHOOK_MODE_HEADER.encode(), b"terminal")]
        attempt = throttled = 0
        while True:
            attempt += 1
            await self.limiter.acquire()
            try:
                resp = await self._call("POST", path, content, headers)
            except httpx.TransportError as exc:
                if retry_policy.retry_transport_error(exc, idempotent=False) and attempt < self.policy.max_attempts:
                    await asyncio.sleep(self.policy.backoff(attempt))
                    continue
                if retry_policy.request_never_sent(exc):
                    raise GatewayUnreachable(f"cannot reach the gateway at {self.base_url}: {type(exc).__name__} "
                                       f"{redact(str(exc), (self._key,))}. Check --base-url and the network.") from None
                raise SubmitUnknown(f"submit to {path}: the connection failed after the request was sent "
                                    f"({type(exc).__name__}); the gateway may have accepted it.") from None
            code = resp.status_code
            if 200 <= code < 300:
                self.limiter.on_accept()
                try:
                    data = resp.json()
                    rid = data["request_id"]
                    if not isinstance(rid, str) or not rid:
                        raise ValueError("empty request_id")
                except (ValueError, KeyError, TypeError):
                    raise SubmitUnknown(f"submit to {path}: {code} with an unreadable body "
                                        f"({resp.text[:120]!r}); the gateway may have accepted it.") from None
                polling = data.get("polling_url")
                polling_path = STATUS_PATH.format(request_id=rid)
                if isinstance(polling, str) and polling:
                    parts = urlsplit(polling)
                    if parts.path:
                        polling_path = parts.path + (f"?{parts.query}" if parts.query else "")
                return Accepted(rid, str(data.get("status") or "QUEUED"), polling_path)
            if code == 429:
                ra = retry_policy.parse_retry_after(resp.headers.get("Retry-After"))
                throttled += 1
                attempt -= 1  # a throttle is not a failure; it has its own allowance
                self.limiter.on_throttle(self.policy.wait_for_retry_after(ra, throttled))
                if throttled < MAX_THROTTLED_TRIES:
                    continue
                raise RateLimited(f"submit to {path}: still throttled (429) after {throttled} tries; "
                                  "lower --max-rps or --concurrency.", retry_after=ra, status_code=429)
            if retry_policy.submit_status_is_ambiguous(code):
                raise SubmitUnknown(f"submit to {path}: {code} from a proxy; the gateway may have accepted it.",
                                    status_code=code)
            if retry_policy.retry_status(code, idempotent=False):
                if attempt < self.policy.max_attempts:
                    await asyncio.sleep(self.policy.backoff(attempt))
                    continue
                raise ServerError(f"submit to {path}: the gateway kept failing ({code}) after {attempt} tries.",
                                  status_code=code)
            self._raise_for_definite(resp, f"submit to {path}")
            raise GatewayError(f"submit to {path}: unexpected HTTP {code}: {_message(resp)}", status_code=code)

    # -- status -------------------------------------------------------------------------

    async def status(self, request_id: str, polling_path: str | None = None) -> JobStatus:
        path = polling_path or STATUS_PATH.format(request_id=request_id)
        data = await self._get_json(path)
        try:
            st = data["status"]
            if st not in STATUSES:
                raise ValueError(st)
            out = data.get("output") or {}
            urls = out.get("media_url") or ()
            if isinstance(urls, str):
                urls = (urls,)
            return JobStatus(
                request_id=str(data.get("request_id") or request_id), status=st,
                media_urls=tuple(str(u) for u in urls), media_type=out.get("media_type"),
                error=data.get("error"), created_at=parse_timestamp(data.get("created_at")),
                completed_at=parse_timestamp(data.get("completed_at")))
        except (KeyError, TypeError, ValueError, AttributeError):
            raise GatewayProtocolError(f"status of {request_id}: the answer is not a status ({str(data)[:200]})") from None

    async def _get_json(self, path: str) -> Any:
        attempt = throttled = 0
        last = ""
        while True:
            attempt += 1
            await self.limiter.acquire_poll()
            try:
                resp = await self._call("GET", path)
            except httpx.TransportError as exc:
                last = f"{type(exc).__name__}"
                if attempt < self.policy.max_attempts:
                    await asyncio.sleep(self.policy.backoff(attempt))
                    continue
                raise GatewayUnreachable(f"GET {path}: network error ({last}) after {attempt} tries.") from None
            code = resp.status_code
            if code == 429:
                throttled += 1
                attempt -= 1
                ra = retry_policy.parse_retry_after(resp.headers.get("Retry-After"))
                self.limiter.on_throttle(self.policy.wait_for_retry_after(ra, throttled))
                if throttled < MAX_THROTTLED_TRIES:
                    continue
                raise RateLimited(f"GET {path}: still throttled after {throttled} tries.", retry_after=ra, status_code=429)
            if 200 <= code < 300:
                try:
                    return resp.json()
                except ValueError:
                    last = f"{code} with garbage body"
            elif retry_policy.retry_status(code, idempotent=True):
                last = f"HTTP {code}"
            else:
                self._raise_for_definite(resp, f"GET {path}")
                raise GatewayError(f"GET {path}: unexpected HTTP {code}: {_message(resp)}", status_code=code)
            if attempt < self.policy.max_attempts:
                await asyncio.sleep(self.policy.backoff(attempt))
                continue
            if last.endswith("garbage body"):
                raise GatewayProtocolError(f"GET {path}: {last} after {attempt} tries.")
            raise ServerError(f"GET {path}: {last} after {attempt} tries.", status_code=code)

    # -- download -----------------------------------------------------------------------

    async def download(self, url: str) -> Download:
        """Fetch an output from the CDN (no key sent); retries 5xx and network errors."""
        if url.startswith("/"):
            url = urljoin(self.base_url + "/", url)
        if not url.startswith(("http://", "https://")):
            raise GatewayProtocolError(f"media_url {url[:200]!r} is not an http(s) URL")
        path = urlsplit(url).path
        attempt = 0
        while True:
            attempt += 1
            try:
                resp = await self._send(self._cdn, "GET", url, path)
            except httpx.TransportError as exc:
                if attempt < self.policy.max_attempts:
                    await asyncio.sleep(self.policy.backoff(attempt))
                    continue
                raise GatewayUnreachable(f"download {path}: network error ({type(exc).__name__}) after {attempt} tries.") from None
            code = resp.status_code
            if 200 <= code < 300:
                return Download(resp.content, resp.headers.get("content-type"))
            if retry_policy.retry_status(code, idempotent=True) and attempt < self.policy.max_attempts:
                ra = retry_policy.parse_retry_after(resp.headers.get("Retry-After")) if code == 429 else None
                await asyncio.sleep(self.policy.wait_for_retry_after(ra, attempt) if code == 429 else self.policy.backoff(attempt))
                continue
            raise GatewayError(f"download {path}: HTTP {code}", status_code=code)


def _is_aiohttp(transport: httpx.AsyncBaseTransport) -> bool:
    return type(transport).__module__.startswith("httpx_aiohttp")


def _aiohttp_transport(limits: httpx.Limits) -> httpx.AsyncBaseTransport:
    from httpx_aiohttp import AiohttpTransport

    return AiohttpTransport(limits=limits)
