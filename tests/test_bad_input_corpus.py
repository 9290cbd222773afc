"""The bad-input corpus (issue 13, "Done when"): hostile manifests and input files, bad option
values and damaged state files, each through the commands that read it, in-process.

Every case is one command run with click's ``CliRunner`` (``attempt``), timed, under a
memory bound, and classified:

    clean      it ended with an exit code and a message (a refusal, or success); nothing escaped
    traceback  an exception other than SystemExit escaped the command, or a traceback was printed
    hang       it took longer than HANG_SECONDS
    memory     it needed more than MEMORY_LIMIT beyond what the process already used: each case
               runs under RLIMIT_DATA = current + MEMORY_LIMIT, so that is a MemoryError (and a
               regression fails this test instead of taking the machine down)

Each test prints its table (tried / clean / traceback / hang / memory; ``pytest -s`` shows
it) and asserts that every case was clean. The property tests draw the same examples on
every run (tests/conftest.py); ``PB_FUZZ_RANDOM=1 PB_FUZZ=500`` explores new ones.
"""

from __future__ import annotations

import json
import os
import random
import re
import resource
import shutil
import sqlite3
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pytest
from click.testing import CliRunner, Result
from hypothesis import HealthCheck, given, settings, strategies as st

from pixbatch.cli import cli

HANG_SECONDS = 10.0
MEMORY_LIMIT = 500 * 2**20
KINDS = ("clean", "traceback", "hang", "memory")
NOWHERE = "http://127.0.0.1:9"  # nothing listens: a run that got that far fails fast, sends nothing
ENV = {"PIXAZO_API_KEY": "test-key", "PIXBATCH_BASE_URL": NOWHERE}


# -- the harness ---------------------------------------------------------------------------


def _vm_data() -> int | None:
    try:
        m = re.search(r"VmData:\s+(\d+) kB", Path("/proc/self/status").read_text())
    except OSError:
        return None
    return int(m.group(1)) * 1024 if m else None


@contextmanager
def memory_bound() -> Iterator[None]:
    """RLIMIT_DATA = the process's data now + MEMORY_LIMIT, for one case (Linux; elsewhere unbounded)."""
    now = _vm_data()
    if now is None or not hasattr(resource, "RLIMIT_DATA"):
        yield
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
    limit = now + MEMORY_LIMIT if hard == resource.RLIM_INFINITY else min(now + MEMORY_LIMIT, hard)
    resource.setrlimit(resource.RLIMIT_DATA, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_DATA, (soft, hard))


@dataclass
class Outcome:
    name: str
    kind: str
    seconds: float
    exit_code: int | None
    output: str


@dataclass
class Tally:
    corpus: str
    outcomes: list[Outcome] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        out = {"tried": len(self.outcomes)}
        out.update({k: sum(1 for o in self.outcomes if o.kind == k) for k in KINDS})
        return out

    def table(self) -> str:
        c = self.counts()
        slow = max(self.outcomes, key=lambda o: o.seconds)
        head = f"{'corpus':<18}" + "".join(f"{k:>10}" for k in c)
        row = f"{self.corpus:<18}" + "".join(f"{v:>10}" for v in c.values())
        return f"{head}\n{row}\nslowest: {slow.name} {slow.seconds:.2f} s"

    def check(self) -> None:
        print("\n" + self.table())
        bad = [o for o in self.outcomes if o.kind != "clean"]
        detail = "\n".join(f"  {o.kind}: {o.name} ({o.seconds:.1f} s, exit {o.exit_code}): "
                           f"{o.output.strip().splitlines()[-1:] if o.output.strip() else ''}" for o in bad[:20])
        assert not bad, f"\n{self.table()}\n{detail}"


def attempt(tally: Tally, name: str, args: list[str], *, env: dict[str, str] | None = None) -> Outcome:
    """Run ``pixbatch ARGS`` in-process, timed and bounded; record how it ended.

    Retry backoff is instant (``retry_policy.instant``): a command that gets as far as the
    gateway meets a closed port (NOWHERE), and how long it keeps retrying is the gateway
    client's business (tests/test_gateway.py), not this corpus's.
    """
    from pixbatch.retry_policy import instant

    t = time.perf_counter()
    with memory_bound(), instant():
        try:
            result: Result | None = CliRunner().invoke(cli, args, env={**ENV, **(env or {})})
            exc: BaseException | None = result.exception
        except BaseException as e:  # not even CliRunner could hold it (MemoryError while it captured)
            result, exc = None, e
    seconds = time.perf_counter() - t
    output = result.output if result is not None else ""
    if isinstance(exc, MemoryError):
        kind = "memory"
    elif seconds > HANG_SECONDS:
        kind = "hang"
    elif (exc is not None and not isinstance(exc, SystemExit)) or "Traceback (most recent call last)" in output:
        kind = "traceback"
    elif result is not None and result.exit_code != 0 and not output.strip():
        kind = "traceback"  # a failure must say what is wrong
    else:
        kind = "clean"
    out = Outcome(name, kind, seconds, result.exit_code if result is not None else None,
                  output if kind == "clean" else output + "".join(_tb(exc)))
    tally.outcomes.append(out)
    return out


