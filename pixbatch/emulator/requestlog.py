"""Ground truth for tests: every submit the gateway received, and what it answered.

The ledger says what was charged; this log says what reached the gateway at all. Each
submit, refused or accepted, is one ``Received`` entry: when, with which key, for which
operation, what was answered (status code, the form of the answer, Retry-After) and
why (``reason``), and, when a job was created, its request_id. The body is identified
by its SHA-256 and its first input URL, and the callback URL exactly as sent, so a test
can tell which of its items reached the gateway (an attempt token in the callback URL
identifies one send exactly).

Requests for paths the gateway does not serve are logged too (``Stray``), with whether
they carried the subscription key: a client steered by a hostile ``request_id`` or
``polling_url`` shows up there.

``GET /_emulator/requests[?since=N]`` answers ``{"submits": [...], "strays": [...],
"totals": {...}}``; each submit also says how its job settled so far (``settled``: the
terminal status, ``charged_micros``), from the wallet. ``RunningEmulator.requests()``
parses it into a ``RequestLog`` snapshot.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

# why a submit got its answer
ACCEPTED = "accepted"
REASONS = (ACCEPTED, "missing_key", "unknown_key", "forbidden_key", "quota", "rate_window", "rate_limit",
           "throttle", "scripted", "injected_500", "bad_json", "model_disabled", "invalid", "webhook_rejected",
           "insufficient_balance")
# the form of the answer
JSON, HTML, GARBAGE, DROPPED = "json", "html", "garbage", "dropped"


@dataclass(slots=True)
class Received:
    seq: int
    at: str  # ISO-8601 UTC, wall clock
    op: str
    key: str | None  # the key if it is one the emulator knows, "<unknown>", or None when missing
    body_sha256: str
    image: str | None  # the first input URL, when the body parsed
    webhook_url: str | None  # X-Webhook-URL exactly as sent
    code: int = 0
    reason: str = ""
    answer: str = JSON
    retry_after: str | None = None
    request_id: str | None = None  # the job's id (the one the ledger uses), when one was created
    settled: str | None = None  # filled in when read: the job's terminal status so far
    charged_micros: int | None = None

    @property
    def accepted(self) -> bool:
        return self.request_id is not None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Received:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__})


@dataclass(frozen=True, slots=True)
class Stray:
    seq: int
    at: str
    method: str
    path: str
    query: str
    had_key: bool

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Stray:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__})


@dataclass
class RequestLog:
    """The emulator's log (mutable, on its event loop); ``snapshot`` is what a client reads."""

    submits: list[Received] = field(default_factory=list)
    strays: list[Stray] = field(default_factory=list)

    def add(self, entry: Received) -> Received:
        self.submits.append(entry)
        return entry

    def stray(self, at: str, method: str, path: str, query: str, had_key: bool) -> None:
        self.strays.append(Stray(len(self.strays), at, method, path, query, had_key))

    def to_dict(self, since: int, settled: dict[str, tuple[str, int]]) -> dict[str, Any]:
        out = []
        for e in self.submits[since:]:
            d = e.to_dict()
            if e.request_id in settled:
                d["settled"], d["charged_micros"] = settled[e.request_id]
            out.append(d)
        by_reason: dict[str, int] = {}
        for e in self.submits:
            by_reason[e.reason] = by_reason.get(e.reason, 0) + 1
        return {
            "submits": out,
            "strays": [asdict(s) for s in self.strays],
            "totals": {"received": len(self.submits), "accepted": sum(1 for e in self.submits if e.accepted),
                       "by_reason": by_reason, "strays": len(self.strays),
                       "strays_with_key": sum(1 for s in self.strays if s.had_key)},
        }


@dataclass(frozen=True, slots=True)
class ReceivedLog:
    """A snapshot of ``GET /_emulator/requests``, as ``RunningEmulator.requests()`` returns it."""

    submits: tuple[Received, ...]
    strays: tuple[Stray, ...]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ReceivedLog:
        return cls(tuple(Received.from_dict(e) for e in d["submits"]), tuple(Stray.from_dict(s) for s in d["strays"]))

    def accepted(self) -> tuple[Received, ...]:
        return tuple(e for e in self.submits if e.accepted)

    def refused(self) -> tuple[Received, ...]:
        return tuple(e for e in self.submits if not e.accepted)

    def by_reason(self, reason: str) -> tuple[Received, ...]:
        return tuple(e for e in self.submits if e.reason == reason)

    def received_images(self) -> set[str]:
        return {e.image for e in self.submits if e.image is not None}
