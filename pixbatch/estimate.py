"""Dry-run cost estimates: what a manifest will cost before anything is sent, and, once a
state file holds results, a *plan*: what is paid already and what is still to pay.

Three layers:

- **Aggregation (pure).** ``EstimateBuilder`` takes work items one at a time (the stream
  ``expand()`` yields), prices each with ``knowledge.price_item`` and adds it to a line per
  (step, price tier). It keeps counters, never the items, plus a few examples of items
  whose price is a range, in constant memory but for ~20 bytes per distinct key (a
  ``KeySet``: a request that appears twice is sent, and counted, once).

- **The plan (state-aware).** Given what a state file holds (``plan.StateView``), an item
  already there is counted where it stands (``plan.category``: paid, in flight, at risk, not
  sent again); only the rest is *still to pay*, the estimate's total. A chained item whose upstream completed is priced from the
  upstream's real output size, and sizes and the reading of MP learned from completed items
  (``knowledge.learn``) price the rest. ``plan_from_groups`` builds the same plan from the
  state file alone (``state.plan_groups``): what ``pixbatch run`` prints before it starts,
  with the same numbers as ``pixbatch estimate`` (one price function, one aggregation).

- **Sizing (I/O at the edge).** ``estimate_manifest`` runs the strategy the estimate
  command uses: read the state file (unless ``fresh``), expand once without sizes; if some
  prices are ranges because an input's size is unknown (factor-mode upscale, directly or
  downstream of a ``match_input_image`` edit), probe just those inputs' URLs (``probe.py``,
  cached in the state file) and expand again with a ``sizes`` lookup. Without probing
  (``probe=False``) cached sizes are still used, and the rest stay ranges.

A price that rests on a guess is a range with its reason (``pricing.py``): an unknown input
size, an output size predicted for an upstream step that has not run, an output between the
two readings of a tier boundary, factor-mode rounding. Each uncertain group says why and,
where one exists, the manifest change that makes its price exact (``Uncertain.suggestion``).

Every item is assumed charged once: the price table says which terminal statuses are
charged (FAILED is, ERROR is not); charged failures are not retried.

Every amount is integer micro-dollars; ``estimate_render`` shows an estimate (JSON, tables).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .errors import BudgetExceeded
from .items import WorkItem
from .keyset import KeySet
from .knowledge import Knowledge, megapixel_text, price_item
from .money import format_usd
from .plan import BLOCKING, NOT_SENT, StateView, category, read_state
from .pricing import REASON_UNKNOWN, Price, PriceTable
from .sizes import ASSUMED_SLACK_PX, ASSUMED_SLACK_RATIO, Size, factor_size

MAX_EXAMPLES = 3
_MEMO_MAX = 10_000  # distinct pricing facts remembered

@dataclass(frozen=True, slots=True)
class EstimateLine:
    """Items of one step still to pay, at one price tier (or, when uncertain, one range of tiers)."""

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
class PlanLine:
    """Items of one step the state file already holds, in one category (``CATEGORIES``), at one tier.

    The tier is the one their money names (a charge or a reservation), else their estimated one.
    """

    step: str
    op: str
    tier: str
    category: str
    count: int
    micros: int  # charged (paid), reserved (in flight, at risk), 0 (not sent)


@dataclass(frozen=True, slots=True)
class Uncertain:
    """Items of one step priced as a range for one reason, with a few examples."""

    step: str
    reason: str
    count: int
    examples: tuple[str, ...]
    low_micros: int = 0  # the unit price range (the widest of the group)
    high_micros: int = 0
    suggestion: str | None = None  # a manifest change that prices them exactly


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
    lines: tuple[EstimateLine, ...]  # what is still to pay
    low_micros: int  # still to pay (everything, without a state file or with --fresh)
    high_micros: int
    item_count: int  # distinct requests (a request appearing twice is sent and charged once)
    uncertain: tuple[Uncertain, ...] = ()
    assumptions: tuple[str, ...] = ()
    duplicates: int = 0  # items that repeat an earlier item's request
    sizes: SizeSummary | None = None
    table_source: str = ""
    table_effective_date: str = ""
    table_path: str = ""
    plan: tuple[PlanLine, ...] = ()  # items the state file already holds (paid, in flight, ...)
    state_path: str | None = None  # the state file this plan read (None: priced as new)
    state_note: str | None = None  # the state file could not be read, and why

    @property
    def exact(self) -> bool:
        return self.low_micros == self.high_micros and not self.uncertain

    @property
    def uncertain_count(self) -> int:
        return sum(u.count for u in self.uncertain)

    @property
    def to_pay_count(self) -> int:
        return sum(x.count for x in self.lines)

    def category_total(self, cat: str) -> tuple[int, int]:
        """(items, micros) of one plan category."""
        lines = [x for x in self.plan if x.category == cat]
        return sum(x.count for x in lines), sum(x.micros for x in lines)

    def total_text(self) -> str:
        if self.low_micros == self.high_micros:
            return format_usd(self.high_micros)
        return f"{format_usd(self.low_micros)} - {format_usd(self.high_micros)}"


#: ``cause(item)`` says why an item's input size is unknown: (category, detail), e.g.
#: ("probe failed", "hero: HTTP 404 Not Found"); None when there is nothing to add.
Cause = Callable[[WorkItem], "tuple[str, str] | None"]


class EstimateBuilder:
    """Aggregates priced items as they stream by; ``build()`` returns the ``Estimate``.

    ``knowledge`` (what completed items taught) and ``state`` (what the state file holds)
    make it a plan; ``upstream_ops`` maps a chained step to its upstream step's operation.
    """

    def __init__(self, table: PriceTable, *, cause: Cause | None = None, max_examples: int = MAX_EXAMPLES,
                 dedupe: bool = True, knowledge: Knowledge | None = None, state: StateView | None = None,
                 upstream_ops: Mapping[str, str] | None = None):
        self.table = table
        self.cause = cause
        self.max_examples = max_examples
        self.dedupe = dedupe
        self.knowledge = knowledge or Knowledge()
        self.state = state
        self.upstream_ops = upstream_ops or {}
        self._lines: dict[tuple[str, str, str, str, str | None], list[int]] = {}
        self._plan: dict[tuple[str, str, str, str], list[int]] = {}
        self._uncertain: dict[tuple[str, str], list[Any]] = {}
        self._seen = KeySet()  # ~20 bytes a key (a set of ints: ~80)
        self._blocked: set[int] = set()  # keys of items a run would block (their upstream ended in failure)
        self._memo: dict[tuple[Any, ...], tuple[Price, str | None, tuple]] = {}
        self.unknown_inputs: set[str] = set()  # input ids of items still to pay whose input size is unknown
        self.item_count = 0
        self.duplicates = 0

    def add(self, item: WorkItem) -> Price | None:
        """Price and count one item; None (not counted) when it repeats an earlier request."""
        if self.dedupe and not (self._seen.add(bytes.fromhex(item.key)) if item.first is None else item.first):
            self.duplicates += 1  # a repeat (the walk knows, expand(..., unique=True), or the KeySet tells)
            return None
        state = self.state
        chained = item.upstream is not None
        up_out = state.output_of(item.upstream) if chained and state is not None else None  # type: ignore[arg-type]
        price, reason, lk = self._price(item.step, item.op, item.body, item.input_size, chained,
                                        self.upstream_ops.get(item.step), up_out)
        if state is None and reason is None and price.reason != REASON_UNKNOWN:  # the common case, as
            self.item_count += 1  # _count does it (no example needed), without its per-call allocations
            line = self._lines.get(lk)
            if line is None:
                self._lines[lk] = [1, price.low_micros, price.high_micros]
            else:
                line[0] += 1
            return price
        if state is not None:
            touched = state.of(item.key)
            if touched is not None:
                cat = category(touched[0], touched[1])
                if cat is not None:
                    self._add_plan(item.step, item.op, price, cat, 1, touched[2])
                    return price
            if chained:
                up = state.of(item.upstream)  # type: ignore[arg-type]
                if up is not None and up[0] in BLOCKING or int(item.upstream, 16) in self._blocked:  # type: ignore[arg-type]
                    self._blocked.add(int(item.key, 16))  # the run blocks it: never sent
                    self._add_plan(item.step, item.op, price, NOT_SENT, 1, 0)
                    return price
        self._count(item.step, item.op, price, reason, lk, 1, lambda: item,
                    self.cause if price.reason == REASON_UNKNOWN else None, (item.body, item.input_size))
        if price.reason == REASON_UNKNOWN:
            self.unknown_inputs.add(item.input_id)
        return price

    def add_group(self, g: Any) -> None:
        """Count a group of items of the state file (``state.PlanGroup``) at once."""
        price, reason, lk = self._price(g.step, g.op, g.params, g.input_size, g.chained, g.upstream_op,
                                        g.upstream_output)
        cat = category(g.state, g.charged)
        if cat is not None:
            self._add_plan(g.step, g.op, price, cat, g.count, g.money or 0)
            return
        self._count(g.step, g.op, price, reason, lk, g.count, lambda: g.example, None, (g.params, g.input_size))

    def _price(self, step: str, op: str, body: Mapping[str, Any], input_size: Size | None, chained: bool,
               upstream_op: str | None, upstream_output: Size | None) -> tuple[Price, str | None, tuple]:
        """``knowledge.price_item`` with the reason and line key, memoised on the facts a price depends on
        (so the many items of a matrix are priced, and their line key built, once)."""
        params = ((body.get("upscale_mode", "target"), body.get("target", 4), body.get("factor", 2))
                  if op == "upscale" else ())
        k = (step, op, params, input_size, chained, upstream_op, upstream_output)
        hit = self._memo.get(k)
        if hit is None:
            price = price_item(self.table, self.knowledge, op, body, input_size, chained=chained,
                               upstream_op=upstream_op, upstream_output=upstream_output)[0]
            hit = _entry(step, op, price)
            if len(self._memo) < _MEMO_MAX:
                self._memo[k] = hit
        return hit

    def add_priced(self, item: WorkItem, price: Price) -> Price:
        """Count one item still to pay at ``price``."""
        _, reason, lk = _entry(item.step, item.op, price)
        self._count(item.step, item.op, price, reason, lk, 1, lambda: item,
                    self.cause if price.reason == REASON_UNKNOWN else None, (item.body, item.input_size))
        if price.reason == REASON_UNKNOWN:
            self.unknown_inputs.add(item.input_id)
        return price

    def _count(self, step: str, op: str, price: Price, reason: str | None, lk: tuple, n: int,
               example: Callable[[], Any], cause: Cause | None, facts: tuple[Mapping[str, Any], Size | None]) -> None:
        self.item_count += n
        line = self._lines.get(lk)
        if line is None:
            self._lines[lk] = [n, price.low_micros, price.high_micros]
        else:
            line[0] += n
        if reason is None:
            return
        why = cause(example()) if cause else None
        what, detail = why if why else ("", "")
        uk = (step, f"{reason}: {what}" if what else reason)
        entry = self._uncertain.get(uk)
        if entry is None:
            entry = self._uncertain[uk] = [0, [], price.low_micros, price.high_micros,
                                           suggestion(self.knowledge.table(self.table), op, *facts)]
        entry[0] += n
        entry[2], entry[3] = min(entry[2], price.low_micros), max(entry[3], price.high_micros)
        if len(entry[1]) < self.max_examples:
            ex = example()
            entry[1].append(_example(ex, detail) if isinstance(ex, WorkItem) else str(ex))

    def _add_plan(self, step: str, op: str, price: Price, cat: str, n: int, money: int) -> None:
        """Count ``n`` items the state file holds, each with ``money`` (its charge or reservation)."""
        self.item_count += n
        unit = 0 if cat == NOT_SENT else money or price.high_micros  # no reservation recorded: the most it costs
        label = (_tier_named(self.table, op, unit) if unit else None) or (
            price.high.name if price.exact else f"{price.low.name} .. {price.high.name}")
        pk = (step, op, label, cat)
        line = self._plan.get(pk)
        if line is None:
            self._plan[pk] = [n, unit * n]
        else:
            line[0] += n
            line[1] += unit * n

    def build(self, *, assumptions: Iterable[str] = (), sizes: SizeSummary | None = None) -> Estimate:
        lines = tuple(
            EstimateLine(step=step, op=op, tier=lo if lo == hi else f"{lo} .. {hi}", count=n,
                         unit_low_micros=ul, unit_high_micros=uh, reason=reason)
            for (step, op, lo, hi, reason), (n, ul, uh) in self._lines.items()
        )
        uncertain = tuple(
            Uncertain(step=step, reason=reason, count=c, examples=tuple(ex), low_micros=lo, high_micros=hi,
                      suggestion=fix)
            for (step, reason), (c, ex, lo, hi, fix) in self._uncertain.items()
        )
        plan = tuple(PlanLine(step, op, tier, cat, n, micros)
                     for (step, op, tier, cat), (n, micros) in self._plan.items())
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
            plan=plan,
            state_path=self.state.path if self.state is not None else None,
        )


def _entry(step: str, op: str, price: Price) -> tuple[Price, str | None, tuple]:
    """A price with its reason (None: exact) and the key of its line."""
    reason = None if price.exact else (price.reason or "price depends on unknown inputs")
    return price, reason, (step, op, price.low.name, price.high.name, reason)


def _tier_named(table: PriceTable, op: str, micros: int) -> str | None:
    """The tier of ``op`` that costs ``micros``, when exactly one does."""
    names = [t.name for t in table.tiers if t.op == op and t.price_micros == micros]
    return names[0] if len(names) == 1 else None


def _example(item: WorkItem, detail: str) -> str:
    where = f"{item.output_name} (input {item.input_id})"
    return f"{where}: {detail}" if detail else where


def suggestion(table: PriceTable, op: str, body: Mapping[str, Any], input_size: Size | None) -> str | None:
    """The manifest change that prices an uncertain factor-mode upscale exactly: target mode, whose
    output is ``target`` MP under every reading of MP and whatever the input's size."""
    if op != "upscale" or body.get("upscale_mode", "target") != "factor":
        return None
    m = table.megapixel
    if input_size is None:
        t = 4
        about = "whatever the input's size"
    else:
        w, h = factor_size(input_size, body.get("factor", 2), m)
        t = min(8, max(1, round(w * h / m)))
        about = f"about the same size: {t} MP"
    price = table.upscale_tier_for_pixels(t * m).price_micros
    return f"`upscale_mode: target` with `target: {t}` prices them at {format_usd(price)} each, exactly ({about})"


