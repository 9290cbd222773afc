"""Renderers: pure functions ``Report -> str`` for table (rich), json, csv, md and html.

The human formats (table, md, html) share one layout: ``sections(report)`` turns the
report into titled tables of display strings, and each format only decides how a table
looks. Money is shown with ``money.format_usd``; JSON carries every amount twice, as
integer micro-dollars (``*_micros``) and as a decimal string (``*_usd``), and contains
no floats at all (durations are integer milliseconds). CSV is one long, tidy table
(``section, step, op, tier, state, group, metric, value, usd, ...``) that a spreadsheet
can pivot. HTML is one self-contained file: inline CSS and SVG charts drawn here, no
script, no network.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import functools
import html
import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .money import format_usd, micros_to_decimal
from .report import OutputFile, Outputs, Report, SpendTotals, Variance

FORMATS = ("table", "json", "csv", "md", "html")


def render(report: Report, fmt: str, **kw: Any) -> str:
    """Render ``report`` in one of ``FORMATS``."""
    try:
        fn: Callable[..., str] = RENDERERS[fmt]
    except KeyError:
        raise ValueError(f"unknown report format {fmt!r}; choose one of {', '.join(FORMATS)}") from None
    return fn(report, **kw)


# -- shared helpers ---------------------------------------------------------------------------


def usd(micros: int | None) -> str:
    return "-" if micros is None else format_usd(micros)


def usd_range(low: int, high: int) -> str:
    return format_usd(high) if low == high else f"{format_usd(low)}–{format_usd(high)}"


def usd_decimal(micros: int) -> str:
    return format(micros_to_decimal(micros), "f")


def signed_usd(micros: int) -> str:
    return ("+" if micros > 0 else "") + format_usd(micros) if micros else "$0.00"


def duration(ms: int | None) -> str:
    if ms is None:
        return "-"
    if ms < 1000:
        return f"{ms} ms"
    if ms < 60_000:
        return f"{ms / 1000:.1f} s"
    m, s = divmod(round(ms / 1000), 60)
    if m < 60:
        return f"{m} min {s} s"
    h, m = divmod(m, 60)
    return f"{h} h {m} min"


def bucket_label(seconds: int) -> str:
    if seconds % 3600 == 0:
        n = seconds // 3600
        return "hour" if n == 1 else f"{n} hours"
    if seconds % 60 == 0:
        n = seconds // 60
        return "minute" if n == 1 else f"{n} minutes"
    return "second" if seconds == 1 else f"{seconds} seconds"


def short(key: str) -> str:
    return key[:12]


def examples_text(examples) -> str:
    return ", ".join(f"{short(e.key)} ({e.step}/{e.input_id})" if e.input_id else short(e.key) for e in examples)


# -- the shared layout ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Section:
    title: str
    headers: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    intro: str = ""  # a sentence before the table
    empty: str = "none"  # shown instead of an empty table
    numeric: tuple[int, ...] = ()  # right-aligned columns
    nowrap: tuple[int, ...] = ()  # columns never wrapped (checksums)


def summary_pairs(r: Report) -> list[tuple[str, str]]:
    t = r.spend.totals
    pairs = [("State file", r.state_path)]
    if r.run:
        pairs.append(("Run", f"{r.run.run_id} ({r.run.outcome or 'no outcome recorded'}), started "
                             f"{_ts(r.run.started_at)}" + (f", ended {_ts(r.run.finished_at)}" if r.run.finished_at else "")
                      + (f"; its settlements charged {usd(r.run.charged_micros)}"
                         if r.run.charged_micros is not None else "")))
    if r.scope_run_id:
        pairs.append(("Scope", f"items touched by run {r.scope_run_id}"))
    pairs += [
        ("Items", f"{t.items:,}"),
        ("Estimated", usd_range(t.est_low_micros, t.est_high_micros)),
    ]
    if r.spend.planned_high_micros is not None:
        pairs.append(("Estimate (plan)", usd_range(r.spend.planned_low_micros, r.spend.planned_high_micros)))
    pairs += [
        ("Charged", f"{usd(t.charged_micros)} ({t.charged_items:,} items)"),
        ("Not charged", f"{t.not_charged_items:,} items (ERROR, FAILED_VALIDATION; estimate "
                        f"{usd(t.not_charged_est_micros)})"),
        ("At risk", f"{usd(t.at_risk_micros)} ({t.at_risk_items:,} AMBIGUOUS items)"
                    + (f" + {usd(t.abandoned_micros)} ({t.abandoned_attempts:,} resent ambiguous attempts)"
                       if t.abandoned_attempts else "")),
        ("Reserved", f"{usd(t.reserved_micros)} ({t.in_flight_items:,} items in flight)"),
        ("Not spent", f"{t.unspent_items:,} items PENDING/BLOCKED (estimate {usd(t.unspent_est_micros)})"),
    ]
    if t.budget_micros is not None:
        pairs.append(("Budget", f"{usd(t.budget_micros)} ({usd(t.budget_micros - t.charged_micros)} left)"))
    if r.live:
        pairs.append(("Live", "from the running run's status file (partial)"))
    if r.excluded_items:
        pairs.append(("Not included", f"{r.excluded_items:,} items of other manifest versions "
                                      f"(charged {usd(r.excluded_charged_micros)})"))
    pairs.append(("Generated", _ts(r.generated_at) + " UTC"))
    return pairs


def _ts(v: dt.datetime | None) -> str:
    return "-" if v is None else v.isoformat(sep=" ", timespec="seconds")


def sections(r: Report, *, outputs_limit: int | None = None) -> list[Section]:
    t = r.spend.totals
    out: list[Section] = [Section("Summary", ("", ""), tuple(summary_pairs(r)))]

    spend_rows = [
        (ln.step, ln.op, ln.tier, f"{ln.items:,}", usd_range(ln.est_low_micros, ln.est_high_micros),
         usd(ln.charged_micros), f"{ln.not_charged_items:,}", usd(ln.at_risk_micros), usd(ln.reserved_micros),
         f"{ln.unspent_items:,}")
        for ln in r.spend.lines
    ]
    if spend_rows:
        spend_rows.append(("Total", "", "", f"{t.items:,}", usd_range(t.est_low_micros, t.est_high_micros),
                           usd(t.charged_micros), f"{t.not_charged_items:,}", usd(t.at_risk_micros),
                           usd(t.reserved_micros), f"{t.unspent_items:,}"))
    out.append(Section(
        "Spend by step, operation and tier",
        ("Step", "Op", "Tier", "Items", "Estimated", "Charged", "Not charged", "At risk", "Reserved", "Not sent"),
        tuple(spend_rows), intro="Tier is the actual price tier once an item finished, else the estimated one.",
        numeric=(3, 4, 5, 6, 7, 8, 9)))

    var_rows = []
    if r.spend.planned_high_micros is not None:
        var_rows += [("Planned by `pixbatch estimate` (upper bound)", "", usd(r.spend.planned_high_micros), "", ""),
                     ("sizes learned since the plan (probes, upstream outputs) and items added or reused", "",
                      "", "", signed_usd(t.est_high_micros - r.spend.planned_high_micros))]
    var_rows += [("Estimate (upper bound)", f"{t.items:,}", usd(t.est_high_micros), "", "")]
    var_rows += [(v.explanation, f"{v.items:,}", usd(v.est_high_micros), usd(v.charged_micros),
                  signed_usd(v.delta_micros)) for v in r.spend.variance]
    var_rows.append(("Charged", "", "", usd(t.charged_micros), signed_usd(t.delta_micros)))
    out.append(Section("Estimate vs charged, explained", ("Cause", "Items", "Estimated", "Charged", "Difference"),
                       tuple(var_rows) if r.spend.variance else (), numeric=(1, 2, 3, 4)))

    states = [s for s, _ in r.status.by_state]
    status_rows = []
    for step in r.status.steps:
        status_rows.append((step, *(_n(r.status.count(step, s)) for s in states), f"{r.status.count(step):,}"))
    if status_rows:
        status_rows.append(("Total", *(f"{n:,}" for _, n in r.status.by_state), f"{r.status.count():,}"))
    out.append(Section("Status", ("Step", *states, "Total"), tuple(status_rows),
                       numeric=tuple(range(1, len(states) + 2))))

    out.append(Section(
        "Failures", ("State", "Items", "Message", "Examples"),
        tuple((g.state, f"{g.count:,}", g.message, examples_text(g.examples)) for g in r.status.failures),
        intro=(f"{r.status.more_failure_groups} more messages not listed." if r.status.more_failure_groups else ""),
        numeric=(1,)))
    out.append(Section(
        "Blocked", ("Items", "Why", "Examples"),
        tuple((f"{g.count:,}", g.message, examples_text(g.examples)) for g in r.status.blocked),
        intro=(f"{r.status.more_blocked_groups} more reasons not listed." if r.status.more_blocked_groups else ""),
        numeric=(0,)))

    out.append(Section(
        "Timing", ("Step", "Finished", "Queue p50", "Queue p95", "Processing p50", "Processing p95"),
        tuple((s.step, f"{s.finished:,}", duration(s.queue_p50_ms), duration(s.queue_p95_ms),
               duration(s.processing_p50_ms), duration(s.processing_p95_ms)) for s in r.timing.steps
              if s.finished or s.queue_n),
        intro="Queue: submitted to started. Processing: started to finished.", numeric=(1, 2, 3, 4, 5)))

    out.append(Section("Throughput", ("", ""), tuple(throughput_pairs(r)), empty="nothing finished yet"))

    o = r.outputs
    files = o.files if outputs_limit is None else o.files[:outputs_limit]
    intro = f"{o.count:,} files, {_bytes(o.total_bytes)}"
    if o.output_dir:
        intro += f", under {o.output_dir}"
    if len(files) < o.count:
        intro += f"; the first {len(files):,} are listed (json and csv list them all)"
    out.append(Section(
        "Outputs", ("Path", "Bytes", "Size", "SHA-256"),
        tuple((f.path, f"{f.bytes:,}", f"{f.width}x{f.height}" if f.width and f.height else "-", f.sha256)
              for f in files),
        intro=intro + ".", numeric=(1,), nowrap=(3,)))
    if r.live:  # a running run's status file has totals and counts only: show nothing that would look empty
        return [sec for sec in out if sec.title in ("Summary", "Status")]
    return out


def _n(v: int) -> str:
    return f"{v:,}" if v else ""


def _bytes(n: int) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:,} {unit}" if unit == "bytes" else f"{n:,.1f} {unit}"
        n /= 1000
    raise AssertionError  # pragma: no cover


def throughput_pairs(r: Report) -> list[tuple[str, str]]:
    tm = r.timing
    if not tm.buckets:
        return []
    done = sum(b.completed for b in tm.buckets)
    failed = sum(b.failed for b in tm.buckets)
    peak = max(tm.buckets, key=lambda b: b.completed)
    span = (tm.last_finished_at - tm.first_finished_at).total_seconds()
    pairs = [("Finished", f"{done:,} completed, {failed:,} failed/error, from {_ts(tm.first_finished_at)} "
                          f"to {_ts(tm.last_finished_at)}")]
    if span > 0:
        pairs.append(("Average", f"{done * 60 / span:,.1f} completions per minute"))
    pairs.append(("Peak", f"{peak.completed:,} completions in the {bucket_label(tm.bucket_seconds)} "
                          f"from {_ts(peak.start)}"))
    return pairs


# -- table (rich) -----------------------------------------------------------------------------


def render_table(r: Report, *, width: int = 120, outputs_limit: int | None = 20, color: bool = False) -> str:
    from rich import box
    from rich.console import Console
    from rich.table import Table

    buf = io.StringIO()
    console = Console(file=buf, width=width, color_system="standard" if color else None,
                      force_terminal=color, highlight=False, emoji=False, soft_wrap=False)
    console.print("[bold]pixbatch report[/bold]", markup=True)
    for sec in sections(r, outputs_limit=outputs_limit):
        if sec.headers == ("", ""):
            tbl = Table(title=sec.title, title_justify="left", show_header=False, box=box.SIMPLE)
            tbl.add_column(style="bold")
            tbl.add_column()
        else:
            tbl = Table(title=sec.title, title_justify="left", box=box.SIMPLE_HEAD)
            for i, h in enumerate(sec.headers):
                tbl.add_column(h, justify="right" if i in sec.numeric else "left",
                               overflow="fold", no_wrap=i in sec.nowrap,
                               min_width=64 if i in sec.nowrap else None)
        if sec.intro:
            tbl.caption = sec.intro
            tbl.caption_justify = "left"
        if not sec.rows:
            console.print(f"{sec.title}: {sec.empty}", markup=False)
            continue
        for row in sec.rows:
            tbl.add_row(*row)
        console.print(tbl)
    if r.notes:
        console.print("Notes", style="bold", markup=False)
        for n in r.notes:
            console.print(f"- {n}", markup=False)
    return buf.getvalue()


# -- markdown ---------------------------------------------------------------------------------


def _md_cell(s: str) -> str:
    return s.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def render_md(r: Report, *, outputs_limit: int | None = 20) -> str:
    lines = ["# pixbatch report", ""]
    for sec in sections(r, outputs_limit=outputs_limit):
        lines += [f"## {sec.title}", ""]
        if sec.intro:
            lines += [sec.intro, ""]
        if not sec.rows:
            lines += [f"_{sec.empty}_", ""]
            continue
        if sec.headers == ("", ""):
            lines += [f"- **{_md_cell(k)}**: {_md_cell(v)}" for k, v in sec.rows]
            lines.append("")
            continue
        lines.append("| " + " | ".join(_md_cell(h) for h in sec.headers) + " |")
        lines.append("|" + "|".join("---:" if i in sec.numeric else "---" for i in range(len(sec.headers))) + "|")
        lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in sec.rows]
        lines.append("")
    if r.notes:
        lines += ["## Notes", ""] + [f"- {_md_cell(n)}" for n in r.notes] + [""]
    lines += ["## Audit trail", "",
              "Every request and every status seen is in the state file. Open it read-only with DuckDB "
              f"(`duckdb -readonly {r.state_path}`, or `duckdb.connect(path, read_only=True)` in Python) and query:",
              ""]
    for title, sql in r.audit_sql:
        lines += [f"{title}:", "", "```sql", sql, "```", ""]
    return "\n".join(lines)


# -- json -------------------------------------------------------------------------------------

_EXTRA: dict[type, tuple[str, ...]] = {Variance: ("delta_micros",), SpendTotals: ("delta_micros",),
                                       Outputs: ("truncated",)}


@functools.cache
def _names(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls)) + _EXTRA.get(cls, ())


def _plain(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, float):
        raise TypeError(f"a float reached the JSON report: {value!r}")
    return value


def _output_file(f: OutputFile) -> dict[str, Any]:
    # the one list that can have millions of entries: no generic walk
    return {"key": f.key, "step": f.step, "input_id": f.input_id, "path": f.path, "sha256": f.sha256,
            "bytes": f.bytes, "width": f.width, "height": f.height, "media_type": f.media_type}


def to_jsonable(obj: Any) -> Any:
    """A Report (or any part of it) as JSON-ready data: money as micros + decimal strings, no floats."""
    if isinstance(obj, OutputFile):
        return _output_file(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out: dict[str, Any] = {}
        for name in _names(type(obj)):
            value = getattr(obj, name)
            if name == "by_state":
                out[name] = dict(value)
                continue
            if name == "audit_sql":
                out[name] = [{"title": t, "sql": s} for t, s in value]
                continue
            out[name] = to_jsonable(value)
            if name.endswith("_micros"):
                out[name[: -len("_micros")] + "_usd"] = None if value is None else usd_decimal(value)
        return out
    if isinstance(obj, tuple | list):
        return [to_jsonable(x) for x in obj]
    return _plain(obj)


def render_json(r: Report, *, indent: int | None = 2) -> str:
    data = {"format": "pixbatch-report/1", **to_jsonable(r)}
    return json.dumps(data, indent=indent, ensure_ascii=False) + "\n"


# -- csv --------------------------------------------------------------------------------------

CSV_COLUMNS = ("section", "step", "op", "tier", "state", "group", "metric", "value", "usd",
               "key", "input_id", "path", "sha256", "bytes", "width", "height")


def render_csv(r: Report) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    w.writeheader()

    def money(section: str, metric: str, micros: int | None, **kw: Any) -> None:
        if micros is not None:
            w.writerow({"section": section, "metric": metric, "value": micros, "usd": usd_decimal(micros), **kw})

    def count(section: str, metric: str, n: int | None, **kw: Any) -> None:
        if n is not None:
            w.writerow({"section": section, "metric": metric, "value": n, **kw})

    for f in dataclasses.fields(SpendTotals):
        v = getattr(r.spend.totals, f.name)
        (money if f.name.endswith("_micros") else count)("total", f.name, v)
    money("total", "delta_micros", r.spend.totals.delta_micros)
    money("total", "planned_low_micros", r.spend.planned_low_micros)
    money("total", "planned_high_micros", r.spend.planned_high_micros)
    for ln in r.spend.lines:
        where = {"step": ln.step, "op": ln.op, "tier": ln.tier}
        for f in dataclasses.fields(ln):
            if f.name in where:
                continue
            (money if f.name.endswith("_micros") else count)("spend", f.name, getattr(ln, f.name), **where)
    for v in r.spend.variance:
        count("variance", "items", v.items, group=v.cause)
        for m in ("est_low_micros", "est_high_micros", "charged_micros", "delta_micros"):
            money("variance", m, getattr(v, m), group=v.cause)
    for c in r.status.counts:
        count("status", "items", c.count, step=c.step, state=c.state)
    for section, groups in (("failure", r.status.failures), ("blocked", r.status.blocked)):
        for g in groups:
            count(section, "items", g.count, state=g.state, group=g.message)
            for e in g.examples:
                w.writerow({"section": section + "_example", "state": g.state, "group": g.message, "step": e.step,
                            "key": e.key, "input_id": e.input_id or "", "path": e.output_name or ""})
    for s in r.timing.steps:
        for m in ("finished", "queue_n", "queue_p50_ms", "queue_p95_ms", "processing_n", "processing_p50_ms",
                  "processing_p95_ms"):
            count("timing", m, getattr(s, m), step=s.step)
    for b in r.timing.buckets:
        count("throughput", "completed", b.completed, group=b.start.isoformat())
        count("throughput", "failed", b.failed, group=b.start.isoformat())
    for o in r.outputs.files:
        w.writerow({"section": "output", "step": o.step, "key": o.key, "input_id": o.input_id or "", "path": o.path,
                    "sha256": o.sha256, "bytes": o.bytes, "width": o.width or "", "height": o.height or ""})
    for n in r.notes:
        w.writerow({"section": "note", "group": n})
    return buf.getvalue()


# -- html -------------------------------------------------------------------------------------

STATE_COLORS = {
    "COMPLETED": "#2e7d32", "FAILED": "#c62828", "ERROR": "#ef6c00", "FAILED_VALIDATION": "#8e24aa",
    "AMBIGUOUS": "#f9a825", "BLOCKED": "#757575", "PENDING": "#bdbdbd", "SUBMITTING": "#64b5f6",
    "SUBMITTED": "#1e88e5",
}
_CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1100px;
color:#222;padding:0 1em}
h1{font-size:1.6em}h2{font-size:1.2em;margin-top:1.8em;border-bottom:1px solid #ddd;padding-bottom:.2em}
table{border-collapse:collapse;margin:.5em 0}th,td{padding:.25em .7em;border-bottom:1px solid #eee;
text-align:left;vertical-align:top}th{background:#f5f5f5}td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
tr:last-child td{font-weight:600}table.kv tr:last-child td,table.plain tr:last-child td{font-weight:normal}
.charts{display:flex;flex-wrap:wrap;gap:1.5em}figure{margin:0}figcaption{font-weight:600;margin-bottom:.3em}
pre{background:#f7f7f7;padding:.6em;overflow-x:auto}.note{background:#fff8e1;padding:.4em .8em;
border-left:4px solid #f9a825;margin:.3em 0}code{font-size:.95em}
"""


