"""Image dimensions from the first bytes of a URL, cached in the state file.

Some prices depend on an input's size (factor-mode upscale, directly or downstream of a
``match_input_image`` edit). A probe learns the size without downloading the image:

1. ``GET`` with ``Range: bytes=0-4095``. A ``206`` answer carries just that prefix; it is
   handed to Pillow's lazy ``Image.open``, which reads only the header (no pixels are
   decoded or allocated). WebP is the exception: Pillow's plugin needs the whole file, so
   its 30-byte header is read here (``_webp_header``). If the header is longer than the prefix (a JPEG with a large
   EXIF block), the next range is requested, doubling in size, up to ``max_bytes``.
2. A server that ignores ``Range`` answers ``200`` with the whole body: the body is
   streamed and the connection dropped as soon as Pillow can read the header.
3. Anything else is a per-URL error, never an exception: HTTP 4xx/5xx, a timeout, a
   connection failure, or bytes that are not an image. ``ProbeResult.error`` says which.

Probes run concurrently (``concurrency`` workers sharing one ``httpx.AsyncClient``); each
URL has ``timeout`` seconds in all. ``probe_sizes_async`` is the network core;
``probe_sizes`` wraps it with the DuckDB cache (table ``probes``, migration m001): cached
URLs are not fetched again, failed probes are cached with their error and retried only
with ``refresh=True``. The cache file is opened only to read before probing and to write
after, so a long probe never holds the state file's lock. If the file is locked by a
running ``pixbatch run``, ``probe_sizes`` raises ``StateLocked`` before fetching anything
and the caller may retry with ``cache_path=None``.
"""

from __future__ import annotations

import asyncio
import io
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from PIL import Image, UnidentifiedImageError

from .aio import run_sync
from .errors import StateLocked
from .state.connection import connect, reading
from .sizes import Size

FIRST_RANGE = 4096  # PNG, WebP, GIF headers fit in 32 bytes; most JPEG SOF markers in 4 KiB
MAX_HEADER_BYTES = 1 << 20  # give up looking for an image header after 1 MiB
DEFAULT_CONCURRENCY = 16
DEFAULT_TIMEOUT = 10.0
_CACHE_CHUNK = 50_000  # URLs per DuckDB query


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """What a probe learned about one URL: its size, or why it could not tell."""

    url: str
    width: int | None = None
    height: int | None = None
    format: str | None = None  # Pillow's format name: PNG, JPEG, WEBP, ...
    bytes_read: int = 0  # body bytes received from the server
    error: str | None = None  # set when the size is unknown
    cached: bool = False  # came from the probe cache, not the network

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def size(self) -> Size | None:
        if self.width is None or self.height is None:
            return None
        return self.width, self.height


class _NeedMore(Exception):
    pass


def read_header(data: bytes) -> tuple[int, int, str] | None:
    """(width, height, format) if ``data`` starts with a complete image header, else None.

    ``Image.open`` is lazy: it parses the header and stops, so this allocates no pixels.
    """
    if not data:
        return None
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return _webp_header(data)
    with warnings.catch_warnings():
        # a huge image is still a size we can report; only its pixels would be a bomb
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(data)) as im:
                w, h = im.size
                fmt = im.format or "unknown"
        except Image.DecompressionBombError:
            raise
        except (UnidentifiedImageError, OSError, EOFError, SyntaxError, ValueError, IndexError, TypeError):
            return None
    if w <= 0 or h <= 0:
        return None
    return w, h, fmt


