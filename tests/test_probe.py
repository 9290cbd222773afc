"""Probing image sizes over real HTTP on loopback, and the DuckDB probe cache."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys

import httpx
import pytest
from PIL import Image

from pixbatch.errors import StateLocked
from pixbatch.state.connection import connect
from pixbatch.probe import FIRST_RANGE, probe_sizes, probe_sizes_report, read_header


def noisy_png(size: tuple[int, int]) -> bytes:
    """A PNG that does not compress: its body is much larger than its header."""
    img = Image.frombytes("RGB", size, os.urandom(size[0] * size[1] * 3))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


class CountingTransport(httpx.AsyncBaseTransport):
    """The real network transport, counting the requests that go through it."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.requests: list[httpx.Request] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


@pytest.fixture
def silent_port():
    """A loopback port that accepts connections and never answers (for timeouts)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    yield s.getsockname()[1]
    s.close()


@pytest.fixture
def closed_port():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_range_probe_reads_only_a_prefix(image_server):
    urls = {
        "png": image_server.add_bytes("big.png", noisy_png((400, 300))),
        "jpeg": image_server.add("photo.jpg", (3000, 2000)),
        "webp": image_server.add("pic.webp", (1200, 900)),
        "webp-lossless": image_server.add_bytes("ll.webp", _webp((640, 360), lossless=True)),
    }
    got = probe_sizes(urls.values())
    sizes = {k: (got[u].size, got[u].format) for k, u in urls.items()}
    assert sizes == {"png": ((400, 300), "PNG"), "jpeg": ((3000, 2000), "JPEG"), "webp": ((1200, 900), "WEBP"),
                     "webp-lossless": ((640, 360), "WEBP")}
    for u in urls.values():
        full = len(httpx.get(u).content)
        assert got[u].ok and got[u].bytes_read <= FIRST_RANGE < full, (u, got[u].bytes_read, full)


def test_server_ignoring_range_is_streamed_until_the_header(image_server):
    image_server.add_bytes("huge.png", data := noisy_png((700, 700)))
    image_server.add("photo.jpg", (800, 600))
    got = probe_sizes([f"{image_server.url}/no-range/huge.png", f"{image_server.url}/no-range/photo.jpg"])
    png, jpg = got[f"{image_server.url}/no-range/huge.png"], got[f"{image_server.url}/no-range/photo.jpg"]
    assert png.size == (700, 700) and jpg.size == (800, 600)
    # the server sent ~1.4 MB; we stopped reading after the first network chunk(s)
    assert png.bytes_read < len(data) // 4


def test_a_jpeg_header_past_the_first_range_is_found_by_asking_for_more(image_server):
    img = Image.frombytes("RGB", (800, 600), os.urandom(800 * 600 * 3))
    buf = io.BytesIO()
    img.save(buf, "JPEG", comment=os.urandom(20_000).hex()[:30_000].encode())  # COM block before SOF
    url = image_server.add_bytes("late.jpg", buf.getvalue())
    r = probe_sizes([url])[url]
    assert r.size == (800, 600) and FIRST_RANGE < r.bytes_read < len(buf.getvalue()) // 2


def test_failures_are_results_not_exceptions(image_server, silent_port, closed_port):
    urls = {
        "404": f"{image_server.url}/status/404",
        "503": f"{image_server.url}/status/503",
        "missing": f"{image_server.url}/img/nothing-here.png",
        "text": image_server.add_bytes("page.html", b"<html>" + b"x" * 9000 + b"</html>"),
        "timeout": f"http://127.0.0.1:{silent_port}/slow.png",
        "refused": f"http://127.0.0.1:{closed_port}/gone.png",
    }
    got = probe_sizes(urls.values(), timeout=0.5)
    errors = {k: got[u].error for k, u in urls.items()}
    assert all(got[u].size is None for u in urls.values())
    assert errors["404"] == "HTTP 404 Not Found"
    assert errors["503"] == "HTTP 503 Service Unavailable"
    assert errors["missing"] == "HTTP 404 Not Found"
    assert errors["text"].startswith("not an image") and "text/html" in errors["text"]
    assert errors["timeout"] == "timed out after 0.5s"
    assert errors["refused"].startswith("cannot connect")


def test_second_probe_is_answered_by_the_cache(image_server, tmp_path):
    cache = tmp_path / "state.duckdb"
    good = image_server.add("a.png", (640, 480))
    bad = f"{image_server.url}/img/later.png"
    first = CountingTransport()
    r1 = probe_sizes([good, bad], cache_path=cache, transport=first)
    assert r1[good].size == (640, 480) and r1[bad].error == "HTTP 404 Not Found"
    assert len(first.requests) == 2

    image_server.add("later.png", (100, 50))  # the URL works now, but its failure is cached
    second = CountingTransport()
    r2 = probe_sizes([good, bad], cache_path=cache, transport=second)
    assert second.requests == []
    assert r2[good].cached and r2[good].size == (640, 480) and r2[bad].error == "HTTP 404 Not Found"

    third = CountingTransport()
    r3 = probe_sizes([good, bad], cache_path=cache, transport=third, refresh=True)
    assert [str(rq.url) for rq in third.requests] == [bad]  # only the failed probe is retried
    assert r3[bad].size == (100, 50)
    db = connect(cache)
    assert db.execute("SELECT url, width, height, error FROM probes ORDER BY url").fetchall() == sorted(
        [(good, 640, 480, None), (bad, 100, 50, None)])
    db.close()


def test_cache_only_lookup_fetches_nothing(image_server, tmp_path):
    url = image_server.add("a.png", (64, 64))
    t = CountingTransport()
    assert probe_sizes([url], cache_path=tmp_path / "s.duckdb", fetch=False, transport=t) == {}
    assert t.requests == []


@pytest.fixture
def locked_state(tmp_path):
    """A state file held open for writing by another process (as `pixbatch run` does)."""
    path = tmp_path / "locked.duckdb"
    connect(path).close()
    proc = subprocess.Popen(
        [sys.executable, "-c", "import duckdb, sys, time; c = duckdb.connect(sys.argv[1]);"
                               " print('ready', flush=True); time.sleep(120)", str(path)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        yield path
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()


def test_locked_cache_raises_or_is_skipped(image_server, locked_state):
    url = image_server.add("a.png", (64, 48))
    with pytest.raises(StateLocked, match="in use by another pixbatch process"):
        probe_sizes([url], cache_path=locked_state)
    rep = probe_sizes_report([url], cache_path=locked_state)
    assert rep.results[url].size == (64, 48) and rep.fetched == 1
    assert rep.cache_note.startswith("probe cache not used")


def test_concurrency_is_bounded():
    import asyncio

    from starlette.applications import Starlette
    from starlette.responses import Response
    from starlette.routing import Route

    from conftest import png_bytes
    from pixbatch.serve import serve_in_thread

    state = {"now": 0, "max": 0}

    async def slow(request):
        state["now"] += 1
        state["max"] = max(state["max"], state["now"])
        await asyncio.sleep(0.05)
        state["now"] -= 1
        return Response(png_bytes((int(request.path_params["w"]), 10)), media_type="image/png")

    with serve_in_thread(Starlette(routes=[Route("/slow/{w:int}.png", slow)])) as served:
        urls = [f"{served.url}/slow/{10 + i}.png" for i in range(12)]
        got = probe_sizes(urls, concurrency=3)
    assert [got[u].size for u in urls] == [(10 + i, 10) for i in range(12)]
    assert state["max"] == 3
    with pytest.raises(ValueError):
        probe_sizes(urls, concurrency=0)


def _webp(size, **kw) -> bytes:
    buf = io.BytesIO()
    Image.frombytes("RGB", size, os.urandom(size[0] * size[1] * 3)).save(buf, "WEBP", **kw)
    return buf.getvalue()


@pytest.mark.parametrize("kw", [{}, {"lossless": True}, {"exif": b"Exif\x00\x00MM"}])
def test_webp_header_is_read_from_30_bytes(kw):
    data = _webp((1023, 17), **kw)
    assert read_header(data[:30]) == (1023, 17, "WEBP")
    assert read_header(data[:29]) is None
    assert read_header(b"RIFF\x00\x00\x00\x00WEBPJUNK" + bytes(20)) is None


def test_truncated_or_garbage_headers_need_more_data():
    buf = io.BytesIO()
    Image.new("RGB", (33, 44)).save(buf, "PNG")
    data = buf.getvalue()
    assert read_header(data) == (33, 44, "PNG")
    assert read_header(data[:12]) is None
    assert read_header(b"") is None
    assert read_header(b"hello world" * 10) is None
