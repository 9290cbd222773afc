"""The runner's parts alone, in milliseconds: no HTTP, no DuckDB (the end-to-end tests cover those)."""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest
from hypothesis import given, strategies as hs
from PIL import Image

from pixbatch import state as st
from pixbatch.errors import (AuthError, BadRequest, GatewayError, InsufficientBalance, NotFound, PixbatchError,
                             RateLimited, ServerError)
from pixbatch.gateway import Accepted, JobStatus, SubmitUnknown
from pixbatch.runner.budget import BudgetLedger
from pixbatch.runner.options import PROCESS, SPENDING, TUNING, RunOptions, default
from pixbatch.runner.outcome import StopReason, conclude
from pixbatch.runner.outputs import OutputDir, check_image
from pixbatch.runner.poll import PollClock, Poller
from pixbatch.runner.prepare import PACKAGE_DIR, expansion_modules
from pixbatch.runner.submit import ACCEPTED, SUBMIT_TABLE, rule_for, submit_item


# -- the budget ledger --------------------------------------------------------------------------

def test_a_reservation_that_does_not_fit_is_refused_and_changes_nothing():
    ledger = BudgetLedger(cap=10_000, committed=4_000)
    assert ledger.try_reserve(6_000) and ledger.committed == 10_000
    assert not ledger.try_reserve(1) and ledger.committed == 10_000
    ledger.settle(reserved=6_000, charge=5_000)  # charged less than reserved: room again
    assert ledger.committed == 9_000 and ledger.peak == 10_000
    ledger.release(0)
    assert ledger.try_reserve(1_000) and not ledger.fits(1)


def test_no_cap_reserves_anything_and_tracks_the_peak():
    ledger = BudgetLedger(cap=None)
    for _ in range(5):
        assert ledger.try_reserve(10_000)
    ledger.release(20_000)
    assert ledger.committed == 30_000 and ledger.peak == 50_000


def test_a_charge_above_the_reservation_that_breaks_the_cap_is_a_bug():
    ledger = BudgetLedger(cap=10_000)
    assert ledger.try_reserve(10_000)
    with pytest.raises(AssertionError, match="budget invariant"):
        ledger.settle(reserved=10_000, charge=10_001)


def test_a_budget_lowered_below_what_is_committed_lets_the_items_in_flight_settle_and_fits_nothing():
    ledger = BudgetLedger(cap=0, committed=320_000)  # a resume with --budget 0 and 32 items in flight
    ledger.settle(reserved=10_000, charge=10_000)  # charged what was reserved: no new money
    ledger.settle(reserved=10_000, charge=5_000)
    ledger.release(10_000)
    assert ledger.committed == 305_000 and not ledger.try_reserve(1) and not ledger.try_reserve(0)
    with pytest.raises(AssertionError, match="budget invariant"):
        ledger.settle(reserved=10_000, charge=10_001)  # above its reservation, over the cap: a bug


@given(hs.integers(0, 50_000), hs.lists(hs.tuples(hs.sampled_from("rRs"), hs.integers(0, 10_000),
                                                   hs.integers(0, 100)), max_size=80))
def test_interleaved_reserve_release_settle_never_go_over_the_cap(cap, ops):
    """Items reserve their high price, then each either is refused (release) or settles at most its
    reservation, in any interleaving: committed never exceeds the cap and always equals the sum."""
    ledger = BudgetLedger(cap=cap)
    open_: list[int] = []
    charged = 0
    for op, amount, pct in ops:
        if op == "r" or not open_:
            if ledger.try_reserve(amount):
                open_.append(amount)
        elif op == "R":
            ledger.release(open_.pop(pct % len(open_)))
        else:
            reserved = open_.pop(pct % len(open_))
            charge = reserved * pct // 100
            ledger.settle(reserved, charge)
            charged += charge
        assert ledger.committed <= cap
        assert ledger.committed == charged + sum(open_)
        assert ledger.peak >= ledger.committed


# -- the poll clock -----------------------------------------------------------------------------

