"""The split modules alone, on hand-built values (no YAML, no run): names, sources, templates."""

from __future__ import annotations

from pathlib import Path

import pytest

from pixbatch.errors import ManifestError
from pixbatch.expand import expand
from pixbatch.manifest import (MAX_ROW_PROBLEMS, FileSource, Input, Manifest, NameCheck, Step, check_output_names,
                               template_fields)
from pixbatch.manifest import names


def manifest(naming: str, n: int = 3) -> Manifest:
    inputs = tuple(Input(f"in{i}", f"https://cdn.example.com/{i}.png", 100, 100) for i in range(n))
    step = Step("up", "upscale", "inputs", {}, {}, (), naming, 0)
    return Manifest(path=Path("/m.yaml"), name="m", budget_micros=None, output_dir=Path("/out"),
                    state_path=Path("/m.duckdb"), naming=naming, defaults={}, steps=(step,), sources=inputs,
                    display="m.yaml")


def test_good_names_have_no_problems_and_a_walk_never_looks_twice(monkeypatch):
    m = manifest("{step}/{input}.{ext}")
    assert not m.names_checked  # built by hand: nobody checked
    assert check_output_names(m) == []
    monkeypatch.setattr(names, "check_output_names", lambda m: pytest.fail("second walk"))
    check = NameCheck(m)
    assert [i.key for i in check.wrap(expand(m))] == [i.key for i in expand(m)]
    check.verify()


def test_repeated_names_name_both_items_and_stop_at_the_limit():
    problems = check_output_names(manifest("all/same.png", 3))
    assert [str(p) for p in problems] == [
        "m.yaml:1:1: $.steps[0]: step 'up': items 0 and 1 both render the output name 'all/same.png' "
        "(make the naming template tell them apart, e.g. add {stem}, {index} or every matrix variable)",
        "m.yaml:1:1: $.steps[0]: step 'up': items 0 and 2 both render the output name 'all/same.png' "
        "(make the naming template tell them apart, e.g. add {stem}, {index} or every matrix variable)"]
    many = check_output_names(manifest("all/same.png", MAX_ROW_PROBLEMS + 11))
    assert len(many) == MAX_ROW_PROBLEMS + 1
    assert many[-1].message == "step 'up': 10 more duplicate output names"


def test_a_name_that_leaves_output_dir_is_a_problem():
    (problem,) = check_output_names(manifest("../{input}.{ext}", 1))
    assert problem.message == ("step 'up', item 0 (input 'in0'): the output name '../in0.jpg' contains '..'; "
                               "names must stay inside output_dir")


def test_a_walk_that_saw_a_bad_name_raises_the_manifest_error_load_manifest_would():
    m = manifest("all/same.png")
    check = NameCheck(m)
    for _ in check.wrap(expand(m)):
        pass
    with pytest.raises(ManifestError) as err:
        check.verify()
    assert len(err.value.problems) == 2
    assert str(err.value).startswith(
        "m.yaml is not a valid manifest (2 problems); fix these and run `pixbatch validate m.yaml`:\n")


def test_a_file_source_streams_its_rows_and_a_changed_file_is_an_error(tmp_path):
    csv = tmp_path / "in.csv"
    csv.write_text("url,id,width,height,sku\nhttps://cdn.example.com/a.png,a,10,20,S-1\nhttps://cdn.example.com/b.png,,,,S-2\n")
    src = FileSource(csv, "in.csv", "csv")
    assert [(i.id, i.size, dict(i.vars), i.origin) for i in src.inputs()] == [
        ("a", (10, 20), {"sku": "S-1"}, "in.csv:2:1"), ("b", None, {"sku": "S-2"}, "in.csv:3:1")]
    csv.write_text("url\nftp://x\n")
    with pytest.raises(ManifestError, match=r"in.csv:2:1: row 2, column url: 'ftp://x' is not an http"):
        list(src.inputs())


@pytest.mark.parametrize("template, fields", [
    ("{step}/{stem}.{ext}", [("step", ""), ("stem", ""), ("ext", "")]), ("{index:04d}", [("index", "04d")]),
    ("{{literal}}", [])])
def test_template_fields(template, fields):
    assert template_fields(template) == fields


@pytest.mark.parametrize("template", ["{}", "{a.b}", "{a!r}", "{a", "{a:{b}}"])
def test_malformed_templates_say_why(template):
    with pytest.raises(ValueError):
        template_fields(template)
