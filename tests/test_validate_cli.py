"""`pixbatch validate`: every problem at once, each with file:line:column, a JSON path and a fix."""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from pixbatch.cli import cli

MANIFESTS = Path(__file__).resolve().parent.parent / "manifests"

GOOD = """\
version: 1
inputs:
  - id: hero
    url: https://cdn.example.com/hero.png
    width: 1024
    height: 768
  - https://cdn.example.com/b.png
steps:
  - id: recolor
    op: edit
    prompt: "make it {color}"
    matrix:
      color: [black, red]
  - id: hires
    op: upscale
    for_each: recolor
"""


def validate(text: str, *args: str, files: dict[str, str] | None = None) -> tuple[int, str]:
    Path("m.yaml").write_text(textwrap.dedent(text))
    for name, content in (files or {}).items():
        Path(name).write_text(content)
    result = CliRunner().invoke(cli, ["validate", "m.yaml", *args])
    return result.exit_code, result.output


def lines(output: str) -> list[str]:
    """The problem lines (file:line:column: ...), without the closing count."""
    return [ln for ln in output.splitlines() if re.match(r"^\S+:\d+:\d+: ", ln)]


def test_valid_manifest_prints_a_summary():
    code, out = validate(GOOD)
    assert code == 0, out
    assert "m.yaml is valid: 2 inputs, 2 steps, 8 work items (recolor 4, hires 4)" in out


@pytest.mark.parametrize("name", ["example.yaml", "catalog.yaml"])
def test_shipped_examples_validate(name):
    result = CliRunner().invoke(cli, ["validate", str(MANIFESTS / name)])
    assert result.exit_code == 0, result.output
    assert "is valid" in result.output


def test_malformed_yaml_points_at_the_position():
    code, out = validate("version: 1\ninputs: [https://a.example.com/x.png\nsteps: []\n")
    assert code == 2
    (line,) = lines(out)
    assert line.startswith("m.yaml:3:")
    assert "invalid YAML" in line and "not closed" in line


def test_tab_indentation_gets_a_hint():
    code, out = validate("version: 1\ninputs:\n\t- https://a.example.com/x.png\n")
    assert code == 2
    assert "m.yaml:3:1: $: invalid YAML" in out and "indent with spaces, not tabs" in out


def test_every_problem_is_reported_at_once_with_did_you_mean():
    code, out = validate("""\
        version: 1
        budget_usd: "ten"
        inputs:
          - url: https://cdn.example.com/a.png
            widht: 100
        steps:
          - id: up
            op: upscale
            output_formt: png
            output_format: jpeg
            upscale_mode: factr
          - id: ed
            op: edt
        """)
    assert code == 2
    got = lines(out)
    assert got == [
        "m.yaml:2:13: $.budget_usd: 'ten' is not a positive amount of dollars with at most 6 decimals "
        "(write it like \"25.00\")",
        "m.yaml:5:5: $.inputs[0].widht: unknown key 'widht' (did you mean 'width'?)",
        "m.yaml:9:5: $.steps[0].output_formt: unknown key 'output_formt' (did you mean 'output_format'?)",
        "m.yaml:10:20: $.steps[0].output_format: 'jpeg' is not one of webp, jpg, png (did you mean 'jpg'?)",
        "m.yaml:11:19: $.steps[0].upscale_mode: 'factr' is not one of target, factor (did you mean 'factor'?)",
        "m.yaml:13:9: $.steps[1].op: 'edt' is not one of upscale, edit (did you mean 'edit'?)",
    ]
    assert "6 problems" in out


def test_missing_required_keys_and_wrong_types():
    code, out = validate("""\
        version: 1
        inputs: https://cdn.example.com/a.png
        steps:
          - op: upscale
            target: "4"
        """)
    assert code == 2
    text = "\n".join(lines(out))
    assert "m.yaml:2:9: $.inputs: expected a list of images, got a string" in text
    assert "m.yaml:4:5: $.steps[0]: the required key 'id' is missing" in text
    assert "$.steps[0].target: expected output size in megapixels" in text and "write the number without quotes" in text


