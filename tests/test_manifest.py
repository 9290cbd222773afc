"""Loading manifests: the typed result, exact money, lazy inputs, the schema bound to the contract."""

from __future__ import annotations

import inspect
import textwrap
from pathlib import Path

import pytest

from pixbatch import contract
from pixbatch.errors import ManifestError
from pixbatch.manifest import Input, Manifest, Problem, Step, check_manifest, load_manifest
from pixbatch.schemas import load_schema
from pixbatch.yamlpos import YamlSyntaxError, load as load_yaml


def write(text: str, name: str = "m.yaml") -> Path:
    p = Path(name)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(textwrap.dedent(text))
    return p


# -- the schema is the contract's shape -------------------------------------------------

JSON_TYPES = {"integer": "integer", "number": "number", "boolean": "boolean", "string": "string"}


@pytest.mark.parametrize("op", contract.OPS)
def test_schema_parameters_agree_with_the_contract(op):
    schema = load_schema("manifest")["$defs"]
    params = schema[f"{op}Params"]["properties"]
    step = schema[f"{op}Step"]["properties"]
    assert set(params) == set(contract.STEP_PARAMS[op])
    for name in contract.STEP_PARAMS[op]:
        p = contract.param(op, name)
        s = params[name]
        assert step[name] == s, f"{op}Step.{name} differs from {op}Params.{name}"
        if p.enum:
            assert tuple(s["enum"]) == p.enum, name
        else:
            assert s["type"] == JSON_TYPES[p.type], name
        assert s.get("minimum") == p.minimum and s.get("maximum") == p.maximum, name
        assert s.get("default") == p.default, name
    # a step takes exactly: its parameters, the common keys, and (edit) references
    common = {"id", "op", "for_each", "matrix", "naming"}
    assert set(step) == common | set(contract.STEP_PARAMS[op]) | ({"references"} if op == "edit" else set())


def test_documented_enums_are_the_contracts():
    schema = load_schema("manifest")["$defs"]
    assert tuple(schema["upscaleParams"]["properties"]["output_format"]["enum"]) == contract.OUTPUT_FORMATS
    assert tuple(schema["editParams"]["properties"]["aspect_ratio"]["enum"]) == contract.ASPECT_RATIOS
    assert schema["step"]["properties"]["op"]["enum"] == list(contract.OPS)


# -- the typed manifest ---------------------------------------------------------------


def test_load_manifest_returns_typed_values(tmp_path):
    Path("data").mkdir()
    Path("data/cat.csv").write_text("url,id,width,height,sku\nhttps://cdn.example.com/c/1.jpg,c1,800,600,S-1\n"
                                    "https://cdn.example.com/c/2.jpg,,,,S-2\n")
    Path("data/urls.txt").write_text("# product shots\nhttps://cdn.example.com/t/x.webp\n\n  https://cdn.example.com/t/y.png?v=2\n")
    m = load_manifest(write("""\
        version: 1
        name: spring
        budget_usd: 4.35
        output_dir: ../results
        defaults:
          upscale: {output_format: png}
        inputs:
          - https://cdn.example.com/a.png
          - id: hero
            url: https://cdn.example.com/hero.png
            width: 1024
            height: 768
            params:
              edit: {seed: 7}
          - from: cat.csv
          - from: urls.txt
        steps:
          - id: recolor
            op: edit
            for_each: [hero, c1]
            prompt: "in {color}"
            references: [a, https://cdn.example.com/palette.png]
            matrix:
              color: [black, red]
              seed: [1, 2]
          - id: hires
            op: upscale
            for_each: recolor
            upscale_mode: factor
            factor: 1.5
            naming: "{input}-{color}-{seed}.{ext}"
        """, "data/m.yaml"))
    assert isinstance(m, Manifest)
    assert m.name == "spring"
    assert m.budget_micros == 4_350_000  # 4.35 as a float would be 4349999.999...
    assert m.path == (tmp_path / "data/m.yaml").resolve()
    assert m.output_dir == (tmp_path / "results").resolve() and m.output_dir.is_absolute()
    assert m.state_path == (tmp_path / "data/m.pixbatch.duckdb").resolve()
    assert m.naming == "{step}/{stem}.{ext}"
    assert m.defaults == {"upscale": {"output_format": "png"}}

    inputs = list(m.iter_inputs())
    assert inputs[:2] == [
        Input("a", "https://cdn.example.com/a.png", origin="data/m.yaml:8:5"),
        Input("hero", "https://cdn.example.com/hero.png", 1024, 768, {"edit": {"seed": 7}}, origin="data/m.yaml:9:5"),
    ]
    assert inputs[1].size == (1024, 768) and inputs[0].size is None
    assert [(i.id, i.size, dict(i.vars)) for i in inputs[2:]] == [
        ("c1", (800, 600), {"sku": "S-1"}), ("2", None, {"sku": "S-2"}), ("x", None, {}), ("y", None, {}),
    ]
    assert inputs[2].origin == "data/cat.csv:2:1" and inputs[5].origin == "data/urls.txt:4:3"

    recolor, hires = m.steps
    assert recolor == Step(id="recolor", op="edit", for_each=("hero", "c1"), params={"prompt": "in {color}"},
                           matrix={"color": ("black", "red"), "seed": (1, 2)},
                           references=("https://cdn.example.com/a.png", "https://cdn.example.com/palette.png"),
                           naming="{step}/{stem}.{ext}", index=0)
    assert recolor.input_ids == ("hero", "c1") and recolor.upstream is None and recolor.matrix_size == 4
    assert hires.upstream == "recolor" and hires.params == {"upscale_mode": "factor", "factor": 1.5}
    assert hires.naming == "{input}-{color}-{seed}.{ext}"
    assert m.step("hires") is hires
    assert m.step_params(hires)["output_format"] == "png"  # defaults.upscale
    assert m.step_params(hires)["output_quality"] == 80  # documented default


