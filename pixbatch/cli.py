"""The ``pixbatch`` command: click wiring only.

Each command parses its options, calls the library, renders the result and lets
``PixbatchError`` propagate; the group maps that one base class, once, to a message on
stderr and its exit code (see ``errors.py``). ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import click

from . import __version__
from .errors import PixbatchError, redact


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
        f = click.option(f"--{name.replace('_', '-')}", name, type=click.FloatRange(0, 1), default=None,
                         help=f"Fraction (0-1): {name.replace('_', ' ')}.")(f)
    for name in reversed(_EMU_DISTS):
        f = click.option(f"--{name.replace('_', '-')}", name, default=None, metavar="SECONDS|MIN-MAX",
                         help=f"{name.replace('_', ' ').capitalize()}: fixed seconds or a uniform range.")(f)
    return f


@cli.command("emulator")
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to bind.")
@click.option("--port", default=8787, show_default=True, type=int, help="Port (0: any free port).")
@click.option("--balance", default=None, metavar="USD", help="Starting wallet in dollars, e.g. 10.00 [default: 10.00].")
@click.option("--key", "keys", multiple=True, envvar="PIXBATCH_EMULATOR_KEY",
              help="Accepted API key (repeatable; env PIXBATCH_EMULATOR_KEY) [default: test-key].")
@click.option("--forbidden-key", "forbidden_keys", multiple=True, help="A key answered with 403 (repeatable).")
@click.option("--rate-limit", type=float, default=None, help="Submits per second per key (429 above it).")
@click.option("--rate-burst", type=int, default=None, help="Token bucket size [default: the rate limit].")
@click.option("--seed", type=int, default=None, help="Seed for every random choice (faults, timings).")
@_emulator_options
@click.option("--render", type=click.Choice(["real", "lazy"]), default=None,
              help="real: fetch and process images (default); lazy: no fetch, outputs drawn on first GET.")
@click.option("--workers", type=int, default=None, help="Threads for image work [default: 2].")
@click.option("--allow-http-webhooks", is_flag=True, default=None, help="Accept http:// webhook URLs (loopback tests).")
@click.option("--pricing", "pricing_path", type=click.Path(dir_okay=False), default=None,
              help="Price table JSON [default: pixbatch's built-in table].")
@click.option("--media-dir", type=click.Path(file_okay=False), default=None,
              help="Where outputs are written [default: a temporary directory].")
@click.option("--config-json", default=None, help="A full EmulatorConfig as JSON (options above override it).")
def emulator_command(host: str, port: int, balance: str | None, keys: tuple[str, ...],
                     forbidden_keys: tuple[str, ...], config_json: str | None, **options) -> None:
    """Run a local P-Image gateway emulator in the foreground.

    Prints the base URL on the first line and a key on the second. Point pixbatch at it
    with the URL and PIXAZO_API_KEY set to the key. Control routes: /_emulator/ledger,
    /_emulator/stats, /_emulator/topup, /_emulator/config, /_emulator/script.
    """
    import json

    from .emulator import EmulatorConfig
    from .emulator.control import run_foreground
    from .money import format_usd, usd_to_micros

    try:
        settings = json.loads(config_json) if config_json else {}
        settings.update({k: v for k, v in options.items() if v is not None})
        if balance is not None:
            settings["balance_micros"] = usd_to_micros(balance)
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


main = cli
