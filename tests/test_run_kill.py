"""Resume after SIGKILL at random moments: nothing is lost, nothing is paid twice.

A real `python -m pixbatch run` subprocess against an emulator in this process is killed
with SIGKILL at random times, again and again, then run to the end. Every item must end
COMPLETED exactly once per the emulator's ledger, except the AMBIGUOUS ones (killed between
the POST and recording its request id), which the run counts and does not resend.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from collections import Counter

import duckdb

from pixbatch.emulator import fast_test_config, start_emulator

KILLS = 22


def test_sigkill_at_random_moments_then_resume(tmp_path):
    rng = random.Random(int(os.environ.get("PIXBATCH_KILL_SEED", "20261125")))
    n = 80  # 320 items: enough work that the kills, not the items, run out (each kill may leave
    # up to 3 AMBIGUOUS edits, whose upscales are then BLOCKED)
    mp = tmp_path / "k.yaml"
    mp.write_text(
        "version: 1\ninputs:\n" + "".join(f"  - https://img.test/k{i}.png\n" for i in range(n)) +
        "steps:\n  - id: e\n    op: edit\n    prompt: \"tone {t}\"\n    matrix:\n      t: [warm, cold]\n"
        "  - id: u\n    op: upscale\n    for_each: e\n    target: 2\n", "utf-8")
    total = n * 2 * 2
    cfg = fast_test_config(render="lazy", queue_time=(0.05, 0.2), processing_time=(0.1, 0.4))
    with start_emulator(cfg) as emu:
        env = {**os.environ, "PIXAZO_API_KEY": emu.api_key}
        # --no-preflight: the lazy emulator does not fetch inputs, and these URLs are not real
        cmd = [sys.executable, "-m", "pixbatch", "run", str(mp), "--base-url", emu.url, "--quiet", "--no-download",
               "--no-preflight", "--first-poll", "0.15", "--concurrency"]
        kills = 0
        finished_early = 0
        while kills < KILLS:
            proc = subprocess.Popen([*cmd, "3"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            try:
                proc.wait(timeout=rng.uniform(0.45, 1.1))
            except subprocess.TimeoutExpired:
                proc.kill()  # SIGKILL
                proc.communicate()
                kills += 1
                continue
            _, err = proc.communicate()
            assert proc.returncode in (0, 1), err.decode()
            finished_early += 1
            if finished_early > 3:
                break  # the work ran out before the kills did
        final = subprocess.run([*cmd, "16"], env=env, capture_output=True, timeout=60)
        assert final.returncode in (0, 1), final.stderr.decode()
        time.sleep(0.5)  # ambiguous jobs finish on the emulator's side too
        ledger = emu.ledger()
    assert kills >= 20, f"only {kills} kills landed"

    db = duckdb.connect(str(tmp_path / "k.pixbatch.duckdb"), read_only=True)
    states = Counter(dict(db.execute("SELECT state, count(*) FROM items GROUP BY 1").fetchall()))
    accepted = dict(db.execute("SELECT request_id, key FROM attempts WHERE request_id IS NOT NULL").fetchall())
    charged = db.execute("SELECT coalesce(sum(charged_micros), 0) FROM items").fetchone()[0]
    blocked_ok = db.execute("SELECT count(*) FROM items i JOIN items u ON u.key = i.upstream "
                            "WHERE i.state = 'BLOCKED' AND u.state = 'AMBIGUOUS'").fetchone()[0]
    db.close()
    assert sum(states.values()) == total
    assert states["COMPLETED"] + states["AMBIGUOUS"] + states["BLOCKED"] == total, states
    assert blocked_ok == states["BLOCKED"]  # only items behind an ambiguous one are blocked
    known = [e for e in ledger.entries if e.request_id in accepted]
    unknown = [e for e in ledger.entries if e.request_id not in accepted]
    per_key = Counter(accepted[e.request_id] for e in known)
    assert len(per_key) == states["COMPLETED"] and set(per_key.values()) == {1}  # each completed once
    assert len(unknown) <= states["AMBIGUOUS"]  # accepted but never recorded: exactly what AMBIGUOUS means
    assert sum(e.amount_micros for e in known) == charged
