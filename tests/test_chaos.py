"""The fault harness, short form: SIGKILLs at random moments against a gateway with every fault on.

``bench/chaos.py`` is the full form (50 kills, printed figures); this runs the same
``chaos()`` with fewer kills and a smaller manifest, and asserts its audit against the
emulator's ledger: nothing lost, nothing paid twice unless it was AMBIGUOUS and resent,
never above the budget, and the report adds up to the ledger.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location("pixbatch_bench_chaos",
                                               Path(__file__).resolve().parent.parent / "bench" / "chaos.py")
chaos_mod = importlib.util.module_from_spec(_spec)  # type: ignore[arg-type]
sys.modules[_spec.name] = chaos_mod  # type: ignore[union-attr]  (dataclasses look the module up)
_spec.loader.exec_module(chaos_mod)  # type: ignore[union-attr]

KILLS = 14  # aimed for; at least MIN_KILLS must land before the work runs out
MIN_KILLS = 10


@pytest.mark.slow
def test_random_sigkills_under_faults_lose_nothing_and_never_overspend(tmp_path):
    seed = int(os.environ.get("PIXBATCH_CHAOS_SEED", "20261125"))
    f = chaos_mod.chaos(tmp_path, kills=KILLS, seed=seed, n_inputs=30)
    assert f.kills >= MIN_KILLS, f.lines()  # the kills landed while there was work left
    assert f.problems() == [], f.lines()
    assert f.lost == 0 and f.charged_twice_unexplained == 0
    assert f.ledger_peak_micros <= f.budget_micros and f.committed_peak_micros <= f.budget_micros
    assert f.report_total_micros + f.unrecorded_micros == f.ledger_total_micros
    # the faults really happened: some items failed or were refused, the run still accounted for all
    assert sum(f.states.values()) == f.items
    assert f.states.get("COMPLETED", 0) < f.items
    assert f.runs > f.kills


def test_the_audit_catches_what_it_claims_to():
    """The checks are not vacuous: each broken invariant is reported."""
    ok = chaos_mod.ChaosFigures(items=8, kills=3, runs=5, states={"COMPLETED": 8}, lost=0, ambiguous_resubmitted=0,
                                charged_twice_unexplained=0, unrecorded_charges=0, unrecorded_micros=0,
                                budget_micros=100, ledger_peak_micros=80, committed_peak_micros=100,
                                ledger_total_micros=80, report_total_micros=80, report_at_risk_micros=0, seconds=1.0)
    assert ok.problems() == []
    from dataclasses import replace

    assert "lost" in replace(ok, lost=1).problems()[0]
    assert "charged twice" in replace(ok, charged_twice_unexplained=2).problems()[0]
    assert "ledger running total" in replace(ok, ledger_peak_micros=101).problems()[0]
    assert "committed" in replace(ok, committed_peak_micros=101).problems()[0]
    assert "report total" in replace(ok, report_total_micros=70).problems()[0]
    assert "exceed" in replace(ok, unrecorded_micros=10, report_total_micros=70).problems()[0]