def test_the_poll_clock_starts_at_the_initial_delay_then_learns_the_job_time():
    clock = PollClock(initial=2.0, cap=10.0)
    assert clock.first() == 2.0
    assert clock.next(1) == 1.0 and clock.next(3) == pytest.approx(2.25)
    for _ in range(20):
        clock.observe(1.0)
    assert 1.0 < clock.first() < 1.2  # just past the mean job time
    assert clock.next(1) == pytest.approx(0.3)
    assert clock.next(30) == 10.0  # capped


def test_the_poll_clock_follows_a_slower_backend_and_stays_capped():
    clock = PollClock(initial=2.0, cap=5.0)
    clock.observe(0.5)
    for _ in range(50):
        clock.observe(30.0)
    assert clock.first() == 5.0


class FakeGateway:
    """A gateway object with scripted answers (no HTTP)."""

    def __init__(self, statuses=(), submit=None, refusals=()):
        self.statuses = list(statuses)
        self.submit_answer = submit
        self.refusals = list(refusals)  # (status, reason) answers to sends before the last one
        self.sent: list[tuple[str, dict]] = []
        self.policy = type("P", (), {"backoff": staticmethod(lambda n: 0.0)})()

    async def status(self, request_id, polling_path=None):
        answer = self.statuses.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return answer

    async def submit(self, op, body, webhook_url=None, hooks=None):
        for status, reason in self.refusals:  # each a send of its own, refused for good
            await hooks.sending()
            self.sent.append((op, body))
            hooks.refused(status, reason)
        await hooks.sending()
        self.sent.append((op, body))
        if isinstance(self.submit_answer, BaseException):
            raise self.submit_answer
        return self.submit_answer


def row(**kw) -> st.ItemRow:
    base = dict(key="k1", step="s", op="upscale", idx=0, body=json.dumps({"image": "https://x/a.jpg"}),
                output_name="s/a.jpg", upstream=None, input_width=100, input_height=100, est_low_micros=5000,
                est_high_micros=5000)
    base.update(kw)
    return st.ItemRow(**base)


def test_the_poller_rides_out_gateway_errors_and_records_status_changes():
    puts = []
    gw = FakeGateway([JobStatus("r1", "QUEUED"), ServerError("503", status_code=503),
                      JobStatus("r1", "PROCESSING"), JobStatus("r1", "COMPLETED", media_urls=("https://m/1",))])
    poller = Poller(gw, initial=0.0, cap=0.0, put=lambda r, **e: puts.append((r.gateway_status, e)),
                    on_stop=lambda reason, m: None)
    r = row(state=st.SUBMITTED, request_id="r1")
    s = asyncio.run(poller.until_done(r, resumed=True))
    assert s.status == "COMPLETED" and poller.polls == 3 and r.polls == 3
    assert [p[0] for p in puts] == ["QUEUED", "PROCESSING"] and r.started_at is not None


def test_the_poller_gives_up_after_repeated_failures_and_stops_on_a_refused_key():
    puts, auth = [], []
    gw = FakeGateway([ServerError("503", status_code=503)] * 6)
    poller = Poller(gw, initial=0.0, cap=0.0, put=lambda r, **e: puts.append(e),
                    on_stop=lambda reason, m: auth.append((reason, m)))
    r = row(state=st.SUBMITTED, request_id="r1")
    assert asyncio.run(poller.until_done(r, resumed=True)) is None
    assert r.error.startswith("polling failed") and len(puts) == 1
    gw.statuses = [AuthError("401 key refused", status_code=401)]
    assert asyncio.run(poller.until_done(r, resumed=True)) is None and auth == [(StopReason.AUTH, "401 key refused")]


# -- the submit table ---------------------------------------------------------------------------

