"""A streamed expansion: a budget that its first batch fits but the whole does not, and what the
status file says of the stream.

The refusal must come from the stream (the money position after a batch), stop the run
with exit 3 before the rest is sent, and keep what was charged within the budget: a real
run against the emulator on loopback, a real DuckDB file, a first batch of 5 items.
"""

from __future__ import annotations

from pixbatch.emulator import fast_test_config, start_emulator
from pixbatch.errors import ExitCode
from pixbatch.manifest import load_manifest
from pixbatch.runner import RunOptions, prepare, run


def test_a_budget_the_rest_of_the_stream_breaks_is_refused_within_budget(tmp_path, monkeypatch):
    monkeypatch.setattr(prepare, "FIRST_BATCH", 5)  # 5 items checked before sending; 60 more streamed
    rows = "".join(f"i{i},https://img.test/b/{i}.png,800,600\n" for i in range(65))
    (tmp_path / "in.csv").write_text("id,url,width,height\n" + rows)
    m = tmp_path / "b.yaml"
    m.write_text("version: 1\ninputs:\n  - from: in.csv\nsteps:\n  - id: e\n    op: edit\n"
                 "    prompt: make it blue\n", "utf-8")
    cfg = fast_test_config(render="lazy", queue_time=(0.2, 0.3), processing_time=(0.2, 0.3))
    with start_emulator(cfg) as emu:
        summary = run(load_manifest(m), options=RunOptions(
            base_url=emu.url, api_key=emu.api_key, concurrency=2, poll_initial=0.05, download=False,
            preflight=False, ingest_batch=20, budget_micros=200_000))  # $0.20: 20 edits of 65
        charged = emu.wait_idle().charged_micros
        submits = emu.stats()["submits"]
    assert summary.exit_code == ExitCode.BUDGET
    assert charged <= 200_000
    # refused once the stream proved it (5 + 20 items read cost at least $0.25): not after the 20
    # sends the ledger would allow on its own
    assert submits <= 10


def test_the_status_file_says_where_the_stream_spent_its_time(tmp_path, monkeypatch):
    # walking, waiting for the writer, writing: what bench/scale.py prints of a million-item ingest
    import json

    monkeypatch.setattr(prepare, "FIRST_BATCH", 5)
    rows = "".join(f"i{i},https://img.test/w/{i}.png,800,600\n" for i in range(200))
    (tmp_path / "in.csv").write_text("id,url,width,height\n" + rows)
    m = tmp_path / "w.yaml"
    m.write_text("version: 1\ninputs:\n  - from: in.csv\nsteps:\n  - id: u\n    op: upscale\n    target: 1\n", "utf-8")
    with start_emulator(fast_test_config(render="lazy")) as emu:
        summary = run(load_manifest(m), options=RunOptions(
            base_url=emu.url, api_key=emu.api_key, concurrency=64, poll_initial=0.05, download=False,
            preflight=False, ingest_batch=25))
    assert summary.exit_code == 0 and summary.counts["COMPLETED"] == 200
    ing = json.loads((tmp_path / "w.pixbatch.duckdb.status.json").read_text())["ingest"]
    assert ing["done"] and ing["items"] == 200
    assert ing["walk_s"] > 0 and ing["write_s"] > 0 and ing["wait_s"] >= 0
    assert ing["walk_s"] + ing["wait_s"] <= ing["seconds"] + 0.01  # both on the loop's thread, one after the other


