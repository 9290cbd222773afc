"""The live status of a run: a snapshot from the store, written to the status file (which
``pixbatch status`` reads while the run holds the state file) and shown by the progress."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .. import state as st
from ..errors import PixbatchError
from ..progress import Progress


class StatusWriter:
    def __init__(self, store: st.Store, progress: Progress, *, state_path: Path, run_id: str, manifest_path: str,
                 scope: str, budget: int | None, estimate: tuple[int, int], finished: Callable[[], int],
                 errors: Any = None):
        self.store = store
        self.progress = progress
        self.state_path = state_path
        self.run_id = run_id
        self.manifest_path = manifest_path
        self.scope = scope
        self.budget = budget
        self.estimate = estimate
        self.finished = finished  # items finished by this run so far
        self.errors = errors  # its last_error and last_error_at: the latest failed exchange (a Journal)
        self.ingest: Any = None  # stream.IngestProgress while the expansion is read in (as_dict())
        self.t0 = time.monotonic()

    async def snapshot(self, *, running: bool, outcome: str | None = None) -> st.StatusSnapshot:
        steps, t = await self.store.call(lambda db: (st.counts_by_step(db, self.scope), st.totals(db)))
        elapsed = max(1e-6, time.monotonic() - self.t0)
        rate = self.finished() / elapsed if running else None
        remaining = sum(n for c in steps.values() for s, n in c.items() if s in st.REMAINING)
        eta = remaining / rate if rate else None
        error, error_at = (self.errors.last_error, self.errors.last_error_at) if self.errors else (None, None)
        return st.StatusSnapshot(
            state_path=str(self.state_path), source="runner", running=running, updated_at=st.iso_utc(st.utcnow()),
            run_id=self.run_id, pid=os.getpid(), outcome=outcome or "running", manifest_path=self.manifest_path,
            steps=steps, charged_micros=t.charged_micros, reserved_micros=t.reserved_micros,
            at_risk_micros=t.at_risk_micros, budget_micros=self.budget, estimate_low_micros=int(self.estimate[0]),
            estimate_high_micros=int(self.estimate[1]), rate_per_s=rate, eta_s=eta,
            ingest=self.ingest.as_dict() if self.ingest is not None else None, last_error=error,
            last_error_at=error_at)

    async def write(self, *, running: bool, outcome: str | None = None) -> None:
        snap = await self.snapshot(running=running, outcome=outcome)
        await asyncio.to_thread(st.write_status_file, snap)
        self.progress.update(snap)

    async def loop(self, interval: float) -> None:
        """Refresh every ``interval`` seconds until cancelled; a failed refresh waits for the next."""
        while True:
            with contextlib.suppress(PixbatchError, OSError):
                await self.write(running=True)
            await asyncio.sleep(interval)
