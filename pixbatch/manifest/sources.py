"""The source images: an :class:`Input` written in the manifest, or a ``from:`` file of them.

A ``from:`` file (:class:`FileSource`) is a CSV with a header row (``url`` or ``path``
required; ``id``, ``width``, ``height`` optional; any other column becomes a template
variable), a text file (one URL or local path per line, ``#`` comments), or a folder of
images (``kind == "dir"``: its files matching ``glob``, optionally ``recursive``).

A local file becomes an Input whose ``url`` is ``pixbatch://file/<sha256>`` and whose size
is read from the file (``storage.local.inspect``: no probe); a file that is missing or not
a JPEG, PNG or WebP image is a problem located where it is named. Files are never held in memory:
:func:`iter_file` reads one row at a time, every time it is called. Bad rows are
:class:`~.problems.Problem` s located at ``FILE:LINE:COLUMN`` (the column of the cell);
while validating they are collected (at most ``MAX_ROW_PROBLEMS`` per file), after it (a
file that changed since) the first one raises ManifestError.
"""

from __future__ import annotations

import contextlib
import csv
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from ..errors import ManifestError
from ..items import file_ref
from ..sizes import MAX_SIDE, Size
from ..storage.local import LocalFile, NotAnImage, inspect, list_folder
from .problems import MAX_ROW_PROBLEMS, Problem, short, suggest

CSV_COLUMNS = ("url", "path", "id", "width", "height")

#: the longest line of a ``from:`` file, in characters: a longer one is a problem, never read whole
MAX_LINE = 1 << 16

URL_RE = re.compile(r"^[hH][tT][tT][pP][sS]?://[^/\s?#]+\S*$")
ID_RE = re.compile(r"^[A-Za-z0-9._-]+$")
_ID_BAD = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(slots=True)
class Input:
    """One source image. Treat it as immutable: not frozen only because a frozen dataclass's
    ``__init__`` costs several times more, and a million-row file makes one per row per walk."""

    id: str
    url: str
    width: int | None = None
    height: int | None = None
    params: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # {"edit": {...}, "upscale": {...}}
    vars: Mapping[str, str] = field(default_factory=dict)  # extra CSV columns: template variables
    origin: str = ""  # "file:line:column" where the input is written
    file: LocalFile | None = None  # a local file (url is then its pixbatch://file/ placeholder)

    @property
    def size(self) -> Size | None:
        return (self.width, self.height) if self.width is not None and self.height is not None else None


@dataclass(frozen=True, slots=True)
class FileSource:
    """``{from: FILE}``: a CSV (header row; url, optional id, width, height, more columns
    become template variables) or a text file (one URL per line, ``#`` comments)."""

    path: Path  # absolute
    display: str  # the path as shown in problems (relative to the working directory when given so)
    kind: str  # "csv" | "txt" | "dir"
    glob: str | None = None  # dir: which files (default: *.jpg, *.jpeg, *.png, *.webp, any case)
    recursive: bool = False  # dir: look in subfolders too
    local: bool = False  # some rows name local files (found while validating; a folder always does)

    def inputs(self) -> Iterator[Input]:
        """The file's inputs, read row by row; a bad row raises ManifestError."""
        return iter_file(self, None)


def local_input(path: Path, shown: str, ident: str | None, origin: str,
                params: Mapping[str, Mapping[str, Any]] | None = None, vars: Mapping[str, str] | None = None) -> Input:
    """The Input of a local image file (raises NotAnImage when it is missing or not an image)."""
    f = inspect(path, shown)
    return Input(ident or file_input_id(path.name), file_ref(f.sha256), f.width, f.height, params or {},
                 vars or {}, origin, f)


def file_input_id(rel: str) -> str:
    """The id of a local file without one: its path (relative to its folder) without the extension."""
    if "." in rel.rsplit("/", 1)[-1][1:]:
        rel = rel.rsplit(".", 1)[0]
    return _ID_BAD.sub("_", rel).strip("_") or "image"


def looks_like_url(text: str) -> bool:
    """A string that is an http(s) URL, or a URL without its scheme ("cdn.example.com/a.png")
    rather than a relative path: it is read as a (bad) URL unless such a file exists."""
    if "://" in text:
        return True
    first = text.split("/", 1)[0]
    return "/" in text and "." in first.strip(".") and not first.startswith(".")


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


# header_out receives [(columns, variable columns)] after the header, then the number of bad rows
Header = list[Any]
_Report = Callable[[int, int, str, str, "str | None"], None]


