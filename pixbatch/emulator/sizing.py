"""The gateway's size rule: what output sizes it produces, and how it charges for them.

The gateway documents neither the edit output sizes, nor what one "MP" is, nor how
factor-mode sides are rounded; pixbatch's own ``sizes.py`` states its assumptions. The
emulator holds the gateway's side of that as a ``SizeRule`` built from its config, so a
test can run a gateway that was not tuned to pixbatch. The defaults reproduce
``pixbatch.sizes`` exactly (a test keeps them in step):

- ``megapixel`` (1,000,000; or 1,048,576 = 2^20): the pixels in one MP. It sets the
  target-mode area (``target`` x megapixel, each side floored, aspect ratio kept), the
  8 MP cap of factor mode, and the upscale price tiers' boundaries (a tier of
  ``max_megapixels`` M covers outputs up to M x megapixel pixels, boundary included).
- ``factor_rounding`` (``round``, half to even, or ``floor``): each side times the factor.
  Above the cap, the output is the 8 MP target-mode size.
- ``edit_sizes``: the edit output size per aspect ratio. A ratio not in the table gets
  about 1024 x 1024 pixels at that ratio, sides multiples of 16; ``match_input_image``
  uses the table entry of the input's exact ratio when there is one, else the same rule.

Charging (settlement): nothing unless the price table charges the status; an upscale by
the tier of its real output size, or, when no output was measured, the most its
parameters allow; an edit at the edit price.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from ..pricing import PriceTable, Tier

Size = tuple[int, int]
CAP_MP = 8  # the documented factor-mode cap
EDIT_AREA = 1024 * 1024


@dataclass(frozen=True, slots=True)
class SizeRule:
    megapixel: int = 1_000_000
    factor_rounding: str = "round"
    edit_sizes: tuple[tuple[str, Size], ...] = ()

    @classmethod
    def from_config(cls, config: Any) -> SizeRule:
        return cls(config.megapixel, config.factor_rounding, config.edit_sizes)

    # -- sizes ------------------------------------------------------------------------

    def target_size(self, size: Size, target_mp: int | float) -> Size:
        w, h = size
        if w <= 0 or h <= 0:
            raise ValueError(f"image size must be positive, got {w}x{h}")
        scale2 = Fraction(target_mp) * self.megapixel / (w * h)
        return max(math.isqrt(int(w * w * scale2)), 1), max(math.isqrt(int(h * h * scale2)), 1)

    def factor_size(self, size: Size, factor: int | float) -> Size:
        f = Fraction(factor) if isinstance(factor, int) else Fraction(str(factor))
        side = round if self.factor_rounding == "round" else math.floor
        ow, oh = side(size[0] * f), side(size[1] * f)
        if ow * oh > CAP_MP * self.megapixel:
            return self.target_size(size, CAP_MP)
        return max(ow, 1), max(oh, 1)

    def upscale_size(self, size: Size, body: dict) -> Size:
        if body.get("upscale_mode", "target") == "target":
            return self.target_size(size, body.get("target", 4))
        return self.factor_size(size, body.get("factor", 2))

    def edit_size(self, input_size: Size | None, aspect_ratio: str = "match_input_image") -> Size | None:
        """None when it depends on an input size that is unknown."""
        table = dict(self.edit_sizes)
        if aspect_ratio == "match_input_image":
            if input_size is None:
                return None
            r = Fraction(input_size[0], input_size[1])
            for ratio, size in self.edit_sizes:
                if _ratio(ratio) == r:
                    return size
        elif aspect_ratio in table:
            return table[aspect_ratio]
        else:
            r = _ratio(aspect_ratio)
        h = math.sqrt(EDIT_AREA / r)
        w = h * r
        return max(16, int(round(w / 16)) * 16), max(16, int(round(h / 16)) * 16)

    def output_size(self, op: str, body: dict, input_size: Size | None) -> Size | None:
        if op == "edit":
            return self.edit_size(input_size, body.get("aspect_ratio", "match_input_image"))
        return None if input_size is None else self.upscale_size(input_size, body)

    # -- money ------------------------------------------------------------------------

    def tier(self, prices: PriceTable, pixels: int) -> Tier:
        """The first upscale tier whose boundary (``max_megapixels`` x megapixel) holds ``pixels``."""
        for t in prices.upscale_tiers:
            if pixels <= t.max_megapixels * self.megapixel:  # type: ignore[operator]
                return t
        return prices.upscale_tiers[-1]

    def most(self, prices: PriceTable, op: str, body: dict) -> int:
        """The most a request may cost, before its input is seen (what a submit reserves)."""
        if op == "edit":
            return prices.edit_tier.price_micros
        if body.get("upscale_mode", "target") == "target":
            return self.tier(prices, int(body.get("target", 4)) * self.megapixel).price_micros
        return self.tier(prices, CAP_MP * self.megapixel).price_micros

    def charge(self, prices: PriceTable, op: str, status: str, body: dict, output_size: Size | None) -> int:
        """What the gateway takes for a job ending in ``status`` with ``output_size``."""
        if not prices.is_charged(status):
            return 0
        if op == "upscale" and output_size is not None:
            return self.tier(prices, output_size[0] * output_size[1]).price_micros
        return self.most(prices, op, body)


def _ratio(aspect_ratio: str) -> Fraction:
    a, b = aspect_ratio.split(":")
    return Fraction(int(a), int(b))
