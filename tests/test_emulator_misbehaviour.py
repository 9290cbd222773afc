"""A misbehaving gateway and CDN, fault by fault, selected per job (the script) or for every
job (config), over real HTTP on loopback. A faulty job is still accepted and charged."""

from __future__ import annotations

import io
import time
import zlib

import httpx
import pytest
from PIL import Image, UnidentifiedImageError

from pixbatch.contract import ENDPOINTS, STATUS_PATH
from pixbatch.emulator import fast_test_config, start_emulator
from pixbatch.emulator.cdn import gzip_bomb

EDIT = {"prompt": "p", "images": ["https://x.test/a.png"]}


def lazy(**kw):
    return fast_test_config(render="lazy", queue_time=0, processing_time=0.01, **kw)


@pytest.fixture(scope="module")
def emu():
    with start_emulator(lazy()) as e:
        yield e


def submit(emu, faults=None) -> httpx.Response:
    if faults is not None:
        emu.script([{"faults": faults}])
    r = emu.http.post(emu.url + ENDPOINTS["edit"], json=EDIT, headers=emu.headers)
    assert r.status_code == 202
    return r


def poll(emu, rid: str) -> httpx.Response:
    return emu.http.get(emu.url + STATUS_PATH.format(request_id=rid), headers=emu.headers)


def completed(emu, faults=None) -> tuple[str, dict]:
    rid = submit(emu, faults).json()["request_id"]
    deadline = time.monotonic() + 10
    while True:
        doc = poll(emu, rid).json()
        if doc["status"] == "COMPLETED":
            return rid, doc
        assert time.monotonic() < deadline
        time.sleep(0.02)


def media_url(emu, rid: str) -> str:
    return f"{emu.url}/media/{rid}/output.jpg"


def charged(emu, rid: str) -> int:
    emu.wait_idle()
    return emu.ledger().charged_by_request()[rid]


# -- the CDN ------------------------------------------------------------------------------


def test_media_slow_drips_one_byte_a_second_so_a_read_timeout_never_fires(emu):
    rid, doc = completed(emu, ["media_slow"])
    t0 = time.monotonic()
    with emu.http.stream("GET", doc["output"]["media_url"][0], timeout=httpx.Timeout(5, read=1.5)) as r:
        assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
        size = int(r.headers["content-length"])
        got = b""
        for chunk in r.iter_raw():
            got += chunk
            if len(got) >= 3:
                break
    elapsed = time.monotonic() - t0
    assert got[:2] == b"\xff\xd8" and size > 100  # a real JPEG, which would take minutes at this rate
    assert 1.8 <= elapsed < 5, elapsed
    assert charged(emu, rid) == 10_000
    assert poll(emu, rid).status_code == 200  # the emulator is not stuck


def test_media_redirect_loop(emu):
    rid, doc = completed(emu, ["media_redirect_loop"])
    url = doc["output"]["media_url"][0]
    first = emu.http.get(url)
    assert first.status_code == 302 and first.headers["location"].endswith("?loop=1")
    back = emu.http.get(first.headers["location"])
    assert back.status_code == 302 and back.headers["location"] == url
    with pytest.raises(httpx.TooManyRedirects):
        emu.http.get(url, follow_redirects=True)


def test_media_gzip_bomb_is_small_on_the_wire_and_huge_unpacked(emu):
    emu.configure(gzip_bomb_bytes=64 << 20)
    try:
        rid, doc = completed(emu, ["media_gzip_bomb"])
        with emu.http.stream("GET", doc["output"]["media_url"][0]) as r:
            assert r.headers["content-encoding"] == "gzip" and r.headers["content-type"] == "image/jpeg"
            wire = b"".join(r.iter_raw())
        assert len(wire) == int(r.headers["content-length"]) < 100_000
        d, unpacked = zlib.decompressobj(31), 0
        data = wire
        while data:  # bounded memory: at most 1 MiB out per step
            unpacked += len(d.decompress(data, 1 << 20))
            data = d.unconsumed_tail
        assert unpacked == 64 << 20 and d.eof and not d.unused_data  # a valid stream, CRC and length checked
    finally:
        emu.configure(gzip_bomb_bytes=1 << 30)
    head, mid, count, tail = gzip_bomb(1 << 30)  # the default: 1 GiB unpacked, about 1 MB sent
    assert len(head) + len(mid) * count + len(tail) < 1_200_000


def test_media_404_although_completed(emu):
    rid, doc = completed(emu, ["media_404"])
    assert emu.http.get(doc["output"]["media_url"][0]).status_code == 404
    assert charged(emu, rid) == 10_000


def test_media_html_labelled_as_jpeg(emu):
    _, doc = completed(emu, ["media_html"])
    r = emu.http.get(doc["output"]["media_url"][0])
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    assert r.content.startswith(b"<!DOCTYPE html>")
    with pytest.raises(UnidentifiedImageError):
        Image.open(io.BytesIO(r.content))


