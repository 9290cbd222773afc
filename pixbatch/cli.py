"""The ``pixbatch`` command: click wiring only.

Each command parses its options, calls the library, renders the result and lets
``PixbatchError`` propagate; the group maps that one base class, once, to a message on
stderr and its exit code (``errors.ExitCode``). ``--debug`` shows the traceback instead.

Defaults that the library defines (the gateway's base URL, concurrency, the first poll
delay, probe limits, the outputs listed) are read from the library's own signatures
(``LibraryDefault``), not restated here. Every amount of dollars is parsed by one
parameter type, ``USD`` (a bad or negative amount is a usage error: exit 2). Options that
several commands share are decorators (``state_source``, ``pricing_option``, ...). Those live in
``cli_options``; the commands that report on a state file (``report``, ``failures``, ``runs``)
in ``cli_reports``, added to the group here.
"""

from __future__ import annotations

import click

from . import __version__
from .cli_params import USD, HostPort, HttpUrl, Number, PathArg
from .cli_options import (RUN_OPTIONS, LibraryDefault, base_url_option, budget_option, json_option,
                          pricing_option, state_source)
from .cli_options import resolve_state as _resolve_state
from .cli_reports import failures_command, report_command, runs_command
from .errors import ExitCode, PixbatchError, redact


class _Failed(click.ClickException):
    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


class PixbatchGroup(click.Group):
    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except PixbatchError as exc:
            if (ctx.obj or {}).get("debug"):
                raise
            raise _Failed(redact(str(exc)), exc.exit_code) from None


