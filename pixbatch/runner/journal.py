"""What a run writes down as it goes: item states, events, HTTP exchanges.

Everything goes through the store's writer (``put_item``, ``put_event``) and is shown to the
progress. Every HTTP exchange is counted (``http``: "POST 202" -> n, in the run's end event);
the state file keeps the ones that went wrong (no answer, or not 2xx) one by one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .. import state as st
from ..gateway import Exchange
from ..progress import Progress


class Journal:
    def __init__(self, store: st.Store, progress: Progress, run_id: str, committed: Callable[[], int]):
        self.store = store
        self.progress = progress
        self.run_id = run_id
        self.committed = committed  # the ledger's committed money, shown with each state change
        self.http: dict[str, int] = {}
        self.answered = 0  # exchanges the gateway answered (any status): it can be reached
        self.last_error: str | None = None  # the latest failed exchange, as the user should see it
        self.last_error_at: str | None = None  # when (ISO 8601 UTC)

    def emit(self, kind: str, key: str | None, **detail: Any) -> None:
        self.store.put_event(self.run_id, key, kind, detail)
        self.progress.event(kind, key, detail)

    def put(self, row: st.ItemRow, *, wait: bool = False, attempt: st.Attempt | None = None,
            intent: st.Intent | None = None, **event: Any) -> Any:
        """Queue the item's new state (with its submit-log row); ``wait``: a future of its commit."""
        row.run_id = self.run_id
        fut = self.store.put_item(row, wait=wait, attempt=attempt, intent=intent)
        self.emit("state", row.key, state=row.state, step=row.step, committed=self.committed(), **event)
        return fut

    def on_exchange(self, ex: Exchange) -> None:
        tag = f"{ex.method} {ex.status if ex.status is not None else 'none'}"
        self.http[tag] = self.http.get(tag, 0) + 1
        d = {"method": ex.method, "path": ex.path, "status": ex.status, "ms": ex.ms}
        if ex.error:
            d["error"] = ex.error
        if ex.status is not None:
            self.answered += 1
        if ex.status is None or not 200 <= ex.status < 300:
            self.store.put_event(self.run_id, None, "http", d)
            self.last_error = f"{ex.method} {ex.path}: " + (f"HTTP {ex.status}" if ex.status is not None else
                                                            ex.error or "no answer")
            self.last_error_at = st.iso_utc(st.utcnow())
        self.progress.event("http", None, d)
