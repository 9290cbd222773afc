"""What a state file holds of a manifest's items, as a plan counts them.

An item already in the state file is *paid* (COMPLETED or FAILED with a charge: reused, not
charged again), *in flight* (sent and not settled: its reservation), *at risk* (AMBIGUOUS:
it may have been charged) or *not sent again* (ERROR, FAILED_VALIDATION, BAD_INPUT, BLOCKED, or
waiting on an upstream that ended so); only a PENDING item, or one not there at all, is still to pay
(``category``). ``StateView`` is the lookup by key the estimate's walk of a manifest asks
per item; ``read_state`` opens a state file for it, with what its completed items taught
(``knowledge.learn``). The run builds the same plan from the state file alone
(``state.plan_groups``, ``estimate.plan_from_groups``).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from .knowledge import Knowledge
from .pricing import PriceTable
from .sizes import Size

#: what the state file says about an item already there, as the plan counts it
PAID, IN_FLIGHT, AT_RISK, NOT_SENT = "paid", "in_flight", "at_risk", "not_sent"
CATEGORIES: dict[str, str] = {
    PAID: "already paid (reused, not charged again)",
    IN_FLIGHT: "in flight (sent, not settled: reserved)",
    AT_RISK: "AMBIGUOUS (may have been charged: at risk; --retry-ambiguous resends them)",
    NOT_SENT: "not sent again: ended ERROR, FAILED_VALIDATION, BAD_INPUT or BLOCKED (not charged; --retry-errors, "
              "--force; a BAD_INPUT input is checked again by every run)",
}
_STATES = ("PENDING", "SUBMITTING", "SUBMITTED", "COMPLETED", "FAILED", "ERROR", "AMBIGUOUS", "FAILED_VALIDATION",
           "BAD_INPUT", "BLOCKED")
#: an upstream in one of these states blocks its downstream items (``state.BLOCKING``, kept equal by a test)
BLOCKING = frozenset({"FAILED", "ERROR", "FAILED_VALIDATION", "BAD_INPUT", "BLOCKED", "AMBIGUOUS"})


def category(state: str, charged: bool) -> str | None:
    """The plan's category of an item in ``state`` (None: PENDING, still to pay)."""
    if state == "PENDING":
        return None
    if state in ("COMPLETED", "FAILED"):
        return PAID if charged else IN_FLIGHT  # a terminal item without a charge is settled by reconcile
    if state in ("SUBMITTING", "SUBMITTED"):
        return IN_FLIGHT
    if state == "AMBIGUOUS":
        return AT_RISK
    return NOT_SENT


class StateView:
    """The items of a state file that are not PENDING, by key: what the estimate's walk asks per item.

    One packed integer per item (state, charged?, money, output size), so a finished run of a
    million items costs about a hundred MB here, and a fresh state file nothing.
    """

    def __init__(self, rows: Iterable[tuple[str, str, bool, int, int, int]] = (), path: str | None = None):
        self.path = path
        self._by: dict[int, int] = {}
        index = {s: i for i, s in enumerate(_STATES)}
        for key, state, charged, money, w, h in rows:
            self._by[int(key, 16)] = (index.get(state, len(_STATES) - 1) | (charged << 4) | (int(money) << 5)
                                      | (int(w) << 50) | (int(h) << 70))

    def __len__(self) -> int:
        return len(self._by)

    def of(self, key: str) -> tuple[str, bool, int] | None:
        """(state, charged, money) of an item, None when it is not there (or PENDING)."""
        v = self._by.get(int(key, 16))
        if v is None:
            return None
        return _STATES[v & 15], bool(v >> 4 & 1), v >> 5 & ((1 << 45) - 1)

    def output_of(self, key: str) -> Size | None:
        """The real output size of an item that COMPLETED, when it was recorded."""
        v = self._by.get(int(key, 16))
        if v is None or _STATES[v & 15] != "COMPLETED":
            return None
        w, h = v >> 50 & ((1 << 20) - 1), v >> 70 & ((1 << 20) - 1)
        return (w, h) if w and h else None


def read_state(path: Path, table: PriceTable) -> tuple[StateView | None, Knowledge, str | None]:
    """What a state file holds for a plan: (its items by key, what they taught, a note when it cannot be read)."""
    if not path.exists():
        return None, Knowledge(), None
    import duckdb

    from . import state as st
    from .errors import StateError, StateLocked
    from .knowledge import learn

    try:
        db = st.open_for_reading(path)
    except StateLocked as exc:
        return None, Knowledge(), (f"{exc} This estimate prices every item as new; the run holding the file "
                                   "prints its own plan.")
    except StateError as exc:
        return None, Knowledge(), f"{exc} Every item is priced as new."
    try:
        if "items" not in st.table_names(db):
            return None, Knowledge(), None
        return (StateView(st.touched_items(db), str(path)), learn(st.size_observations(db), table), None)
    except duckdb.Error as exc:
        return None, Knowledge(), f"state file {path} could not be read ({exc}); every item is priced as new."
    finally:
        db.close()
