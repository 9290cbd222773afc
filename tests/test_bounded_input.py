"""Bounded input, no tracebacks (issue 13): each hostile input, one test, with the message it gets.

YAML bombs and deep documents (``pixbatch.yamlpos``), expansions too big to build
(``pixbatch.expand`` limits, checked in ``manifest.meaning``), numbers beyond what the state
file holds, damaged state files, export targets that cannot be written, option values,
the emulator's options, a symbolic link in the output directory. The counts over many
inputs are in ``test_bad_input_corpus.py``.
"""

from __future__ import annotations

import json
import os
import socket
import textwrap
import time
import tracemalloc
from pathlib import Path

import duckdb
import pytest
import yaml
from click.testing import CliRunner

from pixbatch import yamlpos
from pixbatch.cli import cli
from pixbatch.errors import PixbatchError, StateError
from pixbatch.manifest import check_manifest, load_manifest
from pixbatch.money import MAX_USD, usd_to_micros

HEAD = "version: 1\ninputs: [https://cdn.example.com/a.png]\n"
STEP = "steps: [{id: up, op: upscale}]\n"


def problems(text: str, **files: str) -> list[str]:
    Path("m.yaml").write_text(textwrap.dedent(text))
    for name, content in files.items():
        Path(name).write_text(content)
    return [str(p) for p in check_manifest("m.yaml")]


def cli_run(*args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(cli, list(args), env={"PIXAZO_API_KEY": "k", **(env or {})})


def laughs(levels: int = 9, width: int = 9) -> str:
    """The billion laughs: each level a list of ``width`` aliases of the one before."""
    lines = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]")
    return "\n".join(lines) + "\n"


# -- YAML: bombs, recursion, depth ----------------------------------------------------------


@pytest.mark.parametrize("where", ["top", "matrix"])
def test_a_billion_laughs_is_refused_at_once_and_located(where):
    if where == "top":
        text = HEAD + laughs() + STEP
    else:  # the bomb is what a matrix lists
        text = HEAD + "x:\n" + textwrap.indent(laughs(), "  ") + (
            "steps: [{id: up, op: upscale, naming: '{c}', matrix: {c: *a8}}]\n")
    problems(HEAD + STEP)  # imports and caches first: what is measured is the bomb
    tracemalloc.start()
    t = time.perf_counter()
    try:
        found = problems(text)
        elapsed = time.perf_counter() - t
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert elapsed < 1.0 and peak < 5_000_000, (elapsed, peak)
    assert len(found) == 1
    assert "the document holds more than 50,000 values once its aliases are expanded" in found[0]
    line = 7 if where == "top" else 8  # a4, where the count crosses the limit (9 lols x 9^4)
    assert found[0].startswith(f"m.yaml:{line}:")


@pytest.mark.parametrize("text, col", [
    ("a: &a [*a]\n", 8),  # a list that contains itself
    ("a: &a {<<: *a}\n", 12),  # a merge loop
    ("a: &a {b: [1, {c: *a}]}\n", 19),  # deeper inside
])
def test_recursive_aliases_and_merge_loops_are_refused(text, col):
    found = problems(HEAD + text + STEP)
    assert found == [f"m.yaml:3:{col}: $: the alias *a refers to a node that contains it (a recursive alias or merge "
                     "loop) (an alias can only repeat a node written before it and outside it; remove *a here)"]


@pytest.mark.parametrize("text", [
    "x: " + "[" * 60 + "]" * 60 + "\n",  # flow
    "x:\n" + "".join("  " * i + "- \n" for i in range(60)) + "  " * 60 + "- 1\n",  # block
    "x: " + "{a: " * 60 + "1" + "}" * 60 + "\n",
    "x: " + "[" * 5000 + "]" * 5000 + "\n",  # past libyaml's own limit
])
def test_deep_nesting_is_refused_with_a_position(text):
    found = problems(HEAD + text + STEP)
    assert len(found) == 1 and "nest" in found[0] and not found[0].startswith("m.yaml:1:1:"), found


