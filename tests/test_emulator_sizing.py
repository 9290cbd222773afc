"""The gateway's size rule: edit sizes, the megapixel, factor rounding, and what the ledger
charges at the tier boundaries (exactly 4,000,000 px; 4,000,001; 4,194,304; the 8 MP cap)."""

from __future__ import annotations

import io
import time

import pytest
from PIL import Image

from pixbatch import sizes
from pixbatch.contract import ENDPOINTS, STATUS_PATH
from pixbatch.emulator import SizeRule, fast_test_config, start_emulator
from pixbatch.pricing import PriceTable

LOW, HIGH = 5_000, 10_000  # the built-in upscale tiers: <= 4 MP, 4-8 MP


def lazy(**kw):
    return fast_test_config(render="lazy", queue_time=0, processing_time=0.01, **kw)


def run(emu, op: str, body: dict) -> dict:
    r = emu.http.post(emu.url + ENDPOINTS[op], json=body, headers=emu.headers)
    assert r.status_code == 202, r.text
    rid = r.json()["request_id"]
    deadline = time.monotonic() + 30
    while True:
        doc = emu.http.get(emu.url + STATUS_PATH.format(request_id=rid), headers=emu.headers).json()
        if doc["status"] in ("COMPLETED", "FAILED", "ERROR"):
            return doc
        assert time.monotonic() < deadline
        time.sleep(0.02)


def settled(emu, doc: dict):
    return next(e for e in emu.ledger().entries if e.request_id == doc["request_id"])


def media_size(emu, doc: dict) -> tuple[int, int]:
    r = emu.http.get(doc["output"]["media_url"][0])
    assert r.status_code == 200
    return Image.open(io.BytesIO(r.content)).size


# -- defaults: exactly what pixbatch assumes ---------------------------------------------------


def test_the_default_rule_is_pixbatchs_own():
    rule, prices = SizeRule(), PriceTable.load()
    inputs = [(1, 1), (64, 48), (1000, 1000), (1024, 1024), (1920, 1080), (41, 97561), (3000, 17), (4000, 3000)]
    for size in inputs:
        for target in range(1, 9):
            body = {"upscale_mode": "target", "target": target}
            assert rule.upscale_size(size, body) == sizes.upscale_output_size(size, "target", target)
        for factor in (1, 1.5, 2, 2.5, 3.3, 8):
            body = {"upscale_mode": "factor", "factor": factor}
            assert rule.upscale_size(size, body) == sizes.upscale_output_size(size, "factor", factor=factor)
        assert rule.edit_size(size) == sizes.edit_output_size(size)
    for ratio in ("1:1", "16:9", "9:16", "4:3", "3:4", "3:2", "2:3"):
        assert rule.edit_size(None, ratio) == sizes.edit_output_size(None, ratio)
    for px in (1, 3_999_999, 4_000_000, 4_000_001, 4_194_304, 8_000_000, 8_000_001):
        assert rule.tier(prices, px) == prices.upscale_tier_for_pixels(px)


# -- the ledger at the boundaries ---------------------------------------------------------------

BOUNDARIES = [
    # input size, factor, (output, charge) with MP = 1,000,000, (output, charge) with MP = 2^20
    ((2000, 2000), 1, ((2000, 2000), LOW), ((2000, 2000), LOW)),  # exactly 4,000,000: the lower tier
    ((41, 97561), 1, ((41, 97561), HIGH), ((41, 97561), LOW)),  # 4,000,001
    ((2048, 2048), 1, ((2048, 2048), HIGH), ((2048, 2048), LOW)),  # 4,194,304 = 4 x 2^20
    ((2049, 2048), 1, ((2049, 2048), HIGH), ((2049, 2048), HIGH)),  # just above either boundary
    ((2000, 4000), 1, ((2000, 4000), HIGH), ((2000, 4000), HIGH)),  # exactly 8,000,000: not capped
    ((2048, 4096), 1, ((2000, 4000), HIGH), ((2048, 4096), HIGH)),  # 8 x 2^20: capped only with 10^6
    ((1024, 1024), 8, ((2828, 2828), HIGH), ((2896, 2896), HIGH)),  # the 8 MP cap
]


