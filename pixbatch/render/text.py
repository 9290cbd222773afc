"""The terminal table (rich) and markdown renderers, over the shared ``sections``."""

from __future__ import annotations

import io

from rich.markup import escape

from ..report import Report
from .layout import sections, title


def render_table(r: Report, *, width: int = 80, outputs_limit: int | None = 20, color: bool = False) -> str:
    """The terminal report: the narrow layout, at ``width`` columns (80 fits it all).

    Numbers, amounts and checksum prefixes never wrap; text wraps between words (a word longer
    than its column, such as a long URL, is folded).
    """
    from rich import box
    from rich.console import Console
    from rich.table import Table

    buf = io.StringIO()
    console = Console(file=buf, width=width, color_system="standard" if color else None,
                      force_terminal=color, highlight=False, emoji=False, soft_wrap=False)
    console.print(f"[bold]{escape(title(r))}[/bold]", markup=True)
    for sec in sections(r, outputs_limit=outputs_limit, narrow=True):
        if not sec.rows:
            console.print(f"\n{sec.title}: {sec.empty}", markup=False)
            continue
        if sec.headers == ("", ""):
            tbl = Table(title=sec.title, title_justify="left", show_header=False, box=box.SIMPLE)
            tbl.add_column(style="bold", no_wrap=True)
            tbl.add_column(overflow="fold")
        else:
            tbl = Table(title=sec.title, title_justify="left", box=box.SIMPLE_HEAD)
            for i, h in enumerate(sec.headers):
                numeric = i in sec.numeric
                # a text column is never squeezed out: it keeps room for a word of up to 12 characters
                longest = max((len(w) for row in sec.rows for w in row[i].split()), default=1)
                tbl.add_column(h, justify="right" if numeric else "left", no_wrap=numeric,
                               overflow="fold", ratio=None if numeric else 1,
                               min_width=None if numeric else min(longest, 12))
        if sec.intro:
            tbl.caption = sec.intro
            tbl.caption_justify = "left"
        for row in sec.rows:
            tbl.add_row(*row)
        console.print(tbl)
        if sec.intro:
            console.print()
    if r.notes:
        console.print("Notes", style="bold", markup=False)
        for n in r.notes:
            console.print(f"- {n}", markup=False)
    return "".join(line.rstrip() + "\n" for line in buf.getvalue().splitlines())


def _md_cell(s: str) -> str:
    return s.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def render_md(r: Report, *, outputs_limit: int | None = 20) -> str:
    lines = [f"# {title(r)}", ""]
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
    for what, sql in r.audit_sql:
        lines += [f"{what}:", "", "```sql", sql, "```", ""]
    return "\n".join(lines)
