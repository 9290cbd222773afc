"""The commands that report on a state file: ``pixbatch report`` (spend, status, timing,
outputs; a table, json, csv, md or an HTML page with a gallery), ``pixbatch failures`` (every
item that did not complete) and ``pixbatch runs`` (the runs of a state file). Click wiring
only, like ``cli.py``, which adds them to its group; the shared options are ``cli_options``."""

from __future__ import annotations

import click

from .cli_params import PathArg

from .cli_options import LibraryDefault, state_source
from .cli_options import resolve_state as _resolve_state


@click.command("report")
@state_source
@click.option("--run", "run_id", default=None, metavar="ID", help="Only the items this run touched.")
@click.option("--all", "all_items", is_flag=True,
              help="Every item in the state file, including those of earlier versions of the manifest.")
@click.option("--format", "fmt", type=click.Choice(["table", "json", "csv", "md", "html"]), default="table",
              show_default=True, help="Output format (html: one self-contained file with charts).")
@click.option("-o", "--output", "output", type=PathArg(dir_okay=False, writable=True), default=None,
              help="Write the report to this file instead of stdout.")
@click.option("--limit", type=click.IntRange(0, 10_000_000), default=LibraryDefault("pixbatch.report:build_report", "outputs_limit"),
              show_default=True,
              help="Output files listed in table/md/html (json and csv list them all).")
@click.option("--gallery", type=click.IntRange(0, 100_000), default=LibraryDefault("pixbatch.report.gallery:build_gallery",
                                                                          "limit"),
              show_default=True, metavar="N", help="html: thumbnails embedded in the gallery (0: no gallery).")
def report_command(manifest_path: str | None, state_path: str | None, run_id: str | None, all_items: bool,
                   fmt: str, output: str | None, limit: int, gallery: int) -> None:
    """What a run cost and did: spend, status, timing and outputs, from the state file.

    The terminal table fits 80 columns. --format html writes one self-contained page: what
    was asked and what it cost at the top, a gallery of the outputs (thumbnails linked to
    their files, captioned with input, matrix values and price; failures as cards), charts.

    Spend is estimated vs charged per step, operation and price tier, with the difference
    explained; then charged, not charged (ERROR, FAILED_VALIDATION), at risk (AMBIGUOUS)
    and reserved (in flight). Status counts per step and state, failures grouped by
    message, blocked items and why. Queue and processing p50/p95 per step, completions
    over time, and where each output file is with its SHA-256. Works on the state of an
    interrupted run, and (with live totals only) while a run holds the state file.
    """
    from pathlib import Path

    from .render import render
    from .report import build_report

    path, manifest = _resolve_state(manifest_path, state_path)
    rep = build_report(path, run_id=run_id, all_items=all_items,
                       outputs_limit=None if fmt in ("json", "csv") else limit,
                       output_dir=manifest.output_dir if manifest else None,
                       gallery=gallery if fmt == "html" else 0)
    kw: dict = {"outputs_limit": limit} if fmt in ("table", "md", "html") else {}
    if fmt == "html":
        kw["base_dir"] = Path(output).resolve().parent if output else Path.cwd()
    if fmt == "table" and output is None:
        import shutil
        import sys

        kw["color"] = sys.stdout.isatty()
        # the layout fits 80 columns; a wider terminal gives long messages more room
        kw["width"] = max(80, min(shutil.get_terminal_size().columns, 120)) if kw["color"] else 80
    _write_or_echo(render(rep, fmt, **kw), output, f"{fmt} report")


def _write_or_echo(text: str, output: str | None, what: str) -> None:
    from pathlib import Path

    if output is None:
        click.echo(text, nl=False)
    else:
        try:
            Path(output).write_text(text, "utf-8")
        except OSError as exc:
            raise click.FileError(output, hint=f"{exc.strerror or exc}; choose another -o file") from None
        click.echo(f"wrote {what} to {output}", err=True)


@click.command("failures")
@state_source
@click.option("--run", "run_id", default=None, metavar="ID", help="Only the items this run touched.")
@click.option("--all", "all_items", is_flag=True, help="Every item in the state file, all manifest versions.")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table", show_default=True,
              help="Output format.")
@click.option("-o", "--output", "output", type=PathArg(dir_okay=False, writable=True), default=None,
              help="Write the list to this file instead of stdout.")
def failures_command(manifest_path: str | None, state_path: str | None, run_id: str | None, all_items: bool,
                     fmt: str, output: str | None) -> None:
    """Every item that did not complete, one per line: FAILED, ERROR, FAILED_VALIDATION and
    AMBIGUOUS items, BAD_INPUT items (never sent: an input could not be fetched or is not an
    image), BLOCKED items with the upstream item that blocked them, and completed items whose
    output failed its checks; each with its output name, its input (id and URL) and its error.
    """
    from .render import render_failures
    from .report import list_failures

    path, _ = _resolve_state(manifest_path, state_path)
    _write_or_echo(render_failures(list_failures(path, run_id=run_id, all_items=all_items), fmt),
                   output, f"{fmt} list of failures")


@click.command("runs")
@state_source
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table", show_default=True,
              help="Output format.")
def runs_command(manifest_path: str | None, state_path: str | None, fmt: str) -> None:
    """The runs recorded in a state file: id, started, ended, outcome (completed, incomplete,
    interrupted, killed, budget, balance, auth), items sent and what they were charged."""
    from .render import render_runs
    from .report import list_runs

    path, _ = _resolve_state(manifest_path, state_path)
    click.echo(render_runs(list_runs(path), fmt), nl=False)


