"""Fault harness: SIGKILL `pixbatch run` at random moments against a faulty gateway, then audit the money.

    /work/venv/bin/python bench/chaos.py [--kills 50] [--inputs 120] [--seed 7]

A manifest (edits with a 2-value matrix, each followed by a chained upscale: 4 items per
input) runs against an emulator in its own process with every fault on: 5xx on submit and
poll, connections dropped after the gateway accepted (and will charge) a job, garbage
202 bodies, 429s from a tight submit rate limit, slow submits and polls, and jobs ending
FAILED (charged) or ERROR (not charged). A seeded RNG picks when to SIGKILL the runner
subprocess, ``kills`` times, resuming after each kill. Then one resume with
``--retry-ambiguous`` (AMBIGUOUS items are sent again: they may be paid twice, and the
harness checks that only they are), plain resumes until nothing is in flight, and
``pixbatch reconcile`` if something still is. The audit, against the emulator's ledger:

- items lost: not terminal, and not AMBIGUOUS/BLOCKED with a reason           -> must be 0
- items charged twice, other than AMBIGUOUS ones that were resubmitted         -> must be 0
- the ledger's running total never above the budget, nor pixbatch's committed
  (charges + reservations) at any recorded event                               -> must hold
- `pixbatch report` total == ledger total, once the charges of accepted-but-never-recorded
  submits (which only AMBIGUOUS items can have, at most their reservations) are set apart

``tests/test_chaos.py`` runs the short form (10+ kills) of the same ``chaos()``.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import BIG_WALLET, machine, pixbatch_env, query, run_or_kill, verdict  # noqa: E402

from pixbatch.emulator import Dist, EmulatorConfig, start_emulator  # noqa: E402
from pixbatch.money import format_usd, micros_to_decimal  # noqa: E402

TERMINAL = ("COMPLETED", "FAILED", "ERROR", "FAILED_VALIDATION")
PER_INPUT = 4  # 2 edits + 2 chained upscales


def faulty_config(seed: int, **overrides) -> EmulatorConfig:
    """Every fault the emulator has, at rates that leave most items able to finish."""
    base = dict(
        seed=seed, balance_micros=BIG_WALLET, render="lazy", queue_time=Dist(0.05, 0.2),
        processing_time=Dist(0.1, 0.4), fail_rate=0.05, error_rate=0.05, submit_500_rate=0.05,
        poll_500_rate=0.05, drop_after_accept_rate=0.03, submit_garbage_rate=0.01,
        submit_latency=Dist(0.0, 0.08), poll_latency=Dist(0.0, 0.08), rate_limit=25.0, rate_burst=4,
    )
    base.update(overrides)
    return EmulatorConfig(**base)


def write_manifest(root: Path, n_inputs: int) -> Path:
    p = root / "chaos.yaml"
    p.write_text(
        "version: 1\ninputs:\n" + "".join(f"  - https://img.test/c{i}.png\n" for i in range(n_inputs)) +
        "steps:\n  - id: e\n    op: edit\n    prompt: \"tone {t}\"\n    matrix:\n      t: [warm, cold]\n"
        "  - id: u\n    op: upscale\n    for_each: e\n    target: 2\n", "utf-8")
    return p


@dataclass(frozen=True)
class ChaosFigures:
    items: int
    kills: int
    runs: int
    states: dict[str, int]
    lost: int
    ambiguous_resubmitted: int
    charged_twice_unexplained: int
    unrecorded_charges: int  # ledger charges of accepted submits pixbatch never recorded
    unrecorded_micros: int
    budget_micros: int
    ledger_peak_micros: int
    committed_peak_micros: int
    ledger_total_micros: int
    report_total_micros: int
    report_at_risk_micros: int
    seconds: float

    def problems(self) -> list[str]:
        out = []
        if self.lost:
            out.append(f"{self.lost} item(s) lost")
        if self.charged_twice_unexplained:
            out.append(f"{self.charged_twice_unexplained} item(s) charged twice without being AMBIGUOUS+resubmitted")
        if self.ledger_peak_micros > self.budget_micros:
            out.append(f"ledger running total {self.ledger_peak_micros} > budget {self.budget_micros}")
        if self.committed_peak_micros > self.budget_micros:
            out.append(f"pixbatch committed {self.committed_peak_micros} > budget {self.budget_micros}")
        if self.report_total_micros + self.unrecorded_micros != self.ledger_total_micros:
            out.append(f"report total {self.report_total_micros} + unrecorded {self.unrecorded_micros} != ledger "
                       f"total {self.ledger_total_micros}")
        if self.unrecorded_micros > self.report_at_risk_micros:
            out.append(f"unrecorded charges {self.unrecorded_micros} exceed what the report puts at risk "
                       f"{self.report_at_risk_micros}")
        return out

    def lines(self) -> list[str]:
        usd = format_usd
        return [
            f"items {self.items}, SIGKILLs {self.kills}, runner processes {self.runs}, {self.seconds:.1f} s",
            "final states: " + ", ".join(f"{k} {v}" for k, v in sorted(self.states.items())),
            f"items lost: {self.lost}",
            f"AMBIGUOUS items resubmitted (--retry-ambiguous): {self.ambiguous_resubmitted}",
            f"items charged twice, unexplained: {self.charged_twice_unexplained}",
            f"charges of accepted submits never recorded (AMBIGUOUS): {self.unrecorded_charges} "
            f"({usd(self.unrecorded_micros)})",
            f"budget {usd(self.budget_micros)}: ledger running total peak {usd(self.ledger_peak_micros)}, "
            f"pixbatch committed peak {usd(self.committed_peak_micros)}",
            f"report total {usd(self.report_total_micros)} (+ at risk {usd(self.report_at_risk_micros)}); ledger "
            f"total {usd(self.ledger_total_micros)}; report + unrecorded = "
            f"{usd(self.report_total_micros + self.unrecorded_micros)}",
        ]


def chaos(root: Path, *, kills: int, seed: int, n_inputs: int, window: tuple[float, float] = (0.45, 1.2),
          in_process: bool = False, log: Callable[[str], None] = lambda s: None,
          **fault_overrides) -> ChaosFigures:
    """Kill a run ``kills`` times at random (``window`` seconds after each start), finish, audit."""
    rng = random.Random(seed)
    manifest = write_manifest(root, n_inputs)
    state = root / "chaos.pixbatch.duckdb"
    total = n_inputs * PER_INPUT
    # every item's highest price, with room for the resubmitted AMBIGUOUS ones (their first
    # reservation stays counted): the budget is a real constraint, checked all along
    budget = n_inputs * (2 * 10_000 + 2 * 5_000) * 3 // 2
    t0 = time.monotonic()
    with start_emulator(faulty_config(seed, **fault_overrides), in_process=in_process) as emu:
        env = pixbatch_env(emu)
        cmd = [sys.executable, "-m", "pixbatch", "run", str(manifest), "--base-url", emu.url, "--quiet", "--no-preflight",
               "--no-download", "--concurrency", "6", "--first-poll", "0.15", "--budget", str(micros_to_decimal(budget))]
        landed = runs = 0
        while landed < kills:
            runs += 1
            killed, code, err = run_or_kill(cmd, env, rng.uniform(*window))
            if killed:
                landed += 1
                log(f"kill {landed}")
                continue
            if code not in (0, 1):
                raise RuntimeError(f"run exited {code}: {err.decode()[-2000:]}")
            break  # the work ran out before the kills did
        runs += 1
        final = subprocess.run(cmd + ["--retry-ambiguous"], env=env, capture_output=True, timeout=300)
        if final.returncode not in (0, 1):
            raise RuntimeError(f"final run exited {final.returncode}: {final.stderr.decode()[-2000:]}")
        for _ in range(5):  # a fault on the last try can leave an item unsent or unpolled: run again
            open_items = query(state, "SELECT count(*) FROM items WHERE state IN ('PENDING', 'SUBMITTED')")[0][0]
            if not open_items:
                break
            runs += 1
            subprocess.run(cmd, env=env, capture_output=True, timeout=300)
        if query(state, "SELECT count(*) FROM items WHERE state IN ('SUBMITTING', 'SUBMITTED') "
                        "AND request_id IS NOT NULL")[0][0]:
            subprocess.run([sys.executable, "-m", "pixbatch", "reconcile", str(manifest), "--base-url", emu.url,
                            "--wait", "30", "--poll-interval", "0.2"], env=env, capture_output=True, timeout=120)
        ledger = emu.wait_idle(timeout=60)
    seconds = time.monotonic() - t0
    rep = subprocess.run([sys.executable, "-m", "pixbatch", "report", str(manifest), "--format", "json"],
                         capture_output=True, timeout=120, cwd=root)
    if rep.returncode != 0:
        raise RuntimeError(f"report exited {rep.returncode}: {rep.stderr.decode()[-2000:]}")
    totals = json.loads(rep.stdout)["spend"]["totals"]

    states = Counter(dict(query(state, "SELECT state, count(*) FROM items GROUP BY 1")))
    unexplained_open = query(state, "SELECT count(*) FROM items WHERE state IN ('AMBIGUOUS', 'BLOCKED') AND "
                                    "coalesce(error, '') = ''")[0][0]
    lost = (total - sum(states.values())) + sum(n for s, n in states.items()
                                                if s not in (*TERMINAL, "AMBIGUOUS", "BLOCKED")) + unexplained_open
    owner = dict(query(state, "SELECT request_id, key FROM attempts WHERE request_id IS NOT NULL"))
    resubmitted = {k for (k,) in query(state, "SELECT DISTINCT key FROM attempts WHERE outcome = 'abandoned'")}
    ambiguous_attempts = query(state, "SELECT count(*) FROM attempts WHERE outcome IN ('ambiguous', 'abandoned')")[0][0]
    known = [e for e in ledger.entries if e.request_id in owner]
    unknown = [e for e in ledger.entries if e.request_id not in owner]
    per_key = Counter(owner[e.request_id] for e in known if e.amount_micros > 0)
    # a key with two recorded charged requests was sent again although pixbatch knew it was accepted
    twice = sum(1 for k, c in per_key.items() if c > 1)
    # an unrecorded accepted submit is only explained by an ambiguous attempt
    twice += max(0, len(unknown) - ambiguous_attempts)
    running = peak = 0
    for e in sorted(ledger.entries, key=lambda e: e.seq):
        running += e.amount_micros
        peak = max(peak, running)
    committed_peak = query(state, "SELECT coalesce(max(CAST(json_extract(detail, '$.committed') AS BIGINT)), 0) "
                                  "FROM events WHERE json_extract(detail, '$.committed') IS NOT NULL")[0][0]
    unrecorded = sum(e.amount_micros for e in unknown)
    return ChaosFigures(
        items=total, kills=landed, runs=runs, states=dict(states), lost=lost,
        ambiguous_resubmitted=len(resubmitted), charged_twice_unexplained=twice,
        unrecorded_charges=sum(1 for e in unknown if e.amount_micros), unrecorded_micros=unrecorded,
        budget_micros=budget, ledger_peak_micros=peak, committed_peak_micros=int(committed_peak),
        ledger_total_micros=ledger.charged_micros, report_total_micros=int(totals["charged_micros"]),
        report_at_risk_micros=int(totals["at_risk_micros"]) + int(totals.get("abandoned_micros", 0)),
        seconds=seconds)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=50)
    ap.add_argument("--inputs", type=int, default=120, help=f"manifest inputs ({PER_INPUT} items each)")
    ap.add_argument("--seed", type=int, default=7)
    a = ap.parse_args(argv)
    print(f"machine: {machine()}")
    with tempfile.TemporaryDirectory(prefix="pixbatch-chaos-") as tmp:
        f = chaos(Path(tmp), kills=a.kills, seed=a.seed, n_inputs=a.inputs,
                  log=lambda s: print(s, end="\r" if sys.stderr.isatty() else "\n", file=sys.stderr, flush=True))
    for line in f.lines():
        print(line)
    problems = f.problems()
    if f.kills < a.kills:
        problems.append(f"only {f.kills} of {a.kills} kills landed before the work ran out (raise --inputs)")
    print(json.dumps(asdict(f)))
    return verdict(not problems, "; ".join(problems) or
                   f"{f.kills} kills: 0 lost, 0 unexplained double charges, spend within budget, report = ledger")


if __name__ == "__main__":
    sys.exit(main())
