"""Every report format, parsed back (JSON, CSV), queried (the audit SQL) or rendered (HTML in Chromium)."""

from __future__ import annotations

import csv
import html
import io
import json
import os
import re
import shutil
import subprocess
from decimal import Decimal
from pathlib import Path

import duckdb
import pytest
from PIL import Image

from pixbatch.state.connection import connect
from pixbatch.render import CSV_COLUMNS, FORMATS, render
from pixbatch.report import build_report
from test_report import build_state


@pytest.fixture
def report(tmp_path):
    path = tmp_path / "m.pixbatch.duckdb"
    keys = build_state(path, tmp_path / "out")
    return build_report(path, outputs_limit=None), keys, path


def _walk(obj, path=""):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _walk(v, f"{path}.{k}")
            yield path, k, v, obj
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _walk(v, f"{path}[{i}]")


def test_json_round_trip_has_micros_and_decimal_strings_never_floats(report):
    r, keys, _ = report

    def no_floats(s):
        raise AssertionError(f"float in the JSON report: {s}")

    data = json.loads(render(r, "json"), parse_float=no_floats)
    assert data["format"] == "pixbatch-report/1"
    totals = data["spend"]["totals"]
    assert (totals["charged_micros"], totals["charged_usd"]) == (55000, "0.055")
    assert (totals["est_high_micros"], totals["delta_micros"], totals["delta_usd"]) == (140000, -85000, "-0.085")
    money_fields = 0
    for where, k, v, parent in _walk(data):
        if k.endswith("_micros") and v is not None:
            money_fields += 1
            assert isinstance(v, int), where
            assert Decimal(parent[k[:-7] + "_usd"]) * 1_000_000 == v, where
    assert money_fields > 50
    v = {x["cause"]: x for x in data["spend"]["variance"]}
    assert v["tier_changed"]["delta_micros"] == 5000
    assert data["status"]["by_state"]["COMPLETED"] == 6
    assert [g["message"] for g in data["status"]["failures"]][0] == "upstream timeout"
    assert data["status"]["failures"][0]["examples"][0]["key"] == keys["r4"]
    assert data["timing"]["steps"][0]["processing_p95_ms"] == 27300
    assert len(data["outputs"]["files"]) == data["outputs"]["count"] == 6
    assert data["outputs"]["truncated"] is False


def test_csv_round_trip(report):
    r, keys, _ = report
    rows = list(csv.DictReader(io.StringIO(render(r, "csv"))))
    assert tuple(rows[0]) == CSV_COLUMNS

    def pick(**match):
        return [x for x in rows if all(x[k] == v for k, v in match.items())]

    (charged,) = pick(section="total", metric="charged_micros")
    assert (charged["value"], charged["usd"]) == ("55000", "0.055")
    spend_charged = sum(int(x["value"]) for x in pick(section="spend", metric="charged_micros"))
    assert spend_charged == 55000
    deltas = sum(int(x["value"]) for x in pick(section="variance", metric="delta_micros"))
    (high,) = pick(section="total", metric="est_high_micros")
    assert int(high["value"]) + deltas == 55000
    (errors,) = pick(section="status", step="recolor", state="ERROR")
    assert errors["value"] == "2"
    assert {x["key"] for x in pick(section="failure_example", group="upstream timeout")} == {keys["r4"], keys["r5"]}
    outputs = pick(section="output")
    assert len(outputs) == 6 and all(len(x["sha256"]) == 64 and int(x["bytes"]) > 0 for x in outputs)
    assert sum(int(x["value"]) for x in pick(section="throughput", metric="completed")) == 6


def test_markdown_tables_and_audit_sql_that_runs(report):
    r, keys, path = report
    md = render(r, "md")
    assert "| recolor | edit | 8 | $0.08 | $0.03 | 3 | $0.01 | $0.01 | 0 |" in md
    assert "| Total |  | 16 | $0.12–$0.14 | $0.055 |" in md
    assert "## Audit trail" in md and "```sql" in md
    # every example query in the footer runs on the state file
    db = duckdb.connect(str(path), read_only=True)
    try:
        for _, sql in r.audit_sql:
            sql = sql.replace("<item key>", keys["r1"]).replace("<input id>", "a")
            assert db.execute(sql).fetchall(), sql
    finally:
        db.close()