def test_matrix_values_are_checked_against_the_parameter_rules():
    code, out = validate("""\
        version: 1
        inputs: [https://cdn.example.com/a.png]
        steps:
          - id: ed
            op: edit
            prompt: p
            matrix:
              seed: [1, "x"]
              aspect_ratio: ["16:9", "16:10"]
          - id: up
            op: upscale
            matrix:
              target: [4, 9]
        """)
    assert code == 2
    got = lines(out)
    assert got[0].startswith("m.yaml:8:17: $.steps[0].matrix.seed[1]: expected an integer")
    assert got[1].startswith("m.yaml:9:30: $.steps[0].matrix.aspect_ratio[1]: '16:10' is not one of")
    assert got[2].startswith("m.yaml:13:19: $.steps[1].matrix.target[1]: 9 is out of range")
    assert len(got) == 3


def test_step_references_unknown_later_self_and_cycles():
    code, out = validate("""\
        version: 1
        inputs: [https://cdn.example.com/a.png]
        steps:
          - id: a
            op: upscale
            for_each: b
          - id: b
            op: upscale
            for_each: a
          - id: c
            op: upscale
            for_each: c
          - id: d
            op: upscale
            for_each: bb
          - id: e
            op: edit
            prompt: p
            references: [c, nobody, ftp://x.example.com/p.png]
        """)
    assert code == 2
    text = "\n".join(lines(out))
    assert "m.yaml:6:15: $.steps[0].for_each: for_each names step 'b', which comes later (steps[1]); this is a cycle: a -> b -> a" in text
    assert "m.yaml:12:15: $.steps[2].for_each: step 'c' names itself in for_each" in text
    assert "m.yaml:15:15: $.steps[3].for_each: for_each names 'bb', which is neither 'inputs' nor an earlier step (did you mean 'b'?)" in text
    assert "$.steps[4].references[0]: references names step 'c'" in text
    assert "$.steps[4].references[1]: 'nobody' is neither a URL nor an input id" in text
    assert "$.steps[4].references[2]: 'ftp://x.example.com/p.png' is not an http:// or https:// URL" in text
    assert "steps[1].for_each" not in text  # b reads an earlier step: fine


def test_duplicate_ids_name_both_places():
    code, out = validate("""\
        version: 1
        inputs:
          - https://cdn.example.com/x/a.png
          - id: hero
            url: https://cdn.example.com/hero.png
          - from: cat.csv
          - https://cdn.example.com/z/hero.jpg
        steps:
          - id: up
            op: upscale
          - id: up
            op: upscale
        """, files={"cat.csv": "url,id\nhttps://cdn.example.com/y/a.png,\nhttps://cdn.example.com/h.png,hero\n"})
    assert code == 2
    got = lines(out)
    assert "m.yaml:11:9: $.steps[1].id: step id 'up' is already used by steps[0] (line 9) (give every step its own id)" in got
    assert "m.yaml:7:5: $.inputs[3]: duplicate input id 'hero' (first at m.yaml:4:5) (give one of them an explicit id (id: ...))" in got
    assert "cat.csv:2:1: line 2: duplicate input id 'a' (first at m.yaml:3:5) (give one of them an explicit id (an id column))" in got
    assert "cat.csv:3:1: line 3: duplicate input id 'hero' (first at m.yaml:4:5) (give one of them an explicit id (an id column))" in got


def test_empty_expansions_are_errors():
    code, out = validate("""\
        version: 1
        inputs:
          - from: cat.csv
          - from: urls.txt
        steps:
          - id: up
            op: upscale
            matrix:
              target: []
          - id: up2
            op: upscale
            for_each: []
        """, files={"cat.csv": "url,id,width,height\n", "urls.txt": "# nothing yet\n\n"})
    assert code == 2
    text = "\n".join(lines(out))
    assert "m.yaml:3:11: $.inputs[0].from: cat.csv has no rows, so it expands to nothing" in text
    assert "m.yaml:4:11: $.inputs[1].from: urls.txt has no URLs, so it expands to nothing" in text
    assert "m.yaml:9:15: $.steps[0].matrix.target: the list is empty, so it would expand to nothing" in text
    assert "m.yaml:12:15: $.steps[1].for_each: the list is empty, so it would expand to nothing" in text


