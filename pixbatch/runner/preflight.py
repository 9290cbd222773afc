"""Before an item's first send: can its input images be fetched, and are they images?

The gateway charges a FAILED request, and a request whose input it cannot fetch (or that is
not an image) ends FAILED. So before sending, the run checks every http(s) URL an item would
send (its ``image``/``images``; an upstream item's output is not checked: it comes from the
gateway) with the estimate's probe (``probe.py``: a ranged GET of the first bytes, whose
image header Pillow reads). The answers are cached in the state file's ``probes`` table with
the size probes: a URL that answered is never checked again; a URL that failed is checked
again once per run (it may have been fixed since). A good answer is stored without its size:
a size in the cache changes the expansion's fingerprint (prices depend on sizes), and a
preflight must not make the next run walk a million-item expansion again; an estimate that
needs the size probes that URL again.

An item with a bad input becomes ``BAD_INPUT`` with the URL and the error: never sent, never
charged, listed by ``pixbatch report`` and ``pixbatch failures``; the next run checks it
again. ``RunOptions(preflight=False)`` (``run --no-preflight``) sends without checking.

The feeder hands each page of ready items to ``admit``, which checks them a chunk at a time
(at most ``concurrency`` URLs at once, each URL once) and yields the items whose inputs are
fine, so the first items go out after one chunk's checks, not after the whole manifest's.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import replace
from typing import Any

import httpx

from .. import state as st
from ..probe import ProbeResult, probe_sizes_async, read_cache_db, write_cache_db

Ready = tuple[st.ItemRow, "st.ItemRow | None"]


def input_urls(body: dict[str, Any]) -> list[str]:
    """The http(s) image URLs a request body sends (upstream placeholders and other schemes are not fetched here)."""
    found: list[str] = []
    for name in ("image", "images"):
        v = body.get(name)
        for u in ([v] if isinstance(v, str) else v if isinstance(v, list) else []):
            if isinstance(u, str) and u.startswith(("http://", "https://")):
                found.append(u)
    return found


class Preflight:
    """Checks the input URLs of the items the feeder is about to send (see the module docstring)."""

    def __init__(self, store: st.Store, put: Callable[..., Any], *, enabled: bool = True, concurrency: int = 16,
                 timeout: float = 10.0, chunk: int | None = None, transport: httpx.AsyncBaseTransport | None = None):
        self.store = store
        self.put = put
        self.enabled = enabled
        self.concurrency = max(1, concurrency)
        self.timeout = timeout
        self.chunk = chunk or max(64, 4 * self.concurrency)
        self.transport = transport
        self.failed_now: dict[str, str] = {}  # URLs that failed in this run (checked once per run): url -> error
        self.checked = 0  # URLs fetched by this run
        self.rejected = 0  # items left BAD_INPUT by this run

    @classmethod
    def of(cls, store: st.Store, put: Callable[..., Any], options: Any) -> Preflight:
        """The preflight a run's ``RunOptions`` ask for (``preflight``, its concurrency and timeout)."""
        return cls(store, put, enabled=options.preflight, concurrency=options.preflight_concurrency,
                   timeout=options.preflight_timeout)

    async def admit(self, page: list[Ready]) -> AsyncIterator[Ready]:
        """The items of ``page`` whose inputs are fine; the others become BAD_INPUT on the way."""
        if not self.enabled:
            for ready in page:
                yield ready
            return
        for i in range(0, len(page), self.chunk):
            part = page[i:i + self.chunk]
            bad = await self._check(row.body_dict for row, _ in part)
            for row, up in part:
                problem = next((f"input {u}: {bad[u]}" for u in input_urls(row.body_dict) if u in bad), None)
                if problem is None:
                    yield row, up
                else:
                    self._reject(row, problem)

    async def _check(self, bodies: Iterable[dict[str, Any]]) -> dict[str, str]:
        """url -> error for the bad URLs among ``bodies``' inputs (cached, else fetched now and cached)."""
        urls = list(dict.fromkeys(u for b in bodies for u in input_urls(b)))
        if not urls:
            return {}
        cached: dict[str, ProbeResult] = await self.store.call(lambda db: read_cache_db(db, urls))
        bad = {u: self.failed_now[u] for u in urls if u in self.failed_now}
        todo = [u for u in urls if u not in bad and not (u in cached and cached[u].ok)]
        if todo:
            fresh = await probe_sizes_async(todo, concurrency=self.concurrency, timeout=self.timeout,
                                            transport=self.transport)
            self.checked += len(fresh)
            rows = [r if not r.ok else replace(r, width=None, height=None) for r in fresh.values()]
            await self.store.call(lambda db: write_cache_db(db, rows))
            for u, r in fresh.items():
                if not r.ok:
                    bad[u] = self.failed_now[u] = r.error or "could not be read"
        return bad

    def _reject(self, row: st.ItemRow, problem: str) -> None:
        row.state = st.BAD_INPUT
        row.error = problem
        self.rejected += 1
        self.put(row, reason=problem)
