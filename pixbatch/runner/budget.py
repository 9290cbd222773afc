"""The budget ledger: what is committed (charged + reserved) against an optional cap.

Pure and synchronous. ``committed`` covers the whole state file (charged, reserved for items
in flight, abandoned reservations of AMBIGUOUS items): it is loaded when the run starts and
kept here. Checking ``committed + price <= cap`` and reserving the price is one synchronous
step (``try_reserve``), so no interleaving of tasks on the event loop can overshoot; and
because each reservation is committed with the item's submit intent, neither can a crash.

- ``try_reserve(amount)``: reserve the item's HIGH price if it fits; False otherwise.
- ``release(amount)``: the request was definitely not accepted: give the reservation back.
- ``settle(reserved, charge)``: the gateway's final answer: the reservation becomes the charge.

The invariant: nothing this ledger adds takes ``committed`` over the cap. It is checked on
every increase (a reservation, a charge above its reservation): breaking it is a bug in
pixbatch, never a user error, so it raises ``AssertionError``. ``committed`` may start above
the cap (a resume with a budget lowered below what earlier runs committed): the items in
flight then settle and release as usual (each only lowers it or keeps it), and nothing new
fits.
"""

from __future__ import annotations


class BudgetLedger:
    def __init__(self, cap: int | None, committed: int = 0):
        self.cap = cap
        self.committed = committed
        self.peak = committed

    def fits(self, amount: int) -> bool:
        return self.cap is None or self.committed + amount <= self.cap

    def try_reserve(self, amount: int) -> bool:
        if not self.fits(amount):
            return False
        self._change(amount)
        return True

    def release(self, amount: int) -> None:
        self._change(-amount)

    def settle(self, reserved: int, charge: int) -> None:
        self._change(charge - reserved)

    def _change(self, delta: int) -> None:
        self.committed += delta
        self.peak = max(self.peak, self.committed)
        if delta > 0 and self.cap is not None and self.committed > self.cap:
            raise AssertionError(f"budget invariant broken: committed {self.committed} > budget {self.cap}")
