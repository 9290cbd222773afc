"""How many state transitions per second the store sustains (target: >= 10,000/s).

A transition is what the runner does for each change of an item: a snapshot of the item's
row queued for ``UPDATE items ... FROM (SELECT unnest(?), ...)`` plus one ``events`` row,
committed by the writer thread in groups. One write in three is *awaited*, from many
concurrent asyncio tasks, as in the runner: of an item's transitions (SUBMITTING,
SUBMITTED, PROCESSING, terminal, ...) it awaits two, the intent and the request_id.

    python bench/state.py [--items 100000] [--transitions 300000] [--tasks 256]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

from pixbatch import state as st

TARGET = 10_000


def measure(path: Path, *, n_items: int = 100_000, transitions: int = 300_000, tasks: int = 256,
            awaited_every: int = 3) -> float:
    """Transitions per second through a fresh store at ``path``."""
    store = st.Store.open(path)
    try:
        store.call_sync(lambda db: st.bulk_insert_items_for_bench(db, n_items))
        rows = store.call_sync(lambda db: st.select_rows(db, "i.scope = 'bench'", []))
        states = (st.SUBMITTING, st.SUBMITTED, st.COMPLETED)
        per_task = transitions // tasks

        async def worker(w: int) -> None:
            for j in range(per_task):
                r = rows[(w * per_task + j) % len(rows)]
                r.state = states[j % 3]
                r.polls += 1
                store.put_event("bench", r.key, "state", {"state": r.state})
                fut = store.put_item(r, wait=(j % awaited_every == 0))
                if fut is not None:
                    await asyncio.wrap_future(fut)

        async def main() -> None:
            await asyncio.gather(*(worker(w) for w in range(tasks)))
            await store.commit()

        t0 = time.perf_counter()
        asyncio.run(main())
        elapsed = time.perf_counter() - t0
        return per_task * tasks / elapsed
    finally:
        store.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=100_000)
    ap.add_argument("--transitions", type=int, default=300_000)
    ap.add_argument("--tasks", type=int, default=256)
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as d:
        rate = measure(Path(d) / "bench.duckdb", n_items=a.items, transitions=a.transitions, tasks=a.tasks)
    print(f"items {a.items:,}  transitions {a.transitions:,}  tasks {a.tasks}  ->  {rate:,.0f} transitions/s")
    ok = rate >= TARGET
    print(f"verdict: {'PASS' if ok else 'FAIL'} (target >= {TARGET:,}/s)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
