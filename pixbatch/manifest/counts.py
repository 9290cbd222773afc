"""Pass 2's size checks: what each step would cost to expand, from exact counts, before
anything is built.

A step's matrix combinations (the product of its list lengths) and its work items (source
images x combinations; a chained step's sources are its upstream's items) are known
instantly and exactly, so a matrix of 10^20 combinations is refused in microseconds rather
than built until memory runs out. The limits are ``pixbatch.expand``'s (``MAX_COMBINATIONS``,
``MAX_STEP_ITEMS``, raised through their environment variables, ``LIMIT_ENV``) and
``MAX_CHAIN``, the longest chain of ``for_each: <step>`` links: a step further down is
refused once, at the first step too far, and never followed link by link (a chain of 2,000
steps is no recursion).
"""

from __future__ import annotations

from typing import Any

from ..expand import LIMIT_ENV, MAX_CHAIN, limit
from .model import Step
from .problems import Checker


class SizeCheck:
    """One manifest's steps, in order: ``too_deep`` before a step is built, ``check`` after."""

    def __init__(self, c: Checker, steps_raw: list[Any], step_pos: dict[str, int], n_inputs: int):
        self.c, self.n_inputs = c, n_inputs
        self.depth = _chain_depths(steps_raw, step_pos)
        self.counts: dict[str, int] = {}  # items per step checked so far
        try:
            self.limits: tuple[int, int] | None = (limit("combinations"), limit("step_items"))
        except ValueError as exc:
            c.add((), str(exc), "set it to a whole number such as 1000000, or unset it")
            self.limits = None

    def too_deep(self, i: int, s: dict[str, Any]) -> bool:
        """Whether step ``i`` is more than MAX_CHAIN links down (said once, at the first such step)."""
        sid, fe = s.get("id"), s.get("for_each")
        if not isinstance(sid, str) or self.depth.get(sid, 0) <= MAX_CHAIN:
            return False
        if isinstance(fe, str) and self.depth.get(fe) == MAX_CHAIN:
            self.c.add(("steps", i, "for_each"), f"step {sid!r} is more than {MAX_CHAIN} steps down a chain of "
                       "for_each steps", f"a chain of steps may be at most {MAX_CHAIN} long; shorten it")
        return True

    def check(self, st: Step) -> None:
        """The step's matrix combinations and items against the limits (each excess said once)."""
        if self.limits is None:
            return
        max_combos, max_items = self.limits
        here = ("steps", st.index)
        combos = st.matrix_size
        if combos > max_combos:
            self.c.add((*here, "matrix"), f"the matrix of step {st.id!r} has {combos:,} combinations, more than "
                       f"the {max_combos:,} a step may have",
                       f"split it over several steps, or raise the limit with {LIMIT_ENV['combinations']}=N")
        up = st.upstream
        if up is not None:
            if up not in self.counts:
                return
            sources = self.counts[up]
        else:
            sources = len(st.input_ids) if st.input_ids is not None else self.n_inputs
        items = self.counts[st.id] = sources * combos
        upstream_ok = up is None or self.counts[up] <= max_items
        if items > max_items and combos <= max_combos and upstream_ok:
            self.c.add(here, f"step {st.id!r} expands to {items:,} work items ({sources:,} source images x "
                       f"{combos:,} combinations), more than the {max_items:,} a step may have",
                       f"split the batch over several manifests, or raise the limit with {LIMIT_ENV['step_items']}=N")


def _chain_depths(steps_raw: list[Any], step_pos: dict[str, int]) -> dict[str, int]:
    """How many for_each links each step is below a step that reads inputs (0: none)."""
    depth: dict[str, int] = {}
    for i, s in enumerate(steps_raw):
        if isinstance(s, dict) and isinstance(s.get("id"), str):
            fe = s.get("for_each")
            up = fe if isinstance(fe, str) and fe in depth and step_pos.get(fe, i) < i else None
            depth.setdefault(s["id"], depth[up] + 1 if up is not None else 0)
    return depth