def test_missing_file_and_wrong_extension():
    Path("catalog.csv").write_text("url\nhttps://cdn.example.com/a.png\n")
    code, out = validate("""\
        version: 1
        inputs:
          - from: catalogue.csv
          - from: list.json
        steps:
          - {id: up, op: upscale}
        """)
    assert code == 2
    text = "\n".join(lines(out))
    assert "m.yaml:3:11: $.inputs[0].from: the file catalogue.csv does not exist (did you mean 'catalog.csv'?)" in text
    assert "m.yaml:4:11: $.inputs[1].from: 'list.json' is neither a .csv nor a .txt file" in text


def test_bad_csv_rows_are_reported_with_file_line_column():
    code, out = validate("""\
        version: 1
        inputs:
          - from: cat.csv
        steps:
          - {id: up, op: upscale}
        """, files={"cat.csv": (
        "url,id,width,height,sku\n"
        "https://cdn.example.com/1.png,one,640,480,A\n"
        "https://cdn.example.com/2.png,two,640,,B\n"
        "ftp://cdn.example.com/3.png,three,,,C\n"
        '"https://cdn.example.com/4.png",four,wide,480,D\n'
        "https://cdn.example.com/5.png,fi ve,,,E\n"
        "https://cdn.example.com/6.png,six,1,1,F,extra\n"
    )})
    assert code == 2
    assert lines(out) == [
        "cat.csv:3:39: row 3, column height: width is given without height (give both width and height, or neither)",
        "cat.csv:4:1: row 4, column url: 'ftp://cdn.example.com/3.png' is not an http:// or https:// URL (write an http(s) URL)",
        "cat.csv:5:38: row 5, column width: width 'wide' is not a positive integer (write the width in pixels, e.g. 1024)",
        "cat.csv:6:31: row 6, column id: id 'fi ve' has characters other than letters, digits, '.', '_' and '-' "
        "(use only letters, digits, '.', '_' and '-' in ids)",
        "cat.csv:7:41: row 7, column 6: the row has 6 cells but the header names 5 columns "
        "(quote cells that contain commas, or add a name for the extra column to the header)",
    ]


def test_csv_without_url_column():
    code, out = validate("version: 1\ninputs: [{from: cat.csv}]\nsteps: [{id: up, op: upscale}]\n",
                         files={"cat.csv": "URLs,id\nhttps://cdn.example.com/1.png,a\n"})
    assert code == 2
    assert "cat.csv:1:1: header: the header row has no 'url' column (did you mean 'URLs'? rename it to url)" in out


def test_width_without_height_and_non_http_urls():
    code, out = validate("""\
        version: 1
        inputs:
          - url: https://cdn.example.com/a.png
            height: 300
          - file:///etc/passwd
          - url: "cdn.example.com/b.png"
        steps:
          - {id: up, op: upscale}
        """)
    assert code == 2
    assert lines(out) == [
        "m.yaml:4:5: $.inputs[0].height: height is given without width (give both width and height, or neither)",
        "m.yaml:5:5: $.inputs[1]: 'file:///etc/passwd' is not an http:// or https:// URL, or the path of a local "
        "image file (quote the whole URL and start it with http:// or https://)",
        "m.yaml:6:10: $.inputs[2].url: 'cdn.example.com/b.png' is not an http:// or https:// URL "
        "(quote the whole URL and start it with http:// or https://)",
    ]


def test_unknown_template_placeholders():
    code, out = validate("""\
        version: 1
        naming: "{step}/{stem}-{colour}.{ext}"
        inputs: [https://cdn.example.com/a.png]
        steps:
          - id: ed
            op: edit
            prompt: "make it {colr} with {key}"
            matrix:
              color: [red]
          - id: up
            op: upscale
            for_each: ed
            naming: "{step}/{color}/{sku}.{ext}"
        """)
    assert code == 2
    text = "\n".join(lines(out))
    assert "m.yaml:2:9: $.naming: unknown placeholder {colour} (used by step 'ed') (did you mean {color}?)" in text
    assert "m.yaml:7:13: $.steps[0].prompt: unknown placeholder {colr} (did you mean {color}?)" in text
    assert "$.steps[0].prompt: {key} cannot be used in a prompt" in text
    # chained steps see their upstream's variables ({color}) but not unknown ones
    assert "m.yaml:13:13: $.steps[1].naming: unknown placeholder {sku}" in text
    assert "{color}" not in text.split("steps[1].naming")[1].split("(")[0]


