"""Callbacks the gateway sends (webhook mode), and the doubt they settle.

Every submit carries a callback URL that names its send: the run's ``--webhook-url`` plus
``pb_key`` (the item), ``pb_n`` (the send's number) and ``pb_sig``, an HMAC-SHA256 of both
under a secret kept in the state file (never printed, logged or exported). So a callback
whose signature checks out was asked for by a request this state file sent: the gateway
received that request. When its item is AMBIGUOUS (the connection dropped after sending),
the callback's request_id is adopted, after one status poll confirms it: the item is then
polled and settled like any submitted item instead of being counted at risk or sent again.

``Receiver`` is the HTTP endpoint: it answers 413 to a body over ``MAX_BODY`` bytes, 403 to
a missing or forged signature (counted, never trusted), 400 to a body without a request id
of the documented shape, and hands each verified callback on once per request id.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from ..gateway import REQUEST_ID
from .poll import WebhookReceiver

MAX_BODY = 64 * 1024  # a status document is a few hundred bytes
MAX_SEEN = 200_000  # request ids remembered for deduplication


class Signer:
    """Callback URLs that name a send, signed with the state file's secret."""

    def __init__(self, secret: str, base_url: str):
        self._secret = secret.encode()
        self.base_url = base_url

    def sign(self, key: str, n: int) -> str:
        return hmac.new(self._secret, f"{key}:{n}".encode(), hashlib.sha256).hexdigest()[:40]

    def url_for(self, key: str, n: int) -> str:
        parts = urlsplit(self.base_url)
        query = parse_qsl(parts.query, keep_blank_values=True) + [("pb_key", key), ("pb_n", str(n)),
                                                                   ("pb_sig", self.sign(key, n))]
        return urlunsplit(parts._replace(query=urlencode(query)))

    def verify(self, query: dict[str, str]) -> tuple[str, int] | None:
        """(item key, send number) of a callback URL's query, or None when it is not ours."""
        key, n, sig = query.get("pb_key"), query.get("pb_n"), query.get("pb_sig")
        if not key or not sig or not n or not n.isdigit() or len(key) > 200:
            return None
        if not hmac.compare_digest(self.sign(key, int(n)), sig):
            return None
        return key, int(n)


class Receiver:
    """The webhook endpoint (an ASGI app served in a thread); verified callbacks go to ``on_callback``
    (called on the run's event loop) as (item key, send number, request id)."""

    def __init__(self, signer: Signer, loop: asyncio.AbstractEventLoop,
                 on_callback: Callable[[str, int, str], None]):
        self.signer, self.loop, self.on_callback = signer, loop, on_callback
        self.wakeups = WebhookReceiver()  # items being polled wait here for their callback
        self.seen: set[str] = set()
        self.forged = 0
        self.server: Any = None

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                if msg["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif msg["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        status = await self._handle(scope, receive)
        await send({"type": "http.response.start", "status": status, "headers": [(b"content-length", b"0")]})
        await send({"type": "http.response.body", "body": b""})

    async def _handle(self, scope: dict, receive: Callable) -> int:
        if scope["method"] != "POST" or scope["path"] != (urlsplit(self.signer.base_url).path or "/"):
            return 404
        query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
        who = self.signer.verify(query)
        if who is None:
            self.forged += 1  # dropped before its body is read
            return 403
        body = bytearray()
        while True:
            msg = await receive()
            body += msg.get("body", b"")
            if len(body) > MAX_BODY:
                return 413
            if not msg.get("more_body"):
                break
        try:
            rid = json.loads(body)["request_id"]
        except (ValueError, KeyError, TypeError):
            return 400
        if not isinstance(rid, str) or not REQUEST_ID.fullmatch(rid) or ".." in rid:
            return 400
        if rid not in self.seen:  # the gateway may deliver a callback more than once
            if len(self.seen) >= MAX_SEEN:
                self.seen.clear()
            self.seen.add(rid)
            self.loop.call_soon_threadsafe(self._heard, who[0], who[1], rid)
        return 200

    def _heard(self, key: str, n: int, request_id: str) -> None:  # on the run's loop
        self.wakeups.wake(request_id)  # an item being polled: its status is read now
        self.on_callback(key, n, request_id)

    def url_for(self, row: Any) -> Callable[[], str]:
        """The callback URL of the item's next send (asked for at each send: each names its own)."""
        return lambda: self.signer.url_for(row.key, row.attempts + 1)

    def start(self, listen: str | None) -> None:
        """Serve on ``listen`` ("host:port"); by default on loopback at the callback URL's port (put a
        TLS proxy in front to receive from the internet: docs in the README)."""
        from ..serve import serve_in_thread

        u = urlsplit(self.signer.base_url)
        listen = listen or f"127.0.0.1:{u.port or (443 if u.scheme == 'https' else 80)}"
        host, _, port = listen.rpartition(":")
        self.server = serve_in_thread(self, host=host or "127.0.0.1", port=int(port))

    async def stop(self) -> None:
        if self.server is not None:
            await asyncio.to_thread(self.server.stop)
            self.server = None


class Doubts:
    """The AMBIGUOUS items of this run that a signed callback may still settle, and callbacks heard
    for items whose send has not been decided yet (the callback can beat the dropped connection)."""

    def __init__(self) -> None:
        self.open: set[str] = set()
        self.early: dict[str, tuple[int, str]] = {}

    def became_ambiguous(self, key: str) -> tuple[int, str] | None:
        """The item is AMBIGUOUS now; returns a callback already heard for it (adopt it), if any."""
        self.open.add(key)
        return self.early.pop(key, None)

    def heard_early(self, key: str, n: int, request_id: str) -> None:
        if len(self.early) < MAX_SEEN:
            self.early[key] = (n, request_id)

    async def wait(self, grace: float, stopping: Callable[[], bool]) -> None:
        """Until every open doubt is settled, the run stops, or ``grace`` seconds have passed."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while self.open and loop.time() < deadline and not stopping():
            await asyncio.sleep(0.1)


async def adopt(store: Any, gateway: Any, key: str, n: int, request_id: str, *, put: Callable[..., Any],
                emit: Callable[..., None]) -> Any:
    """Take ``request_id`` as the answer to send ``n`` of an AMBIGUOUS item, once a status poll
    confirms the gateway knows it; returns the item, now SUBMITTED (None: nothing to adopt)."""
    from .. import state as st
    from ..errors import GatewayError
    from ..gateway import status_path

    row = await store.call(lambda db: st.item_row(db, key))
    if row is None or row.state != st.AMBIGUOUS or row.attempts != n or row.request_id:
        return None
    try:
        s = await gateway.status(request_id)
    except GatewayError as exc:
        emit("callback", key, adopted=False, request_id=request_id, error=str(exc))
        return None
    row.state, row.request_id, row.polling_path = st.SUBMITTED, request_id, status_path(request_id)
    row.gateway_status, row.error = s.status, None
    row.submitted_at = row.submitted_at or st.utcnow()
    put(row, reason="a signed callback proved the gateway accepted it; confirmed by a status poll",
        request_id=request_id)
    return row
