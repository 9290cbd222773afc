"""Outputs from the CDN: the media URL checked, the body streamed to a file, bounded.

The key is never sent to the CDN (its own ``httpx.AsyncClient``). A download is bounded in
bytes (after any Content-Encoding is undone: a gzip bomb stops at the cap) and in time (a
total deadline, retries included: a server dripping a byte a second cannot hold an item), is
written to a file as it arrives (memory stays small whatever the size), and every failure is
a ``GatewayError`` that leaves no file behind. 429, 5xx and network errors are tried again
(``retry_policy.download_again``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx

from . import retry_policy
from .errors import GatewayError, GatewayProtocolError, GatewayUnreachable, redact
from .retry_policy import RetryPolicy, retrying

MAX_MEDIA_BYTES = 200 * 1024 * 1024  # an 8 MP output is a few MB; more is not an image we asked for
DOWNLOAD_DEADLINE = 300.0  # seconds for one output, retries included


@dataclass(frozen=True, slots=True)
class Fetched:
    """An output streamed to a file."""

    path: Path
    bytes: int
    sha256: str
    content_type: str | None


@dataclass(frozen=True, slots=True)
class _Streamed:
    """One try of a streamed download, as the retry predicate sees it."""

    status_code: int
    headers: Any
    fetched: Fetched | None = None

    def json(self) -> Any:
        raise ValueError("a streamed body")


class _TooLarge(Exception):
    pass


@dataclass(frozen=True, slots=True)
class Download:
    data: bytes
    content_type: str | None



class MediaClient:
    def __init__(self, client: httpx.AsyncClient, *, base_url: str, policy: RetryPolicy,
                 record: Callable[..., None], secrets: tuple[str, ...] = (), max_bytes: int = MAX_MEDIA_BYTES,
                 deadline: float = DOWNLOAD_DEADLINE):
        self.client, self.base_url, self.policy, self.record = client, base_url, policy, record
        self.secrets = secrets
        self.max_bytes, self.deadline = max_bytes, deadline

    def url(self, url: Any) -> str:
        """The URL an output is fetched from: http(s) only (a ``file://`` or malformed media_url is
        the gateway's error, never followed); a path is taken as relative to the base URL."""
        if isinstance(url, str) and url.startswith("/") and not url.startswith("//"):
            url = urljoin(self.base_url + "/", url)
        try:
            parts = urlsplit(url) if isinstance(url, str) else None
            ok = parts is not None and parts.scheme in ("http", "https") and bool(parts.hostname) and (
                parts.port is None or parts.port > 0)
        except ValueError:  # "Invalid IPv6 URL", a port out of range, ...
            ok = False
        if not ok:
            raise GatewayProtocolError(f"media_url {str(url)[:200]!r} is not an http(s) URL")
        return str(url)

    async def fetch(self, url: str, into: Path, *, max_bytes: int | None = None,
                    deadline: float | None = None) -> Fetched:
        """Stream an output from the CDN (no key sent) into the file ``into``, hashing it on the way.

        Bounded: at most ``max_bytes`` (after any Content-Encoding is undone: a gzip bomb stops
        there) and ``deadline`` seconds in all, retries included (a server dripping one byte a
        second cannot hold an item forever). 429, 5xx and network errors are tried again. Every
        failure is a ``GatewayError`` and leaves no file behind.
        """
        url = self.url(url)
        path = urlsplit(url).path
        max_bytes = self.max_bytes if max_bytes is None else max_bytes
        deadline = self.deadline if deadline is None else deadline

        async def attempt() -> _Streamed:
            t0 = time.perf_counter()
            try:
                async with self.client.stream("GET", url) as resp:
                    if not 200 <= resp.status_code < 300:
                        self.record("GET", path, resp.status_code, t0)
                        return _Streamed(resp.status_code, resp.headers)
                    h, n = hashlib.sha256(), 0
                    with open(into, "wb") as f:
                        async for chunk in resp.aiter_bytes():
                            n += len(chunk)
                            if n > max_bytes:
                                raise _TooLarge()
                            h.update(chunk)
                            f.write(chunk)
                        f.flush()
                        os.fsync(f.fileno())
            except httpx.TransportError as exc:
                self.record("GET", path, None, t0, f"{type(exc).__name__}: {exc}")
                raise
            self.record("GET", path, resp.status_code, t0)
            return _Streamed(resp.status_code, resp.headers, Fetched(into, n, h.hexdigest(),
                                                                     resp.headers.get("content-type")))

        try:
            return await self._fetch_within(attempt, path, deadline, max_bytes)
        except BaseException:
            with contextlib.suppress(OSError):
                into.unlink()
            raise

    async def _fetch_within(self, attempt: Callable[[], Awaitable[_Streamed]], path: str, deadline: float,
                            max_bytes: int) -> Fetched:
        try:
            async with asyncio.timeout(deadline):
                end = await retrying(self.policy, attempt, on=retry_policy.download_again)
        except TimeoutError:
            raise GatewayError(f"download {path}: not finished after {deadline:g} s") from None
        except _TooLarge:
            raise GatewayError(f"download {path}: larger than {max_bytes:,} bytes (after decoding)") from None
        except httpx.HTTPError as exc:  # too many redirects, a body that does not decode, ...
            raise GatewayError(f"download {path}: {type(exc).__name__}: {redact(str(exc), self.secrets)[:200]}") \
                from None
        out = end.outcome
        if isinstance(out, BaseException):
            raise GatewayUnreachable(f"download {path}: network error ({type(out).__name__}) after {end.tries} "
                                     "tries.") from None
        if out.fetched is None:
            raise GatewayError(f"download {path}: HTTP {out.status_code}", status_code=out.status_code)
        return out.fetched

    async def download(self, url: str, *, max_bytes: int | None = None, deadline: float | None = None) -> Download:
        """``fetch`` into memory (small files: tests, probes)."""
        fd, name = tempfile.mkstemp(prefix=".pixbatch-", suffix=".part")
        os.close(fd)
        try:
            got = await self.fetch(url, Path(name), max_bytes=max_bytes, deadline=deadline)
            return Download(Path(name).read_bytes(), got.content_type)
        finally:
            with contextlib.suppress(OSError):
                os.unlink(name)
