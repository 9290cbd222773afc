"""The terminal table (rich) and markdown renderers, over the shared ``sections``."""

from __future__ import annotations

import io

from ..report import Report
from .layout import sections


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
