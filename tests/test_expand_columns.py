"""The expansion as columns (``expand_columns.column_walk``) against the WorkItem walk it stands for.

A run's ingest walks the column form when the manifest allows it: the same keys, bodies, names,
prices, sizes, vars and repeats, in the same order, and the same name problems, or it is a
defect that sends other requests than ``expand`` describes.
"""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings, strategies as st

from pixbatch.errors import ManifestError
from pixbatch.expand import expand
from pixbatch.expand_columns import column_walk
from pixbatch.manifest.model import Step
from pixbatch.manifest.names import NameCheck
from pixbatch.manifest.sources import Input
from pixbatch.pricing import PriceTable
from pixbatch.state.ingest import Ingest

from test_expand import _built

NAMINGS = ("{step}/{stem}.{ext}", "{step}/{input}-{index}.{ext}", "{step}/{key}.{ext}", "out/{stem}{{x}}-{step}.{ext}",
           "{step}/{index:04d}-{stem}.{ext}", "{step}/{v}/{stem}.{ext}", "{step}/same.{ext}", "{step}/{stem}",
           "../{stem}.{ext}", "{stem}.{ext}", "{step}/{input}", "{input}/{step}.{ext}")


def _manifest(urls: list[int], sized: bool, ivars: bool, matrix: dict, chain: int, naming: str, fmt: str,
              subset: bool, ids: list[str] | None = None) -> object:
    inputs = tuple(Input(ids[i] if ids and i < len(ids) else f"in{i}", f"https://cdn.example.com/{u}.png", (100 + 37 * u) if sized else None,
                         (80 + u) if sized else None, {}, {"v": f"v{u % 2}"} if ivars else {})
                   for i, u in enumerate(urls))
    steps = [Step("ed", "edit", tuple(inp.id for inp in inputs[::2]) if subset else "inputs",
                  {"prompt": "make it {color}" if "color" in matrix else "make it"}, matrix, (), naming, 0)]
    for n in range(chain):
        steps.append(Step(f"up{n}", "upscale", steps[-1].id, {"output_format": fmt},
                          {"factor": (2, 3)} if n == 0 else {}, (), naming if n else "{step}/{stem}.{ext}",
                          len(steps)))
    steps.append(Step("big", "upscale", "inputs", {"upscale_mode": "target", "output_format": fmt},
                      {"target": (2, 8)}, (), naming, len(steps)))
    return _built(steps, inputs)


def _walk(m, columns: bool, n: int, sizes=None) -> tuple[list, list, Ingest]:
    names = NameCheck(m)
    ing = Ingest(names.wrap(expand(m, sizes=sizes, unique=True)), "s", PriceTable.load(), [s.id for s in m.steps],
                 names=names, columns=column_walk(m, sizes, names) if columns else None)
    batches = []
    while not ing.done:
        batches.append(ing.take(n))
    cols = {c: list(itertools.chain.from_iterable(b.cols[c] for b in batches)) for c in batches[0].cols}
    return cols, [a for b in batches for a in b.aliases], ing


def _outcome(m, columns: bool, n: int, sizes=None):
    try:
        cols, aliases, ing = _walk(m, columns, n, sizes)
    except ManifestError as exc:
        return "error", str(exc)
    return cols, aliases, (ing.items, ing.walked)


@settings(max_examples=300, deadline=None)
@given(urls=st.lists(st.integers(0, 3), min_size=1, max_size=5), sized=st.booleans(), ivars=st.booleans(),
       matrix=st.fixed_dictionaries({}, optional={"color": st.sampled_from([("red",), ("red", "blue"),
                                                                             ("red", "dark-red")]),
                                                  "seed": st.sampled_from([(1,), (1, 2)])}),
       chain=st.integers(0, 2), naming=st.sampled_from(NAMINGS), fmt=st.sampled_from(["png", "jpg"]),
       subset=st.booleans(), n=st.integers(1, 7),
       ids=st.none() | st.lists(st.sampled_from(["x", "x-dark", "y", "y-red", ".", "..", "a.b"]), min_size=1,
                                max_size=5))
