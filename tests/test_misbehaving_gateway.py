"""A gateway and a CDN that misbehave: every case ends in a clear state, a clear message and the
right exit code, never a traceback, a hang, a file that is not what it claims, or the key sent
somewhere it should not go. Real HTTP on loopback against the emulator's fault modes."""

from __future__ import annotations

import duckdb
import httpx
import pytest
from click.testing import CliRunner

from pixbatch import retry_policy
from pixbatch.cli import cli
from pixbatch.emulator import fast_test_config, start_emulator
from pixbatch.gateway import Gateway
from pixbatch.manifest import load_manifest
from pixbatch.runner import RunOptions, run


@pytest.fixture(autouse=True)
def _instant_backoff():
    with retry_policy.instant():
        yield


def manifest(tmp_path, n=1, step="  - id: t\n    op: upscale\n    target: 1\n"):
    p = tmp_path / "m.yaml"
    p.write_text("version: 1\ninputs:\n" + "".join(f"  - https://img.test/{i}.png\n" for i in range(n)) +
                 "steps:\n" + step, "utf-8")
    return load_manifest(p)


def opts(emu, **kw):
    # preflight=False: the lazy emulator does not fetch inputs, and these URLs are not real
    return RunOptions(base_url=emu.url, api_key=emu.api_key, concurrency=4, poll_initial=0.05,
                      poll_max_interval=0.2, status_interval=0.2, preflight=False, **kw)


def rows(m, sql):
    db = duckdb.connect(str(m.state_path), read_only=True)
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


def leftovers(m):
    return [p for p in m.output_dir.rglob("*") if p.name.endswith(".part")] if m.output_dir.exists() else []


@pytest.mark.parametrize("fault, says", [
    ("media_404", "HTTP 404"),
    ("media_redirect_loop", "TooManyRedirects"),
    ("media_html", "did not give an image"),
    ("media_url_file", "is not an http(s) URL"),
    ("media_url_malformed", "is not an http(s) URL"),
    ("media_url_missing", "without a media_url"),
    ("media_url_empty", "without a media_url"),
])
def test_an_output_that_cannot_be_had_is_an_incomplete_item_not_a_success(tmp_path, fault, says):
    m = manifest(tmp_path, n=2)
    with start_emulator(fast_test_config(render="lazy")) as emu:
        emu.script([{"faults": [fault]}])
        s = run(m, options=opts(emu))
        ledger = emu.ledger()
    assert s.counts["COMPLETED"] == 2 and len(ledger.entries) == 2  # both paid: the gateway did the work
    assert (s.outcome, s.exit_code) == ("incomplete", 1)
    assert any("1 completed item(s) have no output on disk" in msg and says in msg for msg in s.messages), s.messages
    files = sorted(p.name for p in (m.output_dir / "t").iterdir())
    assert len(files) == 1 and not leftovers(m)  # the good one; nothing half-written, nothing fake
    (error,) = [e for (e,) in rows(m, "SELECT error FROM items WHERE error IS NOT NULL")]
    assert says in error


def test_a_gzip_bomb_and_a_drip_feed_are_cut_off_by_the_cap_and_the_deadline(tmp_path):
    m = manifest(tmp_path, n=2)
    with start_emulator(fast_test_config(render="lazy", gzip_bomb_bytes=64 * 1024 * 1024, media_drip_rate=50)) as emu:
        emu.script([{"faults": ["media_gzip_bomb"]}, {"faults": ["media_slow"]}])
        gw = Gateway(emu.url, emu.api_key, transport=httpx.AsyncHTTPTransport(), max_media_bytes=8 * 1024 * 1024,
                     download_deadline=2.0)
        s = run(m, options=opts(emu), gateway=gw)
    assert (s.outcome, s.exit_code) == ("incomplete", 1) and s.counts["COMPLETED"] == 2
    errors = [e for (e,) in rows(m, "SELECT error FROM items")]
    assert sum("larger than 8,388,608 bytes" in e for e in errors) == 1, errors
    assert sum("not finished after 2 s" in e for e in errors) == 1, errors
    assert not leftovers(m) and not any((m.output_dir / "t").iterdir())


