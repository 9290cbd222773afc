"""The emulator speaks the documented gateway contract (shared/reference/p-image-api.txt).

Plain httpx against the emulator on loopback, the way any client would talk to the
real gateway. The documented example bodies are copied verbatim below; only their
image URLs are pointed at the loopback image server (tests never leave 127.0.0.1).
"""

from __future__ import annotations

import copy
import re
import time

import httpx
import pytest

from pixbatch.contract import ENDPOINTS, MODEL_IDS, STATUS_PATH
from pixbatch.emulator import EmulatorConfig, fast_test_config, start_emulator

DOC_IMAGE = "https://pub-582b7213209642b9b995c96c95a30381.r2.dev/f1.png"
DOC_WEBHOOK = "https://your-webhook.com/callback"

# Every example body in the reference, verbatim.
UPSCALE_MINIMAL = {"image": DOC_IMAGE}
UPSCALE_FULL = {
    "image": DOC_IMAGE,
    "upscale_mode": "target",
    "target": 4,
    "enhance_details": True,
    "enhance_realism": True,
    "output_format": "jpg",
    "output_quality": 90,
}
EDIT_MINIMUM = {"prompt": "The woman dress is changed to black", "images": [DOC_IMAGE]}
EDIT_FULL = {
    "prompt": "The woman dress is changed to black",
    "images": [DOC_IMAGE],
    "turbo": True,
    "seed": 42,
    "aspect_ratio": "1:1",
    "disable_safety_checker": False,
    "webhook": DOC_WEBHOOK,
    "webhook_events_filter": ["completed"],
}

ISO_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"


def localize(body: dict, image_url: str, webhook_url: str | None = None) -> dict:
    """The documented body with its URLs pointed at loopback servers."""
    b = copy.deepcopy(body)
    if "image" in b:
        b["image"] = image_url
    if "images" in b:
        b["images"] = [image_url for _ in b["images"]]
    if "webhook" in b:
        if webhook_url is None:
            del b["webhook"], b["webhook_events_filter"]
        else:
            b["webhook"] = webhook_url
    return b


def wait_terminal(url: str, headers: dict, timeout: float = 15.0) -> tuple[dict, list[str]]:
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while True:
        r = httpx.get(url, headers=headers)
        assert r.status_code == 200, r.text
        doc = r.json()
        if not seen or seen[-1] != doc["status"]:
            seen.append(doc["status"])
        if doc["status"] in ("COMPLETED", "FAILED", "ERROR"):
            return doc, seen
        assert time.monotonic() < deadline, f"still {doc['status']} after {timeout}s"
        time.sleep(0.02)


@pytest.mark.parametrize("op,body", [
    ("upscale", UPSCALE_MINIMAL), ("upscale", UPSCALE_FULL), ("edit", EDIT_MINIMUM), ("edit", EDIT_FULL),
], ids=["upscale-minimal", "upscale-full", "edit-minimum", "edit-full"])
def test_documented_examples_are_accepted_and_complete(emulator, image_server, op, body):
    image = image_server.add("f1.png", (640, 480))
    r = httpx.post(emulator.url + ENDPOINTS[op], json=localize(body, image), headers={
        "Content-Type": "application/json", "Cache-Control": "no-cache",
        "Ocp-Apim-Subscription-Key": emulator.api_key,
    })
    assert r.status_code == 202, r.text
    submitted = r.json()
    assert set(submitted) == {"request_id", "status", "polling_url"}
    model = MODEL_IDS[op]
    assert re.fullmatch(rf"{re.escape(model)}_{UUID}", submitted["request_id"])
    assert submitted["status"] == "QUEUED"
    assert submitted["polling_url"] == emulator.url + STATUS_PATH.format(request_id=submitted["request_id"])

    doc, seen = wait_terminal(submitted["polling_url"], {"Ocp-Apim-Subscription-Key": emulator.api_key})
    assert seen[-1] == "COMPLETED" and seen == [s for s in ("QUEUED", "PROCESSING", "COMPLETED") if s in seen]
    assert list(doc) == ["request_id", "status", "model_id", "error", "output", "created_at", "updated_at",
                         "completed_at"]
    assert doc["request_id"] == submitted["request_id"] and doc["model_id"] == model and doc["error"] is None
    ext = body.get("output_format", "jpg")
    assert doc["output"] == {
        "media_url": [f"{emulator.url}/media/{submitted['request_id']}/output.{ext}"],
        "media_type": "image/jpeg",
    }
    for k in ("created_at", "updated_at", "completed_at"):
        assert ISO_MS.match(doc[k]), doc[k]
    assert doc["created_at"] <= doc["updated_at"] == doc["completed_at"]
    media = httpx.get(doc["output"]["media_url"][0])
    assert media.status_code == 200 and media.headers["content-type"] == "image/jpeg"
    assert media.content[:3] == b"\xff\xd8\xff"


