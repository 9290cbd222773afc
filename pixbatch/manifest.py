"""Manifests: load YAML with positions, validate everything at once, return a typed Manifest.

Validation happens in three passes, and every problem of every pass is reported together
(as :class:`Problem`, ``file:line:column: json.path: what is wrong (how to fix)``):

1. **Shape** — the data is checked against ``schemas/manifest.schema.json`` (the single
   source of the manifest's shape) with ``jsonschema``; each error's ``absolute_path`` is
   mapped back to a line and column through :mod:`pixbatch.yamlpos`, misspelled keys and
   enum values get a "did you mean".
2. **Meaning** — what a schema cannot say: step references (unknown, later, self, cycles),
   duplicate ids, missing ``from:`` files and bad rows in them (``FILE:LINE:COLUMN``),
   matrix values against the parameter rules, unknown template placeholders, empty
   expansions, parameters that would be ignored. Input files are streamed once; ids are
   checked for duplicates with a set of 64-bit hashes, and only colliding hashes are
   looked at again (to name both places), so a file of millions of rows costs little memory.
3. **Items** (``deep``, only when 1 and 2 found nothing) — every step is expanded once to
   check that rendered output names stay inside ``output_dir`` and are unique within the
   step (again with hashes, then a second look for the colliding ones).

Inputs stay lazy after loading: :meth:`Manifest.iter_inputs` re-reads ``from:`` files row
by row each time it is called.

Entry points: ``load_manifest(path)`` (raises ManifestError), ``check_manifest(path)``
(the problems), ``validate_manifest(path)`` (both). ``deep=False`` skips pass 3.
"""

from __future__ import annotations

import csv
import difflib
import json
import re
import string
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from . import contract
from .errors import ManifestError
from .money import usd_to_micros
from .schemas import load_schema
from .sizes import Size
from .yamlpos import Located, YamlSyntaxError
from .yamlpos import load as load_yaml

DEFAULT_NAMING = "{step}/{stem}.{ext}"
BUILTIN_VARS = ("input", "step", "index", "ext", "key", "stem")
CSV_COLUMNS = ("url", "id", "width", "height")
MAX_ROW_PROBLEMS = 50  # per input file; the rest are summarised in one problem

_URL_RE = re.compile(r"^[hH][tT][tT][pP][sS]?://[^/\s?#]+\S*$")
_ID_RE = re.compile(r"^[A-Za-z0-9._-]+$")
_ID_BAD = re.compile(r"[^A-Za-z0-9._-]+")
_IDENT_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


# -- values -------------------------------------------------------------------------


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


@dataclass(frozen=True, slots=True)
class Input:
    """One source image."""

    id: str
    url: str
    width: int | None = None
    height: int | None = None
    params: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # {"edit": {...}, "upscale": {...}}
    vars: Mapping[str, str] = field(default_factory=dict)  # extra CSV columns: template variables
    origin: str = ""  # "file:line:column" where the input is written

    @property
    def size(self) -> Size | None:
        return (self.width, self.height) if self.width is not None and self.height is not None else None


@dataclass(frozen=True, slots=True)
class Step:
    """One step. ``params`` are the step's own parameters (not merged with defaults)."""

    id: str
    op: str
    for_each: str | tuple[str, ...]  # "inputs", a tuple of input ids, or an earlier step's id
    params: Mapping[str, Any]
    matrix: Mapping[str, tuple[Any, ...]]  # in the order written; the last key varies fastest
    references: tuple[str, ...]  # resolved URLs (input ids replaced by their URLs)
    naming: str  # the effective naming template (the step's, else the manifest's)
    index: int = 0  # position in the manifest's steps

    @property
    def upstream(self) -> str | None:
        """The id of the step whose outputs feed this one, if any."""
        return self.for_each if isinstance(self.for_each, str) and self.for_each != "inputs" else None

    @property
    def input_ids(self) -> tuple[str, ...] | None:
        return self.for_each if isinstance(self.for_each, tuple) else None

    @property
    def matrix_size(self) -> int:
        n = 1
        for values in self.matrix.values():
            n *= len(values)
        return n


@dataclass(frozen=True, slots=True)
class FileSource:
    """``{from: FILE}``: a CSV (header row; url, optional id, width, height, more columns
    become template variables) or a text file (one URL per line, ``#`` comments)."""

    path: Path  # absolute
    display: str  # the path as shown in problems (relative to the working directory when given so)
    kind: str  # "csv" | "txt"


@dataclass(frozen=True)
class Manifest:
    path: Path  # absolute
    name: str
    budget_micros: int | None
    output_dir: Path  # absolute
    state_path: Path  # absolute
    naming: str
    defaults: Mapping[str, Mapping[str, Any]]  # {"upscale": {...}, "edit": {...}}
    steps: tuple[Step, ...]
    sources: tuple[Input | FileSource, ...] = ()
    display: str = ""  # the manifest's path as given by the user (used in problems)
    located: Located | None = field(default=None, repr=False, compare=False)

    # -- inputs, streamed --------------------------------------------------------

    def iter_inputs(self) -> Iterator[Input]:
        """Every input in manifest order; ``from:`` files are read lazily, row by row."""
        for src in self.sources:
            if isinstance(src, Input):
                yield src
            else:
                yield from _iter_file(src, None)

    def count_inputs(self) -> int:
        return sum(1 for _ in self.iter_inputs())

    def find_inputs(self, ids: Collection[str]) -> dict[str, Input]:
        """The inputs with these ids (missing ones are absent). Reads ``from:`` files only
        when an id is not written in the manifest itself, and stops as soon as all are found."""
        wanted = set(ids)
        found: dict[str, Input] = {}
        for src in self.sources:
            if isinstance(src, Input) and src.id in wanted:
                found.setdefault(src.id, src)
        if len(found) == len(wanted) or not any(isinstance(s, FileSource) for s in self.sources):
            return found
        for inp in self.iter_inputs():
            if inp.id in wanted and inp.id not in found:
                found[inp.id] = inp
                if len(found) == len(wanted):
                    break
        return found

    def input(self, input_id: str) -> Input:
        found = self.find_inputs((input_id,))
        if input_id not in found:
            raise KeyError(f"no input with id {input_id!r} in {self.display or self.path}")
        return found[input_id]

    @property
    def input_ids(self) -> Iterator[str]:
        """Every input id, streamed."""
        return (i.id for i in self.iter_inputs())

    # -- steps -------------------------------------------------------------------

    def step(self, step_id: str) -> Step:
        for s in self.steps:
            if s.id == step_id:
                return s
        raise KeyError(f"no step {step_id!r} in {self.display or self.path}")

    def step_params(self, step: Step) -> dict[str, Any]:
        """documented defaults < defaults.<op> < the step's parameters (matrix and input
        overrides come on top, per item)."""
        merged = contract.documented_defaults(step.op)
        merged.update(self.defaults.get(step.op, {}))
        merged.update(step.params)
        return merged

    def problem(self, path: tuple[Any, ...], message: str, hint: str | None = None, *, key: bool = False) -> Problem:
        """A Problem located at ``path`` in this manifest (used by the item checks)."""
        line, col = self.located.loc(path, key=key) if self.located else (1, 1)
        return Problem(self.display or str(self.path), line, col, json_path(path), message, hint)