def test_aliases_count_as_deep_as_the_node_they_name():
    deep = "[" * 30 + "1" + "]" * 30
    found = problems(HEAD + f"a: &d {deep}\nb: [[[[[[[[[[[[[[[[[[[[[[[[*d]]]]]]]]]]]]]]]]]]]]]]]]\n" + STEP)
    assert len(found) == 1 and "nests deeper than 50 levels" in found[0] and found[0].startswith("m.yaml:4:"), found


def test_aliases_within_the_limits_load_as_pyyaml_loads_them():
    text = HEAD + "defaults: &d {upscale: {output_format: png}}\nsteps:\n" + "".join(
        f"  - {{id: s{i}, op: upscale, naming: '{{step}}/{{stem}}.{{ext}}', <<: {{}}}}\n" for i in range(3))
    text += "x: &colors [red, green, blue]\nz: {<<: *d, c: *colors}\n"
    loc = yamlpos.load(text)
    assert loc.data == yaml.safe_load(text)


def test_a_manifest_file_is_never_read_beyond_its_limit(tmp_path):
    big = tmp_path / "big.yaml"
    big.write_text("version: 1\nname: '" + "x" * (yamlpos.MAX_CHARS + 10) + "'\n")
    found = [str(p) for p in check_manifest(big)]
    assert len(found) == 1 and "more than the 16,777,216 allowed" in found[0]
    assert [str(p) for p in check_manifest(Path("/dev/zero"))] == [
        "/dev/zero:1:1: $: this is not a regular file (pass the path of a .yaml file)"]


# -- expansions: counted, refused before anything is built --------------------------------


def matrix_step(keys: int, values: int = 10) -> str:
    rows = "".join(f"      v{i}: [{', '.join(str(j) for j in range(values))}]\n" for i in range(keys))
    return "steps:\n  - id: up\n    op: upscale\n    naming: '{index}'\n    matrix:\n" + rows


@pytest.mark.parametrize("keys, shown", [(8, "100,000,000"), (20, "100,000,000,000,000,000,000")])
def test_a_matrix_too_big_is_refused_from_its_count(keys, shown):
    t = time.perf_counter()
    found = problems(HEAD + matrix_step(keys))
    assert time.perf_counter() - t < 2
    assert found == [f"m.yaml:8:7: $.steps[0].matrix: the matrix of step 'up' has {shown} combinations, more than "
                     "the 10,000 a step may have (split it over several steps, or raise the limit with "
                     "PIXBATCH_MAX_COMBINATIONS=N)"]


def test_the_limits_are_raised_or_lowered_by_the_environment(monkeypatch):
    text = HEAD.replace("[https://cdn.example.com/a.png]", "[https://cdn.example.com/a.png, https://cdn.example.com/b.png]")
    text += matrix_step(1, 3)
    assert problems(text) == []
    monkeypatch.setenv("PIXBATCH_MAX_COMBINATIONS", "2")
    assert "has 3 combinations, more than the 2 a step may have" in problems(text)[0]
    monkeypatch.setenv("PIXBATCH_MAX_COMBINATIONS", "3")
    monkeypatch.setenv("PIXBATCH_MAX_STEP_ITEMS", "5")
    assert problems(text) == ["m.yaml:4:5: $.steps[0]: step 'up' expands to 6 work items (2 source images x 3 "
                              "combinations), more than the 5 a step may have (split the batch over several "
                              "manifests, or raise the limit with PIXBATCH_MAX_STEP_ITEMS=N)"]
    monkeypatch.setenv("PIXBATCH_MAX_STEP_ITEMS", "lots")
    assert problems(text) == ["m.yaml:1:1: $: PIXBATCH_MAX_STEP_ITEMS='lots' is not a positive whole number "
                              "(set it to a whole number such as 1000000, or unset it)"]


def test_chained_steps_multiply_and_are_refused_at_the_first_step_too_big():
    text = HEAD + "steps:\n  - {id: s0, op: upscale, matrix: {target: [1, 2, 3, 4, 5, 6, 7, 8]}}\n" + "".join(
        f"  - {{id: s{i}, op: upscale, for_each: s{i - 1}, matrix: {{target: [1, 2, 3, 4, 5, 6, 7, 8]}}}}\n"
        for i in range(1, 12))
    found = problems(text)
    assert found == ["m.yaml:11:5: $.steps[7]: step 's7' expands to 16,777,216 work items (2,097,152 source "
                     "images x 8 combinations), more than the 10,000,000 a step may have (split the batch over "
                     "several manifests, or raise the limit with PIXBATCH_MAX_STEP_ITEMS=N)"]


