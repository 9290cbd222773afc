"""An ``Estimate`` (or a plan) shown: as JSON (``estimate_to_dict``: every amount as integer
micros and as a decimal string) and as rich tables with its headline, the uncertain prices
with their fix, probe errors and assumptions (``render_estimate``; ``pixbatch estimate`` and,
before it starts, ``pixbatch run``)."""

from __future__ import annotations

from typing import Any

from .estimate import Estimate, committed_micros
from .money import format_usd, micros_to_decimal
from .plan import AT_RISK, CATEGORIES, IN_FLIGHT, NOT_SENT, PAID


def _usd(micros: int) -> str:
    return str(micros_to_decimal(micros))


def _money(micros: int) -> dict[str, Any]:
    return {"micros": micros, "usd": _usd(micros)}


def estimate_to_dict(est: Estimate, *, budget_micros: int | None = None) -> dict[str, Any]:
    """A JSON-ready estimate: every amount as integer micros and as a decimal string.

    ``total`` is what is still to pay; ``plan`` (None when no state file was read) what the
    state file already holds of this manifest, per category and per step and tier.
    """
    s = est.sizes
    held = committed_micros(est)
    return {
        "total": {"low": _money(est.low_micros), "high": _money(est.high_micros), "exact": est.exact},
        "budget": None if budget_micros is None else {
            **_money(budget_micros), "fits": held + est.high_micros <= budget_micros},
        "item_count": est.item_count,
        "duplicates": est.duplicates,
        "lines": [
            {"step": x.step, "op": x.op, "tier": x.tier, "count": x.count, "exact": x.exact,
             "unit_low": _money(x.unit_low_micros), "unit_high": _money(x.unit_high_micros),
             "subtotal_low": _money(x.subtotal_low_micros), "subtotal_high": _money(x.subtotal_high_micros),
             "reason": x.reason}
            for x in est.lines
        ],
        "uncertain": [{"step": u.step, "reason": u.reason, "count": u.count, "examples": list(u.examples),
                       "unit_low": _money(u.low_micros), "unit_high": _money(u.high_micros),
                       "suggestion": u.suggestion}
                      for u in est.uncertain],
        "plan": None if est.state_path is None else {
            "state_file": est.state_path,
            "still_to_pay": {"items": est.to_pay_count, "low": _money(est.low_micros), "high": _money(est.high_micros)},
            **{cat: {"items": est.category_total(cat)[0], **_money(est.category_total(cat)[1])} for cat in CATEGORIES},
            "lines": [{"step": x.step, "op": x.op, "tier": x.tier, "category": x.category, "count": x.count,
                       **_money(x.micros)} for x in est.plan],
        },
        "state_note": est.state_note,
        "sizes": None if s is None else {
            "declared": s.declared, "needed": s.needed, "probed": s.probed, "cached": s.cached,
            "unknown": s.unknown, "probing": s.probing, "cache_note": s.cache_note,
            "probe_errors": [{"url": f.url, "error": f.error, "inputs": list(f.input_ids)} for f in s.failures],
        },
        "price_table": {"source": est.table_source, "effective_date": est.table_effective_date,
                        "path": est.table_path},
        "assumptions": list(est.assumptions),
    }


def _rng(lo: int, hi: int) -> str:
    return format_usd(hi) if lo == hi else f"{format_usd(lo)} - {format_usd(hi)}"


def headline(est: Estimate) -> str:
    """The estimate's one line: the total (still to pay, with a plan), exact or a range."""
    how = ("exact" if est.exact else f"a range: {est.uncertain_count:,} items have an uncertain price")
    if est.state_path is None or not est.plan:
        if est.exact:
            return f"Total: {est.total_text()} (exact) for {est.item_count:,} requests"
        return f"Total: {est.total_text()} ({how})"
    parts = []
    for cat, what in ((PAID, "already paid (reused)"), (IN_FLIGHT, "reserved in flight"),
                      (AT_RISK, "at risk (AMBIGUOUS)")):
        n, micros = est.category_total(cat)
        if n:
            parts.append(f"{format_usd(micros)} {what} for {n:,}")
    n_not, _ = est.category_total(NOT_SENT)
    if n_not:
        parts.append(f"{n_not:,} not sent again")
    return (f"Still to pay: {est.total_text()} ({how}) for {est.to_pay_count:,} of {est.item_count:,} requests; "
            + "; ".join(parts))


