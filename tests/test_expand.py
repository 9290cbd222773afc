"""Expansion: manifest -> a stream of work items with exact bodies and deterministic keys."""

from __future__ import annotations

import gc
import itertools
import string
import sys
import textwrap
import tracemalloc
from pathlib import Path

from hypothesis import given, settings, strategies as st

from pixbatch.contract import documented_defaults, validate_body
from pixbatch.expand import count_items, expand, expand_step
from pixbatch.items import item_key, upstream_ref
from pixbatch.manifest import Input, Manifest, Step, load_manifest
from pixbatch.sizes import output_size


def manifest(text: str, name: str = "m.yaml", **files: str) -> Manifest:
    for fname, content in files.items():
        Path(fname.replace("_", ".")).write_text(content)
    Path(name).write_text(textwrap.dedent(text))
    return load_manifest(name)


def test_fan_out_over_every_kind_of_input():
    m = manifest("""\
        version: 1
        inputs:
          - https://cdn.example.com/a.png
          - {id: b, url: https://cdn.example.com/b.png, width: 100, height: 50}
          - from: cat.csv
          - from: list.txt
        steps:
          - id: ed
            op: edit
            prompt: "in {color}"
            matrix: {color: [black, red], seed: [1, 2, 3]}
          - id: up
            op: upscale
            for_each: ed
            matrix: {target: [2, 4]}
        """, cat_csv="url\nhttps://cdn.example.com/c1.png\nhttps://cdn.example.com/c2.png\nhttps://cdn.example.com/c3.png\n",
        list_txt="https://cdn.example.com/t1.png\n# skip me\nhttps://cdn.example.com/t2.png\n")
    items = list(expand(m))
    assert count_items(m) == {"ed": 7 * 6, "up": 7 * 6 * 2}
    assert len([i for i in items if i.step == "ed"]) == 42 and len(items) == 42 + 84
    assert [i.step for i in items] == ["ed"] * 42 + ["up"] * 84  # step order
    assert [i.index for i in items if i.step == "up"] == list(range(84))
    for item in items:
        assert validate_body(item.op, dict(item.body)) == [] or item.upstream  # placeholders are not URLs yet


def test_matrix_is_a_cartesian_product_last_key_fastest():
    m = manifest("""\
        version: 1
        inputs: [https://cdn.example.com/a.png, https://cdn.example.com/b.png]
        steps:
          - id: ed
            op: edit
            prompt: "{color} {size}"
            matrix:
              color: [black, red]
              size: [S, M, L]
        """)
    got = [(i.input_id, i.vars["color"], i.vars["size"]) for i in expand(m)]
    assert got == [(inp, c, s) for inp in "ab" for c in ("black", "red") for s in "SML"]
    assert [i.body["prompt"] for i in expand(m)][:3] == ["black S", "black M", "black L"]
    assert [i.output_name for i in expand(m)][:2] == ["ed/a-black-S.jpg", "ed/a-black-M.jpg"]


def test_precedence_documented_defaults_step_matrix_input():
    m = manifest("""\
        version: 1
        defaults:
          upscale: {output_quality: 70, output_format: png, enhance_details: true}
        inputs:
          - https://cdn.example.com/a.png
          - url: https://cdn.example.com/b.png
            params:
              upscale: {output_quality: 95, output_format: webp}
        steps:
          - id: up
            op: upscale
            output_quality: 75
            enhance_details: false
            matrix:
              output_quality: [85]
        """)
    a, b = expand(m)
    assert dict(a.body) == {**documented_defaults("upscale"), "image": "https://cdn.example.com/a.png",
                            "output_quality": 85, "output_format": "png", "enhance_details": False}
    assert b.body["output_quality"] == 95 and b.body["output_format"] == "webp"
    assert (a.output_name, b.output_name) == ("up/a-85.png", "up/b-85.webp")  # ext follows the final format
    assert a.key == item_key("upscale", a.body)


def test_edit_body_has_main_image_then_references_and_a_rendered_prompt():
    Path("cat.csv").write_text("url,id,product\nhttps://cdn.example.com/d.png,d1,linen dress\n")
    m = manifest("""\
        version: 1
        defaults:
          edit: {turbo: false, prompt: "unused"}
        inputs:
          - {id: swatch, url: https://cdn.example.com/swatch.png}
          - from: cat.csv
        steps:
          - id: ed
            op: edit
            for_each: [d1]
            prompt: "The {product} in image 1 gets the colour of image 2 ({index}, {input})"
            references: [swatch, https://cdn.example.com/p.png]
            aspect_ratio: "1:1"
        """)
    (item,) = expand(m)
    assert dict(item.body) == {
        "prompt": "The linen dress in image 1 gets the colour of image 2 (0, d1)",
        "images": ["https://cdn.example.com/d.png", "https://cdn.example.com/swatch.png", "https://cdn.example.com/p.png"],
        "turbo": False, "aspect_ratio": "1:1", "disable_safety_checker": False,
    }
    assert item.input_id == "d1" and item.vars == {"product": "linen dress"} and item.main_image.endswith("/d.png")