def test_status_moves_queued_processing_terminal_over_time(image_server):
    image = image_server.add("a.png", (64, 48))
    # long timings, and the emulator's clock moved forward instead of sleeping
    cfg = fast_test_config(queue_time=100, processing_time=50)
    with start_emulator(cfg) as emu:
        r = emu.http.post(emu.url + ENDPOINTS["upscale"], json={"image": image, "target": 1}, headers=emu.headers)
        url = r.json()["polling_url"]
        first = emu.http.get(url, headers=emu.headers).json()
        assert first["status"] == "QUEUED" and first["output"] is None and first["completed_at"] is None
        assert first["updated_at"] == first["created_at"]
        emu.advance(100)
        mid = emu.http.get(url, headers=emu.headers).json()
        assert mid["status"] == "PROCESSING" and mid["output"] is None and mid["completed_at"] is None
        assert mid["updated_at"] > mid["created_at"]
        emu.advance(50)
        doc, _ = wait_terminal(url, emu.headers)
        assert doc["status"] == "COMPLETED" and doc["completed_at"] >= mid["updated_at"]


def test_every_request_needs_a_known_key(emulator):
    url = emulator.url + ENDPOINTS["upscale"]
    body = {"image": "http://127.0.0.1:9/a.png"}
    missing = httpx.post(url, json=body)
    assert missing.status_code == 401 and set(missing.json()) == {"error", "message"}
    assert httpx.post(url, json=body, headers={"Ocp-Apim-Subscription-Key": "nope"}).status_code == 401
    status = emulator.url + STATUS_PATH.format(request_id="p-image_x")
    assert httpx.get(status).status_code == 401
    assert httpx.get(status, headers={"Ocp-Apim-Subscription-Key": "nope"}).status_code == 401
    assert emulator.stats()["accepted"] == 0


def test_forbidden_key_gets_403_and_extra_keys_work():
    cfg = fast_test_config(api_keys=("k1", "k2"), forbidden_keys=("blocked",))
    with start_emulator(cfg) as emu:
        url = emu.url + ENDPOINTS["edit"]
        body = {"prompt": "p", "images": ["http://127.0.0.1:9/a.png"]}
        r = httpx.post(url, json=body, headers={"Ocp-Apim-Subscription-Key": "blocked"})
        assert r.status_code == 403 and r.json()["error"] == "Forbidden"
        assert httpx.post(url, json=body, headers={"Ocp-Apim-Subscription-Key": "k2"}).status_code == 202
        assert emu.api_key == "k1"


@pytest.fixture(scope="module")
def validating_emulator():
    """One emulator for the many 400 cases: none of them creates a job."""
    with start_emulator(fast_test_config(render="lazy")) as emu:
        yield emu


@pytest.mark.parametrize("op,body,fragment", [
    ("upscale", {}, "'image' is required"),
    ("upscale", {"image": "ftp://x/a.png"}, "'image' must be an http(s) URL"),
    ("upscale", {"image": "https://x.test/a.png", "target": 9}, "'target' must be between 1 and 8, got 9"),
    ("upscale", {"image": "https://x.test/a.png", "target": 0}, "'target' must be between 1 and 8"),
    ("upscale", {"image": "https://x.test/a.png", "factor": 8.5}, "'factor' must be between 1 and 8"),
    ("upscale", {"image": "https://x.test/a.png", "target": "4"}, "'target' must be an integer"),
    ("upscale", {"image": "https://x.test/a.png", "output_quality": 101}, "'output_quality' must be between 0 and 100"),
    ("upscale", {"image": "https://x.test/a.png", "output_format": "gif"}, "'output_format' must be one of"),
    ("upscale", {"image": "https://x.test/a.png", "upscale_mode": "zoom"}, "'upscale_mode' must be one of"),
    ("upscale", {"image": "https://x.test/a.png", "enhance_details": "yes"}, "'enhance_details' must be a boolean"),
    ("upscale", {"image": "https://x.test/a.png", "colour": 1}, "unknown parameter 'colour'"),
    ("edit", {"images": ["https://x.test/a.png"]}, "'prompt' is required"),
    ("edit", {"prompt": "p"}, "'images' is required"),
    ("edit", {"prompt": "  ", "images": ["https://x.test/a.png"]}, "'prompt' must not be empty"),
    ("edit", {"prompt": "p", "images": []}, "'images' must be a non-empty array"),
    ("edit", {"prompt": "p", "images": ["https://x.test/a.png", 3]}, "images[1] must be an http(s) URL"),
    ("edit", {"prompt": "p", "images": ["https://x.test/a.png"], "aspect_ratio": "5:4"}, "'aspect_ratio' must be one of"),
    ("edit", {"prompt": "p", "images": ["https://x.test/a.png"], "seed": 1.5}, "'seed' must be an integer"),
    ("edit", {"prompt": "p", "images": ["https://x.test/a.png"], "turbo": 1}, "'turbo' must be a boolean"),
    ("edit", {"prompt": "p", "images": ["https://x.test/a.png"], "webhook_events_filter": "completed"},
     "'webhook_events_filter' must be an array of strings"),
    ("edit", ["not", "an", "object"], "request body must be a JSON object"),
])
def test_invalid_parameters_get_400_with_the_validation_message(validating_emulator, op, body, fragment):
    emu = validating_emulator
    r = emu.http.post(emu.url + ENDPOINTS[op], json=body, headers=emu.headers)
    assert r.status_code == 400
    doc = r.json()
    assert set(doc) == {"error", "message"}
    assert fragment in doc["message"] and MODEL_IDS[op] in doc["message"]
    assert emu.stats()["accepted"] == 0


