"""What the person at the terminal sees while ``run`` works.

The runner talks to a ``Progress``: ``start(info)`` once, ``event(kind, key, detail)`` for
every event it records (state changes, HTTP exchanges, downloads, budget), ``update(snapshot)``
about every second with a ``StatusSnapshot`` (the same one written to the status file), and
``stop(summary)`` at the end. Three renderers:

- ``RichProgress``: the run's plan first (paid, in flight, at risk, still to pay: what
  ``pixbatch estimate`` says), then a live table (done / failed / in flight / waiting per
  step), spend so far against the estimate and the budget, rate and ETA; then the summary.
- ``JsonLinesProgress`` (``--json``): one JSON object per line per event, then the summary.
- ``NullProgress`` (``--quiet``, library use): nothing.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any, Protocol, TextIO

from .money import format_usd
from .state import StatusSnapshot

DONE = ("COMPLETED",)
FAILED = ("FAILED", "ERROR", "FAILED_VALIDATION", "BLOCKED", "AMBIGUOUS")
IN_FLIGHT = ("SUBMITTING", "SUBMITTED")


class Progress(Protocol):
    def start(self, info: dict[str, Any]) -> None: ...
    def event(self, kind: str, key: str | None, detail: dict[str, Any]) -> None: ...
    def update(self, snapshot: StatusSnapshot) -> None: ...
    def stop(self, summary: Any) -> None: ...


class NullProgress:
    def start(self, info: dict[str, Any]) -> None:
        pass

    def event(self, kind: str, key: str | None, detail: dict[str, Any]) -> None:
        pass

    def update(self, snapshot: StatusSnapshot) -> None:
        pass

    def stop(self, summary: Any) -> None:
        pass


class JsonLinesProgress(NullProgress):
    def __init__(self, stream: TextIO | None = None):
        self.stream = stream or sys.stdout

    def _line(self, obj: dict[str, Any]) -> None:
        self.stream.write(json.dumps(obj, default=str, sort_keys=True) + "\n")
        self.stream.flush()

    def start(self, info: dict[str, Any]) -> None:
        plan = info.get("plan")
        if plan is not None:  # an estimate.Estimate: its JSON form, as `pixbatch estimate --json` gives it
            from .estimate_render import estimate_to_dict

            info = {**info, "plan": estimate_to_dict(plan)}
        self._line({"kind": "run", "event": "start", **info})

    def event(self, kind: str, key: str | None, detail: dict[str, Any]) -> None:
        self._line({"ts": round(time.time(), 3), "kind": kind, "key": key, **detail})

    def stop(self, summary: Any) -> None:
        self._line({"kind": "summary", **summary.to_dict()})


def step_columns(counts: dict[str, int]) -> tuple[int, int, int, int]:
    done = sum(counts.get(s, 0) for s in DONE)
    failed = sum(counts.get(s, 0) for s in FAILED)
    flying = sum(counts.get(s, 0) for s in IN_FLIGHT)
    waiting = counts.get("PENDING", 0)
    return done, failed, flying, waiting


def status_table(snap: StatusSnapshot, title: str | None = None) -> Any:
    """A rich Table of a snapshot (shared by the live display and ``pixbatch status``)."""
    from rich.table import Table

    t = Table(title=title, show_footer=True)
    t.add_column("step", footer="total")
    totals = [0, 0, 0, 0]
    rows = []
    for step, counts in snap.steps.items():
        cols = step_columns(counts)
        totals = [a + b for a, b in zip(totals, cols)]
        rows.append((step, cols, counts))
    for i, name in enumerate(("done", "failed", "in flight", "waiting")):
        t.add_column(name, justify="right", footer=str(totals[i]))
    t.add_column("detail")
    for step, cols, counts in rows:
        detail = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()) if s not in ("COMPLETED", "PENDING") and n)
        t.add_row(step, *map(str, cols), detail)
    return t


def money_line(snap: StatusSnapshot) -> str:
    parts = [f"spent {format_usd(snap.charged_micros)}"]
    if snap.reserved_micros:
        parts.append(f"reserved {format_usd(snap.reserved_micros)}")
    if snap.at_risk_micros:
        parts.append(f"at risk {format_usd(snap.at_risk_micros)}")
    if snap.estimate_high_micros is not None:
        lo, hi = snap.estimate_low_micros or 0, snap.estimate_high_micros
        parts.append("estimate " + (format_usd(hi) if lo == hi else f"{format_usd(lo)}-{format_usd(hi)}"))
    parts.append(f"budget {format_usd(snap.budget_micros)}" if snap.budget_micros is not None else "no budget")
    if snap.rate_per_s:
        parts.append(f"{snap.rate_per_s:.1f} items/s")
    if snap.eta_s is not None and snap.running:
        parts.append(f"ETA {int(snap.eta_s // 60)}m{int(snap.eta_s % 60):02d}s")
    return " | ".join(parts)


def ingest_line(snap: StatusSnapshot) -> str | None:
    """While a run reads its expansion in: how far it is (None once it is all in)."""
    ing = snap.ingest
    if not ing or ing.get("done"):
        return None
    walked, expected = ing.get("walked", 0), ing.get("expected")
    of = f" of {expected:,} ({walked / expected:.0%})" if expected else ""
    rate = f", {walked / ing['seconds']:,.0f} items/s" if ing.get("seconds") else ""
    return f"reading the manifest: {walked:,}{of} items read, {ing.get('items', 0):,} unique in the state file{rate}"


class RichProgress(NullProgress):
    def __init__(self, console: Any = None):
        from rich.console import Console

        self.console = console or Console(stderr=True)
        self._live: Any = None
        self._snap: StatusSnapshot | None = None

    def _render(self) -> Any:
        from rich.console import Group
        from rich.text import Text

        if self._snap is None:
            return Text("starting...")
        lines = [status_table(self._snap), Text(money_line(self._snap))]
        reading = ingest_line(self._snap)
        if reading:
            lines.append(Text(reading))
        return Group(*lines)

    def start(self, info: dict[str, Any]) -> None:
        from rich.live import Live

        if info.get("plan") is not None:  # what `pixbatch estimate` says of the same items, before anything is sent
            from .estimate_render import render_estimate

            render_estimate(info["plan"], self.console, budget_micros=info.get("budget_micros"), title="Plan")
        self._live = Live(self._render(), console=self.console, refresh_per_second=4, transient=False)
        self._live.start()

    def event(self, kind: str, key: str | None, detail: dict[str, Any]) -> None:
        if kind == "budget" or (kind == "run" and "message" in detail):
            self.console.print(f"[yellow]{detail.get('message') or 'budget reached'}[/]")

    def update(self, snapshot: StatusSnapshot) -> None:
        self._snap = snapshot
        if self._live is not None:
            self._live.update(self._render())

    def stop(self, summary: Any) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None
        render_summary(summary, self.console)


def render_summary(summary: Any, console: Any) -> None:
    c = summary.counts
    console.print(
        f"[bold]{summary.outcome}[/]: {c.get('COMPLETED', 0)} completed, "
        f"{sum(c.get(s, 0) for s in FAILED)} not completed, {sum(c.get(s, 0) for s in IN_FLIGHT)} in flight, "
        f"{c.get('PENDING', 0)} waiting | charged this run {format_usd(summary.charged_run_micros)}, "
        f"total {format_usd(summary.charged_total_micros)}"
        + (f" of {format_usd(summary.budget_micros)}" if summary.budget_micros is not None else "")
        + f" | {summary.duration_s:.1f}s")
    for m in summary.messages:
        console.print(f"- {m}")
