"""Latency hiding: wall time of a slow-gateway run against the ideal N/C x (latency + processing).

    /work/venv/bin/python bench/latency.py [--n 5000] [--concurrency 64] [--latency 0.2] [--processing 2.0]

The emulator (its own process) answers each submit after ``latency`` seconds and finishes
each job ``processing`` seconds after accepting it (no queue time). With C items in flight
the best any client can do is N/C x (latency + processing). ``pixbatch run`` (a
subprocess, default options but --no-download) is timed from process start to exit, and
also from its first intent to its last terminal status (read from the state file), which
leaves out start-up. Polls per completed item come from the emulator's counters.

Targets: end-to-end wall time <= 1.10 x ideal; <= 3 status polls per completed item.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (bench_emulator, machine, pixbatch_cmd, pixbatch_env, query, verdict, wait_child,  # noqa: E402
                     write_edit_manifest)

from pixbatch.emulator import Dist  # noqa: E402

TARGET_RATIO = 1.10
TARGET_POLLS = 3.0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=5_000)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--latency", type=float, default=0.2)
    ap.add_argument("--processing", type=float, default=2.0)
    a = ap.parse_args(argv)
    print(f"machine: {machine()}")
    ideal = a.n / a.concurrency * (a.latency + a.processing)
    with tempfile.TemporaryDirectory(prefix="pixbatch-bench-") as tmp:
        manifest = write_edit_manifest(Path(tmp), a.n, prompt="make it blue")
        with bench_emulator(submit_latency=Dist(a.latency), processing_time=Dist(a.processing)) as emu:
            t0 = time.perf_counter()
            proc = subprocess.Popen(pixbatch_cmd(manifest, emu, "--concurrency", str(a.concurrency)),
                                    env=pixbatch_env(emu), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            code, rss = wait_child(proc)
            wall = time.perf_counter() - t0
            err = proc.stderr.read().decode() if proc.stderr else ""
            stats = emu.stats()
        if code != 0:
            print(err[-2000:])
            return verdict(False, f"pixbatch run exited {code}")
        state = Path(tmp) / "bench.pixbatch.duckdb"
        ((completed, span),) = query(state, "SELECT count(*) FILTER (WHERE state = 'COMPLETED'), "
                                            "epoch(max(finished_at)) - (SELECT epoch(min(intent_at)) FROM attempts) "
                                            "FROM items")
    polls_per_item = stats["polls"] / max(1, completed)
    ratio = wall / ideal
    print(f"items {a.n:,}, concurrency {a.concurrency}, submit latency {a.latency} s, processing {a.processing} s")
    print(f"ideal N/C x (latency + processing): {ideal:.1f} s")
    print(f"pixbatch run wall time (process start to exit): {wall:.1f} s = {ratio:.3f} x ideal")
    print(f"first intent to last terminal status (no start-up): {span:.1f} s = {span / ideal:.3f} x ideal")
    print(f"status polls per completed item: {polls_per_item:.2f} ({stats['polls']:,} polls, {completed:,} completed)")
    print(f"peak RSS of the run: {rss:.0f} MB")
    ok = ratio <= TARGET_RATIO and polls_per_item <= TARGET_POLLS and completed == a.n
    return verdict(ok, f"wall {ratio:.3f} x ideal (target <= {TARGET_RATIO}), {polls_per_item:.2f} polls/item "
                   f"(target <= {TARGET_POLLS:g}), {completed:,}/{a.n:,} completed")


if __name__ == "__main__":
    sys.exit(main())
