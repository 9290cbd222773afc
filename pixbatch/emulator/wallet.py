"""The emulated account: a balance in micro-dollars, reservations, and the ledger.

The gateway checks the balance when a request is submitted (402 when it cannot pay)
and charges when the request reaches a terminal status. The emulator mirrors that:
``reserve`` at submit holds the most the request may cost (so many in-flight jobs
cannot overdraw the wallet together), ``settle`` at the terminal status releases the
hold and charges what the price table says for that status and the real output size.
Every settlement, charged or not, is one ``LedgerEntry``; ``settle`` refuses a second
settlement of the same request, which is what makes "charged exactly once" checkable.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    seq: int
    request_id: str
    model: str
    status: str
    amount_micros: int
    output_width: int | None
    output_height: int | None
    at: str  # ISO-8601 UTC

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LedgerEntry:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__})


@dataclass(frozen=True, slots=True)
class Ledger:
    """A snapshot of the wallet, as ``GET /_emulator/ledger`` answers it."""

    entries: tuple[LedgerEntry, ...]
    starting_balance_micros: int
    topups_micros: int
    charged_micros: int
    reserved_micros: int
    balance_micros: int

    def charged_by_request(self) -> dict[str, int]:
        return {e.request_id: e.amount_micros for e in self.entries}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Ledger:
        t = d["totals"]
        return cls(
            entries=tuple(LedgerEntry.from_dict(e) for e in d["entries"]),
            starting_balance_micros=t["starting_balance_micros"],
            topups_micros=t["topups_micros"],
            charged_micros=t["charged_micros"],
            reserved_micros=t["reserved_micros"],
            balance_micros=d["balance_micros"],
        )


class DoubleCharge(RuntimeError):
    """A request was settled twice: a bug in the emulator, never a client's fault."""


@dataclass
class Wallet:
    starting_balance_micros: int
    balance_micros: int = -1
    reserved_micros: int = 0
    topups_micros: int = 0
    charged_micros: int = 0
    entries: list[LedgerEntry] = field(default_factory=list)
    _settled: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        if self.balance_micros == -1:
            self.balance_micros = self.starting_balance_micros

    @property
    def available_micros(self) -> int:
        return self.balance_micros - self.reserved_micros

    def can_reserve(self, micros: int) -> bool:
        return self.available_micros >= micros

    def reserve(self, micros: int) -> None:
        self.reserved_micros += micros

    def topup(self, micros: int) -> None:
        self.topups_micros += micros
        self.balance_micros += micros

    def settle(self, *, request_id: str, model: str, status: str, reserved_micros: int, amount_micros: int,
               output_size: tuple[int, int] | None, at: str) -> LedgerEntry:
        if request_id in self._settled:
            raise DoubleCharge(f"request {request_id} was already settled")
        self._settled.add(request_id)
        self.reserved_micros -= reserved_micros
        self.balance_micros -= amount_micros
        self.charged_micros += amount_micros
        entry = LedgerEntry(
            seq=len(self.entries), request_id=request_id, model=model, status=status, amount_micros=amount_micros,
            output_width=output_size[0] if output_size else None,
            output_height=output_size[1] if output_size else None, at=at,
        )
        self.entries.append(entry)
        return entry

    def to_dict(self, since: int = 0) -> dict[str, Any]:
        by_status: dict[str, dict[str, int]] = {}
        by_model: dict[str, dict[str, int]] = {}
        for e in self.entries:
            for table, k in ((by_status, e.status), (by_model, e.model)):
                row = table.setdefault(k, {"count": 0, "amount_micros": 0})
                row["count"] += 1
                row["amount_micros"] += e.amount_micros
        return {
            "entries": [e.to_dict() for e in self.entries[since:]],
            "balance_micros": self.balance_micros,
            "totals": {
                "starting_balance_micros": self.starting_balance_micros,
                "topups_micros": self.topups_micros,
                "charged_micros": self.charged_micros,
                "reserved_micros": self.reserved_micros,
                "available_micros": self.available_micros,
                "settled": len(self.entries),
                "charged_requests": sum(1 for e in self.entries if e.amount_micros),
                "by_status": by_status,
                "by_model": by_model,
            },
        }
