"""What pixbatch has learned about the gateway's undocumented size rules, and prices that use it.

The gateway documents neither what one "MP" is, nor the edit output sizes (``sizes.py``), so
estimates price those as ranges. Every completed item is evidence (pure functions here; the
state file's observations come from ``state.size_observations``):

- a **target-mode upscale** fills ``target`` MP: its output's area tells which reading of MP
  the gateway uses (``sizes.readings_of_target_output``); so does a factor-mode output of a
  known input (the 8 MP cap); once one reading fits every output, it is *learned* and the
  price table is narrowed to it (``PriceTable.knowing``);
- a **completed edit** teaches its real output size, and the size of every edit predicted
  to come out the same (the same aspect ratio): ``Knowledge.edit_sizes`` maps a predicted
  size to the real one, an assumption stated with its evidence.

``price_item`` is the one price function of an item that the estimate, the plan and the run's
reservation share: a chained item is priced from its upstream's real output size when it
exists, else from a learned size, else from the predicted one as a range (``assumed``).
``Learner`` is the run's mutable copy, fed by every settled item.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .pricing import Price, PriceTable
from .sizes import (MEGAPIXEL_2_20, Size, edit_output_size, readings_of_factor_output, readings_of_target_output)


@dataclass(frozen=True, slots=True)
class Observation:
    """One completed item's output, with what it was asked (from the state file or a settle)."""

    key: str
    op: str
    body: Mapping[str, Any]  # the pricing parameters are enough: upscale_mode, target, factor, aspect_ratio
    input_size: Size | None  # a real input size (declared, probed, or the upstream's real output), else None
    output_size: Size


def megapixel_text(m: int) -> str:
    return "2^20 = 1,048,576 px" if m == MEGAPIXEL_2_20 else f"{m:,} px"


@dataclass(frozen=True)
class Knowledge:
    """Facts learned from completed items (empty: nothing learned yet)."""

    megapixel: int | None = None  # the gateway's reading of one MP, once learned
    megapixel_evidence: str = ""
    edit_sizes: Mapping[Size, tuple[Size, str]] = field(default_factory=dict)  # predicted -> (real, evidence)

    def table(self, table: PriceTable) -> PriceTable:
        """The price table narrowed to what is learned."""
        if self.megapixel is None or table.reading_known:
            return table
        return table.knowing(self.megapixel)

    def assumptions(self, table: PriceTable) -> list[str]:
        """What this knowledge adds to an estimate's assumptions, in words."""
        out = []
        if self.megapixel is not None:
            out.append(f"1 MP = {megapixel_text(self.megapixel)}, learned from {self.megapixel_evidence}: tier "
                       "boundaries are read that way, so no price is a range because of them")
        for predicted, (real, evidence) in sorted(self.edit_sizes.items()):
            if predicted != real:
                out.append(f"edits predicted to come out {predicted[0]}x{predicted[1]} are taken to come out "
                           f"{real[0]}x{real[1]}, as {evidence} did (one edit of an aspect ratio stands for the rest)")
            else:
                out.append(f"edits predicted to come out {predicted[0]}x{predicted[1]} do ({evidence}): taken as "
                           "exact for the rest of that aspect ratio")
        return out


def learn(observations: Iterable[Observation], table: PriceTable, prior: Knowledge | None = None) -> Knowledge:
    """What ``observations`` teach, on top of ``prior``."""
    k = prior or Knowledge()
    readings = set(table.megapixels)
    evidence = k.megapixel_evidence
    edit_sizes = dict(k.edit_sizes)
    for o in observations:
        fits = _readings(o, table) if k.megapixel is None else None
        if fits is not None and fits & readings and not readings <= fits:
            readings &= fits  # an output no possible reading explains (a contradiction) teaches nothing
            evidence = _describe(o)
        if o.op == "edit":
            predicted = edit_output_size(o.input_size, _ratio(o))
            if predicted is not None and predicted not in edit_sizes:
                edit_sizes[predicted] = (o.output_size, _describe(o))
    megapixel = k.megapixel
    if megapixel is None and len(readings) == 1 and not table.reading_known:
        megapixel = next(iter(readings))
    return Knowledge(megapixel, evidence if megapixel is not None else "", edit_sizes)


def _ratio(o: Observation) -> str:
    return str(o.body.get("aspect_ratio", "match_input_image"))


def _readings(o: Observation, table: PriceTable) -> frozenset[int] | None:
    """The readings of MP this output fits (None: it says nothing about them)."""
    if o.op != "upscale":
        return None
    if o.body.get("upscale_mode", "target") == "target":
        return readings_of_target_output(o.body.get("target", 4), o.output_size, table.megapixels)
    if o.input_size is None:
        return None
    ms, _ = readings_of_factor_output(o.input_size, o.body.get("factor", 2), o.output_size, table.megapixels)
    return ms or None  # an output no reading explains (another rounding, a resize) teaches nothing


def _describe(o: Observation) -> str:
    w, h = o.output_size
    if o.op == "edit":
        return f"edit {o.key[:12]} ({_ratio(o)}, {w}x{h})"
    mode = o.body.get("upscale_mode", "target")
    what = f"target {o.body.get('target', 4)}" if mode == "target" else f"factor {o.body.get('factor', 2)}"
    return f"the {w}x{h} output of upscale {o.key[:12]} ({what})"


def price_item(table: PriceTable, knowledge: Knowledge, op: str, body: Mapping[str, Any], input_size: Size | None,
               *, chained: bool = False, upstream_op: str | None = None,
               upstream_output: Size | None = None) -> tuple[Price, Size | None, bool]:
    """(price, the input size it rests on, whether that size is real).

    ``input_size`` is the item's own (declared, probed, or for a chained item the one
    predicted for its upstream's output); ``upstream_output`` the upstream's real output size
    once it completed.
    """
    tbl = knowledge.table(table)
    if not chained:
        return tbl.price(op, body, input_size), input_size, input_size is not None
    if upstream_output is not None:
        return tbl.price(op, body, upstream_output), upstream_output, True
    if input_size is not None and upstream_op == "edit":
        learned = knowledge.edit_sizes.get((input_size[0], input_size[1]))
        if learned is not None:
            return tbl.price(op, body, learned[0]), learned[0], False
    return tbl.price(op, body, input_size, assumed=input_size is not None), input_size, False


class Learner:
    """A run's knowledge, growing as items settle. ``table`` is the price table narrowed to it."""

    def __init__(self, table: PriceTable, knowledge: Knowledge | None = None):
        self.base = table
        self.knowledge = knowledge or Knowledge()
        self.table = self.knowledge.table(table)
        # charges that rest on the default reading of MP, until it is learned:
        # key -> (row, charge, output size, input size)
        self.provisional: dict[str, tuple[Any, int, Size | None, Size | None]] = {}

    def observe(self, o: Observation) -> bool:
        """Learn from one output; True when the reading of MP became known with it."""
        before = self.knowledge.megapixel
        self.knowledge = learn([o], self.base, self.knowledge)
        self.table = self.knowledge.table(self.base)
        return before is None and self.knowledge.megapixel is not None