# -- public entry points -------------------------------------------------------------


def load_manifest(path: str | Path, *, deep: bool = True) -> Manifest:
    """Load and validate a manifest; raises ManifestError carrying every Problem.

    ``deep`` also expands every step once to check output names (time proportional to
    the number of items; no memory proportional to it).
    """
    manifest, problems = _load(Path(path), deep=deep)
    if problems or manifest is None:
        raise ManifestError(problems, _summary_message(path, problems))
    return manifest


def check_manifest(path: str | Path, *, deep: bool = True) -> list[Problem]:
    """Every problem in the manifest (empty when valid)."""
    return _load(Path(path), deep=deep)[1]


def validate_manifest(path: str | Path, *, deep: bool = True) -> tuple[Manifest | None, list[Problem]]:
    """Both at once: (the manifest, []) when valid, (None, every problem) when not."""
    return _load(Path(path), deep=deep)


def _summary_message(path: str | Path, problems: list[Problem]) -> str:
    n = len(problems)
    head = f"{path} is not a valid manifest ({n} problem{'s' if n != 1 else ''}); fix these and run `pixbatch validate {path}`:"
    return "\n".join([head, *(str(p) for p in problems)])


def json_path(path: Iterable[Any]) -> str:
    out = "$"
    for part in path:
        if isinstance(part, int) and not isinstance(part, bool):
            out += f"[{part}]"
        elif isinstance(part, str) and _IDENT_RE.match(part):
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


# -- templates -----------------------------------------------------------------------

_FORMATTER = string.Formatter()


def template_fields(text: str) -> list[tuple[str, str]]:
    """The ``(name, format_spec)`` placeholders of a template. Raises ValueError when the
    template is malformed (unbalanced braces, ``{a.b}``, ``{a!r}``, ``{}``)."""
    out = []
    for _literal, name, spec, conversion in _FORMATTER.parse(text):
        if name is None:
            continue
        if not name:
            raise ValueError("empty placeholder {}; name a variable, or write {{}} for literal braces")
        if conversion:
            raise ValueError(f"placeholder {{{name}!{conversion}}} uses a conversion; write {{{name}}}")
        if not _IDENT_RE.match(name):
            raise ValueError(f"placeholder {{{name}}} is not a variable name; write {{{{ and }}}} for literal braces")
        if spec and ("{" in spec):
            raise ValueError(f"placeholder {{{name}:{spec}}} nests placeholders, which is not supported")
        out.append((name, spec or ""))
    return out


def template_value(v: Any) -> Any:
    """How a variable appears in a template: booleans as true/false, 2.0 as 2."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return v


def name_escapes(name: str) -> str | None:
    """Why a rendered output name would leave the output directory (None when it stays in)."""
    if (name and not name[0].isspace() and name[0] not in "/\\~" and name[1:2] != ":" and ".." not in name
            and "\\" not in name and "\x00" not in name and not name.endswith(("/", "/.")) and name != "."):
        return None  # the common case, without splitting (each clause rules out one reason below)
    if not name.strip():
        return "is empty"
    if name.startswith(("/", "\\", "~")) or re.match(r"^[A-Za-z]:", name):
        return "is an absolute path"
    parts = re.split(r"[/\\]", name)
    if any(p == ".." for p in parts):
        return "contains '..'"
    if name.endswith(("/", "\\")) or parts[-1] in ("", "."):
        return "names a directory, not a file"
    if "\x00" in name:
        return "contains a NUL character"
    return None


# -- input files ---------------------------------------------------------------------


def default_input_id(url: str) -> str:
    """The id of an input without one: its URL's file name without extension."""
    try:
        name = urlsplit(url).path.rsplit("/", 1)[-1]
    except ValueError:
        name = ""
    name = unquote(name)
    if "." in name[1:]:
        name = name.rsplit(".", 1)[0]
    return _ID_BAD.sub("_", name).strip("_") or "image"


class _RowError(Exception):
    def __init__(self, column: int | None, field_name: str, message: str, hint: str):
        self.column, self.field_name, self.message, self.hint = column, field_name, message, hint


class _LastLine:
    """Line iterator that remembers the last raw line (for column numbers in CSV problems)."""

    __slots__ = ("f", "last")

    def __init__(self, f: Any):
        self.f, self.last = f, ""

    def __iter__(self) -> _LastLine:
        return self

    def __next__(self) -> str:
        self.last = next(self.f)
        return self.last


def _field_starts(line: str) -> list[int]:
    """0-based offsets where each CSV field of ``line`` starts (quote-aware)."""
    starts, quoted = [0], False
    for i, ch in enumerate(line):
        if ch == '"':
            quoted = not quoted
        elif ch == "," and not quoted:
            starts.append(i + 1)
    return starts


def _csv_header(src: FileSource, reader: Any) -> tuple[dict[str, int], list[tuple[int, str]]]:
    """Column indexes of url/id/width/height, and (index, name) of variable columns."""
    try:
        header = next(reader)
    except StopIteration:
        return {}, []
    cols: dict[str, int] = {}
    extra: list[tuple[int, str]] = []
    for i, raw in enumerate(header):
        name = raw.strip()
        key = name.lower()
        if key in CSV_COLUMNS:
            cols.setdefault(key, i)
        elif name:
            extra.append((i, name))
    return cols, extra