def test_a_chain_of_2000_steps_is_refused_once_without_recursion():
    chain = "steps:\n  - {id: s0, op: upscale}\n" + "".join(
        f"  - {{id: s{i}, op: upscale, for_each: s{i - 1}}}\n" for i in range(1, 2000))
    assert problems(HEAD + chain) == [
        "m.yaml:69:38: $.steps[65].for_each: step 's65' is more than 64 steps down a chain of for_each steps "
        "(a chain of steps may be at most 64 long; shorten it)"]
    ok = "steps:\n  - {id: s0, op: upscale}\n" + "".join(
        f"  - {{id: s{i}, op: upscale, for_each: s{i - 1}}}\n" for i in range(1, 65))
    assert problems(HEAD + ok) == []
    from pixbatch.expand import expand

    assert len(list(expand(load_manifest("m.yaml")))) == 65


@pytest.mark.parametrize("spec, part", [("{index:1500000000d}", "width"), ("{index:.999999999f}", "precision"),
                                        ("{stem:>256}", "width"), ("{index:0" + "9" * 5000 + "d}", "width")])
def test_format_widths_are_bounded(spec, part):
    tracemalloc.start()
    try:
        found = problems(HEAD + f"naming: '{spec}.{{ext}}'\n" + STEP)
        assert tracemalloc.get_traced_memory()[1] < 20_000_000
    finally:
        tracemalloc.stop()
    assert len(found) == 1 and f"asks for a {part} of more than 255 characters" in found[0], found
    assert problems(HEAD + "naming: '{index:0255d}.{ext}'\n" + STEP) == []


# -- numbers against what the state file holds ---------------------------------------------


def test_a_budget_beyond_what_the_state_file_holds_is_a_problem():
    assert problems(HEAD + 'budget_usd: "99999999999999999999999999"\n' + STEP) == [
        "m.yaml:3:13: $.budget_usd: 99999999999999999999999999 is more than the largest budget pixbatch records "
        f"(${MAX_USD:,}) (write the budget you mean to spend, e.g. \"25.00\")"]
    assert problems(HEAD + 'budget_usd: "999999999999.999999"\n' + STEP) == []


def test_amounts_are_exact_and_bounded():
    assert usd_to_micros("999999999999.999999") == 999_999_999_999_999_999
    assert usd_to_micros("1." + "0" * 5000) == 1_000_000
    for bad in ("1e400", "1e99999999", "-1e99999999", "1000000000000.000001"):
        with pytest.raises(ValueError, match="more than the largest amount"):
            usd_to_micros(bad)
    for bad in ("1e-99999999", "1.0000000000000000000000000000001"):
        with pytest.raises(ValueError, match="more than 6 decimal places"):
            usd_to_micros(bad)


@pytest.mark.parametrize("value", ["1e400", "1e99999999", "nan", "inf", "-1"])
def test_a_budget_option_out_of_range_is_a_usage_error(value):
    Path("m.yaml").write_text(HEAD + STEP)
    for command in ("run", "estimate"):
        res = cli_run(command, "m.yaml", "--budget", value)
        assert res.exit_code == 2 and res.exception is None or isinstance(res.exception, SystemExit), res.output
        assert "Invalid value for '--budget'" in res.output


def test_a_width_beyond_max_side_is_a_problem_in_the_manifest_and_in_csv():
    found = problems("version: 1\ninputs:\n  - {url: https://cdn.example.com/a.png, width: 3000000000, height: 10}\n"
                     "  - from: c.csv\n" + STEP,
                     **{"c.csv": "url,width,height\nhttps://cdn.example.com/b.png,3000000000,10\n"
                                 "https://cdn.example.com/c.png,²,10\n"
                                 f"https://cdn.example.com/d.png,{'9' * 5000},10\n"
                                 f"https://cdn.example.com/e.png,{'0' * 5000}7,10\n"})
    assert found == [
        "m.yaml:3:49: $.inputs[0].width: 3000000000 is out of range (expected the image width in pixels, a positive "
        "integer up to 100000)",
        "c.csv:2:31: row 2, column width: width '3000000000' is more than 100,000 pixels (write the width of the image "
        "in pixels, e.g. 1024)",
        "c.csv:3:31: row 3, column width: width '²' is not a positive integer (write the width in pixels, e.g. 1024)",
        "c.csv:4:31: row 4, column width: width '" + "9" * 56 + "... is more than 100,000 pixels (write the width of "
        "the image in pixels, e.g. 1024)",
    ]


