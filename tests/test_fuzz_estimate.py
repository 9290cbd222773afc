"""Bad input corpus for `pixbatch estimate`: random and mutated manifests never end in a traceback.

Whatever the manifest (random structures, near-valid step chains, valid files with bytes
mutated, CSV inputs with broken cells) and whatever ``--budget`` says, `estimate` either
prints a valid estimate (exit 0; with --json a document whose total adds up) or a clear
error: exit 2 (the manifest or an option is wrong) or 3 (over budget) with a message. The
structure strategies are the ones the `validate` fuzz uses (tests/test_validate_cli.py).
Nothing is probed: --no-probe, and every URL is a documentation host never contacted.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, event, given, settings, strategies as st

from pixbatch.cli import cli
from test_validate_cli import GOOD, _good_steps, _manifests, _templates

EXAMPLES = int(os.environ.get("PB_FUZZ", 40))
FUZZ = settings(max_examples=EXAMPLES, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

CSV = "id,url,width,height,color\nc,https://cdn.example.com/c.png,1024,768,red\nd,https://cdn.example.com/d.png,4000,3000,blue\n"

# mostly no --budget, so that the manifest decides the outcome; sometimes a good or a bad one
_budgets = st.one_of(st.none(), st.none(), st.none(), st.none(),
                     st.sampled_from(["5", "0", "0.01", "12.50", "-1", "abc", "1e3", "0.0000001",
                                      "99999999999999999999", "$5", " 3 ", ""]),
                     st.text(max_size=6))


def estimate(budget: str | None) -> tuple[int, str]:
    args = ["estimate", "m.yaml", "--no-probe", "--json"]
    if budget is not None:
        args += ["--budget", budget]
    result = CliRunner().invoke(cli, args)
    # a traceback is an exception other than the SystemExit click uses for exit codes
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        f"estimate crashed: {result.exception!r}\n{result.output}")
    assert result.exit_code in (0, 2, 3), (result.exit_code, result.output)
    out = result.output
    assert "Traceback" not in out
    if result.exit_code == 0:
        doc = json.loads(out)
        lines = doc["lines"]
        assert doc["total"] and all(int(x["count"]) >= 1 for x in lines)
        event("estimated")
    else:
        assert out.strip(), f"exit {result.exit_code} without a message"
        if result.exit_code == 3:
            assert "budget" in out
        event(f"exit {result.exit_code}")
    return result.exit_code, out


def _write(text: str, csv: str = CSV) -> None:
    Path("cat.csv").write_text(csv)
    Path("m.yaml").write_text(text)


@FUZZ
@given(_manifests, _budgets)
def test_random_structures(data, budget):
    _write(yaml.safe_dump(data, sort_keys=False))
    estimate(budget)


@FUZZ
@given(_good_steps(), _templates, st.booleans(), _budgets)
def test_near_valid_chains(steps, naming, with_csv, budget):
    inputs: list = ["https://cdn.example.com/x/a.png", {"id": "b", "url": "https://cdn.example.com/b.png",
                                                         "width": 640, "height": 480}]
    if with_csv:
        inputs.append({"from": "cat.csv"})
    _write(yaml.safe_dump({"version": 1, "naming": naming, "inputs": inputs, "steps": steps}, sort_keys=False))
    estimate(budget)


_junk = st.sampled_from([":", "-", " ", "\n", "\t", "{", "}", "[", "]", "'", '"', "#", "&a", "*a", "!!int", "~",
                         "0", "-1", "1e999", "\x00", "é", "%", "|", ">", "inputs", "steps", "op", "matrix"])


@FUZZ
@given(st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 3), _junk), min_size=1, max_size=4),
       _budgets)
def test_mutated_valid_manifest(edits, budget):
    """Bytes of a valid manifest deleted, replaced or inserted at random places."""
    text = GOOD
    for where, how, junk in edits:
        i = int(where * len(text))
        if how == 0:
            text = text[:i] + text[i + 1:]
        elif how == 1:
            text = text[:i] + junk + text[i + 1:]
        else:
            text = text[:i] + junk + text[i:]
    _write(text)
    estimate(budget)


_cells = st.sampled_from(["640", "480", "https://cdn.example.com/y.png", "", "0", "-5", "1.5", "abc", "99999999999", "1e400", "640", "https://cdn.example.com/z.png",
                          "ftp://x", '"', "a,b", "\x00", "NaN", " 7 "])


@FUZZ
@given(st.lists(st.tuples(_cells, _cells, _cells), min_size=0, max_size=4), st.booleans(), _budgets)
def test_csv_inputs_with_broken_cells(rows, upscale_factor, budget):
    """CSV rows whose url/width/height are wrong in every way: errors name the cell, or it estimates."""
    csv = "url,width,height\n" + "".join(f"{u},{w},{h}\n" for u, w, h in rows)
    step = ("  - id: u\n    op: upscale\n    upscale_mode: factor\n    factor: 2\n" if upscale_factor else
            "  - id: u\n    op: upscale\n    target: 8\n")
    _write(f"version: 1\ninputs:\n  - from: cat.csv\nsteps:\n{step}", csv)
    code, out = estimate(budget)
    if code == 2 and rows and budget is None:
        assert "cat.csv" in out or "m.yaml" in out  # the error says where