def estimate_items(items: Iterable[WorkItem], table: PriceTable, *, cause: Cause | None = None,
                   assumptions: Iterable[str] = (), sizes: SizeSummary | None = None) -> Estimate:
    """The estimate of a stream of work items (pure; constant memory but for item keys)."""
    b = EstimateBuilder(table, cause=cause)
    for item in items:
        b.add(item)
    return b.build(assumptions=assumptions, sizes=sizes)


def upstream_ops(manifest: Any) -> dict[str, str]:
    """step id -> the operation of the step it feeds on, for the chained steps of ``manifest``."""
    return {s.id: manifest.step(s.upstream).op for s in manifest.steps if s.upstream is not None}


def plan_from_groups(groups: Iterable[Any], table: PriceTable, knowledge: Knowledge, *,
                     state_path: str | None = None) -> Estimate:
    """The plan of an expansion already in a state file (``state.plan_groups``): what ``run`` prints."""
    b = EstimateBuilder(table, knowledge=knowledge, dedupe=False, state=StateView(path=state_path))
    for g in groups:
        b.add_group(g)
    return _finish(b, None)


# -- sizing: expand, probe what matters, expand again ---------------------------------


def estimate(manifest: Any, table: PriceTable, *, sizes: Callable[[str], Size | None] | None = None,
             cause: Cause | None = None, size_summary: SizeSummary | None = None,
             knowledge: Knowledge | None = None, state: StateView | None = None) -> Estimate:
    """The estimate of ``manifest`` (pure over ``expand``).

    ``sizes(url)`` gives the size of root inputs whose size is not declared (or None);
    chained items are priced from the size their upstream will produce (a range: a
    prediction), or has produced (``state``), or is known to produce (``knowledge``).
    """
    from .expand import expand

    b = EstimateBuilder(table, cause=cause, knowledge=knowledge, state=state, upstream_ops=upstream_ops(manifest))
    for item in expand(manifest, sizes=sizes, unique=True):
        b.add(item)
    return _finish(b, size_summary)