def render_estimate(est: Estimate, console: Any, *, budget_micros: int | None = None,
                    max_errors: int = 20, title: str | None = None) -> None:
    """Print the estimate (a plan when a state file holds some of it) as rich tables: lines, total,
    uncertain items with their fix, probe errors, assumptions."""
    from rich.table import Table

    if est.plan:
        _render_plan_table(est, console, title or "Plan")
    else:
        t = Table(title=title or "Estimate", show_footer=True)
        t.add_column("step", footer="total")
        t.add_column("op")
        t.add_column("price tier")
        t.add_column("count", justify="right", footer=f"{est.item_count:,}")
        t.add_column("unit", justify="right")
        t.add_column("subtotal", justify="right", footer=est.total_text())
        for x in est.lines:
            t.add_row(x.step, x.op, x.tier, f"{x.count:,}", _rng(x.unit_low_micros, x.unit_high_micros),
                      _rng(x.subtotal_low_micros, x.subtotal_high_micros))
        console.print(t)
    console.print(headline(est), markup=False, highlight=False)
    if est.state_note:
        console.print(est.state_note, markup=False, highlight=False)
    if budget_micros is not None:
        held = committed_micros(est)
        verdict = "fits" if held + est.high_micros <= budget_micros else "EXCEEDS"
        what = (f"{format_usd(held)} held + {format_usd(est.high_micros)} still to pay at most" if held
                else f"the upper bound {format_usd(est.high_micros)}")
        console.print(f"Budget: {format_usd(budget_micros)} ({verdict} {what})", markup=False, highlight=False)
    if est.uncertain:
        console.print("\nUncertain prices:")
        for u in est.uncertain:
            each = f" cost {_rng(u.low_micros, u.high_micros).replace(' - ', '-')} each" if u.high_micros else ""
            console.print(f"  {u.step}: {u.count:,} items{each}: {u.reason}", markup=False, highlight=False)
            if u.suggestion:
                console.print(f"      fix: {u.suggestion}", markup=False, highlight=False)
            for ex in u.examples:
                console.print(f"      e.g. {ex}", markup=False, highlight=False)
    if est.sizes is not None and est.sizes.failures:
        fails = est.sizes.failures
        console.print(f"\nBad inputs ({len(fails):,} URLs cannot be fetched or are not images):", highlight=False)
        console.print("  priced as a range here; `run` checks them again before sending, and leaves their items "
                      "BAD_INPUT (not sent, not charged) unless they are fixed.", markup=False, highlight=False)
        for f in fails[:max_errors]:
            ids = ", ".join(f.input_ids)
            console.print(f"  input {ids}: {f.url}: {f.error}", markup=False, highlight=False)
        if len(fails) > max_errors:
            console.print(f"  ... and {len(fails) - max_errors:,} more (see --json)")
    console.print("\nAssumptions:")
    for a in est.assumptions:
        console.print(f"  - {a}", markup=False, highlight=False)


def _render_plan_table(est: Estimate, console: Any, title: str) -> None:
    """One row per step, operation and tier: what is paid, in flight, at risk, not sent, and still to pay."""
    from rich.table import Table

    rows: dict[tuple[str, str, str], dict[str, Any]] = {}
    for p in est.plan:
        r = rows.setdefault((p.step, p.op, p.tier), {})
        r[p.category] = (r.get(p.category, (0, 0))[0] + p.count, r.get(p.category, (0, 0))[1] + p.micros)
    for ln in est.lines:
        rows.setdefault((ln.step, ln.op, ln.tier), {})["line"] = ln
    steps: list[str] = []
    for step, _, _ in rows:
        if step not in steps:
            steps.append(step)

    def cell(r: dict[str, Any], cat: str, money: bool = True) -> str:
        n, micros = r.get(cat, (0, 0))
        if not n:
            return ""
        return f"{n:,} ({format_usd(micros)})" if money else f"{n:,}"

    t = Table(title=f"{title} (state file {est.state_path})", show_footer=True)
    totals = {cat: est.category_total(cat) for cat in CATEGORIES}
    t.add_column("step", footer="total")
    t.add_column("op")
    t.add_column("price tier")
    t.add_column("paid (reused)", justify="right",
                 footer=f"{totals[PAID][0]:,} ({format_usd(totals[PAID][1])})" if totals[PAID][0] else "")
    t.add_column("in flight", justify="right",
                 footer=f"{totals[IN_FLIGHT][0]:,} ({format_usd(totals[IN_FLIGHT][1])})" if totals[IN_FLIGHT][0] else "")
    t.add_column("at risk", justify="right",
                 footer=f"{totals[AT_RISK][0]:,} ({format_usd(totals[AT_RISK][1])})" if totals[AT_RISK][0] else "")
    t.add_column("not sent", justify="right", footer=f"{totals[NOT_SENT][0]:,}" if totals[NOT_SENT][0] else "")
    t.add_column("to pay", justify="right", footer=f"{est.to_pay_count:,}")
    t.add_column("unit", justify="right")
    t.add_column("still to pay", justify="right", footer=est.total_text())
    for step in steps:
        for (s, op, tier), r in rows.items():
            if s != step:
                continue
            x = r.get("line")
            t.add_row(s, op, tier, cell(r, PAID), cell(r, IN_FLIGHT), cell(r, AT_RISK), cell(r, NOT_SENT, False),
                      f"{x.count:,}" if x else "", _rng(x.unit_low_micros, x.unit_high_micros) if x else "",
                      _rng(x.subtotal_low_micros, x.subtotal_high_micros) if x else "")
    console.print(t)
