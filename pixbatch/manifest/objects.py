"""The object-store parts of a manifest: ``uploads:`` and an ``s3://`` ``output_dir``.

Checked in the meaning pass (the shape pass has checked the types): the ``s3://`` URIs
(bucket name, prefix), ``url: public`` without a way to build public URLs, ``expires``
as a duration of at most 7 days (a presigned URL cannot live longer), and local inputs
without an ``uploads:`` section (the gateway takes URLs only: they must be uploaded).
Nothing here talks to a bucket; ``pixbatch run`` does, and says what it finds.
"""

from __future__ import annotations

from typing import Any

from ..storage.config import (DEFAULT_EXPIRES, DEFAULT_UPLOAD_CONCURRENCY, UploadsConfig, is_s3, parse_duration,
                              parse_s3)
from .problems import Checker


def output_uri(c: Checker, data: dict[str, Any]) -> str | None:
    """``output_dir`` when it is an ``s3://`` URI (normalised: ends with '/'), else None."""
    raw = data.get("output_dir")
    if not is_s3(raw):
        return None
    loc, why = parse_s3(raw)
    if loc is None:
        c.add(("output_dir",), f"output_dir: {why}", "write s3://bucket/prefix/ or a local directory")
        return None
    return loc.uri


def uploads(c: Checker, data: dict[str, Any], has_local: bool) -> UploadsConfig | None:
    """The ``uploads:`` section, checked; a problem when local inputs have nowhere to go."""
    raw = data.get("uploads")
    if not isinstance(raw, dict):
        if has_local and raw is None:
            c.add(("inputs",), "local files are inputs, but the manifest has no uploads: section",
                  "the gateway reads images from URLs: add uploads: {to: s3://bucket/prefix/} "
                  "(see docs/manifest.md, Local files)")
        return None
    to = raw.get("to")
    if not isinstance(to, str):
        return None  # the shape pass said so
    loc, why = parse_s3(to)
    if loc is None:
        c.add(("uploads", "to"), f"uploads.to: {why}", "write s3://bucket/prefix/")
        return None
    mode = raw.get("url", "presigned")
    public_base = raw.get("public_base_url") if isinstance(raw.get("public_base_url"), str) else None
    expires = DEFAULT_EXPIRES
    if "expires" in raw:
        seconds, why = parse_duration(raw["expires"])
        if seconds is None:
            c.add(("uploads", "expires"), why or "not a duration", "write e.g. 7d, 12h or 3600s (at most 7d)")
        else:
            expires = seconds
            if mode == "public":
                c.add(("uploads", "expires"), "expires applies to presigned URLs, and url is public",
                      "remove expires, or set url: presigned", key=True)
    if public_base and mode != "public":
        c.add(("uploads", "public_base_url"), "public_base_url is set but url is presigned, so it would be ignored",
              "add url: public, or remove public_base_url", key=True)
    endpoint = raw.get("endpoint_url") if isinstance(raw.get("endpoint_url"), str) else None
    conc = raw.get("concurrency", DEFAULT_UPLOAD_CONCURRENCY)
    return UploadsConfig(
        to=loc, endpoint_url=endpoint, url=mode if mode in ("presigned", "public") else "presigned",
        public_base_url=public_base.rstrip("/") if public_base else None, expires=expires,
        region=raw.get("region") if isinstance(raw.get("region"), str) else None,
        profile=raw.get("profile") if isinstance(raw.get("profile"), str) else None,
        concurrency=conc if isinstance(conc, int) and not isinstance(conc, bool) and conc > 0 else DEFAULT_UPLOAD_CONCURRENCY)
