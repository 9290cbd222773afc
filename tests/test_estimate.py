"""Dry-run estimates: the pure aggregation, then `pixbatch estimate` end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from decimal import Decimal

import pytest
from click.testing import CliRunner
from hypothesis import given, settings, strategies as st

from pixbatch.estimate import EstimateBuilder, estimate_items
from pixbatch.estimate_render import estimate_to_dict
from pixbatch.items import WorkItem
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
    for _ in range(draw(st.integers(0, 25))):
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


@settings(max_examples=100, deadline=None)
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


# -- `pixbatch estimate` end to end ------------------------------------------------------

from pixbatch.cli import cli  # noqa: E402
from pixbatch.estimate import estimate  # noqa: E402
from pixbatch.manifest import load_manifest  # noqa: E402
from pixbatch.state.connection import connect  # noqa: E402


def write_manifest(tmp_path, inputs, steps, **top):
    """A manifest file (JSON is YAML) next to the test's other files."""
    path = tmp_path / "batch.yaml"
    path.write_text(json.dumps({"version": 1, **top, "inputs": inputs, "steps": steps}, indent=2))
    return path


def run_cli(*args, code=0):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == code, (result.output, result.exception)
    return result


def run_json(*args, code=0):
    return json.loads(run_cli("estimate", *args, "--json", code=code).stdout)


def declared(i, w, h, host="http://127.0.0.1:9"):
    return {"id": f"in{i}", "url": f"{host}/in{i}.png", "width": w, "height": h}


EDIT = {"id": "recolor", "op": "edit", "prompt": "make it {color}", "aspect_ratio": "1:1",
        "matrix": {"color": ["red"], "seed": [1, 2]}}
CHAIN = {"id": "hires", "op": "upscale", "for_each": "recolor", "upscale_mode": "factor", "factor": 2}


def test_exact_estimate_with_declared_sizes(tmp_path):
    # port 9 (discard) on loopback: if anything were fetched, the estimate would show errors
    m = write_manifest(tmp_path, [declared(0, 640, 480), declared(1, 800, 600), declared(2, 300, 300)],
                       [EDIT, CHAIN, {"id": "thumbs", "op": "upscale", "target": 2}])
    d = run_json(m)
    # 3 inputs x 2 seeds = 6 edits at $0.01; 3 target-2MP upscales at $0.005; each edit is predicted
    # 1024x1024 (1:1), x2 = 2048x2048 = 4,194,304 px: the lower tier if 1 MP is 2^20 px, the upper if
    # 10^6, and the edit size is a prediction anyway: 6 upscales at $0.005-$0.01, never "exact"
    lines = [(x["step"], x["tier"], x["count"], x["unit_low"]["usd"], x["subtotal_high"]["usd"]) for x in d["lines"]]
    assert lines == [("recolor", "edit", 6, "0.01", "0.06"),
                     ("hires", "upscale <=4MP .. upscale 4-8MP", 6, "0.005", "0.06"),
                     ("thumbs", "upscale <=4MP", 3, "0.005", "0.015")]
    assert d["total"] == {"low": {"micros": 105_000, "usd": "0.105"}, "high": {"micros": 135_000, "usd": "0.135"},
                          "exact": False}
    (u,) = d["uncertain"]
    assert (u["step"], u["count"], u["unit_low"]["usd"], u["unit_high"]["usd"]) == ("hires", 6, "0.005", "0.01")
    assert "`target: 4` prices them at $0.005 each, exactly" in u["suggestion"]
    assert d["item_count"] == 15 and d["sizes"]["needed"] == 0 and d["plan"] is None
    assert not (tmp_path / "batch.pixbatch.duckdb").exists()  # nothing to probe: the state file is not touched
    out = run_cli("estimate", m).stdout
    assert "Total: $0.105 - $0.135 (a range" in out and "(exact)" not in out and "upscale <=4MP" in out
    assert "hires: 6 items cost $0.005-$0.01 each" in out and "fix: `upscale_mode: target`" in out
    assert "FAILED" in out and "ERROR is not charged" in out and "2026-05-22" in out