def estimate_manifest(manifest: Any, table: PriceTable, *, state_path: str | Path | None = None,
                      probe: bool = True, refresh: bool = False, concurrency: int = 16,
                      timeout: float = 10.0, transport: Any = None, check_names: bool = False,
                      fresh: bool = False) -> Estimate:
    """The estimate command's strategy: read the state file, price, probe only the inputs whose
    size matters, re-price.

    ``state_path`` (default ``manifest.state_path``) holds the results of earlier runs and the
    probe cache; a state file locked by a running ``pixbatch run`` is skipped (the estimate
    says so). Items it holds are counted as paid, in flight, at risk or not sent again, and
    what they taught prices the rest (a plan); ``fresh`` prices every item as new, as if
    nothing had run. With ``probe=False`` nothing is fetched: cached sizes are used, the rest
    stay ranges. The output names of a manifest whose names are not checked yet
    (``load_manifest_shallow``) are checked on the first walk (``check_names`` forces it); a
    name that escapes output_dir or repeats in a step is a ManifestError.
    """
    from .expand import expand
    from .manifest.names import NameCheck

    state = Path(state_path if state_path is not None else manifest.state_path)
    view, knowledge, note = (None, Knowledge(), None) if fresh else read_state(state, table)
    ops = upstream_ops(manifest)
    first = EstimateBuilder(table, knowledge=knowledge, state=view, upstream_ops=ops)
    names = NameCheck(manifest) if check_names or not manifest.names_checked else None
    for item in names.wrap(expand(manifest, unique=True)) if names else expand(manifest, unique=True):
        first.add(item)
    if names:
        names.verify()
    need = first.unknown_inputs

    counted = not need and manifest.sized_count is not None  # validation counted the sized inputs
    declared = manifest.sized_count if counted else 0
    url_of: dict[str, str] = {}
    for inp in () if counted else manifest.iter_inputs():
        if inp.size is not None:
            declared += 1
        if inp.id in need:
            url_of[inp.id] = inp.url
    if not need:
        return replace(_finish(first, SizeSummary(declared=declared, probing=probe)), state_note=note)
    del first  # the second pass below builds its own (and needs the memory)

    from .probe import probe_sizes_report  # imports duckdb, httpx, Pillow: only when needed

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
    est = estimate(manifest, table, sizes=sized.get if sized else None, cause=_cause(url_of, results, probe),
                   size_summary=summary, knowledge=knowledge, state=view)
    return replace(est, state_note=note)


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
    return replace(est, assumptions=assumptions_for(est, b.table, summary, b.knowledge))


