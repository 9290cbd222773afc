"""Progress of a state file, readable while a run holds it.

Other processes cannot open the file at all while a run has it, so the runner also keeps
``<state>.status.json`` up to date (atomically replaced about every second and at exit).
``read_status(path)`` returns the same ``StatusSnapshot`` from the database when it can
open it and from that file when it cannot.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import duckdb

from ..errors import StateLocked
from .model import ItemState, iso_utc, utcnow
from .queries import counts_by_step, last_run, table_names, totals
from .connection import reading
from .recovery import open_for_reading


def status_file_path(state_path: str | Path) -> Path:
    p = Path(state_path)
    return p.with_name(p.name + ".status.json")


@dataclass(frozen=True)
class StatusSnapshot:
    """Progress of the manifest a state file was last run with (what ``status`` shows)."""

    state_path: str
    source: str  # "database" | "status-file" | "runner"
    running: bool
    updated_at: str  # ISO 8601 UTC
    run_id: str | None = None
    pid: int | None = None
    outcome: str | None = None
    manifest_path: str | None = None
    steps: dict[str, dict[str, int]] = field(default_factory=dict)  # step -> state -> count
    charged_micros: int = 0
    reserved_micros: int = 0
    at_risk_micros: int = 0
    budget_micros: int | None = None
    estimate_low_micros: int | None = None
    estimate_high_micros: int | None = None
    rate_per_s: float | None = None  # items finished per second (running only)
    eta_s: float | None = None
    # while a run reads its expansion in: {"walked", "expected", "items", "done", "seconds"}
    ingest: dict[str, Any] | None = None
    # the latest exchange with the gateway that went wrong ("POST /v2/...: HTTP 500"), and when (ISO 8601 UTC)
    last_error: str | None = None
    last_error_at: str | None = None

    def totals(self) -> dict[str, int]:
        """state -> count over all steps; every state present, in ``ItemState`` order."""
        out: dict[str, int] = {s.value: 0 for s in ItemState}
        for counts in self.steps.values():
            for s, n in counts.items():
                out[s] = out.get(s, 0) + n
        return out

    @property
    def ambiguous(self) -> int:
        return self.totals().get(ItemState.AMBIGUOUS, 0)

    def to_json(self) -> str:
        return json.dumps({"version": 1, **asdict(self)})  # steps stay in manifest order

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StatusSnapshot:
        """From ``json.loads(to_json())``; keys it does not know (a newer version's) are ignored."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def write_status_file(snapshot: StatusSnapshot) -> Path:
    """Atomically replace ``<state>.status.json`` (temp file + os.replace)."""
    target = status_file_path(snapshot.state_path)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    tmp.write_text(snapshot.to_json(), "utf-8")
    os.replace(tmp, target)
    return target


def read_status(state_path: str | Path) -> StatusSnapshot:
    """Progress per step from the state file (with what a killed run's submit log knows applied:
    ``open_for_reading``), or from its status file while a run holds it."""
    state_path = Path(state_path)
    try:
        db = open_for_reading(state_path)
    except StateLocked:
        sf = status_file_path(state_path)
        try:
            data = json.loads(sf.read_text("utf-8"))
        except (FileNotFoundError, json.JSONDecodeError):
            raise StateLocked(f"state file {state_path} is in use by a running pixbatch and its status file {sf} "
                              "is not readable yet; try again in a second.") from None
        snap = StatusSnapshot.from_dict(data)
        return StatusSnapshot(**{**asdict(snap), "source": "status-file", "state_path": str(state_path)})
    try:
        with reading(state_path):
            return snapshot_from_db(db, str(state_path))
    finally:
        db.close()


def snapshot_from_db(db: duckdb.DuckDBPyConnection, state_path: str, *, running: bool = False) -> StatusSnapshot:
    """The snapshot of the last run's expansion (every item, before any run), from the database."""
    if "items" not in table_names(db):
        return StatusSnapshot(state_path=state_path, source="database", running=False, updated_at=iso_utc(utcnow()))
    run = last_run(db)
    steps = counts_by_step(db, run.scope if run else None)
    t = totals(db)
    return StatusSnapshot(
        state_path=state_path, source="database", running=running, updated_at=iso_utc(utcnow()),
        run_id=run.run_id if run else None, pid=run.pid if run else None, outcome=run.outcome if run else None,
        manifest_path=run.manifest_path if run else None, steps=steps, charged_micros=t.charged_micros,
        reserved_micros=t.reserved_micros, at_risk_micros=t.at_risk_micros,
        budget_micros=run.budget_micros if run else None,
        estimate_low_micros=run.estimate_low_micros if run else None,
        estimate_high_micros=run.estimate_high_micros if run else None)
