"""Honest prices end to end, against emulators on loopback: a gateway pixbatch was not tuned
to (other edit sizes, 1 MP = 2^20, floored factor sides), a run that learns, and a plan that
knows what is already paid."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import duckdb
import pytest
from click.testing import CliRunner

from pixbatch import retry_policy
from pixbatch import state as st
from pixbatch.cli import cli
from pixbatch.emulator import fast_test_config, start_emulator
from pixbatch.errors import BudgetExceeded
from pixbatch.estimate import estimate_manifest
from pixbatch.estimate_render import estimate_to_dict
from pixbatch.plan import IN_FLIGHT, NOT_SENT, PAID
from pixbatch.knowledge import learn
from pixbatch.manifest import load_manifest
from pixbatch.money import format_usd
from pixbatch.pricing import PriceTable
from pixbatch.progress import NullProgress
from pixbatch.report import build_report
from pixbatch.runner import RunOptions, run

TABLE = PriceTable.load()
M20 = 1_048_576
#: what public sources say the edit model produces (issue 12); pixbatch predicts 1360x768, 1184x880, 1248x832
OTHER_EDIT_SIZES = "16:9=1344x768,4:3=1184x896,3:2=1248x832"


@pytest.fixture(autouse=True)
def _instant_backoff():
    with retry_policy.instant():
        yield


class Recorder(NullProgress):
    """Keeps what the run announces at its start (the plan) and its events."""

    def __init__(self):
        self.info: dict = {}
        self.events: list[tuple[str, str | None, dict]] = []

    def start(self, info):
        self.info = info

    def event(self, kind, key, detail):
        self.events.append((kind, key, detail))


def opts(emu, **kw) -> RunOptions:
    # preflight=False: the lazy emulator does not fetch inputs, and these URLs are not real
    base = dict(base_url=emu.url, api_key=emu.api_key, concurrency=8, poll_initial=0.05, poll_max_interval=0.3,
                status_interval=0.2, preflight=False)
    base.update(kw)
    return RunOptions(**base)


def write(path: Path, inputs: list[dict], steps: list[dict], **top) -> Path:
    path.write_text(json.dumps({"version": 1, **top, "inputs": inputs, "steps": steps}, indent=2), "utf-8")
    return path


def per_request(state_path) -> dict[str, tuple[str, int | None, str | None]]:
    """request_id -> (step, charged, error) of every item the state file sent."""
    db = duckdb.connect(str(state_path), read_only=True)
    try:
        return {r: (s, c, e) for r, s, c, e in db.execute(
            "SELECT request_id, step, charged_micros, error FROM items WHERE request_id IS NOT NULL").fetchall()}
    finally:
        db.close()


def in_range(est, micros: int) -> bool:
    return est.low_micros <= micros <= est.high_micros


def step_ranges(est) -> dict[str, tuple[int, int]]:
    out: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for x in est.lines:
        out[x.step][0] += x.subtotal_low_micros
        out[x.step][1] += x.subtotal_high_micros
    return {k: (lo, hi) for k, (lo, hi) in out.items()}


STEPS = [
    {"id": "recolor", "op": "edit", "prompt": "the background is {color}", "matrix": {"color": ["teal"]}},
    {"id": "hires", "op": "upscale", "for_each": "recolor", "upscale_mode": "factor", "factor": 2,
     "output_format": "png"},
    {"id": "mid", "op": "upscale", "upscale_mode": "factor", "factor": 1.5, "output_format": "png"},
    {"id": "thumbs", "op": "upscale", "target": 1, "output_format": "png"},
]
SIZES = {"wide": (1920, 1080), "four": (1600, 1200), "three": (1500, 1000), "square": (1001, 1001),
         "odd": (1001, 667)}


def test_a_gateway_pixbatch_was_not_tuned_to(tmp_path, image_server):
    """Other edit sizes, 1 MP = 2^20 and floored sides: every estimate range holds the ledger, the
    report equals the ledger to the micro-dollar, and no correct output is flagged."""
    inputs = [{"id": k, "url": image_server.add(f"{k}.png", size)} for k, size in SIZES.items()]
    m = write(tmp_path / "other.yaml", inputs, STEPS)
    cfg = fast_test_config(edit_sizes=OTHER_EDIT_SIZES, megapixel="2^20", factor_rounding="floor")
    with start_emulator(cfg) as emu:
        manifest = load_manifest(m)
        est = estimate_manifest(manifest, TABLE)  # probes the inputs over loopback
        assert est.sizes.probed == 5 and not est.exact
        hires = [u for u in est.uncertain if u.step == "hires"]
        assert sum(u.count for u in hires) == 5 and all(u.suggestion for u in hires)
        rec = Recorder()
        summary = run(manifest, options=opts(emu), progress=rec)
        ledger = emu.ledger()

    # every range holds the ledger: the whole estimate, each step, and the plan the run printed
    assert in_range(est, ledger.charged_micros), (est.total_text(), format_usd(ledger.charged_micros))
    plan = rec.info["plan"]
    assert (plan.low_micros, plan.high_micros) == (est.low_micros, est.high_micros)
    charged_by_step: dict[str, int] = defaultdict(int)
    items = per_request(manifest.state_path)
    for rid, amount in ledger.charged_by_request().items():
        charged_by_step[items[rid][0]] += amount
    for step, (lo, hi) in step_ranges(est).items():
        assert lo <= charged_by_step[step] <= hi, (step, lo, hi, charged_by_step[step])
    # the gateway really did price some outputs by 2^20: hires of the 16:9 edit, 2688x1536 = 4,128,768 px
    assert charged_by_step["hires"] < 5 * 10_000

    # the report equals the ledger, item by item and in total
    assert summary.exit_code == 0 and summary.output_problems == 0, summary.messages
    for rid, amount in ledger.charged_by_request().items():
        assert items[rid][1] == amount, (rid, items[rid], amount)
    assert all(e is None for _, _, e in items.values())  # no correct output flagged
    report = build_report(manifest.state_path)
    assert report.spend.totals.charged_micros == ledger.charged_micros == summary.charged_total_micros
    assert not report.status.failures
    moved = {v.cause: v for v in report.spend.variance}
    assert moved["learned_upstream"].items == 5 and moved["learned_upstream"].examples
    assert "upstream output 1344x768" in " ".join(moved["learned_upstream"].examples)

    # the run learned the reading; reservations of the chained items were adjusted and said why
    db = duckdb.connect(str(manifest.state_path), read_only=True)
    try:
        assert learn(st.size_observations(db), TABLE).megapixel == M20
    finally:
        db.close()
    reserves = [d for kind, _, d in rec.events if kind == "price"]
    assert reserves and any(d["why"] == "the real output size of its upstream" for d in reserves)

    # a second estimate on the same state: everything is paid, and it says what it learned
    again = estimate_manifest(load_manifest(m), TABLE, probe=False)
    assert again.to_pay_count == 0 and again.high_micros == 0
    assert again.category_total(PAID) == (20, ledger.charged_micros)
    assert any("1 MP = 2^20 = 1,048,576 px, learned from" in a for a in again.assumptions)
    assert any("1360x768" in a and "1344x768" in a for a in again.assumptions)
    fresh = estimate_manifest(load_manifest(m), TABLE, probe=False, fresh=True)
    assert (fresh.low_micros, fresh.high_micros) == (est.low_micros, est.high_micros) and not fresh.plan


def test_charges_settled_before_the_reading_was_learned_are_revised(tmp_path, image_server):
    """With one item at a time, the factor upscales settle before the target-mode one that tells
    the reading: they are charged by the default reading, then revised, and the report adds up."""
    inputs = [{"id": "sq", "url": image_server.add("sq.png", (1024, 1024))}]
    steps = [{"id": "big", "op": "upscale", "upscale_mode": "factor", "factor": 2},  # 4,194,304 px
             {"id": "teach", "op": "upscale", "target": 2}]
    m = write(tmp_path / "rev.yaml", inputs, steps)
    with start_emulator(fast_test_config(megapixel="2^20")) as emu:
        manifest = load_manifest(m)
        est = estimate_manifest(manifest, TABLE)
        assert (est.low_micros, est.high_micros) == (10_000, 15_000)  # big: $0.005-$0.01; teach: $0.005
        rec = Recorder()
        summary = run(manifest, options=opts(emu, concurrency=1), progress=rec)
        ledger = emu.ledger()
    assert ledger.charged_micros == 10_000 == summary.charged_total_micros
    revised = [d for kind, _, d in rec.events if kind == "state" and "revised" in d]
    assert len(revised) == 1 and revised[0]["charged"] == -5_000 and "10000 -> 5000" in revised[0]["revised"]
    report = build_report(manifest.state_path)
    assert report.spend.totals.charged_micros == 10_000 and report.run.charged_micros == 10_000


def test_without_evidence_a_band_charge_rests_on_the_default_reading(tmp_path, image_server):
    inputs = [{"id": "sq", "url": image_server.add("sq.png", (1024, 1024))}]
    m = write(tmp_path / "band.yaml", inputs, [{"id": "big", "op": "upscale", "upscale_mode": "factor", "factor": 2}])
    with start_emulator(fast_test_config()) as emu:  # the documented defaults: 1 MP = 10^6
        summary = run(load_manifest(m), options=opts(emu))
        assert emu.ledger().charged_micros == 10_000 == summary.charged_total_micros
    (note,) = [n for n in build_report(load_manifest(m).state_path).notes if "default reading" in n]
    assert note.startswith("1 charge(s) of factor upscales") and "they cost $0.005 less" in note


# -- a plan, not a price list ----------------------------------------------------------------------

TEN = [{"id": f"p{i}", "url": f"https://cdn.test/p{i}.png", "width": 640, "height": 480} for i in range(10)]
EDITS = {"id": "recolor", "op": "edit", "prompt": "make it red", "aspect_ratio": "4:3"}
UPS = {"id": "big", "op": "upscale", "for_each": "recolor", "target": 4}


def run_json(*args, code=0):
    result = CliRunner().invoke(cli, ["estimate", *map(str, args), "--json"])
    assert result.exit_code == code, (result.output, result.exception)
    return json.loads(result.stdout)


def lazy_emulator():
    return start_emulator(fast_test_config(render="lazy", lazy_input_size=(640, 480)))


def test_adding_a_step_to_a_finished_manifest_plans_only_the_new_items(tmp_path):
    m = write(tmp_path / "ten.yaml", TEN, [EDITS])
    with lazy_emulator() as emu:
        run(load_manifest(m), options=opts(emu))
        write(m, TEN, [EDITS, UPS])  # the same 10 edits, and an upscale of each
        d = run_json(m)
        assert d["plan"]["still_to_pay"]["items"] == 10 and d["total"]["high"]["usd"] == "0.05"
        assert d["plan"]["paid"] == {"items": 10, "micros": 100_000, "usd": "0.1"} and d["item_count"] == 20
        assert [(x["step"], x["category"], x["count"]) for x in d["plan"]["lines"]] == [("recolor", PAID, 10)]
        assert run_json(m, "--fresh")["total"]["high"]["usd"] == "0.15"
        out = " ".join(CliRunner().invoke(cli, ["estimate", str(m)]).stdout.split())
        assert "Still to pay: $0.05 (exact) for 10 of 20 requests; $0.10 already paid (reused) for 10" in out
        # the run's "at least" is the plan's: $0.10 paid + $0.05 to pay does not fit $0.12
        with pytest.raises(BudgetExceeded, match=r"already charged \$0\.10, and the 10 remaining item\(s\) cost "
                                                 r"at least \$0\.05\b"):
            run(load_manifest(m), options=opts(emu, budget_micros=120_000))
        rec = Recorder()
        summary = run(load_manifest(m), options=opts(emu), progress=rec)
        assert summary.charged_run_micros == 50_000 and rec.info["plan"].high_micros == 50_000


def test_the_run_prints_the_plan_estimate_gives(tmp_path):
    """Paid, in flight, not sent and blocked items in one state file: estimate and run agree."""
    m = write(tmp_path / "mixed.yaml", TEN, [EDITS])
    with lazy_emulator() as emu:
        run(load_manifest(m), options=opts(emu))
        db = duckdb.connect(str(load_manifest(m).state_path))
        keys = [k for (k,) in db.execute("SELECT key FROM items ORDER BY idx").fetchall()]
        db.execute("UPDATE items SET state = 'ERROR', charged_micros = 0 WHERE key = ?", [keys[0]])
        db.execute("UPDATE items SET state = 'SUBMITTED', charged_micros = NULL, reserved_micros = 10000 "
                   "WHERE key = ?", [keys[1]])
        db.close()
        write(m, TEN, [EDITS, {"id": "big", "op": "upscale", "for_each": "recolor", "upscale_mode": "factor",
                              "factor": 2}])  # ranges: predicted edit sizes
        est = estimate_manifest(load_manifest(m), TABLE, probe=False)
        assert est.category_total(NOT_SENT) == (2, 0)  # the ERROR edit and the upscale it blocks
        assert est.category_total(IN_FLIGHT) == (1, 10_000) and est.category_total(PAID) == (8, 80_000)
        assert est.to_pay_count == 9 and not est.exact
        rec = Recorder()
        run(load_manifest(m), options=opts(emu), progress=rec)
    plan = rec.info["plan"]
    mine, theirs = estimate_to_dict(est), estimate_to_dict(plan)
    for key in ("total", "lines", "item_count"):
        assert mine[key] == theirs[key], key
    assert mine["plan"]["lines"] == theirs["plan"]["lines"]
    assert [{k: v for k, v in u.items() if k != "examples"} for u in mine["uncertain"]] == [
        {k: v for k, v in u.items() if k != "examples"} for u in theirs["uncertain"]]


def test_a_fresh_state_file_says_at_least_what_estimate_says(tmp_path):
    m = write(tmp_path / "fresh.yaml", TEN, [EDITS, UPS])
    est = estimate_manifest(load_manifest(m), TABLE, probe=False)
    assert est.exact and est.high_micros == 150_000
    with lazy_emulator() as emu, pytest.raises(BudgetExceeded, match=r"cost at least \$0\.15\b"):
        run(load_manifest(m), options=opts(emu, budget_micros=100_000))


def test_one_edit_of_an_aspect_ratio_teaches_the_rest(tmp_path, image_server):
    wide = [{"id": f"w{i}", "url": f"https://cdn.test/w{i}.png", "width": 1920, "height": 1080} for i in range(3)]
    first = write(tmp_path / "learn.yaml", wide[:1], [{"id": "recolor", "op": "edit", "prompt": "p"}])
    cfg = fast_test_config(render="lazy", lazy_input_size=(1920, 1080), edit_sizes=OTHER_EDIT_SIZES)
    with start_emulator(cfg) as emu:
        run(load_manifest(first), options=opts(emu))
    steps = [{"id": "recolor", "op": "edit", "prompt": "p"},
             {"id": "hires", "op": "upscale", "for_each": "recolor", "upscale_mode": "factor", "factor": 2,
              "output_format": "png"}]
    write(first, wide, steps)
    table20 = TABLE.knowing(M20)  # the reading known (say, by the table), so only the edit size matters
    est = estimate_manifest(load_manifest(first), table20, probe=False)
    hires = {x.tier: x for x in est.lines if x.step == "hires"}
    # w0's edit completed (1344x768): its upscale is exact; w1, w2 are priced from the learned 1344x768
    assert [x.count for x in est.lines if x.step == "hires"] == [3] and hires["upscale <=4MP"].exact
    assert any("taken to come out 1344x768, as edit" in a for a in est.assumptions)
    unlearned = estimate_manifest(load_manifest(first), table20, probe=False, fresh=True)
    assert not [x for x in unlearned.lines if x.step == "hires"][0].exact  # without the state: a range


def test_a_real_mismatch_is_listed_in_the_report_failures(tmp_path):
    """An output no reading explains (a gateway whose MP is 500,000 px) is flagged, and the summary's
    "see `pixbatch report`" leads to it: the report's Failures name it."""
    from pixbatch.render import render

    inputs = [{"id": "a", "url": "https://cdn.test/a.png", "width": 1024, "height": 1024}]
    m = write(tmp_path / "odd.yaml", inputs, [{"id": "thumbs", "op": "upscale", "target": 1}])
    with start_emulator(fast_test_config(render="lazy", megapixel=500_000)) as emu:
        summary = run(load_manifest(m), options=opts(emu))
    assert summary.output_problems == 1
    assert "1 output(s) failed their checks: `pixbatch failures` lists them." in summary.messages
    report = build_report(load_manifest(m).state_path)
    (group,) = report.status.failures
    assert (group.state, group.count) == ("COMPLETED", 1)
    assert group.message == "output check: 707x707, expected 1000x1000 or 1024x1024"
    assert "output check: 707x707" in render(report, "table", width=160)


def test_the_estimates_blocking_states_are_the_runs():
    from pixbatch.plan import BLOCKING

    assert BLOCKING == {s.value for s in st.BLOCKING}


def test_while_the_manifest_streams_in_the_plan_says_it_covers_what_is_read(tmp_path):
    m = write(tmp_path / "stream.yaml", TEN, [EDITS])
    with lazy_emulator() as emu:
        rec = Recorder()
        run(load_manifest(m), options=opts(emu, ingest_batch=3), progress=rec)
    plan = rec.info["plan"]
    assert plan.item_count == 3 and "covers the first 3 items read" in plan.state_note
