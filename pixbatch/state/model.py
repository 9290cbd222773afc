"""The values of the state file: item states, and the rows the store reads and writes.

``ItemState`` is the lifecycle of one request in ``items.state`` (``migrations.m002_run_state``
draws it). Its members are strings (``StrEnum``): they compare equal to what DuckDB returns,
so a row read from the file needs no conversion. The state sets below are derived from it;
``sql_in`` spells one for a query.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from enum import StrEnum
from typing import Any


class ItemState(StrEnum):
    """pixbatch's own lifecycle of a request (a run's summary counts them in this order)."""

    PENDING = "PENDING"  # not sent yet
    SUBMITTING = "SUBMITTING"  # intent and reservation committed, the POST on its way
    SUBMITTED = "SUBMITTED"  # the 202's request id committed: polled, never resent
    COMPLETED = "COMPLETED"  # the gateway's terminal statuses
    FAILED = "FAILED"
    ERROR = "ERROR"
    AMBIGUOUS = "AMBIGUOUS"  # the POST may have been accepted (and charged): resent only on request
    FAILED_VALIDATION = "FAILED_VALIDATION"  # the gateway refused it (400/404): not charged
    BAD_INPUT = "BAD_INPUT"  # an input URL is unreachable or not an image (preflight): never sent, not charged
    BLOCKED = "BLOCKED"  # its upstream item ended in a blocking state


#: an upstream item in one of these states blocks its downstream items
BLOCKING = frozenset({ItemState.FAILED, ItemState.ERROR, ItemState.FAILED_VALIDATION, ItemState.BAD_INPUT,
                      ItemState.BLOCKED, ItemState.AMBIGUOUS})
#: settled for good: a run changes them only when told to (--force, --retry-failed, --retry-errors);
#: BAD_INPUT items are checked again by every run (their inputs may have been fixed)
TERMINAL = frozenset({ItemState.COMPLETED, ItemState.FAILED, ItemState.ERROR, ItemState.FAILED_VALIDATION,
                      ItemState.BAD_INPUT, ItemState.BLOCKED})
#: sent (or being sent) and not settled: their reservation is committed money
IN_FLIGHT = frozenset({ItemState.SUBMITTING, ItemState.SUBMITTED})
#: failed by themselves (BLOCKED items failed because of another one)
FAILURES = BLOCKING - {ItemState.BLOCKED}
#: what a run still has to do: send them, or collect them
REMAINING = IN_FLIGHT | {ItemState.PENDING}


def sql_in(states: Iterable[str]) -> str:
    """``('A', 'B')``: a state set as an SQL list, in a stable order."""
    return "(" + ", ".join(f"'{ItemState(s).value}'" for s in sorted(states)) + ")"


def utcnow() -> datetime:
    """Naive UTC (DuckDB TIMESTAMP)."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


def iso_utc(dt: datetime) -> str:
    """A naive UTC timestamp as ISO 8601 with a ``Z``."""
    return dt.replace(tzinfo=timezone.utc).isoformat().replace("+00:00", "Z")


# -- rows ---------------------------------------------------------------------------------

#: the columns of ``items`` a run changes, with their DuckDB types (snapshot order)
MUTABLE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("state", "VARCHAR"), ("request_id", "VARCHAR"), ("gateway_status", "VARCHAR"), ("error", "VARCHAR"),
    ("reserved_micros", "BIGINT"), ("charged_micros", "BIGINT"), ("tier", "VARCHAR"),
    ("media_url", "VARCHAR"), ("media_type", "VARCHAR"), ("output_width", "INTEGER"),
    ("output_height", "INTEGER"), ("polls", "INTEGER"), ("submitted_at", "TIMESTAMP"),
    ("started_at", "TIMESTAMP"), ("finished_at", "TIMESTAMP"), ("run_id", "VARCHAR"),
    ("attempts", "INTEGER"), ("polling_path", "VARCHAR"),
)
_FIXED = ("key", "step", "op", "idx", "body", "output_name", "upstream", "input_width", "input_height",
          "est_low_micros", "est_high_micros")
