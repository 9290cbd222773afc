"""Loading a manifest: read it, run the passes in order, return a Manifest or every problem.

A manifest can be given three ways (:func:`load_manifest` and the others take all three):

- a **path** (``pathlib.Path`` or any ``os.PathLike``): the YAML file; ``from:``,
  ``output_dir`` and ``state`` are relative to its directory;
- a **mapping**: the data itself, as ``yaml.safe_load`` would give it (tuples are lists,
  ``Path`` values are strings, a ``Decimal`` or float ``budget_usd`` is read exactly from
  its ``str``). Problems are located at ``<data>:1:1`` plus the JSON path;
- a **string**: YAML text when it contains a newline or starts with ``{``, else a path.
  Problems are located at ``<string>:LINE:COLUMN``.

For text and data, relative paths are relative to ``base_dir`` (default: the current
directory), the default name is ``manifest`` and the default state file
``manifest.pixbatch.duckdb`` there; ``Manifest.path`` is ``<base_dir>/<string>`` (or
``<data>``), a file that does not exist.

The passes, every problem of every pass reported together (:mod:`.problems`):

1. **shape** (:mod:`.shape`): the JSON Schema, worded; duplicate YAML keys;
2. **meaning** (:mod:`.meaning`): what a schema cannot say, while the Manifest is built;
3. **names** (:mod:`.names`, only when 1 and 2 found nothing): every step expanded once to
   check that output names stay inside ``output_dir`` and are unique within the step.
   :func:`load_manifest_shallow` skips it and returns a Manifest with
   ``names_checked=False``: whoever walks the expansion next checks the names on that walk
   (``run`` does unless the state file already holds this very expansion, ``estimate``
   on its pricing walk), so a resume of an unchanged million-item manifest reads no item.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import replace
from decimal import Decimal
from pathlib import Path
from typing import Any

from ..yamlpos import MAX_CHARS, TOO_LONG_HINT, Located, YamlSyntaxError, too_long
from ..yamlpos import load as load_yaml
from .meaning import build
from .model import Manifest
from .names import check_output_names
from .problems import Checker, Problem, manifest_error, sort_problems
from .shape import schema_problems

# a path, YAML text, or the data itself (see the module docstring for how a str is read)
ManifestSource = str | os.PathLike[str] | Mapping[str, Any]

TEXT_FILE = "<string>"
DATA_FILE = "<data>"


def load_manifest(source: ManifestSource, *, deep: bool = True, base_dir: str | Path | None = None) -> Manifest:
    """Load and fully validate a manifest; raises ManifestError carrying every Problem.

    Includes the output-name pass (time proportional to the number of items, memory not).
    ``deep=False`` is :func:`load_manifest_shallow` (kept for callers written before it).
    """
    manifest, problems = validate_manifest(source, deep=deep, base_dir=base_dir)
    if manifest is None:
        raise manifest_error(_shown(source), problems)
    return manifest


def load_manifest_shallow(source: ManifestSource, *, base_dir: str | Path | None = None) -> Manifest:
    """Load and validate a manifest but for its output names (``names_checked=False``).

    For callers that walk the expansion anyway (``run``, ``estimate``) or never expand it
    (``status``, ``report``): the runner and ``estimate_manifest`` see the flag and check
    the names on their own walk, so nobody has to remember to ask for it.
    """
    return load_manifest(source, deep=False, base_dir=base_dir)


def check_manifest(source: ManifestSource, *, deep: bool = True, base_dir: str | Path | None = None) -> list[Problem]:
    """Every problem in the manifest (empty when valid)."""
    return validate_manifest(source, deep=deep, base_dir=base_dir)[1]


def validate_manifest(source: ManifestSource, *, deep: bool = True, base_dir: str | Path | None = None
                      ) -> tuple[Manifest | None, list[Problem]]:
    """Both at once: (the manifest, []) when valid, (None, every problem) when not."""
    c, loc, problem = _read(source, base_dir)
    if loc is None:
        return None, [problem] if problem else []
    c.loc = loc
    data = loc.data
    for kpath, first, _again in loc.duplicates:
        c.add(kpath, f"the key {kpath[-1]!r} is written twice (first at line {first[0]})",
              "remove one of them: YAML keeps only the last", key=True)
    schema_problems(c, data)
    if not isinstance(data, dict):
        return None, sort_problems(c.problems)
    manifest = build(c, data)
    if manifest is not None and not c.problems and deep:
        c.problems.extend(check_output_names(manifest))
        manifest = replace(manifest, names_checked=True)
    return (manifest if not c.problems else None), sort_problems(c.problems)


# -- reading ---------------------------------------------------------------------------


def _is_text(source: str) -> bool:
    return "\n" in source or source.lstrip().startswith("{")


def _shown(source: ManifestSource) -> str:
    """The manifest as problems and messages name it."""
    if isinstance(source, Mapping):
        return DATA_FILE
    if isinstance(source, str) and _is_text(source):
        return TEXT_FILE
    return os.fspath(source)


def _read(source: ManifestSource, base_dir: str | Path | None) -> tuple[Checker, Located | None, Problem | None]:
    """(a Checker for it, the data with positions or None, the problem when there is no data)."""
    if isinstance(source, Mapping) or isinstance(source, str) and _is_text(source):
        base = Path(base_dir) if base_dir is not None else Path("")
        name = DATA_FILE if isinstance(source, Mapping) else TEXT_FILE
        c = Checker(name, (base / name).resolve(), base, "manifest")
        if isinstance(source, Mapping):
            return c, _located_data(source), None
        return c, *_parse(c, source.removeprefix("\ufeff"))
    if not isinstance(source, str | os.PathLike):
        raise TypeError(f"a manifest is a path, YAML text or a mapping, not {type(source).__name__}")
    if base_dir is not None:
        raise TypeError("base_dir is for a manifest given as text or data; a file's paths are relative to its directory")
    path = Path(source)
    c = Checker.for_file(path)
    try:
        text = _read_text(path)
    except _TooLong as exc:
        return c, None, Problem(c.file, 1, 1, "$", too_long(exc.size, "bytes"), TOO_LONG_HINT)
    except _NotAFile:
        return c, None, Problem(c.file, 1, 1, "$", "this is not a regular file", "pass the path of a .yaml file")
    except FileNotFoundError:
        hint = "check the path"
        if isinstance(source, str) and ": " in source:
            hint += "; YAML text is read as text only when it has a newline or starts with '{'"
        return c, None, Problem(c.file, 1, 1, "$", "the manifest file does not exist", hint)
    except IsADirectoryError:
        return c, None, Problem(c.file, 1, 1, "$", "this is a directory, not a manifest file", "pass the path of a .yaml file")
    except UnicodeDecodeError as exc:
        return c, None, Problem(c.file, 1, 1, "$", f"the manifest is not UTF-8 text ({exc.reason})", "save it as UTF-8")
    except OSError as exc:
        return c, None, Problem(c.file, 1, 1, "$", f"cannot read the manifest: {exc.strerror or exc}",
                                "check the path and permissions")
    except ValueError:  # a NUL in the path
        return c, None, Problem(c.file, 1, 1, "$", "the path contains a NUL character", "check the path")
    return c, *_parse(c, text)


class _TooLong(Exception):
    def __init__(self, size: int):
        self.size = size


class _NotAFile(Exception):
    pass


def _read_text(path: Path) -> str:
    """The file's text; never more than ``MAX_CHARS`` bytes read (``/dev/zero`` is not a manifest)."""
    with open(path, "rb") as f:
        if not os.path.isfile(path):  # opened first, so a directory is IsADirectoryError
            raise _NotAFile
        chunks, size = [], 0
        while size <= MAX_CHARS:  # in chunks: read(MAX_CHARS + 1) would allocate 16 MiB for every manifest
            chunk = f.read(1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        data = b"".join(chunks)
    if len(data) > MAX_CHARS:
        raise _TooLong(max(len(data), path.stat().st_size))
    return data.decode("utf-8-sig")


def _parse(c: Checker, text: str) -> tuple[Located | None, Problem | None]:
    try:
        return load_yaml(text), None
    except YamlSyntaxError as exc:
        return None, Problem(c.file, exc.line, exc.column, "$", exc.message, exc.hint)


def _located_data(data: Mapping[str, Any]) -> Located:
    """Data given as a mapping, as the YAML loader would give it (no positions)."""
    out = Located(None)

    def plain(v: Any, path: tuple[Any, ...]) -> Any:
        if isinstance(v, Mapping):
            return {k: plain(x, (*path, k)) for k, x in v.items()}
        if isinstance(v, list | tuple):
            return [plain(x, (*path, i)) for i, x in enumerate(v)]
        if isinstance(v, os.PathLike):
            return os.fspath(v)
        if isinstance(v, int | float | Decimal) and not isinstance(v, bool):
            out.texts[path] = str(v)  # read exactly where it is money (budget_usd)
            if isinstance(v, Decimal):
                return int(v) if v.is_finite() and v == v.to_integral_value() else float(v)
        return v

    out.data = plain(data, ())
    return out
