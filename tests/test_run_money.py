"""What `run` pays for, through the CLI: --retry-failed pays again for the FAILED items only,
--force [STEPS] says what it will redo and asks, inputs nobody can fetch are never sent,
and pilot runs (--limit, --steps) send only what they select."""

from __future__ import annotations

import json

import duckdb
import pytest
from click.testing import CliRunner

from pixbatch.cli import cli
from pixbatch.report import build_report


def _manifest(tmp_path, urls, *, chained: bool = True):
    m = tmp_path / "m.yaml"
    text = "version: 1\ninputs:\n" + "".join(f"  - id: i{n}\n    url: {u}\n" for n, u in enumerate(urls))
    text += "steps:\n  - id: e\n    op: edit\n    prompt: p\n"
    if chained:
        text += "  - id: u\n    op: upscale\n    for_each: e\n    target: 2\n"
    m.write_text(text)
    return m


def _run(emulator, m, *extra, input=None):
    args = ["run", str(m), "--base-url", emulator.url, "--quiet", "--first-poll", "0.1", *extra]
    return CliRunner().invoke(cli, args, env={"PIXAZO_API_KEY": emulator.api_key}, input=input)


def _states(tmp_path):
    db = duckdb.connect(str(tmp_path / "m.pixbatch.duckdb"), read_only=True)
    try:
        return dict(db.execute("SELECT step || ':' || input_id, state FROM items").fetchall())
    finally:
        db.close()


def test_retry_failed_pays_again_for_the_failed_items_only(tmp_path, emulator, image_server):
    urls = [image_server.add(f"{n}.png", (320, 240)) for n in range(3)]
    m = _manifest(tmp_path, urls)
    emulator.script([{"status": "FAILED", "error": "content policy"}])
    first = _run(emulator, m)
    assert first.exit_code == 1, first.output
    assert "--retry-failed" in first.output and "--force" not in first.output  # the narrowest option
    assert emulator.stats()["submits"] == 5  # 3 edits, 2 upscales; 1 upscale BLOCKED

    again = _run(emulator, m, "--retry-failed")
    assert again.exit_code == 0, again.output
    assert "--retry-failed: sends 1 finished item(s) again" in again.output
    assert "then the 1 item(s) they blocked" in again.output
    ledger = emulator.wait_idle()
    assert emulator.stats()["submits"] == 7  # only the FAILED edit and the upscale it blocked
    assert sorted(e.status for e in ledger.entries).count("COMPLETED") == 6
    assert ledger.charged_micros == 4 * 10_000 + 3 * 5_000  # the FAILED edit paid once, then again


def test_force_steps_says_what_it_redoes_and_asks_above_the_threshold(tmp_path, emulator, image_server,
                                                                     monkeypatch):
    urls = [image_server.add(f"{n}.png", (320, 240)) for n in range(2)]
    m = _manifest(tmp_path, urls)
    assert _run(emulator, m).exit_code == 0
    assert emulator.stats()["submits"] == 4

    import pixbatch.runner.plan as plan

    monkeypatch.setattr(plan, "CONFIRM_MICROS", 0)  # every redo is "a lot" here
    no = _run(emulator, m, "--force", "u", input="n\n")
    assert no.exit_code == 1 and "Nothing was sent" in no.output, no.output
    assert "--force u: sends 2 finished item(s) again (they were charged $0.01 and cost up to $0.01 again)" \
        in no.output
    unasked = _run(emulator, m, "--force", "u")  # no terminal to ask: refuse, say --yes
    assert unasked.exit_code == 2 and "--yes" in unasked.output
    assert emulator.stats()["submits"] == 4

    yes = _run(emulator, m, "--force", "u", "--yes")
    assert yes.exit_code == 0, yes.output
    assert emulator.stats()["submits"] == 6  # the 2 upscales again, not the edits
    typo = _run(emulator, m, "--force", "hirez")
    assert typo.exit_code == 2 and "no step 'hirez'" in typo.output


