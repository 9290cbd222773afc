"""What the person at the terminal sees while ``run`` works.

The runner talks to a ``Progress``: ``start(info)`` once, ``event(kind, key, detail)`` for
every event it records (state changes, HTTP exchanges, downloads, budget), ``update(snapshot)``
about every second with a ``StatusSnapshot`` (the same one written to the status file), and
``stop(summary)`` at the end. Four renderers:

- ``RichProgress`` (stderr is a terminal): the run's plan first (paid, in flight, at risk,
  still to pay: what ``pixbatch estimate`` says), then a live table (done / failed / in flight
  / waiting per step, in manifest order), a progress bar with the percentage finished and the
  elapsed time, spend so far against the estimate and the budget, rate and ETA; then the
  summary. It fits 80 columns.
- ``PlainProgress`` (stderr is not a terminal: CI, nohup, a log file): the plan, then one plain
  line every ``interval`` seconds (elapsed, percentage, counts, spend, rate, ETA); then the
  summary, each message on its own line.
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
FAILED = ("FAILED", "ERROR", "FAILED_VALIDATION", "BAD_INPUT", "BLOCKED", "AMBIGUOUS")
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


def clock(seconds: float | None) -> str:
    """``1:02:03`` (hours:minutes:seconds), ``2:03`` under an hour."""
    if seconds is None:
        return "-"
    s = int(seconds)
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def finished_fraction(snap: StatusSnapshot) -> tuple[int, int]:
    """(items finished, all items): finished is everything not PENDING or in flight."""
    t = snap.totals()
    total = sum(t.values())
    left = t.get("PENDING", 0) + sum(t.get(s, 0) for s in IN_FLIGHT)
    return total - left, total


def status_table(snap: StatusSnapshot, title: str | None = None) -> Any:
    """A rich Table of a snapshot, steps in manifest order (the live display and ``pixbatch status``); fits 80 columns."""
    from rich import box
    from rich.table import Table

    t = Table(title=title, show_footer=True, box=box.SIMPLE_HEAD, title_justify="left", pad_edge=False,
              show_edge=False)
    longest = max((len(s) for s in snap.steps), default=5)
    t.add_column("step", footer="total", overflow="fold", width=min(longest, 30))  # names whole up to 30
    totals = [0, 0, 0, 0]
    rows = []
    for step, counts in snap.steps.items():
        cols = step_columns(counts)
        totals = [a + b for a, b in zip(totals, cols)]
        rows.append((step, cols, counts))
    for i, name in enumerate(("done", "failed", "in flight", "waiting")):
        t.add_column(name, justify="right", footer=f"{totals[i]:,}", no_wrap=True)
    t.add_column("detail", overflow="fold", min_width=12)
    order = {s: i for i, s in enumerate(FAILED + IN_FLIGHT)}
    for step, cols, counts in rows:
        detail = ", ".join(f"{n:,} {s}" for s, n in sorted(counts.items(), key=lambda kv: order.get(kv[0], 99))
                           if s not in ("COMPLETED", "PENDING") and n)
        t.add_row(step, *(f"{c:,}" for c in cols), detail)
    return t


def money_line(snap: StatusSnapshot) -> str:
    parts = [f"spent {format_usd(snap.charged_micros)}"
             + (f" of {format_usd(snap.budget_micros)}" if snap.budget_micros is not None else " (no budget)")]
    if snap.reserved_micros:
        parts.append(f"reserved {format_usd(snap.reserved_micros)}")
    if snap.at_risk_micros:
        parts.append(f"at risk {format_usd(snap.at_risk_micros)}")
    if snap.estimate_high_micros is not None:
        lo, hi = snap.estimate_low_micros or 0, snap.estimate_high_micros
        parts.append("estimate " + (format_usd(hi) if lo == hi else f"{format_usd(lo)}-{format_usd(hi)}"))
    if snap.rate_per_s:
        parts.append(f"{snap.rate_per_s:.1f} items/s")
    if snap.eta_s is not None and snap.running:
        parts.append(f"ETA {clock(snap.eta_s)}")
    return " | ".join(parts)


def progress_line(snap: StatusSnapshot, elapsed: float) -> str:
    """One plain line (PlainProgress): elapsed, percentage, counts, spend, rate, ETA."""
    done, total = finished_fraction(snap)
    t = snap.totals()
    pct = f"{100 * done // total}%" if total else "-"
    counts = (f"{t.get('COMPLETED', 0):,} completed, {sum(t.get(s, 0) for s in FAILED):,} failed, "
              f"{sum(t.get(s, 0) for s in IN_FLIGHT):,} in flight, {t.get('PENDING', 0):,} waiting")
    return f"[{clock(elapsed)}] {pct} of {total:,} | {counts} | {money_line(snap)}"


def ingest_line(snap: StatusSnapshot) -> str | None:
    """While a run reads its expansion in: how far it is (None once it is all in)."""
    ing = snap.ingest
    if not ing or ing.get("done"):
        return None
    walked, expected = ing.get("walked", 0), ing.get("expected")
    of = f" of {expected:,} ({walked / expected:.0%})" if expected else ""
    rate = f", {walked / ing['seconds']:,.0f} items/s" if ing.get("seconds") else ""
    return f"reading the manifest: {walked:,}{of} items read, {ing.get('items', 0):,} unique in the state file{rate}"


def error_line(snap: StatusSnapshot) -> str | None:
    """The latest exchange with the gateway that went wrong, and when (None: none yet)."""
    if not snap.last_error:
        return None
    at = f" at {snap.last_error_at[11:19]} UTC" if snap.last_error_at and len(snap.last_error_at) >= 19 else ""
    return f"latest gateway error{at}: {snap.last_error[:200]}"


class RichProgress(NullProgress):
    """The live display on a terminal (see the module docstring)."""

    def __init__(self, console: Any = None):
        from rich.console import Console

        self.console = console or Console(stderr=True)
        self._live: Any = None
        self._snap: StatusSnapshot | None = None
        self._t0 = time.monotonic()

    def _render(self) -> Any:
        from rich.console import Group
        from rich.progress_bar import ProgressBar
        from rich.table import Table
        from rich.text import Text

        if self._snap is None:
            return Text("starting...")
        done, total = finished_fraction(self._snap)
        bar = Table.grid(padding=(0, 1), expand=True)
        bar.add_column(ratio=1)
        bar.add_column(no_wrap=True)
        pct = f"{100 * done // total:>3}%" if total else "  -"
        bar.add_row(ProgressBar(total=max(total, 1), completed=done),
                    f"{pct} {done:,}/{total:,}  {clock(time.monotonic() - self._t0)} elapsed")
        lines = [status_table(self._snap), bar, Text(money_line(self._snap))]
        reading = ingest_line(self._snap)
        if reading:
            lines.append(Text(reading))
        error = error_line(self._snap)
        if error:
            lines.append(Text(error, style="yellow"))
        return Group(*lines)

    def start(self, info: dict[str, Any]) -> None:
        from rich.live import Live

        self._t0 = time.monotonic()
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


class PlainProgress(NullProgress):
    """Plain lines for a log (see the module docstring): the first update, then one every ``interval`` seconds."""

    def __init__(self, stream: TextIO | None = None, *, interval: float = 10.0):
        self.stream = stream or sys.stderr
        self.interval = interval
        self._t0 = time.monotonic()
        self._next = 0.0
        self._error: str | None = None  # the latest gateway error written

    def _write(self, line: str) -> None:
        self.stream.write(line + "\n")
        self.stream.flush()

    def start(self, info: dict[str, Any]) -> None:
        self._t0 = time.monotonic()
        self._next = self._t0
        budget = info.get("budget_micros")
        self._write(f"run {info.get('run_id')}: state {info.get('state_path')}, "
                    + (f"budget {format_usd(budget)}" if budget is not None else "no budget"))
        if info.get("plan") is not None:  # the plan, as on a terminal
            from rich.console import Console

            from .estimate_render import render_estimate

            render_estimate(info["plan"], Console(file=self.stream, highlight=False, width=100),
                            budget_micros=budget, title="Plan")

    def event(self, kind: str, key: str | None, detail: dict[str, Any]) -> None:
        if kind == "budget" or (kind == "run" and "message" in detail):
            self._write(str(detail.get("message") or "budget reached"))

    def update(self, snapshot: StatusSnapshot) -> None:
        now = time.monotonic()
        if snapshot.running and now >= self._next:
            self._next = now + self.interval
            self._write(progress_line(snapshot, now - self._t0))
            reading = ingest_line(snapshot)
            if reading:
                self._write(reading)
            if snapshot.last_error and snapshot.last_error_at != self._error:  # each new one once
                self._error = snapshot.last_error_at
                self._write(error_line(snapshot) or "")

    def stop(self, summary: Any) -> None:
        for line in summary_lines(summary):
            self._write(line)


def summary_lines(summary: Any) -> list[str]:
    """The run's summary: the outcome with counts and money, then one line per message."""
    c = summary.counts
    head = (f"{summary.outcome}: {c.get('COMPLETED', 0):,} completed, "
            f"{sum(c.get(s, 0) for s in FAILED):,} not completed, {sum(c.get(s, 0) for s in IN_FLIGHT):,} in flight, "
            f"{c.get('PENDING', 0):,} waiting | charged this run {format_usd(summary.charged_run_micros)}, "
            f"total {format_usd(summary.charged_total_micros)}"
            + (f" of {format_usd(summary.budget_micros)}" if summary.budget_micros is not None else "")
            + " | took " + (f"{summary.duration_s:.1f}s" if summary.duration_s < 60 else clock(summary.duration_s)))
    return [head, *(f"- {m}" for m in summary.messages)]


def render_summary(summary: Any, console: Any) -> None:
    lines = summary_lines(summary)
    outcome, _, rest = lines[0].partition(":")
    wrap = not console.is_terminal  # a log keeps each line whole; a terminal wraps at words
    console.print()
    console.print(f"[bold]{outcome}[/]:{rest}", highlight=False, soft_wrap=wrap)
    for line in lines[1:]:
        console.print(line, markup=False, highlight=False, soft_wrap=wrap)
