"""Scale: `estimate`, a fresh `run` (streaming ingest) and a resume, at 100,000 and 1,000,000 items side by side.

    /work/venv/bin/python bench/scale.py [--n 100000 1000000] [--run-seconds 3] [--estimate-only] [--no-slow] [--flat]

The manifest is bench/estimate.py's (a CSV of N/10 inputs with declared sizes, an edit step
with a 2x2 matrix, an upscale chained on it, a factor upscale with two factors: 10 items per
input); with ``--flat``, a CSV of N inputs and one factor upscale (one item per input: a
folder of N images and one operation). Every measurement is a real `python -m pixbatch`
subprocess; peak RSS is that child's (``os.wait4``), over its whole life.

For each N:

1. ``estimate --no-probe --json``: wall time (items/s) and peak RSS.
2. fresh ``run`` (concurrency 64, an emulator in its own process, zero job time): seconds
   from process start to the first request the emulator sees; then the run goes on until its
   status file says the expansion is all in (``ingest.done``): the ingest's rate (unique
   items / the stream's seconds, first batch included), where those seconds went (the
   status file's ``walk_s``, ``wait_s``: waiting for the writer, ``write_s``) and the run's
   peak RSS over all of it;
   then SIGKILL (items SUBMITTING or SUBMITTED, as after a crash). With zero job time the
   runner sends as fast as the CPU lets it (~400-1,000 requests/s), on the cores the ingest
   needs, beside an emulator that needs them too.
2b. the same fresh run against a gateway whose jobs take 1-3 s, as the real one's do (the
   runner then sends ~30 items/s and the ingest has the CPU): its first request, ingest rate
   and peak RSS.
3. resume: the same command again, process start to its first request (recovery of the
   SUBMITTING items, polling the SUBMITTED ones, feeding; no walk: the fingerprint matches);
   ``--run-seconds`` more, then SIGKILL.

Targets at the largest N: first request <= 3 s, peak RSS <= 300 MB, ingest >= 100,000
items/s (both fresh runs), estimate >= 100,000 items/s and < 200 MB, resume < 10 s. The
machine has 2 cores: run it alone.
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
from _common import bench_emulator, machine, pixbatch_cmd, pixbatch_env, verdict, wait_child  # noqa: E402

from pixbatch.emulator.config import Dist  # noqa: E402
from estimate import write_inputs, write_manifest  # noqa: E402  (bench/estimate.py: the same manifest)

TARGET_FIRST_S = 3.0
TARGET_RSS_MB = 300
TARGET_INGEST = 100_000
TARGET_EST_RATE = 100_000
TARGET_EST_MB = 200
TARGET_RESUME_S = 10.0


def requests_seen(emu) -> int:
    s = emu.stats()
    return s["submits"] + s["polls"]


def estimate(manifest: Path, n: int) -> dict:
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "pixbatch", "estimate", str(manifest), "--no-probe", "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out = proc.stdout.read() if proc.stdout else b""
    err = proc.stderr.read() if proc.stderr else b""
    code, rss = wait_child(proc)
    t = time.perf_counter() - t0
    if code != 0:
        raise RuntimeError(f"estimate exited {code}: {err.decode()[-2000:]}")
    total = json.loads(out)["total"]
    return {"seconds": t, "rate": n / t, "rss": rss, "total": f"${total['low']['usd']} - ${total['high']['usd']}"}


def write_flat_manifest(root: Path, n: int) -> Path:
    """``--flat``: N inputs with declared sizes, one factor upscale each (the per-input costs of
    reading and checking the CSV count ten times as much per item as in the default manifest)."""
    write_inputs(root, n)
    path = root / "bench.yaml"
    path.write_text(json.dumps({"version": 1, "inputs": [{"from": "inputs.csv"}],
                                "steps": [{"id": "big", "op": "upscale", "upscale_mode": "factor", "factor": 2}]}))
    return path


def where(ing: dict) -> str:
    """Where the stream's seconds went (its status): walking, waiting for the writer, writing."""
    return (f"walk {ing.get('walk_s', float('nan')):.1f} s, waited for the writer {ing.get('wait_s', float('nan')):.1f} s, "
            f"writes {ing.get('write_s', float('nan')):.1f} s")


