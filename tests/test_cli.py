"""The CLI's wiring: one USD parameter type for every amount of dollars, defaults read from the library."""

from __future__ import annotations

import dataclasses

import click
import pytest
from click.testing import CliRunner

from pixbatch.cli import USD, LibraryDefault, cli
from pixbatch.errors import ExitCode

MANIFEST = "version: 1\ninputs:\n  - https://x.test/a.png\nsteps:\n  - id: e\n    op: edit\n    prompt: p\n"


@pytest.mark.parametrize("text,micros", [("25", 25_000_000), ("12.50", 12_500_000), ("0.005", 5_000),
                                         ("$1.2", 1_200_000), (" 0 ", 0)])
def test_usd_accepts_dollars(text, micros):
    assert USD().convert(text, None, None) == micros


@pytest.mark.parametrize("text,why", [("-1", "negative"), ("-0.01", "negative"), ("lots", "not an amount"),
                                      ("0.0000001", "more than 6 decimal places"), ("nan", "not an amount")])
def test_usd_refuses_what_is_not_an_amount(text, why):
    with pytest.raises(click.BadParameter, match=why):
        USD().convert(text, None, None)


def dollar_options():
    for name, cmd in sorted(cli.commands.items()):
        for p in cmd.params:
            if isinstance(p, click.Option) and (p.metavar == "USD" or isinstance(p.type, USD)):
                yield name, p


def test_every_amount_of_dollars_is_parsed_by_usd():
    found = list(dollar_options())
    assert {(name, p.opts[0]) for name, p in found} >= {("run", "--budget"), ("estimate", "--budget"),
                                                         ("emulator", "--balance")}
    assert all(isinstance(p.type, USD) for _, p in found), [(n, p.opts) for n, p in found]


@pytest.mark.parametrize("command", ["run", "estimate"])
@pytest.mark.parametrize("budget", ["-1", "lots"])
def test_a_bad_budget_is_a_usage_error_for_every_command(tmp_path, command, budget):
    m = tmp_path / "m.yaml"
    m.write_text(MANIFEST)
    res = CliRunner().invoke(cli, [command, str(m), "--budget", budget, *(["--no-probe"] if command == "estimate"
                                                                              else [])],
                             env={"PIXAZO_API_KEY": "k" * 8})
    assert res.exit_code == ExitCode.USAGE == 2, res.output
    assert "Invalid value for '--budget'" in res.output


def test_defaults_come_from_the_library():
    from pixbatch.estimate import estimate_manifest
    from pixbatch.runner import RunOptions

    run_defaults = {f.name: f.default for f in dataclasses.fields(RunOptions)}
    params = {p.name: p for p in cli.commands["run"].params}
    for option, field in [("concurrency", "concurrency"), ("base_url", "base_url"), ("first_poll", "poll_initial")]:
        default = params[option].default
        assert isinstance(default, LibraryDefault) and default() == run_defaults[field]
    assert {p.name: p for p in cli.commands["reconcile"].params}["base_url"].default() == run_defaults["base_url"]
    est = {p.name: p for p in cli.commands["estimate"].params}
    assert est["probe_concurrency"].default() == estimate_manifest.__kwdefaults__["concurrency"]
    assert est["probe_timeout"].default() == estimate_manifest.__kwdefaults__["timeout"]
    # and --help shows the value, not "(dynamic)"
    out = CliRunner().invoke(cli, ["run", "--help"]).output
    assert f"[default: {run_defaults['concurrency']};" in out and "dynamic" not in out