def _iter_file(src: FileSource, problems: list[Problem] | None, *,
               header_out: list[Any] | None = None) -> Iterator[Input]:
    """Inputs of one ``from:`` file. Bad rows are appended to ``problems`` (and skipped),
    or, when ``problems`` is None, raise ManifestError (the file changed since validation)."""
    bad = 0

    def report(line: int, column: int, where: str, message: str, hint: str | None) -> None:
        nonlocal bad
        bad += 1
        p = Problem(src.display, line, column, where, message, hint)
        if problems is None:
            raise ManifestError([p])
        if bad <= MAX_ROW_PROBLEMS:
            problems.append(p)

    try:
        f = open(src.path, encoding="utf-8-sig", newline="" if src.kind == "csv" else None)
    except OSError as exc:
        report(1, 1, "(file)", f"cannot read {src.display}: {exc.strerror or exc}",
               "check that the file exists and is readable")
        return
    with f:
        try:
            if src.kind == "txt":
                yield from _iter_txt(src, f, report)
            else:
                yield from _iter_csv(src, f, report, header_out)
        except UnicodeDecodeError as exc:
            report(1, 1, "(file)", f"{src.display} is not UTF-8 text ({exc.reason} at byte {exc.start})",
                   "save the file as UTF-8")
        except csv.Error as exc:
            report(1, 1, "(file)", f"{src.display} is not valid CSV: {exc}", "check the quoting in the file")
    if header_out is not None:
        header_out.append(bad)
    if problems is not None and bad > MAX_ROW_PROBLEMS:
        problems.append(Problem(src.display, 1, 1, "(file)",
                                f"{bad - MAX_ROW_PROBLEMS} more rows have problems (only the first {MAX_ROW_PROBLEMS} are listed)",
                                "fix the rows above and validate again"))


def _iter_txt(src: FileSource, f: Any, report: Any) -> Iterator[Input]:
    for lineno, line in enumerate(f, 1):
        url = line.strip()
        if not url or url.startswith("#"):
            continue
        col = len(line) - len(line.lstrip()) + 1
        if not _URL_RE.match(url):
            report(lineno, col, f"line {lineno}", f"{url!r} is not an http:// or https:// URL",
                   "write one http(s) URL per line; start comments with #")
            continue
        yield Input(default_input_id(url), url, origin=f"{src.display}:{lineno}:{col}")


def _iter_csv(src: FileSource, f: Any, report: Any, header_out: list[Any] | None) -> Iterator[Input]:
    lines = _LastLine(f)
    reader = csv.reader(lines)
    cols, extra = _csv_header(src, reader)
    if header_out is not None:
        header_out.append((cols, extra))
    if not cols and not extra:
        return  # empty file: reported by the caller as an empty expansion
    if "url" not in cols:
        names = [n for _, n in extra]
        near = suggest("url", names)
        report(1, 1, "header", "the header row has no 'url' column",
               f"did you mean {near!r}? rename it to url" if near else
               "the first row must name the columns: url (required), id, width, height, and any template variables")
        return
    iu, ii, iw, ih = cols["url"], cols.get("id"), cols.get("width"), cols.get("height")
    ncols = max([*cols.values(), *(i for i, _ in extra)]) + 1
    for row in reader:
        if not row or not any(c.strip() for c in row):
            continue
        lineno = reader.line_num
        try:
            yield _csv_input(src, row, lineno, iu, ii, iw, ih, extra, ncols)
        except _RowError as e:
            starts = _field_starts(lines.last.rstrip("\r\n"))
            if e.column is None:
                col = len(lines.last.rstrip("\r\n")) + 1
            else:
                col = starts[e.column] + 1 if e.column < len(starts) else len(lines.last.rstrip("\r\n")) + 1
            report(lineno, col, f"row {lineno}, column {e.field_name}", e.message, e.hint)


def _csv_input(src: FileSource, row: list[str], lineno: int, iu: int, ii: int | None, iw: int | None,
               ih: int | None, extra: list[tuple[int, str]], ncols: int) -> Input:
    n = len(row)
    if n > ncols:
        raise _RowError(ncols, str(ncols + 1), f"the row has {n} cells but the header names {ncols} columns",
                        "quote cells that contain commas, or add a name for the extra column to the header")
    url = row[iu].strip() if iu < n else ""
    if not url:
        raise _RowError(iu if iu < n else None, "url", "the url cell is empty", "every row needs an http(s) URL")
    if not _URL_RE.match(url):
        raise _RowError(iu, "url", f"{url!r} is not an http:// or https:// URL", "write an http(s) URL")
    ident = row[ii].strip() if ii is not None and ii < n else ""
    if ident:
        if not _ID_RE.match(ident):
            raise _RowError(ii, "id", f"id {ident!r} has characters other than letters, digits, '.', '_' and '-'",
                            "use only letters, digits, '.', '_' and '-' in ids")
    else:
        ident = default_input_id(url)
    w = h = None
    ws = row[iw].strip() if iw is not None and iw < n else ""
    hs = row[ih].strip() if ih is not None and ih < n else ""
    if ws or hs:
        if not ws:
            raise _RowError(iw, "width", "height is given without width", "give both width and height, or neither")
        if not hs:
            raise _RowError(ih, "height", "width is given without height", "give both width and height, or neither")
        for idx, name, text in ((iw, "width", ws), (ih, "height", hs)):
            if not text.isdigit() or int(text) < 1:
                raise _RowError(idx, name, f"{name} {text!r} is not a positive integer", f"write the {name} in pixels, e.g. 1024")
        w, h = int(ws), int(hs)
    vars_ = {name: (row[i] if i < n else "") for i, name in extra} if extra else {}
    return Input(ident, url, w, h, {}, vars_, f"{src.display}:{lineno}:1")


# -- loading and checking --------------------------------------------------------------