@pytest.mark.parametrize("exc, state, release, skip, stop", [
    (SubmitUnknown("dropped after sending"), st.AMBIGUOUS, False, False, None),
    (BadRequest("bad", status_code=400), st.FAILED_VALIDATION, True, False, None),
    (NotFound("nope", status_code=404), st.FAILED_VALIDATION, True, False, None),
    (InsufficientBalance("402", status_code=402), st.PENDING, True, True, StopReason.BALANCE),
    (AuthError("401", status_code=401), st.PENDING, True, True, StopReason.AUTH),
    (RateLimited("429", status_code=429), st.PENDING, True, True, None),
    (ServerError("500", status_code=500), st.PENDING, True, True, None),
    (GatewayError("never sent"), st.PENDING, True, True, None),
])
def test_every_gateway_answer_maps_to_one_state_release_and_stop(exc, state, release, skip, stop):
    rule = rule_for(exc)
    assert (rule.state, rule.release, rule.skip, rule.stop) == (state, release, skip, stop)


def test_an_exception_outside_the_table_is_a_bug_and_propagates():
    assert all(issubclass(kind, GatewayError) for kind, _ in SUBMIT_TABLE)
    with pytest.raises(KeyError):
        rule_for(KeyError("bug"))


def _submit(answer, reserved=10_000, refusals=()):
    ledger = BudgetLedger(cap=20_000)
    assert ledger.try_reserve(reserved)
    r = row(reserved_micros=reserved)
    puts = []

    def put(item, *, wait=False, attempt=None, intent=None, **event):
        puts.append((item.state, attempt.outcome if attempt else None, intent is not None))
        fut = asyncio.get_running_loop().create_future()
        fut.set_result(None)
        return fut

    gw = FakeGateway(submit=answer, refusals=refusals)
    rule = asyncio.run(submit_item(r, None, gateway=gw, ledger=ledger, put=put, run_id="run", webhook_url=None))
    return rule, r, ledger, puts


def test_an_accepted_submit_commits_the_intent_first_then_the_request_id():
    rule, r, ledger, puts = _submit(Accepted("req-1", "/v2/requests/status/req-1", "QUEUED"))
    assert rule is ACCEPTED and r.state == st.SUBMITTED and r.request_id == "req-1"
    assert puts == [(st.SUBMITTING, None, True), (st.SUBMITTED, "accepted", False)]
    assert ledger.committed == 10_000  # still reserved until settled


def test_a_refused_submit_releases_its_reservation_and_an_ambiguous_one_keeps_it():
    _rule, r, ledger, puts = _submit(BadRequest("image too large", status_code=400))
    assert r.state == st.FAILED_VALIDATION and ledger.committed == 0 and r.reserved_micros == 0
    assert puts[-1] == (st.FAILED_VALIDATION, "rejected", False) and r.finished_at is not None
    _rule, r, ledger, puts = _submit(SubmitUnknown("connection dropped after the request was sent"))
    assert r.state == st.AMBIGUOUS and ledger.committed == 10_000 and r.reserved_micros == 10_000
    assert puts[-1] == (st.AMBIGUOUS, "ambiguous", False)


def test_each_send_has_its_own_intent_closed_by_its_own_answer():
    """Two 429s then a 202: three intents; the refused ones are closed at once (a crash between
    sends leaves the item PENDING, never AMBIGUOUS), and the reservation is held throughout."""
    rule, r, ledger, puts = _submit(Accepted("req-1", "/v2/requests/status/req-1", "QUEUED"),
                                    refusals=[(429, "Rate limit is exceeded"), (503, "busy")])
    assert rule is ACCEPTED and r.attempts == 3 and ledger.committed == 10_000
    assert puts == [(st.SUBMITTING, None, True), (st.PENDING, "rejected", False),
                    (st.SUBMITTING, None, True), (st.PENDING, "rejected", False),
                    (st.SUBMITTING, None, True), (st.SUBMITTED, "accepted", False)]


def test_a_final_refusal_after_refused_sends_logs_no_second_outcome():
    rule, r, ledger, puts = _submit(RateLimited("still throttled", status_code=429), refusals=[(429, "x")])
    # the gateway gave up after the last refused send: its own answer already closed the intent
    assert r.state == st.PENDING and ledger.committed == 0
    assert [p[1] for p in puts] == [None, "rejected", None, "rejected"]