def _webp_header(data: bytes) -> tuple[int, int, str] | None:
    """WebP's size from its first chunk header (RIFF container, then VP8X, VP8L or VP8).

    Pillow's WebP plugin hands the whole file to libwebp, so it cannot size a prefix;
    these 30 bytes are enough (layout: the WebP container specification).
    """
    if len(data) < 30:
        return None
    kind = data[12:16]
    if kind == b"VP8X":  # extended: 24-bit canvas width-1 and height-1 at 24 and 27
        w = 1 + int.from_bytes(data[24:27], "little")
        h = 1 + int.from_bytes(data[27:30], "little")
    elif kind == b"VP8L":  # lossless: signature 0x2f, then 14-bit width-1, 14-bit height-1
        if data[20] != 0x2F:
            return None
        bits = int.from_bytes(data[21:25], "little")
        w, h = 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF)
    elif kind == b"VP8 ":  # lossy: 3-byte frame tag, start code 9d 01 2a, 14-bit sizes
        if data[23:26] != b"\x9d\x01\x2a":
            return None
        w = int.from_bytes(data[26:28], "little") & 0x3FFF
        h = int.from_bytes(data[28:30], "little") & 0x3FFF
    else:
        return None
    return (w, h, "WEBP") if w > 0 and h > 0 else None


def _not_an_image(n: int, content_type: str | None, complete: bool) -> str:
    where = f"the whole body ({n} bytes)" if complete else f"the first {n} bytes"
    ct = f"content-type {content_type}" if content_type else "no content-type"
    return f"not an image: no image header in {where} ({ct})"


async def _probe_one(client: httpx.AsyncClient, url: str, *, max_bytes: int) -> ProbeResult:
    """Network part of one probe; HTTP/transport errors propagate to ``_probe_guarded``."""
    buf = bytearray()
    want = FIRST_RANGE
    content_type: str | None = None
    while True:
        start = len(buf)
        headers = {"Range": f"bytes={start}-{start + want - 1}", "Accept-Encoding": "identity"}
        async with client.stream("GET", url, headers=headers) as resp:
            if resp.status_code == 416 and start > 0:
                break  # asked past the end: buf is the whole file
            if resp.status_code >= 400:
                return ProbeResult(url, bytes_read=len(buf), error=f"HTTP {resp.status_code} {resp.reason_phrase}".strip())
            if resp.status_code not in (200, 206):
                return ProbeResult(url, bytes_read=len(buf), error=f"unexpected HTTP {resp.status_code} {resp.reason_phrase}".strip())
            content_type = resp.headers.get("content-type", content_type)
            if resp.status_code == 200 and start > 0:
                buf.clear()  # the server ignored Range this time: the body starts at 0
            ranged = resp.status_code == 206
            total = _total_length(resp) if ranged else None
            async for chunk in resp.aiter_bytes():
                buf += chunk
                found = read_header(bytes(buf))
                if found:
                    w, h, fmt = found
                    return ProbeResult(url, w, h, fmt, bytes_read=len(buf))
                if len(buf) >= max_bytes:
                    return ProbeResult(url, bytes_read=len(buf),
                                       error=_not_an_image(len(buf), content_type, complete=False))
            if not ranged:
                break  # streamed the whole body
            if total is not None and len(buf) >= total:
                break
            if len(buf) == start:
                break  # an empty 206: nothing more to read
        want = min(want * 2, max_bytes - len(buf))
        if want <= 0:
            break
    return ProbeResult(url, bytes_read=len(buf), error=_not_an_image(len(buf), content_type, complete=True))


def _total_length(resp: httpx.Response) -> int | None:
    cr = resp.headers.get("content-range", "")  # "bytes 0-4095/123456"
    _, _, total = cr.rpartition("/")
    return int(total) if total.isdigit() else None


async def _probe_guarded(client: httpx.AsyncClient, url: str, *, timeout: float, max_bytes: int) -> ProbeResult:
    """One probe as a result: every expected failure becomes ``ProbeResult.error``."""
    try:
        async with asyncio.timeout(timeout):
            return await _probe_one(client, url, max_bytes=max_bytes)
    except (TimeoutError, httpx.TimeoutException):
        return ProbeResult(url, error=f"timed out after {timeout:g}s")
    except httpx.UnsupportedProtocol:
        return ProbeResult(url, error="not an http(s) URL")
    except httpx.ConnectError as exc:
        return ProbeResult(url, error=f"cannot connect: {_short(exc)}")
    except httpx.TooManyRedirects:
        return ProbeResult(url, error="too many redirects")
    except httpx.HTTPError as exc:  # the rest of httpx's transport/protocol errors
        return ProbeResult(url, error=f"{type(exc).__name__}: {_short(exc)}")
    except Image.DecompressionBombError:
        return ProbeResult(url, error="image is too large for Pillow to open (decompression bomb guard)")