def test_exactly_four_megapixels_is_the_lower_tier(tmp_path):
    m = write_manifest(tmp_path, [declared(0, 1000, 1000), declared(1, 1025, 1024), declared(2, 1000, 1001)],
                       [{"id": "up", "op": "upscale", "upscale_mode": "factor", "factor": 2}])
    d = run_json(m)
    # 2000x2000 is exactly 4 MP: the <=4MP tier; 2050x2048 = 4,198,400 px is above 4 MP under either
    # reading; 2000x2002 = 4,004,000 px is above 4 x 10^6 but not above 4 x 2^20: a range
    assert [(x["tier"], x["count"], x["unit_low"]["micros"], x["unit_high"]["micros"]) for x in d["lines"]] == [
        ("upscale <=4MP", 1, 5_000, 5_000), ("upscale 4-8MP", 1, 10_000, 10_000),
        ("upscale <=4MP .. upscale 4-8MP", 1, 5_000, 10_000)]
    assert (d["total"]["low"]["micros"], d["total"]["high"]["micros"], d["total"]["exact"]) == (20_000, 25_000, False)
    assert "4,000,000..4,194,304 px" in d["uncertain"][0]["reason"]


def test_library_estimate_is_what_the_command_prints(tmp_path):
    m = write_manifest(tmp_path, [declared(0, 1000, 1000), {"id": "x", "url": "http://127.0.0.1:9/x.png"}],
                       [{"id": "up", "op": "upscale", "upscale_mode": "factor", "factor": 2}])
    manifest = load_manifest(m)
    est = estimate(manifest, PriceTable.load())
    assert (est.low_micros, est.high_micros) == (10_000, 15_000)
    sized = estimate(manifest, PriceTable.load(), sizes={"http://127.0.0.1:9/x.png": (3000, 3000)}.get)
    assert (sized.low_micros, sized.high_micros, sized.exact) == (15_000, 15_000, True)


def undeclared(name, url):
    return {"id": name, "url": url}


FACTOR = {"id": "up", "op": "upscale", "upscale_mode": "factor", "factor": 2}


def test_probe_uses_range_and_caches_the_size(tmp_path, image_server):
    import io
    import os

    from PIL import Image

    buf = io.BytesIO()
    Image.frombytes("RGB", (1500, 1500), os.urandom(1500 * 1500 * 3)).save(buf, "PNG")
    big = image_server.add_bytes("big.png", buf.getvalue())
    small = image_server.add("small.jpg", (900, 600))
    m = write_manifest(tmp_path, [undeclared("big", big), undeclared("small", small)], [FACTOR])
    d = run_json(m)
    # 1500x1500 x2 = 9 MP: capped at 8 MP, the dear tier; 900x600 x2 = 2.16 MP, the cheap one
    assert [(x["tier"], x["count"]) for x in d["lines"]] == [("upscale 4-8MP", 1), ("upscale <=4MP", 1)]
    assert d["total"]["exact"] and d["total"]["high"]["micros"] == 15_000
    assert {k: d["sizes"][k] for k in ("needed", "probed", "cached", "unknown")} == {
        "needed": 2, "probed": 2, "cached": 0, "unknown": 0}
    db = connect(tmp_path / "batch.pixbatch.duckdb")
    (n,) = db.execute("SELECT bytes_read FROM probes WHERE url = ?", [big]).fetchone()
    db.close()
    assert n <= 4096 < len(buf.getvalue()) // 100  # a prefix of a 6.7 MB file

    # second run: the images are gone from the server, yet the sizes come from the cache
    for f in image_server.root.iterdir():
        f.unlink()
    d2 = run_json(m)
    assert d2["total"] == d["total"] and d2["sizes"]["cached"] == 2 and d2["sizes"]["probed"] == 0


