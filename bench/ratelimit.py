"""Rate limits: how close `pixbatch run` gets to three kinds of gateway limit, side by side.

    /work/venv/bin/python bench/ratelimit.py [--rate 50] [--seconds 30] [--concurrency 64]
        [--window 100/10] [--windows 9] [--throttle 0.15] [--rounds 1]

Each scenario runs ``pixbatch run`` (a subprocess, no ``--max-rps``: it has to find the
limit by itself) against its own emulator (its own process), one after the other:

1. **token bucket** (``--rate-limit R``, burst R; 429 with Retry-After in whole seconds).
   ``R x seconds`` items, jobs finish at once. Accepted submits/s after the initial burst
   (the bucket starts full), from the state file's ``attempts.accepted_at``:
   (accepted - burst) / (last - burst-th), as a fraction of R; 429s / submit requests
   (emulator counters). Targets: >= 95 % of R, <= 2 % 429s.
2. **fixed window** (``--rate-window N/T``, API Management's: 429 with Retry-After to the
   window's reset). Enough items for ``windows`` full windows after the first, jobs finish at
   once. The window boundaries come from the emulator's request log (each refusal's
   Retry-After bounds the reset to one second; their intersection pins it); accepted
   submits/s counted over the full windows after the first, as a fraction of N/T; 429s /
   submits overall (the first window included: the client knows nothing yet and has up to
   ``concurrency`` submits in flight when it closes) and after the first window. Targets:
   >= 95 % of N/T, <= 5 % 429s.
3. **throttling** (``--throttle-rate F``: a share F of submits refused whatever the rate,
   Retry-After none, an HTTP date or 1 s; no limit). Jobs take the emulator's default times
   (0.2-1 s queued, 0.5-2 s processing): items/s with throttling over items/s of the same
   run without, the two runs back to back, ``rounds`` times (median). Target >= 0.75.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (bench_emulator, machine, pixbatch_cmd, pixbatch_env, query, verdict, wait_child,  # noqa: E402
                     write_edit_manifest)

from pixbatch.emulator import Dist  # noqa: E402

BUCKET_RATE, BUCKET_429 = 0.95, 0.02
WINDOW_RATE, WINDOW_429 = 0.95, 0.05
THROTTLE_RATIO = 0.75


class RunFailed(Exception):
    pass


@dataclass(frozen=True)
class Row:
    scenario: str
    figures: str
    target: str
    ok: bool


def run_pixbatch(tmp: Path, n: int, emu_settings: dict[str, Any], concurrency: int, *extra: str,
                 name: str = "bench") -> tuple[float, dict[str, Any], Any, Path]:
    """One ``pixbatch run`` of ``n`` edits against a fresh emulator: (wall s, stats, request log, state file)."""
    manifest = write_edit_manifest(tmp, n, name=name, prompt="make it blue")
    with bench_emulator(**emu_settings) as emu:
        t0 = time.perf_counter()
        proc = subprocess.Popen(pixbatch_cmd(manifest, emu, "--concurrency", str(concurrency), *extra),
                                env=pixbatch_env(emu), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        code, _ = wait_child(proc)
        wall = time.perf_counter() - t0
        err = proc.stderr.read().decode() if proc.stderr else ""
        stats, log = emu.stats(), emu.requests()
    if code != 0:
        raise RunFailed(f"pixbatch run exited {code}: {err.strip()[-1500:]}")
    return wall, stats, log, tmp / f"{name}.pixbatch.duckdb"


def bucket(tmp: Path, rate: float, seconds: float, concurrency: int) -> Row:
    n, burst = int(rate * seconds), max(1, int(rate))
    wall, stats, _, state = run_pixbatch(tmp, n, dict(rate_limit=rate), concurrency, "--first-poll", "0.01")
    times = [r[0] for r in query(state, "SELECT epoch(accepted_at) FROM attempts WHERE accepted_at IS NOT NULL "
                                        "ORDER BY 1")]
    accepted = len(times)
    steady = (accepted - burst) / (times[-1] - times[burst - 1]) if accepted > burst + 1 else float("nan")
    fraction = steady / rate
    submits, limited = stats["submits"], stats["rate_limited"]
    share = limited / max(1, submits)
    print(f"bucket: limit {rate:g}/s (burst {burst}), {n:,} items, concurrency {concurrency}, wall {wall:.1f} s")
    print(f"bucket: accepted submits/s after the burst: {steady:.1f} = {fraction:.1%} of the limit")
    print(f"bucket: 429 share of submit requests: {share:.2%} ({limited:,} of {submits:,})")
    return Row("token bucket", f"{fraction:.1%} of R, {share:.2%} 429", f">= {BUCKET_RATE:.0%}, <= {BUCKET_429:.0%}",
               fraction >= BUCKET_RATE and share <= BUCKET_429 and accepted == n)


def _wall(at: str) -> float:
    return dt.datetime.fromisoformat(at).timestamp()


def window_phase(refusals: list[tuple[float, float]], seconds: float) -> float:
    """The windows' reset phase (mod ``seconds``) from (received, Retry-After) of window refusals.

    A refusal at ``t`` saying ``ra`` (whole seconds, rounded up) puts a reset in (t + ra - 1, t + ra].
    """
    lo, hi = -math.inf, math.inf
    base = refusals[0][0] + refusals[0][1]
    for t, ra in refusals:
        reset = t + ra
        reset -= round((reset - base) / seconds) * seconds  # the same reset, moved next to the first one
        lo, hi = max(lo, reset - 1), min(hi, reset)
    return (hi if hi >= lo else base) % seconds


def window(tmp: Path, limit: int, seconds: float, windows: int, concurrency: int) -> Row:
    n = limit * (windows + 1) + limit // 2  # the first window (partial), `windows` full ones, a half one
    wall, stats, log, _ = run_pixbatch(tmp, n, dict(rate_window=(limit, seconds)), concurrency, "--first-poll", "0.01")
    subs = sorted(log.submits, key=lambda e: e.seq)
    refused = [(_wall(e.at), float(e.retry_after)) for e in subs if e.reason == "rate_window" and e.retry_after]
    accepted = [_wall(e.at) for e in subs if e.accepted]
    if not refused or len(accepted) < 2:
        return Row("fixed window", "the window never closed", "-", False)
    phase = window_phase(refused, seconds)
    first = math.floor((_wall(subs[0].at) - phase) / seconds) * seconds + phase  # the first window's start
    start, end = first + seconds, math.floor((accepted[-1] - phase) / seconds) * seconds + phase
    full = round((end - start) / seconds)
    rate = sum(1 for t in accepted if start <= t < end) / (end - start) if full > 0 else float("nan")
    fraction = rate / (limit / seconds)
    limited = len(refused)
    share = limited / len(subs)
    later = [e for e in subs if _wall(e.at) >= start]
    share_later = sum(1 for e in later if e.reason == "rate_window") / max(1, len(later))
    print(f"window: {limit} per {seconds:g} s, {n:,} items, concurrency {concurrency}, wall {wall:.1f} s")
    print(f"window: accepted submits/s over the {full} full windows after the first: {rate:.2f} = {fraction:.1%} "
          f"of {limit / seconds:g}/s")
    print(f"window: 429 share of submit requests: {share:.2%} ({limited:,} of {len(subs):,}); after the first "
          f"window {share_later:.2%} ({sum(1 for e in later if e.reason == 'rate_window'):,} of {len(later):,})")
    return Row("fixed window", f"{fraction:.1%} of N/T, {share:.2%} 429 ({share_later:.2%} after the 1st)",
               f">= {WINDOW_RATE:.0%}, <= {WINDOW_429:.0%}",
               full > 0 and fraction >= WINDOW_RATE and share <= WINDOW_429)


def throttle(tmp: Path, f: float, n: int, concurrency: int, rounds: int) -> Row:
    jobs = dict(queue_time=Dist(0.2, 1.0), processing_time=Dist(0.5, 2.0))
    ratios = []
    for r in range(rounds):
        free, _, _, _ = run_pixbatch(tmp / f"free{r}", n, jobs, concurrency)
        wall, stats, _, _ = run_pixbatch(tmp / f"throttled{r}", n, dict(jobs, throttle_rate=f), concurrency)
        ratios.append(free / wall)
        share = stats["throttled"] / max(1, stats["submits"])
        print(f"throttle: round {r + 1}: {n:,} items, concurrency {concurrency}: without {n / free:.1f} items/s, "
              f"with {f:g} throttled {n / wall:.1f} items/s ({share:.1%} of {stats['submits']:,} submits "
              f"answered 429): ratio {free / wall:.2f}")
    ratio = statistics.median(ratios)
    spread = f" (rounds {', '.join(f'{x:.2f}' for x in ratios)})" if rounds > 1 else ""
    return Row(f"throttle {f:g}", f"{ratio:.2f} x unthrottled items/s{spread}", f">= {THROTTLE_RATIO}",
               ratio >= THROTTLE_RATIO)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=float, default=50.0, help="the token bucket's rate")
    ap.add_argument("--seconds", type=float, default=30.0, help="bucket: items = rate x seconds; sizes the rest")
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--window", default=None, help="N/SECONDS (default 100/10; 20/2 when --seconds < 10)")
    ap.add_argument("--windows", type=int, default=None, help="full windows after the first (default seconds/3)")
    ap.add_argument("--throttle", type=float, default=0.15, help="the share of submits refused whatever the rate")
    ap.add_argument("--throttle-items", type=int, default=None, help="default 20 x seconds")
    ap.add_argument("--rounds", type=int, default=1, help="throttle: rounds of (without, with)")
    a = ap.parse_args(argv)
    spec = a.window or ("100/10" if a.seconds >= 10 else "20/2")
    limit, per = int(spec.split("/")[0]), float(spec.split("/")[1])
    windows = a.windows if a.windows is not None else max(1, round(a.seconds / 3))
    items = a.throttle_items or max(32, int(20 * a.seconds))
    print(f"machine: {machine()}")
    scenarios = [
        ("token bucket", lambda tmp: bucket(tmp, a.rate, a.seconds, a.concurrency)),
        ("fixed window", lambda tmp: window(tmp, limit, per, windows, a.concurrency)),
        (f"throttle {a.throttle:g}", lambda tmp: throttle(tmp, a.throttle, items, a.concurrency, a.rounds)),
    ]
    rows = []
    with tempfile.TemporaryDirectory(prefix="pixbatch-bench-") as tmp:
        for i, (name, scenario) in enumerate(scenarios):
            try:
                rows.append(scenario(Path(tmp) / str(i)))
            except RunFailed as exc:
                print(f"{name}: {exc}")
                rows.append(Row(name, "the run failed", "-", False))
    width = max(len(r.scenario) for r in rows)
    for r in rows:
        print(f"{r.scenario:<{width}}  {'PASS' if r.ok else 'FAIL'}  {r.figures}  (target {r.target})")
    return verdict(all(r.ok for r in rows), "; ".join(f"{r.scenario} {'PASS' if r.ok else 'FAIL'}" for r in rows))


if __name__ == "__main__":
    sys.exit(main())
