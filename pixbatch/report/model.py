"""The report's data: frozen dataclasses (``Report`` and its parts), the causes of a
difference between estimate and spend (``CAUSES``), and the audit queries shown with it.

No I/O here: ``queries.py`` fills these from the state file, ``build.py`` assembles them,
and the renderers (``pixbatch.render``) read them.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from ..state.model import FAILURES, IN_FLIGHT, ItemState

#: The states of ``items.state`` (``state.ItemState``), in the order reports show them: the enum's.
STATE_ORDER: tuple[str, ...] = tuple(s.value for s in ItemState)
IN_FLIGHT_STATES: tuple[str, ...] = tuple(s.value for s in ItemState if s in IN_FLIGHT)
#: grouped by message under "Failures" (BLOCKED items are listed apart, by why)
FAILURE_STATES: tuple[str, ...] = tuple(s.value for s in ItemState if s in FAILURES)

#: Why an item's spend differs from its estimate. Order is the order shown.
CAUSES: dict[str, str] = {
    "as_estimated": "completed at the estimated price",
    "learned_upstream": "completed; estimated as a range from its upstream's predicted output size, priced by the "
                        "upstream's real output",
    "range_resolved": "completed; priced as a range (size unknown, or between the readings of a tier boundary), "
                      "the real size fixed the price",
    "tier_changed": "completed; the real output size put it in another price tier than estimated",
    "failed_charged": "FAILED: the gateway charges failed requests",
    "sent_again": "sent and charged more than once (a rerun with --force pays again)",
    "error_not_charged": "ERROR: system error, not charged",
    "rejected_not_charged": "FAILED_VALIDATION: rejected by the gateway (400), not charged",
    "bad_input_not_sent": "BAD_INPUT: an input could not be fetched or is not an image; never sent",
    "blocked_not_spent": "BLOCKED: an upstream item did not complete; never sent",
    "pending_not_spent": "PENDING: not sent yet",
    "in_flight": "SUBMITTING/SUBMITTED: in flight, charge not settled yet (reserved)",
    "ambiguous_at_risk": "AMBIGUOUS: the submit may have been accepted and charged (at risk)",
    "unsettled": "terminal, but the charge was not recorded: run `pixbatch reconcile`",
    "other": "in a state this report does not know",
}

#: Example queries for the audit trail; shown in the md/html footer and the README.
AUDIT_SQL: tuple[tuple[str, str], ...] = (
    ("Every state change of one item, in order (failed HTTP exchanges: kind = 'http', key NULL)",
     "SELECT seq, ts, run_id, kind, detail FROM events WHERE key = '<item key>' ORDER BY seq;"),
    ("Every request sent (one row per submit attempt, with its request_id; a view of submit_log)",
     "SELECT key, n, run_id, intent_at, request_id, http_status, outcome FROM attempts ORDER BY intent_at;"),
    ("Charged per step and tier (micro-dollars)",
     "SELECT step, tier, count(*) AS items, sum(charged_micros) AS charged_micros\n"
     "FROM items GROUP BY ALL ORDER BY ALL;"),
    ("Failures by message",
     "SELECT state, error, count(*) AS n FROM items\n"
     "WHERE state IN ('FAILED', 'ERROR', 'FAILED_VALIDATION') GROUP BY ALL ORDER BY n DESC;"),
    ("Where an item's output is",
     "SELECT i.step, i.input_id, o.path, o.sha256, o.bytes FROM items i JOIN outputs o USING (key)\n"
     "WHERE i.input_id = '<input id>';"),
)



@dataclass(frozen=True, slots=True)
class RunInfo:
    run_id: str
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    outcome: str | None
    manifest_path: str | None
    base_url: str | None
    budget_micros: int | None
    estimate_low_micros: int | None
    estimate_high_micros: int | None
    # what this run's settlements charged (the "charged" of its events); None when it recorded none
    charged_micros: int | None = None


@dataclass(frozen=True, slots=True)
class SpendLine:
    """Spend of one (step, operation, price tier); the tier is the actual one once known."""

    step: str
    op: str
    tier: str
    items: int
    est_low_micros: int
    est_high_micros: int
    charged_micros: int  # settled charges
    charged_items: int  # items with a charge > 0
    not_charged_items: int  # ERROR, FAILED_VALIDATION
    not_charged_est_micros: int  # what those would have cost (their estimate, high)
    at_risk_items: int  # AMBIGUOUS
    at_risk_micros: int  # their reservation, else their estimate (high)
    in_flight_items: int  # SUBMITTING, SUBMITTED
    reserved_micros: int  # their reservation, else their estimate (high)
    unspent_items: int  # PENDING, BLOCKED, BAD_INPUT
    unspent_est_micros: int  # their estimate (high)
    unsettled_items: int  # terminal without a recorded charge


@dataclass(frozen=True, slots=True)
class StepSpend:
    """Per step totals (for the chart and the summary)."""

    step: str
    items: int
    est_low_micros: int
    est_high_micros: int
    charged_micros: int
    planned_low_micros: int | None = None  # this step's lines of an ``Estimate`` passed to build_report
    planned_high_micros: int | None = None


@dataclass(frozen=True, slots=True)
class Variance:
    """One cause of the difference between estimate and spend."""

    cause: str  # a key of CAUSES
    explanation: str
    items: int
    est_low_micros: int
    est_high_micros: int
    charged_micros: int
    examples: tuple[str, ...] = ()  # a few items that moved: name, estimate, charge, and the size that decided it

    @property
    def delta_micros(self) -> int:
        """Charged minus the estimate's upper bound (negative: spent less)."""
        return self.charged_micros - self.est_high_micros