def assumptions_for(est: Estimate, table: PriceTable, summary: SizeSummary | None,
                    knowledge: Knowledge | None = None) -> tuple[str, ...]:
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
    ops = {line.op for line in est.lines} | {line.op for line in est.plan}
    out += [text for op, text in _OP_ASSUMPTIONS.items() if op in ops]
    k = knowledge or Knowledge()
    if "upscale" in ops:
        out.append(_megapixel_assumption(table, k))
    out += k.assumptions(table)
    charged = ", ".join(sorted(table.charged_statuses))
    out.append(f"charged terminal statuses: {charged}; ERROR is not charged. The estimate assumes every item "
               "is charged exactly once (charged failures are not retried)")
    if est.duplicates:
        out.append(f"{est.duplicates} items repeat an identical request elsewhere in the manifest; it is sent and "
                   "charged once")
    if est.plan:
        n = sum(x.count for x in est.plan)
        out.append(f"{n:,} item(s) of this manifest are already in the state file {est.state_path}: paid ones are "
                   "reused (not charged again), the others are counted where they stand; only the rest is still "
                   "to pay (`--fresh` prices every item as new)")
    return tuple(out)


def _megapixel_assumption(table: PriceTable, k: Knowledge) -> str:
    if k.megapixel is not None:
        return f"tier boundaries: 1 MP = {megapixel_text(k.megapixel)} (learned; see below)"
    if table.reading_known:
        return f"tier boundaries: 1 MP = {megapixel_text(table.megapixel)} (the price table says so)"
    others = ", ".join(megapixel_text(m) for m in table.megapixels if m != table.megapixel)
    return (f"tier boundaries: the gateway does not say what 1 MP is; the price table's default is "
            f"{megapixel_text(table.megapixel)}, {others} is possible too: an output between the two readings of a "
            "boundary (4,000,000..4,194,304 px for 4 MP) is priced as a range, until a run learns the reading "
            "from a target-mode output")