def test_chained_steps_point_at_their_upstream_items():
    m = manifest("""\
        version: 1
        inputs:
          - {id: a, url: https://cdn.example.com/a.png, width: 1200, height: 800}
          - https://cdn.example.com/b.png
        steps:
          - id: ed
            op: edit
            prompt: "in {color}"
            matrix: {color: [black, red]}
          - id: up
            op: upscale
            for_each: ed
            upscale_mode: factor
            factor: 2
            naming: "{step}/{color}/{input}-{index:03d}.{ext}"
          - id: small
            op: upscale
            for_each: up
            target: 1
            matrix: {output_format: [png, webp]}
        """)
    items = list(expand(m))
    ed = [i for i in items if i.step == "ed"]
    up = [i for i in items if i.step == "up"]
    small = [i for i in items if i.step == "small"]
    assert len(ed) == 4 and len(up) == 4 and len(small) == 8
    for parent, child in zip(ed, up):
        assert child.upstream == parent.key and child.body["image"] == upstream_ref(parent.key)
        assert child.input_id == parent.input_id and child.vars == parent.vars
        assert child.input_size == output_size("edit", dict(parent.body), parent.input_size)
    assert ed[0].input_size == (1200, 800) and up[0].input_size == (1248, 832)  # the edit's ~1 MP output
    assert ed[2].input_size is None and up[2].input_size is None  # unknown, and nothing to ask
    assert [i.output_name for i in up] == ["up/black/a-000.jpg", "up/red/a-001.jpg", "up/black/b-002.jpg", "up/red/b-003.jpg"]
    # two levels down: the stem carries the whole lineage, variables are inherited
    assert [i.output_name for i in small[:2]] == ["small/a-black-png.png", "small/a-black-webp.webp"]
    assert small[0].upstream == up[0].key and small[0].vars == {"color": "black", "output_format": "png"}
    assert small[0].input_size == output_size("upscale", dict(up[0].body), up[0].input_size)
    # a step's own stream, alone
    assert [i.key for i in expand_step(m, "up")] == [i.key for i in up]


def test_sizes_callable_fills_undeclared_root_sizes_only():
    asked = []

    def sizes(url):
        asked.append(url)
        return (640, 480)

    m = manifest("""\
        version: 1
        inputs:
          - {id: a, url: https://cdn.example.com/a.png, width: 10, height: 20}
          - https://cdn.example.com/b.png
        steps:
          - {id: up, op: upscale, matrix: {target: [1, 2]}}
          - {id: up2, op: upscale, for_each: up}
        """)
    got = {(i.step, i.input_id): i.input_size for i in expand(m, sizes=sizes)}
    assert got[("up", "a")] == (10, 20) and got[("up", "b")] == (640, 480)
    assert got[("up2", "b")] == output_size("upscale", {"target": 2}, (640, 480))
    # asked once per undeclared input per root expansion, never for declared ones
    assert set(asked) == {"https://cdn.example.com/b.png"}


def test_keys_are_deterministic_and_identical_requests_are_both_yielded():
    text = """\
        version: 1
        inputs: [https://cdn.example.com/a.png]
        steps:
          - {id: one, op: upscale, naming: "one/{key}.{ext}"}
          - {id: two, op: upscale, target: 4}
        """
    first = [(i.key, i.output_name) for i in expand(manifest(text))]
    again = [(i.key, i.output_name) for i in expand(manifest(text, "copy.yaml"))]
    assert first == again
    (k1, name1), (k2, _) = first
    assert k1 == k2 == item_key("upscale", {"image": "https://cdn.example.com/a.png"})  # target 4 is the default
    assert name1 == f"one/{k1[:12]}.jpg"


def test_for_each_list_keeps_its_order():
    m = manifest("""\
        version: 1
        inputs: [https://cdn.example.com/a.png, https://cdn.example.com/b.png, https://cdn.example.com/c.png]
        steps:
          - {id: up, op: upscale, for_each: [c, a]}
        """)
    assert [i.input_id for i in expand(m)] == ["c", "a"] and count_items(m) == {"up": 2}


