"""Output dimensions the gateway produces, as pure functions, under each reading of its
undocumented rules.

Pricing needs them (upscale is priced by output megapixels; a step downstream of an edit
is priced from the edit's output size) and the output checks compare with them. The
gateway documents none of the three things they depend on, so each is a parameter:

- ``megapixel``: what one "MP" is, 1,000,000 or 1,048,576 (2^20) pixels
  (``MEGAPIXEL_READINGS``). It sets target mode's area, the 8 MP cap of factor mode and,
  in ``pricing.py``, the tier boundaries. A public example of the upscaler at ``target: 8``
  produced 3832x2174 = 8.33 million pixels, which only fits 2^20; the price table says
  which reading pixbatch takes by default (``pricing.json``), and prices an output whose
  pixel count lies between the two readings of a boundary as a range.
- ``rounding`` of factor-mode sides: ``round`` (half to even) or ``floor`` (``ROUNDINGS``).
- edit output sizes: about 1 MP (1024 x 1024 for 1:1), sides multiples of 16, at the
  requested aspect ratio; ``match_input_image`` takes the main input's ratio. Public
  sources disagree by up to 16 px a side (16:9: 1376x768 in a model listing, 1344x768 in
  the model maker's example; this rule gives 1360x768), so a size *predicted* for an
  output not seen yet is only trusted to ``assumed_bounds`` (``ASSUMED_SLACK_PX`` or
  ``ASSUMED_SLACK_RATIO`` a side, whichever is larger).

The rest of the rules:

- upscale, target mode: the input's aspect ratio at ``target`` MP, each side floored,
  so the output never exceeds ``target`` MP.
- upscale, factor mode: each side multiplied by ``factor`` (rounded); if that exceeds
  8 MP the output is the 8 MP target size instead (the documented cap).

An output is what a request asked for when each side is within ``SIDE_TOLERANCE`` (1 px)
of the size one of the readings gives (``fits``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from fractions import Fraction
from typing import Any

MEGAPIXEL = 1_000_000  # the default reading (the price table may say otherwise)
MEGAPIXEL_2_20 = 1_048_576
MEGAPIXEL_READINGS = (MEGAPIXEL, MEGAPIXEL_2_20)
ROUNDINGS = ("round", "floor")
MAX_UPSCALE_MP = 8
EDIT_AREA = 1024 * 1024
ASSUMED_SLACK_PX = 32  # a predicted size is trusted to +-32 px a side ...
ASSUMED_SLACK_RATIO = Fraction(1, 40)  # ... or +-2.5 %, whichever is larger (covers either MP reading)
SIDE_TOLERANCE = 1

Size = tuple[int, int]


def target_size(size: Size, target_mp: int | float, megapixel: int = MEGAPIXEL) -> Size:
    w, h = size
    if w <= 0 or h <= 0:
        raise ValueError(f"image size must be positive, got {w}x{h}")
    # exact arithmetic: the largest sides with the input's ratio and w*h <= target
    area = Fraction(target_mp) * megapixel
    scale2 = area / (w * h)
    # floor(w * sqrt(scale2)) computed with integer square roots
    ow = math.isqrt(int(w * w * scale2))
    oh = math.isqrt(int(h * h * scale2))
    return max(ow, 1), max(oh, 1)


def factor_size(size: Size, factor: float, megapixel: int = MEGAPIXEL, rounding: str = "round") -> Size:
    w, h = size
    f = Fraction(factor) if isinstance(factor, int) else Fraction(str(factor))
    side = round if rounding == "round" else math.floor
    ow, oh = side(w * f), side(h * f)
    if ow * oh > MAX_UPSCALE_MP * megapixel:
        return target_size(size, MAX_UPSCALE_MP, megapixel)
    return max(ow, 1), max(oh, 1)


def upscale_output_size(size: Size, mode: str = "target", target: int = 4, factor: float = 2, *,
                        megapixel: int = MEGAPIXEL, rounding: str = "round") -> Size:
    if mode == "target":
        return target_size(size, target, megapixel)
    if mode == "factor":
        return factor_size(size, factor, megapixel, rounding)
    raise ValueError(f"unknown upscale_mode {mode!r}")


def ratio_of(aspect_ratio: str) -> Fraction:
    a, b = aspect_ratio.split(":")
    return Fraction(int(a), int(b))


def edit_output_size(input_size: Size | None, aspect_ratio: str = "match_input_image") -> Size | None:
    """The edit's output size; None when it depends on an input size that is unknown."""
    if aspect_ratio == "match_input_image":
        if input_size is None:
            return None
        r = Fraction(input_size[0], input_size[1])
    else:
        r = ratio_of(aspect_ratio)
    # w/h = r, w*h ~= EDIT_AREA; sides rounded to multiples of 16
    h = math.sqrt(EDIT_AREA / r)
    w = h * r
    return max(16, int(round(w / 16)) * 16), max(16, int(round(h / 16)) * 16)


