"""Output dimensions the gateway produces, as pure functions.

Pricing needs them (upscale is priced by output megapixels; a step downstream of an edit
is priced from the edit's output size) and the emulator produces exactly these sizes, so
both live here. One megapixel is 1,000,000 pixels.

- upscale, target mode: the input's aspect ratio at ``target`` MP, each side floored,
  so the output never exceeds ``target`` MP.
- upscale, factor mode: each side multiplied by ``factor`` (rounded); if that exceeds
  8 MP the output is the 8 MP target size instead (the documented cap).
- edit: about 1 MP (1024 x 1024 for 1:1), sides multiples of 16, at the requested aspect
  ratio; ``match_input_image`` takes the main input's ratio.
"""

from __future__ import annotations

import math
from fractions import Fraction

MEGAPIXEL = 1_000_000
MAX_UPSCALE_MP = 8
EDIT_AREA = 1024 * 1024
#: the largest image side (pixels) a manifest may declare: far beyond any real input, and
#: every size derived from it fits the state file's INTEGER columns (the schema says the same)
MAX_SIDE = 100_000

Size = tuple[int, int]


def target_size(size: Size, target_mp: int | float) -> Size:
    w, h = size
    if w <= 0 or h <= 0:
        raise ValueError(f"image size must be positive, got {w}x{h}")
    # exact arithmetic: the largest sides with the input's ratio and w*h <= target
    area = Fraction(target_mp) * MEGAPIXEL
    scale2 = area / (w * h)
    # floor(w * sqrt(scale2)) computed with integer square roots
    ow = math.isqrt(int(w * w * scale2))
    oh = math.isqrt(int(h * h * scale2))
    return max(ow, 1), max(oh, 1)


def upscale_output_size(size: Size, mode: str = "target", target: int = 4, factor: float = 2) -> Size:
    if mode == "target":
        return target_size(size, target)
    if mode == "factor":
        w, h = size
        f = Fraction(factor) if isinstance(factor, int) else Fraction(str(factor))
        ow, oh = round(w * f), round(h * f)
        if ow * oh > MAX_UPSCALE_MP * MEGAPIXEL:
            return target_size(size, MAX_UPSCALE_MP)
        return max(ow, 1), max(oh, 1)
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


def megapixels_exceed(size: Size, mp: int) -> bool:
    return size[0] * size[1] > mp * MEGAPIXEL


def output_size(op: str, body: dict, input_size: Size | None) -> Size | None:
    """The size the gateway will produce for this request body, None when unknown.

    ``body`` may omit documented defaults; they are applied here.
    """
    if op == "upscale":
        mode = body.get("upscale_mode", "target")
        if mode == "target":
            if input_size is None:
                return None
            return target_size(input_size, body.get("target", 4))
        if input_size is None:
            return None
        return upscale_output_size(input_size, "factor", factor=body.get("factor", 2))
    if op == "edit":
        return edit_output_size(input_size, body.get("aspect_ratio", "match_input_image"))
    raise ValueError(f"unknown operation {op!r}")
