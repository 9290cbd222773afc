"""The S3 client: boto3 (the optional extra ``pixbatch[s3]``), imported only when a bucket is used.

Why boto3 and not obstore: obstore is async-native and faster per request, but it cannot
make a conditional *multipart* write (it buffers any ``mode="create"`` put in memory and
sends it whole), and it does not read the shared AWS config files (profiles, SSO) without
boto3 anyway. pixbatch needs both: outputs are streamed and written only if absent
(``If-None-Match: *`` on ``CompleteMultipartUpload``), and credentials come from the
standard chain users already have (environment, ``AWS_PROFILE``, ``~/.aws``, instance
roles), as does the endpoint (``AWS_ENDPOINT_URL_S3``). boto3's calls block, so the async
callers run them in worker threads, at most ``concurrency`` at a time (one pooled
connection each).

Every call goes through :meth:`S3.call`, which maps botocore's errors to a
:class:`~pixbatch.errors.StorageError` that names the bucket and says what to do (missing
bucket, refused credentials, no credentials, unreachable endpoint). Credentials never
appear in a message. ``requests`` counts the requests made, by operation.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ..errors import StorageError, StorageUnavailable
from .config import StoreOptions

PART_SIZE = 8 * 1024 * 1024  # multipart above this (S3's minimum part is 5 MiB)
_AUTH_CODES = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "InvalidToken", "ExpiredToken",
               "TokenRefreshRequired", "AllAccessDisabled", "Forbidden", "403"}
_MISSING_BUCKET = {"NoSuchBucket"}
_PRECONDITION = {"PreconditionFailed", "412", "ConditionalRequestConflict"}


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    key: str
    size: int
    etag: str | None
    metadata: dict[str, str] | None = None  # from a HEAD (a listing has none)


class Exists(Exception):
    """A conditional write found an object already there (HTTP 412)."""


def _boto3() -> Any:
    try:
        import boto3
    except ImportError:
        raise StorageUnavailable("this manifest uses an s3:// bucket, and the S3 client is not installed: "
                                 "pip install 'pixbatch[s3]'") from None
    return boto3


class S3:
    """One boto3 client (thread-safe), its errors worded, its requests counted."""

    def __init__(self, opts: StoreOptions, *, max_connections: int = 32, client: Any = None):
        self.opts = opts
        self.requests: dict[str, int] = {}
        self._lock = threading.Lock()
        if client is None:
            client = self._client(opts, max_connections)
        self.client = client
        self.endpoint = str(client.meta.endpoint_url)
        client.meta.events.register("before-send.s3", self._count)

    @staticmethod
    def _client(opts: StoreOptions, max_connections: int) -> Any:
        boto3 = _boto3()
        import botocore.config
        import botocore.exceptions
        import os

        try:
            session = boto3.session.Session(profile_name=opts.profile, region_name=opts.region)
        except botocore.exceptions.ProfileNotFound as exc:
            raise StorageError(f"{exc}: fix uploads.profile or AWS_PROFILE") from None
        custom = opts.endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        config = botocore.config.Config(
            s3={"addressing_style": "path"} if custom else {},
            retries={"mode": "standard", "max_attempts": 5},
            max_pool_connections=max_connections, connect_timeout=10, read_timeout=120,
            request_checksum_calculation="when_required", response_checksum_validation="when_required",
            region_name=opts.region or session.region_name or "us-east-1")
        return session.client("s3", endpoint_url=opts.endpoint_url, config=config)

    def _count(self, event_name: str = "", **_: Any) -> None:
        name = event_name.rsplit(".", 1)[-1] or "request"  # "before-send.s3.PutObject": one HTTP request
        with self._lock:
            self.requests[name] = self.requests.get(name, 0) + 1

    # -- calls, errors worded ----------------------------------------------------------------

    def call(self, op: str, *, bucket: str, key: str | None = None, **kw: Any) -> Any:
        import botocore.exceptions

        try:
            return getattr(self.client, op)(Bucket=bucket, **({"Key": key} if key is not None else {}), **kw)
        except botocore.exceptions.ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in _PRECONDITION or status == 412:
                raise Exists(key) from None
            raise self._worded(exc, code, status, bucket, key, op) from None
        except botocore.exceptions.NoCredentialsError:
            raise StorageError(f"no credentials to reach s3://{bucket}: set AWS_ACCESS_KEY_ID and "
                               "AWS_SECRET_ACCESS_KEY, or AWS_PROFILE (or uploads.profile)") from None
        except botocore.exceptions.EndpointConnectionError:
            raise StorageError(f"cannot reach the object store at {self.endpoint} (bucket {bucket}): check "
                               "uploads.endpoint_url or AWS_ENDPOINT_URL_S3, and that the server is up") from None
        except (botocore.exceptions.BotoCoreError, OSError) as exc:
            raise StorageError(f"{op} on s3://{bucket}/{key or ''} failed: {type(exc).__name__}: {exc}") from None

    def _worded(self, exc: Any, code: str, status: int | None, bucket: str, key: str | None, op: str) -> StorageError:
        where = f"s3://{bucket}" + (f"/{key}" if key else "")
        if code in _MISSING_BUCKET or (op == "head_bucket" and status == 404):
            return StorageError(f"the bucket {bucket!r} does not exist at {self.endpoint}: create it, or fix the "
                                "bucket in uploads.to / output_dir")
        if code in _AUTH_CODES or status == 403:
            return StorageError(f"the object store at {self.endpoint} refused the credentials for {where} ({code or status}): "
                                "check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or the profile, and the bucket's permissions")
        msg = exc.response.get("Error", {}).get("Message") or ""
        return StorageError(f"{op} on {where} failed: {code or status} {msg}".rstrip())

    # -- operations ----------------------------------------------------------------------------

    def check_bucket(self, bucket: str) -> None:
        """The bucket exists and the credentials are accepted (a HEAD of the bucket)."""
        self.call("head_bucket", bucket=bucket)

    def head(self, bucket: str, key: str) -> ObjectInfo | None:
        try:
            r = self.call("head_object", bucket=bucket, key=key)
        except StorageError as exc:
            if "404" in str(exc) or "NotFound" in str(exc) or "NoSuchKey" in str(exc):
                return None
            raise
        return ObjectInfo(key, int(r["ContentLength"]), r.get("ETag"), dict(r.get("Metadata") or {}))

    def list(self, bucket: str, prefix: str) -> Iterator[ObjectInfo]:
        token = None
        while True:
            kw: dict[str, Any] = {"Prefix": prefix, "MaxKeys": 1000}
            if token:
                kw["ContinuationToken"] = token
            r = self.call("list_objects_v2", bucket=bucket, **kw)
            for o in r.get("Contents", ()):
                yield ObjectInfo(o["Key"], int(o["Size"]), o.get("ETag"))
            if not r.get("IsTruncated"):
                return
            token = r.get("NextContinuationToken")

    def put(self, bucket: str, key: str, body: Any, *, content_type: str | None, metadata: dict[str, str],
            if_match: str | None = None) -> str:
        """Write the object only if there is none (``If-None-Match: *``), or only over the object
        with ETag ``if_match``; raises :class:`Exists` otherwise. Returns the new ETag."""
        cond = {"IfMatch": if_match} if if_match else {"IfNoneMatch": "*"}
        r = self.call("put_object", bucket=bucket, key=key, Body=body, Metadata=metadata,
                      **({"ContentType": content_type} if content_type else {}), **cond)
        return str(r.get("ETag"))

    def multipart(self, bucket: str, key: str, *, content_type: str | None, metadata: dict[str, str]) -> Multipart:
        r = self.call("create_multipart_upload", bucket=bucket, key=key, Metadata=metadata,
                      **({"ContentType": content_type} if content_type else {}))
        return Multipart(self, bucket, key, r["UploadId"])

    def copy(self, bucket: str, key: str, source_key: str) -> str:
        r = self.call("copy_object", bucket=bucket, key=key, CopySource={"Bucket": bucket, "Key": source_key})
        return str(r.get("CopyObjectResult", {}).get("ETag"))

    def presign(self, bucket: str, key: str, expires: int) -> str:
        """A presigned GET URL (computed locally: no request)."""
        return str(self.client.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": key},
                                                      ExpiresIn=expires))

    def public_url(self, bucket: str, key: str, base: str | None) -> str:
        from urllib.parse import quote

        if base:
            return f"{base.rstrip('/')}/{quote(key)}"
        if self.opts.endpoint_url or "amazonaws.com" not in self.endpoint:
            return f"{self.endpoint.rstrip('/')}/{bucket}/{quote(key)}"
        return f"https://{bucket}.s3.amazonaws.com/{quote(key)}"


class Multipart:
    """A multipart upload: parts in order, then a conditional complete (the object appears whole, or not at all)."""

    def __init__(self, s3: S3, bucket: str, key: str, upload_id: str):
        self.s3, self.bucket, self.key, self.upload_id = s3, bucket, key, upload_id
        self.parts: list[dict[str, Any]] = []

    def part(self, data: bytes) -> None:
        n = len(self.parts) + 1
        r = self.s3.call("upload_part", bucket=self.bucket, key=self.key, UploadId=self.upload_id, PartNumber=n,
                         Body=data)
        self.parts.append({"ETag": r["ETag"], "PartNumber": n})

    def complete(self, if_match: str | None = None) -> str:
        cond = {"IfMatch": if_match} if if_match else {"IfNoneMatch": "*"}
        try:
            r = self.s3.call("complete_multipart_upload", bucket=self.bucket, key=self.key, UploadId=self.upload_id,
                             MultipartUpload={"Parts": self.parts}, **cond)
        except BaseException:
            self.abort()
            raise
        return str(r.get("ETag"))

    def abort(self) -> None:
        try:
            self.s3.call("abort_multipart_upload", bucket=self.bucket, key=self.key, UploadId=self.upload_id)
        except (StorageError, Exists):
            pass  # an incomplete upload is invisible; a bucket lifecycle rule removes it