def test_a_later_good_download_clears_the_error_and_nothing_is_resent(tmp_path):
    m = manifest(tmp_path, n=2)
    m.output_dir.mkdir(parents=True)
    (m.output_dir / "t").write_text("a file where the step's folder should be")
    with start_emulator(fast_test_config(render="lazy")) as emu:
        first = run(m, options=opts(emu))
        assert first.exit_code == 1 and first.counts["COMPLETED"] == 2
        (m.output_dir / "t").unlink()
        again = run(m, options=opts(emu))
        ledger = emu.ledger()
    assert (again.outcome, again.exit_code, again.submits, again.downloads) == ("completed", 0, 0, 2)
    assert rows(m, "SELECT count(*) FROM items WHERE error IS NOT NULL") == [(0,)]
    assert len(ledger.entries) == 2


def test_request_ids_and_polling_urls_never_steer_the_key_elsewhere(tmp_path):
    m = manifest(tmp_path, n=3)
    with start_emulator(fast_test_config(render="lazy")) as emu:
        emu.script([{"faults": ["request_id_traversal"]}, {"faults": ["polling_url_elsewhere"]}])
        s = run(m, options=opts(emu))
        strays = emu.requests().strays
    assert not strays, strays  # no request went to /_stray or /_elsewhere, with or without the key
    # the traversal id was accepted (and may be charged) but cannot be polled: AMBIGUOUS, said so
    assert s.counts["AMBIGUOUS"] == 1 and s.counts["COMPLETED"] == 2
    (error,) = [e for (e,) in rows(m, "SELECT error FROM items WHERE state = 'AMBIGUOUS'")]
    assert "undocumented shape" in error


def test_status_answers_that_are_not_statuses_leave_the_item_for_a_later_run(tmp_path):
    m = manifest(tmp_path, n=2)
    with start_emulator(fast_test_config(render="lazy")) as emu:
        emu.script([{"faults": ["status_garbage"]}, {"faults": ["status_wrong_shape"]}])
        s = run(m, options=opts(emu))
    assert s.counts["SUBMITTED"] == 2 and s.exit_code == 1
    assert all(e.startswith("polling failed") for (e,) in rows(m, "SELECT error FROM items"))


def test_html_error_pages_on_submit_and_poll_are_ridden_out(tmp_path):
    m = manifest(tmp_path, n=6)
    with start_emulator(fast_test_config(render="lazy", html_errors=True, submit_500_rate=0.3, poll_500_rate=0.3,
                                         seed=3)) as emu:
        s = run(m, options=opts(emu))
        stats = emu.stats()
    assert s.exit_code == 0 and s.counts["COMPLETED"] == 6 and stats["injected_submit_500"] > 0


@pytest.mark.parametrize("base_url", ["notaurl", "ftp://gateway.pixazo.ai", "http://", "http://host:99999"])
def test_a_base_url_that_cannot_work_is_refused_before_anything_is_sent(tmp_path, base_url):
    m = manifest(tmp_path)
    res = CliRunner().invoke(cli, ["run", str(m.path), "--base-url", base_url, "--quiet"], env={"PIXAZO_API_KEY": "k"})
    assert res.exit_code == 2, res.output
    assert "base URL" in res.output and "Traceback" not in res.output
    assert not m.state_path.exists() or rows(m, "SELECT count(*) FROM submit_log") == [(0,)]


@pytest.mark.parametrize("key", ["abc\ndef", "clé-secrète", "a\tb\x7f"])
def test_a_key_no_http_header_can_carry_is_refused_before_anything_is_sent(tmp_path, emulator, key):
    m = manifest(tmp_path)
    res = CliRunner().invoke(cli, ["run", str(m.path), "--base-url", emulator.url, "--quiet"],
                             env={"PIXAZO_API_KEY": key})
    assert res.exit_code == 4, res.output
    assert "API key has" in res.output and key not in res.output and "Traceback" not in res.output
    assert emulator.requests().submits == ()
