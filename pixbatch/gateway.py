"""Async client for the P-Image gateway (Pixazo): submit, status, download.

One ``Gateway`` per run. It speaks the documented contract (``contract.py``): POST the
request body to the operation's endpoint with the key in ``Ocp-Apim-Subscription-Key``,
get ``202 {request_id, status, polling_url}``; GET the polling URL's *path* under the
base URL until a terminal status; download ``output.media_url`` (public CDN URLs: the key
is never sent there). Swapping the emulator for the real gateway changes only the base URL.

Transport: ``transport.AiohttpTransport`` by default (aiohttp's pool: about fifteen times
less client CPU per call than httpx's own at 64 concurrent requests), and gateway calls
then go straight to its ``request()`` (no httpx request/response objects; errors are the
same httpx exceptions). Tests pass ``transport=httpx.MockTransport`` or
``httpx.ASGITransport``, which take the plain httpx path; downloads always go through an
``httpx.AsyncClient`` (redirects).

What is retried is decided by ``retry_policy`` (its table and its three predicates), and
one loop, ``retry_policy.retrying``, serves submit, poll and download; this module turns
the final outcome into a result or an exception. The rule that matters for money: a
submit whose outcome is unknown (connection dropped or timed out after the request left,
a 2xx with a body we cannot read, a 502/504) raises ``SubmitUnknown`` and is never retried
here. Every HTTP exchange is reported to ``on_exchange`` (method, path, status,
milliseconds: never headers, never the key).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

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
    GatewayProtocolError,
    GatewayUnreachable,
    InsufficientBalance,
    NotFound,
    QuotaExceeded,
    RateLimited,
    ServerError,
    SubmitUnknown,
    UsageError,
    redact,
    require_api_key,
)
from .ratelimit import AdaptiveRateLimiter
from .retry_policy import DEFAULT_POLICY, RetryPolicy, retrying
from .media import DOWNLOAD_DEADLINE, MAX_MEDIA_BYTES, Download, Fetched, MediaClient
from .transport import AiohttpTransport, Reply

DEFAULT_BASE_URL = "https://gateway.pixazo.ai"

__all__ = ["DEFAULT_BASE_URL", "Accepted", "Download", "Exchange", "Gateway", "JobStatus", "Reply", "SendHooks",
           "SubmitUnknown", "parse_timestamp"]


class SendHooks(Protocol):
    """What the caller of ``Gateway.submit`` hears of each single send (see ``submit``)."""

    async def sending(self) -> None: ...

    def refused(self, status: int | None, reason: str) -> None: ...


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


REQUEST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,199}")


def check_base_url(url: str) -> str:
    """The base URL without its trailing slash; a ``UsageError`` unless it is an http(s) URL with a host
    (checked before anything is sent, so a typo never leaves an item in doubt)."""
    try:
        parts = urlsplit(url.strip()) if isinstance(url, str) else None
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise UsageError(f"the base URL {str(url)[:200]!r} is not an http(s) URL like https://gateway.pixazo.ai; "
                         "fix --base-url (or PIXBATCH_BASE_URL).")
    try:
        parts.port
    except ValueError:
        raise UsageError(f"the base URL {url[:200]!r} has an invalid port; fix --base-url.") from None
    return url.strip().rstrip("/")


def status_path(request_id: str) -> str:
    """The documented polling path of ``request_id``; a request id of another shape is refused
    (a ``../`` in it must never steer a request that carries the key to another route)."""
    if not isinstance(request_id, str) or not REQUEST_ID.fullmatch(request_id) or ".." in request_id:
        raise GatewayProtocolError(f"the request id {str(request_id)[:80]!r} is not of the documented shape")
    return STATUS_PATH.format(request_id=request_id)


def _duration(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 60 else f"{s} s"


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
    """The client of one gateway. ``api_key`` None: ``$PIXAZO_API_KEY`` (``errors.require_api_key``:
    ``MissingApiKey`` when there is none). ``transport``: any httpx async transport (tests);
    default: our ``AiohttpTransport``."""

    def __init__(self, base_url: str = DEFAULT_BASE_URL, api_key: str | None = None, *,
                 transport: httpx.AsyncBaseTransport | None = None, timeout: float = 30.0,
                 limiter: AdaptiveRateLimiter | None = None, policy: RetryPolicy = DEFAULT_POLICY,
                 on_exchange: Callable[[Exchange], None] | None = None, max_connections: int = 256,
                 download_transport: httpx.AsyncBaseTransport | None = None,
                 max_media_bytes: int = MAX_MEDIA_BYTES, download_deadline: float = DOWNLOAD_DEADLINE):
        api_key = require_api_key(api_key)
        self.base_url = check_base_url(base_url)
        self._key = api_key
        self.limiter = limiter or AdaptiveRateLimiter(None)
        self.policy = policy
        self.on_exchange = on_exchange
        if transport is None:
            transport = AiohttpTransport(max_connections=max_connections)
        if download_transport is None:
            # the CDN gets httpx's own pool when the gateway's is aiohttp's: it streams bodies
            # (outputs go to disk as they arrive, with a byte cap), where ours reads them whole
            download_transport = (httpx.AsyncHTTPTransport(limits=httpx.Limits(max_connections=max_connections))
                                  if isinstance(transport, AiohttpTransport) else transport)
        # httpx stores the header; it is never logged or put in exceptions by this module
        self._client = httpx.AsyncClient(base_url=self.base_url, transport=transport, timeout=timeout,
                                         headers={AUTH_HEADER: api_key, "Cache-Control": "no-cache"})
        self._cdn = httpx.AsyncClient(transport=download_transport, timeout=timeout, follow_redirects=True)
        self.media = MediaClient(self._cdn, base_url=self.base_url, policy=policy, record=self._record,
                                 secrets=(api_key,), max_bytes=max_media_bytes, deadline=download_deadline)
        # gateway calls skip the client's per-request work (URL merging and parsing, header
        # merging, cookies, auth and redirect machinery: two thirds of the per-call CPU at
        # high rates): the request is built from pre-merged headers and handed to the same
        # transport, with the same timeouts
        self._transport = transport
        self._headers = list(self._client.headers.raw)
        self._timeouts = httpx.Timeout(timeout).as_dict()
        self._fast = transport if isinstance(transport, AiohttpTransport) else None
        self._fast_headers = {k.decode(): v.decode() for k, v in self._headers}
        self._fast_timeout = aiohttp.ClientTimeout(sock_connect=timeout, sock_read=timeout, connect=timeout)

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
                    headers: list[tuple[bytes, bytes]] | None = None,
                    before_write: Callable[[], Awaitable[None]] | None = None) -> Reply:
        """One gateway exchange; the body is read before returning. ``before_write`` is awaited
        just before the request is written (with aiohttp: once its connection is held)."""
        t0 = time.perf_counter()
        try:
            if self._fast is not None:
                hdrs = self._fast_headers
                if headers:
                    hdrs = {**hdrs, **{k.decode(): v.decode() for k, v in headers}}
                reply = await self._fast.request(method, self.base_url + path, headers=hdrs, content=content,
                                                 timeout=self._fast_timeout, before_write=before_write)
            else:
                if before_write is not None:
                    await before_write()
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

    def _raise_for_definite(self, resp: Reply | httpx.Response, what: str) -> None:
        code = resp.status_code
        msg = redact(_message(resp), (self._key,))
        retry_after = resp.headers.get("Retry-After")
        if code == 403 and retry_after is not None:
            # API Management's quota ("Out of call volume quota"): the key is fine, the calls are used up
            seconds = retry_policy.parse_retry_after(retry_after)
            when = ""
            if seconds is not None:
                back = datetime.now(timezone.utc) + timedelta(seconds=seconds)
                when = f" It comes back in {_duration(seconds)} (at {back:%Y-%m-%d %H:%M} UTC)."
            raise QuotaExceeded(f"the gateway's call quota for this key is used up ({msg}) on {what}.{when} "
                                "Run the same command again then: nothing was marked failed.",
                                retry_after=seconds, status_code=code, body=msg)
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

    async def submit(self, op: str, body: dict[str, Any], *, webhook_url: str | Callable[[], str] | None = None,
                     hooks: SendHooks | None = None) -> Accepted:
        """POST one request; returns the acceptance or raises.

        Raises ``SubmitUnknown`` when it may have been accepted; ``BadRequest``/``NotFound``
        (not accepted, not charged); ``AuthError``; ``InsufficientBalance``; ``RateLimited``
        or ``ServerError`` when definite refusals outlast the retries; ``GatewayUnreachable``
        when no connection could be made.

        ``hooks`` hears of every single send: ``sending()`` is awaited once the rate limiter has
        granted a token and a connection is held, immediately before the request is written
        (the runner commits its intent there), and ``refused(status, reason)`` follows each try
        that was definitely not accepted and is about to be tried again (a 429, a 500/503, a
        connection never made: then ``sending()`` was never called for it).
        """
        path = ENDPOINTS[op]
        content = json.dumps(body, separators=(",", ":")).encode()
        json_type = [(b"Content-Type", b"application/json")]

        async def send() -> Reply:
            headers = json_type
            if webhook_url:  # a callable names each send (runner/callbacks.py signs it)
                url = webhook_url() if callable(webhook_url) else webhook_url
                headers = [*json_type, (WEBHOOK_URL_HEADER.encode(), url.encode()),
                           (WEBHOOK_MODE_HEADER.encode(), b"terminal")]
            return await self._call("POST", path, content, headers,
                                    before_write=hooks.sending if hooks is not None else None)

        def again(outcome: Reply | BaseException) -> retry_policy.Again | None:
            verdict = retry_policy.submit_again(outcome)
            if verdict is not None and hooks is not None:
                if isinstance(outcome, BaseException):
                    hooks.refused(None, f"not sent: {type(outcome).__name__}: "
                                        f"{redact(str(outcome), (self._key,))[:200]}")
                else:
                    hooks.refused(outcome.status_code, redact(_message(outcome), (self._key,))[:200])
            return verdict

        end = await retrying(self.policy, send, on=again, before=self.limiter.acquire,
                             on_throttle=self.limiter.on_throttle)
        resp = end.outcome
        if isinstance(resp, BaseException):
            if retry_policy.request_never_sent(resp):
                raise GatewayUnreachable(f"cannot reach the gateway at {self.base_url}: {type(resp).__name__} "
                                         f"{redact(str(resp), (self._key,))}. Check --base-url and the network.") from None
            raise SubmitUnknown(f"submit to {path}: the connection failed after the request was sent "
                                f"({type(resp).__name__}); the gateway may have accepted it.") from None
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
            try:
                # polled at the documented path only: a polling_url pointing elsewhere is not followed
                polling_path = status_path(rid)
            except GatewayProtocolError:
                raise SubmitUnknown(f"submit to {path}: {code} with a request id of an undocumented shape "
                                    f"({rid[:80]!r}): accepted (it may be charged) but not polled.") from None
            return Accepted(rid, str(data.get("status") or "QUEUED"), polling_path)
        if code == 429:
            raise RateLimited(f"submit to {path}: still throttled (429) after {end.throttles} tries; "
                              "lower --max-rps or --concurrency.",
                              retry_after=retry_policy.parse_retry_after(resp.headers.get("Retry-After")),
                              status_code=429)
        if retry_policy.submit_status_is_ambiguous(code):
            raise SubmitUnknown(f"submit to {path}: {code} from a proxy; the gateway may have accepted it.",
                                status_code=code)
        if end.exhausted:
            raise ServerError(f"submit to {path}: the gateway kept failing ({code}) after {end.tries} tries.",
                              status_code=code)
        self._raise_for_definite(resp, f"submit to {path}")
        raise GatewayError(f"submit to {path}: unexpected HTTP {code}: {_message(resp)}", status_code=code)

    # -- status -------------------------------------------------------------------------

    async def status(self, request_id: str, polling_path: str | None = None) -> JobStatus:
        """The job's status, read at the documented path of ``request_id`` (``polling_path`` is
        accepted for compatibility and not used: a stored path is never trusted over the id)."""
        path = status_path(request_id)
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
            raise GatewayProtocolError(
                f"status of {request_id}: the answer is not a status ({str(data)[:200]})") from None

    async def _get_json(self, path: str) -> Any:
        end = await retrying(self.policy, lambda: self._call("GET", path), on=retry_policy.poll_again,
                             before=self.limiter.acquire_poll, on_throttle=self.limiter.on_throttle)
        resp = end.outcome
        if isinstance(resp, BaseException):
            raise GatewayUnreachable(f"GET {path}: network error ({type(resp).__name__}) after {end.tries} tries.") \
                from None
        code = resp.status_code
        if code == 429:
            raise RateLimited(f"GET {path}: still throttled after {end.throttles} tries.",
                              retry_after=retry_policy.parse_retry_after(resp.headers.get("Retry-After")),
                              status_code=429)
        if 200 <= code < 300:
            try:
                return resp.json()
            except ValueError:
                raise GatewayProtocolError(f"GET {path}: {code} with garbage body after {end.tries} tries.") from None
        if end.exhausted:
            raise ServerError(f"GET {path}: HTTP {code} after {end.tries} tries.", status_code=code)
        self._raise_for_definite(resp, f"GET {path}")
        raise GatewayError(f"GET {path}: unexpected HTTP {code}: {_message(resp)}", status_code=code)

    # -- download -----------------------------------------------------------------------

    # -- outputs (the CDN) ----------------------------------------------------------------

    def media_url(self, url: Any) -> str:
        return self.media.url(url)

    async def fetch(self, url: str, into: Path, *, max_bytes: int | None = None,
                    deadline: float | None = None) -> Fetched:
        return await self.media.fetch(url, into, max_bytes=max_bytes, deadline=deadline)

    async def download(self, url: str, *, max_bytes: int | None = None, deadline: float | None = None) -> Download:
        return await self.media.download(url, max_bytes=max_bytes, deadline=deadline)