def _tb(exc: BaseException | None) -> list[str]:
    import traceback

    if exc is None or isinstance(exc, SystemExit):
        return []
    return traceback.format_exception(exc)[-3:]


def write(files: dict[str, str | bytes]) -> None:
    for name, content in files.items():
        p = Path(name)
        p.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            p.write_bytes(content)
        else:
            p.write_text(content, "utf-8")


# -- manifests and their input files ---------------------------------------------------------

HEAD = "version: 1\ninputs: [https://cdn.example.com/a.png]\n"
STEP = "steps: [{id: up, op: upscale}]\n"


def _laughs(levels: int = 9) -> str:
    lines = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def _matrix(keys: int, values: int = 10) -> str:
    rows = "".join(f"      v{i}: [{', '.join(str(j) for j in range(values))}]\n" for i in range(keys))
    return "steps:\n  - id: up\n    op: upscale\n    naming: '{index}'\n    matrix:\n" + rows


def _chain(n: int) -> str:
    return "steps:\n  - {id: s0, op: upscale}\n" + "".join(
        f"  - {{id: s{i}, op: upscale, for_each: s{i - 1}}}\n" for i in range(1, n))


def _csv(body: str) -> dict[str, str | bytes]:
    return {"m.yaml": "version: 1\ninputs: [{from: c.csv}]\n" + STEP, "c.csv": body}


LONG = "https://cdn.example.com/" + "a" * 200_000