def test_the_schema_and_sizes_agree_on_the_largest_side():
    from pixbatch.schemas import load_schema
    from pixbatch.sizes import MAX_SIDE

    props = load_schema("manifest")["$defs"]
    sides = [v["maximum"] for d in props.values() for k, v in d.get("properties", {}).items() if k in ("width", "height")]
    assert sides and set(sides) == {MAX_SIDE}


def test_a_line_too_long_in_a_from_file_is_a_problem_not_a_string(tmp_path):
    long = "https://cdn.example.com/" + "a" * (1 << 17)
    found = problems("version: 1\ninputs: [{from: l.txt}, {from: c.csv}]\n" + STEP,
                     **{"l.txt": f"https://cdn.example.com/x.png\n{long}\n", "c.csv": f"url\n{long}\n"})
    assert found == [
        "l.txt:2:1: line 2: the line is longer than 65,536 characters (write one input per line; is this really a "
        "CSV or text file of URLs?)",
        "c.csv:2:1: line 2: the line is longer than 65,536 characters (write one input per line; is this really a "
        "CSV or text file of URLs?)"]


# -- option values ----------------------------------------------------------------------


@pytest.mark.parametrize("args, message", [
    (["--base-url", "notaurl"], "'notaurl' is not an http:// or https:// URL with a host"),
    (["--base-url", "ftp://gateway.example"], "is not an http:// or https:// URL"),
    (["--base-url", "http://x:99999"], "Port out of range"),
    (["--base-url", "http://x\n"], "has spaces or control characters"),
    (["--webhook-url", "x"], "'x' is not an http:// or https:// URL"),
    (["--webhook-url", "https://cb.example/h", "--webhook-listen", "99999"], "is not HOST:PORT"),
    (["--webhook-url", "https://cb.example/h", "--webhook-listen", "127.0.0.1:0"], "is not HOST:PORT"),
    (["--max-rps", "nan"], "'nan' is not a finite number"),
    (["--first-poll", "nan"], "'nan' is not a finite number"),
    (["--concurrency", "99999999999999999999"], "is not in the range"),
])
def test_run_option_values_are_usage_errors(args, message):
    Path("m.yaml").write_text(HEAD + STEP)
    res = cli_run("run", "m.yaml", *args)
    assert res.exit_code == 2, res.output
    assert message in res.output


def test_good_listen_addresses_pass():
    from pixbatch.cli import HostPort

    for ok in ("127.0.0.1:8080", ":8080", "[::1]:8080", "localhost:65535"):
        assert HostPort().convert(ok, None, None) == ok


# -- state files ------------------------------------------------------------------------


@pytest.fixture
def state(tmp_path):
    from test_report import build_state

    path = tmp_path / "s.duckdb"
    build_state(path, tmp_path / "out")
    return path


def status_of(path: Path):
    return cli_run("status", "--state", str(path))