class _Checker:
    """Collects problems while building the typed manifest."""

    def __init__(self, path: Path):
        self.path = path
        self.file = str(path)
        self.base = path.parent
        self.problems: list[Problem] = []
        self.loc: Located = Located(None)

    def add(self, path: tuple[Any, ...], message: str, hint: str | None = None, *, key: bool = False) -> None:
        line, col = self.loc.loc(path, key=key)
        self.problems.append(Problem(self.file, line, col, json_path(path), message, hint))

    def display_path(self, rel: str) -> tuple[Path, str]:
        """A ``from:`` path: absolute, and as shown in problems (relative to the manifest as given)."""
        shown = Path(rel) if Path(rel).is_absolute() else self.path.parent / rel
        return shown.resolve(), str(shown)


def _load(path: Path, *, deep: bool) -> tuple[Manifest | None, list[Problem]]:
    c = _Checker(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        return None, [Problem(c.file, 1, 1, "$", "the manifest file does not exist", "check the path")]
    except IsADirectoryError:
        return None, [Problem(c.file, 1, 1, "$", "this is a directory, not a manifest file", "pass the path of a .yaml file")]
    except UnicodeDecodeError as exc:
        return None, [Problem(c.file, 1, 1, "$", f"the manifest is not UTF-8 text ({exc.reason})", "save it as UTF-8")]
    except OSError as exc:
        return None, [Problem(c.file, 1, 1, "$", f"cannot read the manifest: {exc.strerror or exc}", "check the path and permissions")]
    try:
        c.loc = load_yaml(text)
    except YamlSyntaxError as exc:
        return None, [Problem(c.file, exc.line, exc.column, "$", exc.message, exc.hint)]
    data = c.loc.data
    for kpath, first, _again in c.loc.duplicates:
        c.add(kpath, f"the key {kpath[-1]!r} is written twice (first at line {first[0]})",
              "remove one of them: YAML keeps only the last", key=True)
    _schema_problems(c, data)
    if not isinstance(data, dict):
        return None, _sorted(c.problems)
    manifest = _build(c, data)
    if manifest is not None and not c.problems and deep:
        from .expand import check_items  # expand imports this module

        c.problems.extend(check_items(manifest))
    return (manifest if not c.problems else None), _sorted(c.problems)


def _sorted(problems: list[Problem]) -> list[Problem]:
    seen: set[tuple[Any, ...]] = set()
    out = []
    for p in problems:
        k = (p.file, p.line, p.column, p.path, p.message)
        if k not in seen:
            seen.add(k)
            out.append(p)
    # keep each file's problems together, the manifest first, in source order
    order = {f: i for i, f in enumerate(dict.fromkeys(p.file for p in out))}
    return sorted(out, key=lambda p: (order[p.file], p.line, p.column, p.path))


# -- pass 1: shape -------------------------------------------------------------------

_TYPE_NAMES = {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean", int: "an integer",
               float: "a number", type(None): "nothing (null)"}


def _kind(v: Any) -> str:
    return _TYPE_NAMES.get(type(v), type(v).__name__)


def _short(v: Any) -> str:
    text = json.dumps(v, ensure_ascii=False, default=str) if not isinstance(v, str) else repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


_validator_cache: list[Any] = []


def _validator() -> Any:
    if not _validator_cache:
        import jsonschema

        _validator_cache.append(jsonschema.Draft202012Validator(load_schema("manifest")))
    return _validator_cache[0]


def _schema_problems(c: _Checker, data: Any) -> None:
    for err in _validator().iter_errors(data):
        _schema_error(c, err, tuple(err.absolute_path))


def _schema_error(c: _Checker, err: Any, path: tuple[Any, ...]) -> None:
    v, schema, inst = err.validator, err.schema, err.instance
    desc = schema.get("description")
    if v == "additionalProperties":
        allowed = list(schema.get("properties", {}))
        # an input object without url may have meant {from: FILE}
        extra = ["from"] if path[:1] == ("inputs",) and "url" in allowed and "url" not in inst else []
        for k in inst:
            if k in allowed:
                continue
            near = suggest(k, allowed + extra)
            hint = f"did you mean {near!r}?" if near else f"remove it; allowed here: {', '.join(allowed)}"
            c.add((*path, k), f"unknown key {k!r}", hint, key=True)
    elif v == "required":
        props = schema.get("properties", {})
        for k in err.validator_value:
            if isinstance(inst, dict) and k not in inst:
                unknown = [x for x in inst if x not in props]
                misspelled = [x for x in unknown if suggest(x, [k, *(["from"] if k == "url" else [])])]
                if misspelled:
                    # reported as an unknown key with "did you mean" (once: problems are deduplicated,
                    # and a schema branch that does not apply may not report it at all)
                    for x in misspelled:
                        near = suggest(x, [k, *(["from"] if k == "url" else [])])
                        c.add((*path, x), f"unknown key {x!r}", f"did you mean {near!r}?", key=True)
                    continue
                what = _describe(props.get(k, {}))
                c.add(path, f"the required key {k!r} is missing", f"add {k}: <{what}>" if what else f"add {k}:")
    elif v == "dependentRequired":
        for k, needs in err.validator_value.items():
            for n in needs:
                if k in inst and n not in inst:
                    both = " and ".join(x for x in schema.get("properties", {}) if x in (k, n))
                    c.add((*path, k), f"{k} is given without {n}", f"give both {both}, or neither", key=True)
    elif v == "enum":
        near = suggest(inst, [str(e) for e in err.validator_value])
        opts = ", ".join(str(e) for e in err.validator_value)
        c.add(path, f"{_short(inst)} is not one of {opts}", f"did you mean {near!r}?" if near else f"use one of {opts}")
    elif v == "const":
        c.add(path, f"{_short(inst)} is not supported", f"write {json.dumps(err.validator_value)}")
    elif v == "type":
        got = _kind(inst) if inst is None else f"{_kind(inst)} {_short(inst)}"
        if not path and inst is None:
            c.add(path, "the manifest is empty", "start with version: 1, inputs: and steps: (see docs/manifest.md)")
        else:
            c.add(path, f"expected {desc or err.validator_value}, got {got}", _type_hint(inst, err.validator_value))
    elif v in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        c.add(path, f"{_short(inst)} is out of range", f"expected {desc}" if desc else err.message)
    elif v == "pattern":
        examples = schema.get("examples")
        c.add(path, f"{_short(inst)} is not {desc or 'in the expected form'}",
              "quote the whole URL and start it with http:// or https://" if "URL" in (desc or "") else
              f"write it like {json.dumps(examples[0])}" if examples else None)
    elif v in ("minItems", "minProperties"):
        c.add(path, f"{'the list' if v == 'minItems' else 'the mapping'} is empty, so it would expand to nothing",
              f"give {desc}" if desc else "add at least one entry, or remove the key")
    elif v == "minLength":
        c.add(path, "must not be empty", f"write {desc}" if desc else None)
    elif v == "uniqueItems":
        dup = next((x for i, x in enumerate(inst) if x in inst[:i]), None)
        c.add(path, f"lists {_short(dup)} more than once", "remove the repeated entry")
    elif v == "propertyNames":
        name = inst
        c.add((*path, name), f"{_short(name)} is not a valid name", f"use {schema.get('description', 'letters, digits and _')}", key=True)
    else:
        c.add(path, err.message)


def _describe(sub: dict[str, Any]) -> str | None:
    """A subschema's description, following a local $ref."""
    if "description" in sub:
        return sub["description"]
    ref = sub.get("$ref", "")
    if ref.startswith("#/$defs/"):
        return load_schema("manifest")["$defs"].get(ref[len("#/$defs/"):], {}).get("description")
    return None


def _type_hint(inst: Any, expected: Any) -> str | None:
    exp = expected if isinstance(expected, list) else [expected]
    if isinstance(inst, str) and ("integer" in exp or "number" in exp):
        return "write the number without quotes"
    if isinstance(inst, str) and "boolean" in exp:
        return "write true or false without quotes"
    if inst is None:
        return "give a value after the colon, or remove the key"
    if "array" in exp and not isinstance(inst, list):
        return "write a list: [a, b] or one '- item' per line"
    if "object" in exp and "string" in exp:
        return None
    if "object" in exp:
        return "write a mapping of 'key: value' lines"
    if "string" in exp and not isinstance(inst, str):
        return "quote the value"
    return None


# -- pass 2: meaning -----------------------------------------------------------------


def _build(c: _Checker, data: dict[str, Any]) -> Manifest | None:
    steps_raw = data.get("steps") if isinstance(data.get("steps"), list) else []
    inputs_raw = data.get("inputs") if isinstance(data.get("inputs"), list) else []

    # budget, exactly
    budget = None
    if "budget_usd" in data:
        raw = data["budget_usd"]
        text = raw if isinstance(raw, str) else c.loc.texts.get(("budget_usd",))
        shape_ok = not isinstance(raw, str) or re.match(r"^[0-9]+(\.[0-9]{1,6})?$", raw)  # else: schema said so
        if text is not None and not isinstance(raw, bool) and shape_ok:
            try:
                amount = Decimal(text.strip())
                if not amount.is_finite():
                    raise InvalidOperation
            except InvalidOperation:
                c.add(("budget_usd",), f"{text!r} is not an amount of dollars", "write it like \"25.00\"")
            else:
                try:
                    budget = usd_to_micros(amount)
                except ValueError:
                    c.add(("budget_usd",), f"{text} has more than 6 decimal places",
                          "round it to at most 6 decimal places (micro-dollars), e.g. \"25.00\"")
                else:
                    if budget <= 0 and isinstance(raw, str):  # a number <= 0 is reported by the schema
                        c.add(("budget_usd",), "the budget must be more than 0", "write a positive amount, e.g. \"25.00\"")

    name = data.get("name") if isinstance(data.get("name"), str) and data.get("name") else c.path.stem
    naming = data.get("naming") if isinstance(data.get("naming"), str) and data.get("naming") else DEFAULT_NAMING
    out_raw = data.get("output_dir") if isinstance(data.get("output_dir"), str) and data.get("output_dir") else "out"
    state_raw = data.get("state") if isinstance(data.get("state"), str) and data.get("state") else f"{c.path.stem}.pixbatch.duckdb"
    for key in ("output_dir", "state"):
        if isinstance(data.get(key), str) and "\x00" in data[key]:
            c.add((key,), "the path contains a NUL character", "write a plain file path")
    out_raw, state_raw = out_raw.replace("\x00", ""), state_raw.replace("\x00", "")
    base = c.path.parent.resolve()
    output_dir = (base / out_raw).resolve()
    state_path = (base / state_raw).resolve()

    defaults: dict[str, dict[str, Any]] = {}
    draw = data.get("defaults")
    if isinstance(draw, dict):
        for op in contract.OPS:
            if isinstance(draw.get(op), dict):
                defaults[op] = {k: _norm(v) for k, v in draw[op].items() if k in contract.STEP_PARAMS[op]}

    sources = _build_sources(c, inputs_raw)

    # step ids: unique, and known before their use
    step_pos: dict[str, int] = {}
    for i, s in enumerate(steps_raw):
        if isinstance(s, dict) and isinstance(s.get("id"), str):
            sid = s["id"]
            if sid == "inputs":
                c.add(("steps", i, "id"), "'inputs' cannot be a step id: for_each: inputs means every input",
                      "choose another id")
            elif sid in step_pos:
                first = c.loc.loc(("steps", step_pos[sid], "id"))
                c.add(("steps", i, "id"), f"step id {sid!r} is already used by steps[{step_pos[sid]}] (line {first[0]})",
                      "give every step its own id")
            else:
                step_pos[sid] = i

    # which input ids must be looked up (for_each lists, references that are not URLs)
    wanted: dict[str, list[tuple[Any, ...]]] = {}
    for i, s in enumerate(steps_raw):
        if not isinstance(s, dict):
            continue
        fe = s.get("for_each")
        if isinstance(fe, list):
            for j, x in enumerate(fe):
                if isinstance(x, str):
                    wanted.setdefault(x, []).append(("steps", i, "for_each", j))
        elif isinstance(fe, str) and fe != "inputs" and fe not in step_pos:
            wanted.setdefault(fe, []).append(("steps", i, "for_each"))
        refs = s.get("references")
        if isinstance(refs, list):
            for j, r in enumerate(refs):
                if isinstance(r, str) and "://" not in r:
                    wanted.setdefault(r, []).append(("steps", i, "references", j))

    scan = _scan_inputs(c, sources, set(wanted))

    steps: list[Step] = []
    for i, s in enumerate(steps_raw):
        if not isinstance(s, dict):
            continue
        st = _build_step(c, i, s, step_pos, scan, naming, data, defaults)
        if st is not None:
            steps.append(st)

    if c.problems:
        return None
    return Manifest(path=c.path.resolve(), name=name, budget_micros=budget, output_dir=output_dir,
                    state_path=state_path, naming=naming, defaults=defaults, steps=tuple(steps),
                    sources=tuple(sources), display=c.file, located=c.loc)


def _norm(v: Any) -> Any:
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return v


def _build_sources(c: _Checker, inputs_raw: list[Any]) -> list[Input | FileSource]:
    sources: list[Input | FileSource] = []
    for i, item in enumerate(inputs_raw):
        line, col = c.loc.loc(("inputs", i))
        origin = f"{c.file}:{line}:{col}"
        if isinstance(item, str):
            if _URL_RE.match(item):
                sources.append(Input(default_input_id(item), item, origin=origin))
        elif isinstance(item, dict) and "from" in item:
            rel = item.get("from")
            if not isinstance(rel, str) or not rel:
                continue
            if "\x00" in rel:
                c.add(("inputs", i, "from"), "the path contains a NUL character", "write a plain file path")
                continue
            absolute, shown = c.display_path(rel)
            kind = absolute.suffix.lower().lstrip(".")
            if kind not in ("csv", "txt"):
                c.add(("inputs", i, "from"), f"{rel!r} is neither a .csv nor a .txt file",
                      "use a CSV with a header row (url, id, width, height) or a .txt with one URL per line")
            elif not absolute.exists():
                near = suggest(absolute.name, [p.name for p in absolute.parent.glob("*")] if absolute.parent.is_dir() else [])
                c.add(("inputs", i, "from"), f"the file {shown} does not exist",
                      f"did you mean {near!r}?" if near else "the path is relative to the manifest's directory")
            elif not absolute.is_file():
                c.add(("inputs", i, "from"), f"{shown} is not a file", "name a .csv or .txt file")
            else:
                sources.append(FileSource(absolute, shown, kind))
        elif isinstance(item, dict) and isinstance(item.get("url"), str) and _URL_RE.match(item["url"]):
            url = item["url"]
            ident = item.get("id") if isinstance(item.get("id"), str) else default_input_id(url)
            w, h = item.get("width"), item.get("height")
            if not (isinstance(w, int) and isinstance(h, int)) or isinstance(w, bool) or isinstance(h, bool):
                w = h = None
            params: dict[str, dict[str, Any]] = {}
            if isinstance(item.get("params"), dict):
                for op in contract.OPS:
                    if isinstance(item["params"].get(op), dict):
                        params[op] = {k: _norm(v) for k, v in item["params"][op].items()}
            sources.append(Input(ident, url, w, h, params, {}, origin))
    return sources


@dataclass
class _Scan:
    """What one streaming pass over the inputs learned."""

    found: dict[str, Input]  # the wanted ids
    source_of: dict[str, int]  # wanted id -> index of its source
    source_vars: list[frozenset[str]]  # per source: the template variables its inputs carry
    total: int
    sample_ids: list[str]  # up to a few thousand ids, for "did you mean"
    all_ids: bool  # sample_ids holds every id


def _scan_inputs(c: _Checker, sources: list[Input | FileSource], wanted: set[str]) -> _Scan:
    """One streaming pass: row problems, empty files, duplicate ids, the wanted inputs."""
    hashes: set[int] = set()
    colliding: set[int] = set()
    found: dict[str, Input] = {}
    source_of: dict[str, int] = {}
    source_vars: list[frozenset[str]] = []
    sample: list[str] = []
    total = 0
    for si, src in enumerate(sources):
        if isinstance(src, Input):
            stream: Iterable[Input] = (src,)
        else:
            header: list[Any] = []
            stream = _iter_file(src, c.problems, header_out=header)
        n = 0
        for inp in stream:
            n += 1
            h = hash(inp.id)
            if h in hashes:
                colliding.add(h)
            else:
                hashes.add(h)
            if inp.id in wanted and inp.id not in found:
                found[inp.id] = inp
                source_of[inp.id] = si
            if len(sample) < 5000:
                sample.append(inp.id)
        total += n
        if isinstance(src, FileSource):
            cols, extra = header[0] if len(header) > 1 else ({}, [])
            bad_rows = header[-1] if header else 0
            source_vars.append(frozenset(name for _, name in extra if _IDENT_RE.match(name)))
            if n == 0 and bad_rows == 0:
                i = _source_index(c, src)
                c.add(("inputs", i, "from"), f"{src.display} has no {'rows' if src.kind == 'csv' else 'URLs'}, so it expands to nothing",
                      "add rows under the header (url,id,width,height)" if src.kind == "csv" else "add one URL per line")
        else:
            source_vars.append(frozenset())
    del hashes
    if colliding:
        _report_duplicate_ids(c, sources, colliding)
    return _Scan(found, source_of, source_vars, total, sample, total <= len(sample))


def _source_index(c: _Checker, src: FileSource) -> int:
    data = c.loc.data
    for i, item in enumerate(data.get("inputs", [])):
        if isinstance(item, dict) and isinstance(item.get("from"), str) and c.display_path(item["from"])[0] == src.path:
            return i
    return 0


def _report_duplicate_ids(c: _Checker, sources: list[Input | FileSource], colliding: set[int]) -> None:
    """Second look at the ids whose hashes collided: name both places of each real duplicate."""
    first: dict[str, str] = {}
    reported = 0
    for src in sources:
        stream = (src,) if isinstance(src, Input) else _iter_file(src, [])
        for inp in stream:
            if hash(inp.id) not in colliding:
                continue
            if inp.id not in first:
                first[inp.id] = inp.origin
                continue
            reported += 1
            if reported > MAX_ROW_PROBLEMS:
                continue
            f, line, col = _split_origin(inp.origin)
            if f == c.file:
                index = next((i for i, _ in enumerate(c.loc.data.get("inputs", []))
                              if c.loc.values.get(("inputs", i)) == (line, col)), None)
                where = json_path(("inputs",) if index is None else ("inputs", index))
                explicit = "give one of them an explicit id (id: ...)"
            else:
                where, explicit = f"line {line}", "give one of them an explicit id (an id column)"
            c.problems.append(Problem(f, line, col, where,
                                      f"duplicate input id {inp.id!r} (first at {first[inp.id]})", explicit))
    if reported > MAX_ROW_PROBLEMS:
        c.add(("inputs",), f"{reported - MAX_ROW_PROBLEMS} more duplicate input ids", "fix the ones listed and validate again")


def _split_origin(origin: str) -> tuple[str, int, int]:
    f, line, col = origin.rsplit(":", 2)
    return f, int(line), int(col)


def _build_step(c: _Checker, i: int, s: dict[str, Any], step_pos: dict[str, int], scan: _Scan,
                naming: str, data: dict[str, Any], defaults: dict[str, dict[str, Any]]) -> Step | None:
    sid, op = s.get("id"), s.get("op")
    if not isinstance(sid, str) or op not in contract.OPS:
        return None
    here = ("steps", i)
    other = "edit" if op == "upscale" else "upscale"

    # for_each
    fe_raw = s.get("for_each", "inputs")
    for_each: str | tuple[str, ...] = "inputs"
    upstream: str | None = None
    root_sources: set[int] | None = None  # None: all sources
    if isinstance(fe_raw, str):
        if fe_raw == "inputs":
            for_each = "inputs"
        elif fe_raw == sid:
            c.add((*here, "for_each"), f"step {sid!r} names itself in for_each",
                  "name an earlier step, 'inputs', or a list of input ids")
        elif fe_raw in step_pos:
            j = step_pos[fe_raw]
            if j > i:
                cyc = _cycle(data, fe_raw, sid)
                c.add((*here, "for_each"),
                      f"for_each names step {fe_raw!r}, which comes later (steps[{j}])" + (f"; this is a cycle: {cyc}" if cyc else ""),
                      "steps run in order: move this step below the one it reads from" if not cyc else
                      "a step can only read the outputs of an earlier step; break the cycle")
            else:
                for_each = upstream = fe_raw
        elif fe_raw in scan.found:
            c.add((*here, "for_each"), f"{fe_raw!r} is an input id, but for_each takes a list of input ids",
                  f"write for_each: [{fe_raw}]")
        else:
            near = suggest(fe_raw, ["inputs", *(k for k, v in step_pos.items() if v < i)])
            c.add((*here, "for_each"), f"for_each names {fe_raw!r}, which is neither 'inputs' nor an earlier step",
                  f"did you mean {near!r}?" if near else "use 'inputs', a list of input ids, or the id of an earlier step")
    elif isinstance(fe_raw, list) and fe_raw and all(isinstance(x, str) for x in fe_raw):
        ids = []
        root_sources = set()
        for j, x in enumerate(fe_raw):
            if x in scan.found:
                ids.append(x)
                root_sources.add(scan.source_of[x])
            elif x in step_pos:
                c.add((*here, "for_each", j), f"{x!r} is a step, not an input id",
                      f"write for_each: {x} (not in a list) to read that step's outputs")
            else:
                near = suggest(x, scan.sample_ids)
                c.add((*here, "for_each", j), f"there is no input with id {x!r}",
                      f"did you mean {near!r}?" if near else "list ids of inputs declared under inputs:")
        for_each = tuple(ids)

    # references: URLs or input ids
    refs: list[str] = []
    for j, r in enumerate(s.get("references") if isinstance(s.get("references"), list) else []):
        if not isinstance(r, str):
            continue
        if "://" in r:
            if _URL_RE.match(r):
                refs.append(r)
            else:
                c.add((*here, "references", j), f"{_short(r)} is not an http:// or https:// URL", "write an http(s) URL")
        elif r in scan.found:
            refs.append(scan.found[r].url)
        elif r in step_pos:
            c.add((*here, "references", j), f"references names step {r!r}; a step's outputs can only feed the main image",
                  f"chain with for_each: {r}, or give a URL or an input id")
        else:
            near = suggest(r, scan.sample_ids)
            c.add((*here, "references", j), f"{r!r} is neither a URL nor an input id",
                  f"did you mean {near!r}?" if near else "give an http(s) URL or the id of an input")

    params = {k: _norm(v) for k, v in s.items() if k in contract.STEP_PARAMS[op]}

    # matrix: param keys checked against the parameter rules; other keys are variables
    matrix: dict[str, tuple[Any, ...]] = {}
    mraw = s.get("matrix")
    if isinstance(mraw, dict):
        for k, values in mraw.items():
            if not isinstance(values, list) or not values:
                continue
            if k in BUILTIN_VARS:
                c.add((*here, "matrix", k), f"{k!r} is a built-in template variable and cannot be a matrix key",
                      "rename the key", key=True)
                continue
            if k in contract.STEP_PARAMS[op]:
                for j, v in enumerate(values):
                    for perr in _param_validator(op, k).iter_errors(v):
                        _schema_error(c, perr, (*here, "matrix", k, j))
            elif k in contract.STEP_PARAMS[other] or k in ("image", "images"):
                c.add((*here, "matrix", k), f"{k!r} is not a parameter of {op}" +
                      (f" (it is an {other} parameter)" if k in contract.STEP_PARAMS[other] else ""),
                      "remove it, or move it to a step with the right op", key=True)
                continue
            matrix[k] = tuple(_norm(v) for v in values)

    # the merged parameters, as far as the step decides them
    merged = contract.documented_defaults(op)
    merged.update(defaults.get(op, {}))
    merged.update(params)
    if op == "edit" and "prompt" not in merged and "prompt" not in matrix:
        c.add(here, f"edit step {sid!r} has no prompt", "add prompt: \"...\" to the step (or to defaults.edit)")
    if op == "upscale":
        modes = set(matrix.get("upscale_mode", (merged.get("upscale_mode", "target"),)))
        for pname, mode in (("factor", "factor"), ("target", "target")):
            if (pname in params or pname in matrix) and mode not in modes:
                where = (*here, "matrix", pname) if pname in matrix else (*here, pname)
                c.add(where, f"{pname} is set but upscale_mode is {', '.join(sorted(map(str, modes)))}, so it would be ignored",
                      f"add upscale_mode: {mode} to the step", key=True)

    # templates
    step_naming = s.get("naming") if isinstance(s.get("naming"), str) else None
    known = _known_vars(c, data, i, s, step_pos, scan, root_sources, matrix, upstream)
    tnaming = step_naming or naming
    npath = (*here, "naming") if step_naming else ("naming",)
    columns = frozenset().union(*scan.source_vars)
    _check_template(c, npath, tnaming, known, sid, is_naming=True, own=step_naming is not None, columns=columns)
    if op == "edit":
        prompt_known = known - {"key"}
        if isinstance(params.get("prompt"), str):
            _check_template(c, (*here, "prompt"), params["prompt"], prompt_known, sid, columns=columns)
        elif "prompt" not in matrix and isinstance(defaults.get("edit", {}).get("prompt"), str):
            _check_template(c, ("defaults", "edit", "prompt"), defaults["edit"]["prompt"], prompt_known, sid,
                            own=False, columns=columns)
        for j, v in enumerate(matrix.get("prompt", ())):
            if isinstance(v, str):
                _check_template(c, (*here, "matrix", "prompt", j), v, prompt_known, sid, columns=columns)
    used = _used_fields(tnaming) | (_used_fields(params.get("prompt")) if op == "edit" else set())
    for k in matrix:
        if k in contract.STEP_PARAMS[op] or k in used:
            continue
        near = suggest(k, contract.STEP_PARAMS[op])
        if near:
            c.add((*here, "matrix", k), f"matrix key {k!r} is not a parameter of {op} and no template uses it",
                  f"did you mean {near!r}?", key=True)

    return Step(id=sid, op=op, for_each=for_each, params=params, matrix=matrix, references=tuple(refs),
                naming=tnaming, index=i)


_param_validators: dict[tuple[str, str], Any] = {}


def _param_validator(op: str, name: str) -> Any:
    """A validator for one step parameter, from the manifest schema (single source)."""
    key = (op, name)
    if key not in _param_validators:
        import jsonschema

        sub = load_schema("manifest")["$defs"][f"{op}Step"]["properties"][name]
        _param_validators[key] = jsonschema.Draft202012Validator(sub)
    return _param_validators[key]


def _cycle(data: dict[str, Any], start: str, target: str) -> str | None:
    """'a -> b -> a' when following for_each from ``start`` leads back to ``target``."""
    by_id = {s.get("id"): s for s in data.get("steps", []) if isinstance(s, dict)}
    chain, cur = [target, start], start
    for _ in range(len(by_id) + 1):
        nxt = by_id.get(cur, {}).get("for_each")
        if not isinstance(nxt, str) or nxt not in by_id:
            return None
        chain.append(nxt)
        if nxt == target:
            return " -> ".join(chain)
        cur = nxt
    return None


def _known_vars(c: _Checker, data: dict[str, Any], i: int, s: dict[str, Any], step_pos: dict[str, int],
                scan: _Scan, root_sources: set[int] | None, matrix: Mapping[str, Any], upstream: str | None) -> set[str]:
    """The template variables available to step ``i``."""
    known = set(BUILTIN_VARS) | set(matrix)
    if upstream is not None:
        up = data["steps"][step_pos[upstream]]
        up_matrix = up.get("matrix") if isinstance(up.get("matrix"), dict) else {}
        up_fe = up.get("for_each", "inputs")
        up_up = up_fe if isinstance(up_fe, str) and up_fe != "inputs" and up_fe in step_pos and step_pos[up_fe] < step_pos[upstream] else None
        up_roots = None
        if isinstance(up_fe, list):
            up_roots = {scan.source_of[x] for x in up_fe if isinstance(x, str) and x in scan.source_of}
        known |= _known_vars(c, data, step_pos[upstream], up, step_pos, scan, up_roots, up_matrix, up_up)
        return known
    pool = scan.source_vars if root_sources is None else [scan.source_vars[k] for k in root_sources if k < len(scan.source_vars)]
    if pool:
        known |= frozenset.intersection(*pool)
    return known


def _used_fields(text: Any) -> set[str]:
    if not isinstance(text, str):
        return set()
    try:
        return {n for n, _ in template_fields(text)}
    except ValueError:
        return set()


_SAMPLE = {"index": 0, "key": "0123456789ab", "ext": "jpg", "step": "step", "input": "input", "stem": "stem"}


def _check_template(c: _Checker, path: tuple[Any, ...], text: str, known: set[str], sid: str, *,
                    is_naming: bool = False, own: bool = True, columns: frozenset[str] = frozenset()) -> None:
    where = "" if own else f" (used by step {sid!r})"
    try:
        fields = template_fields(text)
    except ValueError as exc:
        c.add(path, f"the template is malformed: {exc}", "write {name} for a variable and {{ }} for literal braces")
        return
    sample: dict[str, Any] = {}
    for name, spec in fields:
        if name not in known:
            if name == "key" and not is_naming:
                c.add(path, "{key} cannot be used in a prompt (the key is computed from the prompt)" + where,
                      "use {index}, {input} or {stem}")
                continue
            near = suggest(name, sorted(known))
            if name in columns:
                hint = (f"{name!r} is a column of some input files but not of every input this step reads; "
                        "add the column to each of them, or leave it out of the template")
            else:
                hint = f"did you mean {{{near}}}?" if near else f"known variables: {', '.join(sorted(known))}"
            c.add(path, f"unknown placeholder {{{name}}}{where}", hint)
            continue
        sample[name] = _SAMPLE.get(name, "x")
        if spec:
            try:
                format(sample[name], spec)
            except ValueError:
                try:
                    format(0, spec)
                    sample[name] = 0
                except ValueError as exc:
                    c.add(path, f"placeholder {{{name}:{spec}}} has an invalid format ({exc}){where}",
                          "drop the ':...' part, or use a format such as {index:04d}")
    if is_naming:
        try:
            rendered = text.format_map(_Missing(sample))
        except (ValueError, KeyError, IndexError):
            return
        why = name_escapes(rendered)
        if why and "empty" not in why:
            c.add(path, f"the output name {rendered!r} {why}; names must stay inside output_dir",
                  "use a relative name such as \"{step}/{stem}.{ext}\"")


class _Missing(dict):  # type: ignore[type-arg]
    def __missing__(self, key: str) -> str:
        return "x"