def test_a_submit_cancelled_while_waiting_for_a_token_releases_and_stays_pending():
    ledger = BudgetLedger(cap=20_000)
    assert ledger.try_reserve(10_000)
    r = row(reserved_micros=10_000)
    puts = []

    class Waiting(FakeGateway):
        async def submit(self, op, body, webhook_url=None, hooks=None):
            await asyncio.sleep(10)  # the rate limiter's wait: nothing sent

    async def go():
        task = asyncio.create_task(submit_item(r, None, gateway=Waiting(), ledger=ledger,
                                               put=lambda item, **kw: puts.append((item.state, kw.get("intent"))),
                                               run_id="run", webhook_url=None))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(go())
    assert r.state == st.PENDING and r.reserved_micros == 0 and ledger.committed == 0
    assert puts == [(st.PENDING, None)] and r.attempts == 0


# -- outputs ------------------------------------------------------------------------------------

def _image(size, fmt) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (10, 20, 30)).save(buf, fmt)
    return buf.getvalue()


def test_an_output_of_the_documented_size_and_format_passes():
    body = {"image": "u", "upscale_mode": "factor", "factor": 2, "output_format": "png"}
    assert check_image(_image((200, 100), "PNG"), "upscale", body, "image/png", (100, 50)).problems == ()


def test_output_checks_name_what_is_wrong():
    body = {"image": "u", "upscale_mode": "factor", "factor": 2, "output_format": "png"}
    c = check_image(_image((300, 100), "JPEG"), "upscale", body, "image/jpeg", (100, 50))
    assert c.width == 300 and c.format == "JPEG"
    assert c.problems == ("format JPEG, expected PNG", "300x100, expected 200x100")
    assert check_image(b"<html>nope</html>", "edit", {}, "image/jpeg", None).problems[0].startswith(
        "not a readable image")
    assert "far more than" in check_image(_image((2000, 1100), "JPEG"), "edit", {}, "image/jpeg", None).problems[0]


def test_the_output_dir_writes_atomically_refuses_escapes_and_spots_stale_files(tmp_path):
    out = OutputDir(tmp_path / "out")
    sha = out.write(["a/x.png", "b/y.png"], b"bytes")
    assert (tmp_path / "out/a/x.png").read_bytes() == b"bytes" and not list((tmp_path / "out").rglob("*.part"))
    assert not out.is_stale(["a/x.png"], {"a/x.png": sha})
    (tmp_path / "out/a/x.png").write_bytes(b"other")
    assert out.is_stale(["a/x.png"], {"a/x.png": sha})
    assert out.is_stale(["c.png"], {})
    with pytest.raises(PixbatchError, match="escapes the output directory"):
        out.target("../outside.png")


# -- how a run ends -----------------------------------------------------------------------------

def test_a_stop_reason_replaces_only_a_lower_one():
    assert StopReason.INTERRUPT.replaces(StopReason.BUDGET)
    assert StopReason.BALANCE.replaces(StopReason.INTERRUPT)
    assert StopReason.AUTH.replaces(StopReason.BALANCE)
    assert not StopReason.INTERRUPT.replaces(StopReason.BALANCE)
    assert not StopReason.BALANCE.replaces(StopReason.BALANCE)  # the first stays
    assert all(r.replaces(None) for r in StopReason)


