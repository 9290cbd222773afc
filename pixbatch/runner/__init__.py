"""Running a manifest: ``run(manifest, options=RunOptions(...))`` -> ``RunSummary``.

The package, one job per module:

- ``options``: ``RunOptions`` (spending policy, tuning, process), and what a run records of them;
- ``prepare``: before anything is sent: the expansion's fingerprint, ingest, recovery, resets;
- ``engine``: the run loop that coordinates the parts below (concurrency, feeding, settling);
- ``budget``: the pure ledger (reserve, release, settle) that keeps charged + reserved <= budget;
- ``submit``: the table from a submit's answer to the item's state, release and stop reason;
- ``poll``: the poll clock, the poll loop, the webhook receiver;
- ``outputs``: image checks, atomic writes, stale-output detection;
- ``outcome``: why a run stopped, its exit code and messages, ``RunSummary``.
"""

from __future__ import annotations

import sys
from typing import Any

from ..aio import run_sync
from ..gateway import Gateway
from ..progress import NullProgress, Progress
from .options import RunOptions
from .outcome import RunSummary, StopReason

__all__ = ["RunOptions", "RunSummary", "StopReason", "run", "run_async"]

#: the interpreter's thread switch interval while a run goes on (seconds; Python's default is 0.005)
SWITCH_INTERVAL = 0.001


async def run_async(manifest: Any, *, options: RunOptions, gateway: Gateway | None = None,
                    progress: Progress | None = None) -> RunSummary:
    """The coroutine form of ``run``, for callers that already have an event loop (e.g. Jupyter:
    ``summary = await run_async(m, options=...)``)."""
    from .engine import _Run

    options.check(manifest)
    # The store's writer thread hands DuckDB a statement, then needs the GIL back to go on; while
    # the event loop thread walks the expansion it gets it only when the interpreter's switch
    # interval (5 ms) forces a switch: a few dozen waits per batch written. At 1 ms the writes of
    # a streamed ingest run ~1.8x faster beside a busy loop, which loses ~1 % (bench/scale.py)
    previous = sys.getswitchinterval()
    sys.setswitchinterval(min(previous, SWITCH_INTERVAL))
    try:
        return await _Run(manifest, options, gateway, progress or NullProgress()).main()
    finally:
        sys.setswitchinterval(previous)


def run(manifest: Any, *, options: RunOptions, gateway: Gateway | None = None,
        progress: Progress | None = None) -> RunSummary:
    """Run (or resume) a manifest to completion.

    ``manifest`` is a ``pixbatch.manifest.Manifest`` (``load_manifest(path)``). Raises
    ``StateLocked`` when another process runs the same state file, ``AuthError`` without a
    key, ``BudgetExceeded`` when the budget cannot cover the remaining work; every other
    outcome (402, budget reached, interruption, failures) is in the returned summary.

    Inside a running event loop (Jupyter, an async application) use ``await run_async(...)``:
    this function says so (``RuntimeError``) instead of failing deep inside asyncio.
    """
    return run_sync(lambda: run_async(manifest, options=options, gateway=gateway, progress=progress),
                    name="run", instead="run_async")
