"""Dry-run cost estimates: what a manifest will cost before anything is sent.

Two layers:

- **Aggregation (pure).** ``EstimateBuilder`` takes work items one at a time (the stream
  ``expand()`` yields), prices each with ``PriceTable.price`` and adds it to a line per
  (step, price tier). It keeps counters, never the items, plus a few examples of items
  whose price is a range, so a million-item manifest is estimated in constant memory
  (apart from one 128-bit integer per distinct item key, to count a request that appears
  twice once: identical requests are sent once). ``estimate_items`` and ``estimate`` are
  thin wrappers.

- **Sizing (I/O at the edge).** ``estimate_manifest`` runs the strategy the estimate
  command uses: expand once without sizes; if some prices are ranges because an input's
  size is unknown (factor-mode upscale, directly or downstream of a ``match_input_image``
  edit), probe just those inputs' URLs (``probe.py``, cached in the state file) and expand
  again with a ``sizes`` lookup. Without probing (``probe=False``) cached sizes are still
  used, and the rest stay ranges, with the reason and a few examples per step.

The estimate assumes every item is charged exactly once: the price table says which
terminal statuses are charged (FAILED is, ERROR is not); retries of uncharged failures
cost nothing and charged failures are not retried.

Every amount is integer micro-dollars; ``estimate_to_dict`` also gives decimal strings.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .errors import BudgetExceeded
from .items import WorkItem
from .money import format_usd, micros_to_decimal
from .pricing import Price, PriceTable
from .sizes import Size

MAX_EXAMPLES = 3
_NOT_PRICED = frozenset({"image", "images", "prompt"})
_MEMO_MAX = 10_000  # distinct (parameters, input size) combinations remembered


@dataclass(frozen=True, slots=True)
class EstimateLine:
    """Items of one step at one price tier (or, when uncertain, one range of tiers)."""

    step: str
    op: str
    tier: str  # the tier's name; "low .. high" when the price is a range
    count: int
    unit_low_micros: int
    unit_high_micros: int
    reason: str | None = None  # why the price is a range; None when exact

    @property
    def exact(self) -> bool:
        return self.unit_low_micros == self.unit_high_micros and self.reason is None

    @property
    def unit_micros(self) -> int:
        """The unit price (the upper bound when the line is a range)."""
        return self.unit_high_micros

    @property
    def subtotal_low_micros(self) -> int:
        return self.count * self.unit_low_micros

    @property
    def subtotal_high_micros(self) -> int:
        return self.count * self.unit_high_micros

    @property
    def subtotal_micros(self) -> int:
        """The subtotal (the upper bound when the line is a range)."""
        return self.subtotal_high_micros

    @property
    def uncertain_count(self) -> int:
        return 0 if self.exact else self.count


@dataclass(frozen=True, slots=True)
class Uncertain:
    """Items of one step priced as a range for one reason, with a few examples."""

    step: str
    reason: str
    count: int
    examples: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ProbeFailure:
    url: str
    error: str
    input_ids: tuple[str, ...] = ()  # a few of the inputs that use this URL


@dataclass(frozen=True, slots=True)
class SizeSummary:
    """Where the input sizes that matter to the price came from."""

    declared: int = 0  # inputs with width/height in the manifest
    needed: int = 0  # inputs whose undeclared size changes a price
    probed: int = 0  # ... sized by a probe now
    cached: int = 0  # ... sized from the probe cache
    unknown: int = 0  # ... still unknown (not probed, or the probe failed)
    failures: tuple[ProbeFailure, ...] = ()
    cache_note: str | None = None  # the probe cache could not be used, and why
    probing: bool = True


@dataclass(frozen=True, slots=True)
class Estimate:
    lines: tuple[EstimateLine, ...]
    low_micros: int
    high_micros: int
    item_count: int  # distinct requests (a request appearing twice is sent and charged once)
    uncertain: tuple[Uncertain, ...] = ()
    assumptions: tuple[str, ...] = ()
    duplicates: int = 0  # items that repeat an earlier item's request
    sizes: SizeSummary | None = None
    table_source: str = ""
    table_effective_date: str = ""
    table_path: str = ""

    @property
    def exact(self) -> bool:
        return self.low_micros == self.high_micros and not self.uncertain

    @property
    def uncertain_count(self) -> int:
        return sum(u.count for u in self.uncertain)

    def total_text(self) -> str:
        if self.low_micros == self.high_micros:
            return format_usd(self.high_micros)
        return f"{format_usd(self.low_micros)} - {format_usd(self.high_micros)}"


#: ``cause(item)`` says why an item's input size is unknown: (category, detail), e.g.
#: ("probe failed", "hero: HTTP 404 Not Found"); None when there is nothing to add.
Cause = Callable[[WorkItem], "tuple[str, str] | None"]


class EstimateBuilder:
    """Aggregates priced items as they stream by; ``build()`` returns the ``Estimate``."""

    def __init__(self, table: PriceTable, *, cause: Cause | None = None, max_examples: int = MAX_EXAMPLES,
                 dedupe: bool = True):
        self.table = table
        self.cause = cause
        self.max_examples = max_examples
        self.dedupe = dedupe
        self._lines: dict[tuple[str, str, str, str, str | None], list[int]] = {}
        self._uncertain: dict[tuple[str, str], tuple[list[int], list[str]]] = {}
        self._seen: set[int] = set()
        self._memo: dict[tuple[Any, ...], tuple[Price, str | None, tuple]] = {}
        self.item_count = 0
        self.duplicates = 0

    def add(self, item: WorkItem) -> Price | None:
        """Price and count one item; None (not counted) when it repeats an earlier request."""
        if self.dedupe:
            k = int(item.key, 16)
            seen = self._seen
            if k in seen:
                self.duplicates += 1
                return None
            seen.add(k)
        price, reason, lk = self._price(item)
        self.item_count += 1
        line = self._lines.get(lk)
        if line is None:
            self._lines[lk] = [1, price.low_micros, price.high_micros]
        else:
            line[0] += 1
        if reason is not None:
            self._add_uncertain(item, reason)
        return price

    def _price(self, item: WorkItem) -> tuple[Price, str | None, tuple]:
        """``table.price`` with the item's line key, memoised on everything but the image URLs
        and the prompt (which never change a price), so the many items of a matrix are priced once."""
        body = item.body
        try:
            k = (item.step, item.op, item.input_size, *[(a, v) for a, v in body.items() if a not in _NOT_PRICED])
            hit = self._memo.get(k)
        except TypeError:  # an unhashable parameter value: price it directly
            return self._entry(item, self.table.price(item.op, body, item.input_size))
        if hit is None:
            hit = self._entry(item, self.table.price(item.op, body, item.input_size))
            if len(self._memo) < _MEMO_MAX:
                self._memo[k] = hit
        return hit

    @staticmethod
    def _entry(item: WorkItem, price: Price) -> tuple[Price, str | None, tuple]:
        reason = None if price.exact else (price.reason or "price depends on unknown inputs")
        return price, reason, (item.step, item.op, price.low.name, price.high.name, reason)

    def add_priced(self, item: WorkItem, price: Price) -> Price:
        _price, reason, lk = self._entry(item, price)
        self.item_count += 1
        line = self._lines.get(lk)
        if line is None:
            self._lines[lk] = [1, price.low_micros, price.high_micros]
        else:
            line[0] += 1
        if reason is not None:
            self._add_uncertain(item, reason)
        return price

    def _add_uncertain(self, item: WorkItem, reason: str) -> None:
        why = self.cause(item) if self.cause else None
        category, detail = why if why else ("", "")
        uk = (item.step, f"{reason}: {category}" if category else reason)
        entry = self._uncertain.get(uk)
        if entry is None:
            entry = self._uncertain[uk] = ([0], [])
        entry[0][0] += 1
        if len(entry[1]) < self.max_examples:
            entry[1].append(_example(item, detail))

    def build(self, *, assumptions: Iterable[str] = (), sizes: SizeSummary | None = None) -> Estimate:
        lines = tuple(
            EstimateLine(step=step, op=op, tier=lo if lo == hi else f"{lo} .. {hi}", count=n,
                         unit_low_micros=ul, unit_high_micros=uh, reason=reason)
            for (step, op, lo, hi, reason), (n, ul, uh) in self._lines.items()
        )
        uncertain = tuple(
            Uncertain(step=step, reason=reason, count=c[0], examples=tuple(ex))
            for (step, reason), (c, ex) in self._uncertain.items()
        )
        return Estimate(
            lines=lines,
            low_micros=sum(x.subtotal_low_micros for x in lines),
            high_micros=sum(x.subtotal_high_micros for x in lines),
            item_count=self.item_count,
            uncertain=uncertain,
            assumptions=tuple(assumptions),
            duplicates=self.duplicates,
            sizes=sizes,
            table_source=self.table.source,
            table_effective_date=self.table.effective_date,
            table_path=self.table.path,
        )


def _example(item: WorkItem, detail: str) -> str:
    where = f"{item.output_name} (input {item.input_id})"
    return f"{where}: {detail}" if detail else where


def estimate_items(items: Iterable[WorkItem], table: PriceTable, *, cause: Cause | None = None,
                   assumptions: Iterable[str] = (), sizes: SizeSummary | None = None) -> Estimate:
    """The estimate of a stream of work items (pure; constant memory but for item keys)."""
    b = EstimateBuilder(table, cause=cause)
    for item in items:
        b.add(item)
    return b.build(assumptions=assumptions, sizes=sizes)


# -- sizing: expand, probe what matters, expand again ---------------------------------


def estimate(manifest: Any, table: PriceTable, *, sizes: Callable[[str], Size | None] | None = None,
             cause: Cause | None = None, size_summary: SizeSummary | None = None) -> Estimate:
    """The estimate of ``manifest`` (pure over ``expand``).

    ``sizes(url)`` gives the size of root inputs whose size is not declared (or None);
    chained items are priced from the size their upstream will produce.
    """
    from .expand import expand

    b = EstimateBuilder(table, cause=cause)
    for item in expand(manifest, sizes=sizes):
        b.add(item)
    return _finish(b, size_summary)


def estimate_manifest(manifest: Any, table: PriceTable, *, state_path: str | Path | None = None,
                      probe: bool = True, refresh: bool = False, concurrency: int = 16,
                      timeout: float = 10.0, transport: Any = None, check_names: bool = False) -> Estimate:
    """The estimate command's strategy: price, probe only the inputs whose size matters, re-price.

    ``state_path`` (default ``manifest.state_path``) holds the probe cache; a state file
    locked by a running ``pixbatch run`` is skipped (the estimate says so). With
    ``probe=False`` nothing is fetched: cached sizes are used, the rest stay ranges.
    The output names of a manifest whose names are not checked yet (``load_manifest_shallow``)
    are checked on the first walk (``check_names`` forces it); a name that escapes output_dir
    or repeats in a step is a ManifestError.
    """
    from .expand import expand
    from .manifest.names import NameCheck

    first = EstimateBuilder(table)
    need: set[str] = set()
    names = NameCheck(manifest) if check_names or not manifest.names_checked else None
    for item in names.wrap(expand(manifest)) if names else expand(manifest):
        price = first.add(item)
        if price is not None and price.low is not price.high and not price.exact:
            need.add(item.input_id)
    if names:
        names.verify()

    declared = 0
    url_of: dict[str, str] = {}
    for inp in manifest.iter_inputs():
        if inp.size is not None:
            declared += 1
        if inp.id in need:
            url_of[inp.id] = inp.url
    if not need:
        return _finish(first, SizeSummary(declared=declared, probing=probe))
    del first  # the second pass below builds its own (and needs the memory)

    from .probe import probe_sizes_report  # imports duckdb, httpx, Pillow: only when needed

    state = Path(state_path if state_path is not None else manifest.state_path)
    use_cache = probe or state.exists()
    rep = probe_sizes_report(url_of.values(), cache_path=state if use_cache else None, fetch=probe,
                             refresh=refresh, concurrency=concurrency, timeout=timeout, transport=transport)
    results = rep.results
    sized = {u: r.size for u, r in results.items() if r.size is not None}
    probed = cached = 0
    ids_of_url: dict[str, list[str]] = {}
    for input_id, url in url_of.items():
        r = results.get(url)
        if r is not None and r.size is not None:
            if r.cached:
                cached += 1
            else:
                probed += 1
        elif r is not None:
            ids_of_url.setdefault(url, []).append(input_id)
    failures = tuple(
        ProbeFailure(url=u, error=results[u].error or "unknown", input_ids=tuple(ids[:MAX_EXAMPLES]))
        for u, ids in ids_of_url.items()
    )
    summary = SizeSummary(declared=declared, needed=len(need), probed=probed, cached=cached,
                          unknown=len(need) - probed - cached, failures=failures, cache_note=rep.cache_note,
                          probing=probe)
    return estimate(manifest, table, sizes=sized.get if sized else None, cause=_cause(url_of, results, probe),
                    size_summary=summary)


def _cause(url_of: dict[str, str], results: dict[str, Any], probing: bool) -> Cause:
    def cause(item: WorkItem) -> tuple[str, str] | None:
        url = url_of.get(item.input_id)
        r = results.get(url) if url is not None else None
        if r is not None and r.error is not None:
            return "the probe failed", f"{r.error} ({url})"
        if not probing:
            return "size not declared and not probed (--no-probe)", ""
        return "size not declared", ""

    return cause


def _finish(b: EstimateBuilder, summary: SizeSummary | None) -> Estimate:
    est = b.build(sizes=summary)
    return replace(est, assumptions=assumptions_for(est, b.table, summary))


def assumptions_for(est: Estimate, table: PriceTable, summary: SizeSummary | None) -> tuple[str, ...]:
    """What the estimate took for granted, in words, for the user to check."""
    out = [f"prices: {table.source} (effective {table.effective_date}; table {table.path})"]
    if summary is not None:
        s = summary
        if s.needed == 0:
            out.append(f"input sizes: {s.declared} declared in the manifest; no undeclared size changes a price, "
                       "so nothing was probed")
        else:
            how = "probed" if s.probing else "not probed (--no-probe)"
            out.append(f"input sizes: {s.declared} declared in the manifest; {s.needed} input(s) without a declared "
                       f"size change a price and were {how}: {s.probed} probed now, {s.cached} from the probe cache, "
                       f"{s.unknown} unknown (priced as a range)")
        if s.cache_note:
            out.append(f"{s.cache_note} (the estimate works without it)")
    ops = {line.op for line in est.lines}
    out += [text for op, text in _OP_ASSUMPTIONS.items() if op in ops]
    charged = ", ".join(sorted(table.charged_statuses))
    out.append(f"charged terminal statuses: {charged}; ERROR is not charged. The estimate assumes every item "
               "is charged exactly once (charged failures are not retried)")
    if est.duplicates:
        out.append(f"{est.duplicates} items repeat an identical request elsewhere in the manifest; it is sent and "
                   "charged once")
    return tuple(out)


#: what the estimate assumes about each operation, said when the manifest uses it
_OP_ASSUMPTIONS = {
    "edit": "edit outputs are assumed to be about 1 MP (1024x1024 at 1:1, sides multiples of 16) at the "
            "requested aspect ratio; match_input_image takes the main input's ratio; steps fed by an edit "
            "are priced from that size",
    "upscale": "upscale is priced by output megapixels: target mode outputs `target` MP; factor mode "
               "multiplies each side, capped at 8 MP; exactly the tier limit is the lower tier",
}


def check_budget(est: Estimate, budget_micros: int | None) -> None:
    """``BudgetExceeded`` when the estimate's upper bound is over ``budget_micros`` (None: no budget)."""
    if budget_micros is not None and est.high_micros > budget_micros:
        raise BudgetExceeded(
            f"the estimate's upper bound {format_usd(est.high_micros)} exceeds the budget {format_usd(budget_micros)} "
            f"(lower bound {format_usd(est.low_micros)}). Raise --budget or budget_usd in the manifest, or remove items."
        )


