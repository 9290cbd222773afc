"""What the commands share: the ``USD`` parameter type, library defaults read from the library's
own signatures (``LibraryDefault``), the shared options as decorators (``state_source``,
``pricing_option``, ``base_url_option``, ``budget_option``, ``json_option``) and which state file a
command reads (``resolve_state``). ``cli.py`` and ``cli_reports.py`` use them.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from typing import Any

import click

from .cli_params import USD, HttpUrl, PathArg



class LibraryDefault:
    """The default of keyword ``name`` of the library's ``target`` ("module:callable"), read when
    first needed (importing the runner takes ~0.4 s: too slow for every command's start-up).

    click calls it for the value and prints ``str()`` of it in ``--help``.
    """

    def __init__(self, target: str, name: str):
        self.target, self.name = target, name

    def __call__(self) -> Any:
        module, _, attr = self.target.partition(":")
        default = inspect.signature(getattr(importlib.import_module(module), attr)).parameters[self.name].default
        assert default is not inspect.Parameter.empty, f"{self.target} has no default for {self.name}"
        return default

    def __str__(self) -> str:
        return str(self())


#: the run's options (``RunOptions`` keeps these flat keyword names)
RUN_OPTIONS = "pixbatch.runner:RunOptions"


def state_source(f: Callable) -> Callable:
    """[MANIFEST] or --state FILE: which state file a command reads."""
    f = click.option("--state", "state_path", type=PathArg(dir_okay=False), default=None,
                     help="State file (instead of MANIFEST).")(f)
    return click.argument("manifest_path", metavar="[MANIFEST]", required=False,
                          type=PathArg(dir_okay=False))(f)


def pricing_option(help: str) -> Callable[[Callable], Callable]:
    return click.option("--pricing", "pricing_path", type=PathArg(dir_okay=False), default=None, help=help)


def base_url_option(f: Callable) -> Callable:
    return click.option("--base-url", type=HttpUrl("base URL"), default=LibraryDefault(RUN_OPTIONS, "base_url"),
                        show_default=True,
                        envvar="PIXBATCH_BASE_URL", help="Gateway base URL (the emulator's URL for local runs).")(f)


def budget_option(help: str) -> Callable[[Callable], Callable]:
    return click.option("--budget", "budget_micros", type=USD(), default=None, metavar="USD", help=help)


def json_option(help: str) -> Callable[[Callable], Callable]:
    return click.option("--json", "as_json", is_flag=True, help=help)


def resolve_state(manifest_path: str | None, state_path: str | None):
    """(state path, manifest or None). The manifest's own state file unless --state is given."""
    from pathlib import Path

    from .manifest import load_manifest_shallow

    manifest = load_manifest_shallow(manifest_path) if manifest_path else None
    if state_path is not None:
        return Path(state_path), manifest
    if manifest is None:
        raise click.UsageError("give a MANIFEST or --state FILE")
    return manifest.state_path, manifest
