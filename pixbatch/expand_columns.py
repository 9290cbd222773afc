"""The expansion as columns: what an ingest writes, for the common manifest, without a WorkItem per item.

A run's ingest needs of each item a few strings (key, canonical JSON, output name) and facts
that are the same for every item of a *path* (a combination of each step on the chain from a
root step down to the step walked): operation, price, matrix values, the input size a
chained step predicts. :func:`column_walk` computes the strings per item with the fewest
operations Python allows (one concatenation and one sha256 for a key, one concatenation or
``str.format`` for a name) and the rest once per path, or once per path and input size, and
appends them straight to an ingest's columns. At a million items that is ~3x less CPU than
``expand`` + ``Ingest.take`` over WorkItems, for the same columns.

It applies when ``expand.repeats_follow_sources`` holds (every combination takes the fast
path with a fixed prompt, no input overrides a step: repeats are known per source image)
and every step's naming template can be cut around its per-item values: ``{input}``,
``{stem}``, ``{index}`` and ``{key}`` without a format spec, everything else constant along a
path (matrix values, ``{step}``, ``{ext}``). Otherwise it returns None and the ingest walks
WorkItems. Same keys, same bodies, same names, same order: a property test compares the two
walks column by column over awkward manifests (``tests/test_expand_columns.py``).
"""

from __future__ import annotations

import itertools
import json
import math
import re
import struct
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from .expand import first_of_url, memo_output_size, repeats_follow_sources, step_inputs, step_plan
from .items import UPSTREAM_SCHEME
from .keyset import KeySet
from .manifest.model import Manifest, Step
from .manifest.names import NameCheck, name_escapes
from .manifest.templates import template_fields
from .sizes import Size

# marks for the per-item values of a name (rendered once per path, then cut around them)
_INPUT, _INDEX, _KEY = "\x00pixbatch-input\x00", "\x00pixbatch-index\x00", "\x00pixbatch-key\x00"
_PER_ITEM = frozenset(("input", "stem", "index", "key"))
_FACTS_MAX = 10_000  # input sizes whose per-path facts are kept

Price = Callable[[str, Mapping[str, Any], "Size | None", bool], tuple[int, int, str]]
VarsJson = Callable[[Mapping[str, Any]], str]
_encode_str = json.encoder.encode_basestring  # one JSON string value (as items.canonical_json writes it)
_pack = struct.Struct("<q").pack  # a str hash as 8 bytes (as NameCheck keeps a name's)
_ORDER = ("key", "body", "output_name", "upstream", "step", "op", "idx", "input_id", "input_width", "input_height",
          "est_low_micros", "est_high_micros", "tier", "vars")
_PLAIN_ID = re.compile(r"[A-Za-z0-9_-]+")
#: the most paths of a step whose names are compared pair by pair (``_names_follow_ids``)
_AFFIX_PATHS = 200
#: the most paths (combinations along a chain) a step may have for the column walk, which holds a
#: name template per path: more (a chain of large matrices) take the WorkItem walk
_MAX_PATHS = 10_000


class _Level:
    """One step of a chain: per combination, the JSON around the image URL and its hasher."""

    __slots__ = ("step", "combos", "pre", "post", "hashers")

    def __init__(self, manifest: Manifest, step: Step, chained: bool):
        self.step = step
        self.combos = step_plan(manifest, step).combos
        lead = '"' + UPSTREAM_SCHEME if chained else ""  # a chained URL is "pixbatch://item/<key>"
        self.pre = [c.fast.head + lead for c in self.combos]  # type: ignore[union-attr]
        self.post = [('"' if chained else "") + c.fast.mid for c in self.combos]  # type: ignore[union-attr]
        self.hashers = [c.fast.hasher for c in self.combos]  # type: ignore[union-attr]


