"""YAML with positions: plain Python data plus a table of where every value came from.

PyYAML's composer gives every node a start mark; we walk the node tree ourselves
(instead of letting the constructor throw the marks away) and build

- the data, with the usual safe-loader types (dates stay strings: a manifest has none),
- ``values[path]`` and ``keys[path]``: the 1-based (line, column) of the value at a JSON
  path (a tuple of keys and indices) and of the mapping key that introduced it,
- ``texts[path]``: the source text of every numeric scalar, so money can be read exactly
  (``budget_usd: 0.10`` must become Decimal("0.10"), never the float 0.1).

Duplicate mapping keys, which PyYAML silently merges, are collected as ``duplicates``.
Malformed YAML raises :class:`YamlSyntaxError` with the line and column of the problem.

Bounded: before anything is built, one streaming pass over the parser's events
(:func:`_measure`, constant memory) computes what the document would expand to, counting
every alias (and ``<<`` merge) as the whole node it names. A document is refused, at the
position where it crosses the limit, when it holds more than ``MAX_NODES`` values after
expansion (a "billion laughs" of nested aliases is refused at its first few aliases,
within milliseconds), nests deeper than ``MAX_DEPTH``, or holds an alias to a node that
contains it (a recursive alias, or a merge loop). Only then is the node tree composed.
A text longer than ``MAX_CHARS`` is refused before it is parsed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

try:  # the C composer is ~10x faster; the marks are the same
    _Loader: type = yaml.CSafeLoader
except AttributeError:  # pragma: no cover - PyYAML built without libyaml
    _Loader = yaml.SafeLoader

Path = tuple[Any, ...]
Loc = tuple[int, int]

_INT = "tag:yaml.org,2002:int"
_FLOAT = "tag:yaml.org,2002:float"
_TIMESTAMP = "tag:yaml.org,2002:timestamp"
_MERGE = "tag:yaml.org,2002:merge"

#: the longest manifest, in characters (a bigger file is not read at all)
MAX_CHARS = 16 * 1024 * 1024
#: the most values (scalars, lists, mappings) a document may hold once its aliases are expanded
MAX_NODES = 50_000
#: the deepest nesting of lists and mappings (aliases count as the node they name)
MAX_DEPTH = 50


class YamlSyntaxError(Exception):
    """The text is not YAML. ``line``/``column`` are 1-based."""

    def __init__(self, message: str, line: int, column: int, hint: str | None = None):
        super().__init__(message)
        self.message, self.line, self.column, self.hint = message, line, column, hint


@dataclass
class Located:
    """Data loaded from YAML, with the position of everything in it."""

    data: Any
    values: dict[Path, Loc] = field(default_factory=dict)
    keys: dict[Path, Loc] = field(default_factory=dict)
    texts: dict[Path, str] = field(default_factory=dict)
    duplicates: list[tuple[Path, Loc, Loc]] = field(default_factory=list)  # (path, first, again)

    def loc(self, path: Path, *, key: bool = False) -> Loc:
        """The position of ``path`` (of its key when ``key``), else of its nearest known parent."""
        path = tuple(path)
        while True:
            if key and path in self.keys:
                return self.keys[path]
            if path in self.values:
                return self.values[path]
            if not path:
                return (1, 1)
            path = path[:-1]
            key = False


def _mark(node: yaml.Node) -> Loc:
    return (node.start_mark.line + 1, node.start_mark.column + 1)


class _Builder:
    def __init__(self, loader: Any):
        self.loader = loader
        self.out = Located(None)

    def build(self, node: yaml.Node, path: Path) -> Any:
        self.out.values[path] = _mark(node)
        if isinstance(node, yaml.MappingNode):
            merged = any(k.tag == _MERGE for k, _ in node.value)
            if merged:
                try:
                    yaml.SafeLoader.flatten_mapping(self.loader, node)
                except yaml.MarkedYAMLError as exc:  # `<<: 1`: only mappings can be merged
                    mark = exc.problem_mark or exc.context_mark or node.start_mark
                    raise YamlSyntaxError(f"invalid YAML: {exc.problem or exc}", mark.line + 1, mark.column + 1,
                                          "merge (<<) a mapping or a list of mappings, e.g. <<: *defaults") from None
            result: dict[Any, Any] = {}
            for knode, vnode in node.value:
                k = self.scalar(knode) if isinstance(knode, yaml.ScalarNode) else str(knode.start_mark)
                if not isinstance(k, str | int | bool | float) or k is None:
                    k = str(k)
                kpath = (*path, k)
                if k in result and not merged:
                    self.out.duplicates.append((kpath, self.out.keys[kpath], _mark(knode)))
                self.out.keys[kpath] = _mark(knode)
                result[k] = self.build(vnode, kpath)
            return result
        if isinstance(node, yaml.SequenceNode):
            return [self.build(v, (*path, i)) for i, v in enumerate(node.value)]
        if node.tag in (_INT, _FLOAT):
            self.out.texts[path] = node.value
        return self.scalar(node)

    def scalar(self, node: yaml.ScalarNode) -> Any:
        if node.tag == _TIMESTAMP or node.tag not in self.loader.yaml_constructors:
            return node.value
        try:
            return self.loader.yaml_constructors[node.tag](self.loader, node)
        except Exception:  # e.g. `!!int height`, `!!bool maybe`: the tag and the text disagree
            tag = node.tag.rsplit(":", 1)[-1]
            raise YamlSyntaxError(f"invalid YAML: {node.value!r} is not a valid !!{tag}",
                                  node.start_mark.line + 1, node.start_mark.column + 1,
                                  f"remove the !!{tag} tag or write a valid {tag}") from None


TOO_LONG_HINT = "list many inputs in a from: CSV or .txt file instead of in the manifest"


def too_long(size: int, unit: str = "characters") -> str:
    return f"the manifest has {size:,} {unit}, more than the {MAX_CHARS:,} allowed"


def _measure(text: str) -> None:
    """Refuse a document whose expansion is too big, too deep or recursive (YamlSyntaxError),
    from the parser's events alone: nothing is built, memory stays constant.

    ``sizes[anchor]`` and ``heights[anchor]`` are the node count and nesting height of each
    anchored node once closed; an alias adds them where it stands. An alias to an anchor
    still open (``open_anchors``) is recursive.
    """
    sizes: dict[str, int] = {}
    heights: dict[str, int] = {}
    open_anchors: set[str] = set()
    stack: list[list[Any]] = []  # [anchor, size so far, height so far] per open collection
    total = 0

    def refuse(message: str, event: Any, hint: str) -> None:
        raise YamlSyntaxError(message, event.start_mark.line + 1, event.start_mark.column + 1, hint)

    def count(size: int, event: Any) -> None:
        nonlocal total
        total += size
        if total > MAX_NODES:
            refuse(f"the document holds more than {MAX_NODES:,} values once its aliases are expanded", event,
                   "a manifest this big is a mistake or an alias bomb; list many inputs in a from: CSV or .txt file")

    def nest(height: int, event: Any) -> None:
        if len(stack) + height > MAX_DEPTH:
            refuse(f"the document nests deeper than {MAX_DEPTH} levels", event,
                   "a manifest needs a few levels of nesting at most")

    def into_parent(size: int, height: int) -> None:
        if stack:
            top = stack[-1]
            top[1] += size
            top[2] = max(top[2], height + 1)

    for event in yaml.parse(text, Loader=_Loader):
        if isinstance(event, yaml.AliasEvent):
            name = event.anchor
            if name in open_anchors:
                refuse(f"the alias *{name} refers to a node that contains it "
                       "(a recursive alias or merge loop)", event,
                       f"an alias can only repeat a node written before it and outside it; remove *{name} here")
            size, height = sizes.get(name, 1), heights.get(name, 0)  # an unknown anchor: the composer says so
            count(size, event)
            nest(height, event)
            into_parent(size, height)
        elif isinstance(event, yaml.ScalarEvent):
            count(1, event)
            into_parent(1, 0)
            if event.anchor is not None:
                sizes[event.anchor], heights[event.anchor] = 1, 0
        elif isinstance(event, (yaml.SequenceStartEvent, yaml.MappingStartEvent)):
            count(1, event)
            nest(1, event)
            stack.append([event.anchor, 1, 1])
            if event.anchor is not None:
                open_anchors.add(event.anchor)
        elif isinstance(event, (yaml.SequenceEndEvent, yaml.MappingEndEvent)):
            anchor, size, height = stack.pop()
            if anchor is not None:
                open_anchors.discard(anchor)
                sizes[anchor], heights[anchor] = size, height
            into_parent(size, height)


def load(text: str) -> Located:
    """Parse one YAML document. Raises YamlSyntaxError (with a 1-based position)."""
    if len(text) > MAX_CHARS:
        raise YamlSyntaxError(too_long(len(text)), 1, 1, TOO_LONG_HINT)
    loader = _Loader(text)
    try:
        try:
            _measure(text)
            node = loader.get_single_node()
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
            problem = exc.problem or "invalid YAML"
            if exc.context:
                problem = f"{problem} ({exc.context}" + (
                    f" at line {exc.context_mark.line + 1})" if exc.context_mark else ")")
            raise YamlSyntaxError(f"invalid YAML: {problem}", line, col, _syntax_hint(problem, text, line)) from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
            raise YamlSyntaxError(f"invalid YAML: {exc}", line, col) from None
        builder = _Builder(yaml.SafeLoader(""))
        if node is None:
            builder.out.data = None
            return builder.out
        builder.out.data = builder.build(node, ())
        return builder.out
    finally:
        loader.dispose()


def _syntax_hint(problem: str, text: str, line: int) -> str:
    lines = text.splitlines()
    src = lines[line - 1] if 0 < line <= len(lines) else ""
    if "maximum nesting depth" in problem:
        return f"a manifest needs a few levels of nesting at most ({MAX_DEPTH} are allowed)"
    if "\t" in src or "found character '\\t'" in problem:
        return "indent with spaces, not tabs"
    if "mapping values are not allowed" in problem:
        return "quote a value that contains ': ', or fix the indentation of this line"
    if "could not find expected ':'" in problem or "simple key" in problem:
        return "each entry needs 'key: value'; check the indentation and quotes around this line"
    if "expected ',' or ']'" in problem or "expected ',' or '}'" in problem:
        return "a [list] or {mapping} is not closed, or its items are not separated by commas"
    if "found unexpected end of stream" in problem or "found unexpected" in problem:
        return "a quote or bracket is not closed"
    if "expected <block end>" in problem:
        return "check the indentation: items of one list or mapping must line up"
    return "fix the YAML syntax at this position"
