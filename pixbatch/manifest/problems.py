"""What is wrong with a manifest, where, and how to fix it: the wording every pass shares.

A :class:`Problem` reads ``file:line:column: json.path: what is wrong (how to fix)``. The
passes collect them with a :class:`Checker` (which turns a JSON path into the line and
column the YAML loader recorded); :func:`sort_problems` orders them for the user (each
file's problems together, the manifest first, in source order) and :func:`manifest_error`
is the one way a list of problems becomes the :class:`~pixbatch.errors.ManifestError` the
CLI prints, whichever pass or walk found them.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ManifestError
from ..yamlpos import Located

MAX_ROW_PROBLEMS = 50  # per input file (or step); the rest are summarised in one problem

IDENT_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a manifest, where it is, and how to fix it."""

    file: str
    line: int
    column: int
    path: str  # JSON path in the manifest ("$.steps[0].op"), or "row N" / "line N" in an input file
    message: str
    hint: str | None = None

    def __str__(self) -> str:
        text = f"{self.file}:{self.line}:{self.column}: {self.path}: {self.message}"
        return f"{text} ({self.hint})" if self.hint else text

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "line": self.line, "column": self.column, "path": self.path,
                "message": self.message, "hint": self.hint}


def json_path(path: Iterable[Any]) -> str:
    """``("steps", 0, "op")`` -> ``"$.steps[0].op"``."""
    out = "$"
    for part in path:
        if isinstance(part, int) and not isinstance(part, bool):
            out += f"[{part}]"
        elif isinstance(part, str) and IDENT_RE.match(part):
            out += f".{part}"
        else:
            out += f"[{json.dumps(str(part))}]"
    return out


def suggest(word: Any, candidates: Iterable[str]) -> str | None:
    """'did you mean' for a misspelled key or value."""
    if not isinstance(word, str):
        return None
    cands = [c for c in candidates if isinstance(c, str) and c != word]
    match = difflib.get_close_matches(word, cands, n=1, cutoff=0.6)
    if match:
        return match[0]
    lowered: dict[str, str] = {}
    for c in cands:
        lowered.setdefault(c.lower(), c)
    match = difflib.get_close_matches(word.lower(), list(lowered), n=1, cutoff=0.6)
    return lowered[match[0]] if match else None


def short(v: Any) -> str:
    """A value as a problem quotes it: repr of a string, JSON otherwise, cut at 60 characters."""
    text = json.dumps(v, ensure_ascii=False, default=str) if not isinstance(v, str) else repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def is_pseudo_file(name: str) -> bool:
    """``<string>``, ``<data>``: a manifest that was not read from a file."""
    return name.startswith("<") and name.endswith(">")


def manifest_error(source: str | Path, problems: list[Problem]) -> ManifestError:
    """The ManifestError for ``problems`` of the manifest ``source`` (its path as the user gave it)."""
    n = len(problems)
    what = f"{source} is not a valid manifest ({n} problem{'s' if n != 1 else ''})"
    head = (f"{what}; fix these and validate again:" if is_pseudo_file(str(source)) else
            f"{what}; fix these and run `pixbatch validate {source}`:")
    return ManifestError(problems, "\n".join([head, *(str(p) for p in problems)]))


def sort_problems(problems: list[Problem]) -> list[Problem]:
    """Without repeats; each file's problems together, the manifest's first, in source order."""
    seen: set[tuple[Any, ...]] = set()
    out = []
    for p in problems:
        k = (p.file, p.line, p.column, p.path, p.message)
        if k not in seen:
            seen.add(k)
            out.append(p)
    order = {f: i for i, f in enumerate(dict.fromkeys(p.file for p in out))}
    return sorted(out, key=lambda p: (order[p.file], p.line, p.column, p.path))


class Checker:
    """Collects problems while the passes read one manifest.

    ``file`` is the manifest as problems name it (the path as given, or ``<string>``),
    ``path`` where it is (the Manifest's ``path``), ``base`` the directory its relative
    paths are relative to (as given: problems show ``from:`` files the way the user wrote
    them), ``stem`` the default for its name and state file.
    """

    def __init__(self, file: str, path: Path, base: Path, stem: str):
        self.file, self.path, self.base, self.stem = file, path, base, stem
        self.problems: list[Problem] = []
        self.loc: Located = Located(None)

    @classmethod
    def for_file(cls, path: Path) -> Checker:
        return cls(str(path), path, path.parent, path.stem)

    def add(self, path: tuple[Any, ...], message: str, hint: str | None = None, *, key: bool = False) -> None:
        line, col = self.loc.loc(path, key=key)
        self.problems.append(Problem(self.file, line, col, json_path(path), message, hint))

    def display_path(self, rel: str) -> tuple[Path, str]:
        """A ``from:`` path: absolute, and as shown in problems (relative to the manifest as given)."""
        shown = Path(rel) if Path(rel).is_absolute() else self.base / rel
        return shown.resolve(), str(shown)
