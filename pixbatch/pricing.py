"""Prices, as pure functions over a price table that is data, not code.

The table ships as ``pixbatch/data/pricing.json`` (with its source and effective date)
and is validated against ``schemas/pricing.schema.json``; ``--pricing FILE`` replaces it.
Every amount is integer micro-dollars.

Upscale is priced by output megapixels: the first tier whose ``max_megapixels`` x one MP is
>= the output's pixels (so exactly 4 MP is the lower tier). What one MP is, the gateway does
not say: the table's ``megapixel`` says which readings are possible (1,000,000 and 2^20) and
which is the default. Target mode outputs ``target`` MP, the same tier under every reading;
factor mode outputs (w*f)*(h*f) pixels, capped at 8 MP (see ``sizes.py``).

A price is exact only when nothing it rests on is a guess. It is a range (``Price.low`` ..
``Price.high``, with the reason) when the input's size is unknown (``REASON_UNKNOWN``), when
it is a size *predicted* for an upstream output not seen yet (``REASON_ASSUMED``: trusted to
``sizes.assumed_bounds``), when the output's pixel count lies between two readings of a
tier boundary (``boundary_reason``), or when factor-mode rounding decides the tier
(``REASON_ROUNDING``). Edit is one price per request. Which terminal statuses are charged
is data too.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from .errors import PricingError
from .money import usd_to_micros
from .schemas import load_schema
from .sizes import (MAX_UPSCALE_MP, MEGAPIXEL, MEGAPIXEL_READINGS, ROUNDINGS, Size, assumed_bounds, factor_size)

REASON_UNKNOWN = "input size unknown (factor mode prices by output size)"
REASON_ASSUMED = ("priced from a predicted output size of its upstream step, which the gateway does not document "
                  "(edit sizes differ between sources)")
REASON_ROUNDING = "factor-mode rounding (round or floor, not documented) decides the tier"


def boundary_reason(max_megapixels: float, readings: Iterable[int]) -> str:
    """Why an output near a tier boundary is a range: the boundary in pixels under each reading."""
    px = sorted({int(max_megapixels * m) for m in readings})
    return (f"output between the readings of the {max_megapixels:g} MP boundary ({px[0]:,}..{px[-1]:,} px: "
            "the gateway does not say whether 1 MP is 1,000,000 or 2^20 px)")


@dataclass(frozen=True, slots=True)
class Tier:
    op: str
    name: str
    price_micros: int
    max_megapixels: float | None = None  # upscale tiers only


@dataclass(frozen=True, slots=True)
class Price:
    """The price of one item: exact when ``low is high``, else a range and the reason."""

    low: Tier
    high: Tier
    reason: str | None = None

    @property
    def exact(self) -> bool:
        return self.low == self.high

    @property
    def low_micros(self) -> int:
        return self.low.price_micros

    @property
    def high_micros(self) -> int:
        return self.high.price_micros


@dataclass(frozen=True, slots=True)
class PriceTable:
    source: str
    effective_date: str
    charged_statuses: frozenset[str]
    upscale_tiers: tuple[Tier, ...]  # ascending by max_megapixels
    edit_tier: Tier
    path: str = "<built-in>"
    megapixel: int = MEGAPIXEL  # the default reading of one MP: charges are recorded by it until one is learned
    megapixels: tuple[int, ...] = MEGAPIXEL_READINGS  # the readings still possible (one: known)
    megapixel_note: str = ""
    _memo: dict = field(default_factory=dict, compare=False, hash=False, repr=False)  # factor-mode tiers

    @classmethod
    def from_dict(cls, data: Any, path: str = "<built-in>") -> PriceTable:
        import jsonschema

        validator = jsonschema.Draft202012Validator(load_schema("pricing"))
        errors = sorted(validator.iter_errors(data), key=lambda e: list(e.absolute_path))
        if errors:
            detail = "; ".join(
                f"{'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}" for e in errors
            )
            raise PricingError(f"price table {path} is invalid: {detail}. Fix it or drop --pricing to use the built-in table.")
        ops = data["operations"]
        ups = sorted(
            (Tier("upscale", t["name"], usd_to_micros(t["price_usd"]), t["max_megapixels"]) for t in ops["upscale"]["tiers"]),
            key=lambda t: t.max_megapixels,
        )
        if ups[-1].max_megapixels < MAX_UPSCALE_MP:
            raise PricingError(
                f"price table {path}: the upscale tiers stop at {ups[-1].max_megapixels} MP but outputs go up to "
                f"{MAX_UPSCALE_MP} MP; add a tier that covers them."
            )
        mp = ops["upscale"].get("megapixel", {"default": MEGAPIXEL, "possible": list(MEGAPIXEL_READINGS)})
        if mp["default"] not in mp["possible"]:
            raise PricingError(f"price table {path}: operations/upscale/megapixel: the default {mp['default']} is not "
                               f"one of the possible readings {mp['possible']}; add it to `possible`.")
        e = ops["edit"]["tiers"][0]
        return cls(
            source=data["source"],
            effective_date=data["effective_date"],
            charged_statuses=frozenset(data["charged_statuses"]),
            upscale_tiers=tuple(ups),
            edit_tier=Tier("edit", e["name"], usd_to_micros(e["price_usd"])),
            path=path,
            megapixel=mp["default"],
            megapixels=tuple(sorted(mp["possible"])),
            megapixel_note=mp.get("note", ""),
        )

    @classmethod
    def load(cls, path: str | Path | None = None) -> PriceTable:
        """The built-in table, or the one at ``path``."""
        if path is None:
            text = resources.files("pixbatch").joinpath("data/pricing.json").read_text("utf-8")
            return cls.from_dict(json.loads(text))
        p = Path(path)
        try:
            data = json.loads(p.read_text("utf-8"))
        except FileNotFoundError:
            raise PricingError(f"price table {p} does not exist; check the --pricing path.") from None
        except json.JSONDecodeError as exc:
            raise PricingError(f"price table {p} is not valid JSON (line {exc.lineno}, column {exc.colno}): {exc.msg}") from None
        return cls.from_dict(data, str(p))

    def knowing(self, megapixel: int) -> PriceTable:
        """This table once the gateway's reading of one MP is known (learned from an output)."""
        return PriceTable(self.source, self.effective_date, self.charged_statuses, self.upscale_tiers,
                          self.edit_tier, self.path, megapixel, (megapixel,), self.megapixel_note)

    # -- pure pricing -------------------------------------------------------------

    @property
    def tiers(self) -> tuple[Tier, ...]:
        return (*self.upscale_tiers, self.edit_tier)

    @property
    def reading_known(self) -> bool:
        return len(self.megapixels) == 1

    def is_charged(self, status: str) -> bool:
        return status in self.charged_statuses

    def upscale_tier_for_pixels(self, pixels: int, megapixel: int | None = None) -> Tier:
        """The tier of an output of ``pixels`` under one reading of MP (default: the table's default)."""
        m = self.megapixel if megapixel is None else megapixel
        for t in self.upscale_tiers:
            if pixels <= t.max_megapixels * m:  # type: ignore[operator]
                return t
        return self.upscale_tiers[-1]

    def upscale_tier_for_size(self, size: Size, megapixel: int | None = None) -> Tier:
        return self.upscale_tier_for_pixels(size[0] * size[1], megapixel)

    def tiers_for_size(self, size: Size) -> tuple[Tier, Tier]:
        """The cheapest and the dearest tier of an output of ``size`` over the possible readings."""
        found = [self.upscale_tier_for_size(size, m) for m in self.megapixels]
        return self._span(found)

    def _span(self, tiers: Iterable[Tier]) -> tuple[Tier, Tier]:
        order = {t: i for i, t in enumerate(self.upscale_tiers)}
        ts = sorted(set(tiers), key=lambda t: (t.price_micros, order.get(t, 0)))
        return ts[0], ts[-1]

    def price(self, op: str, body: Mapping[str, Any], input_size: Size | None, *, assumed: bool = False) -> Price:
        """Price one request body (documented defaults apply where a key is missing).

        ``assumed``: ``input_size`` is a prediction (an upstream output not seen yet), trusted
        only to ``sizes.assumed_bounds``.
        """
        if op == "edit":
            return Price(self.edit_tier, self.edit_tier)
        if op != "upscale":
            raise ValueError(f"unknown operation {op!r}")
        if body.get("upscale_mode", "target") == "target":
            target = int(body.get("target", 4))
            lo, hi = self._span(self.upscale_tier_for_pixels(target * m, m) for m in self.megapixels)
            return Price(lo, hi, None if lo == hi else boundary_reason(lo.max_megapixels or 0, self.megapixels))
        factor = body.get("factor", 2)
        if input_size is None:
            # unknown input: anything from the smallest output up to the 8 MP cap
            return Price(self.upscale_tiers[0], self.upscale_tier_for_pixels(MAX_UPSCALE_MP * self.megapixel),
                         reason=REASON_UNKNOWN)
        size = (input_size[0], input_size[1])
        key = (size, factor, assumed)
        price = self._memo.get(key)
        if price is None:
            price = self._factor_price(size, factor, assumed)
            if len(self._memo) < 20_000:
                self._memo[key] = price
        return price

    def _factor_price(self, size: Size, factor: Any, assumed: bool) -> Price:
        def tiers(inp: Size, readings: Iterable[int], roundings: Iterable[str]) -> list[Tier]:
            return [self.upscale_tier_for_size(factor_size(inp, factor, m, r), m) for m in readings for r in roundings]

        point = tiers(size, self.megapixels, ROUNDINGS)
        every = list(point)
        if assumed:
            for corner in assumed_bounds(size):
                every += tiers(corner, self.megapixels, ROUNDINGS)
        lo, hi = self._span(every)
        if lo == hi:
            return Price(lo, hi)
        plo, phi = self._span(point)
        if plo == phi:
            return Price(lo, hi, REASON_ASSUMED)
        if any(len(set(tiers(size, self.megapixels, (r,)))) > 1 for r in ROUNDINGS):
            return Price(lo, hi, boundary_reason(plo.max_megapixels or 0, self.megapixels))
        return Price(lo, hi, REASON_ROUNDING)

    def charge_for(self, op: str, status: str, output_size: Size | None, body: Mapping[str, Any],
                   input_size: Size | None) -> int:
        """What a terminal status costs: 0 unless charged; priced by the real output size when known
        (by the table's default reading of MP: see ``charge_uncertain``)."""
        if not self.is_charged(status):
            return 0
        if output_size is not None and priced_by_output_size(op, body):
            return self.upscale_tier_for_size(output_size).price_micros
        return self.price(op, body, input_size).high_micros

    def charge_uncertain(self, op: str, status: str, output_size: Size | None, body: Mapping[str, Any],
                         input_size: Size | None = None) -> bool:
        """Whether ``charge_for`` rests on the default reading of MP (or the rounding): a charged factor
        upscale whose real output (or, without one, the output its real input makes) lies between the
        possible readings of a tier boundary."""
        if not self.is_charged(status) or not priced_by_output_size(op, body):
            return False
        if output_size is not None:
            lo, hi = self.tiers_for_size(output_size)
            return lo != hi
        return input_size is not None and not self.price(op, body, input_size).exact


def priced_by_output_size(op: str, body: Mapping[str, Any]) -> bool:
    """Does the real output size decide the charge? Only for a factor-mode upscale (target mode
    outputs ``target`` MP whatever the input; an edit has one price)."""
    return op == "upscale" and body.get("upscale_mode", "target") == "factor"
