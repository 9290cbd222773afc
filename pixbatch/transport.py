"""The fast HTTP path: an httpx transport over one aiohttp session, using aiohttp's public API only.

httpx's own connection pool costs about fifteen times the client CPU per call of aiohttp's
at 64 concurrent requests, so the gateway client sends through aiohttp by default:

- ``AiohttpTransport.request(...)`` sends one request and returns a ``Reply`` (status,
  headers, body read whole) with no httpx request or response objects: ``Gateway`` calls it
  directly for submits and polls, the calls that dominate a run's CPU;
- ``handle_async_request`` makes the same session usable as any ``httpx.AsyncBaseTransport``
  (``httpx.AsyncClient(transport=...)``: the CDN downloads, with httpx's redirect handling).

Both raise httpx exceptions, so callers handle one family: aiohttp's errors are mapped by
``_ERRORS`` (first match wins) and chained (``raise ... from exc``), because whether a
request may have left the machine is decided from the aiohttp error itself
(``retry_policy.request_never_sent``). An aiohttp error the table does not name propagates.

The session is created on first use, inside the running event loop, and closed by ``aclose``.
"""

from __future__ import annotations

import contextlib
import functools
import json
import ssl
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Any

import aiohttp
import httpx

#: aiohttp error -> the httpx error raised in its place; the first entry that matches wins.
_ERRORS: tuple[tuple[type[BaseException], type[httpx.TransportError]], ...] = (
    (aiohttp.ConnectionTimeoutError, httpx.ConnectTimeout),  # no connection within the timeout
    (aiohttp.SocketTimeoutError, httpx.ReadTimeout),  # the answer stalled
    (aiohttp.ServerTimeoutError, httpx.ReadTimeout),
    (aiohttp.ClientProxyConnectionError, httpx.ProxyError),
    (aiohttp.ClientConnectorError, httpx.ConnectError),  # no connection: refused, DNS, TLS
    (aiohttp.ServerDisconnectedError, httpx.RemoteProtocolError),  # closed before answering
    (aiohttp.ClientConnectionError, httpx.ReadError),  # reset, broken pipe, ...
    (aiohttp.ClientPayloadError, httpx.ReadError),  # the body was cut or malformed
    (aiohttp.ClientHttpProxyError, httpx.ProxyError),
    (aiohttp.InvalidUrlClientError, httpx.UnsupportedProtocol),
    (aiohttp.NonHttpUrlClientError, httpx.UnsupportedProtocol),
)


@contextlib.contextmanager
def httpx_errors() -> Iterator[None]:
    """Raise aiohttp's errors as the httpx errors of ``_ERRORS``, chained to the original."""
    try:
        yield
    except aiohttp.ClientError as exc:
        for aio, mapped in _ERRORS:
            if isinstance(exc, aio):
                raise mapped(str(exc) or type(exc).__name__) from exc
        raise


@functools.cache
def _default_ssl_context() -> ssl.SSLContext:
    return httpx.create_ssl_context()  # loading the CA bundle takes tens of milliseconds


class Reply:
    """An answer read whole: status, headers (case-insensitive) and body; ``json()`` parses once."""

    __slots__ = ("status_code", "headers", "content", "_data")

    def __init__(self, status_code: int, headers: Mapping[str, str], content: bytes):
        self.status_code = status_code
        self.headers = headers
        self.content = content

    def json(self) -> Any:
        try:
            return self._data
        except AttributeError:
            self._data = json.loads(self.content)
            return self._data

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")


class _BeforeWrite:
    """What a request's trace context carries: the callback to await once its connection is held."""

    __slots__ = ("callback",)

    def __init__(self, callback: Callable[[], Awaitable[None]] | None):
        self.callback = callback


async def _on_connection(session: Any, ctx: Any, params: Any) -> None:
    holder = getattr(ctx, "trace_request_ctx", None)
    if isinstance(holder, _BeforeWrite) and holder.callback is not None:
        callback, holder.callback = holder.callback, None
        await callback()


@functools.cache
def _connected_trace() -> aiohttp.TraceConfig:
    trace = aiohttp.TraceConfig()
    trace.on_connection_create_end.append(_on_connection)  # a new connection is made
    trace.on_connection_reuseconn.append(_on_connection)  # a kept-alive one is taken
    return trace


class AiohttpTransport(httpx.AsyncBaseTransport):
    """One aiohttp ``ClientSession`` with up to ``max_connections`` connections (kept alive
    ``keepalive_expiry`` seconds), usable directly (``request``) or as an httpx transport."""

    # an idle connection is dropped well before a server would close it (uvicorn: 5 s): a POST
    # written onto a connection the server is closing at that moment is lost *after* being sent,
    # and would be AMBIGUOUS although the gateway never read it
    def __init__(self, *, max_connections: int = 256, keepalive_expiry: float = 2.0,
                 ssl_context: ssl.SSLContext | None = None):
        self.max_connections = max_connections
        self.keepalive_expiry = keepalive_expiry
        self._ssl = ssl_context  # None: httpx's default (certifi's CAs), made once per process
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=self.max_connections, keepalive_timeout=self.keepalive_expiry,
                                             ssl=self._ssl or _default_ssl_context())
            self._session = aiohttp.ClientSession(connector=connector, trace_configs=[_connected_trace()])
        return self._session

    async def request(self, method: str, url: str, *, headers: Mapping[str, str], content: bytes | None = None,
                      timeout: aiohttp.ClientTimeout,
                      before_write: Callable[[], Awaitable[None]] | None = None) -> Reply:
        """One exchange, body read (and decompressed) before returning; httpx errors on failure.

        ``before_write`` is awaited once a connection is held (made or reused) and before the
        request is written on it: no request exists before, and nothing is on the wire yet.
        """
        with httpx_errors():
            async with self.session.request(method, url, headers=headers, data=content, allow_redirects=False,
                                            timeout=timeout, trace_request_ctx=_BeforeWrite(before_write)) as r:
                return Reply(r.status, r.headers, await r.read())

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        t = request.extensions.get("timeout", {})
        timeout = aiohttp.ClientTimeout(sock_connect=t.get("connect"), sock_read=t.get("read"), connect=t.get("pool"))
        content = await request.aread() or None
        with httpx_errors():
            # the body is handed to httpx still encoded: httpx decodes it by Content-Encoding
            async with self.session.request(request.method, str(request.url), headers=request.headers.multi_items(),
                                            data=content, allow_redirects=False, auto_decompress=False,
                                            timeout=timeout,
                                            server_hostname=request.extensions.get("sni_hostname")) as r:
                body = await r.read()
                return httpx.Response(r.status, headers=r.raw_headers, content=body, request=request,
                                      extensions={"http_version": b"HTTP/1.1"})

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