#: name -> files (m.yaml is the manifest); the named cases of the issue and their neighbours
MANIFESTS: dict[str, dict[str, str | bytes]] = {
    "billion laughs": {"m.yaml": HEAD + _laughs() + STEP},
    "billion laughs in a matrix": {"m.yaml": HEAD + "x:\n" + textwrap.indent(_laughs(), "  ")
                                   + "steps: [{id: up, op: upscale, naming: '{c}', matrix: {c: *a8}}]\n"},
    "aliases in a wide fan": {"m.yaml": HEAD + "a: &a [" + ", ".join(["x"] * 1000) + "]\nb: ["
                              + ", ".join(["*a"] * 1000) + "]\n" + STEP},
    "recursive alias": {"m.yaml": HEAD + "a: &a [*a]\n" + STEP},
    "recursive alias deep": {"m.yaml": HEAD + "a: &a {b: [1, {c: [*a]}]}\n" + STEP},
    "merge loop": {"m.yaml": HEAD + "a: &a {<<: *a}\n" + STEP},
    "merge of merges": {"m.yaml": HEAD + "d0: &d0 {k: v}\n" + "".join(
        f"d{i}: &d{i} {{<<: [{', '.join([f'*d{i - 1}'] * 9)}], k{i}: v}}\n" for i in range(1, 9)) + STEP},
    "undefined alias": {"m.yaml": HEAD + "a: *nope\n" + STEP},
    "deep flow list": {"m.yaml": HEAD + "x: " + "[" * 100_000 + "]" * 100_000 + "\n" + STEP},
    "deep flow map": {"m.yaml": HEAD + "x: " + "{a: " * 900 + "1" + "}" * 900 + "\n" + STEP},
    "deep block": {"m.yaml": HEAD + "x:\n" + "".join("  " * i + "- \n" for i in range(200)) + STEP},
    "deep in a matrix": {"m.yaml": HEAD + "steps: [{id: up, op: upscale, matrix: {c: [" + "[" * 49 + "]" * 49
                         + "]}}]\n"},
    "many documents": {"m.yaml": (HEAD + STEP + "---\n") * 1000},
    "python tag": {"m.yaml": HEAD + "x: !!python/object/apply:os.system ['true']\n" + STEP},
    "binary tag": {"m.yaml": HEAD + "x: !!binary '@@@'\n" + STEP},
    "int tag on text": {"m.yaml": HEAD + "steps: [{id: up, op: upscale, target: !!int eight}]\n"},
    "5000-digit number": {"m.yaml": HEAD + "steps: [{id: up, op: upscale, target: " + "9" * 5000 + "}]\n"},
    "matrix of 1e8": {"m.yaml": HEAD + _matrix(8)},
    "matrix of 1e20": {"m.yaml": HEAD + _matrix(20)},
    "matrix at the limit": {"m.yaml": HEAD + _matrix(4)},
    "matrix over the limit by one": {"m.yaml": HEAD + _matrix(4) + "      w: [1, 2]\n"},
    "chained product of 8^12": {"m.yaml": HEAD + "steps:\n  - {id: s0, op: upscale, matrix: {target: [1,2,3,4,5,6,7,8]}}\n"
                                + "".join(f"  - {{id: s{i}, op: upscale, for_each: s{i - 1}, matrix: "
                                          "{target: [1,2,3,4,5,6,7,8]}}\n" for i in range(1, 12))},
    "chain of 2000 steps": {"m.yaml": HEAD + _chain(2000)},
    "chain of 65 steps": {"m.yaml": HEAD + _chain(65)},
    "2000 separate steps": {"m.yaml": HEAD + "steps:\n" + "".join(
        f"  - {{id: s{i}, op: upscale, naming: '{{step}}.{{ext}}'}}\n" for i in range(2000))},
    "naming width 1.5e9": {"m.yaml": HEAD + "naming: '{index:1500000000d}'\n" + STEP},
    "naming precision 1e9": {"m.yaml": HEAD + "naming: '{index:.999999999f}.{ext}'\n" + STEP},
    "prompt width in a matrix": {"m.yaml": HEAD + "steps: [{id: e, op: edit, matrix: {prompt: ['{input:>999999999}']}}]\n"},
    "format spec of 5000 digits": {"m.yaml": HEAD + "naming: '{index:" + "9" * 5000 + "}'\n" + STEP},
    "budget 1e26": {"m.yaml": HEAD + 'budget_usd: "99999999999999999999999999"\n' + STEP},
    "budget 1e400 as a number": {"m.yaml": HEAD + "budget_usd: 1e400\n" + STEP},
    "budget with 5000 decimals": {"m.yaml": HEAD + 'budget_usd: "1.' + "0" * 5000 + '"\n' + STEP},
    "width 3e9": {"m.yaml": "version: 1\ninputs: [{url: https://cdn.example.com/a.png, width: 3000000000, height: 10}]\n"
                  + STEP},
    "width 2^63": {"m.yaml": "version: 1\ninputs: [{url: https://cdn.example.com/a.png, width: 9223372036854775808, "
                   "height: 10}]\n" + STEP},
    "seed 2^70": {"m.yaml": HEAD + "steps: [{id: e, op: edit, prompt: p, seed: 1180591620717411303424}]\n"},
    "factor nan": {"m.yaml": HEAD + "steps: [{id: up, op: upscale, upscale_mode: factor, factor: .nan}]\n"},
    "target inf": {"m.yaml": HEAD + "steps: [{id: up, op: upscale, target: .inf}]\n"},
    "NUL in a name": {"m.yaml": HEAD + 'naming: "a\\0b.{ext}"\n' + STEP},
    "not UTF-8": {"m.yaml": b"version: 1\n\xff\xfe\x00bad: \x81\n"},
    "UTF-16": {"m.yaml": (HEAD + STEP).encode("utf-16")},
    "only a BOM": {"m.yaml": "\ufeff"},
    "a 17 MB manifest": {"m.yaml": "version: 1\nname: '" + "x" * (17 * 2**20) + "'\n"},
    "50,001 values": {"m.yaml": HEAD + "x: [" + "1," * 50_001 + "1]\n" + STEP},
    "10,000 inline inputs": {"m.yaml": "version: 1\ninputs:\n" + "".join(
        f"  - https://cdn.example.com/{i}.png\n" for i in range(10_000)) + STEP},
    "100,000 inline inputs": {"m.yaml": "version: 1\ninputs:\n" + "".join(
        f"  - https://cdn.example.com/{i}.png\n" for i in range(100_000)) + STEP},
    "csv width 3e9": _csv("url,width,height\nhttps://cdn.example.com/b.png,3000000000,10\n"),
    "csv unicode digits": _csv("url,width,height\nhttps://cdn.example.com/b.png,²,١٠\n"),
    "csv 5000-digit width": _csv(f"url,width,height\nhttps://cdn.example.com/b.png,{'9' * 5000},{'0' * 5000}1\n"),
    "csv line of 200 KB": _csv(f"url\n{LONG}\n"),
    "csv field over the csv limit": _csv('url,x\nhttps://cdn.example.com/b.png,"' + "y" * 200_000 + '"\n'),
    "csv unclosed quote": _csv('url,x\nhttps://cdn.example.com/b.png,"never closed\n' + "a,b\n" * 1000),
    "csv NUL bytes": _csv("url\nhttps://cdn.example.com/\x00b.png\n"),
    "csv 10,000 columns": _csv(",".join(["url"] + [f"c{i}" for i in range(10_000)]) + "\n"
                               + ",".join(["https://cdn.example.com/b.png"] + ["v"] * 10_000) + "\n"),
    "csv 20,000 bad rows": _csv("url\n" + "not a url\n" * 20_000),
    "csv duplicate ids": _csv("url,id\n" + "".join(f"https://cdn.example.com/{i}.png,same\n" for i in range(5000))),
    "csv not UTF-8": {**_csv(""), "c.csv": b"url\n\xff\xfe\n"},
    "txt line of 200 KB": {"m.yaml": "version: 1\ninputs: [{from: l.txt}]\n" + STEP, "l.txt": LONG + "\n"},
    "from a directory": {"m.yaml": "version: 1\ninputs: [{from: d.csv}]\n" + STEP, "d.csv/x": ""},
    "from /dev/zero": {"m.yaml": "version: 1\ninputs: [{from: /dev/zero}]\n" + STEP},
    "from /dev/zero as csv": {"m.yaml": "version: 1\ninputs: [{from: z.csv}]\n" + STEP},
    "from outside": {"m.yaml": "version: 1\ninputs: [{from: ../../../../etc/passwd.csv}]\n" + STEP},
}


