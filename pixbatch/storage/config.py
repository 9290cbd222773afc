"""Where objects go, as the manifest says it: ``s3://`` locations and the ``uploads:`` section.

Pure data and parsing (no S3 client): the manifest passes read it, and nothing here needs
``pixbatch[s3]`` installed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

S3_SCHEME = "s3://"
# S3's rules for bucket names (3-63 lowercase letters, digits, '.', '-'; starts and ends alphanumeric)
BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
MAX_PRESIGN_SECONDS = 7 * 24 * 3600  # SigV4: a presigned URL lives at most 7 days
DEFAULT_EXPIRES = MAX_PRESIGN_SECONDS
DEFAULT_UPLOAD_CONCURRENCY = 16
_DURATION = re.compile(r"^\s*(\d+)\s*([smhd]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


@dataclass(frozen=True, slots=True)
class S3Location:
    """``s3://bucket/prefix``: a bucket and a key prefix (no leading slash; ends with '/' unless empty)."""

    bucket: str
    prefix: str

    @property
    def uri(self) -> str:
        return f"{S3_SCHEME}{self.bucket}/{self.prefix}"

    def key(self, name: str) -> str:
        return self.prefix + name.lstrip("/")

    def uri_of(self, key: str) -> str:
        return f"{S3_SCHEME}{self.bucket}/{key}"


def is_s3(text: object) -> bool:
    return isinstance(text, str) and text[:5].lower() == S3_SCHEME


def parse_s3(text: str) -> tuple[S3Location | None, str | None]:
    """(the location, None) or (None, what is wrong with it)."""
    if not is_s3(text):
        return None, f"{text!r} is not an s3:// URI"
    rest = text[5:]
    bucket, _, prefix = rest.partition("/")
    if not BUCKET_RE.match(bucket) or ".." in bucket:
        return None, f"{bucket!r} is not a valid bucket name (3-63 lowercase letters, digits, '.' and '-')"
    if "\x00" in prefix or any(part in (".", "..") for part in prefix.split("/")):
        return None, f"the key prefix {prefix!r} has '.' or '..' parts"
    prefix = re.sub(r"/+", "/", prefix).lstrip("/")
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    return S3Location(bucket, prefix), None


def parse_duration(value: object) -> tuple[int | None, str | None]:
    """``7d``, ``12h``, ``30m``, ``90s`` or a number of seconds -> (seconds, None), or (None, what is wrong)."""
    if isinstance(value, bool):
        return None, f"{value!r} is not a duration"
    if isinstance(value, int):
        seconds = value
    elif isinstance(value, str) and (m := _DURATION.match(value)):
        seconds = int(m.group(1)) * _UNITS[m.group(2)]
    else:
        return None, f"{value!r} is not a duration (write e.g. 7d, 12h, 30m or 3600s)"
    if seconds < 1:
        return None, "the duration must be at least 1 second"
    if seconds > MAX_PRESIGN_SECONDS:
        return None, f"{value} is longer than 7 days, the longest a presigned URL can live"
    return seconds, None


@dataclass(frozen=True, slots=True)
class UploadsConfig:
    """The manifest's ``uploads:`` section: where local inputs go and how the gateway reads them.

    Credentials are not here: they come from the S3 client's standard chain (environment,
    ``AWS_PROFILE`` or ``profile``, shared config files, instance roles).
    """

    to: S3Location
    endpoint_url: str | None = None
    url: str = "presigned"  # presigned | public
    public_base_url: str | None = None
    expires: int = DEFAULT_EXPIRES  # seconds a presigned URL is valid
    region: str | None = None
    profile: str | None = None
    concurrency: int = DEFAULT_UPLOAD_CONCURRENCY


@dataclass(frozen=True, slots=True)
class StoreOptions:
    """How to reach an object store: the parts of ``uploads:`` an output bucket shares."""

    endpoint_url: str | None = None
    region: str | None = None
    profile: str | None = None

    @classmethod
    def of(cls, uploads: UploadsConfig | None) -> StoreOptions:
        if uploads is None:
            return cls()
        return cls(uploads.endpoint_url, uploads.region, uploads.profile)