@click.group(cls=PixbatchGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="pixbatch")
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Run large batches of P-Image jobs without overspending or losing work.

    validate -> estimate -> run -> report. The API key is read from PIXAZO_API_KEY.
    """
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


# -- commands are registered below, one block each ------------------------------------


# -- emulator --------------------------------------------------------------------------

_EMU_RATES = ("fail_rate", "error_rate", "submit_500_rate", "poll_500_rate", "drop_after_accept_rate",
              "submit_garbage_rate", "poll_garbage_rate", "webhook_duplicate_rate")
_EMU_DISTS = ("queue_time", "processing_time", "submit_latency", "poll_latency")


def _emulator_options(f):
    for name in reversed(_EMU_RATES):
        f = click.option(f"--{name.replace('_', '-')}", name, type=Number(0, 1), default=None,
                         help=f"Fraction (0-1): {name.replace('_', ' ')}.")(f)
    for name in reversed(_EMU_DISTS):
        f = click.option(f"--{name.replace('_', '-')}", name, default=None, metavar="SECONDS|MIN-MAX",
                         help=f"{name.replace('_', ' ').capitalize()}: fixed seconds or a uniform range.")(f)
    return f


@cli.command("emulator")
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to bind.")
@click.option("--port", default=8787, show_default=True, type=click.IntRange(0, 65535), help="Port (0: any free port).")
@click.option("--balance", "balance_micros", type=USD(), default=None, metavar="USD",
              help="Starting wallet in dollars, e.g. 10.00 [default: 10.00].")
@click.option("--key", "keys", multiple=True, envvar="PIXBATCH_EMULATOR_KEY",
              help="Accepted API key (repeatable; env PIXBATCH_EMULATOR_KEY) [default: test-key].")
@click.option("--forbidden-key", "forbidden_keys", multiple=True, help="A key answered with 403 (repeatable).")
@click.option("--rate-limit", type=Number(0, 1_000_000, min_open=True), default=None,
              help="Submits per second per key (429 above it).")
@click.option("--rate-burst", type=click.IntRange(1, 1_000_000), default=None,
              help="Token bucket size [default: the rate limit].")
@click.option("--seed", type=int, default=None, help="Seed for every random choice (faults, timings).")
@_emulator_options
@click.option("--throttle-rate", type=Number(0, 1), default=None,
              help="Fraction of submits answered 429 whatever the rate (Retry-After: none, an HTTP date or seconds).")
@click.option("--rate-window", default=None, metavar="N/SECONDS",
              help="API-Management fixed window: N submits per key per window, then 429 until it resets.")
@click.option("--quota", type=click.IntRange(0), default=None, help="Accepted submits per key per quota period, then 403 + Retry-After.")
@click.option("--quota-reset", type=Number(0, 365 * 86400, min_open=True), default=None, metavar="SECONDS", help="The quota period [default: 600].")
@click.option("--html-errors", is_flag=True, default=None, help="5xx answers carry an HTML page instead of JSON.")
@click.option("--edit-sizes", default=None, metavar="RATIO=WxH,...",
              help="Edit output size per aspect ratio, e.g. 16:9=1344x768,4:3=1152x864 [default: ~1 MP, sides /16].")
@click.option("--megapixel", default=None, metavar="PIXELS",
              help="Pixels in one MP (tiers, target mode, 8 MP cap): 1000000 or 2^20 [default: 1000000].")
@click.option("--factor-rounding", type=click.Choice(["round", "floor"]), default=None,
              help="Factor-mode output sides: round (default) or floor.")
@click.option("--fault", "faults", multiple=True, metavar="NAME", callback=lambda ctx, param, v: v or None,
              help="A misbehaving gateway or CDN for every job (repeatable); names in docs/emulator.md.")
@click.option("--render", type=click.Choice(["real", "lazy"]), default=None,
              help="real: fetch and process images (default); lazy: no fetch, outputs drawn on first GET.")
@click.option("--lazy-input-size", default=None, metavar="WxH",
              help="Input size assumed in lazy mode (sizes and prices follow it) [default: 1024x1024].")
@click.option("--workers", type=click.IntRange(1, 256), default=None, help="Threads for image work [default: 2].")
@click.option("--allow-http-webhooks", is_flag=True, default=None, help="Accept http:// webhook URLs (loopback tests).")
@pricing_option("Price table JSON [default: pixbatch's built-in table].")
@click.option("--media-dir", type=PathArg(file_okay=False), default=None,
              help="Where outputs are written [default: a temporary directory].")
@click.option("--config-json", default=None, help="A full EmulatorConfig as JSON (options above override it).")
def emulator_command(host: str, port: int, balance_micros: int | None, keys: tuple[str, ...],
                     forbidden_keys: tuple[str, ...], config_json: str | None, **options) -> None:
    """Run a local P-Image gateway emulator in the foreground.

    Prints the base URL on the first line and a key on the second. Point pixbatch at it
    with the URL and PIXAZO_API_KEY set to the key. Control routes: /_emulator/ledger,
    /_emulator/requests, /_emulator/stats, /_emulator/topup, /_emulator/config,
    /_emulator/script, /_emulator/advance, /_emulator/quota/reset. Defaults: queue
    0.2-1 s, processing 0.5-2 s, no faults. Every option: docs/emulator.md.
    """
    import json

    from .emulator import EmulatorConfig
    from .emulator.control import run_foreground
    from .money import format_usd

    try:
        settings = json.loads(config_json) if config_json else {}
    except ValueError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint="--config-json") from None
    if not isinstance(settings, dict):
        raise click.BadParameter(f"give a JSON object of settings, e.g. '{{\"fail_rate\": 0.1}}', "
                                 f"not {type(settings).__name__}", param_hint="--config-json")
    try:
        settings.update({k: v for k, v in options.items() if v is not None})
        if isinstance(settings.get("lazy_input_size"), str):
            w, _, h = settings["lazy_input_size"].lower().partition("x")
            try:
                settings["lazy_input_size"] = (int(w), int(h))
            except ValueError:
                raise click.BadParameter(f"{settings['lazy_input_size']!r} is not WxH, e.g. 1024x768",
                                         param_hint="--lazy-input-size") from None
        if balance_micros is not None:
            settings["balance_micros"] = balance_micros
        if keys:
            settings["api_keys"] = [k for k in keys if k]
        if forbidden_keys:
            settings["forbidden_keys"] = list(forbidden_keys)
        config = EmulatorConfig.from_dict(settings)
    except (ValueError, TypeError) as exc:
        raise click.UsageError(str(exc)) from None

    def announce(url: str) -> None:
        click.echo(url)
        click.echo(f"key: {config.api_key}")
        click.echo(f"balance: {format_usd(config.balance_micros)}  render: {config.render}  seed: {config.seed}  "
                   f"(Ctrl-C to stop)", err=True)

    run_foreground(config, host, port, announce)


# -- estimate --------------------------------------------------------------------------


@cli.command("estimate")
@click.argument("manifest_path", metavar="MANIFEST", type=PathArg(dir_okay=False))
@click.option("--state", "state_path", type=PathArg(dir_okay=False), default=None,
              help="State file holding the probe cache [default: the manifest's state file].")
@pricing_option("Price table JSON that replaces the built-in one.")
@budget_option("Exit 3 if the estimate's upper bound exceeds this [default: the manifest's budget_usd].")
@json_option("Print a machine-readable estimate (amounts in micros and USD).")
@click.option("--no-probe", is_flag=True,
              help="Fetch nothing: unknown input sizes stay unknown and their items are priced as a range.")
@click.option("--refresh-probes", is_flag=True, help="Retry probes that failed before (failures are cached).")
@click.option("--fresh", is_flag=True, help="Price every item as new: ignore what the state file holds and taught.")
@click.option("--probe-concurrency", type=click.IntRange(1, 512), show_default=True,
              default=LibraryDefault("pixbatch.estimate:estimate_manifest", "concurrency"), help="Images probed at once.")
@click.option("--probe-timeout", type=Number(0, 3600, min_open=True), show_default=True,
              default=LibraryDefault("pixbatch.estimate:estimate_manifest", "timeout"),
              help="Seconds allowed per image probe.")
def estimate_command(manifest_path: str, state_path: str | None, pricing_path: str | None, budget_micros: int | None,
                     as_json: bool, no_probe: bool, refresh_probes: bool, fresh: bool, probe_concurrency: int,
                     probe_timeout: float) -> None:
    """Estimate what MANIFEST will cost, sending nothing to the gateway.

    Per step and tier: count, unit price, subtotal; the total, exact or a range (why, and the fix); the
    assumptions. With results in the state file, a plan: paid, in flight, at risk, still to pay.
    """
    import json

    from rich.console import Console

    from .estimate import check_budget, estimate_manifest
    from .estimate_render import estimate_to_dict, render_estimate
    from .manifest import load_manifest_shallow
    from .storage.phase import upload_plan
    from .pricing import PriceTable

    table = PriceTable.load(pricing_path)
    # shallow: the output names are checked on the estimate's own walk of the expansion
    manifest = load_manifest_shallow(manifest_path)
    if budget_micros is None:
        budget_micros = manifest.budget_micros
    est = estimate_manifest(manifest, table, state_path=state_path, probe=not no_probe, refresh=refresh_probes,
                            concurrency=probe_concurrency, timeout=probe_timeout, fresh=fresh)
    uploads = upload_plan(manifest, state_path)  # local inputs: what a run would upload (None: no local files)
    if as_json:
        extra = {"uploads": uploads.to_dict()} if uploads else {}
        click.echo(json.dumps({**estimate_to_dict(est, budget_micros=budget_micros), **extra}, indent=2))
    else:
        render_estimate(est, Console(highlight=False), budget_micros=budget_micros)
        click.echo(uploads.text() if uploads else "", nl=bool(uploads))
    check_budget(est, budget_micros)


# -- validate --------------------------------------------------------------------------


@cli.command("validate")
@click.argument("manifest_path", metavar="MANIFEST", type=PathArg(dir_okay=False))
@json_option("Print the problems (and the summary) as JSON.")
@click.pass_context
def validate_command(ctx: click.Context, manifest_path: str, as_json: bool) -> None:
    """Check MANIFEST and report every problem at once.

    Each problem is printed as FILE:LINE:COLUMN: PATH: what is wrong (how to fix it).
    Exit 0 when the manifest is valid (with a summary: inputs, steps, work items),
    2 when it is not.
    """
    import json

    from .expand import count_items
    from .manifest import validate_manifest

    manifest, problems = validate_manifest(manifest_path)
    summary = None
    if manifest is not None:
        per_step = count_items(manifest)
        summary = {"inputs": manifest.count_inputs(), "steps": len(manifest.steps),
                   "items": sum(per_step.values()), "items_per_step": per_step}
    if as_json:
        click.echo(json.dumps({"file": manifest_path, "valid": not problems,
                               "problems": [p.to_dict() for p in problems], "summary": summary}, indent=2))
    elif problems:
        for p in problems:
            click.echo(str(p))
        n = len(problems)
        click.echo(f"{manifest_path}: {n} problem{'s' if n != 1 else ''}; the manifest is not valid.", err=True)
    else:
        assert summary is not None
        steps = ", ".join(f"{k} {v:,}" for k, v in summary["items_per_step"].items())
        click.echo(f"{manifest_path} is valid: {summary['inputs']:,} inputs, {summary['steps']} steps, "
                   f"{summary['items']:,} work items ({steps}).")
    if problems:
        ctx.exit(ExitCode.USAGE)


# -- run -------------------------------------------------------------------------------


@cli.command("run")
@click.argument("manifest_path", metavar="MANIFEST", type=PathArg(dir_okay=False))
@click.option("--state", "state_path", type=PathArg(dir_okay=False), default=None,
              help="State file [default: the manifest's state, <stem>.pixbatch.duckdb next to it].")
@budget_option("Hard spending cap in dollars (overrides budget_usd).")
@click.option("--concurrency", type=click.IntRange(1, 4096), default=LibraryDefault(RUN_OPTIONS, "concurrency"),
              show_default=True, help="Items in flight at once.")
@click.option("--max-rps", type=Number(0.01, 100_000), default=None,
              help="Ceiling on gateway requests per second (adapts down on 429 anyway).")
@base_url_option
@click.option("--retry-ambiguous", is_flag=True,
              help="Resubmit AMBIGUOUS items (they may already have been charged once).")
@click.option("--retry-failed", is_flag=True,
              help="Resubmit items that ended FAILED (charged: only they are paid again) and what they blocked.")
@click.option("--retry-errors", is_flag=True,
              help="Resubmit items that ended ERROR (not charged by the gateway) and what they blocked.")
@click.option("--force", "force", is_flag=False, flag_value="", default=None, metavar="[STEPS]",
              help="Redo finished items, paying again: every step, or only STEPS (comma-separated, e.g. "
                   "--force hires). Says how many items and dollars first; asks above $1.00 or 100 items.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask before --force pays again.")
@click.option("--steps", "steps", default=None, metavar="A,B",
              help="Pilot: send only these steps' items (comma-separated).")
@click.option("--limit", type=click.IntRange(1), default=None, metavar="N",
              help="Pilot: send only the first N items of each (selected) step.")
@click.option("--no-preflight", is_flag=True,
              help="Send without first checking that every input URL answers with an image.")
@click.option("--no-download", is_flag=True, help="Do not download outputs (benchmarks).")
@click.option("--quiet", is_flag=True, help="No progress display; only the summary on stderr.")
@json_option("One JSON line per event on stdout, then the summary.")
@pricing_option("Price table JSON [default: the built-in table].")
@click.option("--first-poll", type=Number(0.01, 60), default=LibraryDefault(RUN_OPTIONS, "poll_initial"),
              show_default=True, metavar="SECONDS", help="First status poll delay until job durations have been learned.")
@click.option("--webhook-url", type=HttpUrl("webhook URL"), default=None, metavar="URL",
              help="Ask the gateway to call URL when a job ends (https for the real gateway); polls only confirm.")
@click.option("--webhook-listen", type=HostPort(), default=None, metavar="HOST:PORT",
              help="Where to receive the callbacks [default: the --webhook-url host and port].")
@click.option("--progress-interval", type=click.FloatRange(0.1), default=10.0, show_default=True, metavar="SECONDS",
              help="When stderr is not a terminal: seconds between progress lines.")
@click.pass_context
def run_command(ctx: click.Context, manifest_path: str, state_path: str | None, budget_micros: int | None,
                concurrency: int, max_rps: float | None, base_url: str, retry_ambiguous: bool, retry_failed: bool,
                retry_errors: bool, force: str | None, yes: bool, steps: str | None, limit: int | None,
                no_preflight: bool, no_download: bool, quiet: bool, as_json: bool, pricing_path: str | None,
                first_poll: float, webhook_url: str | None, webhook_listen: str | None,
                progress_interval: float) -> None:
    """Run (or resume) MANIFEST against the gateway; the key comes from PIXAZO_API_KEY.

    Running the same command again resumes: submitted items are polled, never resent.
    Before an item is first sent, its input URLs are checked (a small ranged GET, cached
    in the state file); an input that cannot be fetched or is not an image leaves its
    items BAD_INPUT, unsent and not charged. Try a pilot first: --limit 10 (and --steps).
    Exit codes: 0 all completed, 1 some items (or outputs) did not complete, 2 invalid
    manifest or options, 3 budget, 4 key refused or missing, 5 wallet balance (402), 6 state
    file in use, 7 call quota used up, 8 gateway unreachable, 130 interrupted.
    """
    from pathlib import Path

    from rich.console import Console

    from .errors import require_api_key
    from .manifest import load_manifest_shallow
    from .progress import JsonLinesProgress, NullProgress, PlainProgress, RichProgress, render_summary
    from .runner import RunOptions, run

    key = require_api_key()
    # the output-name pass runs inside the runner, and only when this expansion is not
    # already in the state file: a resume of an unchanged manifest never walks every item
    manifest = load_manifest_shallow(manifest_path)
    options = RunOptions(
        state_path=Path(state_path) if state_path else None, budget_micros=budget_micros, concurrency=concurrency,
        max_rps=max_rps, base_url=base_url, api_key=key, retry_ambiguous=retry_ambiguous, retry_failed=retry_failed,
        retry_errors=retry_errors, force=_step_list(force) if force else force == "",
        steps=_step_list(steps) if steps is not None else None, limit=limit, preflight=not no_preflight,
        download=not no_download, pricing_path=Path(pricing_path) if pricing_path else None,
        handle_signals=True, poll_initial=first_poll, webhook_url=webhook_url, webhook_listen=webhook_listen)
    options.check(manifest)
    err = Console(stderr=True)
    _confirm_resends(ctx, manifest, options, yes=yes, out=err)
    progress = (JsonLinesProgress() if as_json else NullProgress() if quiet
                else RichProgress(err) if err.is_terminal else PlainProgress(err.file, interval=progress_interval))
    summary = run(manifest, options=options, progress=progress)
    if quiet:
        render_summary(summary, err)
    ctx.exit(summary.exit_code)


def _step_list(text: str) -> tuple[str, ...]:
    return tuple(s.strip() for s in text.split(",") if s.strip())


def _confirm_resends(ctx: click.Context, manifest, options, *, yes: bool, out) -> None:
    """Say what the retry options will send again, before anything is sent; ask before --force pays a lot again."""
    from .runner.plan import resends

    for r in resends(manifest, options):
        out.print(r.text(), highlight=False, soft_wrap=True)
        if r.needs_confirmation and not yes:
            try:
                ok = click.confirm(r.question(), default=False, err=True)
            except click.Abort:
                raise click.UsageError(f"{r.option} pays again and there is no one to ask (stdin is not a "
                                       "terminal): pass --yes to go ahead.") from None
            if not ok:
                click.echo("Nothing was sent.", err=True)
                ctx.exit(ExitCode.ERROR)


# -- status ----------------------------------------------------------------------------


@cli.command("status")
@state_source
@json_option("Print the status as JSON.")
def status_command(manifest_path: str | None, state_path: str | None, as_json: bool) -> None:
    """Progress per step and state of a run, without the gateway; works while a run is going."""
    from rich.console import Console

    from .progress import error_line, money_line, status_table
    from .state import AMBIGUOUS, read_status

    path, _ = _resolve_state(manifest_path, state_path)
    snap = read_status(path)
    if as_json:
        click.echo(snap.to_json())
        return
    out = Console()
    live = "running" if snap.running else (snap.outcome or "no run yet")
    out.print(f"{path} ({live}, from the {snap.source})", soft_wrap=True, highlight=False)  # the path whole
    out.print(status_table(snap))
    out.print(money_line(snap))
    error = error_line(snap) if snap.running else None
    if error:
        out.print(error, soft_wrap=True, highlight=False)
    amb = snap.totals().get(AMBIGUOUS, 0)
    if amb:
        from .money import format_usd

        out.print(f"{amb} AMBIGUOUS item(s), {format_usd(snap.at_risk_micros)} at risk: "
                  "`pixbatch run MANIFEST --retry-ambiguous` resubmits them.")


# -- report, reconcile, export ----------------------------------------------------------


@cli.command("reconcile")
@state_source
@base_url_option
@click.option("--wait", type=Number(0, 7 * 86400), default=300.0, show_default=True, metavar="SECONDS",
              help="Keep polling items still QUEUED/PROCESSING for up to this long (0: poll once).")
@click.option("--poll-interval", type=Number(0, 3600, min_open=True), default=2.0, show_default=True,
              metavar="SECONDS", help="Seconds between polls of items still running.")
@pricing_option("Price table JSON [default: the one the last run used, else the built-in table].")
@click.pass_context
def reconcile_command(ctx: click.Context, manifest_path: str | None, state_path: str | None, base_url: str,
                      wait: float, poll_interval: float, pricing_path: str | None) -> None:
    """Settle the final status and cost of items a stopped run left open.

    Polls (never resubmits) every item that has a request id but no final status or no
    recorded charge: SUBMITTED items of an interrupted run, and finished items whose charge
    was not written. Writes their status, charge (by the price table) and an audit event,
    so that `pixbatch report` is exact after a crash. The key comes from PIXAZO_API_KEY.
    Exit 1 if some items are still running or could not be polled.
    """
    from .gateway import Gateway
    from .money import format_usd
    from .pricing import PriceTable
    from .reconcile import reconcile

    path, _ = _resolve_state(manifest_path, state_path)
    table = PriceTable.load(pricing_path) if pricing_path else None
    # the key is read (and its absence reported, exit 4) only if there is something to poll
    result = reconcile(path, lambda: Gateway(base_url), table,
                       wait=wait, poll_interval=poll_interval)
    if not result.checked:
        click.echo(f"{path}: nothing to reconcile (every item with a request id is settled).")
        return
    click.echo(f"{path}: checked {result.checked} item(s): {result.settled} settled "
               f"(charged {format_usd(result.charged_micros)}), {result.still_running} still running, "
               f"{result.unresolved} not resolved.")
    for s in result.items:
        if s.gateway_status is None:
            click.echo(f"  {s.key} ({s.step}, {s.request_id}): {s.note}", err=True)
    if result.still_running:
        click.echo("Items still running: run `pixbatch reconcile` again later (or `pixbatch run` to resume).",
                   err=True)
    if result.still_running or result.unresolved:
        ctx.exit(ExitCode.INCOMPLETE)


@cli.command("export")
@state_source
@click.option("--format", "fmt", type=click.Choice(["parquet", "csv"]), default="parquet", show_default=True,
              help="File format, written by DuckDB's COPY.")
@click.option("-o", "--output", "out_dir", required=True, type=PathArg(file_okay=False),
              help="Directory to write runs, items, aliases, attempts, events and outputs into.")
def export_command(manifest_path: str | None, state_path: str | None, fmt: str, out_dir: str) -> None:
    """Export the state file's tables (one file each) for analysis elsewhere."""
    from .export import export_state

    path, _ = _resolve_state(manifest_path, state_path)
    for w in export_state(path, out_dir, fmt):
        click.echo(f"{w.table:<9} {w.rows:>12,} rows  {w.path}")