def _setup_special(name: str) -> None:
    if name == "from /dev/zero as csv":
        os.symlink("/dev/zero", "z.csv")


MANIFEST_COMMANDS = {
    "validate": ["validate", "m.yaml"],
    "estimate": ["estimate", "m.yaml", "--no-probe"],
    "run": ["run", "m.yaml", "--budget", "0", "--quiet"],
}


@pytest.mark.parametrize("command", list(MANIFEST_COMMANDS))
def test_named_hostile_manifests(tmp_path, command):
    tally = Tally(f"manifests/{command}")
    for i, (name, files) in enumerate(MANIFESTS.items()):
        case = tmp_path / f"case{i}"
        case.mkdir()
        os.chdir(case)
        write(files)
        _setup_special(name)
        attempt(tally, f"{command}: {name}", MANIFEST_COMMANDS[command])
        os.chdir(tmp_path)
        shutil.rmtree(case, ignore_errors=True)
    tally.check()
    assert tally.counts()["tried"] == len(MANIFESTS)


# hostile YAML text, from fragments: anchors, aliases, merges, tags, odd numbers, templates
_SCALARS = ["1", "0", "-1", "8", "3000000000", "1e400", ".nan", ".inf", "~", "true", "'0.10'", "2.5",
            "99999999999999999999999999", "https://cdn.example.com/a.png", "'ftp://x'", "'{index:04d}'",
            "'{index:1500000000d}'", "'{stem:>300}'", "'{x'", "'}'", "'{{}}'", "'../x'", "'/abs'", "up", "ed", "inputs",
            "edit", "upscale", "factor", "target", "'16:9'", "jpg", "c.csv", "l.txt", "!!int 7", "!!str 5", "'\\x00'",
            "'{step}/{stem}.{ext}'", "'{key}'", "'{color}'", "red", "'a b: c'"]
_KEYS = ["version", "inputs", "steps", "naming", "budget_usd", "defaults", "output_dir", "state", "id", "op", "url",
         "from", "width", "height", "params", "for_each", "matrix", "prompt", "references", "seed", "target",
         "factor", "upscale_mode", "output_format", "aspect_ratio", "color", "<<"]


@st.composite
def _yaml_node(draw, depth: int = 0, anchors: list | None = None) -> str:
    anchors = anchors if anchors is not None else []
    kind = draw(st.sampled_from(["scalar", "scalar", "list", "map", "alias", "deep"] if depth < 4 else ["scalar", "alias"]))
    if kind == "alias" and anchors:
        return "*" + draw(st.sampled_from(anchors))
    if kind == "deep":
        n = draw(st.integers(1, 80))
        return "[" * n + draw(st.sampled_from(_SCALARS)) + "]" * n
    if kind == "list":
        body = "[" + ", ".join(draw(st.lists(_yaml_node(depth + 1, anchors), max_size=4))) + "]"
    elif kind == "map":
        items = draw(st.lists(st.tuples(st.sampled_from(_KEYS), _yaml_node(depth + 1, anchors)), max_size=4))
        body = "{" + ", ".join(f"{k}: {v}" for k, v in items) + "}"
    else:
        body = draw(st.sampled_from(_SCALARS))
    if draw(st.integers(0, 3)) == 0:
        name = f"a{len(anchors)}"
        anchors.append(name)
        return f"&{name} {body}"
    return body


