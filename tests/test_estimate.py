"""Dry-run estimates: the pure aggregation, then `pixbatch estimate` end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from decimal import Decimal

import pytest
from click.testing import CliRunner
from hypothesis import given, settings, strategies as st

from pixbatch.estimate import EstimateBuilder, estimate_items, estimate_to_dict
from pixbatch.items import WorkItem, upstream_ref
from pixbatch.pricing import PriceTable

TABLE = PriceTable.load()


def up(image: str, *, step: str = "up", size=None, input_id: str = "a", **body) -> WorkItem:
    return WorkItem.build(step=step, op="upscale", body={"image": image, **body}, input_id=input_id,
                          output_name=f"{step}/{input_id}.jpg", input_size=size)


def edit(image: str, seed: int, *, step: str = "ed", input_id: str = "a", size=None) -> WorkItem:
    return WorkItem.build(step=step, op="edit", body={"prompt": "p", "images": [image], "seed": seed},
                          input_id=input_id, output_name=f"{step}/{input_id}-{seed}.jpg", input_size=size)


# -- the pure aggregation --------------------------------------------------------------


def test_lines_per_step_and_tier_with_exact_totals():
    items = [edit(f"https://x.test/{i}.png", seed) for i in range(3) for seed in (1, 2)]
    items += [up(f"https://x.test/{i}.png", step="big", target=8) for i in range(3)]
    items += [up(f"https://x.test/{i}.png", step="small", upscale_mode="factor", factor=2, size=(1000, 1000))
              for i in range(2)]
    est = estimate_items(items, TABLE)
    got = [(x.step, x.tier, x.count, x.unit_micros, x.subtotal_micros) for x in est.lines]
    assert got == [("ed", "edit", 6, 10_000, 60_000), ("big", "upscale 4-8MP", 3, 10_000, 30_000),
                   ("small", "upscale <=4MP", 2, 5_000, 10_000)]
    assert (est.low_micros, est.high_micros, est.item_count, est.exact) == (100_000, 100_000, 11, True)
    assert est.total_text() == "$0.10"


def test_unknown_size_is_a_range_with_reason_and_examples():
    items = [up(f"https://x.test/{i}.png", upscale_mode="factor", input_id=f"i{i}") for i in range(5)]
    b = EstimateBuilder(TABLE, cause=lambda it: ("size not declared", f"{it.input_id}!"), max_examples=2)
    for it in items:
        b.add(it)
    est = b.build()
    (line,) = est.lines
    assert (line.tier, line.count, line.uncertain_count) == ("upscale <=4MP .. upscale 4-8MP", 5, 5)
    assert (est.low_micros, est.high_micros, est.exact) == (25_000, 50_000, False)
    (u,) = est.uncertain
    assert u.count == 5 and u.reason.endswith(": size not declared") and "unknown" in u.reason
    assert u.examples == ("up/i0.jpg (input i0): i0!", "up/i1.jpg (input i1): i1!")


def test_an_identical_request_is_counted_once():
    a = up("https://x.test/a.png", step="s1")
    again = up("https://x.test/a.png", step="s2")  # same body, another step: same key
    est = estimate_items([a, again], TABLE)
    assert (est.item_count, est.duplicates, est.high_micros) == (1, 1, 5_000)


def test_json_amounts_are_integers_and_decimal_strings():
    est = estimate_items([edit("https://x.test/a.png", 1), up("https://x.test/a.png", upscale_mode="factor")], TABLE)
    d = estimate_to_dict(est, budget_micros=12_000)
    assert d["total"] == {"low": {"micros": 15_000, "usd": "0.015"}, "high": {"micros": 20_000, "usd": "0.02"},
                          "exact": False}
    assert d["budget"] == {"micros": 12_000, "usd": "0.012", "fits": False}
    json.dumps(d)  # serialisable as is

    def no_floats(v):
        assert not isinstance(v, float)
        for x in (v.values() if isinstance(v, dict) else v if isinstance(v, list) else ()):
            no_floats(x)

    no_floats(d)


@st.composite
def work_items(draw):
    n_inputs = draw(st.integers(1, 6))
    out = []
    for _ in range(draw(st.integers(0, 40))):
        i = draw(st.integers(0, n_inputs - 1))
        url = f"https://x.test/{i}.png"
        size = draw(st.none() | st.tuples(st.integers(1, 5000), st.integers(1, 5000)))
        kind = draw(st.sampled_from(["edit", "target", "factor"]))
        step = draw(st.sampled_from(["s1", "s2", "s3"]))
        if kind == "edit":
            out.append(edit(url, draw(st.integers(0, 3)), step=step, input_id=str(i), size=size))
        elif kind == "target":
            out.append(up(url, step=step, input_id=str(i), size=size, target=draw(st.integers(1, 8))))
        else:
            factor = draw(st.sampled_from([1, 1.5, 2, 3, 8]))
            out.append(up(url, step=step, input_id=str(i), size=size, upscale_mode="factor", factor=factor))
    return out


@settings(max_examples=200, deadline=None)
@given(work_items())
def test_aggregation_properties(items):
    est = estimate_items(items, TABLE)
    assert est.low_micros == sum(x.subtotal_low_micros for x in est.lines)
    assert est.high_micros == sum(x.subtotal_high_micros for x in est.lines)
    assert est.low_micros <= est.high_micros
    assert all(isinstance(v, int) for v in (est.low_micros, est.high_micros, *(x.unit_micros for x in est.lines)))
    assert est.item_count == len({it.key for it in items}) == sum(x.count for x in est.lines)
    assert est.item_count + est.duplicates == len(items)
    assert est.uncertain_count == sum(x.uncertain_count for x in est.lines)
    # the upper bound is what the items would cost if each were charged at its dearest tier
    first = {}
    for it in items:
        first.setdefault(it.key, it)
    assert est.high_micros == sum(TABLE.price(it.op, it.body, it.input_size).high_micros for it in first.values())
    assert est.exact == (est.uncertain_count == 0)