def iter_file(src: FileSource, problems: list[Problem] | None, *, header_out: Header | None = None) -> Iterator[Input]:
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

    if src.kind == "dir":
        if header_out is not None:
            header_out.append(({}, []))
        yield from _iter_dir(src, report)
        f = None
    else:
        try:
            f = open(src.path, encoding="utf-8-sig", newline="" if src.kind == "csv" else None)
        except OSError as exc:
            report(1, 1, "(file)", f"cannot read {src.display}: {exc.strerror or exc}",
                   "check that the file exists and is readable")
            return
    with f or contextlib.nullcontext():
        try:
            if src.kind == "txt":
                yield from _iter_txt(src, f, report)
            elif src.kind == "csv":
                yield from _iter_csv(src, f, report, header_out)
        except UnicodeDecodeError as exc:
            report(1, 1, "(file)", f"{src.display} is not UTF-8 text ({exc.reason} at byte {exc.start})",
                   "save the file as UTF-8")
        except csv.Error as exc:
            report(1, 1, "(file)", f"{src.display} is not valid CSV: {exc}", "check the quoting in the file")
        except _LongLine as exc:
            report(exc.lineno, 1, f"line {exc.lineno}", f"the line is longer than {MAX_LINE:,} characters",
                   "write one input per line; is this really a CSV or text file of URLs?")
    if header_out is not None:
        header_out.append(bad)
    if problems is not None and bad > MAX_ROW_PROBLEMS:
        problems.append(Problem(src.display, 1, 1, "(file)",
                                f"{bad - MAX_ROW_PROBLEMS} more rows have problems (only the first {MAX_ROW_PROBLEMS} are listed)",
                                "fix the rows above and validate again"))


class _LongLine(Exception):
    def __init__(self, lineno: int):
        self.lineno = lineno


def _iter_dir(src: FileSource, report: _Report) -> Iterator[Input]:
    """A folder's image files, in the order of their relative paths."""
    try:
        files = list_folder(src.path, src.glob, src.recursive)
    except OSError as exc:
        report(1, 1, "(folder)", f"cannot list {src.display}: {exc.strerror or exc}", "check the path and permissions")
        return
    for p in files:
        rel = p.relative_to(src.path).as_posix()
        shown = src.display.rstrip("/") + "/" + rel
        try:
            yield local_input(p, shown, file_input_id(rel), f"{shown}:1:1")
        except NotAnImage as exc:
            report(1, 1, f"file {rel}", str(exc), exc.hint)


def _local_row(src: FileSource, text: str, ident: str | None, origin: str, vars: Mapping[str, str] | None = None) -> Input:
    """A row's local path (relative to the listing file's folder) as an Input; NotAnImage when it is not one."""
    p = Path(text).expanduser()
    absolute = p if p.is_absolute() else src.path.parent / p
    return local_input(absolute, text, ident, origin, vars=vars)


def _iter_txt(src: FileSource, f: Any, report: _Report) -> Iterator[Input]:
    lines = _LastLine(f)
    for line in lines:
        lineno = lines.lineno
        url = line.strip()
        if not url or url.startswith("#"):
            continue
        col = len(line) - len(line.lstrip()) + 1
        if not URL_RE.match(url):
            if looks_like_url(url) and not (src.path.parent / url).exists():
                report(lineno, col, f"line {lineno}", f"{short(url)} is not an http:// or https:// URL",
                       "write one http(s) URL or local file path per line; start comments with #")
                continue
            try:
                yield _local_row(src, url, None, f"{src.display}:{lineno}:{col}")
            except NotAnImage as exc:
                report(lineno, col, f"line {lineno}", str(exc), exc.hint)
            continue
        yield Input(default_input_id(url), url, origin=f"{src.display}:{lineno}:{col}")


# -- CSV -------------------------------------------------------------------------------


class _RowError(Exception):
    def __init__(self, column: int | None, field_name: str, message: str, hint: str):
        self.column, self.field_name, self.message, self.hint = column, field_name, message, hint


class _LastLine:
    """The lines of a file, none read whole if longer than ``MAX_LINE`` (``_LongLine`` instead),
    counted (``lineno``), the last one kept (for column numbers in CSV problems)."""

    __slots__ = ("readline", "last", "lineno")

    def __init__(self, f: Any):
        self.readline, self.last, self.lineno = f.readline, "", 0

    def __iter__(self) -> _LastLine:
        return self

    def __next__(self) -> str:
        line = self.readline(MAX_LINE + 1)
        if not line:
            raise StopIteration
        self.lineno += 1
        if len(line) > MAX_LINE:
            raise _LongLine(self.lineno)
        self.last = line
        return line


def _field_starts(line: str) -> list[int]:
    """0-based offsets where each CSV field of ``line`` starts (quote-aware)."""
    starts, quoted = [0], False
    for i, ch in enumerate(line):
        if ch == '"':
            quoted = not quoted
        elif ch == "," and not quoted:
            starts.append(i + 1)
    return starts


def _csv_header(reader: Any) -> tuple[dict[str, int], list[tuple[int, str]]]:
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