@pytest.mark.parametrize("written, micros", [
    ('"25.00"', 25_000_000), ("0.10", 100_000), ("19.99", 19_990_000), ("3", 3_000_000),
    ('"0.000001"', 1), ("1_000.5", 1_000_500_000), (".inf", None), ("-1", None), ('"0"', None),
])
def test_budget_is_read_exactly(written, micros):
    path = write(f"version: 1\nbudget_usd: {written}\ninputs: [https://cdn.example.com/a.png]\nsteps: [{{id: u, op: upscale}}]\n")
    if micros is None:
        assert check_manifest(path)
    else:
        assert load_manifest(path).budget_micros == micros
        assert isinstance(load_manifest(path).budget_micros, int)


def test_no_budget_and_defaults():
    m = load_manifest(write("version: 1\ninputs: [https://cdn.example.com/a.png]\nsteps: [{id: u, op: upscale}]\n", "x/batch.yaml"))
    assert m.budget_micros is None and m.name == "batch"
    assert m.output_dir == Path("x/out").resolve() and m.state_path == Path("x/batch.pixbatch.duckdb").resolve()


def test_invalid_manifest_raises_manifest_error_with_every_problem():
    path = write("version: 1\ninputs: [ftp://a]\nsteps: [{id: u, op: upscal}]\n")
    with pytest.raises(ManifestError) as info:
        load_manifest(path)
    problems = info.value.problems
    assert [p.path for p in problems] == ["$.inputs[0]", "$.steps[0].op"]
    assert all(isinstance(p, Problem) for p in problems)
    assert info.value.exit_code == 2
    assert "m.yaml:3:21: $.steps[0].op: 'upscal' is not one of upscale, edit (did you mean 'upscale'?)" in str(info.value)
    assert check_manifest(path) == problems


def test_problem_renders_as_file_line_column():
    p = Problem("m.yaml", 3, 7, "$.steps[0].op", "'x' is not one of upscale, edit", "did you mean 'edit'?")
    assert str(p) == "m.yaml:3:7: $.steps[0].op: 'x' is not one of upscale, edit (did you mean 'edit'?)"
    assert str(Problem("m.yaml", 1, 1, "$", "bad")) == "m.yaml:1:1: $: bad"
    assert p.to_dict() == {"file": "m.yaml", "line": 3, "column": 7, "path": "$.steps[0].op",
                           "message": "'x' is not one of upscale, edit", "hint": "did you mean 'edit'?"}


# -- inputs stay lazy ------------------------------------------------------------------


def test_iter_inputs_reads_files_lazily_each_time():
    Path("urls.txt").write_text("https://cdn.example.com/1.png\n")
    m = load_manifest(write("version: 1\ninputs: [{from: urls.txt}]\nsteps: [{id: u, op: upscale}]\n"))
    stream = m.iter_inputs()
    assert inspect.isgenerator(stream)
    # the file is read when iterated, not when loaded
    with open("urls.txt", "a") as f:
        f.write("https://cdn.example.com/2.png\n")
    assert [i.id for i in stream] == ["1", "2"]
    assert m.count_inputs() == 2
    assert list(m.input_ids) == ["1", "2"]


def test_a_file_broken_after_validation_raises_with_its_position():
    Path("cat.csv").write_text("url\nhttps://cdn.example.com/1.png\n")
    m = load_manifest(write("version: 1\ninputs: [{from: cat.csv}]\nsteps: [{id: u, op: upscale}]\n"))
    Path("cat.csv").write_text("url\nhttps://cdn.example.com/1.png\nnot a url\n")
    with pytest.raises(ManifestError) as info:
        list(m.iter_inputs())
    assert str(info.value.problems[0]).startswith("cat.csv:3:1: row 3, column url: 'not a url' is not an http")