class _Path:
    """One combination of each step of a chain: the walked step's constant facts."""

    __slots__ = ("combos", "vars", "vars_json", "name_pre", "name_post", "name_fmt")

    def __init__(self, combos: tuple[Any, ...]):
        self.combos = combos
        merged: dict[str, Any] = {}
        for c in combos:  # an item's vars: its upstream's, then its own combination's
            merged = {**merged, **c.vars} if merged else c.vars
        self.vars = merged
        self.vars_json: str | None = None
        self.name_pre = self.name_post = self.name_fmt = None


def _name_parts(step: Step, path: _Path, ext: str) -> tuple[str, str] | str | None:
    """The path's naming template cut around its per-item values: ``(pre, post)`` when the
    input's id is the only one (``pre + id + post``), else a ``str.format`` string of
    ``(input id, index, key[:12])``; None when a name needs what varies otherwise."""
    fields = template_fields(step.naming)
    if any(spec for name, spec in fields if name in _PER_ITEM):
        return None  # a per-item value padded or formatted: rendered per item only
    tv: dict[str, Any] = {}
    for c in path.combos:
        tv.update(c.tvars)
    suffix = "".join(c.suffix for c in path.combos)
    if any("\x00" in str(v) for v in (*tv.values(), step.id, ext, suffix)):
        return None  # a value that holds a NUL (and would hold a mark): per item only
    tv.update(input=_INPUT, step=step.id, index=_INDEX, stem=_INPUT + suffix, ext=ext, key=_KEY)
    try:
        text = step.naming.format_map(tv)
    except (KeyError, ValueError, IndexError, TypeError):
        return None  # an input's own variable (or a bad template): the WorkItem walk says which
    if text.count(_INPUT) == 1 and _INDEX not in text and _KEY not in text:
        pre, post = text.split(_INPUT)
        return pre, post
    fmt = text.replace("{", "{{").replace("}", "}}")  # (the marks hold no braces)
    return fmt.replace(_INPUT, "{0}").replace(_INDEX, "{1}").replace(_KEY, "{2}")


