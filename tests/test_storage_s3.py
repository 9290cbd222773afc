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
    url = c.presign(s3.bucket, "a/x.png", 1)
    assert httpx.get(url).content == b"three"
    time.sleep(2.1)
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