def run_once(cmd: list[str], env: dict, emu, status: Path, *, until_ingested: bool, work_s: float,
             timeout: float = 1800.0) -> dict:
    """Start ``cmd``: seconds to the emulator's next request; then wait for the ingest to end
    (``until_ingested``) or ``work_s``; SIGKILL. Peak RSS over the child's life."""
    status.unlink(missing_ok=True)
    before = requests_seen(emu)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    first = ingest = None
    deadline = t0 + timeout
    while time.perf_counter() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"run exited {proc.returncode} early: {proc.stderr.read().decode()[-2000:]}")  # type: ignore[union-attr]
        now = time.perf_counter()
        if first is None and requests_seen(emu) > before:
            first = now - t0
        if first is not None:
            if not until_ingested:
                if now - t0 >= first + work_s:
                    break
            else:
                try:
                    ingest = json.loads(status.read_text()).get("ingest")
                except (OSError, ValueError):
                    ingest = None
                if ingest is None and now - t0 > first + 5:
                    break  # nothing to read in (a resume)
                if ingest and ingest.get("done"):
                    break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    _, rss = wait_child(proc)
    if proc.stderr:
        proc.stderr.close()
    return {"first": first, "rss": rss, "ingest": ingest, "requests": requests_seen(emu) - before,
            "seconds": time.perf_counter() - t0}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--run-seconds", type=float, default=3.0)
    ap.add_argument("--estimate-only", action="store_true")
    ap.add_argument("--no-slow", action="store_true", help="skip the fresh run against 1-3 s jobs")
    ap.add_argument("--flat", action="store_true",
                    help="a CSV of N inputs and one step (a factor upscale): one item per input, as a folder of "
                         "N images with one operation, instead of N/10 inputs with 10 items each")
    a = ap.parse_args(argv)
    print(f"machine: {machine()}", flush=True)
    res: dict[int, dict] = {}
    with tempfile.TemporaryDirectory(prefix="pixbatch-scale-") as tmp:
        for n in a.n:
            d = Path(tmp) / str(n)
            d.mkdir()
            manifest = write_flat_manifest(d, n) if a.flat else write_manifest(d, n)
            r = res[n] = {"estimate": estimate(manifest, n)}
            e = r["estimate"]
            print(f"N={n:>10,}  estimate: {e['seconds']:6.1f} s  {e['rate']:>9,.0f} items/s  peak RSS {e['rss']:4.0f} MB"
                  f"  total {e['total']}", flush=True)
            if a.estimate_only:
                continue
            state = d / "bench.pixbatch.duckdb"
            status = d / "bench.pixbatch.duckdb.status.json"
            with bench_emulator() as emu:
                env = pixbatch_env(emu)
                cmd = pixbatch_cmd(manifest, emu, "--concurrency", "64", "--first-poll", "0.05")
                f = r["fresh"] = run_once(cmd, env, emu, status, until_ingested=True, work_s=a.run_seconds)
                ing = f["ingest"] or {}
                items, secs = ing.get("items", 0), ing.get("seconds") or float("nan")
                r["ingest_rate"] = items / secs if ing.get("done") else float("nan")
                size_mb = sum(p.stat().st_size for p in d.glob(state.name + "*")) / 2**20
                how = (f"ingest {items:,} items in {secs:.1f} s = {r['ingest_rate']:,.0f} items/s (done: {ing.get('done')};"
                       f" {where(ing)})" if ing else "the whole expansion fitted in the first batch (no stream)")
                print(f"N={n:>10,}  fresh run: first request {f['first']:5.2f} s; {how}; peak RSS "
                      f"{f['rss']:.0f} MB; {f['requests']:,} requests meanwhile; state file + WAL {size_mb:.0f} MB",
                      flush=True)
                s = r["resume"] = run_once(cmd, env, emu, status, until_ingested=False, work_s=a.run_seconds)
                print(f"N={n:>10,}  resume after SIGKILL: first request {s['first']:5.2f} s; peak RSS {s['rss']:.0f} MB",
                      flush=True)
            if a.no_slow:
                continue
            for f in d.glob(state.name + "*"):
                f.unlink() if f.is_file() else None
            with bench_emulator(queue_time=Dist(0.2, 0.5), processing_time=Dist(1.0, 3.0)) as emu:
                env = pixbatch_env(emu)
                cmd = pixbatch_cmd(manifest, emu, "--concurrency", "64", "--first-poll", "0.5")
                f = r["slow"] = run_once(cmd, env, emu, status, until_ingested=True, work_s=a.run_seconds)
                ing = f["ingest"] or {}
                r["slow_rate"] = ing.get("items", 0) / ing["seconds"] if ing.get("done") else float("nan")
                print(f"N={n:>10,}  fresh run, 1-3 s jobs: first request {f['first']:5.2f} s; ingest "
                      f"{ing.get('items', 0):,} items in {ing.get('seconds', float('nan')):.1f} s = {r['slow_rate']:,.0f} "
                      f"items/s ({where(ing)}); peak RSS {f['rss']:.0f} MB; {f['requests']:,} requests meanwhile", flush=True)
    print("side by side (N: estimate s / MB | fresh: first request s, ingest items/s, peak MB | resume s / MB"
          " | fresh against 1-3 s jobs):")
    for n, r in res.items():
        e = r["estimate"]
        line = f"  {n:>10,}: {e['seconds']:.1f} s / {e['rss']:.0f} MB"
        if "fresh" in r:
            f, s = r["fresh"], r["resume"]
            line += (f" | {f['first']:.2f} s, {r['ingest_rate']:,.0f}/s, {f['rss']:.0f} MB"
                     f" | {s['first']:.2f} s / {s['rss']:.0f} MB")
        if "slow" in r:
            line += f" | 1-3 s jobs: {r['slow']['first']:.2f} s, {r['slow_rate']:,.0f}/s, {r['slow']['rss']:.0f} MB"
        print(line)
    big = res[max(res)]
    checks = [(big["estimate"]["rate"] >= TARGET_EST_RATE, f"estimate {big['estimate']['rate']:,.0f} items/s "
               f"(>= {TARGET_EST_RATE:,})"),
              (big["estimate"]["rss"] < TARGET_EST_MB, f"estimate {big['estimate']['rss']:.0f} MB (< {TARGET_EST_MB})")]
    if "fresh" in big:
        f, s = big["fresh"], big["resume"]
        checks += [(f["first"] <= TARGET_FIRST_S, f"first request {f['first']:.2f} s (<= {TARGET_FIRST_S:g})"),
                   (f["rss"] <= TARGET_RSS_MB, f"peak RSS {f['rss']:.0f} MB (<= {TARGET_RSS_MB})"),
                   (big["ingest_rate"] >= TARGET_INGEST, f"ingest {big['ingest_rate']:,.0f} items/s (>= {TARGET_INGEST:,})"),
                   (s["first"] < TARGET_RESUME_S, f"resume {s['first']:.2f} s (< {TARGET_RESUME_S:g})")]
    if "slow" in big:
        f = big["slow"]
        checks += [(f["first"] <= TARGET_FIRST_S, f"1-3 s jobs: first request {f['first']:.2f} s (<= {TARGET_FIRST_S:g})"),
                   (f["rss"] <= TARGET_RSS_MB, f"1-3 s jobs: peak RSS {f['rss']:.0f} MB (<= {TARGET_RSS_MB})"),
                   (big["slow_rate"] >= TARGET_INGEST, f"1-3 s jobs: ingest {big['slow_rate']:,.0f} items/s "
                    f"(>= {TARGET_INGEST:,})")]
    for ok, text in checks:
        print(f"  {'PASS' if ok else 'FAIL'} {text}")
    return verdict(all(ok for ok, _ in checks), f"at N={max(res):,}: " + "; ".join(
        f"{'ok' if ok else 'MISSED'} {text}" for ok, text in checks))


if __name__ == "__main__":
    sys.exit(main())