def test_inputs_nobody_can_fetch_are_never_sent_nor_charged(tmp_path, emulator, image_server):
    good = image_server.add("good.png", (320, 240))
    missing = f"{image_server.url}/status/404"
    text = image_server.add_bytes("notes.png", b"shopping list: milk, eggs\n")
    m = _manifest(tmp_path, [good, missing, text, missing])
    res = _run(emulator, m)
    assert res.exit_code == 1, res.output
    assert "BAD_INPUT" in res.output and "--no-preflight" in res.output
    ledger = emulator.wait_idle()
    assert emulator.stats()["submits"] == 2 and ledger.charged_micros == 10_000 + 5_000
    states = _states(tmp_path)
    # (i1 and i3 share their URL: one request, one item)
    assert (states["e:i1"], states["e:i2"], states["u:i1"], states["u:i2"]) == ("BAD_INPUT",) * 2 + ("BLOCKED",) * 2
    db = duckdb.connect(str(tmp_path / "m.pixbatch.duckdb"), read_only=True)
    try:
        probes = dict(db.execute("SELECT url, error FROM probes").fetchall())
    finally:
        db.close()
    assert len(probes) == 3 and probes[good] is None  # each distinct URL checked once, cached
    assert "HTTP 404" in probes[missing] and "not an image" in probes[text]

    report = json.loads(CliRunner().invoke(cli, ["report", str(m), "--format", "json"]).output)
    bad = [g for g in report["status"]["failures"] if g["state"] == "BAD_INPUT"]
    assert sorted(g["count"] for g in bad) == [1, 1]
    assert any(missing in g["message"] and "HTTP 404" in g["message"] for g in bad)
    assert report["spend"]["totals"]["charged_micros"] == 15_000

    # --no-preflight sends them anyway (and the emulator, which fetches them, fails and charges them)
    unchecked = _run(emulator, m, "--no-preflight")
    assert unchecked.exit_code == 1
    assert emulator.stats()["submits"] == 2 + 2  # the 404 URL's two inputs are one request: sent once
    assert {"FAILED"} == {states for k, states in _states(tmp_path).items() if k.startswith("e:i") and k != "e:i0"}


def test_pilot_runs_send_the_first_items_of_the_selected_steps(tmp_path, emulator, image_server):
    urls = [image_server.add(f"{n}.png", (64 + n, 64)) for n in range(5)]
    m = _manifest(tmp_path, urls)
    pilot = _run(emulator, m, "--limit", "2")
    assert pilot.exit_code == 0, pilot.output
    assert "Pilot run: 6 item(s) outside --steps/--limit were not sent" in pilot.output
    assert emulator.stats()["submits"] == 4  # 2 edits, their 2 upscales
    done = {k for k, v in _states(tmp_path).items() if v == "COMPLETED"}
    assert done == {"e:i0", "e:i1", "u:i0", "u:i1"}

    edits = _run(emulator, m, "--steps", "e", "--limit", "3")
    assert edits.exit_code == 0 and emulator.stats()["submits"] == 5  # one more edit: the first 3 are done
    rest = _run(emulator, m)
    assert rest.exit_code == 0 and emulator.stats()["submits"] == 10
    assert set(_states(tmp_path).values()) == {"COMPLETED"}
    bad = _run(emulator, m, "--steps", "e,x")
    assert bad.exit_code == 2 and "no step 'x'" in bad.output


def test_a_pilot_budget_only_needs_to_cover_the_pilot(tmp_path, emulator, image_server):
    urls = [image_server.add(f"{n}.png", (64, 64 + n)) for n in range(4)]
    m = _manifest(tmp_path, urls, chained=False)
    refused = _run(emulator, m, "--budget", "0.02")
    assert refused.exit_code == 3  # 4 edits do not fit $0.02
    pilot = _run(emulator, m, "--budget", "0.02", "--limit", "2")
    assert pilot.exit_code == 0, pilot.output
    assert emulator.stats()["submits"] == 2


@pytest.mark.parametrize("flags", [["--retry-failed"], ["--force"]])
def test_retry_options_on_a_fresh_state_file_send_nothing_twice(tmp_path, emulator, image_server, flags):
    m = _manifest(tmp_path, [image_server.add("a.png", (64, 64))], chained=False)
    res = _run(emulator, m, *flags, "--yes")
    assert res.exit_code == 0, res.output
    assert emulator.stats()["submits"] == 1
    r = build_report(tmp_path / "m.pixbatch.duckdb")
    assert r.spend.totals.charged_micros == 10_000
