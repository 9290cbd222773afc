"""Manifest -> a stream of work items, with deterministic keys.

``expand(manifest)`` yields :class:`pixbatch.items.WorkItem` in step order. Nothing is
held per item: inputs are streamed from the manifest (``from:`` files row by row), and a
chained step (``for_each: <earlier step>``) re-generates its upstream's stream instead of
storing it, so a step n links down costs n+1 times the CPU but no memory. Output sizes of
upstream items (``sizes.output_size``) are memoised: a batch has few distinct sizes.

Everything that does not depend on the item is computed once per step into a
:class:`_Plan`: the merged parameters for each matrix combination
(documented defaults < ``defaults.<op>`` < step parameters < matrix values), the
template variables of each combination, the stem suffix. Per item only the input's own
``params.<op>`` are layered on top, the image URLs set, the templates rendered
(``str.format_map``) and the key computed (``WorkItem.build``).

Items are yielded source-major: for every source image, every matrix combination, in the
order written (the last matrix key varies fastest). Identical requests yield identical
keys; both are yielded, and ``expand(..., unique=True)`` marks which one came first
(``WorkItem.first``; usually known per source image, without a lookup per item).

Layering: this module reads the lower modules of :mod:`pixbatch.manifest` (``model``,
``sources``, ``templates``, ``problems``); the output-name check that walks the expansion
lives above it, in :mod:`pixbatch.manifest.names`.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import operator
import os
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any

from . import contract
from .errors import ManifestError
from .contract import ENDPOINTS
from .items import WorkItem, canonical_body, canonical_json, upstream_ref
from .keyset import KeySet
from .manifest.model import Manifest, Step
from .manifest.problems import Problem
from .manifest.sources import Input
from .manifest.templates import BUILTIN_VARS, template_fields, template_value
from .sizes import Size, output_size

SizeLookup = Callable[[str], "Size | None"]

# the string encoder of ``items.canonical_json`` (ensure_ascii=False): one JSON string value
_encode_str = json.encoder.encode_basestring
_sha256 = hashlib.sha256

# -- limits: what validation refuses, from counts known before anything is built ---------

#: the most matrix combinations of one step: a step's combinations are held in memory while it
#: expands (about 700 bytes each). Raise with the environment variable PIXBATCH_MAX_COMBINATIONS.
MAX_COMBINATIONS = 10_000
#: the most work items one step may expand to (source images x combinations): an expansion
#: is streamed, but every item is walked by validate and stored by run.
#: Raise with PIXBATCH_MAX_STEP_ITEMS.
MAX_STEP_ITEMS = 10_000_000
#: the longest chain of steps fed by earlier steps (for_each: <step>); fixed (a chained step
#: re-generates its upstream's stream, one nested generator per link).
MAX_CHAIN = 64

LIMIT_ENV = {"combinations": "PIXBATCH_MAX_COMBINATIONS", "step_items": "PIXBATCH_MAX_STEP_ITEMS"}


def limit(name: str) -> int:
    """``MAX_COMBINATIONS`` or ``MAX_STEP_ITEMS`` ("combinations", "step_items"), or the positive
    whole number in its environment variable (``LIMIT_ENV``); ValueError for anything else there."""
    default = {"combinations": MAX_COMBINATIONS, "step_items": MAX_STEP_ITEMS}[name]
    raw = os.environ.get(LIMIT_ENV[name], "").strip().replace("_", "")
    if not raw:
        return default
    if not raw.isascii() or not raw.isdigit() or len(raw) > 18 or int(raw) < 1:
        raise ValueError(f"{LIMIT_ENV[name]}={os.environ[LIMIT_ENV[name]]!r} is not a positive whole number")
    return int(raw)


_STEM_BAD = re.compile(r"[^A-Za-z0-9._-]+")


def stem_part(value: Any) -> str:
    """A matrix value as part of a file name: safe characters only, at most 40 of them."""
    text = str(template_value(value))
    safe = _STEM_BAD.sub("_", text).strip("_.") or "_"
    if len(safe) > 40 or safe != text and len(text) > 40:
        digest = hashlib.sha1(text.encode("utf-8")).hexdigest()[:8]
        safe = safe[:31].rstrip("_.-") + "-" + digest
    return safe


@dataclass(frozen=True, slots=True)
class _Combo:
    body: dict[str, Any]  # merged parameters (without the images)
    vars: dict[str, Any]  # matrix values (raw)
    tvars: dict[str, Any]  # matrix values as templates show them
    suffix: str  # "-black-1", or ""
    prompt: str | None  # the prompt template when it has placeholders
    fast: _Canon | None  # the canonical body and JSON with the per-item strings left out


@dataclass(frozen=True, slots=True)
class _Canon:
    """A combination's canonical body and its canonical JSON cut where the per-item strings go.

    Per item only the main image URL (and the prompt, when it is a template) changes, so the
    JSON is ``head + enc(url) + mid + enc(prompt) + tail`` (keys sorted: ``image``/``images``
    comes before ``prompt``) and the key hashes ``endpoint + "\\n" + that``: the bytes
    ``WorkItem.build`` would hash, without re-merging defaults or re-encoding the dict.
    """

    body: dict[str, Any]  # canonical body, images and prompt set per item
    hasher: Any  # sha256 of ENDPOINT + "\\n" (copied per item)
    head: str  # the JSON up to the main image URL
    mid: str  # from after the URL to the prompt (or to the end)
    tail: str | None  # from after the prompt to the end (None: the prompt is not per item)


@dataclass(frozen=True, slots=True)
class _Plan:
    step: Step
    combos: tuple[_Combo, ...]
    refs: tuple[str, ...]
    naming: str
    naming_uses_key: bool


def _has_fields(text: Any) -> bool:
    return isinstance(text, str) and bool(template_fields(text))


def step_plan(manifest: Manifest, step: Step) -> _Plan:
    base = manifest.step_params(step)
    keys = list(step.matrix)
    params = set(contract.STEP_PARAMS[step.op])
    combos = []
    for values in itertools.product(*(step.matrix[k] for k in keys)):
        body = dict(base)
        mvars: dict[str, Any] = {}
        for k, v in zip(keys, values):
            if k in params:
                body[k] = v
            mvars[k] = v
        tvars = {k: template_value(v) for k, v in mvars.items()}
        prompt = body.get("prompt") if step.op == "edit" else None
        if _has_fields(prompt):
            rendered = _combo_prompt(prompt, tvars)
            if rendered is not None:  # the same for every item of the combination: in its canonical JSON
                body["prompt"], prompt = rendered, None
        else:
            prompt = None
        combos.append(_Combo(
            body=body, vars=mvars, tvars=tvars,
            suffix="".join("-" + stem_part(v) for v in values), prompt=prompt,
            fast=_canon(step.op, body, step.references, prompt is not None),
        ))
    return _Plan(step, tuple(combos), step.references, step.naming,
                 any(n == "key" for n, _ in template_fields(step.naming)))


def _combo_prompt(prompt: str, tvars: Mapping[str, Any]) -> str | None:
    """A prompt whose placeholders are all matrix values (``tvars``: as templates show them), rendered
    once for its combination (as each item would render it: a matrix value outranks an input's
    variable of that name); None when it names anything else (an input's variable, a built-in), or
    fails (rendered per item, which says which input)."""
    try:
        names = {n for n, _ in template_fields(prompt)}
        if not names <= tvars.keys() or names & _BUILTINS:
            return None
        return prompt.format_map(tvars)
    except (KeyError, ValueError, IndexError):
        return None


_BUILTINS = frozenset(BUILTIN_VARS)
_URL_MARK, _PROMPT_MARK = "\x00pixbatch-url\x00", "\x00pixbatch-prompt\x00"


def _canon(op: str, body: Mapping[str, Any], refs: tuple[str, ...], prompt_per_item: bool) -> _Canon | None:
    """The combination's canonical JSON around marks for the URL and the prompt; None when it
    cannot be cut that way (a mark would be ambiguous): those items take ``WorkItem.build``."""
    marked = dict(body)
    if op == "edit":
        marked["images"] = [_URL_MARK, *refs]
        if prompt_per_item:
            marked["prompt"] = _PROMPT_MARK
    else:
        marked["image"] = _URL_MARK
    canon = canonical_body(op, marked)
    text = canonical_json(canon)
    hasher = _sha256((ENDPOINTS[op] + "\n").encode("utf-8"))
    url, prompt = _encode_str(_URL_MARK), _encode_str(_PROMPT_MARK)
    head, *rest = text.split(url)
    if len(rest) != 1:
        return None
    if not prompt_per_item:
        return _Canon(canon, hasher, head, rest[0], None) if prompt not in text else None
    mid, *tail = rest[0].split(prompt)
    if len(tail) != 1 or prompt in head:
        return None
    return _Canon(canon, hasher, head, mid, tail[0])


@lru_cache(maxsize=4096)
def _cached_output_size(op: str, mode: Any, target: Any, factor: Any, aspect: Any, size: Size | None) -> Size | None:
    body = {"upscale_mode": mode, "target": target, "factor": factor} if op == "upscale" else {"aspect_ratio": aspect}
    return output_size(op, body, size)


def memo_output_size(op: str, body: Mapping[str, Any], size: Size | None) -> Size | None:
    """sizes.output_size, memoised: most items of a batch share a handful of sizes."""
    if size is None and (op == "upscale" or body.get("aspect_ratio") == "match_input_image"):
        return None
    if op == "upscale":
        return _cached_output_size(op, body["upscale_mode"], body["target"], body["factor"], None, size)
    return _cached_output_size(op, None, None, None, body["aspect_ratio"], size)


# (item, input it descends from, stem, template variables)
_Row = tuple[WorkItem, Input, str, dict[str, Any]]
_first = operator.itemgetter(0)


def _sources(manifest: Manifest, step: Step, sizes: SizeLookup | None, unique: bool = False
             ) -> Iterator[tuple[Input, str, str | None, Size | None, Mapping[str, Any], Mapping[str, Any], str,
                                 bool | None]]:
    """(input, main image URL, upstream key, input size, inherited vars, inherited template vars, stem,
    first). ``first`` (``unique`` only, else None): whether no earlier source of the step had this main
    image (a root input's URL, or an upstream item's key: a repeated upstream item repeats its URL)."""
    up = step.upstream
    if up is not None:
        upstep = manifest.step(up)
        upop = upstep.op
        for (key, body, in_size, ivars, first), inp, stem, tv in _rows(manifest, upstep, sizes, light=True,
                                                                       unique=unique):
            size = memo_output_size(upop, body, in_size)
            yield inp, upstream_ref(key), key, size, ivars, tv, stem, first
        return
    urls = first_of_url() if unique else None
    first = None
    for inp in step_inputs(manifest, step):
        size = inp.size
        if size is None and sizes is not None:
            size = sizes(inp.url)
        if urls is not None:
            first = urls(inp.url)
        yield inp, inp.url, None, size, inp.vars, inp.vars, inp.id, first


def step_inputs(manifest: Manifest, step: Step) -> Iterator[Input]:
    """The inputs a root step walks, in order: those its ``for_each`` names, or every input."""
    if step.input_ids is None:
        return manifest.iter_inputs()
    found = manifest.find_inputs(step.input_ids)
    return (found[i] for i in step.input_ids if i in found)


def first_of_url() -> Callable[[str], bool]:
    """For one walk of a step's sources: True for the first source with its main image URL (a
    repeated URL repeats its items' keys). 16 bytes of the URL's sha256 kept per source."""
    add = KeySet().add
    return lambda url: add(_sha256(url.encode()).digest()[:16])


def _rows(manifest: Manifest, step: Step, sizes: SizeLookup | None, light: bool = False,
          unique: bool = False) -> Iterator[Any]:
    """The step's rows (``_Row``). ``light``: for a step chained on this one, which needs only
    (key, body, input size, vars, first) of each item: no WorkItem, no output name. ``unique``:
    the expansion passed ``repeats_follow_sources`` (each item's ``first`` is its source's)."""
    plan = step_plan(manifest, step)
    sid, op, refs, naming = step.id, step.op, list(plan.refs), plan.naming
    is_edit = op == "edit"
    uses_key = plan.naming_uses_key
    build = WorkItem.build
    new_item = WorkItem
    index = 0
    for inp, url, upkey, size, ivars, itvars, stem0, first in _sources(manifest, step, sizes, unique):
        override = inp.params.get(op) if inp.params else None
        oprompt = override.get("prompt") if override else None
        enc_url = _encode_str(url)
        for combo in plan.combos:
            stem = stem0 + combo.suffix
            tv = {**itvars, **combo.tvars} if itvars else dict(combo.tvars)
            tv["input"] = inp.id
            tv["step"] = sid
            tv["index"] = index
            tv["stem"] = stem
            fast = combo.fast
            if fast is not None and not override:
                # the common case: the combination's canonical JSON around this item's URL (and prompt)
                p = None
                try:
                    if is_edit:
                        tv["ext"] = "jpg"
                        if fast.tail is not None:
                            p = combo.prompt.format_map(tv)  # type: ignore[union-attr]
                            text = fast.head + enc_url + fast.mid + _encode_str(p) + fast.tail
                        else:
                            text = fast.head + enc_url + fast.mid
                    else:
                        tv["ext"] = combo.body["output_format"]
                        text = fast.head + enc_url + fast.mid
                    name = "" if uses_key or light else naming.format_map(tv)
                except (KeyError, ValueError, IndexError) as exc:
                    raise ManifestError([_render_problem(manifest, step, inp, exc)]) from None
                h = fast.hasher.copy()
                h.update(text.encode())
                key = h.hexdigest()[:32]
                if light:
                    # a chained step needs the upstream body only for its output size, which the
                    # combination's parameters decide (not the image URLs or the prompt)
                    if uses_key:
                        tv["key"] = key[:12]
                    index += 1
                    yield (key, fast.body, size, {**ivars, **combo.vars} if ivars else combo.vars, first), inp, stem, tv
                    continue
                body = dict(fast.body)
                if is_edit:
                    body["images"] = [url, *refs] if refs else [url]
                    if p is not None:
                        body["prompt"] = p
                else:
                    body["image"] = url
                if uses_key:
                    tv["key"] = key[:12]
                    name = naming.format_map(tv)
                # the combination's own vars (shared, not copied: an item's vars are read only)
                item = new_item(key, sid, op, body, inp.id, name, upkey, size,
                                {**ivars, **combo.vars} if ivars else combo.vars, index, text, first)
                index += 1
                yield item, inp, stem, tv
                continue
            body = dict(combo.body)
            if override:
                body.update(override)
            try:
                if is_edit:
                    body["images"] = [url, *refs] if refs else [url]
                    tv["ext"] = "jpg"
                    if oprompt is not None:
                        body["prompt"] = oprompt.format_map(tv)
                    elif combo.prompt is not None:
                        body["prompt"] = combo.prompt.format_map(tv)
                else:
                    body["image"] = url
                    tv["ext"] = body["output_format"]
                name = "" if uses_key else naming.format_map(tv)
            except (KeyError, ValueError, IndexError) as exc:
                raise ManifestError([_render_problem(manifest, step, inp, exc)]) from None
            item = build(step=sid, op=op, body=body, input_id=inp.id, output_name=name, upstream=upkey,
                         input_size=size, vars={**ivars, **combo.vars} if ivars else combo.vars, index=index)
            if uses_key:  # the key is known only once the body is built
                tv["key"] = item.key[:12]
                item = replace(item, output_name=naming.format_map(tv))
            index += 1
            if unique:  # (the checks of repeats_follow_sources let no item come this way)
                raise AssertionError(f"step {sid!r}: an item off the fast path in a walk that relies on it")
            yield ((item.key, item.body, item.input_size, item.vars, None) if light else item), inp, stem, tv


def _render_problem(manifest: Manifest, step: Step, inp: Input, exc: Exception) -> Problem:
    """A template that passed the static checks but fails for one input (its own prompt)."""
    what = f"unknown placeholder {{{exc.args[0]}}}" if isinstance(exc, KeyError) else str(exc)
    message = f"cannot render step {step.id!r} for input {inp.id!r}: {what}"
    hint = "use only variables the step defines (see docs/manifest.md, Templates)"
    for i, src in enumerate(manifest.sources):
        if src is inp:  # written in the manifest: point at its prompt
            has_prompt = "prompt" in (inp.params.get(step.op) or {})
            return manifest.problem(("inputs", i, "params", step.op, "prompt") if has_prompt else ("inputs", i),
                                    message, hint)
    f, line, col = inp.origin.rsplit(":", 2) if inp.origin.count(":") >= 2 else (manifest.display, "1", "1")
    return Problem(f, int(line), int(col), f"input {inp.id!r}", message, hint)


def expand(manifest: Manifest, *, sizes: SizeLookup | None = None, unique: bool = False) -> Iterator[WorkItem]:
    """Every work item of the manifest, step by step, streamed.

    ``sizes(url)`` is asked for the size of root inputs whose size is not declared (it
    may return None); chained items get the size their upstream will produce.

    ``unique``: each item's ``first`` says whether it is the first of the walk with its key (a
    repeat is the same request again: sent once). When ``repeats_follow_sources`` holds (the
    common case) that is known per source image, at the cost of one lookup per input of a root
    step; otherwise every key goes through a ``KeySet`` (~20 bytes a key).
    """
    if unique and not repeats_follow_sources(manifest):
        seen = KeySet().add
        fromhex = bytes.fromhex
        for step in manifest.steps:
            for item in map(_first, _rows(manifest, step, sizes)):
                item.first = seen(fromhex(item.key))
                yield item
        return
    for step in manifest.steps:
        yield from map(_first, _rows(manifest, step, sizes, unique=unique))  # (map: no Python frame per item)


def repeats_follow_sources(manifest: Manifest) -> bool:
    """Whether two items of the expansion can share a key only by sharing their step, their
    combination and their source's main image. Then a repeat is known per source: the items of a
    source whose main image came earlier in the step repeat, all others are new.

    It holds when every combination of every step takes the fast path with its prompt fixed
    (its canonical JSON is ``head + URL + mid``), no two combinations anywhere share their
    ``(operation, head, mid)``, and no input overrides a step's parameters. Then equal keys
    mean equal JSON (sha256), equal JSON means the same template (the URL's place in canonical
    JSON is fixed by the keys around it) and the same URL. A chained step's URL names its
    upstream item: a repeated upstream item is the only way two sources share it.
    """
    if any(isinstance(src, Input) and any(src.params.values()) for src in manifest.sources):
        return False
    templates: set[tuple[str, str, str]] = set()
    for step in manifest.steps:
        for combo in step_plan(manifest, step).combos:
            fast = combo.fast
            if fast is None or fast.tail is not None:
                return False
            sig = (step.op, fast.head, fast.mid)
            if sig in templates:
                return False
            templates.add(sig)
    return True


def expand_step(manifest: Manifest, step_id: str, *, sizes: SizeLookup | None = None) -> Iterator[WorkItem]:
    """The work items of one step (its upstream steps are re-generated, not yielded)."""
    yield from map(_first, _rows(manifest, manifest.step(step_id), sizes))


def count_items(manifest: Manifest, *, n_inputs: int | None = None) -> dict[str, int]:
    """Items per step, in step order, without expanding (reads ``from:`` files once, unless
    ``n_inputs`` says how many inputs there are)."""
    counts: dict[str, int] = {}
    for step in manifest.steps:
        if step.upstream is not None:
            sources = counts[step.upstream]
        elif step.input_ids is not None:
            sources = len(step.input_ids)
        else:
            if n_inputs is None:
                n_inputs = manifest.count_inputs()
            sources = n_inputs
        counts[step.id] = sources * step.matrix_size
    return counts