def test_long_or_odd_matrix_values_make_safe_stems():
    m = manifest("""\
        version: 1
        inputs: [https://cdn.example.com/a.png]
        steps:
          - id: ed
            op: edit
            matrix:
              prompt:
                - "Make the dress red / add a belt"
                - "Turn the whole scene into a watercolor painting with soft pastel tones and visible brush strokes"
              aspect_ratio: ["16:9"]
        """)
    names = [i.output_name for i in expand(m)]
    assert names[0] == "ed/a-Make_the_dress_red_add_a_belt-16_9.jpg"
    stem = names[1].split("/")[1]
    assert len(stem) < 70 and "/" not in stem and stem.startswith("a-Turn_the_whole_scene")


# -- properties -----------------------------------------------------------------------

NAMES = st.text(string.ascii_lowercase, min_size=1, max_size=6).filter(
    lambda s: s not in ("input", "step", "index", "ext", "key", "stem"))
VALUES = st.one_of(st.lists(st.integers(0, 99), min_size=1, max_size=3, unique=True),
                   st.lists(st.text(string.ascii_letters, min_size=1, max_size=4), min_size=1, max_size=3, unique=True))


def _manifest(n_inputs: int, matrix: dict[str, list], chained: bool) -> Manifest:
    inputs = tuple(Input(f"in{i}", f"https://cdn.example.com/{i}.png", 100 + i, 100) for i in range(n_inputs))
    naming = "{step}/{input}" + "".join(f"-{{{k}}}" for k in matrix) + ".{ext}"
    steps = [Step("ed", "edit", "inputs", {"prompt": "p"}, {k: tuple(v) for k, v in matrix.items()}, (), naming, 0)]
    if chained:
        steps.append(Step("up", "upscale", "ed", {}, {"target": (2, 4)}, (), "{step}/{stem}.{ext}", 1))
    return _built(steps, inputs)


def _built(steps: list[Step], inputs: tuple[Input, ...]) -> Manifest:
    """A manifest of these steps and inline inputs, as loading one would make it."""
    return Manifest(path=Path("/m.yaml"), name="m", budget_micros=None, output_dir=Path("/out"),
                    state_path=Path("/m.duckdb"), naming="{step}/{stem}.{ext}", defaults={}, steps=tuple(steps),
                    sources=inputs)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 4), st.dictionaries(NAMES, VALUES, max_size=3), st.booleans())
def test_item_count_keys_and_names(n_inputs, matrix, chained):
    m = _manifest(n_inputs, matrix, chained)
    combos = 1
    for values in matrix.values():
        combos *= len(values)
    items = list(expand(m))
    counts = count_items(m)
    assert counts["ed"] == n_inputs * combos
    assert len(items) == sum(counts.values()) == n_inputs * combos * (3 if chained else 1)
    # deterministic
    assert [i.key for i in expand(m)] == [i.key for i in items]
    # the naming template names every matrix variable: no two items of a step share a name
    for step in ("ed", "up"):
        names = [i.output_name for i in items if i.step == step]
        assert len(set(names)) == len(names)
    # every key is the hash of the body it carries
    assert all(i.key == item_key(i.op, i.body) for i in items)
    # the matrix order: last key fastest
    ed = [i for i in items if i.step == "ed"][:combos]
    assert [tuple(i.vars[k] for k in matrix) for i in ed] == list(itertools.product(*matrix.values()))


# -- streaming -------------------------------------------------------------------------


def test_expansion_streams_without_growing_memory():
    rows = 50_000
    with open("big.csv", "w") as f:
        f.write("url,id,width,height\n")
        f.writelines(f"https://cdn.example.com/p/{i}.jpg,p{i},1024,768\n" for i in range(rows))
    Path("m.yaml").write_text(textwrap.dedent("""\
        version: 1
        inputs: [{from: big.csv}]
        steps:
          - {id: up, op: upscale, matrix: {target: [1, 2, 4, 8]}}
          - {id: ed, op: edit, prompt: "p {index}", for_each: up}
        """))
    m = load_manifest("m.yaml", deep=False)
    # what holding items costs: measured on a list of 2,000
    tracemalloc.start()
    try:
        held = list(itertools.islice(expand(m), 2_000))
        per_item = tracemalloc.get_traced_memory()[0] / len(held)
    finally:
        tracemalloc.stop()
    del held
    assert per_item > 500

    # 200,000 items, then chained ones (re-generating their upstream): allocated blocks stay flat
    gc.collect()
    start = sys.getallocatedblocks()
    growth = n = 0
    for item in itertools.islice(expand(m), 210_000):
        n += 1
        if n % 5_000 == 0:
            growth = max(growth, sys.getallocatedblocks() - start)
    assert n == 210_000 and item.step == "ed"
    assert growth < 20_000, growth  # a list would hold ~10 blocks per item: 2,000,000

    # and tracemalloc's peak over a stretch of the stream stays far below a list's
    tracemalloc.start()
    try:
        for item in itertools.islice(expand(m), 20_000):
            pass
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 20_000 * per_item / 20, (peak, per_item)  # a list of them would need 20x more