def _short(exc: Exception) -> str:
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0][:200]


async def probe_sizes_async(urls: Iterable[str], *, concurrency: int = DEFAULT_CONCURRENCY,
                            timeout: float = DEFAULT_TIMEOUT, max_bytes: int = MAX_HEADER_BYTES,
                            transport: httpx.AsyncBaseTransport | None = None) -> dict[str, ProbeResult]:
    """Probe every distinct URL over the network (no cache), at most ``concurrency`` at once."""
    if concurrency < 1:
        raise ValueError("concurrency must be at least 1")
    queue: asyncio.Queue[str] = asyncio.Queue()
    for u in dict.fromkeys(urls):
        queue.put_nowait(u)
    results: dict[str, ProbeResult] = {}
    if queue.empty():
        return results
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=httpx.Timeout(timeout), limits=limits, follow_redirects=True,
                                 transport=transport, headers={"User-Agent": "pixbatch-probe"}) as client:

        async def worker() -> None:
            while True:
                try:
                    url = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                results[url] = await _probe_guarded(client, url, timeout=timeout, max_bytes=max_bytes)

        await asyncio.gather(*(worker() for _ in range(min(concurrency, queue.qsize()))))
    return results


# -- the cache ------------------------------------------------------------------------


def read_cache_db(db: Any, urls: Iterable[str]) -> dict[str, ProbeResult]:
    """Cached probes for ``urls`` (successful and failed) from an open state file connection."""
    wanted = list(dict.fromkeys(urls))
    out: dict[str, ProbeResult] = {}
    for i in range(0, len(wanted), _CACHE_CHUNK):
        rows = db.execute(
            "SELECT url, width, height, format, bytes_read, error FROM probes"
            " WHERE url IN (SELECT unnest(?::VARCHAR[]))",
            [wanted[i:i + _CACHE_CHUNK]],
        ).fetchall()
        for url, w, h, fmt, n, err in rows:
            out[url] = ProbeResult(url, w, h, fmt, n or 0, err, cached=True)
    return out


def write_cache_db(db: Any, results: Iterable[ProbeResult]) -> int:
    """Store (or replace) probe results in an open state file connection, in one transaction."""
    rows = [r for r in results if not r.cached]
    if not rows:
        return 0
    db.execute("BEGIN TRANSACTION")
    try:
        for i in range(0, len(rows), _CACHE_CHUNK):
            part = rows[i:i + _CACHE_CHUNK]
            db.execute(
                "INSERT OR REPLACE INTO probes (url, width, height, format, bytes_read, error, probed_at)"
                " SELECT unnest(?::VARCHAR[]), unnest(?::INTEGER[]), unnest(?::INTEGER[]),"
                " unnest(?::VARCHAR[]), unnest(?::INTEGER[]), unnest(?::VARCHAR[]), current_timestamp",
                [[r.url for r in part], [r.width for r in part], [r.height for r in part],
                 [r.format for r in part], [r.bytes_read for r in part], [r.error for r in part]],
            )
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    return len(rows)


def read_cache(cache_path: str | Path, urls: Iterable[str]) -> dict[str, ProbeResult]:
    """Cached probes for ``urls`` (successful and failed). Raises StateLocked/StateError."""
    wanted = list(dict.fromkeys(urls))
    if not wanted:
        return {}
    db = connect(cache_path)
    try:
        with reading(cache_path):
            return read_cache_db(db, wanted)
    finally:
        db.close()


def write_cache(cache_path: str | Path, results: Iterable[ProbeResult]) -> int:
    """Store (or replace) probe results; returns how many. Raises StateLocked/StateError."""
    rows = [r for r in results if not r.cached]
    if not rows:
        return 0
    db = connect(cache_path)
    try:
        with reading(cache_path):
            return write_cache_db(db, rows)
    finally:
        db.close()


