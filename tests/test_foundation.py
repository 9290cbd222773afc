"""Pricing, sizes, money and item keys: the pure core every command builds on."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest
from hypothesis import given, strategies as st

from pixbatch.errors import PricingError
from pixbatch.items import WorkItem, item_key, resolve_body, upstream_ref
from pixbatch.money import format_usd, usd_to_micros
from pixbatch.pricing import PriceTable
from pixbatch import sizes as sizes_mod
from pixbatch.sizes import MEGAPIXEL, edit_output_size, target_size, upscale_output_size


def test_item_keys_are_pinned():
    # These values must never change: state files and caches depend on them.
    assert item_key("upscale", {"image": "https://x.test/a.png"}) == "b2d028355a44a4ea4e0af14faf37c222"
    assert item_key("edit", {"prompt": "make it red", "images": ["https://x.test/a.png"], "seed": 1}) == item_key(
        "edit", {"seed": 1, "images": ["https://x.test/a.png"], "prompt": "make it red", "turbo": True}
    )


def test_defaults_and_number_spelling_do_not_change_the_key():
    a = item_key("upscale", {"image": "https://x.test/a.png"})
    assert a == item_key("upscale", {"image": "https://x.test/a.png", "target": 4.0, "upscale_mode": "target"})
    assert a != item_key("upscale", {"image": "https://x.test/a.png", "target": 5})
    assert a != item_key("edit", {"prompt": "p", "images": ["https://x.test/a.png"]})


def test_upstream_placeholder_is_resolved_at_send_time():
    up = WorkItem.build(step="e", op="edit", body={"prompt": "p", "images": ["https://x.test/a.png"]},
                        input_id="a", output_name="e/a.jpg")
    down = WorkItem.build(step="u", op="upscale", body={"image": upstream_ref(up.key)}, input_id="a",
                          output_name="u/a.jpg", upstream=up.key)
    assert resolve_body(down, {up.key: "https://cdn.test/out.jpg"})["image"] == "https://cdn.test/out.jpg"


def test_money_is_exact():
    assert usd_to_micros("0.005") == 5000
    assert usd_to_micros(Decimal("25.00")) == 25_000_000
    assert format_usd(5000) == "$0.005"
    assert format_usd(1_200_000) == "$1.20"
    with pytest.raises(TypeError):
        usd_to_micros(0.1)
    with pytest.raises(ValueError):
        usd_to_micros("0.0000001")


def test_builtin_price_table():
    t = PriceTable.load()
    assert [x.price_micros for x in t.upscale_tiers] == [5000, 10000]
    assert t.edit_tier.price_micros == 10000
    assert t.is_charged("COMPLETED") and t.is_charged("FAILED") and not t.is_charged("ERROR")


def test_exactly_four_megapixels_is_the_lower_tier():
    t = PriceTable.load()
    assert t.price("upscale", {"upscale_mode": "target", "target": 4}, None).high_micros == 5000
    assert t.price("upscale", {"upscale_mode": "target", "target": 5}, None).high_micros == 10000
    # 1000x1000 x2 = 2000x2000 = exactly 4 MP
    assert t.price("upscale", {"upscale_mode": "factor", "factor": 2}, (1000, 1000)).high_micros == 5000
    assert t.price("upscale", {"upscale_mode": "factor", "factor": 2}, (1000, 1001)).high_micros == 10000


def test_unknown_size_in_factor_mode_is_a_range():
    p = PriceTable.load().price("upscale", {"upscale_mode": "factor", "factor": 2}, None)
    assert (p.low_micros, p.high_micros) == (5000, 10000) and not p.exact and "unknown" in p.reason


def test_price_table_is_data(tmp_path):
    data = json.loads(PriceTable.load.__func__.__globals__["resources"].files("pixbatch").joinpath("data/pricing.json").read_text())
    data["operations"]["edit"]["tiers"][0]["price_usd"] = "0.02"
    p = tmp_path / "prices.json"
    p.write_text(json.dumps(data))
    assert PriceTable.load(p).edit_tier.price_micros == 20000
    data["operations"]["edit"]["tiers"][0]["price_usd"] = 0.02  # a float: refused
    p.write_text(json.dumps(data))
    with pytest.raises(PricingError, match="price_usd"):
        PriceTable.load(p)
    with pytest.raises(PricingError, match="does not exist"):
        PriceTable.load(tmp_path / "missing.json")


sizes = st.tuples(st.integers(1, 6000), st.integers(1, 6000))


@given(sizes, st.integers(1, 8))
def test_target_mode_never_exceeds_target(size, target):
    w, h = target_size(size, target)
    assert w * h <= target * MEGAPIXEL
    # and is as large as the ratio allows (one more pixel on both sides overshoots)
    assert (w + 1) * (h + 1) > target * MEGAPIXEL


@given(sizes, st.floats(1, 8, allow_nan=False).map(lambda f: round(f, 2)))
def test_factor_mode_is_capped_at_8mp(size, factor):
    w, h = upscale_output_size(size, "factor", factor=factor)
    assert w * h <= 8 * MEGAPIXEL


@given(sizes, st.sampled_from(["match_input_image", "1:1", "16:9", "9:16", "4:3", "3:4", "3:2", "2:3"]))
def test_edit_output_is_about_one_megapixel(size, ratio):
    w, h = edit_output_size(size, ratio)
    assert w % 16 == 0 and h % 16 == 0
    if ratio != "match_input_image" or 0.25 < size[0] / size[1] < 4:
        assert 0.8 * MEGAPIXEL < w * h < 1.3 * MEGAPIXEL


@given(sizes, st.integers(1, 8), st.floats(1, 8).map(lambda f: round(f, 2)))
def test_every_upscale_price_is_a_tier_and_integer(size, target, factor):
    t = PriceTable.load()
    for body in ({"upscale_mode": "target", "target": target}, {"upscale_mode": "factor", "factor": factor}):
        p = t.price("upscale", body, size)
        assert isinstance(p.high_micros, int) and {p.low_micros, p.high_micros} <= {5000, 10000}
        # exact unless the output's tier depends on what one MP is or on the rounding
        tiers = {t.upscale_tier_for_size(out, m) for out, (m, _) in
                 sizes_mod.possible_output_sizes("upscale", body, size).items()}
        tiers |= {t.upscale_tier_for_size(sizes_mod.output_size("upscale", body, size, megapixel=m, rounding=r), m)
                  for m in sizes_mod.MEGAPIXEL_READINGS for r in sizes_mod.ROUNDINGS}
        assert p.exact == (len(tiers) == 1)