def _svg_text(x: float, y: float, s: str, anchor: str = "start", size: int = 11, extra: str = "") -> str:
    return (f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}" '
            f'font-family="sans-serif"{extra}>{html.escape(s)}</text>')


def svg_spend_by_step(r: Report) -> str:
    """Grouped bars per step: estimate low, estimate high, charged."""
    steps = r.spend.steps
    series: tuple[tuple[str, str, str], ...] = (
        ("estimate (low)", "#90caf9", "est_low_micros"), ("estimate (high)", "#1e88e5", "est_high_micros"),
        ("charged", "#2e7d32", "charged_micros"))
    if steps and steps[0].planned_high_micros is not None:
        series = (("planned (high)", "#b0bec5", "planned_high_micros"), *series)
    top = max([getattr(s, a) or 0 for s in steps for _, _, a in series] + [1])
    W, H, left, bottom, topm = max(480, 130 * len(steps) + 90), 260, 70, 40, 30
    ph = H - bottom - topm
    group = (W - left - 10) / max(1, len(steps))
    k = len(series)
    bw = min(28, (group - 16) / k)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" id="chart-spend" width="{W}" height="{H}" '
             f'viewBox="0 0 {W} {H}" role="img" aria-label="Spend by step: estimate vs charged">']
    for i in range(5):  # grid + axis labels
        v = top * i / 4
        y = topm + ph - ph * i / 4
        parts.append(f'<line x1="{left}" x2="{W - 10}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e0e0e0"/>')
        parts.append(_svg_text(left - 6, y + 4, format_usd(int(v)), "end", 10))
    for i, s in enumerate(steps):
        x0 = left + i * group + (group - k * bw) / 2
        for j, (label, color, attr) in enumerate(series):
            v = getattr(s, attr) or 0
            h = ph * v / top
            parts.append(f'<rect class="bar" x="{x0 + j * bw:.1f}" y="{topm + ph - h:.1f}" width="{bw - 2:.1f}" '
                         f'height="{h:.1f}" fill="{color}"><title>{html.escape(s.step)}: {label} '
                         f'{format_usd(v)}</title></rect>')
        parts.append(_svg_text(left + i * group + group / 2, H - bottom + 16, s.step, "middle"))
    for j, (label, color, _) in enumerate(series):
        parts.append(f'<rect x="{left + j * 100}" y="8" width="10" height="10" fill="{color}"/>')
        parts.append(_svg_text(left + j * 100 + 14, 17, label, size=10))
    parts.append("</svg>")
    return "".join(parts)


