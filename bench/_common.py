"""Shared helpers for the bench scripts (and ``tests/test_chaos.py``).

Every benchmark drives the real path: a manifest file on disk, ``python -m pixbatch run`` in a
subprocess (or the library runner), and the gateway emulator in a *separate process*
(``start_emulator(..., in_process=False)``) so that neither side's CPU time is counted
against the other's GIL. What lives here:

- ``machine()``               one line describing the machine (nproc, memory, Python, date)
- ``write_edit_manifest()``   a manifest of N edit items (a CSV of N inputs with declared sizes)
- ``bench_emulator()``        an emulator subprocess: lazy rendering, a wallet that never runs dry
- ``pixbatch_cmd()`` / ``pixbatch_env()``  the CLI command line and environment for a run
- ``wait_child()``            wait for a child and return its exit code and peak RSS (os.wait4)
- ``query()``                 read-only SQL against a state file
- ``verdict()``               print the closing PASS/FAIL line, return the exit code
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import duckdb

from pixbatch.emulator import Dist, EmulatorConfig, RunningEmulator, start_emulator

#: enough for any benchmark: $100,000
BIG_WALLET = 100_000 * 1_000_000


def machine() -> str:
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (f"nproc {os.cpu_count()}, {mem_gb:.1f} GiB RAM, Python {platform.python_version()}, "
            f"duckdb {duckdb.__version__}, {platform.system()} {platform.release()}, "
            f"{_dt.datetime.now(_dt.timezone.utc):%Y-%m-%d %H:%M} UTC")


def write_edit_manifest(root: Path, n: int, *, name: str = "bench", prompt: str = "make item {index} blue",
                        extra: str = "") -> Path:
    """A manifest of ``n`` edit items: a CSV of ``n`` inputs (sizes declared, nothing probed)."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f"{name}.csv", "w") as f:
        f.write("id,url,width,height\n")
        for i in range(n):
            f.write(f"i{i:07d},https://img.test/{name}/{i:07d}.png,1024,768\n")
    path = root / f"{name}.yaml"
    path.write_text(f"version: 1\n{extra}inputs:\n  - from: {name}.csv\nsteps:\n  - id: e\n    op: edit\n"
                    f"    prompt: \"{prompt}\"\n", "utf-8")
    return path


def bench_emulator(**overrides: Any) -> RunningEmulator:
    """An emulator subprocess with zero timings, lazy rendering and a huge wallet, unless overridden."""
    base: dict[str, Any] = dict(queue_time=Dist(0.0), processing_time=Dist(0.0), render="lazy",
                                balance_micros=BIG_WALLET, allow_http_webhooks=True)
    base.update(overrides)
    return start_emulator(EmulatorConfig(**base), in_process=False)


def pixbatch_cmd(manifest: Path, emu: RunningEmulator, *args: str) -> list[str]:
    return [sys.executable, "-m", "pixbatch", "run", str(manifest), "--base-url", emu.url, "--quiet", "--no-preflight",
            "--no-download", *args]


def pixbatch_env(emu: RunningEmulator) -> dict[str, str]:
    return {**os.environ, "PIXAZO_API_KEY": emu.api_key}


def wait_child(proc: subprocess.Popen) -> tuple[int, float]:
    """Wait for ``proc``; its exit code (negative: killed by that signal) and peak RSS in MB."""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, usage.ru_maxrss / 1024


def run_or_kill(cmd: list[str], env: dict[str, str], seconds: float) -> tuple[bool, int, bytes]:
    """Run ``cmd`` (stdout discarded); SIGKILL it if it is still running after ``seconds``.
    (killed, exit code, stderr): a killed run's stderr is dropped."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _, err = proc.communicate(timeout=seconds)  # (reads stderr meanwhile: a full pipe never blocks it)
    except subprocess.TimeoutExpired:
        proc.kill()  # SIGKILL
        proc.communicate()
        return True, proc.returncode, b""
    return False, proc.returncode, err


def query(state_path: Path | str, sql: str, params: list | tuple = ()) -> list[tuple]:
    db = duckdb.connect(str(state_path), read_only=True)
    try:
        return db.execute(sql, list(params)).fetchall()
    finally:
        db.close()


def verdict(ok: bool, text: str) -> int:
    print(f"verdict: {'PASS' if ok else 'FAIL'} {text}", flush=True)
    return 0 if ok else 1