@st.composite
def _hostile_manifest(draw) -> str:
    anchors: list[str] = []
    lines = ["version: 1"]
    if draw(st.booleans()):
        lines.append("inputs: [https://cdn.example.com/a.png, {from: c.csv}, {from: l.txt}]")
    for key in draw(st.lists(st.sampled_from(_KEYS[1:8]), max_size=4)):
        lines.append(f"{key}: {draw(_yaml_node(0, anchors))}")
    steps = []
    for i in range(draw(st.integers(0, 3))):
        parts = [f"id: s{i}", f"op: {draw(st.sampled_from(['upscale', 'edit', 'nope']))}"]
        for key in draw(st.lists(st.sampled_from(_KEYS[15:]), max_size=3)):
            parts.append(f"{key}: {draw(_yaml_node(1, anchors))}")
        steps.append("{" + ", ".join(parts) + "}")
    lines.append("steps: [" + ", ".join(steps) + "]")
    if anchors and draw(st.booleans()):  # an alias used where it was not defined yet, or inside itself
        lines.append(f"late: &{anchors[0]}x [*{anchors[0]}x]")
    return "\n".join(lines) + "\n"


_CELLS = ["https://cdn.example.com/b.png", "not a url", "", "1024", "0", "-1", "3000000000", "²", "9" * 400, "x,y",
          '"quoted"', '"unclosed', "\x00", "a" * 300, "id-1", "id 1", "{color}"]


@st.composite
def _hostile_csv(draw) -> str:
    header = draw(st.lists(st.sampled_from(["url", "id", "width", "height", "URL", " url ", "color", "", "url"]),
                           min_size=0, max_size=5))
    rows = draw(st.lists(st.lists(st.sampled_from(_CELLS), max_size=6), max_size=6))
    return "\n".join([",".join(header)] + [",".join(r) for r in rows]) + draw(st.sampled_from(["\n", "", "\r\n"]))


_NEAR = {  # a valid manifest with one slot drawn from hostile values
    "naming": ["'{step}/{stem}.{ext}'", "'{index:0255d}.{ext}'", "'{index:256d}'", "'{stem:>9999999}.{ext}'",
               "'{key}.{ext}'", "'{input}'", "'{color}-{index}.{ext}'", "'../{stem}.{ext}'", "'{stem}/'"],
    "budget": ["'0.01'", "'999999999999.999999'", "'1000000000000'", "0", "-1", "1e400", "'0.0000001'"],
    "color": ["[red]", "[red, red]", "['a/b', '..']", "[" + ", ".join(f"c{i}" for i in range(100)) + "]",
              "[{x: 1}]", "[[1]]", "[null]", "['" + "z" * 5000 + "']"],
    "target": ["[1]", "[8]", "[9]", "[0]", "[1.5]", "['4']", "[true]", "[1, 2, 3, 4, 5, 6, 7, 8]"],
    "inputs": ["[https://cdn.example.com/a.png]", "[{from: c.csv}]", "[{from: l.txt}]",
               "[https://cdn.example.com/a.png, https://cdn.example.com/a.png]",
               "[{url: https://cdn.example.com/a.png, width: 100000, height: 100000}]",
               "[{url: https://cdn.example.com/a.png, width: 100001, height: 1}]"],
}


@st.composite
def _near_valid_manifest(draw) -> str:
    v = {k: draw(st.sampled_from([opts[0]] * len(opts) + opts)) for k, opts in _NEAR.items()}  # mostly valid
    chained = draw(st.booleans())
    return (f"version: 1\nbudget_usd: {v['budget']}\nnaming: {v['naming']}\ninputs: {v['inputs']}\nsteps:\n"
            f"  - {{id: up, op: upscale, matrix: {{target: {v['target']}, color: {v['color']}}}}}\n"
            + ("  - {id: ed, op: edit, for_each: up, prompt: 'in {color}'}\n" if chained else ""))


def test_generated_near_valid_manifests(tmp_path):
    tally = Tally("manifests/near")

    @settings(max_examples=int(os.environ.get("PB_FUZZ", 60)), deadline=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
    @given(_near_valid_manifest(), _hostile_csv(), st.lists(st.sampled_from(_CELLS), max_size=5))
    def one(manifest, csv_text, txt_lines):
        write({"m.yaml": manifest, "c.csv": csv_text, "l.txt": "\n".join(txt_lines) + "\n"})
        out = attempt(tally, f"validate: {manifest!r} / {csv_text!r}", ["validate", "m.yaml"])
        if out.kind == "clean" and out.exit_code == 0:
            attempt(tally, f"estimate: {manifest!r}", ["estimate", "m.yaml", "--no-probe"])

    os.chdir(tmp_path)
    one()
    tally.check()
    assert any(o.name.startswith("estimate") for o in tally.outcomes)  # some were valid


def test_generated_hostile_manifests(tmp_path):
    tally = Tally("manifests/fuzz")

    @settings(max_examples=int(os.environ.get("PB_FUZZ", 120)), deadline=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                     HealthCheck.function_scoped_fixture])
    @given(_hostile_manifest(), _hostile_csv(), st.lists(st.sampled_from(_CELLS), max_size=5))
    def one(manifest, csv_text, txt_lines):
        write({"m.yaml": manifest, "c.csv": csv_text, "l.txt": "\n".join(txt_lines) + "\n"})
        out = attempt(tally, f"validate: {manifest!r} / {csv_text!r}", ["validate", "m.yaml"])
        if out.kind == "clean" and out.exit_code == 0:  # valid: then estimate it too
            attempt(tally, f"estimate: {manifest!r}", ["estimate", "m.yaml", "--no-probe"])

    os.chdir(tmp_path)
    one()
    tally.check()


