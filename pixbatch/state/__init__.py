"""The run state in DuckDB: one file per manifest, written by one ``Store``.

What makes a run resumable
--------------------------
Every item (one unique request, keyed by ``items.key``) has a lifecycle in ``items.state``
(``ItemState``; ``migrations.m002_run_state`` draws it). Two facts must survive any crash:

1. the **intent**, committed before the POST leaves (the runner waits for it): the attempt
   number and the budget reservation;
2. the **outcome**, committed as soon as it is known, ahead of anything later about the
   item: above all the ``request_id`` of a 202 (the runner polls meanwhile: a poll is free).

Both are rows of ``submit_log``, an append-only table (``m004_submit_log``): each batch of
them is one INSERT, atomic and durable by itself, which is the whole cost of the critical
path. ``items`` (and events and outputs) follow in bulk, at most ``bulk_interval`` later;
after a crash ``recover()`` rebuilds every in-flight item from the log: accepted -> SUBMITTED
(poll it, never resend it); an intent without an answer -> AMBIGUOUS (the POST may have
been accepted and charged; it is only resent on request, ``--retry-ambiguous``). Nothing
that matters is lost with the bulk rows: a settled item whose row was lost is polled again
(polling is free) and settled again. Reservations live in the tables too, so the budget
survives crashes: money committed = charged + reserved (+ the reservations of abandoned
ambiguous attempts, in the log).

Which module holds what
-----------------------
``model``        ItemState and the state sets; ItemRow, Intent, Attempt, OutputRow, Totals
``migrations``   ``connect()``: open a file, migrated once, each migration in one transaction
``store``        ``Store``: one writer thread, its queue, group commits and futures
``writes``       the set-based statements the writer commits (submit log, items, events, outputs)
``queries``      named reads returning dataclasses or plain values (the runner holds no SQL)
``runs``         a run's ``runs`` row, and the resets its options ask for (requeue)
``ingest``       an expansion into items and aliases, under its scope
``recovery``     replaying the submit log after a crash; blocking downstream items; readers
``status_file``  ``StatusSnapshot`` from the database, or from the status file while a run holds it
``plan``         reads for prices that know what is done: size observations, touched items, plan groups

Everything public is re-exported here: ``from pixbatch import state as st; st.Store, st.recover``.
"""

from __future__ import annotations

from .ingest import INGEST_BATCH, Ingest, IngestBatch, bulk_insert_items_for_bench, expansion_scope, ingest
from .connection import connect, cursor
from .migrations import MIGRATIONS, applied, migrate
from .model import (
    BLOCKING,
    FAILURES,
    IN_FLIGHT,
    MUTABLE_COLUMNS,
    REMAINING,
    ROW_COLUMNS,
    TERMINAL,
    Attempt,
    IngestResult,
    Intent,
    ItemRow,
    ItemState,
    OutputRow,
    Totals,
    iso_utc,
    sql_in,
    utcnow,
)
from .queries import (
    Cost,
    LastRun,
    OpenRequest,
    Redo,
    Selection,
    alias_names,
    completed_page,
    completed_without_media,
    counts_by_step,
    in_flight_count,
    item_row,
    secret,
    in_flight_low_micros,
    last_run,
    left_to_send,
    open_requests,
    pending_cost,
    pending_count,
    probed_sizes,
    probes_fingerprint,
    ready_page,
    recorded_outputs,
    redo_cost,
    redo_cost_of_keys,
    scope_cost,
    scope_size,
    select_rows,
    submitted_rows,
    table_names,
    totals,
    unselected_count,
    upstream_blocked,
)
from .memory import retry_roomier
from .plan import PlanGroup, plan_groups, size_observations, touched_items
from .recovery import absorb_crashed_runs, block_downstream, open_for_reading, recover
from .runs import Requeued, RunStart, finish_run, mark_ingested, record_estimate, requeue, start_run
from .status_file import StatusSnapshot, read_status, snapshot_from_db, status_file_path, write_status_file
from .store import Store, Waiter
from .writes import abandon, insert_log, log_attempt

# The names callers used before ItemState: aliases of its members (equal to the stored strings).
PENDING, SUBMITTING, SUBMITTED = ItemState.PENDING, ItemState.SUBMITTING, ItemState.SUBMITTED
COMPLETED, FAILED, ERROR = ItemState.COMPLETED, ItemState.FAILED, ItemState.ERROR
AMBIGUOUS, FAILED_VALIDATION, BLOCKED = ItemState.AMBIGUOUS, ItemState.FAILED_VALIDATION, ItemState.BLOCKED
BAD_INPUT = ItemState.BAD_INPUT
ITEM_STATES: tuple[ItemState, ...] = tuple(ItemState)
BLOCKING_STATES, TERMINAL_STATES, IN_FLIGHT_STATES = BLOCKING, TERMINAL, IN_FLIGHT

__all__ = [
    "AMBIGUOUS", "BAD_INPUT", "BLOCKED", "BLOCKING", "BLOCKING_STATES", "COMPLETED", "ERROR", "FAILED", "FAILED_VALIDATION",
    "FAILURES", "INGEST_BATCH", "IN_FLIGHT", "IN_FLIGHT_STATES", "ITEM_STATES", "MIGRATIONS", "MUTABLE_COLUMNS",
    "PENDING", "REMAINING", "ROW_COLUMNS", "SUBMITTED", "SUBMITTING", "TERMINAL", "TERMINAL_STATES",
    "Attempt", "Cost", "Ingest", "IngestBatch", "IngestResult", "Intent", "ItemRow", "ItemState", "LastRun",
    "OpenRequest", "OutputRow", "PlanGroup", "Redo", "Requeued", "RunStart", "Selection", "StatusSnapshot", "Store",
    "Totals", "Waiter",
    "abandon", "absorb_crashed_runs", "alias_names", "applied", "block_downstream", "bulk_insert_items_for_bench",
    "completed_page", "completed_without_media", "connect", "counts_by_step", "cursor", "expansion_scope", "finish_run",
    "in_flight_count", "in_flight_low_micros", "item_row", "secret", "ingest", "insert_log", "iso_utc", "last_run", "left_to_send", "log_attempt",
    "mark_ingested", "migrate", "open_for_reading", "open_requests",
    "pending_cost", "pending_count", "plan_groups", "probed_sizes", "probes_fingerprint", "read_status", "ready_page",
    "record_estimate", "recorded_outputs", "recover",
    "retry_roomier", "redo_cost", "redo_cost_of_keys", "requeue", "scope_cost",
    "scope_size", "select_rows", "size_observations", "snapshot_from_db", "sql_in", "start_run", "status_file_path",
    "submitted_rows", "table_names", "totals", "touched_items", "unselected_count", "upstream_blocked", "utcnow",
    "write_status_file",
]
