"""Our aiohttp transport over real loopback sockets: answers, httpx errors, and what may have been sent."""

from __future__ import annotations

import asyncio
import gzip
import socket

import aiohttp
import httpx
import pytest

from pixbatch import retry_policy
from pixbatch.errors import GatewayUnreachable, SubmitUnknown
from pixbatch.gateway import Gateway
from pixbatch.transport import AiohttpTransport

TIMEOUT = aiohttp.ClientTimeout(sock_connect=5, sock_read=5, connect=5)


@pytest.fixture(autouse=True)
def _instant_backoff():
    with retry_policy.instant():
        yield


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def serve(answer: bytes | None, seen: list[bytes]):
    """A one-shot-per-connection HTTP server: reads the request head, writes ``answer`` (None: hangs up)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await reader.readuntil(b"\r\n\r\n"))
        if answer is not None:
            writer.write(answer)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"


def test_request_returns_a_reply_and_decodes_gzip():
    body = gzip.compress(b'{"ok": true}')
    answer = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Encoding: gzip\r\n"
              b"Content-Length: " + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body)

    async def main():
        seen: list[bytes] = []
        server, url = await serve(answer, seen)
        t = AiohttpTransport()
        try:
            direct = await t.request("GET", url + "/x", headers={"X-A": "1"}, timeout=TIMEOUT)
            async with httpx.AsyncClient(transport=t) as client:
                via_httpx = await client.get(url + "/y")
        finally:
            await t.aclose()
            server.close()
        return direct, via_httpx, seen

    direct, via_httpx, seen = asyncio.run(main())
    assert direct.status_code == 200 and direct.json() == {"ok": True} and direct.headers["content-type"]
    assert via_httpx.status_code == 200 and via_httpx.json() == {"ok": True}
    assert b"GET /x " in seen[0] and b"X-A: 1" in seen[0] and b"GET /y " in seen[1]


def test_a_refused_connection_never_left_and_a_hang_up_may_have():
    async def main():
        t = AiohttpTransport()
        out = {}
        try:
            with pytest.raises(httpx.ConnectError) as refused:
                await t.request("POST", f"http://127.0.0.1:{free_port()}/p", headers={}, content=b"{}",
                                timeout=TIMEOUT)
            out["refused"] = refused.value
            seen: list[bytes] = []
            server, url = await serve(None, seen)
            with pytest.raises(httpx.TransportError) as dropped:
                await t.request("POST", url + "/p", headers={}, content=b"{}", timeout=TIMEOUT)
            server.close()
            out["dropped"] = dropped.value
        finally:
            await t.aclose()
        return out

    out = asyncio.run(main())
    assert isinstance(out["refused"].__cause__, aiohttp.ClientConnectorError)
    assert retry_policy.request_never_sent(out["refused"])
    assert isinstance(out["dropped"], httpx.RemoteProtocolError)
    assert not retry_policy.request_never_sent(out["dropped"])


def test_gateway_submit_over_aiohttp_keeps_the_ambiguity_rules():
    async def main():
        seen: list[bytes] = []
        server, url = await serve(None, seen)  # reads the POST, hangs up without an answer
        try:
            async with Gateway(url, "k" * 8) as gw:
                with pytest.raises(SubmitUnknown):
                    await gw.submit("upscale", {"image": "https://x.test/a.png"})
            async with Gateway(f"http://127.0.0.1:{free_port()}", "k" * 8) as gw:
                with pytest.raises(GatewayUnreachable, match="cannot reach"):
                    await gw.submit("upscale", {"image": "https://x.test/a.png"})
        finally:
            server.close()
        return seen

    seen = asyncio.run(main())
    assert len(seen) == 1  # sent once, never again: its fate is unknown
