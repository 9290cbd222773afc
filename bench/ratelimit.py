"""Rate limit: how close `pixbatch run` gets to a gateway's submit limit, and how many 429s it draws.

    /work/venv/bin/python bench/ratelimit.py [--rate 50] [--seconds 30] [--concurrency 64]

The emulator (its own process) allows ``rate`` submits per second per key (a token
bucket of ``rate`` tokens, refilled at ``rate``/s) and answers the rest 429 with
Retry-After (whole seconds, at least 1, as the gateway does). Jobs finish at once, so the
submit limit is the only brake. ``pixbatch run`` gets ``rate x seconds`` items and no
``--max-rps``: it has to find the limit by itself.

- accepted submits/s: the 202s after the initial burst (the bucket starts full), from
  the state file's ``attempts.accepted_at``: (accepted - burst) / (last - burst-th), as a
  fraction of ``rate``;
- 429 share: 429 answers / submit requests (and / all gateway requests), from the
  emulator's counters.

Target: >= 95 % of the rate with <= 2 % of the requests answered 429.
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

TARGET_FRACTION = 0.95
TARGET_429 = 0.02


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=float, default=50.0)
    ap.add_argument("--seconds", type=float, default=30.0, help="items = rate x seconds")
    ap.add_argument("--concurrency", type=int, default=64)
    a = ap.parse_args(argv)
    print(f"machine: {machine()}")
    n = int(a.rate * a.seconds)
    burst = max(1, int(a.rate))
    with tempfile.TemporaryDirectory(prefix="pixbatch-bench-") as tmp:
        manifest = write_edit_manifest(Path(tmp), n, prompt="make it blue")
        with bench_emulator(rate_limit=a.rate) as emu:
            t0 = time.perf_counter()
            proc = subprocess.Popen(pixbatch_cmd(manifest, emu, "--concurrency", str(a.concurrency),
                                                 "--first-poll", "0.01"),
                                    env=pixbatch_env(emu), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            code, _ = wait_child(proc)
            wall = time.perf_counter() - t0
            err = proc.stderr.read().decode() if proc.stderr else ""
            stats = emu.stats()
        if code != 0:
            print(err[-2000:])
            return verdict(False, f"pixbatch run exited {code}")
        times = [r[0] for r in query(Path(tmp) / "bench.pixbatch.duckdb",
                                     "SELECT epoch(accepted_at) FROM attempts WHERE accepted_at IS NOT NULL "
                                     "ORDER BY 1")]
    accepted = len(times)
    steady = (accepted - burst) / (times[-1] - times[burst - 1]) if accepted > burst + 1 else float("nan")
    overall = accepted / (times[-1] - times[0]) if accepted > 1 else float("nan")
    fraction = steady / a.rate
    submits, limited = stats["submits"], stats["rate_limited"]
    share = limited / max(1, submits)
    share_all = limited / max(1, submits + stats["polls"])
    print(f"limit {a.rate:g} submits/s (burst {burst}), {n:,} items, concurrency {a.concurrency}, "
          f"wall {wall:.1f} s")
    print(f"accepted submits/s after the burst: {steady:.1f} = {fraction:.1%} of the limit "
          f"(all {accepted:,} accepts over {times[-1] - times[0]:.1f} s: {overall:.1f}/s)")
    print(f"429 share of submit requests: {share:.2%} ({limited:,} of {submits:,})")
    print(f"429 share of all gateway requests: {share_all:.2%} ({limited:,} of {submits + stats['polls']:,})")
    ok = fraction >= TARGET_FRACTION and share <= TARGET_429 and accepted == n
    return verdict(ok, f"{fraction:.1%} of the limit (target >= {TARGET_FRACTION:.0%}), {share:.2%} of submits "
                   f"answered 429 (target <= {TARGET_429:.0%}), {accepted:,}/{n:,} accepted")


if __name__ == "__main__":
    sys.exit(main())