# -- option values -------------------------------------------------------------------------

GOOD = HEAD + STEP

#: name -> argv; every one must be refused (or done) cleanly, none may start a server or a run
OPTIONS: dict[str, list[str]] = {
    "run --budget 1e400": ["run", "m.yaml", "--budget", "1e400"],
    "run --budget 1e99999999": ["run", "m.yaml", "--budget", "1e99999999"],
    "run --budget nan": ["run", "m.yaml", "--budget", "nan"],
    "run --budget -1": ["run", "m.yaml", "--budget", "-1"],
    "run --budget 1e-9": ["run", "m.yaml", "--budget", "0.000000001"],
    "run --budget $": ["run", "m.yaml", "--budget", "$"],
    "run --concurrency 0": ["run", "m.yaml", "--concurrency", "0"],
    "run --concurrency 1e20": ["run", "m.yaml", "--concurrency", "99999999999999999999"],
    "run --max-rps nan": ["run", "m.yaml", "--max-rps", "nan"],
    "run --max-rps inf": ["run", "m.yaml", "--max-rps", "inf"],
    "run --max-rps 1e-300": ["run", "m.yaml", "--max-rps", "1e-300"],
    "run --first-poll nan": ["run", "m.yaml", "--first-poll", "nan"],
    "run --first-poll -1": ["run", "m.yaml", "--first-poll", "-1"],
    "run --base-url notaurl": ["run", "m.yaml", "--base-url", "notaurl"],
    "run --base-url ftp": ["run", "m.yaml", "--base-url", "ftp://gateway.example"],
    "run --base-url [::1": ["run", "m.yaml", "--base-url", "http://[::1"],
    "run --base-url port 99999": ["run", "m.yaml", "--base-url", "http://x:99999"],
    "run --base-url newline": ["run", "m.yaml", "--base-url", "http://x\n"],
    "run --base-url 10 KB": ["run", "m.yaml", "--base-url", "http://x/" + "a" * 10_000],
    "run --webhook-url nope": ["run", "m.yaml", "--webhook-url", "nope"],
    "run --webhook-url javascript": ["run", "m.yaml", "--webhook-url", "javascript:alert(1)"],
    "run --webhook-listen x": ["run", "m.yaml", "--webhook-url", "https://cb.example/h", "--webhook-listen", "x"],
    "run --webhook-listen :99999": ["run", "m.yaml", "--webhook-url", "https://cb.example/h", "--webhook-listen", ":99999"],
    "run --webhook-listen :abc": ["run", "m.yaml", "--webhook-url", "https://cb.example/h", "--webhook-listen", ":abc"],
    "run --webhook-listen spaces": ["run", "m.yaml", "--webhook-url", "https://cb.example/h", "--webhook-listen",
                                    "a b:80"],
    "run --pricing missing": ["run", "m.yaml", "--pricing", "missing.json"],
    "run --pricing not json": ["run", "m.yaml", "--pricing", "m.yaml"],
    "run --pricing /dev/zero": ["run", "m.yaml", "--pricing", "/dev/zero"],
    "run --pricing binary": ["run", "m.yaml", "--pricing", "bin.json"],
    "run --pricing deep": ["run", "m.yaml", "--pricing", "deep.json"],
    "run --pricing [1]": ["run", "m.yaml", "--pricing", "list.json"],
    "run --state under a file": ["run", "m.yaml", "--state", "a-file/s.duckdb"],
    "run --state /dev/null": ["run", "m.yaml", "--state", "/dev/null"],
    "run manifest NUL": ["run", "m.yaml\x00"],
    "run manifest missing": ["run", "missing.yaml"],
    "run manifest /dev/zero": ["run", "/dev/zero"],
    "estimate --probe-timeout nan": ["estimate", "m.yaml", "--probe-timeout", "nan"],
    "estimate --probe-timeout 1e300": ["estimate", "m.yaml", "--probe-timeout", "1e300"],
    "estimate --probe-concurrency 0": ["estimate", "m.yaml", "--probe-concurrency", "0"],
    "estimate --budget 1e400": ["estimate", "m.yaml", "--budget", "1e400"],
    "estimate --pricing /dev/zero": ["estimate", "m.yaml", "--no-probe", "--pricing", "/dev/zero"],
    "estimate --state /dev/null": ["estimate", "m.yaml", "--no-probe", "--state", "/dev/null"],
    "validate /dev/zero": ["validate", "/dev/zero"],
    "validate empty path": ["validate", ""],
    "validate NUL": ["validate", "m.yaml\x00"],
    "validate directory": ["validate", "."],
    "report --limit 1e20": ["report", "m.yaml", "--limit", "99999999999999999999"],
    "report --run injection": ["report", "m.yaml", "--run", "x'; DROP TABLE items; --"],
    "report -o unwritable": ["report", "m.yaml", "-o", "a-file/r.html"],
    "report -o /dev/full": ["report", "m.yaml", "-o", "/dev/full"],
    "report --format xml": ["report", "m.yaml", "--format", "xml"],
    "export -o under a file": ["export", "m.yaml", "-o", "a-file/x"],
    "export -o /dev/full": ["export", "m.yaml", "-o", "full"],
    "reconcile --wait nan": ["reconcile", "m.yaml", "--wait", "nan"],
    "reconcile --wait 1e300": ["reconcile", "m.yaml", "--wait", "1e300"],
    "reconcile --poll-interval 0": ["reconcile", "m.yaml", "--poll-interval", "0"],
    "status no argument": ["status"],
    "status missing": ["status", "--state", "missing.duckdb"],
    "emulator --port 99999": ["emulator", "--port", "99999"],
    "emulator --port -1": ["emulator", "--port", "-1"],
    "emulator --port in use": ["emulator", "--port", "PORT_IN_USE"],
    "emulator --host bogus": ["emulator", "--host", "999.1.1.1", "--port", "0"],
    "emulator --media-dir unwritable": ["emulator", "--port", "0", "--media-dir", "a-file/media"],
    "emulator --config-json [1]": ["emulator", "--config-json", "[1]"],
    "emulator --config-json {": ["emulator", "--config-json", "{"],
    "emulator --config-json types": ["emulator", "--config-json", json.dumps({"media_dir": 5, "workers": "x"})],
    "emulator --config-json 1e10 workers": ["emulator", "--config-json", json.dumps({"workers": 1e10})],
    "emulator --config-json unknown": ["emulator", "--config-json", json.dumps({"nope": 1})],
    "emulator --rate-limit nan": ["emulator", "--rate-limit", "nan"],
    "emulator --quota -1": ["emulator", "--quota", "-1"],
    "emulator --workers 0": ["emulator", "--workers", "0"],
    "emulator --lazy-input-size axb": ["emulator", "--lazy-input-size", "axb"],
    "emulator --megapixel x": ["emulator", "--megapixel", "x"],
    "emulator --edit-sizes 1:1=0x0": ["emulator", "--edit-sizes", "1:1=0x0"],
    "emulator --rate-window x": ["emulator", "--rate-window", "x"],
    "emulator --fault nope": ["emulator", "--fault", "nope"],
    "emulator --pricing missing": ["emulator", "--port", "0", "--pricing", "missing.json"],
    "emulator --balance 1e400": ["emulator", "--balance", "1e400"],
}


