"""ASGI plumbing: a connection the emulator can drop, and TCP_NODELAY on every connection.

``drop`` is an ASGI answer that never comes: behind uvicorn the socket is aborted (no
status line, like a gateway dying after accepting); without a socket (httpx's
ASGITransport) a 202 is started and the body never finishes, which httpx reports as a
transport error too.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

import httpx
from starlette.applications import Starlette


class ConnectionDropped(httpx.RemoteProtocolError):
    """Raised after the status line went out: the server closes the connection mid-answer.

    An httpx transport error, so a client driving the app through ``httpx.ASGITransport``
    (no socket to close) sees the same kind of failure as one talking to a real server.
    """


class _DropFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, ConnectionDropped)


def install_log_filter() -> None:
    logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _DropFilter) for f in logger.filters):
        logger.addFilter(_DropFilter())


_TRANSPORT = "pixbatch.emulator.transport"


class EmulatorApp(Starlette):
    """Starlette, plus: remember the server's socket transport so a handler can drop it.

    uvicorn's ``send`` is a bound method of its request cycle, which holds the transport;
    this must be read before Starlette's middleware wraps ``send``. Other servers (or
    httpx's ASGITransport) have none, and ``drop`` falls back.
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


async def drop(scope: Any, receive: Any, send: Any) -> None:
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
