"""Outputs to a bucket (``output_dir: s3://bucket/prefix/``): streamed from the media URL, written once.

``S3Outputs.copy`` streams a completed item's media from the gateway's CDN into the
bucket: chunks go up as they arrive (one ``PutObject`` for an output up to ``PART_SIZE``,
a multipart upload above it: never the whole output in memory), the sha256 and the MD5s
that make the ETag are computed on the way, and the write is conditional (``If-None-Match:
*``): an object already under the name is left alone. When it is the same output (its
``sha256`` metadata or its ETag match) it is recorded as written; when it is another
object, the item's output fails with a message and nothing is overwritten. The image is
checked from its first bytes (format, size: ``runner.outputs.check_image``).

Each output is recorded in ``outputs`` with ``path`` its ``s3://`` URI and its ETag
(``outputs.etag``). ``S3Outputs.verify`` is the re-run's check: one LIST of the prefix
(1,000 objects a request), and only the outputs that are missing, or whose size or ETag
differs from the record, are copied again (never resubmitted). A damaged object is
replaced only with ``If-Match`` on the ETag just listed, so nothing written meanwhile is
lost.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from typing import Any
from urllib.parse import urljoin, urlsplit

from ..errors import GatewayError, PixbatchError, StorageError
from ..state.objects import ObjectOutput, record_object_output_sql, recorded_object_outputs
from .config import S3Location, StoreOptions, parse_s3
from .s3 import PART_SIZE, S3, Exists, ObjectInfo

HEAD_BYTES = 256 * 1024  # what the image check reads
MAX_OUTPUT_BYTES = 200 * 1024 * 1024  # as gateway.MAX_MEDIA_BYTES: more is not an image the gateway made
DEADLINE = 300.0  # seconds for one output's copy (as gateway.DOWNLOAD_DEADLINE)
TRIES = 3


class _Sink:
    """One object being written from a stream: buffered to ``PART_SIZE``, then multipart."""

    def __init__(self, s3: S3, bucket: str, key: str, content_type: str | None):
        self.s3, self.bucket, self.key, self.content_type = s3, bucket, key, content_type
        self.buf = bytearray()
        self.mp: Any = None
        self.part_md5s: list[bytes] = []
        self.md5 = hashlib.md5()
        self.sha = hashlib.sha256()
        self.size = 0

    async def feed(self, chunk: bytes) -> None:
        self.sha.update(chunk)
        self.md5.update(chunk)
        self.size += len(chunk)
        self.buf += chunk
        if len(self.buf) >= PART_SIZE + PART_SIZE // 2:  # keep a last part of at least half a part
            data = bytes(self.buf[:PART_SIZE])
            del self.buf[:PART_SIZE]
            await asyncio.to_thread(self._part, data)

    def _part(self, data: bytes) -> None:
        if self.mp is None:
            self.mp = self.s3.multipart(self.bucket, self.key, content_type=self.content_type, metadata={})
        self.mp.part(data)
        self.part_md5s.append(hashlib.md5(data).digest())

    @property
    def etag(self) -> str:
        """The ETag S3 gives these bytes (an MD5, or the MD5 of the parts' MD5s and their count)."""
        if self.mp is None:
            return f'"{self.md5.hexdigest()}"'
        return f'"{hashlib.md5(b"".join(self.part_md5s)).hexdigest()}-{len(self.part_md5s)}"'

    async def finish(self, if_match: str | None) -> str:
        """Write what is left and make the object appear (raises Exists when one is there)."""
        if self.mp is None:
            data = bytes(self.buf)
            return await asyncio.to_thread(self.s3.put, self.bucket, self.key, data, content_type=self.content_type,
                                           metadata={"sha256": self.sha.hexdigest()}, if_match=if_match)
        if self.buf:
            await asyncio.to_thread(self._part, bytes(self.buf))
            self.buf.clear()
        return await asyncio.to_thread(self.mp.complete, if_match)

    async def abort(self) -> None:
        if self.mp is not None:
            await asyncio.to_thread(self.mp.abort)


class S3Outputs:
    """The output directory when it is a bucket: what ``runner.download.Downloader`` writes through."""

    copies = True

    def __init__(self, uri: str, opts: StoreOptions, s3: S3 | None = None):
        loc, why = parse_s3(uri)
        if loc is None:
            raise StorageError(f"output_dir: {why}")
        self.loc: S3Location = loc
        self.root = loc.uri
        self.opts = opts
        self._s3 = s3
        self._listing: dict[str, ObjectInfo] | None = None
        self._replace: dict[str, dict[str, str]] = {}  # item key -> name -> ETag of a damaged object to replace

    @property
    def s3(self) -> S3:
        if self._s3 is None:
            self._s3 = S3(self.opts)
        return self._s3

    async def check(self) -> None:
        """The bucket exists and takes these credentials (before anything is paid for)."""
        await asyncio.to_thread(self.s3.check_bucket, self.loc.bucket)

    def uri(self, name: str) -> str:
        return self.loc.uri_of(self.loc.key(name))

    # -- one item --------------------------------------------------------------------------------

    async def copy(self, row: Any, names: list[str], dl: Any, *, replace: dict[str, str] | None = None) -> None:
        """Stream ``row``'s media into the bucket under every name; record the outputs.

        ``replace``: name -> the ETag of a damaged object that may be replaced (verify's re-copy).
        """
        from ..runner.outputs import check_image

        replace = replace or self._replace.pop(row.key, {})
        url = dl.gw.media_url(row.media_url) if hasattr(dl.gw, "media_url") else row.media_url
        if url.startswith("/"):
            url = urljoin(dl.gw.base_url + "/", url)
        if not url.startswith(("http://", "https://")):
            raise GatewayError(f"media_url {url[:200]!r} is not an http(s) URL")
        media_type = row.media_type
        key0 = self.loc.key(names[0])
        sink = head = None
        for attempt in range(1, TRIES + 1):
            try:
                sink, head, ctype = await asyncio.wait_for(self._stream(url, key0, media_type, dl.timeout), DEADLINE)
                break
            except (_Retry, asyncio.TimeoutError) as exc:
                if attempt == TRIES or isinstance(exc, asyncio.TimeoutError):
                    why = f"no whole output within {DEADLINE:.0f} s" if isinstance(exc, asyncio.TimeoutError) else exc
                    dl.emit("download", row.key, ok=False, error=str(why))
                    raise GatewayError(f"download {urlsplit(url).path}: {why} after {attempt} tries") from None
                await asyncio.sleep(0.2 * attempt)
        assert sink is not None and head is not None
        media_type = media_type or (ctype or "").split(";")[0] or None
        sha = sink.sha.hexdigest()
        # checked before the object appears (a multipart upload is not completed yet): a body that
        # is not an image (an HTML page, ...) is never placed in the bucket
        check = await asyncio.to_thread(check_image, head, row.op, row.body_dict, media_type, row.input_size)
        if check.format is None:
            await sink.abort()
            error = f"the media URL did not give an image ({media_type or 'no content type'}, {sink.size:,} bytes)"
            dl.emit("download", row.key, ok=False, error=error)
            raise GatewayError(f"download: {error}")
        try:
            etag = await sink.finish(replace.get(names[0]))
        except Exists:
            etag = await self._same_or_refuse(key0, sha, sink.etag)
        except BaseException:
            await sink.abort()
            raise
        dl.downloads += 1
        row.output_width, row.output_height = check.width, check.height
        problems = list(check.problems)
        if problems:
            dl.problems += 1
            row.error = "output check: " + "; ".join(problems)
        etags = {names[0]: etag}
        for name in names[1:]:  # the same request under another name (an identical item elsewhere)
            etags[name] = await self._alias(self.loc.key(name), key0, sha, sink.etag, replace.get(name))
        for name in names:
            o = ObjectOutput(row.key, self.uri(name), sha, sink.size, check.width, check.height, media_type, etags[name])
            dl.store.put_sql(*record_object_output_sql(o))
        dl.done.add(row.key)
        dl.emit("download", row.key, ok=not problems, bytes=sink.size, width=check.width, height=check.height,
                problems=problems, object=self.uri(names[0]))

    async def _stream(self, url: str, key: str, media_type: str | None, timeout: float) -> tuple[_Sink, bytes, str | None]:
        import httpx

        sink: _Sink | None = None
        try:
            async with httpx.AsyncClient(timeout=timeout, follow_redirects=True) as client:
                async with client.stream("GET", url) as r:
                    if r.status_code >= 500 or r.status_code == 429:
                        raise _Retry(f"HTTP {r.status_code}")
                    if r.status_code != 200:
                        raise GatewayError(f"download {urlsplit(url).path}: HTTP {r.status_code}",
                                           status_code=r.status_code)
                    ctype = r.headers.get("content-type")
                    sink = _Sink(self.s3, self.loc.bucket, key, media_type or (ctype or "").split(";")[0] or None)
                    head = bytearray()
                    async for chunk in r.aiter_raw(1 << 16):
                        if len(head) < HEAD_BYTES:
                            head += chunk[:HEAD_BYTES - len(head)]
                        await sink.feed(chunk)
                        if sink.size > MAX_OUTPUT_BYTES:
                            raise GatewayError(f"download {urlsplit(url).path}: more than {MAX_OUTPUT_BYTES:,} bytes; "
                                               "not an image the gateway made")
            return sink, bytes(head), ctype
        except httpx.TransportError as exc:
            if sink is not None:
                await sink.abort()
            raise _Retry(f"network error ({type(exc).__name__})") from None
        except BaseException:
            if sink is not None:
                await sink.abort()
            raise

    async def _same_or_refuse(self, key: str, sha: str, etag: str) -> str:
        """An object was already under the name: the same output (recorded as written) or another (refused)."""
        got = await asyncio.to_thread(self.s3.head, self.loc.bucket, key)
        if got is not None and ((got.metadata or {}).get("sha256") == sha or got.etag == etag):
            return str(got.etag)
        raise StorageError(f"{self.loc.uri_of(key)} already holds a different object, and pixbatch never "
                           "overwrites one: delete it, or change output_dir or the naming template")

    async def _alias(self, key: str, source: str, sha: str, etag: str, replace: str | None) -> str:
        got = await asyncio.to_thread(self.s3.head, self.loc.bucket, key)
        if got is not None and replace is None:
            if (got.metadata or {}).get("sha256") == sha or got.etag == etag:
                return str(got.etag)
            raise StorageError(f"{self.loc.uri_of(key)} already holds a different object, and pixbatch never "
                               "overwrites one: delete it, or change output_dir or the naming template")
        return await asyncio.to_thread(self.s3.copy, self.loc.bucket, key, source)

    # -- a re-run's check ------------------------------------------------------------------------

    async def verify(self, dl: Any, scope: str, steps: list[str], stopped: Callable[[], bool]) -> None:
        """Completed items whose objects are missing or differ from the record are copied again."""
        store = dl.store
        async for todo in dl.completed_pages(scope, steps, stopped):
            keys = [r.key for r in todo]
            recorded = await store.call(lambda db: recorded_object_outputs(db, keys))
            listing = await self._list()
            work: list[tuple[Any, dict[str, str]]] = []
            for r in todo:
                replace: dict[str, str] = {}
                stale = False
                for name in dl.names(r):
                    rec = recorded.get((r.key, self.uri(name)))
                    got = listing.get(self.loc.key(name))
                    if rec is not None and got is not None and got.size == rec.bytes and (
                            rec.etag is None or got.etag == rec.etag):
                        continue
                    stale = True
                    if got is not None and rec is not None:
                        replace[name] = str(got.etag)  # ours, and damaged: replace exactly what was listed
                if stale:
                    work.append((r, replace))
            sem = asyncio.Semaphore(dl.concurrency)

            async def recopy(r: Any, replace: dict[str, str]) -> None:
                async with sem:
                    self._replace[r.key] = replace
                    try:
                        await dl.download(r)  # the downloader's bookkeeping (missing outputs), then copy()
                    except (PixbatchError, OSError) as exc:
                        dl.emit("download", r.key, ok=False, error=str(exc))
                    else:
                        store.put_item(r)

            await asyncio.gather(*(recopy(r, rep) for r, rep in work))

    async def _list(self) -> dict[str, ObjectInfo]:
        if self._listing is None:
            self._listing = await asyncio.to_thread(
                lambda: {o.key: o for o in self.s3.list(self.loc.bucket, self.loc.prefix)})
        return self._listing

    def requests(self) -> dict[str, int]:
        return dict(self._s3.requests) if self._s3 else {}


class _Retry(Exception):
    """A failure worth another try (network error, 429, 5xx): the whole copy starts again."""
