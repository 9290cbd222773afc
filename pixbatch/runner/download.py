"""Getting a completed item's image onto disk, checked, and keeping it there.

``Downloader.download`` fetches an item's media, checks it (``outputs.check_image``), writes it
under each of the item's output names (``outputs.OutputDir``) and records the outputs;
``measure`` reads just an output's header where the price depends on its size; ``verify``
finds completed items whose files are missing or no longer match their checksum and
downloads them again (never resubmits them).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

from .. import state as st
from ..errors import GatewayError, PixbatchError
from ..gateway import Gateway
from .outputs import OutputDir, check_image

PAGE = 2000
# the error of a COMPLETED item whose output is not on disk starts with one of these
MISSING_PREFIXES = ("output missing", "download failed")


class Downloader:
    def __init__(self, gateway: Gateway, store: st.Store, out: OutputDir | Any, aliases: dict[str, list[str]], *,
                 emit: Callable[..., None], timeout: float, concurrency: int):
        self.gw = gateway
        self.store = store
        self.out = out
        self.aliases = aliases
        self.emit = emit
        self.timeout = timeout
        self.concurrency = max(1, concurrency)
        self.done: set[str] = set()  # keys downloaded by this run
        self.downloads = 0
        self.problems = 0  # outputs that failed their checks
        self.missing: dict[str, str] = {}  # key -> why a COMPLETED item has no good output on disk

    def names(self, row: st.ItemRow) -> list[str]:
        return [n for n in [row.output_name, *self.aliases.get(row.key, [])] if n]

    async def measure(self, row: st.ItemRow) -> tuple[int, int] | None:
        """Output size from the first bytes of the media URL (no download): prices factor upscales."""
        assert row.media_url is not None
        size = await self.measure_url(row, row.media_url)
        if size is not None:
            row.output_width, row.output_height = size
        return size

    async def measure_url(self, row: st.ItemRow, url: str) -> tuple[int, int] | None:
        """An image's size from its first bytes (a ranged GET, no key sent); None when it cannot be read."""
        from ..probe import probe_sizes_async

        got = (await probe_sizes_async([url], concurrency=1, timeout=self.timeout)).get(url)
        if got is None or got.size is None:
            self.emit("download", row.key, ok=False, error=f"could not measure {url[:120]}: {got.error if got else '?'}")
            return None
        return got.size

    async def download(self, row: st.ItemRow) -> None:
        """Fetch, check and place the item's output under each of its names; raises ``GatewayError``
        (or ``OSError``) when there is no good output, leaving no partial file behind."""
        assert row.media_url
        names = self.names(row)
        if not names:
            return
        try:
            await self._download(row, names)
        except (PixbatchError, OSError) as exc:
            self.missing[row.key] = str(exc)
            raise
        self.missing.pop(row.key, None)
        if row.error and row.error.startswith(MISSING_PREFIXES):
            row.error = None  # a good download clears what an earlier one left

    async def _download(self, row: st.ItemRow, names: list[str]) -> None:
        assert row.media_url
        if getattr(self.out, "copies", False):  # a bucket (storage.s3out): it streams the media itself
            await self.out.copy(row, names, self)
            return
        part = self.out.part_for(names[0])
        try:
            got = await self.gw.fetch(row.media_url, part)
        except GatewayError as exc:
            self.emit("download", row.key, ok=False, error=str(exc))
            raise
        self.downloads += 1
        media_type = row.media_type or (got.content_type or "").split(";")[0] or None

        def check_and_place() -> Any:
            check = check_image(part, row.op, row.body_dict, media_type, row.input_size)
            if check.format is None:  # not an image at all (an HTML page, ...): nothing is placed
                part.unlink()
                return check
            self.out.place(names, part)
            return check

        try:
            check = await asyncio.to_thread(check_and_place)
        except BaseException:
            part.unlink(missing_ok=True)
            raise
        if check.format is None:
            error = f"the media URL did not give an image ({media_type or 'no content type'}, {got.bytes:,} bytes)"
            self.emit("download", row.key, ok=False, error=error)
            raise GatewayError(f"download: {error}")
        row.output_width, row.output_height = check.width, check.height
        if check.problems:
            self.problems += 1
            row.error = "output check: " + "; ".join(check.problems)
        for name in names:
            self.store.put_output(st.OutputRow(row.key, name, got.sha256, got.bytes, check.width, check.height,
                                               media_type))
        self.done.add(row.key)
        self.emit("download", row.key, ok=not check.problems, bytes=got.bytes, width=check.width,
                  height=check.height, problems=list(check.problems))

    def no_media(self, row: st.ItemRow) -> None:
        """The gateway said COMPLETED without a media_url: paid, and nothing to download."""
        row.error = f"{MISSING_PREFIXES[0]}: the gateway reported COMPLETED without a media_url"
        if self.names(row):
            self.missing[row.key] = row.error

    async def completed_pages(self, scope: str, steps: list[str],
                              stopped: Callable[[], bool]) -> AsyncIterator[list[st.ItemRow]]:
        """Pages of COMPLETED items with a media URL and output names that this run has not
        downloaded, step by step in manifest order, until ``stopped()``."""
        for step in steps:
            after = -1
            while not stopped():
                rows = await self.store.call(lambda db, s=step, a=after: st.completed_page(db, scope, s, a, PAGE))
                if not rows:
                    break
                after = rows[-1].idx
                todo = [r for r in rows if r.key not in self.done and self.names(r)]
                if todo:
                    yield todo

    async def verify(self, scope: str, steps: list[str], stopped: Callable[[], bool]) -> None:
        """Completed items whose files are missing or corrupt are downloaded again (never resubmitted);
        what still has no good output is in ``missing``."""
        store = self.store
        for key, error in await store.call(lambda db: st.completed_without_media(db, scope)):
            self.missing.setdefault(key, error or "the gateway reported COMPLETED without a media_url")
        if getattr(self.out, "copies", False):  # a bucket: one listing instead of reading every file
            await self.out.verify(self, scope, steps, stopped)
            return
        async for todo in self.completed_pages(scope, steps, stopped):
            keys = [r.key for r in todo]
            recorded = await store.call(lambda db: st.recorded_outputs(db, keys))
            by_key: dict[str, dict[str, str]] = {}
            for (k, path), sha in recorded.items():
                by_key.setdefault(k, {})[path] = sha
            stale = await asyncio.to_thread(
                lambda: [r for r in todo if self.out.is_stale(self.names(r), by_key.get(r.key, {}))])
            sem = asyncio.Semaphore(self.concurrency)

            async def refetch(r: st.ItemRow) -> None:
                async with sem:
                    try:
                        await self.download(r)
                    except (PixbatchError, OSError) as exc:
                        self.emit("download", r.key, ok=False, error=str(exc))
                        r.error = f"{MISSING_PREFIXES[0]}: {exc}"
                    store.put_item(r)

            await asyncio.gather(*(refetch(r) for r in stale))