class ColumnWalk:
    """The expansion of a manifest appended to an ingest's columns (see the module docstring)."""

    def __init__(self, manifest: Manifest, sizes: Callable[[str], Size | None] | None, names: NameCheck | None,
                 chains: list[tuple[list[_Level], list[_Path]]]):
        self.manifest = manifest
        self.sizes = sizes
        self.names = names
        self.chains = chains
        self.walked = 0
        self.done = False
        self._cols: dict[str, list[Any]] = {}
        self._aliases: list[tuple[str, str, int, str]] = []
        self._price: Price | None = None
        self._vars: VarsJson | None = None
        self._want = 0
        self._firsts: dict[tuple[str, ...] | None, bytearray] = {}  # by the root's input_ids (None: all)
        self._gen = self._walk()

    def fill(self, cols: dict[str, list[Any]], aliases: list[tuple[str, str, int, str]], n: int,
             price: Price, vars_json: VarsJson) -> int:
        """Append at least ``n`` new unique items (a source's items are never split), or the rest
        of the walk (then ``done``); the unique items appended."""
        self._cols, self._aliases, self._price, self._vars = cols, aliases, price, vars_json
        self._want = n
        count = 0
        for added in self._gen:  # (a step's walk yields once it has n, and at its end)
            count += added
            if count >= n:
                return count
            self._want = n - count
        self.done = True
        return count

    def _walk(self) -> Iterator[int]:
        for levels, paths in self.chains:
            yield from self._step(levels, paths)

    def _step(self, levels: list[_Level], paths: list[_Path]) -> Iterator[int]:
        manifest, sizes = self.manifest, self.sizes
        root, last = levels[0].step, levels[-1]
        step = last.step
        sid, op, chained = step.id, step.op, len(levels) > 1
        check = self.names
        # the names' check: per input when the names of distinct inputs cannot meet (then a repeated
        # name is a repeated input id), else per name (NameCheck's filter); either way per name
        # whether it escapes output_dir. What it finds, NameCheck.verify() words exactly.
        by_id = check is not None and _names_follow_ids(paths)
        see = check.step_filter() if check is not None and not by_id else None
        ids = KeySet(8).add if by_id else None
        # a name escapes only where its template does, when the id is plain (``_PLAIN_ID``: no dot, no
        # separator, no space can meet the template's text to make one): then per input, not per name
        plain = by_id and all(name_escapes(p.name_pre + "a" + p.name_post) is None for p in paths)  # type: ignore[operator]
        match_plain = _PLAIN_ID.fullmatch
        npaths = len(paths)
        facts_by_size: dict[Any, list[tuple[Any, Any, int, int, str, str | None]]] = {}
        inputs = step_inputs(manifest, root)
        # whether each source is the first with its URL: known from an earlier walk of the same inputs
        # (another root step, or this chain's root walked for an earlier step), else told by first_of_url
        known = self._firsts.get(root.input_ids)
        urls = first_of_url() if known is None else None
        flags = bytearray() if known is None else None
        si = 0
        # per path of the walked step (in walk order): its combination's JSON around the URL, hasher,
        # and the name's parts
        combos = list(zip(last.pre, last.post, last.hashers))
        parts = [(p.name_pre, p.name_post, p.name_fmt) for p in paths]
        uppers = levels[:-1]
        index = 0
        count = 0  # unique items appended since the last yield
        cols: dict[str, list[Any]] | None = None
        for inp in inputs:
            if cols is not self._cols:  # a new batch: its columns
                cols, aliases = self._cols, self._aliases
                (key_, body_, name_, up_, step_, op_, idx_, input_, w_, h_, lo_, hi_, tier_,
                 vars_) = (cols[c] for c in _ORDER)
            url, iid = inp.url, inp.id
            if ids is not None and not ids(_pack(hash(iid))):
                check.suspect = True  # type: ignore[union-attr]
            escapes = by_id and not (plain and match_plain(iid))
            size = inp.size
            if size is None and sizes is not None:
                size = sizes(url)
            if known is not None:
                first = known[si]
                si += 1
            else:
                first = urls(url)  # type: ignore[misc]
                flags.append(first)  # type: ignore[union-attr]
            facts = facts_by_size.get(size)
            if facts is None:
                facts = self._facts(levels, paths, size)
                if len(facts_by_size) < _FACTS_MAX:
                    facts_by_size[size] = facts
            # the upstream items of this source, level by level from the root: their keys
            enc = _encode_str(url)
            if chained:
                lvl = uppers[0]
                ups = [_hex(h, p + enc + q) for p, q, h in zip(lvl.pre, lvl.post, lvl.hashers)]
                for lvl in uppers[1:]:
                    ups = [_hex(h, p + k + q) for k in ups for p, q, h in zip(lvl.pre, lvl.post, lvl.hashers)]
            else:
                ups = [enc]  # a root step's items: one "upstream", the input's URL as JSON
            pi = 0
            ivars = inp.vars
            for up in ups:
                for pre, post, hasher in combos:
                    text = pre + up + post
                    h = hasher.copy()
                    h.update(text.encode())
                    key = h.hexdigest()[:32]
                    npre, npost, nfmt = parts[pi]
                    name = npre + iid + npost if nfmt is None else nfmt.format(iid, index, key[:12])
                    if see is not None:
                        see(name)
                    elif escapes and name_escapes(name):
                        check.suspect = True  # type: ignore[union-attr]
                    if first:
                        w, hgt, lo, hi, tier, vjson = facts[pi]
                        key_.append(key)
                        body_.append(text)
                        name_.append(name)
                        up_.append(up if chained else None)
                        step_.append(sid)
                        op_.append(op)
                        idx_.append(index)
                        input_.append(iid)
                        w_.append(w)
                        h_.append(hgt)
                        lo_.append(lo)
                        hi_.append(hi)
                        tier_.append(tier)
                        vars_.append(self._vars({**ivars, **paths[pi].vars}) if ivars else vjson)  # type: ignore[misc]
                    else:
                        aliases.append((key, sid, index, name))
                    index += 1
                    pi += 1
            self.walked += npaths
            if first:
                count += npaths
                if count >= self._want:
                    yield count
                    count = 0
        if flags is not None:
            self._firsts[root.input_ids] = flags  # (a walk that ends early never gets here)
        if count:
            yield count

    def _facts(self, levels: list[_Level], paths: list[_Path], size: Size | None
               ) -> list[tuple[Any, Any, int, int, str, str | None]]:
        """Per path: the walked step's input width and height, its price (low, high, tier), and its
        matrix values as JSON."""
        out = []
        price = self._price
        assert price is not None
        chained = len(levels) > 1
        for path in paths:
            s = size
            for lvl, combo in zip(levels[:-1], path.combos):
                s = memo_output_size(lvl.step.op, combo.fast.body, s)
            if path.vars_json is None and path.vars:
                path.vars_json = self._vars(path.vars)  # type: ignore[misc]
            body = path.combos[-1].fast.body
            lo, hi, tier = price(levels[-1].step.op, body, s, chained)
            out.append((s[0] if s else None, s[1] if s else None, lo, hi, tier, path.vars_json))
        return out