def test_malformed_template():
    code, out = validate("""\
        version: 1
        inputs: [https://cdn.example.com/a.png]
        steps:
          - id: up
            op: upscale
            naming: "{step/{stem}.{ext}"
        """)
    assert code == 2
    assert "m.yaml:6:13: $.steps[0].naming: the template is malformed" in out


def test_names_escaping_output_dir():
    code, out = validate("""\
        version: 1
        inputs: [https://cdn.example.com/a.png]
        steps:
          - id: up
            op: upscale
            naming: "../{stem}.{ext}"
          - id: up2
            op: upscale
            naming: "/tmp/{stem}.{ext}"
          - id: ed
            op: edit
            prompt: p
            naming: "{where}/{stem}.{ext}"
            matrix:
              where: [ok, ".."]
        """)
    assert code == 2
    text = "\n".join(lines(out))
    assert "m.yaml:6:13: $.steps[0].naming: the output name '../stem.jpg' contains '..'" in text
    assert "m.yaml:9:13: $.steps[1].naming: the output name '/tmp/stem.jpg' is an absolute path" in text


def test_rendered_value_escaping_output_dir_is_caught_per_item():
    code, out = validate("""\
        version: 1
        inputs: [https://cdn.example.com/a.png]
        steps:
          - id: ed
            op: edit
            prompt: p
            naming: "{where}/{stem}.{ext}"
            matrix:
              where: [ok, ".."]
        """)
    assert code == 2
    assert lines(out) == [
        "m.yaml:7:13: $.steps[0].naming: step 'ed', item 1 (input 'a'): the output name '../a-_.jpg' contains '..'; "
        "names must stay inside output_dir (build names from {step}, {stem}, {input}, {index} and matrix variables, "
        "with no '..' or leading '/')"
    ]


def test_duplicate_output_names_within_a_step():
    code, out = validate("""\
        version: 1
        inputs: [https://cdn.example.com/a.png, https://cdn.example.com/b.png]
        steps:
          - id: up
            op: upscale
            naming: "{step}/{input}.{ext}"
            matrix:
              target: [2, 4]
        """)
    assert code == 2
    assert lines(out) == [
        "m.yaml:6:13: $.steps[0].naming: step 'up': items 0 and 1 both render the output name 'up/a.jpg' "
        "(make the naming template tell them apart, e.g. add {stem}, {index} or every matrix variable)",
        "m.yaml:6:13: $.steps[0].naming: step 'up': items 2 and 3 both render the output name 'up/b.jpg' "
        "(make the naming template tell them apart, e.g. add {stem}, {index} or every matrix variable)",
    ]


def test_estimate_reports_duplicate_output_names_like_validate():
    """estimate checks names on its own walk of the expansion: same problems, same places, exit 2."""
    text = """\
        version: 1
        inputs: [https://cdn.example.com/a.png, https://cdn.example.com/b.png]
        steps:
          - id: up
            op: upscale
            naming: "{step}/{input}.{ext}"
            matrix:
              target: [2, 4]
        """
    code, out = validate(text)
    result = CliRunner().invoke(cli, ["estimate", "m.yaml", "--no-probe"])
    assert code == result.exit_code == 2
    assert lines(result.output) == lines(out) and len(lines(out)) == 2
    assert "both render the output name 'up/a.jpg'" in lines(out)[0]


def test_ignored_parameters_and_misspelled_matrix_keys():
    code, out = validate("""\
        version: 1
        inputs: [https://cdn.example.com/a.png]
        steps:
          - id: up
            op: upscale
            factor: 3
          - id: ed
            op: edit
            prompt: p
            matrix:
              sead: [1, 2]
              target: [2]
          - id: ed2
            op: edit
        """)
    assert code == 2
    text = "\n".join(lines(out))
    assert "m.yaml:6:5: $.steps[0].factor: factor is set but upscale_mode is target, so it would be ignored (add upscale_mode: factor to the step)" in text
    assert "m.yaml:11:7: $.steps[1].matrix.sead: matrix key 'sead' is not a parameter of edit and no template uses it (did you mean 'seed'?)" in text
    assert "m.yaml:12:7: $.steps[1].matrix.target: 'target' is not a parameter of edit (it is an upscale parameter)" in text
    assert "m.yaml:13:5: $.steps[2]: edit step 'ed2' has no prompt" in text


