"""Scale: a manifest of 1,000,000 items through `estimate`, `run` start-up, and a resume after SIGKILL.

    /work/venv/bin/python bench/scale.py [--n 1000000] [--run-seconds 3]

The manifest is bench/estimate.py's (a CSV of N/10 inputs with declared sizes, an edit
step with a 2x2 matrix, an upscale chained on it, a factor upscale with two factors: 10
items per input). Every measurement is a real `python -m pixbatch` subprocess; peak RSS
is that child's (``os.wait4``).

1. ``estimate --no-probe --json``: wall time and peak RSS.
2. ``run`` start-up: from process start to the first request the emulator (its own
   process, zero job time) sees, which includes inserting the N items into a fresh state
   file. The run then works ``--run-seconds`` and is SIGKILLed (some items SUBMITTING or
   SUBMITTED, as after a crash).
3. resume: the same command again, from process start to its first request (the state
   file already holds N items: recovery of the SUBMITTING ones, then polling the
   SUBMITTED ones and feeding); then SIGKILL again.
4. resume to a decision: the same command with ``--budget 0``, which does the whole resume
   set-up and then refuses (exit 3) before sending anything: process start to exit.

Target: resume (3) < 10 s.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import bench_emulator, machine, pixbatch_cmd, pixbatch_env, query, verdict, wait_child  # noqa: E402
from estimate import write_manifest  # noqa: E402  (bench/estimate.py: the same 1M-item manifest)

TARGET_RESUME_S = 10.0


def requests_seen(emu) -> int:
    s = emu.stats()
    return s["submits"] + s["polls"]


def run_until_first_request(cmd: list[str], env: dict, emu, *, work_s: float,
                            timeout: float = 1800.0) -> tuple[float, float, int]:
    """Start ``cmd``; seconds to the emulator's next request; run ``work_s`` more; SIGKILL.

    Returns (seconds to first request, peak RSS MB, requests seen during the run)."""
    before = requests_seen(emu)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    first = None
    while time.perf_counter() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"run exited {proc.returncode} early: {proc.stderr.read().decode()[-2000:]}")
        if requests_seen(emu) > before:
            first = time.perf_counter() - t0
            break
        time.sleep(0.05)
    if first is None:
        proc.kill()
        raise RuntimeError(f"no request within {timeout} s")
    time.sleep(work_s)
    proc.send_signal(signal.SIGKILL)
    _, rss = wait_child(proc)
    if proc.stderr:
        proc.stderr.close()
    return first, rss, requests_seen(emu) - before


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--run-seconds", type=float, default=3.0)
    a = ap.parse_args(argv)
    print(f"machine: {machine()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="pixbatch-scale-") as tmp:
        root = Path(tmp)
        manifest = write_manifest(root, a.n)
        state = root / "bench.pixbatch.duckdb"

        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "pixbatch", "estimate", str(manifest), "--no-probe", "--json"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out = proc.stdout.read() if proc.stdout else b""
        code, rss = wait_child(proc)
        t_est = time.perf_counter() - t0
        if code != 0:
            return verdict(False, f"estimate exited {code}: {proc.stderr.read().decode()[-2000:]}")  # type: ignore[union-attr]
        total = json.loads(out)["total"]
        print(f"estimate: {a.n:,} items in {t_est:.1f} s ({a.n / t_est:,.0f} items/s), peak RSS {rss:.0f} MB, "
              f"total ${total['low']['usd']} - ${total['high']['usd']}", flush=True)

        with bench_emulator() as emu:
            env = pixbatch_env(emu)
            cmd = pixbatch_cmd(manifest, emu, "--concurrency", "64", "--first-poll", "0.05")
            t_start, rss_start, reqs = run_until_first_request(cmd, env, emu, work_s=a.run_seconds)
            size_mb = sum(p.stat().st_size for p in root.glob(state.name + '*')) / 2**20  # with the WAL
            print(f"run start-up (insert {a.n:,} items into a fresh state file, then the first request): "
                  f"{t_start:.1f} s; peak RSS {rss_start:.0f} MB; killed after {reqs:,} requests; "
                  f"state file + WAL {size_mb:.0f} MB", flush=True)
            ((n_items, open_items),) = query(state, "SELECT count(*), count(*) FILTER (WHERE state IN "
                                                    "('SUBMITTING', 'SUBMITTED')) FROM items")
            t_resume, rss_resume, reqs = run_until_first_request(cmd, env, emu, work_s=a.run_seconds)
            print(f"resume after SIGKILL ({n_items:,} items in the state file, {open_items} in flight): first "
                  f"request after {t_resume:.1f} s; peak RSS {rss_resume:.0f} MB", flush=True)
            t0 = time.perf_counter()
            proc = subprocess.Popen(cmd + ["--budget", "0"], env=env, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.PIPE)
            code, rss_dec = wait_child(proc)
            t_dec = time.perf_counter() - t0
            err = proc.stderr.read().decode() if proc.stderr else ""
            print(f"resume to a decision (--budget 0: set-up, then refused with exit {code}): {t_dec:.1f} s; "
                  f"peak RSS {rss_dec:.0f} MB", flush=True)
            if code != 3:
                print(err[-2000:])
    return verdict(t_resume < TARGET_RESUME_S, f"resume {t_resume:.1f} s to the first request with {a.n:,} items "
                   f"(target < {TARGET_RESUME_S:g} s); start-up {t_start:.1f} s; estimate {t_est:.1f} s, "
                   f"{rss:.0f} MB")


if __name__ == "__main__":
    sys.exit(main())
