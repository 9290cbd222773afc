"""Manifests: load YAML (or text, or data) with positions, validate everything at once,
return a typed :class:`Manifest`.

One job per module, lowest layer first (each imports only those above it)::

    problems.py   Problem (file:line:column: json.path: what is wrong (how to fix)), the
                  Checker that collects them, "did you mean", the ManifestError message
    templates.py  template placeholders and how values render in them
    sources.py    Input, FileSource: the source images and reading CSV/txt files lazily
    model.py      Step, Manifest: the typed manifest every other module reads
      (pixbatch.expand imports only the four above)
    names.py      output names: the rule, the check over the expansion (pass 3), NameCheck
    shape.py      pass 1: the JSON Schema, its errors worded
    counts.py     pass 2's size checks: each step's exact combinations and items against the limits
    meaning.py    pass 2: what a schema cannot say, while the Manifest is built
    load.py       the entry points: path, text or data -> passes -> Manifest or problems

Entry points: ``load_manifest(source)`` (raises ManifestError), ``load_manifest_shallow``
(all but the output-name pass; the Manifest says ``names_checked=False`` and a run or an
estimate checks names on its own walk), ``check_manifest`` (the problems),
``validate_manifest`` (both). See :mod:`.load` for what a source can be.

Names are imported lazily (as in :mod:`pixbatch`): ``pixbatch.expand`` imports the lower
modules of this package, and ``load`` (through ``names``) imports ``pixbatch.expand``, so
an eager import here would make the order of imports matter.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "BUILTIN_VARS": "templates",
    "CSV_COLUMNS": "sources",
    "DEFAULT_NAMING": "templates",
    "FileSource": "sources",
    "Input": "sources",
    "MAX_ROW_PROBLEMS": "problems",
    "Manifest": "model",
    "ManifestSource": "load",
    "NameCheck": "names",
    "Problem": "problems",
    "Step": "model",
    "check_manifest": "load",
    "check_output_names": "names",
    "default_input_id": "sources",
    "json_path": "problems",
    "load_manifest": "load",
    "load_manifest_shallow": "load",
    "manifest_error": "problems",
    "name_escapes": "names",
    "suggest": "problems",
    "template_fields": "templates",
    "template_value": "templates",
    "validate_manifest": "load",
}

__all__ = [  # the same names as _EXPORTS (tests/test_layout.py checks)
    "BUILTIN_VARS",
    "CSV_COLUMNS",
    "DEFAULT_NAMING",
    "FileSource",
    "Input",
    "MAX_ROW_PROBLEMS",
    "Manifest",
    "ManifestSource",
    "NameCheck",
    "Problem",
    "Step",
    "check_manifest",
    "check_output_names",
    "default_input_id",
    "json_path",
    "load_manifest",
    "load_manifest_shallow",
    "manifest_error",
    "name_escapes",
    "suggest",
    "template_fields",
    "template_value",
    "validate_manifest",
]

if TYPE_CHECKING:  # for type checkers and editors; at run time __getattr__ imports on first use
    from .load import ManifestSource, check_manifest, load_manifest, load_manifest_shallow, validate_manifest
    from .model import Manifest, Step
    from .names import NameCheck, check_output_names, name_escapes
    from .problems import MAX_ROW_PROBLEMS, Problem, json_path, manifest_error, suggest
    from .sources import CSV_COLUMNS, FileSource, Input, default_input_id
    from .templates import BUILTIN_VARS, DEFAULT_NAMING, template_fields, template_value


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