def test_duplicate_yaml_keys_and_budget():
    code, out = validate("""\
        version: 1
        budget_usd: 0.0000001
        inputs: [https://cdn.example.com/a.png]
        steps:
          - id: up
            op: upscale
            id: up2
        """)
    assert code == 2
    assert lines(out) == [
        "m.yaml:2:13: $.budget_usd: 0.0000001 has more than 6 decimal places "
        "(round it to at most 6 decimal places (micro-dollars), e.g. \"25.00\")",
        "m.yaml:7:5: $.steps[0].id: the key 'id' is written twice (first at line 5) (remove one of them: YAML keeps only the last)",
    ]


def test_missing_manifest_file():
    result = CliRunner().invoke(cli, ["validate", "nope.yaml"])
    assert result.exit_code == 2
    assert "nope.yaml:1:1: $: the manifest file does not exist (check the path)" in result.output


def test_json_output_for_problems_and_summary():
    code, out = validate("version: 1\ninputs: [https://cdn.example.com/a.png]\nsteps: [{id: up, op: upscle}]\n", "--json")
    assert code == 2
    data = json.loads(out)
    assert data["valid"] is False and data["summary"] is None
    assert data["problems"] == [{
        "file": "m.yaml", "line": 3, "column": 22, "path": "$.steps[0].op",
        "message": "'upscle' is not one of upscale, edit", "hint": "did you mean 'upscale'?",
    }]
    code, out = validate(GOOD, "--json")
    assert code == 0
    data = json.loads(out)
    assert data["valid"] is True and data["problems"] == []
    assert data["summary"] == {"inputs": 2, "steps": 2, "items": 8, "items_per_step": {"recolor": 4, "hires": 4}}


def test_validate_is_documented():
    result = CliRunner().invoke(cli, ["validate", "--help"])
    assert result.exit_code == 0 and "every problem" in result.output


def test_the_reference_example_in_the_docs_validates():
    docs = (MANIFESTS.parent / "docs" / "manifest.md").read_text()
    example = docs.split("```yaml\n", 1)[1].split("```", 1)[0]
    from conftest import make_image

    Path("catalog.csv").write_text("url,id\nhttps://cdn.example.com/c/1.png,c1\n")
    make_image(Path("photos/cover.jpg"), (64, 48))
    make_image(Path("shoot/s1.jpg"), (64, 48), color=(1, 2, 3))
    make_image(Path("shoot/day2/s2.jpg"), (48, 64), color=(4, 5, 6))
    code, out = validate(example)
    assert code == 0, out
    # 6 inputs (a, hero, cover, s1, day2_s2, c1) x (2 colors x 2 seeds) recolors, each upscaled
    assert "6 inputs, 2 steps, 48 work items (recolor 24, hires 24)" in out


def test_the_python_example_in_the_docs_is_true():
    from pixbatch.expand import count_items
    from pixbatch.manifest import load_manifest

    docs = (MANIFESTS.parent / "docs" / "manifest.md").read_text()
    assert 'count_items(m)                                 # {"recolor": 4, "hires": 4, "thumbnail": 1}' in docs
    assert count_items(load_manifest(MANIFESTS / "example.yaml")) == {"recolor": 4, "hires": 4, "thumbnail": 1}


def test_an_inputs_own_prompt_is_rendered_and_checked():
    code, out = validate("""\
        version: 1
        inputs:
          - url: https://cdn.example.com/a.png
            params:
              edit: {prompt: "special {colour}"}
          - https://cdn.example.com/b.png
        steps:
          - id: ed
            op: edit
            prompt: "in {color}"
            matrix: {color: [red]}
        """)
    assert code == 2
    assert lines(out) == ["m.yaml:5:22: $.inputs[0].params.edit.prompt: cannot render step 'ed' for input 'a': "
                          "unknown placeholder {colour} (use only variables the step defines (see docs/manifest.md, Templates))"]


