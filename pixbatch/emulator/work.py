"""The image work behind a job: fetch the inputs, render (or only measure) the output.

``Studio.work(job)`` runs on the event loop and hands the Pillow work to worker threads
(``anyio.to_thread`` with a capacity limiter of ``config.workers``). It fills in the
job's input and output sizes and its media file; an input that cannot be used turns the
job FAILED (charged, as the gateway charges a failed prediction), anything unforeseen
turns it ERROR (not charged). It never settles the job: the engine does.

In lazy mode there is no work: sizes follow ``lazy_input_size`` (or the job's scripted
``input_size``) and ``lazy_media`` draws a placeholder on the first media GET.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import anyio
import anyio.to_thread
import httpx

from ..contract import COMPLETED, ERROR, FAILED
from . import imaging
from .sizing import SizeRule

if TYPE_CHECKING:
    from .jobs import Job

log = logging.getLogger("pixbatch.emulator")


class Studio:
    """Where outputs are made and kept; one per emulator."""

    def __init__(self, settings: Callable[[], Any], rule: SizeRule, stats: dict[str, Any],
                 clock: Callable[[], float]):
        self._settings = settings  # -> the current EmulatorConfig
        self.rule = rule
        self._stats = stats
        self._clock = clock
        media_dir = settings().media_dir
        self.media_root: Path | None = Path(media_dir) if media_dir else None
        self._tmp: str | None = None
        self._limiter: anyio.CapacityLimiter | None = None
        self._http: httpx.AsyncClient | None = None

    def open(self) -> None:
        if self.media_root is None:
            self._tmp = tempfile.mkdtemp(prefix="pixbatch-emulator-")
            self.media_root = Path(self._tmp)
        self.media_root.mkdir(parents=True, exist_ok=True)
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(self._settings().workers)

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    @property
    def limiter(self) -> anyio.CapacityLimiter:
        """Bounds the threads doing Pillow work (``config.workers``), lazy drawing included."""
        assert self._limiter is not None, "open() first"
        return self._limiter

    # -- lazy mode --------------------------------------------------------------------

    def measure_lazily(self, job: Job) -> None:
        job.input_size = job.lazy_input or self._settings().lazy_input_size
        job.output_size = self.rule.output_size(job.op, job.body, job.input_size)
        job.work_done = True

    def lazy_media(self, job: Job) -> Path:
        """Draw the output and write its file on first request (in a worker thread)."""
        assert job.output_size is not None and self.media_root is not None
        quality = int(job.body.get("output_quality", 80)) if job.op == "upscale" else imaging.EDIT_QUALITY
        data = imaging.placeholder(job.output_size, job.ext, quality, job.request_id)
        return self._write(job, job.ext, data)

    # -- real mode --------------------------------------------------------------------

    async def work(self, job: Job) -> None:
        self._stats["work_started"] += 1
        try:
            urls = [job.body["image"]] if job.op == "upscale" else list(job.body["images"])
            inputs = [await self._fetch(u, f"images[{i}]" if job.op == "edit" else "image") for i, u in enumerate(urls)]
            if job.outcome == FAILED:  # an emulated failure: only measure, for the price
                job.input_size = await anyio.to_thread.run_sync(imaging.image_size, inputs[0], limiter=self.limiter)
                job.output_size = self.rule.output_size(job.op, job.body, job.input_size)
            else:
                rendered = await anyio.to_thread.run_sync(self._render, job, inputs, limiter=self.limiter)
                job.input_size, job.output_size = rendered.input_size, rendered.size
        except imaging.ImagingError as exc:
            self._fail(job, str(exc))
        except Exception as exc:  # noqa: BLE001 - the job boundary: anything unforeseen is a system ERROR
            log.exception("image work for %s failed unexpectedly", job.request_id)
            self._stats["work_failed"] += 1
            job.outcome, job.error = ERROR, f"Internal error while processing the request: {type(exc).__name__}"
        finally:
            job.work_done = True
            job.work_done_mono = self._clock()

    def _fail(self, job: Job, message: str) -> None:
        self._stats["work_failed"] += 1
        if job.outcome == COMPLETED:  # a planned (emulated or scripted) failure keeps its message
            job.outcome, job.error = FAILED, message

    def _render(self, job: Job, inputs: list[bytes]) -> imaging.Rendered:
        b = job.body
        if job.op == "upscale":
            # imaging's two-argument call is the default rule (and the seam tests patch)
            out = (imaging.upscale(inputs[0], b) if self.rule == imaging.DEFAULT_RULE
                   else imaging.upscale(inputs[0], b, self.rule))
        else:
            seed = b["seed"] if b.get("seed") is not None else job.edit_seed
            out = imaging.edit(inputs[0], inputs[1:], b["prompt"], seed, b.get("aspect_ratio", "match_input_image"),
                               self.rule)
        self._write(job, out.ext, out.data)
        return out

    def _write(self, job: Job, ext: str, data: bytes) -> Path:
        assert self.media_root is not None
        path = self.media_root / job.request_id / f"output.{ext}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        job.media_path = path
        return path

    async def _fetch(self, url: str, what: str) -> bytes:
        cfg = self._settings()
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=cfg.fetch_timeout, follow_redirects=True)
        try:
            async with self._http.stream("GET", url) as r:
                if r.status_code != 200:
                    raise imaging.ImagingError(f"could not fetch {what} ({url}): HTTP {r.status_code}")
                chunks, total = [], 0
                async for chunk in r.aiter_bytes():
                    total += len(chunk)
                    if total > cfg.max_input_bytes:
                        raise imaging.ImagingError(f"{what} ({url}) is larger than {cfg.max_input_bytes} bytes")
                    chunks.append(chunk)
                return b"".join(chunks)
        except httpx.HTTPError as exc:
            raise imaging.ImagingError(f"could not fetch {what} ({url}): {type(exc).__name__}: {exc}") from None
