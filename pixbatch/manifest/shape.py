"""Pass 1, shape: the data against ``schemas/manifest.schema.json``, worded for people.

The schema is the single source of the manifest's shape; ``jsonschema`` finds what breaks
it, and :func:`schema_error` turns each error into a :class:`~.problems.Problem` at the
line and column of the offending key or value (``absolute_path`` through the positions
the YAML loader recorded), with a "did you mean" for misspelled keys and enum values and
a hint that says what to write instead. The meaning pass reuses :func:`schema_error` for
matrix values (each checked against its parameter's rule in the same schema).
"""

from __future__ import annotations

import json
import re
from typing import Any

from ..schemas import load_schema
from .problems import Checker, short, suggest

_TYPE_NAMES = {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean", int: "an integer",
               float: "a number", type(None): "nothing (null)"}

_validator_cache: list[Any] = []
_param_validators: dict[tuple[str, str], Any] = {}


def _validator() -> Any:
    if not _validator_cache:
        import jsonschema

        _validator_cache.append(jsonschema.Draft202012Validator(_inlined(load_schema("manifest"))))
    return _validator_cache[0]


def _inlined(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema with its local ``$ref`` s replaced by what they name: the same rules, but
    jsonschema no longer resolves a reference for every input and step (half the time)."""
    defs = schema.get("$defs", {})

    def inline(node: Any, stack: tuple[str, ...]) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/") and ref[8:] in defs and ref[8:] not in stack:
                name = ref[8:]
                rest = {k: inline(v, stack) for k, v in node.items() if k != "$ref"}
                return {**inline(defs[name], (*stack, name)), **rest}
            return {k: inline(v, stack) for k, v in node.items()}
        if isinstance(node, list):
            return [inline(v, stack) for v in node]
        return node

    out = inline({k: v for k, v in schema.items() if k != "$defs"}, ())
    out["$defs"] = defs  # for a reference left in place (a recursive one)
    return out


def _plain_url_inputs(data: Any) -> list[int]:
    """Indexes of ``inputs`` that are plain URL strings the schema accepts as they are: they
    need no validator call each (a manifest may list thousands). Empty unless the schema
    still says an input string is exactly ``$defs/url`` (so a change there turns this off)."""
    schema = load_schema("manifest")
    input_def, url_def = schema["$defs"].get("input", {}), schema["$defs"].get("url", {})
    if (not isinstance(data, dict) or not isinstance(data.get("inputs"), list)
            or input_def.get("if") != {"type": "string"} or input_def.get("then") != {"$ref": "#/$defs/url"}
            or set(url_def) - {"type", "pattern", "description"} or url_def.get("type") != "string"):
        return []
    url = re.compile(url_def["pattern"])
    return [i for i, x in enumerate(data["inputs"]) if isinstance(x, str) and url.search(x)]


def param_validator(op: str, name: str) -> Any:
    """A validator for one step parameter, from the manifest schema (single source)."""
    key = (op, name)
    if key not in _param_validators:
        import jsonschema

        sub = load_schema("manifest")["$defs"][f"{op}Step"]["properties"][name]
        _param_validators[key] = jsonschema.Draft202012Validator(sub)
    return _param_validators[key]


def schema_problems(c: Checker, data: Any) -> None:
    """Every way ``data`` breaks the manifest schema, as problems in ``c``."""
    plain = _plain_url_inputs(data)
    index = None
    if len(plain) > 1:  # validate the rest (and one plain URL, for the list's own rules); map paths back
        skip = set(plain[1:])
        index = [i for i in range(len(data["inputs"])) if i not in skip]
        data = {**data, "inputs": [data["inputs"][i] for i in index]}
    for err in _validator().iter_errors(data):
        path = tuple(err.absolute_path)
        if index is not None and path[:1] == ("inputs",) and len(path) > 1 and isinstance(path[1], int):
            path = ("inputs", index[path[1]], *path[2:])
        schema_error(c, err, path)


def _kind(v: Any) -> str:
    return _TYPE_NAMES.get(type(v), type(v).__name__)


def schema_error(c: Checker, err: Any, path: tuple[Any, ...]) -> None:
    """One ``jsonschema`` error, worded, at ``path``."""
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
        c.add(path, f"{short(inst)} is not one of {opts}", f"did you mean {near!r}?" if near else f"use one of {opts}")
    elif v == "const":
        c.add(path, f"{short(inst)} is not supported", f"write {json.dumps(err.validator_value)}")
    elif v == "type":
        got = _kind(inst) if inst is None else f"{_kind(inst)} {short(inst)}"
        if not path and inst is None:
            c.add(path, "the manifest is empty", "start with version: 1, inputs: and steps: (see docs/manifest.md)")
        else:
            c.add(path, f"expected {desc or err.validator_value}, got {got}", _type_hint(inst, err.validator_value))
    elif v in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        c.add(path, f"{short(inst)} is out of range", f"expected {desc}" if desc else err.message)
    elif v == "pattern":
        examples = schema.get("examples")
        c.add(path, f"{short(inst)} is not {desc or 'in the expected form'}",
              "quote the whole URL and start it with http:// or https://" if "URL" in (desc or "") else
              f"write it like {json.dumps(examples[0])}" if examples else None)
    elif v in ("minItems", "minProperties"):
        c.add(path, f"{'the list' if v == 'minItems' else 'the mapping'} is empty, so it would expand to nothing",
              f"give {desc}" if desc else "add at least one entry, or remove the key")
    elif v == "minLength":
        c.add(path, "must not be empty", f"write {desc}" if desc else None)
    elif v == "uniqueItems":
        dup = next((x for i, x in enumerate(inst) if x in inst[:i]), None)
        c.add(path, f"lists {short(dup)} more than once", "remove the repeated entry")
    elif v == "propertyNames":
        name = inst
        c.add((*path, name), f"{short(name)} is not a valid name", f"use {schema.get('description', 'letters, digits and _')}", key=True)
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
