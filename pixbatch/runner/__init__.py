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

import asyncio
from typing import Any

from ..gateway import Gateway
from ..progress import NullProgress, Progress
from .options import RunOptions
from .outcome import RunSummary, StopReason

__all__ = ["RunOptions", "RunSummary", "StopReason", "in_loop", "run", "run_async"]


def in_loop(name: str, instead: str) -> None:
    """``RuntimeError`` naming the coroutine to await when sync ``name`` is called inside a running event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return
    raise RuntimeError(f"pixbatch.{name}() cannot run inside a running event loop (Jupyter, an async app): "
                       f"use `await pixbatch.{instead}(...)` there instead.")


async def run_async(manifest: Any, *, options: RunOptions, gateway: Gateway | None = None,
                    progress: Progress | None = None) -> RunSummary:
    """The coroutine form of ``run``, for callers that already have an event loop (e.g. Jupyter:
    ``summary = await run_async(m, options=...)``)."""
    from .engine import _Run

    options.check(manifest)
    return await _Run(manifest, options, gateway, progress or NullProgress()).main()


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
    in_loop(run.__name__, "run_async")
    return asyncio.run(run_async(manifest, options=options, gateway=gateway, progress=progress))
