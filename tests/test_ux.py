"""What the user sees: progress off a terminal, the live display in 80 columns, steps in
manifest order, the failure list, the runs list."""

from __future__ import annotations

import csv
import io
import json
import re

from click.testing import CliRunner
from rich.console import Console

from pixbatch.cli import cli
from pixbatch.progress import PlainProgress, RichProgress
from pixbatch.state import StatusSnapshot


def _snapshot(**kw) -> StatusSnapshot:
    steps = {"zeta": {"COMPLETED": 40, "FAILED": 2, "SUBMITTED": 8, "PENDING": 50},
             "alpha-with-a-long-step-name": {"BLOCKED": 2, "BAD_INPUT": 3, "PENDING": 95}}
    base = dict(state_path="m.pixbatch.duckdb", source="runner", running=True, updated_at="2026-05-22T10:00:00Z",
                run_id="r1", steps=steps, charged_micros=420_000, reserved_micros=80_000, budget_micros=10_000_000,
                estimate_low_micros=1_500_000, estimate_high_micros=2_000_000, rate_per_s=2.5, eta_s=98.0)
    base.update(kw)
    return StatusSnapshot(**base)


def test_the_live_display_fits_80_columns_with_a_bar_and_the_elapsed_time():
    buf = io.StringIO()
    p = RichProgress(Console(file=buf, width=80, force_terminal=False, color_system=None))
    p.update(_snapshot())
    p.console.print(p._render())
    lines = buf.getvalue().splitlines()
    assert max(len(line) for line in lines) <= 80
    text = buf.getvalue()
    assert text.index("zeta") < text.index("alpha")  # manifest order, not alphabetical
    assert re.search(r" 23% 47/200  0:0\d elapsed", text), text  # 47 of 200 finished (not PENDING or in flight)
    assert "alpha-with-a-long-step-name" in text  # a long step name is not cut
    for needle in ("spent $0.42 of $10.00", "estimate $1.50-$2.00", "2.5 items/s", "ETA 1:38", "3 BAD_INPUT"):
        assert needle in text, needle


def test_the_status_file_keeps_the_steps_in_manifest_order():
    snap = _snapshot()
    back = StatusSnapshot.from_dict(json.loads(snap.to_json()))
    assert list(back.steps) == ["zeta", "alpha-with-a-long-step-name"]


def test_plain_progress_prints_a_line_at_a_steady_interval_then_the_summary_apart():
    out = io.StringIO()
    p = PlainProgress(out, interval=3600)
    p.start({"run_id": "r1", "state_path": "m.pixbatch.duckdb", "budget_micros": 10_000_000})
    for _ in range(5):
        p.update(_snapshot())  # only the first falls on the interval
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and lines[0].startswith("run r1: state m.pixbatch.duckdb, budget $10.00")
    assert re.match(r"\[0:0\d\] 23% of 200 \| 40 completed, 7 failed, 8 in flight, 145 waiting \| "
                    r"spent \$0\.42 of \$10\.00 .*\| 2\.5 items/s \| ETA 1:38$", lines[1]), lines[1]


def _manifest(tmp_path, image_server) -> str:
    good = [image_server.add(f"{n}.png", (200 + n, 150)) for n in range(3)]
    bad = f"{image_server.url}/status/404"
    m = tmp_path / "m.yaml"
    m.write_text("version: 1\nbudget_usd: '1.00'\ninputs:\n" + "".join(f"  - {u}\n" for u in [*good, bad])
                 + "steps:\n  - id: zeta\n    op: edit\n    prompt: p\n"
                 "  - id: alpha\n    op: upscale\n    for_each: zeta\n    target: 2\n")
    return str(m)


def test_a_run_off_a_terminal_logs_progress_lines_and_a_summary_line_by_line(tmp_path, emulator, image_server):
    m = _manifest(tmp_path, image_server)
    res = CliRunner().invoke(cli, ["run", m, "--base-url", emulator.url, "--first-poll", "0.1",
                                   "--progress-interval", "0.2"], env={"PIXAZO_API_KEY": emulator.api_key})
    assert res.exit_code == 1, res.output
    err = res.stderr.splitlines()
    assert err[0].startswith("run ") and "budget $1.00" in err[0]
    progress = [line for line in err if re.match(r"\[\d+:\d\d\] \d+% of 8 \| ", line)]
    assert progress, res.stderr
    assert all("spent $" in line and "waiting" in line for line in progress)
    head = next(i for i, line in enumerate(err) if line.startswith("incomplete: "))
    assert "charged this run $0.045, total $0.045 of $1.00 | took " in err[head]
    assert all(line.startswith("- ") for line in err[head + 1:])  # every message on a line of its own
    assert any("--no-preflight" in line for line in err[head + 1:])

    # the runs of the state file, and every item that did not complete, with its input and error
    runs = CliRunner().invoke(cli, ["runs", m])
    assert runs.exit_code == 0 and max(len(x) for x in runs.output.splitlines()) <= 80
    assert re.search(r"\d{8}T\d{6}Z-\w{8}  \d{4}-\d\d-\d\d \d\d:\d\d  \d\d:\d\d  incomplete +6 +\$0\.045",
                     runs.output), runs.output
    (run,) = json.loads(CliRunner().invoke(cli, ["runs", m, "--format", "json"]).output)
    assert (run["outcome"], run["items"], run["charged_micros"], run["charged_usd"]) == ("incomplete", 6, 45_000,
                                                                                          "0.045")
    table = CliRunner().invoke(cli, ["failures", m]).output
    assert max(len(x) for x in table.splitlines()) <= 80
    assert "zeta/3.jpg (input 3)" in table or "BAD_INPUT" in table
    items = json.loads(CliRunner().invoke(cli, ["failures", m, "--format", "json"]).output)
    assert [(f["state"], f["kind"], f["step"]) for f in items] == [("BAD_INPUT", "unsent", "zeta"),
                                                                   ("BLOCKED", "blocked", "alpha")]
    bad, blocked = items
    assert bad["input_url"].endswith("/status/404") and "HTTP 404" in bad["error"]
    assert blocked["upstream"] == bad["output_name"] and blocked["upstream_state"] == "BAD_INPUT"
    assert bad["output_name"] in blocked["error"] and "HTTP 404" in blocked["error"]  # names it and says why
    rows = list(csv.DictReader(io.StringIO(CliRunner().invoke(cli, ["failures", m, "--format", "csv"]).output)))
    assert [r["state"] for r in rows] == ["BAD_INPUT", "BLOCKED"] and rows[0]["input_url"] == bad["input_url"]

    status = CliRunner().invoke(cli, ["status", m]).output
    assert status.index("zeta") < status.index("alpha")
