"""Uploads of local inputs: content-addressed, once, before the items that need them are sent.

An input file's object is ``<uploads.to prefix><sha256>.<ext>``: the name says what is in
it, so identical files are one object, a re-run finds its uploads already there, and two
runs (or two machines) uploading the same file write the same object. A write is a single
``PutObject`` with ``If-None-Match: *`` (a multipart upload above ``PART_SIZE``, completed
with the same condition): the object appears whole or not at all, never over another one.

``Uploader.sync`` is the upload phase of a run: the files the run's PENDING items name
(``state.objects.files_to_send``) are looked up in the bucket (one LIST of the prefix, or a
HEAD each when there are few), the missing ones are uploaded, at most ``concurrency`` at a
time, and every object is recorded in ``uploads``. A resume of a finished run needs none
(nothing is pending): it makes no request at all.

``Uploader.url_for(sha256)`` is the URL an item is sent with (``items.resolve_urls``): the
public URL, or a presigned GET signed at send time and signed again once half its life has
passed. Presigned URLs are never stored (they carry a signature, and with temporary
credentials a session token), so a resume always sends fresh ones.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from ..errors import StorageError
from ..state.objects import UploadRow
from .config import StoreOptions, UploadsConfig
from .local import LocalFile
from .s3 import PART_SIZE, S3, Exists, ObjectInfo

HEAD_AT_MOST = 20  # fewer files than this are looked up one HEAD each; more, with a LIST of the prefix


@dataclass
class UploadStats:
    needed: int = 0  # files the pending items name
    present: int = 0  # already in the bucket (recorded, or found)
    uploaded: int = 0
    uploaded_bytes: int = 0
    seconds: float = 0.0
    requests: dict[str, int] = field(default_factory=dict)


def object_key(cfg: UploadsConfig, f: LocalFile) -> str:
    return cfg.to.key(f"{f.sha256}.{f.ext}")


class Uploader:
    def __init__(self, cfg: UploadsConfig, s3: S3 | None = None, *, emit: Callable[..., None] | None = None):
        self.cfg = cfg
        self._s3 = s3
        self.emit = emit or (lambda *a, **k: None)
        self.keys: dict[str, str] = {}  # sha256 -> object key
        self._signed: dict[str, tuple[str, float]] = {}  # sha256 -> (url, monotonic time signed)
        self.stats = UploadStats()

    @property
    def s3(self) -> S3:
        if self._s3 is None:
            self._s3 = S3(StoreOptions.of(self.cfg), max_connections=max(10, self.cfg.concurrency))
        return self._s3

    def uri(self, key: str) -> str:
        return self.cfg.to.uri_of(key)

    # -- the upload phase ------------------------------------------------------------------------

    async def sync(self, files: Iterable[LocalFile], recorded: dict[str, UploadRow],
                   record: Callable[[UploadRow], None]) -> UploadStats:
        """Make every file an object in the bucket; ``record`` each (the store's bulk queue)."""
        t0 = time.monotonic()
        todo = {f.sha256: f for f in files}
        for sha, f in todo.items():
            self.keys[sha] = object_key(self.cfg, f)
        self.stats.needed = len(todo)
        if not todo:
            return self.stats
        bucket = self.cfg.to.bucket
        await asyncio.to_thread(self.s3.check_bucket, bucket)
        there = await self._lookup(list(todo.values()))
        missing: list[tuple[LocalFile, ObjectInfo | None]] = []
        for sha, f in todo.items():
            key = self.keys[sha]
            got = there.get(key)
            if got is not None and got.size == f.bytes:
                self.stats.present += 1
                rec = recorded.get(self.uri(key))
                if rec is None or rec.etag != got.etag:
                    record(UploadRow(self.uri(key), sha, f.bytes, f.media_type, got.etag, "found"))
            else:
                missing.append((f, got))  # absent, or a different object under the name: replaced
        if missing:
            total = sum(f.bytes for f, _ in missing)
            self.emit("run", None, message=f"uploading {len(missing):,} local file(s), {total:,} bytes, "
                      f"to {self.cfg.to.uri}")
            sem = asyncio.Semaphore(max(1, self.cfg.concurrency))

            async def one(f: LocalFile, old: ObjectInfo | None) -> None:
                async with sem:
                    row = await asyncio.to_thread(self._upload, f, old)
                record(row)
                if row.how == "put":
                    self.stats.uploaded += 1
                    self.stats.uploaded_bytes += f.bytes
                else:
                    self.stats.present += 1
                self.emit("upload", None, object=row.object, bytes=row.bytes, how=row.how)

            await asyncio.gather(*(one(f, old) for f, old in missing))
        self.stats.seconds = round(time.monotonic() - t0, 3)
        self.stats.requests = dict(self.s3.requests)
        return self.stats

    async def _lookup(self, files: list[LocalFile]) -> dict[str, ObjectInfo]:
        """key -> the object under it, for the objects of ``files`` that exist."""
        bucket = self.cfg.to.bucket
        if len(files) < HEAD_AT_MOST:
            sem = asyncio.Semaphore(max(1, self.cfg.concurrency))

            async def head(f: LocalFile) -> ObjectInfo | None:
                async with sem:
                    return await asyncio.to_thread(self.s3.head, bucket, self.keys[f.sha256])

            found = await asyncio.gather(*(head(f) for f in files))
            return {o.key: o for o in found if o is not None}
        wanted = {self.keys[f.sha256] for f in files}

        def listing() -> dict[str, ObjectInfo]:
            return {o.key: o for o in self.s3.list(bucket, self.cfg.to.prefix) if o.key in wanted}

        return await asyncio.to_thread(listing)

    def _upload(self, f: LocalFile, old: ObjectInfo | None) -> UploadRow:
        """One file to its object (in a worker thread): a conditional put, multipart when large."""
        bucket, key = self.cfg.to.bucket, self.keys[f.sha256]
        meta = {"sha256": f.sha256}
        if_match = old.etag if old is not None else None  # replace only the damaged object we saw
        try:
            with open(f.path, "rb") as fh:
                if f.bytes <= PART_SIZE:
                    data = fh.read()
                    if len(data) != f.bytes:
                        raise StorageError(f"{f.path} changed while pixbatch read it; run again")
                    etag = self.s3.put(bucket, key, data, content_type=f.media_type, metadata=meta, if_match=if_match)
                else:
                    mp = self.s3.multipart(bucket, key, content_type=f.media_type, metadata=meta)
                    try:
                        while chunk := fh.read(PART_SIZE):
                            mp.part(chunk)
                    except BaseException:
                        mp.abort()
                        raise
                    etag = mp.complete(if_match=if_match)
        except Exists:
            # written meanwhile (another run, another machine): the name says it holds these bytes
            got = self.s3.head(bucket, key)
            if got is None or got.size != f.bytes:
                raise StorageError(f"s3://{bucket}/{key} changed while pixbatch uploaded {f.path}; run again") from None
            return UploadRow(self.uri(key), f.sha256, f.bytes, f.media_type, got.etag, "found")
        except OSError as exc:
            raise StorageError(f"cannot read {f.path}: {exc.strerror or exc}") from None
        return UploadRow(self.uri(key), f.sha256, f.bytes, f.media_type, etag, "put")

    # -- URLs at send time ----------------------------------------------------------------------

    def url_for(self, sha256: str) -> str:
        """The URL the gateway reads the file from (signed now when presigned and not fresh)."""
        key = self.keys.get(sha256)
        if key is None:
            raise StorageError(f"no upload for pixbatch://file/{sha256}: the file changed or left the manifest "
                               "since the items were made; run again")
        bucket = self.cfg.to.bucket
        if self.cfg.url == "public":
            return self.s3.public_url(bucket, key, self.cfg.public_base_url)
        now = time.monotonic()
        hit = self._signed.get(sha256)
        if hit is not None and now - hit[1] < self.cfg.expires / 2:
            return hit[0]
        url = self.s3.presign(bucket, key, self.cfg.expires)
        self._signed[sha256] = (url, now)
        return url

    def counts(self) -> dict[str, Any]:
        s = self.stats
        return {"needed": s.needed, "present": s.present, "uploaded": s.uploaded, "bytes": s.uploaded_bytes,
                "seconds": s.seconds, "requests": dict(self._s3.requests) if self._s3 else {}}
