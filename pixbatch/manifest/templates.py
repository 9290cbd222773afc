"""Templates (``naming``, ``prompt``): ``str.format`` placeholders over named variables.

The rules both the checks (:mod:`.meaning`) and the expansion (:mod:`pixbatch.expand`)
follow: which placeholders a template has (:func:`template_fields`; a malformed template
is a ValueError saying how to fix it) and how a value appears in a rendered template
(:func:`template_value`). Rendering itself is ``text.format_map(variables)``.
"""

from __future__ import annotations

import re
import string
from typing import Any

from .problems import IDENT_RE

DEFAULT_NAMING = "{step}/{stem}.{ext}"
BUILTIN_VARS = ("input", "step", "index", "ext", "key", "stem")

#: the widest a format spec may pad or the most digits it may show (``{index:04d}``, ``{x:.3f}``):
#: ``{index:1500000000d}`` would allocate 1.5 GB per name
MAX_FORMAT_WIDTH = 255

_FORMATTER = string.Formatter()
# [[fill]align][sign][z][#][0][width][grouping][.precision][type]: the width and the precision
_SPEC = re.compile(r"(?:.?[<>=^])?[-+ ]?z?#?0?(?P<width>\d*)[,_]?(?:\.(?P<precision>\d*))?[A-Za-z%]?", re.S)


def template_fields(text: str) -> list[tuple[str, str]]:
    """The ``(name, format_spec)`` placeholders of a template. Raises ValueError when the
    template is malformed (unbalanced braces, ``{a.b}``, ``{a!r}``, ``{}``, a width or
    precision over ``MAX_FORMAT_WIDTH``)."""
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
        if spec:
            _check_spec(name, spec)
        out.append((name, spec or ""))
    return out


def _check_spec(name: str, spec: str) -> None:
    """A format spec that would pad or print more than ``MAX_FORMAT_WIDTH`` characters is a
    ValueError (any other malformed spec is left to ``format``, which says what is wrong)."""
    m = _SPEC.fullmatch(spec)
    if m is None:
        return
    for part in ("width", "precision"):
        digits = (m.group(part) or "").lstrip("0")
        if len(digits) > 3 or digits and int(digits) > MAX_FORMAT_WIDTH:
            shown = spec if len(spec) <= 20 else spec[:17] + "..."
            raise ValueError(f"placeholder {{{name}:{shown}}} asks for a {part} of more than {MAX_FORMAT_WIDTH} "
                             f"characters; use at most {MAX_FORMAT_WIDTH}, e.g. {{{name}:04d}}")


def template_value(v: Any) -> Any:
    """How a variable appears in a template: booleans as true/false, 2.0 as 2."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return v
