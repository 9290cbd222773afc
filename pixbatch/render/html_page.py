"""The HTML renderer: one self-contained file (inline CSS and the SVG charts of ``charts.py``)."""

from __future__ import annotations

import html

from ..report import Report
from .charts import svg_spend_by_step, svg_status, svg_throughput
from .layout import Section, sections

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
