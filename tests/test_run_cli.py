"""`pixbatch run` refuses a manifest whose output names collide before anything is sent."""

from __future__ import annotations

import duckdb
from click.testing import CliRunner

from pixbatch.cli import cli


def test_run_checks_output_names_before_sending(tmp_path, emulator, image_server):
    a, b = image_server.add("a.png", (64, 64)), image_server.add("b.png", (64, 64))
    m = tmp_path / "m.yaml"
    m.write_text(f"version: 1\ninputs:\n  - {a}\n  - {b}\nsteps:\n"
                 "  - id: e\n    op: edit\n    prompt: p\n    naming: 'same.{ext}'\n")
    res = CliRunner().invoke(cli, ["run", str(m), "--base-url", emulator.url],
                             env={"PIXAZO_API_KEY": emulator.api_key})
    assert res.exit_code == 2, res.output
    assert "same.jpg" in res.output
    assert emulator.stats()["submits"] == 0


def test_error_items_are_resubmitted_only_with_retry_errors(tmp_path, emulator, image_server):
    url = image_server.add("a.png", (320, 240))
    m = tmp_path / "m.yaml"
    m.write_text(f"version: 1\ninputs:\n  - {url}\nsteps:\n  - id: e\n    op: edit\n    prompt: p\n"
                 "  - id: u\n    op: upscale\n    for_each: e\n    target: 2\n")
    args = ["run", str(m), "--base-url", emulator.url, "--quiet", "--first-poll", "0.1"]
    env = {"PIXAZO_API_KEY": emulator.api_key}
    emulator.script([{"status": "ERROR", "error": "the model crashed"}])

    first = CliRunner().invoke(cli, args, env=env)
    assert first.exit_code == 1 and "--retry-errors" in first.output, first.output
    again = CliRunner().invoke(cli, args, env=env)  # a plain re-run leaves ERROR alone
    assert again.exit_code == 1 and emulator.stats()["submits"] == 1
    fixed = CliRunner().invoke(cli, [*args, "--retry-errors"], env=env)
    assert fixed.exit_code == 0, fixed.output

    ledger = emulator.wait_idle()
    assert sorted(e.status for e in ledger.entries) == ["COMPLETED", "COMPLETED", "ERROR"]
    assert ledger.charged_micros == 10_000 + 5_000  # the ERROR cost nothing
    db = duckdb.connect(str(tmp_path / "m.pixbatch.duckdb"), read_only=True)
    try:
        states = db.execute("SELECT step, state, charged_micros FROM items ORDER BY step").fetchall()
        attempts = db.execute("SELECT count(*) FROM attempts").fetchone()[0]
    finally:
        db.close()
    assert states == [("e", "COMPLETED", 10_000), ("u", "COMPLETED", 5_000)] and attempts == 3
