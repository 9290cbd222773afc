"""The S3 client against a real S3-compatible server (SeaweedFS): conditional writes, errors worded."""

from __future__ import annotations

import hashlib
import time

import httpx
import pytest

from pixbatch.errors import StorageError
from pixbatch.storage.config import StoreOptions
from pixbatch.storage.s3 import S3, Exists


def test_conditional_put_never_overwrites_and_presigned_urls_expire(s3):
    c = S3(StoreOptions())
    etag = c.put(s3.bucket, "a/x.png", b"one", content_type="image/png", metadata={"sha256": "1"})
    with pytest.raises(Exists):
        c.put(s3.bucket, "a/x.png", b"two", content_type="image/png", metadata={})
    assert s3.client.get_object(Bucket=s3.bucket, Key="a/x.png")["Body"].read() == b"one"
    c.put(s3.bucket, "a/x.png", b"three", content_type=None, metadata={}, if_match=etag)  # over exactly that one
    url = c.presign(s3.bucket, "a/x.png", 4)  # seconds: room for a loaded machine to fetch it in time
    assert httpx.get(url).content == b"three"
    time.sleep(5.1)
    assert httpx.get(url).status_code == 403
    assert [o.key for o in c.list(s3.bucket, "a/")] == ["a/x.png"]
    assert c.head(s3.bucket, "a/nope") is None
    assert c.requests["PutObject"] == 3


def test_a_multipart_write_appears_whole_and_only_if_absent(s3):
    c = S3(StoreOptions())
    part = b"p" * (5 * 1024 * 1024)
    mp = c.multipart(s3.bucket, "big", content_type=None, metadata={})
    mp.part(part)
    assert c.head(s3.bucket, "big") is None  # nothing under the name before the complete
    mp.part(b"tail")
    mp.complete()
    assert c.head(s3.bucket, "big").size == len(part) + 4
    mp = c.multipart(s3.bucket, "big", content_type=None, metadata={})
    mp.part(b"other")
    with pytest.raises(Exists):
        mp.complete()
    got = s3.client.get_object(Bucket=s3.bucket, Key="big")["Body"].read()
    assert hashlib.sha256(got).hexdigest() == hashlib.sha256(part + b"tail").hexdigest()


def test_errors_name_the_bucket_and_what_to_do(s3, monkeypatch):
    c = S3(StoreOptions())
    with pytest.raises(StorageError, match="the bucket 'no-such-bucket' does not exist"):
        c.check_bucket("no-such-bucket")
    with pytest.raises(StorageError, match="does not exist"):
        c.put("no-such-bucket", "k", b"x", content_type=None, metadata={})
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret")
    bad = S3(StoreOptions())
    with pytest.raises(StorageError, match="refused the credentials") as info:
        bad.check_bucket(s3.bucket)
    assert "wrong-secret" not in str(info.value)
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    with pytest.raises(StorageError, match="no credentials"):
        S3(StoreOptions()).check_bucket(s3.bucket)


def test_large_files_go_up_in_parts_and_their_etag_is_known_in_advance(s3, tmp_path):
    """Above PART_SIZE: an upload is multipart; a streamed output's ETag is computed on the way
    (what a resume compares with the listing)."""
    import asyncio
    import os

    from PIL import Image

    from pixbatch.storage.config import S3Location, UploadsConfig
    from pixbatch.storage.local import inspect
    from pixbatch.storage.s3out import _Sink
    from pixbatch.storage.uploads import Uploader

    big = tmp_path / "big.png"
    Image.frombytes("RGB", (1800, 1800), os.urandom(1800 * 1800 * 3)).save(big)
    f = inspect(big)
    assert f.bytes > 8 * 1024 * 1024
    rows = []
    up = Uploader(UploadsConfig(S3Location(s3.bucket, "in/")))
    stats = asyncio.run(up.sync([f], {}, rows.append))
    assert stats.uploaded == 1 and up.s3.requests.get("UploadPart", 0) >= 2 and rows[0].how == "put"
    got = s3.client.get_object(Bucket=s3.bucket, Key=f"in/{f.sha256}.png")["Body"].read()
    assert hashlib.sha256(got).hexdigest() == f.sha256

    async def stream(data: bytes, key: str) -> tuple[str, str]:
        sink = _Sink(S3(StoreOptions()), s3.bucket, key, "application/octet-stream")
        for i in range(0, len(data), 65536):
            await sink.feed(data[i:i + 65536])
        return await sink.finish(None), sink.etag

    data = os.urandom(20 * 1024 * 1024 + 123)
    etag, predicted = asyncio.run(stream(data, "out/x.bin"))
    assert etag == predicted and etag.endswith('-3"')  # 8 + 8 + 4 MiB parts
    small, predicted = asyncio.run(stream(b"tiny", "out/y.bin"))
    assert small == predicted == '"' + hashlib.md5(b"tiny").hexdigest() + '"'
    listed = {o["Key"]: o["ETag"] for o in s3.client.list_objects_v2(Bucket=s3.bucket, Prefix="out/")["Contents"]}
    assert listed == {"out/x.bin": etag, "out/y.bin": small}  # what a resume compares with the record
    with pytest.raises(Exists):  # a streamed write is conditional too, multipart included
        asyncio.run(stream(data, "out/x.bin"))
    assert s3.client.list_multipart_uploads(Bucket=s3.bucket).get("Uploads", []) == []  # the refused one aborted