def test_the_conclusion_names_the_narrowest_next_step():
    c = conclude(None, None, {st.COMPLETED: 3}, left=(0, 0, 0), budget=None, at_risk=0, output_problems=0)
    assert (c.outcome, c.exit_code, c.messages) == ("completed", 0, ())
    c = conclude(StopReason.BUDGET, "x", {st.COMPLETED: 1, st.PENDING: 2, st.AMBIGUOUS: 1}, left=(2, 5000, 10000),
                 budget=20_000, at_risk=10_000, output_problems=1)
    assert (c.outcome, c.exit_code) == ("budget", 3)
    assert c.messages[0].startswith("Stopped at the budget ($0.02): 2 item(s) left, which would cost $0.005 to $0.01")
    assert any("--retry-ambiguous" in m and "$0.01 at risk" in m for m in c.messages)
    assert c.messages[-1] == "1 output(s) failed their checks: `pixbatch failures` lists them."
    c = conclude(None, None, {st.COMPLETED: 1, st.ERROR: 1}, left=(0, 0, 0), budget=None, at_risk=0,
                 output_problems=0)
    assert (c.outcome, c.exit_code) == ("incomplete", 1) and any("--retry-errors" in m for m in c.messages)
    # FAILED items are charged: the hint is --retry-failed (those only), never --force (everything again)
    c = conclude(None, None, {st.COMPLETED: 5, st.FAILED: 2, st.BLOCKED: 2, st.BAD_INPUT: 1}, left=(0, 0, 0),
                 budget=None, at_risk=0, output_problems=0)
    text = "\n".join(c.messages)
    assert "--retry-failed" in text and "--force" not in text and "--no-preflight" in text
    assert "pixbatch failures" in text
    # a pilot run (--limit) is complete when what it selected is
    c = conclude(None, None, {st.COMPLETED: 2, st.PENDING: 8}, left=(0, 0, 0), budget=None, at_risk=0,
                 output_problems=0, unselected=8)
    assert (c.outcome, c.exit_code) == ("completed", 0) and "Pilot run: 8 item(s)" in c.messages[-1]


# -- options ------------------------------------------------------------------------------------

def test_every_option_belongs_to_a_group_and_is_recorded_unless_marked_private():
    groups = {f.name: f.metadata.get("group") for f in fields(RunOptions)}
    assert set(groups.values()) == {SPENDING, TUNING, PROCESS}
    o = RunOptions(api_key="secret-key", budget_micros=5, state_path=Path("x.duckdb"), pricing_path=Path("p.json"))
    rec = o.recorded()
    assert "api_key" not in rec and "secret-key" not in json.dumps(rec)
    assert rec["budget_micros"] == 5 and rec["pricing_path"] == "p.json"
    private = {f.name for f in fields(RunOptions) if not f.metadata.get("record", True)}
    assert set(rec) == set(groups) - private
    assert o.group(SPENDING) == {"budget_micros": 5, "retry_ambiguous": False, "retry_errors": False,
                                 "retry_failed": False, "force": False, "steps": None, "limit": None, "preflight": True}
    assert default("concurrency") == 16


# -- the resume fingerprint -----------------------------------------------------------------------

def test_the_fingerprint_hashes_every_module_the_expansion_imports():
    """Imported for real in a fresh interpreter: every pixbatch module loaded by the expansion's
    roots must be one the fingerprint hashes (a moved file cannot silently disable resume)."""
    code = ("import sys, pixbatch.expand, pixbatch.manifest, pixbatch.pricing\n"
            "print('\\n'.join(m.__file__ for n, m in sys.modules.items() if n.startswith('pixbatch') and "
            "getattr(m, '__file__', None)))")
    loaded = {Path(p).resolve() for p in subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                                        check=True).stdout.split()}
    hashed = set(expansion_modules())
    assert loaded <= hashed, f"not in the fingerprint: {sorted(str(p.relative_to(PACKAGE_DIR)) for p in loaded - hashed)}"
    assert PACKAGE_DIR / "expand.py" in hashed and PACKAGE_DIR / "items.py" in hashed


def test_items_left_unsent_name_the_latest_gateway_error():
    c = conclude(None, None, {st.COMPLETED: 1, st.PENDING: 2}, left=(2, 0, 0), budget=None, at_risk=0,
                 output_problems=0, last_error="POST /v1/edit: HTTP 503")
    assert c.outcome == "incomplete" and any(
        "the latest gateway error: POST /v1/edit: HTTP 503" in m for m in c.messages)
