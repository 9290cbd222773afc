"""Honest prices, unit by unit: ranges where a price rests on a guess (and why, and the fix),
what completed outputs teach, output checks that tolerate rounding, and the README's table of
boundary cases checked against the price table and the emulator's ledger rule."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
from PIL import Image

from pixbatch import sizes
from pixbatch.emulator import SizeRule
from pixbatch.estimate import EstimateBuilder, suggestion
from pixbatch.items import WorkItem, upstream_ref
from pixbatch.knowledge import Learner, Observation, learn, price_item
from pixbatch.money import format_usd, usd_to_micros
from pixbatch.pricing import REASON_ASSUMED, REASON_ROUNDING, REASON_UNKNOWN, PriceTable
from pixbatch.runner.outputs import check_image

TABLE = PriceTable.load()
LOW, HIGH = 5_000, 10_000
M6, M20 = 1_000_000, 1_048_576
FACTOR = {"upscale_mode": "factor", "factor": 2}
README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def span(p):
    return p.low_micros, p.high_micros


# -- the price table says which reading of MP is the default -----------------------------------


def test_the_table_names_the_default_reading_and_the_possible_ones():
    assert (TABLE.megapixel, TABLE.megapixels) == (M6, (M6, M20))
    assert "2^20" in TABLE.megapixel_note and not TABLE.reading_known
    known = TABLE.knowing(M20)
    assert known.megapixels == (M20,) and known.reading_known and known.megapixel == M20


def test_a_table_without_the_reading_gets_both_and_a_default_outside_them_is_refused(tmp_path):
    import json

    from pixbatch.errors import PricingError

    data = json.loads((Path(__file__).resolve().parent.parent / "pixbatch/data/pricing.json").read_text())
    del data["operations"]["upscale"]["megapixel"]
    assert PriceTable.from_dict(data).megapixels == (M6, M20)
    data["operations"]["upscale"]["megapixel"] = {"default": M20, "possible": [M6]}
    with pytest.raises(PricingError, match="not one of the possible readings"):
        PriceTable.from_dict(data)
    data["operations"]["upscale"]["megapixel"] = {"default": M20, "possible": [M20]}
    t = PriceTable.from_dict(data)
    assert span(t.price("upscale", FACTOR, (1024, 1024))) == (LOW, LOW)  # 4 x 2^20: certain, the lower tier


# -- boundaries: exactly 4,000,000; 4,000,001; 4,194,304; the 8 MP cap ---------------------------


@pytest.mark.parametrize("size, expected", [
    ((2000, 2000), (LOW, LOW)),  # exactly 4,000,000 px: the lower tier under both readings
    ((41, 97561), (LOW, HIGH)),  # 4,000,001 px: above 4 x 10^6, below 4 x 2^20
    ((2048, 2048), (LOW, HIGH)),  # 4,194,304 px = 4 x 2^20
    ((2049, 2048), (HIGH, HIGH)),  # above either boundary
    ((2000, 4000), (HIGH, HIGH)),  # exactly 8,000,000
    ((8192, 8192), (HIGH, HIGH)),  # far over the cap: capped at 8 MP, the top tier
])
def test_a_known_output_between_the_readings_is_a_range(size, expected):
    p = TABLE.price("upscale", {"upscale_mode": "factor", "factor": 1}, size)
    assert span(p) == expected
    assert p.exact == (expected[0] == expected[1])
    if not p.exact:
        assert "4,000,000..4,194,304 px" in p.reason


def test_target_mode_is_exact_under_every_reading():
    for target in range(1, 9):
        p = TABLE.price("upscale", {"upscale_mode": "target", "target": target}, None)
        assert p.exact and p.high_micros == (LOW if target <= 4 else HIGH)


def test_an_unknown_input_is_a_range_with_its_reason():
    p = TABLE.price("upscale", FACTOR, None)
    assert span(p) == (LOW, HIGH) and p.reason == REASON_UNKNOWN


def test_a_predicted_input_is_a_range_even_when_the_prediction_is_clear_of_the_boundary():
    # 1000x1000 x2 = exactly 4 MP: certain when the input is real, not when it is a prediction
    assert TABLE.price("upscale", FACTOR, (1000, 1000)).exact
    p = TABLE.price("upscale", FACTOR, (1000, 1000), assumed=True)
    assert span(p) == (LOW, HIGH) and p.reason == REASON_ASSUMED
    # far from any boundary, a prediction still prices exactly
    assert TABLE.price("upscale", FACTOR, (600, 400), assumed=True).exact


def test_the_published_edit_sizes_are_inside_what_a_prediction_is_trusted_to():
    # one model listing, the maker's example, and the emulator's documented example (issue 12)
    published = {"16:9": [(1376, 768), (1344, 768)], "4:3": [(1184, 896), (1152, 864)], "3:2": [(1248, 832)],
                 "1:1": [(1024, 1024)]}
    for ratio, seen in published.items():
        lo, hi = sizes.assumed_bounds(sizes.edit_output_size(None, ratio))
        for w, h in seen:
            assert lo[0] <= w <= hi[0] and lo[1] <= h <= hi[1], (ratio, (w, h))


def test_rounding_that_decides_the_tier_is_a_range():
    # 1333 x 1.5 = 1999.5 -> 2000 (half to even) or 1999; 2000 x 2000 = 4 MP exactly, 1999 x 2000 below
    body = {"upscale_mode": "factor", "factor": 1.5}
    assert TABLE.price("upscale", body, (1333, 1333)).exact  # both roundings: the lower tier
    p = TABLE.price("upscale", {"upscale_mode": "factor", "factor": 1.5}, (1335, 1333))
    # 2002 or 2002 x 2000 or 1999: above 4,000,000 either way but under 2^20 -> a boundary range
    assert not p.exact
    # a case where only the rounding matters: under 2^20 both are low, under 10^6 floor is low and round high
    t20 = TABLE.knowing(M6)
    q = t20.price("upscale", {"upscale_mode": "factor", "factor": 1.5}, (1333, 1334))  # 1999.5 x 2001
    assert span(q) == (LOW, HIGH) and q.reason == REASON_ROUNDING


# -- the README's table of boundary cases -------------------------------------------------------


def readme_rows():
    block = README.split("<!-- boundary-cases")[1].split("\n\n")[0]
    return [[c.strip() for c in line.strip("|").split("|")] for line in block.splitlines()[3:]]


def test_the_readme_boundary_table_is_what_pixbatch_and_the_emulator_charge():
    rows = readme_rows()
    assert len(rows) == 7
    for label, if_m6, if_m20, estimate in rows:
        if label.startswith("`target:"):
            body = {"upscale_mode": "target", "target": int(re.search(r"\d+", label).group())}
            size = (1000, 1000)
        else:
            w, h = map(int, re.match(r"(\d+)x(\d+)", label).groups())
            factor = int(re.search(r"factor (\d+)", label).group(1)) if "factor" in label else 1
            body, size = {"upscale_mode": "factor", "factor": factor}, (w, h)
        for m, text in ((M6, if_m6), (M20, if_m20)):
            rule = SizeRule(megapixel=m)
            out = rule.upscale_size(size, body)
            assert format_usd(rule.charge(TABLE, "upscale", "COMPLETED", body, out)) == text, (label, m)
            assert format_usd(TABLE.knowing(m).charge_for("upscale", "COMPLETED", out, body, size)) == text
        p = TABLE.price("upscale", body, size)
        shown = format_usd(p.high_micros) if p.exact else f"{format_usd(p.low_micros)} - {format_usd(p.high_micros)}"
        assert shown == estimate, label
    assert "(2828x2828 or 2896x2896)" in rows[4][0]
    assert sizes.factor_size((1024, 1024), 8, M6) == (2828, 2828)
    assert sizes.factor_size((1024, 1024), 8, M20) == (2896, 2896)


# -- what completed outputs teach -----------------------------------------------------------------


def target_obs(target, size, key="t" * 32):
    return Observation(key, "upscale", {"upscale_mode": "target", "target": target}, None, size)


def test_a_target_output_teaches_the_reading_of_mp():
    for m in (M6, M20):
        out = sizes.target_size((1600, 1200), 1, m)
        k = learn([target_obs(1, out)], TABLE)
        assert k.megapixel == m and "target 1" in k.megapixel_evidence
        assert k.table(TABLE).megapixels == (m,)
    # a factor output only teaches near the cap: 2048x4096 x1 is kept under 2^20 and capped under 10^6
    capped = Observation("f" * 32, "upscale", {"upscale_mode": "factor", "factor": 1}, (2048, 4096), (2000, 4000))
    assert learn([capped], TABLE).megapixel == M6
    plain = Observation("f" * 32, "upscale", FACTOR, (600, 400), (1200, 800))
    assert learn([plain], TABLE).megapixel is None
    # an output that fits neither reading teaches nothing; nor does a contradiction
    assert learn([target_obs(1, (500, 500))], TABLE).megapixel is None
    both = [target_obs(1, sizes.target_size((1600, 1200), 1, M6)), target_obs(1, sizes.target_size((1600, 1200), 1, M20))]
    assert learn(both, TABLE).megapixel == M6  # the first decides; the second contradicts it and is ignored


def test_one_edit_teaches_the_size_of_the_rest_of_its_ratio():
    edit = Observation("e" * 32, "edit", {"aspect_ratio": "16:9"}, (1920, 1080), (1344, 768))
    k = learn([edit], TABLE)
    assert k.edit_sizes[(1360, 768)][0] == (1344, 768)
    assert any("1360x768" in a and "1344x768" in a for a in k.assumptions(TABLE))
    # a downstream of another 16:9 edit (not run) is priced from 1344x768: 2688x1536 = 4,128,768 px
    price, basis, real = price_item(TABLE, k, "upscale", FACTOR, (1360, 768), chained=True, upstream_op="edit")
    assert basis == (1344, 768) and not real and span(price) == (LOW, HIGH)  # still between the readings
    k20 = learn([edit, target_obs(1, sizes.target_size((1600, 1200), 1, M20))], TABLE)
    price, _, _ = price_item(TABLE, k20, "upscale", FACTOR, (1360, 768), chained=True, upstream_op="edit")
    assert price.exact and price.high_micros == LOW
    # the real output of its own upstream beats anything learned
    price, basis, real = price_item(TABLE, k20, "upscale", FACTOR, (1360, 768), chained=True, upstream_op="edit",
                                    upstream_output=(1376, 768))
    assert basis == (1376, 768) and real and price.high_micros == HIGH


def test_the_learner_tells_when_the_reading_became_known():
    learner = Learner(TABLE)
    assert not learner.observe(Observation("e" * 32, "edit", {"aspect_ratio": "1:1"}, None, (1024, 1024)))
    assert learner.observe(target_obs(4, sizes.target_size((1000, 1000), 4, M20)))
    assert learner.table.megapixels == (M20,)
    assert not learner.observe(target_obs(4, sizes.target_size((1000, 1000), 4, M20)))


# -- the fix the estimate suggests ------------------------------------------------------------------


def test_an_uncertain_group_names_its_price_range_and_the_fix():
    up = WorkItem.build(step="recolor", op="edit", body={"prompt": "p", "images": ["https://x.test/a.png"],
                                                         "aspect_ratio": "16:9"}, input_id="a", output_name="a.jpg")
    items = [WorkItem.build(step="hires", op="upscale", body={"image": upstream_ref(up.key), **FACTOR},
                            input_id=f"a{i}", output_name=f"hires/{i}.jpg", upstream=up.key, input_size=(1360, 768))
             for i in range(24)]
    b = EstimateBuilder(TABLE, upstream_ops={"hires": "edit"}, dedupe=False)
    for it in items:
        b.add(it)
    est = b.build()
    (u,) = est.uncertain
    assert (u.step, u.count, u.low_micros, u.high_micros) == ("hires", 24, LOW, HIGH)
    assert u.suggestion == ("`upscale_mode: target` with `target: 4` prices them at $0.005 each, exactly "
                            "(about the same size: 4 MP)")
    assert suggestion(TABLE, "upscale", FACTOR, None).startswith("`upscale_mode: target` with `target: 4`")
    assert suggestion(TABLE, "edit", {}, None) is None


# -- output checks tolerate rounding ------------------------------------------------------------


def _png(size):
    buf = io.BytesIO()
    Image.new("RGB", size).save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.parametrize("body, input_size, got", [
    ({"upscale_mode": "factor", "factor": 1.5, "output_format": "png"}, (1001, 667), (1501, 1000)),  # floor
    ({"upscale_mode": "factor", "factor": 1.5, "output_format": "png"}, (1001, 667), (1502, 1000)),  # round
    ({"upscale_mode": "factor", "factor": 2, "output_format": "png"}, (640, 480), (1281, 959)),  # a pixel off
    ({"upscale_mode": "target", "target": 4, "output_format": "png"}, (1600, 1200), sizes.target_size((1600, 1200), 4, M20)),
    ({"upscale_mode": "target", "target": 1, "output_format": "png"}, (1920, 1080), sizes.target_size((1920, 1080), 1, M6)),
    ({"upscale_mode": "factor", "factor": 1, "output_format": "png"}, (2048, 4096), (2048, 4096)),  # 8 x 2^20: not capped
    ({"upscale_mode": "factor", "factor": 1, "output_format": "png"}, (2048, 4096), (2000, 4000)),  # capped at 8 x 10^6
])
def test_a_correct_output_is_not_flagged_whatever_the_reading_or_rounding(body, input_size, got):
    assert check_image(_png(got), "upscale", body, "image/png", input_size).problems == ()


def test_a_real_mismatch_is_still_flagged():
    body = {"upscale_mode": "factor", "factor": 2, "output_format": "png"}
    c = check_image(_png((1283, 960)), "upscale", body, "image/png", (640, 480))
    assert c.problems == ("1283x960, expected 1280x960",)
    big = check_image(_png((3000, 3000)), "upscale", {"upscale_mode": "target", "target": 4, "output_format": "png"},
                      "image/png", None)
    assert big.problems == ("3000x3000 is more than 4 MP",)
    assert check_image(_png((1283, 960)), "upscale", body, "image/png", None).problems == ()  # no real input: not checked


def test_money_in_the_readme_table_is_exact():
    for row in readme_rows():
        for cell in row[1:]:
            for amount in re.findall(r"\$([\d.]+)", cell):
                assert usd_to_micros(amount) in (LOW, HIGH)
