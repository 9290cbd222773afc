"""Real image work: outputs have exactly the sizes pixbatch predicts (and prices)."""

from __future__ import annotations

import io
import time

import pytest
from PIL import Image

from pixbatch.contract import ENDPOINTS
from pixbatch.emulator import fast_test_config, start_emulator
from pixbatch.sizes import edit_output_size, upscale_output_size

FORMATS = {"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}


def run(emu, op: str, body: dict, timeout: float = 20.0) -> dict:
    r = emu.http.post(emu.url + ENDPOINTS[op], json=body, headers=emu.headers)
    assert r.status_code == 202, r.text
    deadline = time.monotonic() + timeout
    while True:
        doc = emu.http.get(r.json()["polling_url"], headers=emu.headers).json()
        if doc["status"] in ("COMPLETED", "FAILED", "ERROR"):
            return doc
        assert time.monotonic() < deadline
        time.sleep(0.02)


def fetch(emu, doc: dict) -> tuple[bytes, Image.Image]:
    assert doc["status"] == "COMPLETED", doc
    r = emu.http.get(doc["output"]["media_url"][0])
    assert r.status_code == 200
    return r.content, Image.open(io.BytesIO(r.content))


@pytest.mark.parametrize("fmt", ["jpg", "png", "webp"])
def test_upscale_target_mode_size_and_format(emulator, image_server, fmt):
    image = image_server.add("in.png", (640, 480))
    doc = run(emulator, "upscale", {"image": image, "target": 2, "output_format": fmt})
    _, img = fetch(emulator, doc)
    assert img.format == FORMATS[fmt]
    assert img.size == upscale_output_size((640, 480), "target", 2)
    entry = emulator.ledger().entries[0]
    assert (entry.output_width, entry.output_height) == img.size and entry.amount_micros == 5_000


def test_upscale_factor_mode_and_the_8mp_cap(emulator, image_server):
    small = image_server.add("small.jpg", (300, 200))
    _, img = fetch(emulator, run(emulator, "upscale", {"image": small, "upscale_mode": "factor", "factor": 2.5}))
    assert img.size == (750, 500) == upscale_output_size((300, 200), "factor", factor=2.5)
    big = image_server.add("big.webp", (1100, 1000))
    doc = run(emulator, "upscale", {"image": big, "upscale_mode": "factor", "factor": 3, "output_quality": 50})
    _, img = fetch(emulator, doc)
    assert img.size == upscale_output_size((1100, 1000), "factor", factor=3)
    assert img.size[0] * img.size[1] <= 8_000_000 < 3300 * 3000
    charges = {e.request_id: e.amount_micros for e in emulator.ledger().entries}
    assert charges[doc["request_id"]] == 10_000  # priced by the real output: the 4-8 MP tier


def test_upscale_quality_and_detail_change_the_bytes(emulator, image_server):
    image = image_server.add("q.png", (320, 240))
    low, _ = fetch(emulator, run(emulator, "upscale", {"image": image, "target": 1, "output_quality": 10}))
    high, _ = fetch(emulator, run(emulator, "upscale", {"image": image, "target": 1, "output_quality": 95}))
    sharp, _ = fetch(emulator, run(emulator, "upscale", {"image": image, "target": 1, "output_quality": 95,
                                                         "enhance_details": True}))
    assert len(low) < len(high) and sharp != high


def test_upscale_accepts_images_with_alpha(emulator, image_server):
    buf = io.BytesIO()
    Image.new("RGBA", (100, 80), (10, 20, 30, 128)).save(buf, "PNG")
    url = image_server.add_bytes("alpha.png", buf.getvalue())
    _, img = fetch(emulator, run(emulator, "upscale", {"image": url, "target": 1}))
    assert img.mode == "RGB" and img.size == upscale_output_size((100, 80), "target", 1)


def test_edit_is_deterministic_in_prompt_and_seed(emulator, image_server):
    main = image_server.add("main.png", (640, 480))

    def edit(prompt: str, seed: int) -> bytes:
        data, img = fetch(emulator, run(emulator, "edit", {"prompt": prompt, "images": [main], "seed": seed}))
        assert img.format == "JPEG" and img.size == edit_output_size((640, 480), "match_input_image")
        return data

    base = edit("make it red", 1)
    assert edit("make it red", 1) == base
    assert edit("make it red", 2) != base
    assert edit("make it blue", 1) != base


def test_edit_prompt_changes_are_visible(emulator, image_server):
    main = image_server.add("main.png", (320, 320))
    _, a = fetch(emulator, run(emulator, "edit", {"prompt": "red", "images": [main], "seed": 1}))
    _, b = fetch(emulator, run(emulator, "edit", {"prompt": "blue", "images": [main], "seed": 1}))
    mean_a, mean_b = a.convert("RGB").resize((1, 1)).getpixel((0, 0)), b.convert("RGB").resize((1, 1)).getpixel((0, 0))
    assert sum(abs(x - y) for x, y in zip(mean_a, mean_b)) > 20


@pytest.mark.parametrize("ratio", ["1:1", "16:9", "9:16", "4:3", "3:4", "3:2", "2:3", "match_input_image"])
def test_edit_honours_aspect_ratio(image_server, ratio):
    with start_emulator(fast_test_config(queue_time=0, processing_time=0)) as emu:
        main = image_server.add("main.png", (500, 300))
        _, img = fetch(emu, run(emu, "edit", {"prompt": "p", "images": [main], "aspect_ratio": ratio}))
        assert img.size == edit_output_size((500, 300), ratio)


def test_edit_blends_reference_images(emulator, image_server):
    main = image_server.add("main.png", (256, 256))
    ref = image_server.add("ref.png", (128, 64), color=(0, 255, 0))
    alone, _ = fetch(emulator, run(emulator, "edit", {"prompt": "p", "images": [main], "seed": 3}))
    blended, _ = fetch(emulator, run(emulator, "edit", {"prompt": "p", "images": [main, ref], "seed": 3}))
    assert alone != blended


def test_non_image_input_fails_and_is_charged(emulator, image_server):
    junk = image_server.add_bytes("junk.png", b"this is not an image at all")
    doc = run(emulator, "upscale", {"image": junk})
    assert doc["status"] == "FAILED" and doc["output"] is None and "not a supported image" in doc["error"]
    [entry] = emulator.ledger().entries
    assert entry.status == "FAILED" and entry.amount_micros == 5_000  # FAILED is charged per the price table


def test_unreachable_input_fails(emulator, image_server):
    doc = run(emulator, "edit", {"prompt": "p", "images": [f"{image_server.url}/status/404"]})
    assert doc["status"] == "FAILED" and "HTTP 404" in doc["error"]
    doc = run(emulator, "edit", {"prompt": "p", "images": [image_server.add("ok.png", (64, 64)),
                                                           "http://127.0.0.1:9/ref.png"]})
    assert doc["status"] == "FAILED" and "images[1]" in doc["error"]


def test_lazy_mode_draws_outputs_of_the_predicted_size_on_demand():
    cfg = fast_test_config(render="lazy", queue_time=0, processing_time=0, lazy_input_size=(800, 600))
    with start_emulator(cfg) as emu:
        doc = run(emu, "upscale", {"image": "http://127.0.0.1:9/never-fetched.png", "output_format": "png"})
        _, img = fetch(emu, doc)
        assert img.format == "PNG" and img.size == upscale_output_size((800, 600), "target", 4)
        doc = run(emu, "edit", {"prompt": "p", "images": ["http://127.0.0.1:9/x.png"], "aspect_ratio": "2:3"})
        _, img = fetch(emu, doc)
        assert img.size == edit_output_size(None, "2:3")
        stats = emu.stats()
        assert stats["work_started"] == 0 and stats["media_gets"] == 2


def test_an_unexpected_failure_in_the_work_is_an_uncharged_error(emulator, image_server, monkeypatch, caplog):
    from pixbatch.emulator import imaging

    def broken(data, body):
        raise RuntimeError("bug in the model")

    monkeypatch.setattr(imaging, "upscale", broken)
    doc = run(emulator, "upscale", {"image": image_server.add("a.png", (64, 48))})
    assert doc["status"] == "ERROR" and doc["output"] is None and "RuntimeError" in doc["error"]
    [entry] = emulator.ledger().entries
    assert entry.status == "ERROR" and entry.amount_micros == 0
    assert "failed unexpectedly" in caplog.text