def test_the_column_walk_writes_what_the_item_walk_writes(urls, sized, ivars, matrix, chain, naming, fmt, subset, n,
                                                          ids):
    # repeated URLs (aliases), chains of chains, sizes declared or looked up, input variables,
    # names with braces, indexes, keys, format specs, input variables, duplicates and escapes;
    # ids that repeat, or that meet another input's name ("x" + "-dark-red" = "x-dark" + "-red"), or
    # that make a name escape ("ed/" + ".." names a directory)
    m = _manifest(urls, sized, ivars, matrix, chain, naming, fmt, subset, ids)
    sizes = None if sized else {f"https://cdn.example.com/{u}.png": (640 + u, 480) for u in (0, 2)}.get
    want = _outcome(m, False, n, sizes)
    got = _outcome(m, True, n, sizes)
    if want[0] == "error":
        assert got == want
        return
    for c in want[0]:
        assert got[0][c] == want[0][c], c
    assert got[1:] == want[1:]


def test_common_manifests_take_the_column_walk_and_the_rest_the_item_walk():
    base = dict(urls=[0, 1], sized=True, ivars=True, matrix={"color": ("red", "blue")}, chain=1, fmt="png",
                subset=False)
    for naming in ("{step}/{stem}.{ext}", "{step}/{input}-{index}.{ext}", "{step}/{key}.{ext}", "{step}/same.{ext}"):
        assert column_walk(_manifest(naming=naming, **base)) is not None, naming
    # a padded index, an input's own variable: rendered per item
    for naming in ("{step}/{index:04d}-{stem}.{ext}", "{step}/{v}/{stem}.{ext}"):
        assert column_walk(_manifest(naming=naming, **base)) is None, naming
    # a prompt per input (the fast path's condition): the item walk
    m = _manifest(naming="{step}/{stem}.{ext}", **base)
    steps = list(m.steps)
    steps[0] = Step("ed", "edit", "inputs", {"prompt": "p {input}"}, {}, (), "{step}/{stem}.{ext}", 0)
    assert column_walk(_built(steps, m.sources)) is None


@pytest.mark.parametrize("columns", [False, True])
def test_a_repeated_name_at_the_end_of_a_batch_is_refused_before_the_batch_is_returned(columns):
    # four inputs, one name each, the fourth repeats the first: a batch of 4 ends on it
    inputs = tuple(Input(f"in{i}", f"https://cdn.example.com/{i}.png", 100, 100, {}, {}) for i in range(4))
    m = _built([Step("big", "upscale", "inputs", {}, {}, (), "{step}/{input}.{ext}", 0)], inputs)
    m.sources[3].id = "in0"  # an id that repeats (as a CSV's would, loaded shallow)
    names = NameCheck(m)
    ing = Ingest(names.wrap(expand(m, unique=True)), "s", PriceTable.load(), ["big"], names=names,
                 columns=column_walk(m, None, names) if columns else None)
    assert (ing.columns is not None) == columns
    with pytest.raises(ManifestError, match="items 0 and 3 both render the output name 'big/in0.jpg'"):
        ing.take(4)


@pytest.mark.parametrize("colors", [("red", "dark-red"), ("red", "blue")])
def test_names_of_two_inputs_that_meet_are_refused_by_both_walks(colors):
    # "x" + "-dark-red" and "x-dark" + "-red" render the same name: distinct ids do not make distinct
    # names when one combination's suffix ends another's; with "red" and "blue" they cannot meet
    m = _manifest([0, 1], True, False, {"color": colors}, 0, "{step}/{stem}.{ext}", "png", False, ["x", "x-dark"])
    want, got = _outcome(m, False, 3), _outcome(m, True, 3)
    assert got == want
    if colors[1] == "dark-red":
        assert want[0] == "error" and "both render the output name 'ed/x-dark-red.jpg'" in want[1]
    else:
        assert want[0] != "error"


def test_a_chain_of_large_matrices_takes_the_item_walk(monkeypatch):
    from pixbatch import expand_columns

    m = _manifest([0, 1], True, False, {"color": ("red", "blue"), "seed": (1, 2)}, 1, "{step}/{stem}.{ext}", "png",
                  False)
    assert column_walk(m) is not None  # 4 x 2 paths for the chained step
    monkeypatch.setattr(expand_columns, "_MAX_PATHS", 7)
    assert column_walk(m) is None