@pytest.mark.parametrize("megapixel,column", [(1_000_000, 2), ("2^20", 3)])
def test_the_ledger_charges_by_the_configured_megapixel_at_the_boundaries(megapixel, column):
    with start_emulator(lazy(megapixel=megapixel)) as emu:
        for case in BOUNDARIES:
            (size, factor), (expected_size, expected_charge) = case[:2], case[column]
            emu.script([{"input_size": list(size)}])
            doc = run(emu, "upscale", {"image": "https://x.test/a.png", "upscale_mode": "factor", "factor": factor})
            entry = settled(emu, doc)
            assert ((entry.output_width, entry.output_height), entry.amount_micros) == (expected_size, expected_charge), \
                (size, factor)
        # target mode: target x megapixel, each side floored
        emu.script([{"input_size": [1024, 1024]}])
        entry = settled(emu, run(emu, "upscale", {"image": "https://x.test/a.png", "target": 4}))
        side = 2000 if megapixel == 1_000_000 else 2048
        assert (entry.output_width, entry.output_height, entry.amount_micros) == (side, side, LOW)
        emu.script([{"input_size": [1920, 1080]}])
        entry = settled(emu, run(emu, "upscale", {"image": "https://x.test/a.png", "target": 8}))
        mp = 1_000_000 if megapixel == 1_000_000 else 1 << 20
        assert 7.99 * mp < entry.output_width * entry.output_height <= 8 * mp and entry.amount_micros == HIGH


def test_lazy_media_has_the_size_the_ledger_records():
    with start_emulator(lazy(megapixel=1 << 20)) as emu:
        emu.script([{"input_size": [1024, 1024]}])
        doc = run(emu, "upscale", {"image": "https://x.test/a.png", "target": 4})
        assert media_size(emu, doc) == (2048, 2048)


# -- factor rounding ----------------------------------------------------------------------------


@pytest.mark.parametrize("rounding,expected", [("round", (152, 100)), ("floor", (151, 100))])
def test_factor_rounding_applies_to_real_images(rounding, expected, image_server):
    # 101 x 1.5 = 151.5 and 67 x 1.5 = 100.5: round is half to even (152, 100), floor (151, 100)
    image = image_server.add("a.png", (101, 67))
    with start_emulator(fast_test_config(queue_time=0, processing_time=0.01, factor_rounding=rounding)) as emu:
        doc = run(emu, "upscale", {"image": image, "upscale_mode": "factor", "factor": 1.5, "output_format": "png"})
        assert media_size(emu, doc) == expected
        entry = settled(emu, doc)
        assert (entry.output_width, entry.output_height, entry.amount_micros) == (*expected, LOW)


def test_floor_rounding_can_move_an_output_below_the_boundary():
    # 1000 x 2.0006 = 2000.6 per side: round gives 2001 x 2001 = 4,004,001 px (4-8 MP), floor 2000 x 2000
    for rounding, side, charge in (("round", 2001, HIGH), ("floor", 2000, LOW)):
        with start_emulator(lazy(factor_rounding=rounding)) as emu:
            emu.script([{"input_size": [1000, 1000]}])
            doc = run(emu, "upscale", {"image": "https://x.test/a.png", "upscale_mode": "factor", "factor": 2.0006})
            entry = settled(emu, doc)
            assert (entry.output_width, entry.output_height, entry.amount_micros) == (side, side, charge)


# -- edit sizes ---------------------------------------------------------------------------------


def test_edit_sizes_table_for_named_ratios_and_matching_inputs():
    cfg = lazy(edit_sizes="16:9=1344x768,4:3=1152x864", lazy_input_size=(1920, 1080))
    assert cfg.edit_sizes == (("16:9", (1344, 768)), ("4:3", (1152, 864)))
    with start_emulator(cfg) as emu:
        def edit(ratio: str, **script) -> tuple[int, int]:
            if script:
                emu.script([script])
            doc = run(emu, "edit", {"prompt": "p", "images": ["https://x.test/a.png"], "aspect_ratio": ratio})
            entry = settled(emu, doc)
            assert entry.amount_micros == 10_000
            return entry.output_width, entry.output_height

        assert edit("16:9") == (1344, 768)
        assert edit("4:3") == (1152, 864)
        assert edit("1:1") == (1024, 1024)  # not in the table: the default rule
        assert edit("9:16") == (768, 1360)
        assert edit("match_input_image") == (1344, 768)  # a 16:9 input takes the 16:9 entry
        assert edit("match_input_image", input_size=[800, 600]) == (1152, 864)
        assert edit("match_input_image", input_size=[1000, 1000]) == (1024, 1024)


def test_edit_sizes_apply_to_real_images(image_server):
    image = image_server.add("wide.png", (320, 180))
    cfg = fast_test_config(queue_time=0, processing_time=0.01, edit_sizes={"16:9": [1376, 768]})
    with start_emulator(cfg) as emu:
        doc = run(emu, "edit", {"prompt": "p", "images": [image]})
        assert media_size(emu, doc) == (1376, 768)
        entry = settled(emu, doc)
        assert (entry.output_width, entry.output_height) == (1376, 768)
        # a factor-2 upscale of that edit crosses the 4 MP boundary: 2752 x 1536 = 4,227,072 px
        up = run(emu, "upscale", {"image": doc["output"]["media_url"][0], "upscale_mode": "factor", "factor": 2})
        entry = settled(emu, up)
        assert (entry.output_width, entry.output_height, entry.amount_micros) == (2752, 1536, HIGH)