def _iter_csv(src: FileSource, f: Any, report: _Report, header_out: Header | None) -> Iterator[Input]:
    lines = _LastLine(f)
    reader = csv.reader(lines)
    cols, extra = _csv_header(reader)
    if header_out is not None:
        header_out.append((cols, extra))
    if not cols and not extra:
        return  # empty file: reported by the caller as an empty expansion
    if "url" not in cols and "path" not in cols:
        names = [n for _, n in extra]
        near = suggest("url", names) or suggest("path", names)
        report(1, 1, "header", "the header row has no 'url' column",
               f"did you mean {near!r}? rename it to {'url' if suggest('url', names) else 'path'}" if near else
               "the first row must name the columns: url (or path, for local files), id, width, height, "
               "and any template variables")
        return
    iu, ii, iw, ih = cols.get("url"), cols.get("id"), cols.get("width"), cols.get("height")
    ip = cols.get("path")
    ncols = max([*cols.values(), *(i for i, _ in extra)]) + 1
    for row in reader:
        if not row or not "".join(row).strip():  # a blank row (empty cells only)
            continue
        lineno = reader.line_num
        try:
            yield _csv_input(src, row, lineno, iu, ii, iw, ih, extra, ncols, ip)
        except _RowError as e:
            starts = _field_starts(lines.last.rstrip("\r\n"))
            if e.column is None:
                col = len(lines.last.rstrip("\r\n")) + 1
            else:
                col = starts[e.column] + 1 if e.column < len(starts) else len(lines.last.rstrip("\r\n")) + 1
            report(lineno, col, f"row {lineno}, column {e.field_name}", e.message, e.hint)


def _csv_input(src: FileSource, row: list[str], lineno: int, iu: int | None, ii: int | None, iw: int | None,
               ih: int | None, extra: list[tuple[int, str]], ncols: int, ip: int | None = None) -> Input:
    n = len(row)
    if n > ncols:
        raise _RowError(ncols, str(ncols + 1), f"the row has {n} cells but the header names {ncols} columns",
                        "quote cells that contain commas, or add a name for the extra column to the header")
    local = row[ip].strip() if ip is not None and ip < n else ""
    url = row[iu].strip() if iu is not None and iu < n else ""
    if local and url:
        raise _RowError(ip, "path", "the row has both a url and a path", "give one of them per row")
    if local:
        return _csv_local(src, row, lineno, local, ip, ii, iw, ih, extra)
    if iu is None:
        raise _RowError(ip if ip is not None and ip < n else None, "path", "the path cell is empty",
                        "every row needs the path of a local image file")
    if not url:
        raise _RowError(iu if iu < n else None, "url", "the url cell is empty", "every row needs an http(s) URL")
    if not URL_RE.match(url):
        raise _RowError(iu, "url", f"{short(url)} is not an http:// or https:// URL", "write an http(s) URL")
    ident = row[ii].strip() if ii is not None and ii < n else ""
    if ident:
        if not ID_RE.match(ident):
            raise _RowError(ii, "id", f"id {short(ident)} has characters other than letters, digits, '.', '_' and '-'",
                            "use only letters, digits, '.', '_' and '-' in ids")
    else:
        ident = default_input_id(url)
    w = h = None
    ws = row[iw].strip() if iw is not None and iw < n else ""
    hs = row[ih].strip() if ih is not None and ih < n else ""
    if (ws and hs and ws.isascii() and hs.isascii() and ws.isdigit() and hs.isdigit() and ws[0] != "0" != hs[0]
            and len(ws) < 9 and len(hs) < 9 and int(ws) <= MAX_SIDE and int(hs) <= MAX_SIDE):
        w, h = int(ws), int(hs)  # the common case: both plain numbers (the checks below, passed at once)
    elif ws or hs:
        if not ws:
            raise _RowError(iw, "width", "height is given without width", "give both width and height, or neither")
        if not hs:
            raise _RowError(ih, "height", "width is given without height", "give both width and height, or neither")
        for idx, name, text in ((iw, "width", ws), (ih, "height", hs)):
            digits = text.lstrip("0")
            if not (text.isascii() and text.isdigit()) or not digits:  # isascii: int() refuses '²'
                raise _RowError(idx, name, f"{name} {short(text)} is not a positive integer",
                                f"write the {name} in pixels, e.g. 1024")
            if len(digits) > 9 or int(digits) > MAX_SIDE:  # 9 digits: never int() of a 5,000-digit cell
                raise _RowError(idx, name, f"{name} {short(text)} is more than {MAX_SIDE:,} pixels",
                                f"write the {name} of the image in pixels, e.g. 1024")
        w, h = int(ws.lstrip("0")), int(hs.lstrip("0"))
    vars_ = {name: (row[i] if i < n else "") for i, name in extra} if extra else {}
    return Input(ident, url, w, h, {}, vars_, f"{src.display}:{lineno}:1")


def _csv_local(src: FileSource, row: list[str], lineno: int, local: str, ip: int | None, ii: int | None,
               iw: int | None, ih: int | None, extra: list[tuple[int, str]]) -> Input:
    """A row naming a local file: its size comes from the file (width/height cells are not read)."""
    n = len(row)
    ident = row[ii].strip() if ii is not None and ii < n else ""
    if ident and not ID_RE.match(ident):
        raise _RowError(ii, "id", f"id {ident!r} has characters other than letters, digits, '.', '_' and '-'",
                        "use only letters, digits, '.', '_' and '-' in ids")
    vars_ = {name: (row[i] if i < n else "") for i, name in extra} if extra else {}
    try:
        return _local_row(src, local, ident or None, f"{src.display}:{lineno}:1", vars_)
    except NotAnImage as exc:
        raise _RowError(ip, "path", str(exc), exc.hint) from None