# -- rendering ----------------------------------------------------------------------


def _usd(micros: int) -> str:
    return str(micros_to_decimal(micros))


def _money(micros: int) -> dict[str, Any]:
    return {"micros": micros, "usd": _usd(micros)}


def estimate_to_dict(est: Estimate, *, budget_micros: int | None = None) -> dict[str, Any]:
    """A JSON-ready estimate: every amount as integer micros and as a decimal string."""
    s = est.sizes
    return {
        "total": {"low": _money(est.low_micros), "high": _money(est.high_micros), "exact": est.exact},
        "budget": None if budget_micros is None else {
            **_money(budget_micros), "fits": est.high_micros <= budget_micros},
        "item_count": est.item_count,
        "duplicates": est.duplicates,
        "lines": [
            {"step": x.step, "op": x.op, "tier": x.tier, "count": x.count, "exact": x.exact,
             "unit_low": _money(x.unit_low_micros), "unit_high": _money(x.unit_high_micros),
             "subtotal_low": _money(x.subtotal_low_micros), "subtotal_high": _money(x.subtotal_high_micros),
             "reason": x.reason}
            for x in est.lines
        ],
        "uncertain": [{"step": u.step, "reason": u.reason, "count": u.count, "examples": list(u.examples)}
                      for u in est.uncertain],
        "sizes": None if s is None else {
            "declared": s.declared, "needed": s.needed, "probed": s.probed, "cached": s.cached,
            "unknown": s.unknown, "probing": s.probing, "cache_note": s.cache_note,
            "probe_errors": [{"url": f.url, "error": f.error, "inputs": list(f.input_ids)} for f in s.failures],
        },
        "price_table": {"source": est.table_source, "effective_date": est.table_effective_date,
                        "path": est.table_path},
        "assumptions": list(est.assumptions),
    }