@cli.command("demo")
@click.option("--dir", "directory", type=PathArg(file_okay=False), default=None,
              help="Work in DIR (created, must be empty; kept) instead of a temporary directory.")
@click.option("--keep", is_flag=True, help="Keep the temporary directory and print its path.")
@click.pass_context
def demo_command(ctx: click.Context, directory: str | None, keep: bool) -> None:
    """Estimate, run and report a small batch against the built-in emulator: no key, no network.

    Starts the gateway emulator and an image server on loopback, writes a manifest (3
    inputs, one of them not an image; an edit with 2 colors; an upscale of every edit),
    estimates it, runs it into a DuckDB state file and prints the report, then checks the
    report's charged total against the emulator's ledger (exit 1 if they differ). Without
    --dir or --keep it works in a temporary directory that it deletes at the end, and
    prints no path in it.
    """
    import sys
    from pathlib import Path

    from .demo import demo

    if directory is not None and Path(directory).exists() and any(Path(directory).iterdir()):
        raise click.BadParameter(f"{directory} is not empty; give a new or empty directory", param_hint="--dir")
    if not demo(directory, keep=keep, color=sys.stdout.isatty()):
        ctx.exit(ExitCode.ERROR)


for _command in (report_command, failures_command, runs_command):
    cli.add_command(_command)

from .cli_init import init_command  # noqa: E402  (wired beside this module, which is at its size limit)

cli.add_command(init_command)

main = cli