def svg_status(r: Report) -> str:
    """A horizontal stacked bar per step, by state, with a legend that wraps."""
    st = r.status
    W, row, left = 560, 26, 110
    legend: list[tuple[float, float, str, str]] = []  # x, y, state, label
    x, y = 10.0, 8.0
    for state, n in st.by_state:
        label = f"{state} {n:,}"
        width = 22 + 6.2 * len(label)
        if x + width > W and x > 10:
            x, y = 10.0, y + 16
        legend.append((x, y, state, label))
        x += width
    top = y + 24
    H = int(top + row * max(1, len(st.steps)) + 10)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" id="chart-status" width="{W}" height="{H}" '
             f'viewBox="0 0 {W} {H}" role="img" aria-label="Status by step">']
    for lx, ly, state, label in legend:
        parts.append(f'<rect x="{lx:.0f}" y="{ly:.0f}" width="10" height="10" fill="{STATE_COLORS.get(state, "#000")}"/>')
        parts.append(_svg_text(lx + 13, ly + 9, label, size=10))
    pw = W - left - 20
    for i, step in enumerate(st.steps):
        total = st.count(step) or 1
        y = top + i * row
        x = float(left)
        parts.append(_svg_text(left - 6, y + 14, step, "end"))
        for c in (c for c in st.counts if c.step == step):
            w = pw * c.count / total
            parts.append(f'<rect class="bar" x="{x:.1f}" y="{y:.1f}" width="{w:.1f}" height="{row - 6}" '
                         f'fill="{STATE_COLORS.get(c.state, "#000")}"><title>{html.escape(step)}: {c.state} '
                         f'{c.count:,}</title></rect>')
            x += w
    parts.append("</svg>")
    return "".join(parts)


