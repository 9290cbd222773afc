"""How many state transitions per second the store sustains (target: >= 10,000/s).

A transition is what the runner does for each change of an item, from many concurrent
asyncio tasks: a snapshot of the item's row (committed in bulk, ``UPDATE items ... FROM
(SELECT unnest(?), ...)``) plus one ``events`` row, and for the submit's two facts a
``submit_log`` row (committed at once, one INSERT per batch). Of an item's three
transitions (SUBMITTING, SUBMITTED, COMPLETED) the runner awaits one, the intent.

    python bench/state.py [--items 100000] [--transitions 300000] [--tasks 256]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine  # noqa: E402

from pixbatch import state as st  # noqa: E402

TARGET = 10_000


def measure(path: Path, *, n_items: int = 100_000, transitions: int = 300_000, tasks: int = 256) -> float:
    """Transitions per second through a fresh store at ``path``."""
    store = st.Store.open(path)
    try:
        store.call_sync(lambda db: st.bulk_insert_items_for_bench(db, n_items))
        rows = store.call_sync(lambda db: st.select_rows(db, "i.scope = 'bench'", []))
        per_task = transitions // tasks

        async def worker(w: int) -> None:
            intent = None
            for j in range(per_task):
                r = rows[(w * per_task + j // 3) % len(rows)]
                step = j % 3
                r.polls += 1
                if step == 0:  # the intent: awaited
                    r.state, r.attempts = st.SUBMITTING, r.attempts + 1
                    intent = st.Intent(r.key, r.attempts, "bench", st.utcnow(), 10_000)
                    fut = store.put_item(r, wait=True, intent=intent)
                    await (fut if isinstance(fut, asyncio.Future) else asyncio.wrap_future(fut))
                elif step == 1:  # the request id: logged, not awaited
                    r.state, r.request_id = st.SUBMITTED, f"p-image_{r.key[:12]}"
                    store.put_item(r, attempt=st.Attempt.of(intent, "accepted", request_id=r.request_id,
                                                            accepted_at=st.utcnow(), http_status=202))
                else:
                    r.state = st.COMPLETED
                    store.put_item(r)
                store.put_event("bench", r.key, "state", {"state": r.state})

        async def main() -> None:
            store.bind_loop(asyncio.get_running_loop())
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
    print(f"machine: {machine()}")
    with tempfile.TemporaryDirectory() as d:
        rate = measure(Path(d) / "bench.duckdb", n_items=a.items, transitions=a.transitions, tasks=a.tasks)
    print(f"items {a.items:,}  transitions {a.transitions:,}  tasks {a.tasks}  ->  {rate:,.0f} transitions/s")
    ok = rate >= TARGET
    print(f"verdict: {'PASS' if ok else 'FAIL'} (target >= {TARGET:,}/s)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