@dataclass(frozen=True, slots=True)
class SpendTotals:
    items: int
    est_low_micros: int
    est_high_micros: int
    charged_micros: int
    charged_items: int
    not_charged_items: int
    not_charged_est_micros: int
    at_risk_items: int
    at_risk_micros: int
    in_flight_items: int
    reserved_micros: int
    unspent_items: int
    unspent_est_micros: int
    unsettled_items: int
    budget_micros: int | None
    abandoned_attempts: int = 0  # AMBIGUOUS attempts that were resent: may have been charged too
    abandoned_micros: int = 0  # their reservations (at risk, on top of at_risk_micros)

    @property
    def delta_micros(self) -> int:
        return self.charged_micros - self.est_high_micros


@dataclass(frozen=True, slots=True)
class Spend:
    lines: tuple[SpendLine, ...]
    steps: tuple[StepSpend, ...]
    variance: tuple[Variance, ...]  # sums to totals: est_high + sum(delta) == charged
    totals: SpendTotals
    planned_low_micros: int | None = None  # from an ``Estimate`` passed to build_report
    planned_high_micros: int | None = None


@dataclass(frozen=True, slots=True)
class StatusCount:
    step: str
    state: str
    count: int


@dataclass(frozen=True, slots=True)
class Example:
    key: str
    step: str
    input_id: str | None
    output_name: str | None
    upstream: str | None = None  # a BLOCKED item's upstream: its output name (else its key)


@dataclass(frozen=True, slots=True)
class IssueGroup:
    """Items of one state with the same error message."""

    state: str
    message: str
    count: int
    examples: tuple[Example, ...]


@dataclass(frozen=True, slots=True)
class Status:
    counts: tuple[StatusCount, ...]  # per step and state
    steps: tuple[str, ...]  # in manifest order
    by_state: tuple[tuple[str, int], ...]  # totals per state
    failures: tuple[IssueGroup, ...]  # FAILED, ERROR, FAILED_VALIDATION, AMBIGUOUS, and COMPLETED items whose
    # output failed its checks ("output check: ..."); biggest first
    blocked: tuple[IssueGroup, ...]  # BLOCKED, grouped by why
    more_failure_groups: int = 0  # groups not listed (limit)
    more_blocked_groups: int = 0

    def count(self, step: str | None = None, state: str | None = None) -> int:
        return sum(c.count for c in self.counts
                   if (step is None or c.step == step) and (state is None or c.state == state))