def test_the_terminal_table_fits_80_columns_and_breaks_no_number_hash_or_name(report):
    r, keys, _ = report
    text = render(r, "table")  # 80 columns: the default
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 80 and all(line == line.rstrip() for line in lines)
    whole = [  # each of these on one line, never cut
        "$0.055", "$0.12–$0.14", "-$0.085", "27.3s", "Spend by step", "Estimate vs charged", "upstream timeout",
        "pixbatch reconcile", "hires/a.jpg", "2026-05-22 10:00:03", "recolor · edit", "<=4MP", "4-8MP",
        "recolor/d.jpg (input d)",  # a failure example: its output name and its input
        "hires/c.jpg <- recolor/c.jpg",  # a blocked item and the upstream item that blocked it
        "upstream recolor ended FAILED: content policy violation",
        *(f.sha256[:12] for f in r.outputs.files),
    ]
    for needle in whole:
        assert any(needle in line for line in lines), needle
    assert not any(f.sha256 in text for f in r.outputs.files)  # a 12-character prefix, not the whole hash
    assert text.index("recolor") < text.index("hires") < text.index("thumbs")  # manifest order


def test_big_runs_list_the_first_outputs_only(tmp_path):
    path = tmp_path / "big.duckdb"
    db = connect(path)
    db.execute("""
        INSERT INTO items (key, step, op, idx, body, est_low_micros, est_high_micros, tier, state, charged_micros)
        SELECT 'k' || i, 'up', 'upscale', i, '{}', 5000, 5000, 'upscale <=4MP', 'COMPLETED', 5000
        FROM range(20000) t(i)""")
    db.execute("""INSERT INTO outputs (key, path, sha256, bytes)
                  SELECT 'k' || i, 'up/' || lpad(i::VARCHAR, 6, '0') || '.jpg', sha256(i::VARCHAR), 100
                  FROM range(20000) t(i)""")
    db.close()
    r = build_report(path, outputs_limit=5)
    assert (r.outputs.count, r.outputs.total_bytes, len(r.outputs.files)) == (20000, 2_000_000, 5)
    assert r.outputs.files[0].path == "up/000000.jpg"
    assert r.spend.totals.charged_micros == 100_000_000
    assert "the first 5 are listed" in render(r, "md")


def test_unknown_format():
    with pytest.raises(ValueError, match="choose one of table, json, csv, md, html"):
        render(None, "pdf")
    assert FORMATS == ("table", "json", "csv", "md", "html")


# -- HTML in a real browser ----------------------------------------------------------------


@pytest.fixture(scope="session")
def chromium():
    """Path to Chromium; installed with apt-get only in CI as root, else the test is skipped."""
    found = shutil.which("chromium") or (os.path.exists("/usr/bin/chromium") and "/usr/bin/chromium")
    if found:
        return found
    if os.environ.get("CI") != "true" or os.geteuid() != 0:
        pytest.skip("chromium is not installed (the HTML render test installs it only in CI as root: "
                    "apt-get install -y chromium)")
    proc = subprocess.run("apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium",
                          shell=True, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0 or not shutil.which("chromium"):
        pytest.skip(f"could not install chromium: {proc.stderr[-500:]}")
    return shutil.which("chromium")


def _chromium(binary: str, tmp: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp / 'chromium-profile'}", *args],
        capture_output=True, text=True, timeout=90)


