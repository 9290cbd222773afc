"""Prices, as pure functions over a price table that is data, not code.

The table ships as ``pixbatch/data/pricing.json`` (with its source and effective date)
and is validated against ``schemas/pricing.schema.json``; ``--pricing FILE`` replaces it.
Every amount is integer micro-dollars.

Upscale is priced by output megapixels: the first tier whose ``max_megapixels`` is >= the
output (so exactly 4 MP is the lower tier). Target mode outputs ``target`` MP; factor mode
outputs (w*f)*(h*f) pixels, capped at 8 MP (see ``sizes.py``). When the input size is not
known, a factor-mode price is a range from the cheapest to the dearest tier it could hit.
Edit is one price per request. Which terminal statuses are charged is data too.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from .errors import PricingError
from .money import usd_to_micros
from .schemas import load_schema
from .sizes import MEGAPIXEL, MAX_UPSCALE_MP, Size, upscale_output_size

#: the largest price table file read (the built-in one is about 2 KB)
MAX_TABLE_BYTES = 1024 * 1024


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
        try:
            ups = sorted(
                (Tier("upscale", t["name"], usd_to_micros(t["price_usd"]), t["max_megapixels"]) for t in ops["upscale"]["tiers"]),
                key=lambda t: t.max_megapixels,
            )
            usd_to_micros(ops["edit"]["tiers"][0]["price_usd"])
        except (ValueError, TypeError) as exc:  # an amount the schema's pattern let through (too large)
            raise PricingError(f"price table {path} is invalid: {exc}. Fix it or drop --pricing to use the built-in table.") from None
        if ups[-1].max_megapixels < MAX_UPSCALE_MP:
            raise PricingError(
                f"price table {path}: the upscale tiers stop at {ups[-1].max_megapixels} MP but outputs go up to "
                f"{MAX_UPSCALE_MP} MP; add a tier that covers them."
            )
        e = ops["edit"]["tiers"][0]
        return cls(
            source=data["source"],
            effective_date=data["effective_date"],
            charged_statuses=frozenset(data["charged_statuses"]),
            upscale_tiers=tuple(ups),
            edit_tier=Tier("edit", e["name"], usd_to_micros(e["price_usd"])),
            path=path,
        )

    @classmethod
    def load(cls, path: str | Path | None = None) -> PriceTable:
        """The built-in table, or the one at ``path``."""
        if path is None:
            text = resources.files("pixbatch").joinpath("data/pricing.json").read_text("utf-8")
            return cls.from_dict(json.loads(text))
        p = Path(path)
        try:
            with open(p, "rb") as f:
                if not os.path.isfile(p):
                    raise PricingError(f"price table {p} is not a regular file; give the path of a .json file.")
                raw = f.read(MAX_TABLE_BYTES + 1)
            if len(raw) > MAX_TABLE_BYTES:
                raise PricingError(f"price table {p} is larger than {MAX_TABLE_BYTES:,} bytes; "
                                   "a price table is a small JSON file (see pixbatch/data/pricing.json).")
            data = json.loads(raw.decode("utf-8"))
        except FileNotFoundError:
            raise PricingError(f"price table {p} does not exist; check the --pricing path.") from None
        except json.JSONDecodeError as exc:
            raise PricingError(f"price table {p} is not valid JSON (line {exc.lineno}, column {exc.colno}): {exc.msg}") from None
        except UnicodeDecodeError as exc:
            raise PricingError(f"price table {p} is not UTF-8 text ({exc.reason}); save it as UTF-8 JSON.") from None
        except RecursionError:
            raise PricingError(f"price table {p} nests too deeply to be a price table.") from None
        except OSError as exc:
            raise PricingError(f"cannot read price table {p}: {exc.strerror or exc}; check the --pricing path.") from None
        return cls.from_dict(data, str(p))

    # -- pure pricing -------------------------------------------------------------

    @property
    def tiers(self) -> tuple[Tier, ...]:
        return (*self.upscale_tiers, self.edit_tier)

    def is_charged(self, status: str) -> bool:
        return status in self.charged_statuses

    def upscale_tier_for_pixels(self, pixels: int) -> Tier:
        for t in self.upscale_tiers:
            if pixels <= t.max_megapixels * MEGAPIXEL:
                return t
        return self.upscale_tiers[-1]

    def upscale_tier_for_size(self, size: Size) -> Tier:
        return self.upscale_tier_for_pixels(size[0] * size[1])

    def price(self, op: str, body: dict, input_size: Size | None) -> Price:
        """Price one request body (documented defaults apply where a key is missing)."""
        if op == "edit":
            return Price(self.edit_tier, self.edit_tier)
        if op != "upscale":
            raise ValueError(f"unknown operation {op!r}")
        if body.get("upscale_mode", "target") == "target":
            t = self.upscale_tier_for_pixels(int(body.get("target", 4)) * MEGAPIXEL)
            return Price(t, t)
        factor = body.get("factor", 2)
        if input_size is not None:
            t = self.upscale_tier_for_size(upscale_output_size(input_size, "factor", factor=factor))
            return Price(t, t)
        # unknown input: anything from the smallest output up to the 8 MP cap
        return Price(self.upscale_tiers[0], self.upscale_tier_for_pixels(MAX_UPSCALE_MP * MEGAPIXEL),
                     reason="input size unknown (factor mode prices by output size)")

    def charge_for(self, op: str, status: str, output_size: Size | None, body: dict, input_size: Size | None) -> int:
        """What a terminal status costs: 0 unless charged; priced by the real output size when known."""
        if not self.is_charged(status):
            return 0
        if output_size is not None and priced_by_output_size(op, body):
            return self.upscale_tier_for_size(output_size).price_micros
        return self.price(op, body, input_size).high_micros


def priced_by_output_size(op: str, body: Mapping[str, Any]) -> bool:
    """Does the real output size decide the charge? Only for a factor-mode upscale (target mode
    outputs ``target`` MP whatever the input; an edit has one price)."""
    return op == "upscale" and body.get("upscale_mode", "target") == "factor"