@dataclass(frozen=True, slots=True)
class StepTiming:
    """Milliseconds.

    queue (submitted -> first seen PROCESSING) and processing (first seen PROCESSING -> terminal
    status seen) are what polls saw: only items a poll caught PROCESSING count (``*_n``), and a
    figure is as coarse as the polling. gateway: created_at -> completed_at of the status
    payload (queue and processing together, as the gateway measured them), when it carried both.
    """

    step: str
    finished: int  # items with a terminal status seen
    queue_n: int
    queue_p50_ms: int | None
    queue_p95_ms: int | None
    processing_n: int
    processing_p50_ms: int | None
    processing_p95_ms: int | None
    gateway_n: int = 0
    gateway_p50_ms: int | None = None
    gateway_p95_ms: int | None = None


@dataclass(frozen=True, slots=True)
class ThroughputBucket:
    start: dt.datetime
    completed: int
    failed: int  # FAILED or ERROR


@dataclass(frozen=True, slots=True)
class Timing:
    steps: tuple[StepTiming, ...]  # plus an "(all)" row last
    bucket_seconds: int
    buckets: tuple[ThroughputBucket, ...]
    first_finished_at: dt.datetime | None
    last_finished_at: dt.datetime | None


@dataclass(frozen=True, slots=True)
class OutputFile:
    key: str
    step: str
    input_id: str | None
    path: str
    sha256: str
    bytes: int
    width: int | None
    height: int | None
    media_type: str | None


@dataclass(frozen=True, slots=True)
class Outputs:
    count: int
    total_bytes: int
    files: tuple[OutputFile, ...]  # the first ``outputs_limit`` (all when the limit is None)
    output_dir: str | None  # where paths are relative to, when the run recorded it

    @property
    def truncated(self) -> bool:
        return len(self.files) < self.count


@dataclass(frozen=True, slots=True)
class FailedItem:
    """One item that did not complete (or whose output failed its checks): ``pixbatch failures``."""

    kind: str  # failed | blocked | unsent | check-failed | at-risk
    state: str
    step: str
    output_name: str | None
    input_id: str | None
    input_url: str | None  # the item's own input URL (None: it feeds on an upstream item)
    upstream: str | None  # the upstream item's output name (a chained step)
    upstream_state: str | None
    error: str | None
    charged_micros: int | None
    key: str
    upstream_error: str | None = None  # why the upstream item did not complete (a BLOCKED item)


@dataclass(frozen=True, slots=True)
class RunRow:
    """One run of a state file (``pixbatch runs``)."""

    run_id: str
    started_at: dt.datetime | None
    ended_at: dt.datetime | None  # finished_at, else (a killed run) its last recorded activity
    outcome: str | None
    items: int  # items it sent (submit attempts' distinct items)
    charged_micros: int  # what its settlements charged
    manifest_path: str | None


@dataclass(frozen=True, slots=True)
class Report:
    state_path: str
    generated_at: dt.datetime
    scope_run_id: str | None  # --run: only the items that run touched
    run: RunInfo | None  # the run asked for, else the latest
    runs: int  # runs recorded in the state file
    spend: Spend
    status: Status
    timing: Timing
    outputs: Outputs
    notes: tuple[str, ...]
    audit_sql: tuple[tuple[str, str], ...] = AUDIT_SQL
    live: bool = False  # built from the status file of a run that holds the state file (partial)
    scope: str | None = None  # the expansion (manifest version) reported on; None: every item
    excluded_items: int = 0  # items of other manifest versions, not in this report (see all_items)
    excluded_charged_micros: int = 0
    gallery: Any = None  # a ``gallery.Gallery`` when asked for (the HTML page shows it)