def test_html_is_self_contained_and_renders_its_charts_in_chromium(tmp_path, chromium):
    path = tmp_path / "m.pixbatch.duckdb"
    build_state(path, tmp_path / "out")
    db = connect(path)  # a failure message with markup must stay text
    db.execute("UPDATE items SET error = '<script>document.title=\"pwned\"</script>' WHERE state = 'FAILED'")
    db.close()
    page = render(build_report(path), "html")
    assert "<script" not in page and "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "https://" not in page and " src=" not in page and "<link" not in page  # no gallery: no image at all
    html_file = tmp_path / "report.html"
    html_file.write_text(page, "utf-8")

    proc = _chromium(chromium, tmp_path, "--dump-dom", html_file.as_uri())
    assert proc.returncode == 0, proc.stderr[-2000:]
    dom = proc.stdout
    for chart in ("chart-spend", "chart-status", "chart-throughput"):
        assert f'id="{chart}"' in dom, chart
    assert dom.count("<svg") == 3 and dom.count('class="bar"') >= 3 * 3 + 9
    assert "<title>pixbatch report: m.yaml (run-2)</title>" in dom  # the injected script did not run
    assert "&lt;script&gt;" in dom

    shot = tmp_path / "shot.png"
    proc = _chromium(chromium, tmp_path, f"--screenshot={shot}", "--window-size=1200,1600", html_file.as_uri())
    assert proc.returncode == 0, proc.stderr[-2000:]
    with Image.open(shot) as img:
        assert img.size == (1200, 1600)
        colors = img.convert("RGB").getcolors(maxcolors=1 << 20)
    assert len(colors) > 50  # text and charts, not a blank page


_CHECK = """<script>
window.addEventListener("load", () => {
  const imgs = [...document.querySelectorAll(".pic img")];
  const charts = ["chart-spend", "chart-status", "chart-throughput"].filter(
    id => { const e = document.getElementById(id); return e && e.getBoundingClientRect().width > 0; });
  document.body.setAttribute("data-check", JSON.stringify({
    images: imgs.length, loaded: imgs.filter(i => i.complete && i.naturalWidth > 0).length,
    charts: charts.length, labels: document.querySelectorAll("svg .value").length,
    links: [...document.querySelectorAll(".pic a")].map(a => a.getAttribute("href"))}));
});
</script>"""


def test_html_gallery_loads_its_images_in_chromium(tmp_path, chromium):
    path = tmp_path / "m.pixbatch.duckdb"
    out = tmp_path / "out"
    build_state(path, out)
    for i, f in enumerate(build_report(path, outputs_limit=None).outputs.files):  # real pictures this time
        Image.new("RGB", (320 + 40 * i, 240), (40 * i, 120, 200)).save(out / f.path, "JPEG")
    page = render(build_report(path, gallery=50), "html", base_dir=tmp_path)
    srcs = re.findall(r' src="([^"]*)"', page)
    assert len(srcs) == 6 + 2  # 6 outputs; the 2 upscales show their input (an edit's output) beside them
    assert all(s.startswith("data:image/jpeg;base64,") for s in srcs)  # embedded: the page stands alone
    assert "<script" not in page and "<link" not in page
    assert "pixbatch report: m.yaml" in page and "What was asked" in page
    for needle in ("input a", "$0.01", "content policy violation", "BLOCKED", "hires/a.jpg"):
        assert needle in page, needle
    html_file = tmp_path / "report.html"
    html_file.write_text(page.replace("</body>", _CHECK + "</body>"), "utf-8")

    proc = _chromium(chromium, tmp_path, "--virtual-time-budget=5000", "--dump-dom", html_file.as_uri())
    assert proc.returncode == 0, proc.stderr[-2000:]
    m = re.search(r'data-check="([^"]*)"', proc.stdout)
    assert m, proc.stdout[-2000:]
    check = json.loads(html.unescape(m.group(1)))
    assert check["images"] == check["loaded"] == 8
    assert check["charts"] == 3 and check["labels"] >= 6
    assert all((tmp_path / link).is_file() for link in check["links"])  # relative to the page, and there

    shot = tmp_path / "gallery.png"
    proc = _chromium(chromium, tmp_path, f"--screenshot={shot}", "--window-size=1200,1400", html_file.as_uri())
    assert proc.returncode == 0, proc.stderr[-2000:]
    with Image.open(shot) as img:
        assert len(img.convert("RGB").getcolors(maxcolors=1 << 20)) > 200  # pictures, not just text


def test_readme_lists_the_audit_sql_of_the_report():
    from pixbatch.report import AUDIT_SQL

    readme = (Path(__file__).parent.parent / "README.md").read_text("utf-8")
    block = readme.split("<!-- audit-sql:", 1)[1].split("```sql\n", 1)[1].split("```", 1)[0]
    expected = "".join(f"-- {title}\n{sql}\n" for title, sql in AUDIT_SQL)
    assert block == expected
