"""What a run cost, what happened, how long it took and where the files are: read from the state file.

``build_report(state)`` (``build.py``) runs a handful of aggregate queries (``queries.py``)
against the DuckDB state file (``migrations.m002_run_state``) and returns a ``Report``
(``model.py``): frozen dataclasses, no I/O left to do. Renderers (``pixbatch.render``) are
pure functions ``Report -> str``. Everything is computed in SQL, so a run of millions of
items costs a few grouped rows of Python memory; only the outputs listing is limited
(``outputs_limit``), because a table of a million files is not something a person reads
(JSON/CSV ask for all of them with ``None``).

Money is integer micro-dollars throughout.

Spend. Every item falls in exactly one *cause* (``CAUSES``): the estimate's upper bound
(``sum(est_high_micros)``) minus what each cause did not spend, plus what it spent above
its estimate, adds up to the charged total, to the micro-dollar. That is the "difference
explained": a completed item priced as a range (input size unknown) whose real size fixed
the price, a completed item whose real output size moved it to another tier, FAILED items
(charged, per the price table), ERROR and FAILED_VALIDATION items (not charged), items
never sent (PENDING, BLOCKED), items in flight (their reservation), AMBIGUOUS items (a
submit whose fate is unknown: at risk, up to their reservation or estimate), and terminal
items whose charge was never recorded (``pixbatch reconcile`` settles those).

Scope. By default the report covers the items of the manifest version the latest run
worked on (``items.scope`` = the run's ``options.scope``, the digest of its expansion); a note
counts (and prices) the items of other versions, which ``all_items`` includes.

A report works on a state file from an interrupted run: items still SUBMITTING/SUBMITTED
are "in flight" and a note says to run ``pixbatch reconcile``. While ``pixbatch run``
holds the file's lock, nothing else can open it; the report is then built from the status
file the run keeps next to it (``state.read_status``): live totals and counts per step and
state only (``Report.live``), and ``StateLocked`` if there is no status file yet.
"""

from __future__ import annotations

from .build import build_report, list_failures, list_runs, run_price_table
from .model import (AUDIT_SQL, CAUSES, FAILURE_STATES, IN_FLIGHT_STATES, STATE_ORDER, Example, FailedItem, IssueGroup,
                    OutputFile, Outputs, Report, RunInfo, RunRow, Spend, SpendLine, SpendTotals, Status, StatusCount,
                    StepSpend, StepTiming, ThroughputBucket, Timing, Variance)
from .queries import actual_tier_sql

__all__ = [
    "AUDIT_SQL", "CAUSES", "FAILURE_STATES", "IN_FLIGHT_STATES", "STATE_ORDER", "Example", "FailedItem", "IssueGroup",
    "OutputFile", "Outputs", "Report", "RunInfo", "RunRow", "Spend", "SpendLine", "SpendTotals", "Status",
    "StatusCount", "StepSpend", "StepTiming", "ThroughputBucket", "Timing", "Variance", "actual_tier_sql",
    "build_report", "list_failures", "list_runs", "run_price_table",
]