def _names_follow_ids(paths: list[_Path]) -> bool:
    """Whether two items of a step with distinct input ids always have distinct names: every name is
    ``pre + id + post``, and either all share ``pre`` and no ``post`` is another's suffix (then
    ``a + post1 == b + post2`` forces ``post1 == post2`` and ``a == b``), or the mirror image."""
    if len(paths) > _AFFIX_PATHS or any(p.name_fmt is not None for p in paths):
        return False
    pres = [p.name_pre for p in paths]
    posts = [p.name_post for p in paths]
    if len(set(pres)) == 1:
        return _affix_free(posts, str.endswith)  # type: ignore[arg-type]
    if len(set(posts)) == 1:
        return _affix_free(pres, str.startswith)  # type: ignore[arg-type]
    return False


def _affix_free(parts: list[str], has: Callable[[str, str], bool]) -> bool:
    """Pairwise distinct, and none a proper suffix (``str.endswith``) or prefix of another."""
    return len(set(parts)) == len(parts) and not any(a != b and has(a, b) for a in parts for b in parts)


def _hex(hasher: Any, text: str) -> str:
    h = hasher.copy()
    h.update(text.encode())
    return h.hexdigest()[:32]


def column_walk(manifest: Manifest, sizes: Callable[[str], Size | None] | None = None,
                names: NameCheck | None = None) -> ColumnWalk | None:
    """The expansion as columns, or None when the manifest needs the WorkItem walk (see the module
    docstring). ``names``: the check of the output names, or None (checked already)."""
    if not repeats_follow_sources(manifest):
        return None
    chains: list[tuple[list[_Level], list[_Path]]] = []
    for step in manifest.steps:
        chain = [step]
        while chain[0].upstream is not None:
            chain.insert(0, manifest.step(chain[0].upstream))
        levels = [_Level(manifest, s, i > 0) for i, s in enumerate(chain)]
        if math.prod(len(lvl.combos) for lvl in levels) > _MAX_PATHS:
            return None
        paths = [_Path(combos) for combos in itertools.product(*(lvl.combos for lvl in levels))]
        for path in paths:
            last = path.combos[-1]
            ext = "jpg" if step.op == "edit" else last.body["output_format"]
            parts = _name_parts(step, path, ext)
            if parts is None:
                return None
            if isinstance(parts, tuple):
                path.name_pre, path.name_post = parts
            else:
                path.name_fmt = parts
        chains.append((levels, paths))
    return ColumnWalk(manifest, sizes, names, chains)