def test_a_truncated_state_file_is_damaged_not_a_traceback(state):
    data = state.read_bytes()
    state.write_bytes(data[: len(data) // 2])
    for args in (["status"], ["report"], ["export", "-o", "x"], ["reconcile", "--wait", "0"]):
        res = cli_run(*args, "--state", str(state))
        assert res.exit_code == 1 and not isinstance(res.exception, Exception) or isinstance(res.exception, SystemExit)
        assert f"state file {state} is damaged or not a pixbatch state file" in res.output, res.output


def test_a_duckdb_file_of_another_program_is_refused_and_left_alone(tmp_path):
    path = tmp_path / "other.duckdb"
    db = duckdb.connect(str(path))
    db.execute("CREATE TABLE sales (id INTEGER)")
    db.close()
    res = status_of(path)
    assert res.exit_code == 1 and "a DuckDB database of something else: it holds sales and no schema_migrations" in res.output
    db = duckdb.connect(str(path))
    assert db.execute("SELECT table_name FROM duckdb_tables()").fetchall() == [("sales",)]
    db.close()


def test_a_state_file_of_a_newer_pixbatch_is_refused(state):
    db = duckdb.connect(str(state))
    db.execute("INSERT INTO schema_migrations (id, name) VALUES (99, 'm099_from_the_future')")
    db.close()
    res = status_of(state)
    assert res.exit_code == 1 and "was written by a newer pixbatch (schema migration m099_from_the_future)" in res.output


def test_a_state_file_missing_a_table_or_column_is_damaged(state):
    db = duckdb.connect(str(state))
    db.execute("DROP TABLE outputs")
    db.close()
    assert "(it has no outputs table)" in status_of(state).output


def test_a_sqlite_file_never_reaches_duckdb(tmp_path, monkeypatch):
    import sqlite3

    path = tmp_path / "s.duckdb"
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE t (a)")
    con.commit()
    con.close()

    def no(*a, **k):
        raise AssertionError("DuckDB was asked to open a SQLite file")

    monkeypatch.setattr(duckdb, "connect", no)
    with pytest.raises(StateError, match=r"\(it is a SQLite database\)"):
        from pixbatch.state import connect

        connect(path)


def test_export_to_a_full_disk_or_an_unusable_directory_says_so(state, tmp_path):
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    full = tmp_path / "full"
    full.mkdir()
    (full / "runs.parquet").symlink_to("/dev/full")
    res = cli_run("export", "--state", str(state), "-o", str(full))
    assert res.exit_code == 1
    assert "runs.parquet\": No space left on device. Free some space or choose another -o directory; 0 of 7 " \
           "tables were written." in res.output
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    res = cli_run("export", "--state", str(state), "-o", str(blocker / "sub"))
    assert res.exit_code == 2 and "cannot create the export directory" in res.output and "Not a directory" in res.output


# -- the emulator's options -------------------------------------------------------------


def test_emulator_options_that_cannot_be_used_are_usage_errors(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        cases = [
            (["--port", "99999"], "99999 is not in the range 0<=x<=65535"),
            (["--port", str(port)], f"cannot listen on 127.0.0.1:{port}: Address already in use; another process is "
                                    "listening there; choose another --port (0: any free port)"),
            (["--port", "0", "--media-dir", str(blocker / "media")], "cannot write to the media directory"),
            (["--config-json", "[1]"], "give a JSON object of settings"),
            (["--config-json", "{"], "not JSON"),
            (["--config-json", json.dumps({"media_dir": 5})], "media_dir must be a string or null"),
            (["--config-json", json.dumps({"workers": 1e10})], "workers must be a whole number from 1 to 256"),
            (["--rate-limit", "nan"], "'nan' is not a finite number"),
        ]
        for args, message in cases:
            res = cli_run("emulator", *args)
            assert res.exit_code == 2, (args, res.output)
            assert message in res.output, (args, res.output)


# -- a symbolic link in the output directory --------------------------------------------


def test_a_symlink_out_of_the_output_directory_is_named(tmp_path):
    from pixbatch.runner.outputs import OutputDir

    out = tmp_path / "out"
    (out / "edit").mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (out / "up").symlink_to(elsewhere)
    with pytest.raises(PixbatchError) as info:
        OutputDir(out).target("up/a.jpg")
    assert str(info.value) == (
        f"{out}/up is a symbolic link to {elsewhere}, outside the output directory {out}, so output 'up/a.jpg' would "
        "be written there; pixbatch does not write through links that leave the output directory: remove the link, "
        "or choose another output_dir.")
    assert "naming template" not in str(info.value)
    (out / "edit" / "inside").symlink_to(out / "edit")
    assert OutputDir(out).target("edit/inside/a.jpg") == out / "edit" / "a.jpg"
    with pytest.raises(PixbatchError, match="fix the naming template"):
        OutputDir(out).target("../x.jpg")