def test_bad_option_values(tmp_path):
    import socket

    from test_report import build_state

    os.chdir(tmp_path)
    write({"m.yaml": GOOD, "a-file": "", "bin.json": b"\xff\xfe\x00", "deep.json": "[" * 100_000 + "]" * 100_000,
           "list.json": "[1]"})
    build_state(Path("m.pixbatch.duckdb"), Path("out"))
    Path("full").mkdir()
    if os.path.exists("/dev/full"):
        Path("full/runs.parquet").symlink_to("/dev/full")
    tally = Tally("options")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = str(taken.getsockname()[1])
        for name, args in OPTIONS.items():
            out = attempt(tally, name, [port if a == "PORT_IN_USE" else a for a in args])
            if out.kind == "clean" and args[0] == "emulator":
                assert out.exit_code == 2, (name, out.output)  # a usage error, never a server
    tally.check()
    assert tally.counts()["tried"] == len(OPTIONS)


# -- damaged state files ---------------------------------------------------------------------


def _damage(path: Path, how: str) -> None:
    """Damage the state file at ``path`` (a valid one) in one way."""
    data = path.read_bytes()
    rnd = random.Random(how)
    wal = path.with_name(path.name + ".wal")
    if how == "empty":
        path.write_bytes(b"")
    elif how == "text":
        path.write_text("hello, I am not a database\n")
    elif how.startswith("truncated to "):
        n = how.removeprefix("truncated to ")
        size = {"half": len(data) // 2, "all but the last block": max(len(data) - 262_144, 0)}.get(n)
        path.write_bytes(data[: int(n) if size is None else size])
    elif how == "random bytes":
        path.write_bytes(rnd.randbytes(65_536))
    elif how == "bytes flipped":
        b = bytearray(data)
        for i in range(0, len(b), 997):
            b[i] ^= 0xFF
        path.write_bytes(bytes(b))
    elif how.startswith("zeroed "):
        start, end = {"zeroed main header": (0, 4096), "zeroed database headers": (4096, 12_288),
                      "zeroed middle": (len(data) // 2, len(data) // 2 + 262_144)}[how]
        b = bytearray(data)
        b[start:end] = bytes(len(b[start:end]))
        path.write_bytes(bytes(b))
    elif how == "random WAL":
        wal.write_bytes(rnd.randbytes(5000))
    elif how == "sqlite":
        path.unlink()
        con = sqlite3.connect(path)
        con.execute("CREATE TABLE items (key TEXT)")
        con.commit()
        con.close()
    else:
        path.unlink()
        db = duckdb.connect(str(path)) if how == "another program's" else None
        if db is not None:
            db.execute("CREATE TABLE sales (id INTEGER)")
            db.close()
            return
        path.write_bytes(data)
        db = duckdb.connect(str(path))
        sql = {
            "from a newer pixbatch": "INSERT INTO schema_migrations (id, name) VALUES (99, 'm099_future')",
            "a table dropped": "DROP TABLE outputs",
            "a column dropped": "ALTER TABLE events DROP COLUMN detail",
            "runs replaced by junk": "DROP TABLE runs; CREATE TABLE runs (run_id INTEGER)",
            "migrations forgotten": "DELETE FROM schema_migrations",
            "odd values": "UPDATE items SET state = 'NONSENSE', charged_micros = 9223372036854775807, "
                          "input_width = -5, body = '[]'; UPDATE runs SET options = '{\"output_dir\": 5}', "
                          "outcome = 'weird', started_at = '1970-01-01'",
            "no runs, items in flight": "DELETE FROM runs; UPDATE items SET state = 'SUBMITTED'",
        }[how]
        for stmt in sql.split("; "):
            db.execute(stmt)
        db.close()


DAMAGE = ["empty", "text", "truncated to 100", "truncated to 4096", "truncated to 12288", "truncated to half",
          "truncated to all but the last block", "random bytes", "bytes flipped", "zeroed main header",
          "zeroed database headers", "zeroed middle", "random WAL", "sqlite", "another program's",
          "from a newer pixbatch", "a table dropped", "a column dropped", "runs replaced by junk",
          "migrations forgotten", "odd values", "no runs, items in flight"]

#: damage found when the file is opened; the rest is found by the reads that reach it (a
#: truncated tail, a zeroed block) or is not damage to the commands at all (odd values)
FOUND_AT_OPEN = {"empty", "text", "truncated to 100", "truncated to 4096", "truncated to 12288", "random bytes",
                 "bytes flipped", "zeroed main header", "zeroed database headers", "sqlite", "another program's",
                 "from a newer pixbatch", "a table dropped", "a column dropped", "runs replaced by junk",
                 "migrations forgotten"}

# factor mode of an input of unknown size: estimate reads the probe cache (in the state file)
SIZED = HEAD + "steps: [{id: up, op: upscale, upscale_mode: factor, factor: 2}]\n"

STATE_COMMANDS = {
    "status": ["status", "--state", "S"],
    "report": ["report", "--state", "S", "--format", "json"],
    "export": ["export", "--state", "S", "-o", "exported"],
    "reconcile": ["reconcile", "--state", "S", "--wait", "0", "--base-url", NOWHERE],
    "estimate": ["estimate", "m.yaml", "--no-probe", "--state", "S"],
    "run": ["run", "m.yaml", "--state", "S", "--budget", "0", "--quiet", "--base-url", NOWHERE],
}


@pytest.mark.parametrize("commands", [["status", "report", "export"], ["reconcile", "estimate", "run"]],
                         ids=["read", "write"])
def test_damaged_state_files(tmp_path, commands):
    from test_report import build_state

    good = tmp_path / "good.duckdb"
    build_state(good, tmp_path / "out")
    tally = Tally("state files/" + "+".join(commands))
    for i, how in enumerate(DAMAGE):
        for command in commands:
            case = tmp_path / f"case{i}-{command}"
            case.mkdir()
            os.chdir(case)
            write({"m.yaml": SIZED})
            shutil.copy(good, "s.duckdb")
            _damage(Path("s.duckdb"), how)
            out = attempt(tally, f"{command}: {how}", [a if a != "S" else "s.duckdb" for a in STATE_COMMANDS[command]])
            if how in FOUND_AT_OPEN:  # never taken for a state file, whatever the command reads of it
                assert out.exit_code != 0, (command, how, out.output)
            os.chdir(tmp_path)
            shutil.rmtree(case, ignore_errors=True)
    tally.check()
    assert tally.counts()["tried"] == len(DAMAGE) * len(commands)
