"""Lists of a state file's rows: the items that did not complete (``pixbatch failures``) and the
runs (``pixbatch runs``), as a terminal table that fits 80 columns, CSV or JSON."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from typing import Any

from ..report import FailedItem, RunRow
from .layout import item_name, usd, usd_decimal

FAILURE_COLUMNS = ("kind", "state", "step", "output_name", "input_id", "input_url", "upstream", "upstream_state",
                   "error", "charged_micros", "charged_usd", "key")
RUN_COLUMNS = ("run_id", "started_at", "ended_at", "outcome", "items", "charged_micros", "charged_usd",
               "manifest_path")


def _failure_dict(f: FailedItem) -> dict[str, Any]:
    return {"kind": f.kind, "state": f.state, "step": f.step, "output_name": f.output_name, "input_id": f.input_id,
            "input_url": f.input_url, "upstream": f.upstream, "upstream_state": f.upstream_state, "error": f.error,
            "charged_micros": f.charged_micros,
            "charged_usd": None if f.charged_micros is None else usd_decimal(f.charged_micros), "key": f.key}


def _run_dict(r: RunRow) -> dict[str, Any]:
    return {"run_id": r.run_id, "started_at": r.started_at.isoformat() if r.started_at else None,
            "ended_at": r.ended_at.isoformat() if r.ended_at else None, "outcome": r.outcome, "items": r.items,
            "charged_micros": r.charged_micros, "charged_usd": usd_decimal(r.charged_micros),
            "manifest_path": r.manifest_path}


def _csv(rows: list[dict[str, Any]], columns: Sequence[str]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n")
    w.writeheader()
    for row in rows:
        w.writerow({k: "" if v is None else v for k, v in row.items()})
    return buf.getvalue()


def _table(title: str, headers: Sequence[str], rows: list[Sequence[str]], numeric: Sequence[int] = (),
           caption: str = "", width: int = 80, fixed: Sequence[int] = (), ruled: bool = True) -> str:
    """A plain table: ``numeric`` columns right-aligned, they and the ``fixed`` ones never wrap."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    buf = io.StringIO()
    console = Console(file=buf, width=width, color_system=None, highlight=False, emoji=False, soft_wrap=False)
    t = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD if ruled else None, caption=caption or None,
              caption_justify="left", pad_edge=False, show_edge=False)
    for i, h in enumerate(headers):
        t.add_column(h, justify="right" if i in numeric else "left", no_wrap=i in numeric or i in fixed,
                     overflow="fold")
    for row in rows:
        t.add_row(*row)
    console.print(t)
    return "".join(line.rstrip() + "\n" for line in buf.getvalue().splitlines())


def render_failures(items: list[FailedItem], fmt: str = "table", *, width: int = 80) -> str:
    """``table`` (80 columns), ``csv`` (``FAILURE_COLUMNS``) or ``json`` (a list; amounts as micros and USD)."""
    if fmt == "json":
        return json.dumps([_failure_dict(f) for f in items], indent=2, ensure_ascii=False) + "\n"
    if fmt == "csv":
        return _csv([_failure_dict(f) for f in items], FAILURE_COLUMNS)
    if not items:
        return "No item failed, was blocked or was left unsent.\n"
    rows = []
    for f in items:
        head = item_name(f.output_name, f.key)
        if f.upstream:
            head += f" <- {f.upstream} ({f.upstream_state})"
            lines = [f"upstream: {f.upstream_error}" if f.upstream_error else f.error or "-"]
        else:
            head += f" (input {f.input_id})" if f.input_id else ""
            lines = [f.error or "-"]
            if f.input_url and f.input_url not in (f.error or ""):
                lines.insert(0, f"input {f.input_url}")
        rows.append((f.state, "\n".join([head, *lines])))
    kinds: dict[str, int] = {}
    for f in items:
        kinds[f.kind] = kinds.get(f.kind, 0) + 1
    caption = ", ".join(f"{n:,} {k}" for k, n in kinds.items()) + " (csv and json have every column)."
    return _table(f"Items that did not complete ({len(items):,})", ("State", "Item, input and error"), rows,
                  caption=caption, width=width, fixed=(0,))


def render_runs(runs: list[RunRow], fmt: str = "table", *, width: int = 80) -> str:
    """``table`` (80 columns), ``csv`` (``RUN_COLUMNS``) or ``json``."""
    if fmt == "json":
        return json.dumps([_run_dict(r) for r in runs], indent=2) + "\n"
    if fmt == "csv":
        return _csv([_run_dict(r) for r in runs], RUN_COLUMNS)
    rows = []
    for r in runs:
        ended = "-"
        if r.ended_at is not None:
            same_day = r.started_at is not None and r.ended_at.date() == r.started_at.date()
            ended = r.ended_at.strftime("%H:%M" if same_day else "%Y-%m-%d %H:%M")
        started = r.started_at.strftime("%Y-%m-%d %H:%M") if r.started_at else "-"
        rows.append((r.run_id, started, ended, r.outcome or "-", f"{r.items:,}", usd(r.charged_micros)))
    caption = ("Times in UTC. Items: sent by the run. Charged: what its settlements charged. Ended: for a killed "
               "run, its last recorded activity.")
    return _table(f"Runs ({len(runs)})", ("Run", "Started", "Ended", "Outcome", "Items", "Charged"), rows,
                  numeric=(4, 5), fixed=(0, 1, 2), caption=caption, width=width, ruled=False)
