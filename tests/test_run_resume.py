"""Resume set-up: an unchanged manifest is not expanded again; any change to what the expansion reads is seen.

``--budget 0`` stops a run right after its set-up (BudgetExceeded), so these tests need no gateway.
"""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from pixbatch.runner import engine as runner
from pixbatch.errors import BudgetExceeded, ManifestError
from pixbatch.manifest import load_manifest, load_manifest_shallow
from pixbatch.runner import RunOptions, run

STEPS = """\
steps:
  - id: big
    op: upscale
    upscale_mode: factor
    factor: 2
"""


def write(tmp_path: Path, rows: int, naming: str = "") -> Path:
    with open(tmp_path / "inputs.csv", "w") as f:
        f.write("id,url,width,height\n")
        for i in range(rows):
            f.write(f"img{i},https://cdn.example.com/img{i}.jpg,{640 + i},480\n")
    p = tmp_path / "m.yaml"
    p.write_text(f"version: 1\n{naming}inputs:\n  - from: inputs.csv\n{STEPS}", "utf-8")
    return p


def set_up(path: Path, **kw) -> None:
    """One run that stops after its set-up (budget 0)."""
    options = RunOptions(budget_micros=0, api_key="k", base_url="http://127.0.0.1:9", **kw)
    with pytest.raises(BudgetExceeded):
        run(load_manifest_shallow(path), options=options)


def items(path: Path) -> list[tuple]:
    db = duckdb.connect(str(path.with_suffix(".pixbatch.duckdb")), read_only=True)
    try:
        return db.execute("SELECT key, scope, input_width FROM items ORDER BY idx").fetchall()
    finally:
        db.close()


@pytest.fixture
def expansions(monkeypatch):
    calls = []
    real = runner._Run._expand

    def counting(self, sizes):
        calls.append(1)
        return real(self, sizes)

    monkeypatch.setattr(runner._Run, "_expand", counting)
    return calls


def test_resume_of_an_unchanged_manifest_reuses_the_ingested_items_without_expanding(tmp_path, expansions):
    m = write(tmp_path, 5)
    set_up(m)
    assert len(expansions) == 1  # a fresh state file: ingest and scope digest in one walk
    first = items(m)
    assert len(first) == 5
    set_up(m)
    set_up(m)
    assert len(expansions) == 1
    assert items(m) == first


def test_a_changed_input_file_is_expanded_and_ingested_again(tmp_path, expansions):
    m = write(tmp_path, 5)
    set_up(m)
    write(tmp_path, 6)  # same manifest text, one more row in the CSV
    set_up(m)
    assert len(expansions) == 2  # changed: one walk, the ingest (streamed), under a new scope
    rows = items(m)
    assert len(rows) == 6 and len({scope for _k, scope, _w in rows}) == 1
    set_up(m)
    assert len(expansions) == 2


def test_a_new_budget_or_output_dir_in_the_manifest_does_not_expand_again(tmp_path, expansions):
    # a run stopped at its budget; the user raises it (or moves the outputs) and runs again:
    # no item changes, so the million items are not walked again
    m = write(tmp_path, 3)
    set_up(m)
    m.write_text(m.read_text().replace("version: 1\n", "version: 1\nbudget_usd: \"0.50\"\noutput_dir: elsewhere\n"))
    set_up(m)
    assert len(expansions) == 1


def test_a_changed_manifest_or_new_probed_sizes_expand_again(tmp_path, expansions):
    m = write(tmp_path, 3)
    set_up(m)
    m.write_text(m.read_text() + "    output_format: png\n")
    set_up(m)
    assert len(expansions) == 2
    db = duckdb.connect(str(m.with_suffix(".pixbatch.duckdb")))
    try:
        db.execute("INSERT INTO probes (url, width, height) VALUES ('https://cdn.example.com/other.jpg', 10, 10)")
    finally:
        db.close()
    set_up(m)
    assert len(expansions) == 3  # sizes differ: walked and ingested again (the same keys keep their rows)


def test_output_names_are_checked_on_the_ingest_walk_and_a_bad_name_keeps_nothing(tmp_path, monkeypatch, expansions):
    bad = write(tmp_path, 3, naming="naming: 'all/same.png'\n")
    with pytest.raises(ManifestError, match="both render the output name 'all/same.png'"):
        run(load_manifest_shallow(bad), options=RunOptions(budget_micros=0, api_key="k"))
    assert items(bad) == []  # the ingest was rolled back
    good = write(tmp_path, 3)

    from pixbatch.manifest import names

    real, checks = names.check_output_names, []
    monkeypatch.setattr(names, "check_output_names", lambda m: checks.append(1) or real(m))
    before = len(expansions)
    set_up(good)  # names are fine: checked on the ingest's walk, no walk of their own
    set_up(good)  # unchanged: no walk at all
    assert checks == [] and len(expansions) - before == 1 and len(items(good)) == 3


def test_a_fresh_state_file_is_ingested_in_one_walk_and_a_new_expansion_replaces_its_scope(tmp_path, expansions):
    from pixbatch.expand import expand
    from pixbatch.state import expansion_scope

    m = write(tmp_path, 4)
    set_up(m)
    assert len(expansions) == 1 and len({s for _k, s, _w in items(m)}) == 1
    first_scope = {s for _k, s, _w in items(m)}
    write(tmp_path, 5)
    set_up(m)  # a changed expansion streams in under a scope of its own; the 4 keys it shares keep their rows
    _scope, n = expansion_scope(expand(load_manifest(m)))
    scopes = {s for _k, s, _w in items(m)}
    assert n == 5 and len(items(m)) == 5 and len(scopes) == 1 and scopes != first_scope