def test_input_lookup_by_id_stops_early():
    rows = "".join(f"https://cdn.example.com/{i}.png,p{i}\n" for i in range(1000))
    Path("cat.csv").write_text("url,id\n" + rows)
    m = load_manifest(write("""\
        version: 1
        inputs:
          - id: hero
            url: https://cdn.example.com/hero.png
          - from: cat.csv
        steps: [{id: u, op: upscale, for_each: [p3, hero]}]
        """))
    assert m.input("hero").url == "https://cdn.example.com/hero.png"
    assert m.find_inputs(["p3", "p999", "nope"]) == {
        "p3": Input("p3", "https://cdn.example.com/3.png", origin="cat.csv:5:1"),
        "p999": Input("p999", "https://cdn.example.com/999.png", origin="cat.csv:1001:1"),
    }
    with pytest.raises(KeyError, match="no input with id 'nope'"):
        m.input("nope")


def test_csv_columns_are_template_variables_when_every_input_has_them():
    Path("cat.csv").write_text("url,sku\nhttps://cdn.example.com/1.png,S1\n")
    ok = write("version: 1\ninputs: [{from: cat.csv}]\nsteps: [{id: u, op: upscale, naming: '{sku}.{ext}'}]\n")
    assert check_manifest(ok) == []
    mixed = write("version: 1\ninputs: [{from: cat.csv}, https://cdn.example.com/x.png]\n"
                  "steps: [{id: u, op: upscale, naming: '{sku}.{ext}'}]\n", "mixed.yaml")
    (p,) = check_manifest(mixed)
    assert p.message == "unknown placeholder {sku}" and p.path == "$.steps[0].naming"
    assert "'sku' is a column of some input files but not of every input this step reads" in p.hint
    # reading only the CSV's inputs makes the column available again
    only_csv = write("version: 1\ninputs: [{from: cat.csv}, https://cdn.example.com/x.png]\n"
                     "steps: [{id: u, op: upscale, for_each: ['1'], naming: '{sku}.{ext}'}]\n", "only.yaml")
    assert check_manifest(only_csv) == []


# -- YAML with positions ---------------------------------------------------------------


def test_yaml_positions_of_keys_values_and_items():
    doc = load_yaml("a: 1\nb:\n  - x\n  - {c: 2.50}\n")
    assert doc.data == {"a": 1, "b": ["x", {"c": 2.5}]}
    assert doc.values[("b", 1, "c")] == (4, 9) and doc.keys[("b", 1, "c")] == (4, 6)
    assert doc.values[("b", 0)] == (3, 5)
    assert doc.texts[("b", 1, "c")] == "2.50"
    assert doc.loc(("b", 7, "zzz")) == (2, 1) or doc.loc(("b", 7, "zzz")) == doc.values[("b",)]


def test_yaml_syntax_error_has_a_position():
    with pytest.raises(YamlSyntaxError) as info:
        load_yaml("a: 1\nb: [1, 2\nc: 3\n")
    assert (info.value.line, info.value.column) == (3, 2) and "not closed" in info.value.hint


def test_csv_quoting_bom_and_column_order():
    Path("cat.csv").write_bytes(
        "\ufeffsku,height,url,width,id,title\n"
        'S1,600,https://cdn.example.com/1.png,800,one,"Dress, linen"\n'
        "\n"
        'S2,,https://cdn.example.com/2.png,,,"say ""hi"""\n'.encode("utf-8"))
    m = load_manifest(write("version: 1\ninputs: [{from: cat.csv}]\n"
                            "steps: [{id: u, op: upscale, naming: '{sku}/{title}.{ext}'}]\n"))
    assert [(i.id, i.size, dict(i.vars)) for i in m.iter_inputs()] == [
        ("one", (800, 600), {"sku": "S1", "title": "Dress, linen"}),
        ("2", None, {"sku": "S2", "title": 'say "hi"'}),
    ]


def test_text_file_problems_have_line_and_column():
    Path("urls.txt").write_text("# shots\nhttps://cdn.example.com/1.png\n   www.example.com/2.png\n")
    (p,) = check_manifest(write("version: 1\ninputs: [{from: urls.txt}]\nsteps: [{id: u, op: upscale}]\n"))
    assert str(p) == ("urls.txt:3:4: line 3: 'www.example.com/2.png' is not an http:// or https:// URL "
                      "(write one http(s) URL or local file path per line; start comments with #)")


def test_name_escapes_agrees_with_its_rules_on_every_short_name():
    """The fast path of ``name_escapes`` (the common case, no splitting) never lets a bad name through."""
    import itertools
    import re

    from pixbatch.manifest import name_escapes

    def rules(name: str) -> bool:  # True: stays inside output_dir
        parts = re.split(r"[/\\]", name)
        return bool(name.strip()) and not name.startswith(("/", "\\", "~")) and not re.match(r"^[A-Za-z]:", name) \
            and ".." not in parts and not name.endswith(("/", "\\")) and parts[-1] not in ("", ".") \
            and "\x00" not in name

    alphabet = ["a", ".", "/", "\\", "~", ":", " ", "\x00", "..", "C", "\t"]
    for n in range(1, 5):
        for t in itertools.product(alphabet, repeat=n):
            name = "".join(t)
            assert (name_escapes(name) is None) == rules(name), repr(name)
