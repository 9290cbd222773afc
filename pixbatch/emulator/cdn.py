"""The CDN: ``GET /media/{request_id}/output.{ext}``, no key, like the gateway's R2 bucket.

A COMPLETED job's output file is served as is (lazy mode draws it on the first GET).
A job carrying a ``media_*`` fault (``faults.py``) is served the broken way instead:

- ``media_slow``: the real bytes, ``media_drip_rate`` bytes per second (a read timeout
  never fires: every read gets a byte in time);
- ``media_redirect_loop``: 302 to ``?loop=1``, which redirects back, forever;
- ``media_gzip_bomb``: ``Content-Encoding: gzip`` over ``gzip_bomb_bytes`` of zeros, about
  1/1000 of that on the wire, a valid gzip stream (CRC and length included);
- ``media_404``: 404 although the status said COMPLETED;
- ``media_html``: 200, ``Content-Type: image/jpeg``, an HTML page as the body.
"""

from __future__ import annotations

import asyncio
import functools
import struct
import zlib
from typing import TYPE_CHECKING, AsyncIterator

import anyio.to_thread
from starlette.requests import Request
from starlette.responses import FileResponse, RedirectResponse, Response, StreamingResponse

from ..contract import COMPLETED, MEDIA_TYPES
from .answers import HTML_PAGE, Answers

if TYPE_CHECKING:
    from .jobs import Engine, Job

MEDIA_FAULTS = ("media_404", "media_html", "media_redirect_loop", "media_gzip_bomb", "media_slow")
_MIB = 1 << 20


class Cdn:
    def __init__(self, engine: Engine, answers: Answers):
        self.e = engine
        self.a = answers

    async def serve(self, request: Request) -> Response:
        e = self.e
        e.stats["media_gets"] += 1
        rid, name = request.path_params["request_id"], request.path_params["name"]
        e.settle_due()
        job: Job | None = e.jobs.get(rid)
        if job is None or job.final != COMPLETED or name != f"output.{job.ext}":
            return self.a.error(404, "Not Found", f"No media at /media/{rid}/{name}")
        fault = next((f for f in MEDIA_FAULTS if f in job.faults), None)
        if fault is not None:
            e.stats["media_faults"] += 1
            return await self._broken(fault, request, job)
        await self._ensure_file(job)
        self.a.count(200)
        return FileResponse(job.media_path, media_type=MEDIA_TYPES[job.ext])  # type: ignore[arg-type]

    async def _ensure_file(self, job: Job) -> None:
        if job.media_path is None:  # lazy mode: draw it now (in a worker thread, file included)
            studio = self.e.studio
            job.media_path = await anyio.to_thread.run_sync(studio.lazy_media, job, limiter=studio.limiter)

    async def _broken(self, fault: str, request: Request, job: Job) -> Response:
        cfg = self.e.config
        if fault == "media_404":
            self.a.count(404)
            return Response(b"Object Not Found", status_code=404, media_type="text/plain")
        if fault == "media_html":
            self.a.count(200)
            return Response(HTML_PAGE.format(code=200, reason="OK").encode(), media_type="image/jpeg")
        if fault == "media_redirect_loop":
            self.a.count(302)
            there = request.url.remove_query_params("loop") if request.query_params.get("loop") \
                else request.url.include_query_params(loop="1")
            return RedirectResponse(str(there), status_code=302)
        if fault == "media_gzip_bomb":
            head, mid, count, tail = await anyio.to_thread.run_sync(gzip_bomb, cfg.gzip_bomb_bytes)
            self.a.count(200)
            length = len(head) + len(mid) * count + len(tail)
            return StreamingResponse(_bomb_chunks(head, mid, count, tail), media_type=MEDIA_TYPES[job.ext],
                                     headers={"Content-Encoding": "gzip", "Content-Length": str(length)})
        await self._ensure_file(job)  # media_slow
        assert job.media_path is not None
        data = job.media_path.read_bytes()
        self.a.count(200)
        return StreamingResponse(_drip(data, cfg.media_drip_rate), media_type=MEDIA_TYPES[job.ext],
                                 headers={"Content-Length": str(len(data))})


async def _drip(data: bytes, per_second: float) -> AsyncIterator[bytes]:
    step = max(1, int(per_second)) if per_second >= 1 else 1
    delay = step / per_second
    for i in range(0, len(data), step):
        yield data[i:i + step]
        await asyncio.sleep(delay)


async def _bomb_chunks(head: bytes, mid: bytes, count: int, tail: bytes) -> AsyncIterator[bytes]:
    yield head
    batch = mid * 64
    for _ in range(count // 64):
        yield batch
    yield mid * (count % 64) + tail


@functools.lru_cache(maxsize=4)
def gzip_bomb(total: int) -> tuple[bytes, bytes, int, bytes]:
    """A gzip stream of ``total`` zero bytes (rounded up to whole MiB) as head + mid x count + tail.

    After a full flush deflate forgets its history, so every further MiB of zeros
    compresses to the same bytes; the trailer's CRC-32 and length are those of the whole.
    """
    mib = max(2, -(-total // _MIB))
    zeros = bytes(_MIB)
    c = zlib.compressobj(9, zlib.DEFLATED, 31)
    head = c.compress(zeros) + c.flush(zlib.Z_FULL_FLUSH)
    mid = c.compress(zeros) + c.flush(zlib.Z_FULL_FLUSH)
    final_block = c.flush(zlib.Z_FINISH)[:-8]
    crc = 0
    for _ in range(mib):
        crc = zlib.crc32(zeros, crc)
    return head, mid, mib - 1, final_block + struct.pack("<II", crc, (mib * _MIB) & 0xFFFFFFFF)
