"""`pixbatch demo`: the whole loop offline, checked against the emulator's ledger it leaves behind."""

from __future__ import annotations

import json
import tempfile
import time

import duckdb
from click.testing import CliRunner

from pixbatch.cli import cli
from pixbatch.money import format_usd
from pixbatch.report import build_report


def test_demo_runs_offline_and_its_report_matches_the_ledger(tmp_path):
    root = tmp_path / "demo"
    t0 = time.monotonic()
    res = CliRunner().invoke(cli, ["demo", "--dir", str(root)], catch_exceptions=False)
    elapsed = time.monotonic() - t0
    assert res.exit_code == 0, res.output
    assert elapsed < 45, f"the demo took {elapsed:.1f} s"
    out = res.output
    for part in ("1. estimate", "2. run", "3. report", "Estimate vs charged, explained", "equals the emulator's ledger"):
        assert part in out, part

    ledger = json.loads((root / "ledger.json").read_text())
    entries = {e["request_id"]: (e["status"], e["amount_micros"]) for e in ledger["entries"]}
    charged = ledger["totals"]["charged_micros"]
    # 4 edits + 4 upscales; the non-image's 2 edits are never sent (preflight: BAD_INPUT, not charged),
    # its 2 upscales are BLOCKED
    assert len(entries) == 8 and {s for s, _ in entries.values()} == {"COMPLETED"}
    assert charged == sum(a for _, a in entries.values()) == 4 * 10000 + 4 * 10000
    assert format_usd(charged) in out

    state = root / "demo.pixbatch.duckdb"
    r = build_report(state, outputs_limit=None)
    assert r.spend.totals.charged_micros == charged
    assert dict(r.status.by_state) == {"COMPLETED": 8, "BAD_INPUT": 2, "BLOCKED": 2}
    (failure,) = r.status.failures
    assert failure.count == 2 and {e.input_id for e in failure.examples} == {"notes"}
    assert "notes.png" in failure.message and "not an image" in failure.message
    db = duckdb.connect(str(state), read_only=True)
    try:
        mine = dict(db.execute("SELECT request_id, charged_micros FROM items WHERE request_id IS NOT NULL").fetchall())
    finally:
        db.close()
    assert mine == {rid: amount for rid, (_, amount) in entries.items()}
    assert len(r.outputs.files) == 8
    for f in r.outputs.files:
        assert (root / "out" / f.path).stat().st_size == f.bytes
    page = (root / "report.html").read_text()
    assert page.count("<svg") == 3 and page.count('src="data:image/jpeg;base64,') == 8 + 4  # + the upscales' inputs
    assert 'href="out/recolor/mug-teal.jpg"' in page  # relative to the page

    again = CliRunner().invoke(cli, ["demo", "--dir", str(root)])
    assert again.exit_code == 2 and "is not empty" in again.output


def test_demo_cleans_up_its_temporary_directory(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    res = CliRunner().invoke(cli, ["demo"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "equals the emulator's ledger" in res.output and "Kept" not in res.output
    assert not list(tmp_path.glob("pixbatch-demo-*"))
    # it printed no path of the directory it deleted (the report's paths are relative to it)
    assert "pixbatch-demo-" not in res.output and "a temporary directory (deleted at the end" in res.output
    assert "demo.pixbatch.duckdb" in res.output
