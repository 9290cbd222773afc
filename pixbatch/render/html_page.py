"""The HTML renderer: one self-contained file for people who paid for images.

At the top: the manifest's name, what was asked (steps, items) and what it cost. Then the
gallery (``report.gallery``, when the report was built with one): per step, thumbnails of the
outputs embedded as data URIs, each linked to its full file by a path relative to the page,
captioned with its input, matrix values and price; for a chained step the input (its
upstream's output) and the output side by side; the items that did not complete as cards
with their error. Then the charts (inline SVG, ``charts.py``), the shared sections and the
audit SQL. No script, nothing fetched: the page is complete offline.
"""

from __future__ import annotations

import html
import os
from pathlib import Path
from urllib.parse import quote

from ..money import format_usd
from ..report import Report
from .charts import svg_spend_by_step, svg_status, svg_throughput
from .layout import Section, run_when, sections, title, usd_range

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1180px;
color:#222;padding:0 1em}
h1{font-size:1.7em;margin-bottom:.2em}h2{font-size:1.25em;margin-top:1.8em;border-bottom:1px solid #ddd;
padding-bottom:.2em}h3{font-size:1.05em;margin:1.2em 0 .4em}h3 small{font-weight:normal;color:#666}
.lead{color:#444;margin-top:0}
.stats{display:flex;flex-wrap:wrap;gap:1em;margin:1em 0}.stat{border:1px solid #e0e0e0;border-radius:8px;
padding:.6em 1em;min-width:11em}.stat .v{font-size:1.5em;font-weight:600}.stat .k{color:#555}
.stat .s{color:#777;font-size:.9em}
table{border-collapse:collapse;margin:.5em 0}th,td{padding:.25em .7em;border-bottom:1px solid #eee;
text-align:left;vertical-align:top}th{background:#f5f5f5}td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
tr:last-child td{font-weight:600}table.kv tr:last-child td,table.plain tr:last-child td{font-weight:normal}
.grid{display:flex;flex-wrap:wrap;gap:12px}
figure.tile{margin:0;width:214px;border:1px solid #e0e0e0;border-radius:6px;padding:6px;background:#fafafa}
figure.tile.pair{width:436px}.pics{display:flex;align-items:center;gap:6px;justify-content:center}
.pics .arrow{color:#888;font-size:1.3em}
.pic{width:200px;height:200px;display:flex;align-items:center;justify-content:center;background:#eee}
.pic img{max-width:200px;max-height:200px}.pic .none{color:#888;font-size:.85em;padding:1em;text-align:center}
figcaption{font-size:.85em;margin-top:4px;word-break:break-word}figcaption .name{font-weight:600}
figcaption .price{float:right;color:#2e7d32;font-weight:600}.vars{color:#555}
.card.fail{width:214px;border:1px solid #ef9a9a;background:#fff5f5;border-radius:6px;padding:8px;font-size:.85em;
word-break:break-word}.card.fail.pair{width:436px}.card .state{font-weight:700;color:#c62828}
.card .err{color:#6d1b1b;margin-top:4px}.more{color:#666;font-style:italic}
.charts{display:flex;flex-wrap:wrap;gap:1.5em}figure.chart-fig{margin:0}
figure.chart-fig figcaption{font-weight:600;font-size:1em;margin-bottom:.3em}
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


def _e(s: object) -> str:
    return html.escape(str(s))


def _top(r: Report) -> str:
    """What was asked and what it cost, before anything else."""
    t = r.spend.totals
    out = []
    if r.run:
        when = run_when(r)
        out.append(f'<p class="lead">Run <code>{_e(r.run.run_id)}</code>: <b>{_e(r.run.outcome or "?")}</b>'
                   + (f", {_e(when)}" if when else "") + ".</p>")
    done = r.status.count(state="COMPLETED")
    others = ", ".join(f"{n:,} {s}" for s, n in r.status.by_state if s != "COMPLETED" and n)
    budget = f" · budget {format_usd(t.budget_micros)}" if t.budget_micros is not None else ""
    stats = [
        (format_usd(t.charged_micros), "charged", f"estimate {usd_range(t.est_low_micros, t.est_high_micros)}{budget}"),
        (f"{done:,} / {r.status.count():,}", "items completed", others or "every item completed"),
        (f"{r.outputs.count:,}", "output files", f"under {r.outputs.output_dir}" if r.outputs.output_dir else ""),
    ]
    out.append('<div class="stats">' + "".join(
        f'<div class="stat"><div class="v">{_e(v)}</div><div class="k">{_e(k)}</div><div class="s">{_e(s)}</div>'
        "</div>" for v, k, s in stats) + "</div>")
    ops = {ln.step: ln.op for ln in r.spend.lines}
    ups = {g.step: g.upstream_step for g in r.gallery.steps} if r.gallery else {}
    rows = "".join(
        f"<tr><td>{_e(s.step)}</td><td>{_e(ops.get(s.step, ''))}</td>"
        f"<td>{_e('each output of ' + ups[s.step]) if ups.get(s.step) else 'the inputs'}</td>"
        f'<td class="n">{s.items:,}</td><td class="n">{_e(usd_range(s.est_low_micros, s.est_high_micros))}</td>'
        f'<td class="n">{_e(format_usd(s.charged_micros))}</td></tr>' for s in r.spend.steps)
    if rows:
        out.append("<h2>What was asked</h2><table class=\"plain\"><thead><tr><th>Step</th><th>Operation</th>"
                   "<th>Applied to</th><th class=\"n\">Items</th><th class=\"n\">Estimated</th>"
                   f"<th class=\"n\">Charged</th></tr></thead><tbody>{rows}</tbody></table>")
    return "".join(out)


def _href(output_dir: str | None, path: str, base_dir: Path | None) -> str:
    """The output file's path relative to where the page is (``base_dir``; default: the working directory)."""
    full = Path(output_dir) / path if output_dir else Path(path)
    try:
        rel = os.path.relpath(full, base_dir if base_dir is not None else Path.cwd())
    except ValueError:  # another drive (Windows)
        rel = str(full)
    return quote(rel.replace(os.sep, "/"))


def _pic(uri: str | None, href: str | None, alt: str) -> str:
    inner = (f'<img src="{uri}" alt="{_e(alt)}">' if uri
             else f'<span class="none">{_e(alt)}<br>(no thumbnail)</span>')
    if href:
        inner = f'<a href="{href}">{inner}</a>'
    return f'<div class="pic">{inner}</div>'


def _caption(t, *, with_price: bool) -> str:
    bits = []
    if with_price and t.charged_micros is not None:
        bits.append(f'<span class="price">{_e(format_usd(t.charged_micros))}</span>')
    bits.append(f'<span class="name">{_e(t.output_name or t.key[:12])}</span><br>')
    detail = [f"input {t.input_id}"] if t.input_id else []
    detail += [f"{k}: {v}" for k, v in t.vars]
    bits.append(f'<span class="vars">{_e(" · ".join(detail))}</span>')
    return "".join(bits)


def _gallery(r: Report, base_dir: Path | None) -> str:
    g = r.gallery
    if g is None:
        return ""
    out = ["<h2>Gallery</h2>"]
    if not any(s.tiles or s.cards for s in g.steps):
        return out[0] + "<p><em>No output yet.</em></p>"
    out.append(f"<p>Thumbnails of the outputs, step by step; each links to its file. {g.embedded:,} embedded"
               + (f" (at most {g.limit:,} per page)" if g.embedded >= g.limit else "") + ".</p>")
    for s in g.steps:
        out.append(f'<h3 id="step-{_e(s.step)}">{_e(s.step)} <small>{_e(s.op)}'
                   + (f" of each output of {_e(s.upstream_step)}" if s.upstream_step else "")
                   + f" · {s.outputs:,} output(s)" + (f", {s.failures:,} not completed" if s.failures else "")
                   + "</small></h3>")
        cells = []
        for t in s.tiles:
            href = _href(g.output_dir, t.path, base_dir) if t.path else None
            pics = _pic(t.thumb, href, t.output_name or t.key[:12])
            pair = t.upstream_path is not None
            if pair:
                up_href = _href(g.output_dir, t.upstream_path, base_dir)
                pics = (_pic(t.upstream_thumb, up_href, t.upstream_path) + '<span class="arrow">&rarr;</span>' + pics)
            cells.append(f'<figure class="tile{" pair" if pair else ""}"><div class="pics">{pics}</div>'
                         f"<figcaption>{_caption(t, with_price=True)}</figcaption></figure>")
        for t in s.cards:
            pair = t.upstream_path is not None
            pic = ""
            if pair:
                pic = ('<div class="pics">' + _pic(t.upstream_thumb, _href(g.output_dir, t.upstream_path, base_dir),
                                                    t.upstream_path) + "</div>")
            charged = f" · charged {format_usd(t.charged_micros)}" if t.charged_micros else ""
            cells.append(f'<div class="card fail{" pair" if pair else ""}">{pic}<div class="state">{_e(t.state)}'
                         f"{_e(charged)}</div>{_caption(t, with_price=False)}"
                         f'<div class="err">{_e(t.error or "no message recorded")}</div></div>')
        out.append('<div class="grid">' + "".join(cells) + "</div>")
        more = s.outputs - len(s.tiles)
        if more > 0:
            out.append(f'<p class="more">{more:,} more output(s) of {_e(s.step)} not shown here: the Outputs '
                       "table and the output directory have them all.</p>")
        if s.failures > len(s.cards):
            out.append(f'<p class="more">{s.failures - len(s.cards):,} more item(s) of {_e(s.step)} did not '
                       "complete: `pixbatch failures` lists them all.</p>")
    return "".join(out)


def render_html(r: Report, *, outputs_limit: int | None = 20, base_dir: str | Path | None = None) -> str:
    """The page (see the module docstring). ``base_dir``: where the page will be saved, so that links to
    the output files are relative to it (default: the working directory)."""
    base = Path(base_dir) if base_dir is not None else None
    heading = title(r)
    body = [f"<h1>{_e(heading)}</h1>", _top(r)]
    for n in r.notes:
        body.append(f'<div class="note">{_e(n)}</div>')
    body.append(_gallery(r, base))
    charts = [("Spend by step: estimate vs charged", svg_spend_by_step), ("Status by step", svg_status),
              ("Completions over time", svg_throughput)]
    if r.live:
        charts = charts[1:2]
    body.append('<h2>Charts</h2><div class="charts">'
                + "".join(f'<figure class="chart-fig"><figcaption>{t}</figcaption>{fn(r)}</figure>'
                          for t, fn in charts) + "</div>")
    for sec in sections(r, outputs_limit=outputs_limit):
        body.append(f"<h2>{_e(sec.title)}</h2>")
        if sec.intro:
            body.append(f"<p>{_e(sec.intro)}</p>")
        body.append(_html_table(sec) if sec.rows else f"<p><em>{_e(sec.empty)}</em></p>")
    body.append("<h2>Audit trail</h2><p>Every request and every status seen is in the state file. Open it "
                f"read-only with DuckDB (<code>duckdb -readonly {_e(r.state_path)}</code>) and query:</p>")
    for t, sql in r.audit_sql:
        body.append(f"<p>{_e(t)}:</p><pre><code>{_e(sql)}</code></pre>")
    page_title = heading + (f" ({r.run.run_id})" if r.run else "")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{_e(page_title)}</title><style>{_CSS}</style></head><body>"
            + "\n".join(body) + "</body></html>\n")