def test_server_without_range_support(tmp_path, image_server):
    image_server.add("p.webp", (2100, 1000))
    m = write_manifest(tmp_path, [undeclared("p", f"{image_server.url}/no-range/p.webp")], [FACTOR])
    d = run_json(m)
    assert [(x["tier"], x["count"]) for x in d["lines"]] == [("upscale 4-8MP", 1)] and d["total"]["exact"]


def test_no_probe_gives_a_range_and_says_why(tmp_path, image_server):
    url = image_server.add("a.png", (100, 100))
    inputs = [declared(0, 1000, 1000)] + [undeclared(f"u{i}", f"{url}?v={i}") for i in range(5)]
    m = write_manifest(tmp_path, inputs, [EDIT | {"aspect_ratio": "match_input_image"}, CHAIN])
    d = run_json(m, "--no-probe")
    # edits: 6 inputs x 2 seeds, exact; chained upscales: 2 of a known input (its edit predicted 1024x1024,
    # x2 = 4,194,304 px: between the readings of 4 MP) and 10 of unknown inputs: all ranges, for two reasons
    assert [(x["step"], x["count"], x["exact"]) for x in d["lines"]] == [
        ("recolor", 12, True), ("hires", 2, False), ("hires", 10, False)]
    assert d["total"]["low"]["usd"] == "0.18" and d["total"]["high"]["usd"] == "0.24"
    known, u = d["uncertain"]
    assert known["count"] == 2 and "4,000,000..4,194,304 px" in known["reason"]
    assert u["step"] == "hires" and u["count"] == 10 and "--no-probe" in u["reason"] and len(u["examples"]) == 3
    assert not (tmp_path / "batch.pixbatch.duckdb").exists()
    out = run_cli("estimate", m, "--no-probe").stdout
    assert "$0.18 - $0.24" in out and "10 items" in out and "hires/u0-red-1.jpg" in out


@pytest.fixture
def silent_port():
    import socket

    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    s.listen(8)
    yield s.getsockname()[1]
    s.close()


def test_probe_failures_are_per_item_errors_cached_and_refreshable(tmp_path, image_server, silent_port):
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    closed = s.getsockname()[1]
    s.close()
    urls = {
        "nf": f"{image_server.url}/img/later.png",
        "boom": f"{image_server.url}/status/500",
        "txt": image_server.add_bytes("notes.txt", b"just text\n" * 100),
        "slow": f"http://127.0.0.1:{silent_port}/slow.png",
        "down": f"http://127.0.0.1:{closed}/down.png",
        "ok": image_server.add("ok.png", (500, 500)),
    }
    m = write_manifest(tmp_path, [undeclared(k, u) for k, u in urls.items()], [FACTOR])
    d = run_json(m, "--probe-timeout", "0.5")
    errors = {e["inputs"][0]: e["error"] for e in d["sizes"]["probe_errors"]}
    assert errors["nf"] == "HTTP 404 Not Found" and errors["boom"] == "HTTP 500 Internal Server Error"
    assert errors["txt"].startswith("not an image") and errors["slow"] == "timed out after 0.5s"
    assert errors["down"].startswith("cannot connect")
    assert d["total"]["low"]["micros"] == 6 * 5_000 and d["total"]["high"]["micros"] == 5_000 + 5 * 10_000
    assert d["sizes"]["unknown"] == 5 and d["sizes"]["probed"] == 1
    out = run_cli("estimate", m, "--probe-timeout", "0.5").stdout
    assert "Bad inputs (5 URLs" in out and "HTTP 404 Not Found" in out and urls["nf"] in out and "BAD_INPUT" in out

    image_server.add("later.png", (1200, 1200))  # fixed at the source; the failure is cached
    assert len(run_json(m, "--no-probe")["sizes"]["probe_errors"]) == 5
    d3 = run_json(m, "--refresh-probes", "--probe-timeout", "0.5")
    assert len(d3["sizes"]["probe_errors"]) == 4 and d3["sizes"]["cached"] == 1 and d3["sizes"]["probed"] == 1


