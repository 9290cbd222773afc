"""Where a manifest comes from (a file, YAML text, a mapping) and loading it shallow."""

from __future__ import annotations

import textwrap
from decimal import Decimal
from pathlib import Path

import pytest
import yaml

from pixbatch.errors import BudgetExceeded, ManifestError
from pixbatch.expand import expand
from pixbatch.manifest import check_manifest, load_manifest, load_manifest_shallow, validate_manifest

EXAMPLE = Path(__file__).resolve().parent.parent / "manifests" / "example.yaml"

SMALL = textwrap.dedent("""\
    version: 1
    inputs:
      - https://cdn.example.com/a.png
      - https://cdn.example.com/b.png
    steps:
      - {id: up, op: upscale}
    """)


def keys(m) -> list[tuple[str, str, str]]:
    return [(i.step, i.key, i.output_name) for i in expand(m)]


def test_a_file_yaml_text_and_a_mapping_give_the_same_manifest():
    text = EXAMPLE.read_text()
    from_file = load_manifest(EXAMPLE)
    from_text = load_manifest(text, base_dir=EXAMPLE.parent)
    from_data = load_manifest(yaml.safe_load(text), base_dir=EXAMPLE.parent)
    for m in (from_text, from_data):
        assert m.steps == from_file.steps and m.defaults == from_file.defaults
        assert m.budget_micros == from_file.budget_micros == 1_000_000
        assert m.output_dir == from_file.output_dir  # relative to base_dir, as to the file's directory
        assert keys(m) == keys(from_file)
    assert from_text.display == "<string>" and from_data.display == "<data>"
    assert next(from_text.iter_inputs()).origin == "<string>:12:5"
    assert next(from_data.iter_inputs()).origin == "<data>:1:1"


def test_text_and_data_default_to_the_working_directory_and_the_name_manifest(tmp_path):
    m = load_manifest(SMALL)
    assert m.name == "manifest"
    assert m.state_path == tmp_path / "manifest.pixbatch.duckdb"
    assert m.output_dir == tmp_path / "out"
    assert m.path == tmp_path / "<string>" and not m.path.exists()
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "in.txt").write_text("https://cdn.example.com/c.png\n")
    data = {"version": 1, "inputs": [{"from": "in.txt"}], "steps": [{"id": "up", "op": "upscale"}]}
    assert [i.id for i in load_manifest(data, base_dir="sub").iter_inputs()] == ["c"]
    problems = check_manifest(data)  # in.txt is not in the working directory
    assert [str(p) for p in problems] == [
        "<data>:1:1: $.inputs[0].from: the file in.txt does not exist (the path is relative to the manifest's directory)"]


def test_how_a_string_is_read():
    Path("m.yaml").write_text(SMALL)
    assert load_manifest("m.yaml").display == "m.yaml"  # a path
    flow = "{version: 1, inputs: [https://cdn.example.com/a.png], steps: [{id: up, op: upscale}]}"
    assert load_manifest(flow).display == "<string>"  # starts with {: YAML text
    assert load_manifest(SMALL).display == "<string>"  # has a newline: YAML text
    (problem,) = check_manifest("version: 1")  # neither: a path, which does not exist
    assert str(problem) == ("version: 1:1:1: $: the manifest file does not exist (check the path; YAML text is "
                            "read as text only when it has a newline or starts with '{')")


def test_problems_in_text_have_lines_and_in_data_json_paths_only():
    bad = SMALL.replace("op: upscale", "op: upscael")
    with pytest.raises(ManifestError) as text_err:
        load_manifest(bad)
    assert str(text_err.value).splitlines() == [
        "<string> is not a valid manifest (1 problem); fix these and validate again:",
        "<string>:6:18: $.steps[0].op: 'upscael' is not one of upscale, edit (did you mean 'upscale'?)"]
    _m, problems = validate_manifest(yaml.safe_load(bad))
    assert [str(p) for p in problems] == [
        "<data>:1:1: $.steps[0].op: 'upscael' is not one of upscale, edit (did you mean 'upscale'?)"]
    (syntax,) = check_manifest("version: 1\nsteps: [\n")
    assert (syntax.file, syntax.line) == ("<string>", 3)


@pytest.mark.parametrize("budget, micros", [
    (0.1, 100_000), (19.99, 19_990_000), (Decimal("4.35"), 4_350_000), (3, 3_000_000), ("25.00", 25_000_000)])
def test_a_budget_given_as_data_is_read_exactly(budget, micros):
    data = yaml.safe_load(SMALL) | {"budget_usd": budget}
    assert load_manifest(data).budget_micros == micros


def test_data_may_use_tuples_and_paths(tmp_path):
    data = {"version": 1, "output_dir": tmp_path / "images", "inputs": ("https://cdn.example.com/a.png",),
            "steps": ({"id": "up", "op": "upscale", "matrix": {"target": (1, 2)}},)}
    m = load_manifest(data)
    assert m.output_dir == tmp_path / "images" and m.steps[0].matrix == {"target": (1, 2)}


def test_what_cannot_be_a_manifest():
    with pytest.raises(TypeError, match="path, YAML text or a mapping"):
        load_manifest(b"version: 1\n")
    with pytest.raises(TypeError, match="base_dir is for a manifest given as text or data"):
        load_manifest(EXAMPLE, base_dir=".")


# -- shallow: names are checked by whoever walks the expansion --------------------------

SAME_NAME = SMALL.replace("version: 1\n", "version: 1\nnaming: all/same.png\n")


def test_a_shallow_manifest_says_its_names_are_not_checked_yet():
    assert load_manifest(SMALL).names_checked
    assert not load_manifest_shallow(SMALL).names_checked
    assert not load_manifest(SMALL, deep=False).names_checked  # the older spelling
    with pytest.raises(ManifestError, match="both render the output name 'all/same.png'"):
        load_manifest(SAME_NAME)
    assert load_manifest_shallow(SAME_NAME).steps  # loads: the names wait for a walk


def test_estimate_and_run_check_the_names_of_a_shallow_manifest_on_their_own():
    from pixbatch.estimate import estimate_manifest
    from pixbatch.pricing import PriceTable
    from pixbatch.runner import RunOptions, run

    with pytest.raises(ManifestError, match="both render the output name 'all/same.png'"):
        estimate_manifest(load_manifest_shallow(SAME_NAME), PriceTable.load(), probe=False)
    assert estimate_manifest(load_manifest(SMALL), PriceTable.load(), probe=False).item_count == 2
    options = RunOptions(budget_micros=0, api_key="k", base_url="http://127.0.0.1:9")
    with pytest.raises(ManifestError, match="both render the output name 'all/same.png'"):
        run(load_manifest_shallow(SAME_NAME), options=options)
    with pytest.raises(BudgetExceeded):  # the set-up went through
        run(load_manifest_shallow(SMALL), options=options)