# -- repeats: expand(..., unique=True) tells the first item of each key ---------------------

PROMPTS = ("p", "p {color}", "p {input}", "p {v}", "p {color} {seed}")


def _repeats_manifest(urls: list[int], prompt: str, matrix: dict[str, tuple], twin: bool, chain: int,
                      override: bool) -> Manifest:
    inputs = tuple(Input(f"in{i}", f"https://cdn.example.com/{u}.png", 100 + u, 100,
                         {"edit": {"seed": 7}} if override and i == 0 else {}, {"v": f"v{u % 2}"})
                   for i, u in enumerate(urls))
    naming = "{step}/{input}" + "".join(f"-{{{k}}}" for k in matrix) + ".{ext}"
    steps = [Step("ed", "edit", "inputs", {"prompt": prompt}, matrix, (), naming, 0)]
    if twin:  # the same requests under another step
        steps.append(Step("twin", "edit", "inputs", {"prompt": prompt}, matrix, (), naming, 1))
    for n in range(chain):
        steps.append(Step(f"up{n}", "upscale", steps[-1].id, {}, {"target": (2, 4)} if n == 0 else {"target": (6,)},
                          (), "{step}/{stem}.{ext}", len(steps)))
    return _built(steps, inputs)


@settings(max_examples=150, deadline=None)
@given(urls=st.lists(st.integers(0, 3), min_size=1, max_size=5), prompt=st.sampled_from(PROMPTS),
       matrix=st.fixed_dictionaries({}, optional={"color": st.sampled_from([("red",), ("red", "blue")]),
                                                  "seed": st.sampled_from([(1,), (1, 2)]),
                                                  "tag": st.sampled_from([("a",), ("a", "b")])}),
       twin=st.booleans(), chain=st.integers(0, 2), override=st.booleans())
def test_unique_walk_marks_exactly_the_first_item_of_each_key(urls, prompt, matrix, twin, chain, override):
    # repeated URLs, twin steps, matrix values only the names use ("tag"), prompts per combination or
    # per input, overrides, chains on steps with repeats: by source image or by KeySet, the same answer
    if "{color}" in prompt and "color" not in matrix or "{seed}" in prompt and "seed" not in matrix:
        matrix = {**matrix, "color": ("red",), "seed": (1,)}
    m = _repeats_manifest(urls, prompt, matrix, twin, chain, override)
    seen: set[str] = set()
    items = list(expand(m, unique=True))
    for it in items:
        assert it.first == (it.key not in seen), (it.step, it.input_id, it.vars)
        seen.add(it.key)
        assert it.key == item_key(it.op, it.body)  # a prompt rendered per combination hashes the same
    assert [(i.key, i.output_name, i.body) for i in items] == [(i.key, i.output_name, i.body) for i in expand(m)]
    assert all(i.first is None for i in expand(m))  # not asked: the consumer tells


def test_a_plain_manifest_is_told_repeats_per_source_image():
    from pixbatch.expand import repeats_follow_sources

    m = _repeats_manifest([0, 1, 0, 2], "p {color}", {"color": ("red", "blue")}, twin=False, chain=2, override=False)
    assert repeats_follow_sources(m)  # the prompt is the same for all items of a combination
    firsts = [(i.step, i.input_id, i.first) for i in expand(m, unique=True)]
    assert [f for s, i, f in firsts if s == "ed"] == [True, True, True, True, False, False, True, True]
    assert [f for s, i, f in firsts if s == "up1"].count(False) == 4  # repeats of repeats
    # what makes it fall back to the KeySet: a prompt per input, a matrix value only the name uses,
    # twin steps, an input's own parameters
    assert not repeats_follow_sources(_repeats_manifest([0], "p {input}", {}, False, 0, False))
    assert not repeats_follow_sources(_repeats_manifest([0], "p", {"tag": ("a", "b")}, False, 0, False))
    assert not repeats_follow_sources(_repeats_manifest([0], "p", {}, True, 0, False))
    assert not repeats_follow_sources(_repeats_manifest([0], "p", {}, False, 0, True))
