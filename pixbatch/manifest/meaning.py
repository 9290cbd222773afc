"""Pass 2, meaning: what a schema cannot say, checked while the typed Manifest is built.

Step references (unknown, later, self, cycles), duplicate step and input ids, missing
``from:`` files and bad rows in them (``FILE:LINE:COLUMN``), matrix values against the
parameter rules, unknown template placeholders and malformed templates, empty
expansions, parameters that would be ignored, the budget read exactly (``0.10`` is ten
cents, never a float). It runs on data that passed or failed the shape pass alike (it
skips what is malformed: the shape pass has said so), so every problem is reported at once.

Input files are streamed once (:func:`_scan_inputs`); ids are checked for duplicates with
a set of 64-bit hashes, and only colliding hashes are looked at again (to name both
places), so a file of millions of rows costs little memory.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from dataclasses import dataclass
from dataclasses import replace as dc_replace
from decimal import Decimal, InvalidOperation
from typing import Any

from .. import contract
from ..money import MAX_USD, usd_to_micros
from .model import Manifest, Step
from .counts import SizeCheck
from .names import name_escapes
from .problems import IDENT_RE, MAX_ROW_PROBLEMS, Checker, Problem, json_path, short, suggest
from .shape import param_validator, schema_error
from ..storage.local import NotAnImage
from . import objects
from .sources import URL_RE, FileSource, Input, default_input_id, iter_file, local_input, looks_like_url
from .templates import BUILTIN_VARS, DEFAULT_NAMING, template_fields


def build(c: Checker, data: dict[str, Any]) -> Manifest | None:
    """The typed manifest, or None when a problem was found (every problem is in ``c``)."""
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
                    if amount.copy_abs() > MAX_USD:
                        c.add(("budget_usd",), f"{text} is more than the largest budget pixbatch records (${MAX_USD:,})",
                              "write the budget you mean to spend, e.g. \"25.00\"")
                    else:
                        c.add(("budget_usd",), f"{text} has more than 6 decimal places",
                              "round it to at most 6 decimal places (micro-dollars), e.g. \"25.00\"")
                else:
                    if budget <= 0 and isinstance(raw, str):  # a number <= 0 is reported by the schema
                        c.add(("budget_usd",), "the budget must be more than 0", "write a positive amount, e.g. \"25.00\"")

    name = data.get("name") if isinstance(data.get("name"), str) and data.get("name") else c.stem
    naming = data.get("naming") if isinstance(data.get("naming"), str) and data.get("naming") else DEFAULT_NAMING
    out_raw = data.get("output_dir") if isinstance(data.get("output_dir"), str) and data.get("output_dir") else "out"
    state_raw = data.get("state") if isinstance(data.get("state"), str) and data.get("state") else f"{c.stem}.pixbatch.duckdb"
    for key in ("output_dir", "state"):
        if isinstance(data.get(key), str) and "\x00" in data[key]:
            c.add((key,), "the path contains a NUL character", "write a plain file path")
    out_raw, state_raw = out_raw.replace("\x00", ""), state_raw.replace("\x00", "")
    base = c.base.resolve()
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

    size = SizeCheck(c, steps_raw, step_pos, scan.total)
    steps: list[Step] = []
    for i, s in enumerate(steps_raw):
        if not isinstance(s, dict) or size.too_deep(i, s):
            continue
        st = _build_step(c, i, s, step_pos, scan, naming, data, defaults)
        if st is not None:
            steps.append(st)
            size.check(st)

    out_uri = objects.output_uri(c, data)
    up = objects.uploads(c, data, scan.local > 0)

    if c.problems:
        return None
    return Manifest(path=c.path.resolve(), name=name, budget_micros=budget, output_dir=output_dir,
                    state_path=state_path, naming=naming, defaults=defaults, steps=tuple(steps),
                    sources=tuple(sources), display=c.file, located=c.loc, names_checked=False,
                    output_uri=out_uri, uploads=up, input_count=scan.total, sized_count=scan.sized)


def _norm(v: Any) -> Any:
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return v


def _build_sources(c: Checker, inputs_raw: list[Any]) -> list[Input | FileSource]:
    sources: list[Input | FileSource] = []
    for i, item in enumerate(inputs_raw):
        line, col = c.loc.loc(("inputs", i))
        origin = f"{c.file}:{line}:{col}"
        if isinstance(item, str):
            if URL_RE.match(item):
                sources.append(Input(default_input_id(item), item, origin=origin))
            elif "://" not in item and item:
                inp = _local(c, ("inputs", i), item, None, {}, origin)
                if inp is not None:
                    sources.append(inp)
        elif isinstance(item, dict) and "path" in item and "from" not in item:
            if isinstance(item.get("path"), str) and item["path"]:
                ident = item.get("id") if isinstance(item.get("id"), str) else None
                inp = _local(c, ("inputs", i, "path"), item["path"], ident, _params(item), origin)
                if inp is not None:
                    sources.append(inp)
        elif isinstance(item, dict) and "from" in item:
            rel = item.get("from")
            if not isinstance(rel, str) or not rel:
                continue
            if "\x00" in rel:
                c.add(("inputs", i, "from"), "the path contains a NUL character", "write a plain file path")
                continue
            absolute, shown = c.display_path(rel)
            kind = "dir" if absolute.is_dir() or rel.endswith("/") else absolute.suffix.lower().lstrip(".")
            if kind == "dir":
                if not absolute.is_dir():
                    c.add(("inputs", i, "from"), f"the folder {shown} does not exist",
                          "the path is relative to the manifest's directory")
                else:
                    glob = item.get("glob") if isinstance(item.get("glob"), str) and item.get("glob") else None
                    sources.append(FileSource(absolute, shown, "dir", glob, item.get("recursive") is True))
            elif "glob" in item or "recursive" in item:
                c.add(("inputs", i, "glob" if "glob" in item else "recursive"),
                      "glob and recursive apply to a folder, and this is a file", "remove them, or name a folder",
                      key=True)
            elif kind not in ("csv", "txt"):
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
        elif isinstance(item, dict) and isinstance(item.get("url"), str) and URL_RE.match(item["url"]):
            url = item["url"]
            ident = item.get("id") if isinstance(item.get("id"), str) else default_input_id(url)
            w, h = item.get("width"), item.get("height")
            if not (isinstance(w, int) and isinstance(h, int)) or isinstance(w, bool) or isinstance(h, bool):
                w = h = None
            sources.append(Input(ident, url, w, h, _params(item), {}, origin))
    return sources


def _params(item: dict[str, Any]) -> dict[str, dict[str, Any]]:
    params: dict[str, dict[str, Any]] = {}
    if isinstance(item.get("params"), dict):
        for op in contract.OPS:
            if isinstance(item["params"].get(op), dict):
                params[op] = {k: _norm(v) for k, v in item["params"][op].items()}
    return params


def _local(c: Checker, where: tuple[Any, ...], text: str, ident: str | None, params: dict[str, dict[str, Any]],
           origin: str) -> Input | None:
    """A local image named in the manifest (relative to it), or None with the problem added."""
    if "\x00" in text:
        c.add(where, "the path contains a NUL character", "write a plain file path")
        return None
    absolute, shown = c.display_path(str(Path(text).expanduser()))
    if looks_like_url(text) and not absolute.exists():
        c.add(where, f"{short(text)} is neither an http:// or https:// URL nor an existing file",
              "start a URL with https://; a local path is relative to the manifest's directory")
        return None
    try:
        return local_input(absolute, shown, ident, origin, params=params)
    except NotAnImage as exc:
        c.add(where, str(exc), exc.hint)
        return None


@dataclass
class _Scan:
    """What one streaming pass over the inputs learned."""

    found: dict[str, Input]  # the wanted ids
    source_of: dict[str, int]  # wanted id -> index of its source
    source_vars: list[frozenset[str]]  # per source: the template variables its inputs carry
    total: int
    sample_ids: list[str]  # up to a few thousand ids, for "did you mean"
    all_ids: bool  # sample_ids holds every id
    local: int = 0  # inputs that are local files
    sized: int = 0  # inputs whose width and height are known (declared, or read from a local file)


def _scan_inputs(c: Checker, sources: list[Input | FileSource], wanted: set[str]) -> _Scan:
    """One streaming pass: row problems, empty files, duplicate ids, the wanted inputs."""
    hashes: set[int] = set()
    colliding: set[int] = set()
    found: dict[str, Input] = {}
    source_of: dict[str, int] = {}
    source_vars: list[frozenset[str]] = []
    sample: list[str] = []
    total = local = sized = 0
    for si, src in enumerate(sources):
        if isinstance(src, Input):
            stream: Iterable[Input] = (src,)
        else:
            header: list[Any] = []
            stream = iter_file(src, c.problems, header_out=header)
        n, local0 = 0, local
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
            if inp.file is not None:
                local += 1
            if inp.width is not None and inp.height is not None:
                sized += 1
        total += n
        if isinstance(src, FileSource) and (local > local0 or src.kind == "dir"):
            sources[si] = src = dc_replace(src, local=True)
        if isinstance(src, FileSource):
            cols, extra = header[0] if len(header) > 1 else ({}, [])
            bad_rows = header[-1] if header else 0
            source_vars.append(frozenset(name for _, name in extra if IDENT_RE.match(name)))
            if n == 0 and bad_rows == 0:
                i = _source_index(c, src)
                if src.kind == "dir":
                    c.add(("inputs", i, "from"), f"the folder {src.display} has no image files"
                          + (f" matching {src.glob!r}" if src.glob else " (.jpg, .jpeg, .png, .webp)")
                          + ("" if src.recursive else " (subfolders are not searched)"),
                          "add images, change glob, or set recursive: true")
                else:
                    c.add(("inputs", i, "from"), f"{src.display} has no {'rows' if src.kind == 'csv' else 'URLs'}, so it expands to nothing",
                          "add rows under the header (url,id,width,height)" if src.kind == "csv" else "add one URL per line")
        else:
            source_vars.append(frozenset())
    del hashes
    if colliding:
        _report_duplicate_ids(c, sources, colliding)
    return _Scan(found, source_of, source_vars, total, sample, total <= len(sample), local, sized)


def _source_index(c: Checker, src: FileSource) -> int:
    data = c.loc.data
    for i, item in enumerate(data.get("inputs", [])):
        if isinstance(item, dict) and isinstance(item.get("from"), str) and c.display_path(item["from"])[0] == src.path:
            return i
    return 0


def _report_duplicate_ids(c: Checker, sources: list[Input | FileSource], colliding: set[int]) -> None:
    """Second look at the ids whose hashes collided: name both places of each real duplicate."""
    first: dict[str, str] = {}
    reported = 0
    for src in sources:
        stream = (src,) if isinstance(src, Input) else iter_file(src, [])
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


def _build_step(c: Checker, i: int, s: dict[str, Any], step_pos: dict[str, int], scan: _Scan,
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
            if URL_RE.match(r):
                refs.append(r)
            else:
                c.add((*here, "references", j), f"{short(r)} is not an http:// or https:// URL", "write an http(s) URL")
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
                    for perr in param_validator(op, k).iter_errors(v):
                        schema_error(c, perr, (*here, "matrix", k, j))
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


def _known_vars(c: Checker, data: dict[str, Any], i: int, s: dict[str, Any], step_pos: dict[str, int],
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


def _check_template(c: Checker, path: tuple[Any, ...], text: str, known: set[str], sid: str, *,
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