#: the columns of ``items`` an ``ItemRow`` holds, in its field order
ROW_COLUMNS = _FIXED + tuple(c for c, _ in MUTABLE_COLUMNS)


@dataclass(slots=True)
class ItemRow:
    """The runner's working copy of one ``items`` row (mutable; snapshotted when queued).

    ``state`` holds an ``ItemState`` or the same string as read from the file (they are equal).
    """

    key: str
    step: str
    op: str
    idx: int
    body: str  # canonical JSON, upstream placeholders kept
    output_name: str | None
    upstream: str | None
    input_width: int | None
    input_height: int | None
    est_low_micros: int
    est_high_micros: int
    state: str = ItemState.PENDING
    request_id: str | None = None
    gateway_status: str | None = None
    error: str | None = None
    reserved_micros: int = 0
    charged_micros: int | None = None
    tier: str | None = None
    media_url: str | None = None
    media_type: str | None = None
    output_width: int | None = None
    output_height: int | None = None
    polls: int = 0
    submitted_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    run_id: str | None = None
    attempts: int = 0
    polling_path: str | None = None
    rowid: int | None = None  # DuckDB's row id, for fast updates (checked against the key)

    def snapshot(self) -> tuple:
        """(key, rowid, mutable columns...): what the writer thread commits."""
        return (self.key, self.rowid) + tuple(getattr(self, c) for c, _ in MUTABLE_COLUMNS)

    @property
    def input_size(self) -> tuple[int, int] | None:
        return (self.input_width, self.input_height) if self.input_width and self.input_height else None

    @property
    def body_dict(self) -> dict[str, Any]:
        return json.loads(self.body)

    @classmethod
    def from_db(cls, row: tuple) -> ItemRow:
        """From ``SELECT <ROW_COLUMNS>, rowid``."""
        r = cls(*row)
        r.polls = r.polls or 0
        r.attempts = r.attempts or 0
        r.reserved_micros = r.reserved_micros or 0
        return r


@dataclass(frozen=True, slots=True)
class Intent:
    """A submit about to be sent: its ``submit_log`` row is committed before the POST leaves."""

    key: str
    n: int  # the item's attempt number (items.attempts after this submit)
    run_id: str
    intent_at: datetime
    reserved_micros: int


@dataclass(frozen=True, slots=True)
class Attempt:
    """A submit's outcome: its ``submit_log`` row is committed as soon as it is known (the
    ``attempts`` view shows intent and outcome side by side)."""

    key: str
    n: int
    run_id: str
    intent_at: datetime
    reserved_micros: int
    request_id: str | None = None
    accepted_at: datetime | None = None
    http_status: int | None = None
    outcome: str | None = None  # accepted|rejected|ambiguous (|abandoned, set later)
    polling_path: str | None = None  # of an accepted one

    @classmethod
    def of(cls, intent: Intent, outcome: str, **kw: Any) -> Attempt:
        return cls(intent.key, intent.n, intent.run_id, intent.intent_at, intent.reserved_micros, outcome=outcome, **kw)


@dataclass(frozen=True, slots=True)
class OutputRow:
    """A file written for an item (``outputs``)."""

    key: str
    path: str  # relative to the output directory
    sha256: str
    bytes: int
    width: int | None
    height: int | None
    media_type: str | None


@dataclass(frozen=True, slots=True)
class Totals:
    """Money in the whole state file (micro-dollars)."""

    charged_micros: int
    reserved_micros: int  # SUBMITTING/SUBMITTED reservations plus AMBIGUOUS ones (money at risk)
    abandoned_micros: int  # reservations of ambiguous attempts that were resent (--retry-ambiguous)
    at_risk_micros: int  # reservations of AMBIGUOUS items (part of reserved_micros)

    @property
    def committed_micros(self) -> int:
        """What the budget must cover: spent, plus everything that may still be charged."""
        return self.charged_micros + self.reserved_micros + self.abandoned_micros


@dataclass(frozen=True, slots=True)
class IngestResult:
    scope: str
    items: int  # unique items in the manifest
    new: int  # inserted now
    aliases: int
    reused: bool  # the expansion was unchanged: nothing written
