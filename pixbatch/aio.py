"""Running the library's coroutines from its synchronous API.

``run``, ``reconcile`` and the cached probe are coroutines underneath (``run_async``,
``reconcile_async``, ``probe_sizes_report_async``); their sync forms use ``asyncio.run``,
which cannot work inside an event loop that is already running (Jupyter, an async app).
``run_sync`` says so in words, naming the coroutine to ``await`` there instead. Work that
has no async form of its own (the estimate's probes) passes ``in_thread=True``: inside a
running loop it runs on a thread with a loop of its own, and the call simply works.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def loop_running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def not_in_a_loop(name: str, instead: str) -> None:
    """``RuntimeError`` when sync ``name`` is called inside a running event loop, naming what to await instead."""
    if loop_running():
        raise RuntimeError(f"pixbatch.{name}() cannot run inside a running event loop (Jupyter, an async app): "
                           f"use `await pixbatch.{instead}(...)` there instead.")


def run_sync(make: Callable[[], Coroutine[Any, Any, T]], *, name: str, instead: str | None = None,
             in_thread: bool = False) -> T:
    """``asyncio.run(make())`` for the sync form ``name``; inside a running loop, a clear error naming
    ``instead`` (or, with ``in_thread``, the coroutine runs on a thread of its own)."""
    if loop_running():
        if not in_thread:
            not_in_a_loop(name, instead or f"{name}_async")
        with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"pixbatch-{name}") as pool:
            return pool.submit(lambda: asyncio.run(make())).result()
    return asyncio.run(make())