#: what the estimate assumes about each operation, said when the manifest uses it
_OP_ASSUMPTIONS = {
    "edit": "edit outputs are predicted to be about 1 MP (1024x1024 at 1:1, sides multiples of 16) at the "
            "requested aspect ratio; match_input_image takes the main input's ratio. The gateway does not "
            "document them (public sources differ by up to 16 px a side), so a step fed by an edit that has not "
            f"run is priced over +-{ASSUMED_SLACK_PX} px (or +-{float(ASSUMED_SLACK_RATIO) * 100:g} %) a side of "
            "that prediction, and from the real size once the edit completed",
    "upscale": "upscale is priced by output megapixels: target mode outputs `target` MP; factor mode "
               "multiplies each side (rounded or floored: not documented, both are priced), capped at 8 MP; "
               "exactly the tier limit is the lower tier",
}
def committed_micros(est: Estimate) -> int:
    """What this manifest's items in the state file already hold of a budget: paid, reserved, at risk."""
    return sum(x.micros for x in est.plan if x.category != NOT_SENT)


def check_budget(est: Estimate, budget_micros: int | None) -> None:
    """``BudgetExceeded`` when what is paid and held plus the upper bound still to pay is over
    ``budget_micros`` (None: no budget)."""
    if budget_micros is None:
        return
    held = committed_micros(est)
    if held + est.high_micros > budget_micros:
        already = f"{format_usd(held)} already paid or held, and " if held else ""
        raise BudgetExceeded(
            f"{already}the estimate's upper bound {format_usd(est.high_micros)} exceeds the budget "
            f"{format_usd(budget_micros)} (lower bound {format_usd(est.low_micros)}). Raise --budget or budget_usd "
            "in the manifest, or remove items."
        )
