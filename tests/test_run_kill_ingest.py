"""SIGKILL while a fresh run is still reading its expansion in (streaming ingest), then resume.

A real subprocess runs ``pixbatch.runner.run`` on a real DuckDB file against an emulator on
loopback, with small ingest batches so that the expansion is still streaming in while items
are sent. It is SIGKILLed twice during the ingest (the status file says the ingest is not
done, and the emulator has seen submits), then run to the end. Nothing may be lost (every
item of the expansion is in the file and settled) and nothing sent twice (each completed key
has one charged request in the emulator's ledger; requests the run never recorded are at
most its AMBIGUOUS items).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter

import duckdb
import pytest

from pixbatch.emulator import fast_test_config, start_emulator

INPUTS = 300  # x 2 edits (matrix) + 1 upscale chained on each edit = 1,200 items

RUNNER = """\
import sys
from pathlib import Path
from pixbatch.manifest import load_manifest_shallow
from pixbatch.runner import RunOptions, run
manifest, url, key, batch = sys.argv[1:5]
summary = run(load_manifest_shallow(manifest), options=RunOptions(
    base_url=url, api_key=key, concurrency=8, poll_initial=0.05, download=False, status_interval=0.05,
    ingest_batch=int(batch), preflight=False))  # the lazy emulator's inputs are not real URLs
sys.exit(summary.exit_code)
"""


def _status(path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


@pytest.mark.slow
def test_sigkill_during_the_streaming_ingest_then_resume_loses_nothing_and_sends_nothing_twice(tmp_path):
    with open(tmp_path / "in.csv", "w") as f:
        f.write("id,url,width,height\n")
        for i in range(INPUTS):
            f.write(f"i{i},https://img.test/k/{i}.png,800,600\n")
    mp = tmp_path / "k.yaml"
    mp.write_text("version: 1\ninputs:\n  - from: in.csv\nsteps:\n  - id: e\n    op: edit\n"
                  "    prompt: \"tone {t}\"\n    matrix:\n      t: [warm, cold]\n"
                  "  - id: u\n    op: upscale\n    for_each: e\n    target: 2\n", "utf-8")
    total = INPUTS * 4
    script = tmp_path / "runner.py"
    script.write_text(RUNNER, "utf-8")
    state = tmp_path / "k.pixbatch.duckdb"
    status = tmp_path / "k.pixbatch.duckdb.status.json"
    cfg = fast_test_config(render="lazy", queue_time=(0.01, 0.05), processing_time=(0.02, 0.1),
                           balance_micros=10**12)
    with start_emulator(cfg) as emu:
        env = {**os.environ, "PIXAZO_API_KEY": emu.api_key}

        def start(batch: int) -> subprocess.Popen:
            return subprocess.Popen([sys.executable, str(script), str(mp), emu.url, emu.api_key, str(batch)],
                                    env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

        seen_partial = []
        for kill in range(2):
            submits0 = emu.stats()["submits"]
            proc = start(20)  # 20 unique items per write: the ingest takes a while
            deadline = time.monotonic() + 60
            killed_at = None
            while time.monotonic() < deadline and proc.poll() is None:
                snap = _status(status)
                ing = (snap or {}).get("ingest")
                if (snap and snap.get("running") and ing and not ing["done"] and 100 <= ing["items"] < total * 3 // 4
                        and emu.stats()["submits"] - submits0 >= 10):
                    proc.send_signal(signal.SIGKILL)
                    killed_at = ing
                    break
                time.sleep(0.01)
            _, err = proc.communicate(timeout=30)
            assert killed_at is not None, f"run {kill} was not killed during its ingest: {err.decode()[-2000:]}"
            assert proc.returncode == -signal.SIGKILL
            seen_partial.append(killed_at)
            status.unlink()  # the next run writes its own
        final = start(500)
        _, err = final.communicate(timeout=180)
        assert final.returncode in (0, 1), err.decode()[-3000:]
        time.sleep(0.3)  # ambiguous jobs finish on the emulator's side too
        ledger = emu.ledger()

    assert all(0 < p["items"] < total for p in seen_partial)
    db = duckdb.connect(str(state), read_only=True)
    try:
        states = Counter(dict(db.execute("SELECT state, count(*) FROM items GROUP BY 1").fetchall()))
        accepted = dict(db.execute("SELECT request_id, key FROM attempts WHERE request_id IS NOT NULL").fetchall())
        charged = db.execute("SELECT coalesce(sum(charged_micros), 0) FROM items").fetchone()[0]
        runs = db.execute("SELECT outcome, json_extract_string(options, '$.ingest') FROM runs "
                          "ORDER BY started_at").fetchall()
        blocked_ok = db.execute("SELECT count(*) FROM items i JOIN items u ON u.key = i.upstream "
                                "WHERE i.state = 'BLOCKED' AND u.state = 'AMBIGUOUS'").fetchone()[0]
        scopes = db.execute("SELECT count(DISTINCT scope) FROM items").fetchone()[0]
        rows, keys = db.execute("SELECT count(*), count(DISTINCT key) FROM items").fetchone()
    finally:
        db.close()
    # two killed runs that were still reading in, then one that read the rest in and finished
    assert runs[:2] == [("killed", "partial"), ("killed", "partial")] and runs[-1][1] == "complete", runs
    assert scopes == 1
    assert rows == keys  # one row per key: the re-walks after the kills wrote no key twice (no index enforces it)
    assert sum(states.values()) == total, states  # nothing lost: the whole expansion is in the file
    assert states["COMPLETED"] + states["AMBIGUOUS"] + states["BLOCKED"] == total, states
    assert blocked_ok == states["BLOCKED"]
    known = [e for e in ledger.entries if e.request_id in accepted]
    unknown = [e for e in ledger.entries if e.request_id not in accepted]
    per_key = Counter(accepted[e.request_id] for e in known)
    assert len(per_key) == states["COMPLETED"] and set(per_key.values()) == {1}  # nothing sent (and paid) twice
    assert len(unknown) <= states["AMBIGUOUS"]
    assert sum(e.amount_micros for e in known) == charged