def svg_throughput(r: Report) -> str:
    """Completions (and failures) per time bucket, as stacked columns."""
    tm = r.timing
    W, H, left, bottom, topm = 640, 220, 45, 36, 24
    pw, ph = W - left - 10, H - bottom - topm
    top = max([b.completed + b.failed for b in tm.buckets] + [1])
    n = max(1, len(tm.buckets))
    bw = min(pw / n, 40.0)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" id="chart-throughput" width="{W}" '
             f'height="{H}" viewBox="0 0 {W} {H}" role="img" aria-label="Completions over time">']
    for v in sorted({0, top // 2, top}):
        y = topm + ph - ph * v / top
        parts.append(f'<line x1="{left}" x2="{W - 10}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e0e0e0"/>')
        parts.append(_svg_text(left - 6, y + 4, f"{v:,}", "end", 10))
    for i, b in enumerate(tm.buckets):
        x = left + i * bw
        hc = ph * b.completed / top
        hf = ph * b.failed / top
        label = f"{_ts(b.start)}: {b.completed} completed, {b.failed} failed"
        parts.append(f'<rect class="bar" x="{x:.1f}" y="{topm + ph - hc:.1f}" width="{max(bw - 1, 0.5):.1f}" '
                     f'height="{hc:.1f}" fill="#2e7d32"><title>{html.escape(label)}</title></rect>')
        if b.failed:
            parts.append(f'<rect class="bar" x="{x:.1f}" y="{topm + ph - hc - hf:.1f}" '
                         f'width="{max(bw - 1, 0.5):.1f}" height="{hf:.1f}" fill="#c62828">'
                         f'<title>{html.escape(label)}</title></rect>')
    if tm.buckets:
        parts.append(_svg_text(left, H - 12, _ts(tm.buckets[0].start), size=10))
        parts.append(_svg_text(max(left + n * bw, left + 230), H - 12, _ts(tm.buckets[-1].start), "end", 10))
    parts.append(_svg_text(left, 14, f"per {bucket_label(tm.bucket_seconds)}: completed (green), failed (red)",
                           size=10))
    parts.append("</svg>")
    return "".join(parts)


def _html_table(sec: Section) -> str:
    if sec.headers == ("", ""):
        body = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in sec.rows)
        return f'<table class="kv">{body}</table>'
    head = "".join(f'<th class="n">{html.escape(h)}</th>' if i in sec.numeric else f"<th>{html.escape(h)}</th>"
                   for i, h in enumerate(sec.headers))
    rows = "".join("<tr>" + "".join(f'<td class="n">{html.escape(c)}</td>' if i in sec.numeric
                                    else f"<td>{html.escape(c)}</td>" for i, c in enumerate(row)) + "</tr>"
                   for row in sec.rows)
    cls = ' class="plain"' if sec.title in ("Failures", "Blocked", "Outputs", "Timing") else ""
    return f"<table{cls}><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


def render_html(r: Report, *, outputs_limit: int | None = 20) -> str:
    title = "pixbatch report" + (f" — {r.run.run_id}" if r.run else "")
    body = [f"<h1>{html.escape(title)}</h1>"]
    for n in r.notes:
        body.append(f'<div class="note">{html.escape(n)}</div>')
    secs = sections(r, outputs_limit=outputs_limit)
    body.append(f"<h2>{secs[0].title}</h2>{_html_table(secs[0])}")
    charts = [("Spend by step: estimate vs charged", svg_spend_by_step), ("Status by step", svg_status),
              ("Completions over time", svg_throughput)]
    if r.live:
        charts = charts[1:2]
    body.append('<h2>Charts</h2><div class="charts">'
                + "".join(f"<figure><figcaption>{t}</figcaption>{fn(r)}</figure>" for t, fn in charts) + "</div>")
    for sec in secs[1:]:
        body.append(f"<h2>{html.escape(sec.title)}</h2>")
        if sec.intro:
            body.append(f"<p>{html.escape(sec.intro)}</p>")
        body.append(_html_table(sec) if sec.rows else f"<p><em>{html.escape(sec.empty)}</em></p>")
    body.append("<h2>Audit trail</h2><p>Every request and every status seen is in the state file. Open it "
                f"read-only with DuckDB (<code>duckdb -readonly {html.escape(r.state_path)}</code>) and query:</p>")
    for t, sql in r.audit_sql:
        body.append(f"<p>{html.escape(t)}:</p><pre><code>{html.escape(sql)}</code></pre>")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>"
            + "\n".join(body) + "</body></html>\n")


RENDERERS: dict[str, Callable[..., str]] = {
    "table": render_table, "json": render_json, "csv": render_csv, "md": render_md, "html": render_html,
}