def test_a_fresh_stream_commits_every_few_batches_and_keeps_them_when_a_late_name_repeats(tmp_path, monkeypatch):
    # a fresh state file: the stream writes through its own connection, COMMIT_BATCHES batches a
    # transaction, while the run updates the items already in. Row 151 renders the name of row 1:
    # the run stops with the problem (exit 2), and what was written before it stays in the file
    import duckdb
    import pytest

    from pixbatch.errors import ManifestError
    from pixbatch.manifest import load_manifest_shallow
    from pixbatch.runner import stream

    monkeypatch.setattr(prepare, "FIRST_BATCH", 10)
    commits: list[int] = []
    real_add = stream._Appender.add

    def add(self, batch, last):
        committed = real_add(self, batch, last)
        if committed:
            commits.append(self.stream.ingest.new)  # rows written so far
        return committed

    monkeypatch.setattr(stream._Appender, "add", add)
    rows = "".join(f"i{i},https://img.test/s/{i}.png,800,600,t{i if i != 150 else 0}\n" for i in range(300))
    (tmp_path / "in.csv").write_text("id,url,width,height,tag\n" + rows)
    m = tmp_path / "s.yaml"
    m.write_text("version: 1\ninputs:\n  - from: in.csv\nsteps:\n  - id: u\n    op: upscale\n    target: 1\n"
                 "    naming: '{step}/{tag}.{ext}'\n", "utf-8")
    with start_emulator(fast_test_config(render="lazy")) as emu:
        with pytest.raises(ManifestError, match="both render the output name 'u/t0.jpg'"):
            run(load_manifest_shallow(m), options=RunOptions(
                base_url=emu.url, api_key=emu.api_key, concurrency=8, poll_initial=0.05, download=False,
                preflight=False, ingest_batch=10))
    # 10 in prepare, then transactions of 5 batches of 10: 60, 110, 160 would be next, but row 151's
    # batch is refused before it is written; the open transaction (110 .. 150) is kept
    assert commits[:2] == [60, 110]
    db = duckdb.connect(str(tmp_path / "s.pixbatch.duckdb"), read_only=True)
    try:
        names = [r[0] for r in db.execute("SELECT output_name FROM items ORDER BY rowid").fetchall()]
    finally:
        db.close()
    assert names == [f"u/t{i}.jpg" for i in range(150)]


def test_a_failed_write_of_the_stream_leaves_no_gap_and_a_resume_sends_the_rest_once(tmp_path, monkeypatch):
    # the 8th write (the third batch of the stream's second transaction) fails: that transaction is
    # rolled back whole, the batches queued behind it are not written, the run stops with the error;
    # the next run reads the rest in and sends every item exactly once
    import duckdb
    import pytest

    from pixbatch.state import Ingest

    monkeypatch.setattr(prepare, "FIRST_BATCH", 10)
    real_write = Ingest.write
    calls = {"n": 0}

    def write(self, db, batch, *, transaction=True):
        calls["n"] += 1
        if calls["n"] == 8:
            raise OSError("No space left on device (simulated)")
        return real_write(self, db, batch, transaction=transaction)

    rows = "".join(f"i{i},https://img.test/g/{i}.png,800,600\n" for i in range(300))
    (tmp_path / "in.csv").write_text("id,url,width,height\n" + rows)
    m = tmp_path / "g.yaml"
    m.write_text("version: 1\ninputs:\n  - from: in.csv\nsteps:\n  - id: u\n    op: upscale\n    target: 1\n", "utf-8")
    with start_emulator(fast_test_config(render="lazy")) as emu:
        opts = RunOptions(base_url=emu.url, api_key=emu.api_key, concurrency=8, poll_initial=0.05, download=False,
                          preflight=False, ingest_batch=10)
        monkeypatch.setattr(Ingest, "write", write)
        with pytest.raises(OSError, match="No space left"):
            run(load_manifest(m), options=opts)
        db = duckdb.connect(str(tmp_path / "g.pixbatch.duckdb"), read_only=True)
        try:
            idx = [r[0] for r in db.execute("SELECT idx FROM items ORDER BY rowid").fetchall()]
        finally:
            db.close()
        assert idx == list(range(60))  # the first batch and one whole transaction of 5: no gap
        monkeypatch.setattr(Ingest, "write", real_write)
        summary = run(load_manifest(m), options=opts)
        emu.wait_idle()
        stats = emu.stats()
    assert summary.exit_code == 0 and summary.counts["COMPLETED"] == 300
    assert stats["submits"] == 300  # each item sent once over both runs
