"""Benchmark: how fast, and in how much memory, `estimate` prices a large manifest.

    /work/venv/bin/python bench/estimate.py [N ...]      (default: 100000 1000000)

For each N it writes a manifest in a temporary directory that expands to N work items
(a CSV of N/10 inputs with declared sizes, so nothing is probed; an edit step with a 2x2
matrix, an upscale chained on it, and a factor-mode upscale with two factors on the
inputs: 4 + 4 + 2 = 10 items per input), then measures in a fresh subprocess each:

- ``expand``   : iterating ``expand(manifest)`` alone (the manifest layer's share),
- ``estimate`` : ``estimate_manifest(manifest, table)`` (what `pixbatch estimate` does),

printing items/s and peak RSS (``resource.getrusage(RUSAGE_SELF).ru_maxrss``, the child
process only), then a verdict against the target: >= 50,000 items/s and < 300 MB peak
RSS at 1,000,000 items.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_RATE = 50_000
TARGET_RSS_MB = 300
PER_INPUT = 10


def write_inputs(root: Path, n_inputs: int) -> None:
    """``inputs.csv``: ``n_inputs`` rows of id, URL and a declared size (35 sizes in turn)."""
    with open(root / "inputs.csv", "w") as f:
        f.write("id,url,width,height\n")
        for i in range(n_inputs):
            w, h = 640 + (i % 7) * 200, 480 + (i % 5) * 150
            f.write(f"img{i:07d},https://cdn.example.com/catalog/img{i:07d}.jpg,{w},{h}\n")


def write_manifest(root: Path, n_items: int) -> Path:
    write_inputs(root, n_items // PER_INPUT)
    manifest = {
        "version": 1,
        "inputs": [{"from": "inputs.csv"}],
        "steps": [
            {"id": "recolor", "op": "edit", "prompt": "The dress in image 1 is changed to {color}",
             "matrix": {"color": ["black", "red"], "seed": [1, 2]}},
            {"id": "hires", "op": "upscale", "for_each": "recolor", "upscale_mode": "factor", "factor": 2},
            {"id": "big", "op": "upscale", "upscale_mode": "factor", "matrix": {"factor": [1.5, 3]}},
        ],
    }
    path = root / "bench.yaml"
    path.write_text(json.dumps(manifest, indent=2))  # JSON is YAML
    return path


def child(mode: str, manifest_path: str) -> None:
    import resource

    from pixbatch.manifest import load_manifest_shallow
    from pixbatch.pricing import PriceTable

    t0 = time.perf_counter()
    manifest = load_manifest_shallow(manifest_path)  # as `pixbatch estimate` loads it
    t_load = time.perf_counter() - t0
    t1 = time.perf_counter()
    if mode == "expand":
        from pixbatch.expand import expand

        items = sum(1 for _ in expand(manifest))
        total = None
    else:
        from pixbatch.estimate import estimate_manifest

        est = estimate_manifest(manifest, PriceTable.load(), probe=False)
        items, total = est.item_count + est.duplicates, est.total_text()
    elapsed = time.perf_counter() - t1
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(json.dumps({"items": items, "seconds": elapsed, "load_seconds": t_load, "rss_mb": rss_mb, "total": total}))


def measure(mode: str, manifest: Path) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", mode, str(manifest)], check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out)


def main(sizes: list[int]) -> int:
    # the machine line comes from a child too: importing _common (duckdb, aiohttp) here would
    # add to the measured children's peak RSS (Linux counts a forked parent's pages in it)
    here = str(Path(__file__).resolve().parent)
    line = subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {here!r}); from _common import "
                           "machine; print(machine())"], check=True, capture_output=True, text=True).stdout.strip()
    print(f"machine: {line}", flush=True)
    results: dict[tuple[str, int], dict] = {}
    with tempfile.TemporaryDirectory(prefix="pixbatch-bench-") as tmp:
        for n in sizes:
            d = Path(tmp) / str(n)
            d.mkdir()
            manifest = write_manifest(d, n)
            for mode in ("expand", "estimate"):
                r = measure(mode, manifest)
                results[(mode, n)] = r
                rate = r["items"] / r["seconds"]
                extra = f"  total {r['total']}" if r["total"] else ""
                print(f"{mode:9s} N={r['items']:>9,}  {r['seconds']:7.2f} s  {rate:>9,.0f} items/s  "
                      f"peak RSS {r['rss_mb']:6.1f} MB  (load {r['load_seconds']:.2f} s){extra}", flush=True)
    big = max(sizes)
    r = results[("estimate", big)]
    rate, rss = r["items"] / r["seconds"], r["rss_mb"]
    ok = rate >= TARGET_RATE and rss < TARGET_RSS_MB
    e = results[("expand", big)]
    share = e["seconds"] / r["seconds"]
    print(f"verdict: {'PASS' if ok else 'FAIL'} at N={big:,}: {rate:,.0f} items/s (target >= {TARGET_RATE:,}), "
          f"peak RSS {rss:.0f} MB (target < {TARGET_RSS_MB}); expand alone is {share:.0%} of the estimate's time")
    return 0 if ok else 1


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3])
    else:
        sys.exit(main([int(a) for a in sys.argv[1:]] or [100_000, 1_000_000]))
