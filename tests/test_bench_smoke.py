"""Every bench script still runs, at a tiny size: it prints its figures and a verdict line.

The figures themselves are not judged here (tiny runs are dominated by start-up; the real
figures are in bench/README.md); this keeps the scripts from falling behind the code.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"

SMALL = {
    "throughput.py": ["--n", "200", "--rounds", "1", "--concurrency", "16"],
    "latency.py": ["--n", "64", "--concurrency", "32", "--latency", "0.01", "--processing", "0.05"],
    "ratelimit.py": ["--rate", "40", "--seconds", "1.5", "--concurrency", "16"],
    "state.py": ["--items", "2000", "--transitions", "3000", "--tasks", "16"],
    "estimate.py": ["2000"],
    "scale.py": ["--n", "4000", "--run-seconds", "1"],
    "storage.py": ["--files", "30", "--run-files", "4"],
}


@pytest.mark.parametrize("script", sorted(SMALL))
def test_bench_script_runs_and_prints_a_verdict(script):
    if script == "storage.py":
        pytest.importorskip("boto3")
    out = subprocess.run([sys.executable, str(BENCH / script), *SMALL[script]], capture_output=True, text=True,
                         timeout=150)
    lines = out.stdout.strip().splitlines()
    assert out.returncode in (0, 1), out.stderr[-2000:]
    assert lines[0].startswith("machine: nproc") and len(lines) >= 3, out.stdout
    assert lines[-1].startswith(("verdict: PASS", "verdict: FAIL")), out.stdout + out.stderr[-2000:]