@pytest.mark.parametrize("text, expected", [
    ("", "m.yaml:1:1: $: the manifest is empty (start with version: 1, inputs: and steps: (see docs/manifest.md))"),
    ("- a\n- b\n", "m.yaml:1:1: $: expected a mapping with version, inputs and steps, got a list [\"a\", \"b\"] "
                   "(write a mapping of 'key: value' lines)"),
    ("version: 1\ninputs:\nsteps: [{id: inputs, op: upscale}]\n",
     "m.yaml:3:14: $.steps[0].id: 'inputs' cannot be a step id: for_each: inputs means every input (choose another id)"),
])
def test_odd_documents(text, expected):
    code, out = validate(text)
    assert code == 2
    assert expected in lines(out)


# -- whatever is written, validation answers with problems, never a crash ------------------

from hypothesis import HealthCheck, event, given, settings, strategies as st  # noqa: E402
import yaml  # noqa: E402

from pixbatch.manifest import Problem, check_manifest  # noqa: E402

_WORDS = ["https://cdn.example.com/a.png", "http://x", "ftp://a", "inputs", "edit", "upscale", "a", "up", "ed",
          "{step}/{stem}.{ext}", "{", "}", "{nope}", "../x", "/abs", "cat.csv", "missing.txt", "16:9", "jpg", "factor",
          "target", "0.10", "1e3", ""]
_KEYS = ["id", "op", "url", "from", "width", "height", "params", "edit", "upscale", "for_each", "matrix", "naming",
         "prompt", "references", "seed", "target", "factor", "upscale_mode", "output_format", "aspect_ratio", "color",
         "turbo", "stem", "key"]
_scalars = st.one_of(st.none(), st.booleans(), st.integers(-3, 12), st.floats(-1, 10, allow_nan=False),
                     st.sampled_from(_WORDS), st.text(max_size=5))
_values = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(_KEYS), inner, max_size=4),
                       max_leaves=12)
_steps = st.lists(st.dictionaries(st.sampled_from(_KEYS), _values, max_size=6)
                  | st.fixed_dictionaries({"id": st.sampled_from(["a", "up", "ed"]), "op": st.sampled_from(["edit", "upscale"])},
                                          optional={k: _values for k in ("for_each", "matrix", "naming", "prompt", "references")}),
                  max_size=3)
_manifests = st.fixed_dictionaries({"version": st.sampled_from([1, 1, 2])}, optional={
    "inputs": st.lists(_values, max_size=3) | _values, "steps": _steps | _values, "naming": _values,
    "defaults": _values, "budget_usd": _values, "output_dir": _values, "name": _values})


@settings(max_examples=int(__import__("os").environ.get("PB_FUZZ", 100)), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_manifests)
def test_validation_never_crashes(data):
    Path("cat.csv").write_text("url,id,color\nhttps://cdn.example.com/c.png,c,red\n")
    Path("m.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    problems = check_manifest("m.yaml")
    assert all(isinstance(p, Problem) and p.line >= 1 and p.column >= 1 and p.message for p in problems)


_templates = st.sampled_from(["{step}/{stem}.{ext}", "{step}/{stem}.{ext}", "{key}.{ext}", "{index:03d}", "{stem}",
                              "{{lit}}-{stem}.{ext}", "{step}/{input}.{ext}", "{step}/{stem}-{index}.{ext}",
                              "{input}-{color}.{ext}", "x/{color}/{seed}.{ext}"])
_matrix = st.dictionaries(st.sampled_from(["color", "seed", "target", "factor", "output_format", "aspect_ratio", "prompt",
                                           "upscale_mode"]),
                          st.lists(st.sampled_from(["red", "..", "a/b", 1, 2, 9, 1.5, True, "16:9", "png", "factor",
                                                    "in {color}"]), min_size=1, max_size=3), max_size=3)
_odd = st.sampled_from([{"for_each": ["c", "x"]}, {"references": ["up"]}, {"naming": "{nope}.{ext}"},
                        {"matrix": {"target": [9]}}, {"for_each": "s9"}])


@st.composite
def _good_steps(draw):
    """Mostly valid chains of steps, sometimes with one odd thing."""
    steps = []
    for n in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["edit", "upscale"]))
        step = {"id": f"s{n}", "op": op,
                "for_each": draw(st.sampled_from(["inputs", ["a"], ["c"]] + [f"s{k}" for k in range(n)]))}
        keys = ["color"] + (["seed", "aspect_ratio", "prompt"] if op == "edit" else ["target", "output_format"])
        pool = {"color": ["red", "..", "a/b", "Navy Blue"], "seed": [1, 2], "aspect_ratio": ["16:9", "1:1"],
                "prompt": ["in {color}", "p {index}"], "target": [1, 8], "output_format": ["png", "webp"]}
        step["matrix"] = {k: draw(st.lists(st.sampled_from(pool[k]), min_size=1, max_size=2, unique=True))
                          for k in draw(st.lists(st.sampled_from(keys), max_size=2, unique=True))}
        if not step["matrix"]:
            del step["matrix"]
        if op == "edit":
            step["prompt"] = draw(st.sampled_from(["in {color}", "p", "{input} {index}"]))
            if draw(st.booleans()):
                step["references"] = draw(st.sampled_from([["c"], ["https://cdn.example.com/r.png"]]))
        if draw(st.booleans()):
            step["naming"] = draw(_templates)
        if draw(st.integers(0, 4)) == 0:
            step.update(draw(_odd))
        steps.append(step)
    return steps


