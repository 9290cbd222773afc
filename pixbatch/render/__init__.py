"""Renderers: pure functions ``Report -> str`` for table (rich), json, csv, md and html.

The human formats (table, md, html) share one layout: ``layout.sections(report)`` turns
the report into titled tables of display strings, and each format only decides how a
table looks (``text.py``: table and md; ``html_page.py`` with the SVG charts of
``charts.py``). Money is shown with ``money.format_usd``; JSON carries every amount twice,
as integer micro-dollars (``*_micros``) and as a decimal string (``*_usd``), and contains
no floats at all (durations are integer milliseconds). CSV is one long, tidy table
(``section, step, op, tier, state, group, metric, value, usd, ...``) that a spreadsheet
can pivot (``data.py``: json and csv). HTML is one self-contained file: inline CSS and SVG
charts, no script, no network. ``lists.py`` renders the failure list and the runs list.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..report import Report
from .data import CSV_COLUMNS, render_csv, render_json, to_jsonable
from .html_page import render_html
from .lists import render_failures, render_runs
from .text import render_md, render_table

__all__ = ["CSV_COLUMNS", "FORMATS", "RENDERERS", "render", "render_csv", "render_failures", "render_html",
           "render_json", "render_md", "render_runs", "render_table", "to_jsonable"]

FORMATS = ("table", "json", "csv", "md", "html")

RENDERERS: dict[str, Callable[..., str]] = {
    "table": render_table, "json": render_json, "csv": render_csv, "md": render_md, "html": render_html,
}


def render(report: Report, fmt: str, **kw: Any) -> str:
    """Render ``report`` in one of ``FORMATS``."""
    try:
        fn: Callable[..., str] = RENDERERS[fmt]
    except KeyError:
        raise ValueError(f"unknown report format {fmt!r}; choose one of {', '.join(FORMATS)}") from None
    return fn(report, **kw)