def test_budget_exceeded_exits_3_with_both_numbers(tmp_path):
    m = write_manifest(tmp_path, [declared(0, 640, 480), declared(1, 640, 480)], [EDIT], budget_usd="0.05")
    assert run_json(m)["budget"] == {"micros": 50_000, "usd": "0.05", "fits": True}  # 4 x $0.01 fits
    r = run_cli("estimate", m, "--budget", "0.039", code=3)
    assert "$0.04" in r.stderr and "$0.039" in r.stderr and "Total: $0.04" in r.stdout
    assert run_json(m, "--budget", "0.03", code=3)["budget"]["fits"] is False
    run_cli("estimate", m, "--budget", "0.04")  # equal to the upper bound: fits
    assert "--budget" in run_cli("estimate", m, "--budget", "lots", code=2).stderr


def test_json_shape(tmp_path):
    m = write_manifest(tmp_path, [declared(0, 640, 480), {"id": "u", "url": "http://127.0.0.1:9/u.png"}], [FACTOR])
    d = run_json(m, "--no-probe")
    assert set(d) == {"total", "budget", "item_count", "duplicates", "lines", "uncertain", "plan", "state_note",
                      "sizes", "price_table", "assumptions"}
    assert set(d["lines"][0]) == {"step", "op", "tier", "count", "exact", "unit_low", "unit_high", "subtotal_low",
                                  "subtotal_high", "reason"}
    assert d["budget"] is None and d["price_table"]["effective_date"] == "2026-05-22"
    money = [d["total"]["low"], d["total"]["high"], *(x[k] for x in d["lines"] for k in
                                                      ("unit_low", "unit_high", "subtotal_low", "subtotal_high"))]
    for amount in money:
        assert type(amount["micros"]) is int and Decimal(amount["usd"]) * 1_000_000 == amount["micros"]
    assert all(isinstance(a, str) for a in d["assumptions"])


def test_pricing_file_replaces_the_table(tmp_path):
    from importlib import resources

    data = json.loads(resources.files("pixbatch").joinpath("data/pricing.json").read_text())
    data["operations"]["edit"]["tiers"][0]["price_usd"] = "0.025"
    data["source"], data["effective_date"] = "our negotiated rates", "2027-01-01"
    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps(data))
    m = write_manifest(tmp_path, [declared(0, 640, 480)], [EDIT])
    d = run_json(m, "--pricing", prices)
    assert d["total"]["high"]["usd"] == "0.05" and d["price_table"]["source"] == "our negotiated rates"
    assert "2027-01-01" in d["assumptions"][0]
    assert "does not exist" in run_cli("estimate", m, "--pricing", tmp_path / "nope.json", code=2).stderr


def test_locked_state_file_estimates_without_the_cache(tmp_path, image_server):
    url = image_server.add("a.png", (3000, 2000))
    m = write_manifest(tmp_path, [undeclared("a", url)], [FACTOR])
    state = tmp_path / "batch.pixbatch.duckdb"
    connect(state).close()
    holder = subprocess.Popen([sys.executable, "-c", "import duckdb, sys, time; c = duckdb.connect(sys.argv[1]);"
                               " print('ready', flush=True); time.sleep(120)", str(state)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        d = run_json(m)
        assert d["total"]["exact"] and d["total"]["high"]["micros"] == 10_000  # 6000x4000 capped at 8 MP
        assert "in use by another pixbatch process" in d["sizes"]["cache_note"]
        assert any("probe cache not used" in a for a in d["assumptions"])
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()
    d2 = run_json(m, "--no-probe")  # nothing was cached while locked
    assert not d2["total"]["exact"]


def test_state_option_chooses_the_cache_file(tmp_path, image_server):
    url = image_server.add("a.png", (300, 200))
    m = write_manifest(tmp_path, [undeclared("a", url)], [FACTOR])
    run_json(m, "--state", tmp_path / "elsewhere.duckdb")
    assert (tmp_path / "elsewhere.duckdb").exists() and not (tmp_path / "batch.pixbatch.duckdb").exists()
    assert run_json(m, "--state", tmp_path / "elsewhere.duckdb", "--no-probe")["total"]["exact"]