@settings(max_examples=int(__import__("os").environ.get("PB_FUZZ", 100)), deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(_good_steps(), _templates, st.booleans())
def test_near_valid_manifests_validate_or_explain(steps, naming, with_csv):
    Path("cat.csv").write_text("url,id,color\nhttps://cdn.example.com/c.png,c,red\nhttps://cdn.example.com/d.png,d,blue\n")
    inputs: list = ["https://cdn.example.com/x/a.png"] + ([{"from": "cat.csv"}] if with_csv else [])
    data = {"version": 1, "naming": naming, "inputs": inputs, "steps": steps}
    Path("m.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    problems = check_manifest("m.yaml")
    assert all(isinstance(p, Problem) and p.line >= 1 and p.column >= 1 and p.message for p in problems)
    event("valid" if not problems else "invalid")
    if not problems:  # a valid manifest expands without surprises
        from pixbatch.expand import count_items, expand
        from pixbatch.manifest import load_manifest

        m = load_manifest("m.yaml")
        items = list(expand(m))
        assert len(items) == sum(count_items(m).values())


def test_a_misspelled_required_key_is_one_problem_not_two():
    code, out = validate("""\
        version: 1
        inputs:
          - frm: cat.csv
          - urll: https://cdn.example.com/a.png
          - {id: x}
        step:
          - {id: u, op: upscale}
        """)
    assert code == 2
    assert lines(out) == [
        "m.yaml:3:5: $.inputs[0].frm: unknown key 'frm' (did you mean 'from'?)",
        "m.yaml:4:5: $.inputs[1].urll: unknown key 'urll' (did you mean 'url'?)",
        "m.yaml:5:5: $.inputs[2]: the required key 'url' is missing (add url: <an http:// or https:// URL>)",
        "m.yaml:6:1: $.step: unknown key 'step' (did you mean 'steps'?)",
    ]


def test_misspelled_op_is_reported_even_though_no_op_branch_applies():
    # found by the estimate fuzz test: `o: edit` matched neither op branch of the schema,
    # so nothing was reported and the chained step crashed the deep check
    code, out = validate(GOOD.replace("    op: edit", "    o: edit"))
    assert code == 2, out
    assert lines(out) == ["m.yaml:10:5: $.steps[0].o: unknown key 'o' (did you mean 'op'?)"]


@pytest.mark.parametrize("value, tag", [("!!int height", "int"), ("!!float abc", "float"), ("!!bool maybe", "bool"),
                                        ("!!binary x", "binary")])
def test_a_yaml_tag_that_contradicts_its_value_is_a_located_error(value, tag):
    """Found by the estimate fuzz: `!!int height` made PyYAML raise ValueError (a traceback)."""
    code, out = validate(f"""\
        version: 1
        inputs: [https://cdn.example.com/a.png]
        steps:
          - id: up
            op: upscale
            target: {value}
        """)
    assert code == 2
    assert lines(out) == [f"m.yaml:6:13: $: invalid YAML: {value.split()[1]!r} is not a valid !!{tag} "
                          f"(remove the !!{tag} tag or write a valid {tag})"]