def megapixels_exceed(size: Size, mp: int, megapixel: int = MEGAPIXEL) -> bool:
    return size[0] * size[1] > mp * megapixel


def output_size(op: str, body: Mapping[str, Any], input_size: Size | None, *, megapixel: int = MEGAPIXEL,
                rounding: str = "round") -> Size | None:
    """The size the gateway will produce for this request body under one reading, None when unknown.

    ``body`` may omit documented defaults; they are applied here.
    """
    if op == "upscale":
        if input_size is None:
            return None
        return upscale_output_size(input_size, body.get("upscale_mode", "target"), body.get("target", 4),
                                   body.get("factor", 2), megapixel=megapixel, rounding=rounding)
    if op == "edit":
        return edit_output_size(input_size, body.get("aspect_ratio", "match_input_image"))
    raise ValueError(f"unknown operation {op!r}")


def possible_output_sizes(op: str, body: Mapping[str, Any], input_size: Size | None,
                          megapixels: Iterable[int] = MEGAPIXEL_READINGS,
                          roundings: Iterable[str] = ROUNDINGS) -> dict[Size, tuple[int, str]]:
    """Every size the gateway may produce, each with one (megapixel, rounding) that gives it."""
    out: dict[Size, tuple[int, str]] = {}
    for m in megapixels:
        for r in roundings:
            size = output_size(op, body, input_size, megapixel=m, rounding=r)
            if size is not None:
                out.setdefault(size, (m, r))
    return out


def fits(actual: Size, expected: Size, tolerance: int = SIDE_TOLERANCE) -> bool:
    """Each side within ``tolerance`` pixels of the expected one."""
    return abs(actual[0] - expected[0]) <= tolerance and abs(actual[1] - expected[1]) <= tolerance


def assumed_bounds(size: Size) -> tuple[Size, Size]:
    """The smallest and largest size an output *predicted* as ``size`` is trusted to be."""
    def slack(side: int) -> int:
        return max(ASSUMED_SLACK_PX, math.ceil(side * ASSUMED_SLACK_RATIO))

    w, h = size
    return (max(1, w - slack(w)), max(1, h - slack(h))), (w + slack(w), h + slack(h))


def readings_of_target_output(target: int | float, output: Size,
                              megapixels: Iterable[int] = MEGAPIXEL_READINGS) -> frozenset[int]:
    """The readings of MP under which a target-mode output of this size is what the gateway makes.

    Target mode fills ``target`` MP as closely as the input's ratio allows with floored sides,
    so the area is at most ``target`` x megapixel and within one row and one column of it (a
    side may be one pixel off either way: ``SIDE_TOLERANCE``).
    """
    w, h = output
    lo = (w - 1 - SIDE_TOLERANCE) * (h - 1 - SIDE_TOLERANCE)
    hi = (w + 1 + SIDE_TOLERANCE) * (h + 1 + SIDE_TOLERANCE)
    return frozenset(m for m in megapixels if lo < Fraction(target) * m < hi)


def readings_of_factor_output(input_size: Size, factor: float, output: Size,
                              megapixels: Iterable[int] = MEGAPIXEL_READINGS,
                              roundings: Iterable[str] = ROUNDINGS) -> tuple[frozenset[int], frozenset[str]]:
    """The readings of MP and the roundings under which a factor-mode output of this size is
    exactly what the gateway makes from an input of ``input_size`` (both empty: none fits)."""
    ms: set[int] = set()
    rs: set[str] = set()
    for m in megapixels:
        for r in roundings:
            if factor_size(input_size, factor, m, r) == tuple(output):
                ms.add(m)
                rs.add(r)
    return frozenset(ms), frozenset(rs)