# -- the status document ------------------------------------------------------------------


def test_media_url_file_and_malformed(emu):
    _, doc = completed(emu, ["media_url_file"])
    assert doc["output"]["media_url"] == ["file:///etc/passwd"]
    with pytest.raises(httpx.UnsupportedProtocol):
        httpx.get(doc["output"]["media_url"][0])
    _, doc = completed(emu, ["media_url_malformed"])
    with pytest.raises(httpx.InvalidURL):
        httpx.get(doc["output"]["media_url"][0])


def test_completed_without_media_url(emu):
    _, doc = completed(emu, ["media_url_missing"])
    assert doc["status"] == "COMPLETED" and "media_url" not in doc["output"] and doc["output"]["media_type"]
    _, doc = completed(emu, ["media_url_empty"])
    assert doc["output"]["media_url"] == []


def test_garbage_and_wrong_shape_on_every_status_answer(emu):
    rid = submit(emu, ["status_garbage"]).json()["request_id"]
    for _ in range(3):
        r = poll(emu, rid)
        assert r.status_code == 200
        with pytest.raises(ValueError):
            r.json()
    rid = submit(emu, ["status_wrong_shape"]).json()["request_id"]
    doc = poll(emu, rid).json()
    assert doc["status"] == "DONE" and isinstance(doc["output"], str) and "model_id" not in doc
    assert charged(emu, rid) == 10_000


def test_request_id_with_dot_segments_steers_a_naive_client_to_another_path(emu):
    r = submit(emu, ["request_id_traversal"]).json()
    rid, polling = r["request_id"], r["polling_url"]
    assert "/../" in rid and polling.endswith(STATUS_PATH.format(request_id=rid))
    real = rid.split("/", 1)[0]
    before = len(emu.requests().strays)
    followed = emu.http.get(polling, headers=emu.headers)  # httpx resolves the dot segments
    assert followed.status_code == 404
    stray = emu.requests().strays[before]
    assert (stray.path, stray.had_key) == (f"/_stray/{real}", True)
    assert charged(emu, real) == 10_000  # the job is real, under its real id
    [entry] = [e for e in emu.requests().submits if e.request_id == real]
    assert entry.reason == "accepted"


def test_polling_url_pointing_elsewhere(emu):
    r = submit(emu, ["polling_url_elsewhere"]).json()
    assert r["polling_url"] == emu.url + "/_elsewhere" + STATUS_PATH.format(request_id=r["request_id"])
    before = len(emu.requests().strays)
    assert emu.http.get(r["polling_url"], headers=emu.headers).status_code == 404
    assert emu.requests().strays[before].had_key
    assert poll(emu, r["request_id"]).status_code == 200  # the documented path still works


def test_stray_base_url_sends_the_polling_url_to_another_host():
    with start_emulator(lazy(stray_base_url="http://127.0.0.1:9/trap/", faults=("polling_url_elsewhere",))) as emu:
        r = emu.http.post(emu.url + ENDPOINTS["edit"], json=EDIT, headers=emu.headers).json()
        assert r["polling_url"] == "http://127.0.0.1:9/trap" + STATUS_PATH.format(request_id=r["request_id"])


# -- config: every job --------------------------------------------------------------------


def test_config_faults_apply_to_every_job_and_change_at_runtime_for_new_jobs():
    with start_emulator(lazy(faults=("media_404", "media_url_missing"))) as emu:
        rids = [submit(emu).json()["request_id"] for _ in range(2)]
        emu.wait_idle()
        for rid in rids:
            doc = poll(emu, rid).json()
            assert doc["status"] == "COMPLETED" and "media_url" not in doc["output"]
            assert emu.http.get(media_url(emu, rid)).status_code == 404
        emu.configure(faults=[])
        fine = submit(emu).json()["request_id"]
        emu.wait_idle()
        assert poll(emu, fine).json()["output"]["media_url"] == [media_url(emu, fine)]
        assert emu.http.get(media_url(emu, fine)).status_code == 200
        assert emu.http.get(media_url(emu, rids[0])).status_code == 404  # a job keeps its faults
        assert emu.stats()["media_faults"] == 3


def test_scripted_faults_are_checked_when_queued(emu):
    with pytest.raises(ValueError, match="unknown fault 'media_slo'"):
        emu.script([{"faults": ["media_slo"]}])
    with pytest.raises(ValueError, match="'input_size' must be"):
        emu.script([{"input_size": [0, 5]}])
    with pytest.raises(ValueError, match="'retry_after' must be"):
        emu.script([{"submit": 429, "retry_after": -1}])
    with pytest.raises(ValueError, match="each of 'polls'"):
        emu.script([{"polls": [{"code": 200}]}])