@dataclass(frozen=True, slots=True)
class ProbeReport:
    """``probe_sizes_report``'s answer: the results plus how the cache was used."""

    results: dict[str, ProbeResult]
    fetched: int  # URLs fetched over the network this time
    from_cache: int  # URLs answered by the cache
    cache_note: str | None = None  # set when the cache could not be used (and why)


def probe_sizes(urls: Iterable[str], *, cache_path: str | Path | None = None,
                concurrency: int = DEFAULT_CONCURRENCY, timeout: float = DEFAULT_TIMEOUT,
                refresh: bool = False, fetch: bool = True, max_bytes: int = MAX_HEADER_BYTES,
                transport: httpx.AsyncBaseTransport | None = None) -> dict[str, ProbeResult]:
    """Sizes for ``urls``: from the cache at ``cache_path`` when there, else probed and cached.

    ``refresh`` re-probes URLs whose cached probe failed. ``fetch=False`` answers from the
    cache only (URLs not cached are absent from the result). Raises ``StateLocked`` (before
    any fetch) when another process holds the cache file.
    """
    return probe_sizes_report(urls, cache_path=cache_path, concurrency=concurrency, timeout=timeout,
                              refresh=refresh, fetch=fetch, max_bytes=max_bytes, transport=transport,
                              locked_ok=False).results


def probe_sizes_report(urls: Iterable[str], *, cache_path: str | Path | None = None,
                       concurrency: int = DEFAULT_CONCURRENCY, timeout: float = DEFAULT_TIMEOUT,
                       refresh: bool = False, fetch: bool = True, max_bytes: int = MAX_HEADER_BYTES,
                       transport: httpx.AsyncBaseTransport | None = None,
                       locked_ok: bool = True) -> ProbeReport:
    """``probe_sizes`` with an account of the cache; with ``locked_ok`` a locked cache file
    is skipped (noted in ``cache_note``) instead of raising ``StateLocked``. Inside a running
    event loop (Jupyter) the probes run on a thread of their own."""
    return run_sync(lambda: probe_sizes_report_async(
        urls, cache_path=cache_path, concurrency=concurrency, timeout=timeout, refresh=refresh, fetch=fetch,
        max_bytes=max_bytes, transport=transport, locked_ok=locked_ok), name="probe_sizes", in_thread=True)


async def probe_sizes_report_async(urls: Iterable[str], *, cache_path: str | Path | None = None,
                                   concurrency: int = DEFAULT_CONCURRENCY, timeout: float = DEFAULT_TIMEOUT,
                                   refresh: bool = False, fetch: bool = True, max_bytes: int = MAX_HEADER_BYTES,
                                   transport: httpx.AsyncBaseTransport | None = None,
                                   locked_ok: bool = True) -> ProbeReport:
    """The coroutine form of ``probe_sizes_report`` (the cache is read before and written after the fetches)."""
    wanted = list(dict.fromkeys(urls))
    cached: dict[str, ProbeResult] = {}
    note: str | None = None
    if cache_path is not None:
        try:
            cached = read_cache(cache_path, wanted)
        except StateLocked as exc:
            if not locked_ok:
                raise
            cache_path, note = None, f"probe cache not used: {exc}"
    if refresh:
        cached = {u: r for u, r in cached.items() if r.ok}
    # a run's preflight caches that a URL answers with an image, not its size: probe those for the size
    cached = {u: r for u, r in cached.items() if not (r.ok and r.size is None)}
    missing = [u for u in wanted if u not in cached]
    fresh: dict[str, ProbeResult] = {}
    if fetch and missing:
        fresh = await probe_sizes_async(missing, concurrency=concurrency, timeout=timeout, max_bytes=max_bytes,
                                        transport=transport)
        if cache_path is not None:
            try:
                write_cache(cache_path, fresh.values())
            except StateLocked as exc:
                if not locked_ok:
                    raise
                note = f"probe results not saved: {exc}"
    results = {**cached, **fresh}
    return ProbeReport(results=results, fetched=len(fresh), from_cache=len(cached), cache_note=note)