def render_estimate(est: Estimate, console: Any, *, budget_micros: int | None = None,
                    max_errors: int = 20) -> None:
    """Print the estimate as rich tables: lines, total, uncertain items, probe errors, assumptions."""
    from rich.table import Table

    def rng(lo: int, hi: int) -> str:
        return format_usd(hi) if lo == hi else f"{format_usd(lo)} - {format_usd(hi)}"

    t = Table(title="Estimate", show_footer=True)
    t.add_column("step", footer="total")
    t.add_column("op")
    t.add_column("price tier")
    t.add_column("count", justify="right", footer=f"{est.item_count:,}")
    t.add_column("unit", justify="right")
    t.add_column("subtotal", justify="right", footer=est.total_text())
    for x in est.lines:
        t.add_row(x.step, x.op, x.tier, f"{x.count:,}", rng(x.unit_low_micros, x.unit_high_micros),
                  rng(x.subtotal_low_micros, x.subtotal_high_micros))
    console.print(t)
    if est.exact:
        console.print(f"Total: {est.total_text()} (exact) for {est.item_count:,} requests")
    else:
        console.print(f"Total: {est.total_text()} (a range: {est.uncertain_count:,} items have an uncertain price)")
    if budget_micros is not None:
        verdict = "fits" if est.high_micros <= budget_micros else "EXCEEDS"
        console.print(f"Budget: {format_usd(budget_micros)} ({verdict} the upper bound {format_usd(est.high_micros)})")
    if est.uncertain:
        console.print("\nUncertain prices:")
        for u in est.uncertain:
            console.print(f"  {u.step}: {u.count:,} items - {u.reason}", markup=False, highlight=False)
            for ex in u.examples:
                console.print(f"      e.g. {ex}", markup=False, highlight=False)
    if est.sizes is not None and est.sizes.failures:
        fails = est.sizes.failures
        console.print(f"\nBad inputs ({len(fails):,} URLs cannot be fetched or are not images):", highlight=False)
        console.print("  priced as a range here; `run` checks them again before sending, and leaves their items "
                      "BAD_INPUT (not sent, not charged) unless they are fixed.", markup=False, highlight=False)
        for f in fails[:max_errors]:
            ids = ", ".join(f.input_ids)
            console.print(f"  input {ids}: {f.url}: {f.error}", markup=False, highlight=False)
        if len(fails) > max_errors:
            console.print(f"  ... and {len(fails) - max_errors:,} more (see --json)")
    console.print("\nAssumptions:")
    for a in est.assumptions:
        console.print(f"  - {a}", markup=False, highlight=False)
