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


main = cli
