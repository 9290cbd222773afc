"""Throughput: items/s through `pixbatch run`, against a minimal raw client doing the same work.

    /work/venv/bin/python bench/throughput.py [--n 10000] [--concurrency 64] [--rounds 3]

The emulator runs in its own process with zero queue and processing time and lazy
rendering, so the figure is the client's own overhead per item. Both contenders run the
same N request bodies (pixbatch's expansion of the same manifest) with the same
concurrency against the same emulator (a fresh one each, so its tables are equally empty):

- pixbatch: ``python -m pixbatch run --no-download --quiet --first-poll 0.01`` in a
  subprocess, timed from process start to exit (start-up, state file ingest, intent and
  request-id commits, events, status file: everything a real run does);
- raw: ``C`` aiohttp tasks, each looping POST submit -> GET status until terminal, nothing
  recorded anywhere.

Prints items/s for both and the ratio pixbatch/raw, for ``--rounds`` rounds (default 3: the
machine is shared and noisy); the verdict is on the median ratio. Target: ratio >= 0.5.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (bench_emulator, machine, pixbatch_cmd, pixbatch_env, query, verdict,  # noqa: E402
                     wait_child, write_edit_manifest)

from pixbatch.contract import AUTH_HEADER, ENDPOINTS, TERMINAL_STATUSES  # noqa: E402

TARGET_RATIO = 0.5


def bodies(manifest: Path) -> list[tuple[str, dict]]:
    from pixbatch.expand import expand
    from pixbatch.manifest import load_manifest

    return [(it.op, dict(it.body)) for it in expand(load_manifest(manifest))]


async def raw_client(url: str, key: str, work: list[tuple[str, dict]], concurrency: int) -> tuple[float, int]:
    """Submit + poll every body with ``concurrency`` workers; (seconds, polls)."""
    headers = {AUTH_HEADER: key, "Content-Type": "application/json"}
    todo = iter(work)
    polls = 0

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal polls
        for op, body in todo:
            while True:
                async with session.post(url + ENDPOINTS[op], json=body) as r:
                    if r.status == 202:
                        polling_url = (await r.json())["polling_url"]
                        break
                    await r.read()
            while True:
                async with session.get(polling_url) as r:
                    polls += 1
                    if r.status == 200 and (await r.json())["status"] in TERMINAL_STATUSES:
                        break

    conn = aiohttp.TCPConnector(limit=concurrency * 2)
    async with aiohttp.ClientSession(headers=headers, connector=conn) as session:
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
        return time.perf_counter() - t0, polls


def pixbatch_round(root: Path, manifest: Path, n: int, concurrency: int) -> float | str:
    """One ``pixbatch run`` on a fresh state file and emulator: items/s, or what went wrong."""
    state = root / "bench.pixbatch.duckdb"
    for p in root.glob("bench.pixbatch.duckdb*"):
        p.unlink()
    with bench_emulator() as emu:
        t0 = time.perf_counter()
        proc = subprocess.Popen(pixbatch_cmd(manifest, emu, "--concurrency", str(concurrency), "--first-poll", "0.01"),
                                env=pixbatch_env(emu), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        code, rss = wait_child(proc)
        t_pix = time.perf_counter() - t0
        err = proc.stderr.read().decode() if proc.stderr else ""
        stats = emu.stats()
    if code != 0:
        print(err[-2000:])
        return f"pixbatch run exited {code}"
    done = stats["responses"].get("202", 0)
    print(f"pixbatch run: {n:,} items in {t_pix:.2f} s = {n / t_pix:,.0f} items/s "
          f"(submits {stats['submits']:,}, polls {stats['polls']:,}, accepted {done:,}, peak RSS {rss:.0f} MB)")
    ((span,),) = query(state, "SELECT epoch(max(finished_at)) - (SELECT epoch(min(intent_at)) FROM attempts) FROM items")
    print(f"pixbatch without start-up (first intent to last terminal status): {span:.2f} s = "
          f"{n / span:,.0f} items/s; start-up and shutdown {t_pix - span:.2f} s")
    return n / t_pix


def raw_round(work: list[tuple[str, dict]], concurrency: int) -> float:
    with bench_emulator() as emu:
        t_raw, polls = asyncio.run(raw_client(emu.url, emu.api_key, work, concurrency))
        raw_stats = emu.stats()
    n = len(work)
    print(f"raw aiohttp client: {n:,} items in {t_raw:.2f} s = {n / t_raw:,.0f} items/s "
          f"(submits {raw_stats['submits']:,}, polls {polls:,})")
    return n / t_raw


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3, help="pixbatch-then-raw rounds; the verdict is on the median ratio")
    a = ap.parse_args(argv)
    print(f"machine: {machine()}")
    ratios = []
    with tempfile.TemporaryDirectory(prefix="pixbatch-bench-") as tmp:
        manifest = write_edit_manifest(Path(tmp), a.n, prompt="make it blue")
        work = bodies(manifest)
        assert len(work) == a.n
        for r in range(1, a.rounds + 1):
            pix_rate = pixbatch_round(Path(tmp), manifest, a.n, a.concurrency)
            if isinstance(pix_rate, str):
                return verdict(False, pix_rate)
            raw_rate = raw_round(work, a.concurrency)
            ratios.append((pix_rate / raw_rate, pix_rate, raw_rate))
            print(f"round {r}: ratio pixbatch/raw {pix_rate / raw_rate:.2f}")
    ratio, pix_rate, raw_rate = sorted(ratios)[len(ratios) // 2]
    print(f"ratio pixbatch/raw: median {ratio:.2f} of {len(ratios)} rounds "
          f"({', '.join(f'{x[0]:.2f}' for x in ratios)})")
    return verdict(ratio >= TARGET_RATIO, f"median ratio {ratio:.2f} (target >= {TARGET_RATIO}); pixbatch {pix_rate:,.0f} "
                   f"items/s, raw {raw_rate:,.0f} items/s in that round, N={a.n:,}, concurrency {a.concurrency}")


if __name__ == "__main__":
    sys.exit(main())