def test_non_json_body_gets_400(emulator):
    r = httpx.post(emulator.url + ENDPOINTS["upscale"], content=b"image=https://x", headers=emulator.headers)
    assert r.status_code == 400 and "not valid JSON" in r.json()["message"]


def test_disabled_or_unknown_model_gets_model_not_found():
    with start_emulator(fast_test_config(disabled_models=("p-image",))) as emu:
        r = httpx.post(emu.url + ENDPOINTS["edit"], json={"prompt": "p", "images": ["https://x.test/a.png"]},
                       headers=emu.headers)
        assert r.status_code == 400
        assert r.json() == {"error": "Model not found", "message": "Model 'p-image' not found or is disabled"}
        r = httpx.post(emu.url + "/p-image/v1/p-image-nope/generate", json={}, headers=emu.headers)
        assert r.json() == {"error": "Model not found", "message": "Model 'p-image-nope' not found or is disabled"}


def test_unknown_request_id_is_404(emulator):
    r = httpx.get(emulator.url + STATUS_PATH.format(request_id="p-image_00000000-0000-0000-0000-000000000000"),
                  headers=emulator.headers)
    assert r.status_code == 404 and set(r.json()) == {"error", "message"}
    assert httpx.get(emulator.url + "/media/p-image_nope/output.jpg").status_code == 404


def test_insufficient_balance_is_402_with_the_documented_message():
    # $0.015 covers one edit ($0.01) but not a second while the first is in flight
    with start_emulator(fast_test_config(balance_micros=15_000, queue_time=100, render="lazy")) as emu:
        url, body = emu.url + ENDPOINTS["edit"], {"prompt": "p", "images": ["https://x.test/a.png"]}
        assert httpx.post(url, json=body, headers=emu.headers).status_code == 202
        r = httpx.post(url, json=body, headers=emu.headers)
        assert r.status_code == 402
        assert r.json() == {"error": "Insufficient Balance",
                            "message": "Your wallet does not have enough balance. Required: $0.01"}
        # an upscale at <=4 MP costs $0.005: it still fits
        up = httpx.post(emu.url + ENDPOINTS["upscale"], json={"image": "https://x.test/a.png"}, headers=emu.headers)
        assert up.status_code == 202
        assert emu.topup(10_000) == 25_000
        assert httpx.post(url, json=body, headers=emu.headers).status_code == 202
        ledger = emu.ledger()
        assert ledger.topups_micros == 10_000


def test_rate_limit_answers_429_with_retry_after():
    with start_emulator(fast_test_config(rate_limit=0.5, rate_burst=2, render="lazy")) as emu:
        url, body = emu.url + ENDPOINTS["upscale"], {"image": "https://x.test/a.png"}
        codes = [httpx.post(url, json=body, headers=emu.headers) for _ in range(3)]
        assert [r.status_code for r in codes] == [202, 202, 429]
        limited = codes[2]
        assert limited.headers["Retry-After"] == "2"  # one token every 2 s
        assert set(limited.json()) == {"error", "message"}
        stats = emu.stats()
        assert stats["rate_limited"] == 1 and stats["accepted"] == 2
        # the bucket is per key
        emu.configure(api_keys=["test-key", "other"])
        other = httpx.post(url, json=body, headers={"Ocp-Apim-Subscription-Key": "other"})
        assert other.status_code == 202


def test_media_types_follow_output_format(emulator, image_server):
    image = image_server.add("a.png", (40, 30))
    for fmt, ctype, magic in (("png", "image/png", b"\x89PNG"), ("webp", "image/webp", b"RIFF")):
        r = httpx.post(emulator.url + ENDPOINTS["upscale"], headers=emulator.headers,
                       json={"image": image, "target": 1, "output_format": fmt})
        doc, _ = wait_terminal(r.json()["polling_url"], emulator.headers)
        assert doc["output"]["media_type"] == ctype
        assert doc["output"]["media_url"][0].endswith(f"/output.{fmt}")
        media = httpx.get(doc["output"]["media_url"][0])
        assert media.headers["content-type"] == ctype and media.content.startswith(magic)


def test_config_defaults_are_documented_values():
    cfg = EmulatorConfig()
    assert cfg.api_key == "test-key" and cfg.balance_micros == 10_000_000 and not cfg.allow_http_webhooks
    assert EmulatorConfig.from_dict(cfg.to_dict()) == cfg
