"""Templates (``naming``, ``prompt``): ``str.format`` placeholders over named variables.

The rules both the checks (:mod:`.meaning`) and the expansion (:mod:`pixbatch.expand`)
follow: which placeholders a template has (:func:`template_fields`; a malformed template
is a ValueError saying how to fix it) and how a value appears in a rendered template
(:func:`template_value`). Rendering itself is ``text.format_map(variables)``.
"""

from __future__ import annotations

import string
from typing import Any

from .problems import IDENT_RE

DEFAULT_NAMING = "{step}/{stem}.{ext}"
BUILTIN_VARS = ("input", "step", "index", "ext", "key", "stem")

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
        if not IDENT_RE.match(name):
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
