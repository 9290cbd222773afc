"""DuckDB's buffer pool for a run's state file: small by design, roomier for a statement that needs more.

A run holds its state file open for hours with a small pool (``store.STORE_MEMORY_LIMIT``):
DuckDB otherwise caches every block it touches up to 80 % of the machine, and a checkpoint
fills whatever pool it is given. A few statements over a million items need more than the
pool (the plan's self-join); :func:`roomier` raises the limit for them and puts it back.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import duckdb

T = TypeVar("T")

#: how far the pool grows, once, for a commit that ran out of the small one (``retry_roomier``)
RETRY_MEMORY_LIMIT = "2GB"


@contextmanager
def roomier(db: duckdb.DuckDBPyConnection, limit: str) -> Iterator[None]:
    """DuckDB's memory limit raised to ``limit`` (never lowered) for one query, then put back."""
    before = db.execute("SELECT current_setting('memory_limit')").fetchall()[0][0]
    if _bytes(before) >= _bytes(limit):
        yield
        return
    db.execute(f"SET memory_limit = '{limit}'")
    try:
        yield
    finally:
        try:
            db.execute(f"SET memory_limit = '{before}'")
        except duckdb.OutOfMemoryException:  # what the statement wrote is still in memory: into the file
            with contextlib.suppress(duckdb.Error):
                db.execute("CHECKPOINT")
            with contextlib.suppress(duckdb.OutOfMemoryException):  # else the pool stays roomier
                db.execute(f"SET memory_limit = '{before}'")


_UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30,
          "TIB": 2**40}


def _bytes(setting: str) -> float:
    """'122.0 MiB', '1GB' -> bytes (DuckDB's memory_limit as it prints it, or as it is set)."""
    text = setting.strip().upper().replace(" ", "")
    num = text.rstrip("KMGTIB")
    return float(num) * _UNITS.get(text[len(num):] or "B", 1)


def retry_roomier(fn: Callable[[], T], db: duckdb.DuckDBPyConnection) -> T:
    """``fn()``; if DuckDB runs out of the pool, ``fn()`` once more with ``RETRY_MEMORY_LIMIT``.

    Only for work that is all or nothing (one statement, or one transaction rolled back on
    failure): a second try must not find half of the first one applied.
    """
    try:
        return fn()
    except duckdb.OutOfMemoryException:
        with roomier(db, RETRY_MEMORY_LIMIT):
            return fn()
