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
                yaml.SafeLoader.flatten_mapping(self.loader, node)
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


def load(text: str) -> Located:
    """Parse one YAML document. Raises YamlSyntaxError (with a 1-based position)."""
    loader = _Loader(text)
    try:
        try:
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
