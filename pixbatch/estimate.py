"""Dry-run cost estimates: what a manifest will cost before anything is sent, and, once a
state file holds results, a *plan*: what is paid already and what is still to pay.

Three layers:

- **Aggregation (pure).** ``EstimateBuilder`` takes work items one at a time (the stream
  ``expand()`` yields), prices each with ``knowledge.price_item`` and adds it to a line per
  (step, price tier). It keeps counters, never the items, plus a few examples of items
  whose price is a range, so a million-item manifest is estimated in constant memory
  (apart from one 128-bit integer per distinct item key, to count a request that appears
  twice once: identical requests are sent once). ``estimate_items`` and ``estimate`` are
  thin wrappers.

- **The plan (state-aware).** Given what a state file holds (``StateView``: the items that
  are not PENDING, by key), an item already paid is *reused* (not charged again), one sent
  and not settled is *in flight* (reserved), an AMBIGUOUS one is *at risk*, one that ended
  ERROR, FAILED_VALIDATION or BLOCKED is *not sent again*; only the rest is *still to pay*,
  the estimate's total. A chained item whose upstream completed is priced from the
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

The estimate assumes every item is charged exactly once: the price table says which
terminal statuses are charged (FAILED is, ERROR is not); retries of uncharged failures
cost nothing and charged failures are not retried.

Every amount is integer micro-dollars; ``estimate_to_dict`` also gives decimal strings.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .errors import BudgetExceeded
from .items import WorkItem
from .knowledge import Knowledge, megapixel_text, price_item
from .money import format_usd, micros_to_decimal
from .pricing import REASON_ASSUMED, REASON_UNKNOWN, Price, PriceTable
from .sizes import ASSUMED_SLACK_PX, ASSUMED_SLACK_RATIO, Size, factor_size

MAX_EXAMPLES = 3
_MEMO_MAX = 10_000  # distinct pricing facts remembered

#: what the state file says about an item already there, as the plan counts it
PAID, IN_FLIGHT, AT_RISK, NOT_SENT = "paid", "in_flight", "at_risk", "not_sent"
CATEGORIES: dict[str, str] = {
    PAID: "already paid (reused, not charged again)",
    IN_FLIGHT: "in flight (sent, not settled: reserved)",
    AT_RISK: "AMBIGUOUS (may have been charged: at risk; --retry-ambiguous resends them)",
    NOT_SENT: "not sent again: ended ERROR, FAILED_VALIDATION or BLOCKED (not charged; --retry-errors, --force)",
}
_STATES = ("PENDING", "SUBMITTING", "SUBMITTED", "COMPLETED", "FAILED", "ERROR", "AMBIGUOUS", "FAILED_VALIDATION",
           "BLOCKED")
#: an upstream in one of these states blocks its downstream items (``state.BLOCKING``, kept equal by a test)
BLOCKING = frozenset({"FAILED", "ERROR", "FAILED_VALIDATION", "BLOCKED", "AMBIGUOUS"})


def category(state: str, charged: bool) -> str | None:
    """The plan's category of an item in ``state`` (None: PENDING, still to pay)."""
    if state == "PENDING":
        return None
    if state in ("COMPLETED", "FAILED"):
        return PAID if charged else IN_FLIGHT  # a terminal item without a charge is settled by reconcile
    if state in ("SUBMITTING", "SUBMITTED"):
        return IN_FLIGHT
    if state == "AMBIGUOUS":
        return AT_RISK
    return NOT_SENT


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


class StateView:
    """The items of a state file that are not PENDING, by key: what the estimate's walk asks per item.

    One packed integer per item (state, charged?, money, output size), so a finished run of a
    million items costs about a hundred MB here, and a fresh state file nothing.
    """

    def __init__(self, rows: Iterable[tuple[str, str, bool, int, int, int]] = (), path: str | None = None):
        self.path = path
        self._by: dict[int, int] = {}
        index = {s: i for i, s in enumerate(_STATES)}
        for key, state, charged, money, w, h in rows:
            self._by[int(key, 16)] = (index.get(state, len(_STATES) - 1) | (charged << 4) | (int(money) << 5)
                                      | (int(w) << 50) | (int(h) << 70))

    def __len__(self) -> int:
        return len(self._by)

    def of(self, key: str) -> tuple[str, bool, int] | None:
        """(state, charged, money) of an item, None when it is not there (or PENDING)."""
        v = self._by.get(int(key, 16))
        if v is None:
            return None
        return _STATES[v & 15], bool(v >> 4 & 1), v >> 5 & ((1 << 45) - 1)

    def output_of(self, key: str) -> Size | None:
        """The real output size of an item that COMPLETED, when it was recorded."""
        v = self._by.get(int(key, 16))
        if v is None or _STATES[v & 15] != "COMPLETED":
            return None
        w, h = v >> 50 & ((1 << 20) - 1), v >> 70 & ((1 << 20) - 1)
        return (w, h) if w and h else None


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
        self._seen: set[int] = set()
        self._blocked: set[int] = set()  # keys of items a run would block (their upstream ended in failure)
        self._memo: dict[tuple[Any, ...], Price] = {}
        self.unknown_inputs: set[str] = set()  # input ids of items still to pay whose input size is unknown
        self.item_count = 0
        self.duplicates = 0

    def add(self, item: WorkItem) -> Price | None:
        """Price and count one item; None (not counted) when it repeats an earlier request."""
        if self.dedupe:
            k = int(item.key, 16)
            if k in self._seen:
                self.duplicates += 1
                return None
            self._seen.add(k)
        state = self.state
        chained = item.upstream is not None
        up_out = state.output_of(item.upstream) if chained and state is not None else None  # type: ignore[arg-type]
        price = self._price(item.op, item.body, item.input_size, chained, self.upstream_ops.get(item.step), up_out)
        touched = state.of(item.key) if state is not None else None
        if touched is not None:
            cat = category(touched[0], touched[1])
            if cat is not None:
                self._add_plan(item.step, item.op, price, cat, 1, touched[2])
                return price
        if chained and state is not None:
            up = state.of(item.upstream)  # type: ignore[arg-type]
            if up is not None and up[0] in BLOCKING or int(item.upstream, 16) in self._blocked:  # type: ignore[arg-type]
                self._blocked.add(int(item.key, 16))  # the run blocks it: never sent
                self._add_plan(item.step, item.op, price, NOT_SENT, 1, 0)
                return price
        return self.add_priced(item, price)

    def add_group(self, g: Any) -> None:
        """Count a group of items of the state file (``state.PlanGroup``) at once."""
        price = self._price(g.op, g.params, g.input_size, g.chained, g.upstream_op, g.upstream_output)
        cat = category(g.state, g.charged)
        if cat is not None:
            self._add_plan(g.step, g.op, price, cat, g.count, g.money or 0)
            return
        self._count(g.step, g.op, price, g.count, lambda: g.example, None, (g.params, g.input_size))

    def _price(self, op: str, body: Mapping[str, Any], input_size: Size | None, chained: bool,
               upstream_op: str | None, upstream_output: Size | None) -> Price:
        """``knowledge.price_item``, memoised on the facts a price depends on."""
        params = ((body.get("upscale_mode", "target"), body.get("target", 4), body.get("factor", 2))
                  if op == "upscale" else ())
        k = (op, params, input_size, chained, upstream_op, upstream_output)
        price = self._memo.get(k)
        if price is None:
            price = price_item(self.table, self.knowledge, op, body, input_size, chained=chained,
                               upstream_op=upstream_op, upstream_output=upstream_output)[0]
            if len(self._memo) < _MEMO_MAX:
                self._memo[k] = price
        return price

    def add_priced(self, item: WorkItem, price: Price) -> Price:
        """Count one item still to pay at ``price``."""
        self._count(item.step, item.op, price, 1, lambda: item, self.cause if price.reason == REASON_UNKNOWN else None,
                    (item.body, item.input_size))
        if price.reason == REASON_UNKNOWN:
            self.unknown_inputs.add(item.input_id)
        return price

    def _count(self, step: str, op: str, price: Price, n: int, example: Callable[[], Any], cause: Cause | None,
               facts: tuple[Mapping[str, Any], Size | None]) -> None:
        self.item_count += n
        reason = None if price.exact else (price.reason or "price depends on unknown inputs")
        lk = (step, op, price.low.name, price.high.name, reason)
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


# -- the plan from a state file alone ------------------------------------------------------


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
    for item in expand(manifest, sizes=sizes):
        b.add(item)
    return _finish(b, size_summary)


def read_state(path: Path, table: PriceTable) -> tuple[StateView | None, Knowledge, str | None]:
    """What a state file holds for a plan: (its items by key, what they taught, a note when it cannot be read)."""
    if not path.exists():
        return None, Knowledge(), None
    import duckdb

    from . import state as st
    from .errors import StateError, StateLocked
    from .knowledge import learn

    try:
        db = st.open_for_reading(path)
    except StateLocked as exc:
        return None, Knowledge(), (f"{exc} This estimate prices every item as new; the run holding the file "
                                   "prints its own plan.")
    except StateError as exc:
        return None, Knowledge(), f"{exc} Every item is priced as new."
    try:
        if "items" not in st.table_names(db):
            return None, Knowledge(), None
        return (StateView(st.touched_items(db), str(path)), learn(st.size_observations(db), table), None)
    except duckdb.Error as exc:
        return None, Knowledge(), f"state file {path} could not be read ({exc}); every item is priced as new."
    finally:
        db.close()


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
    for item in names.wrap(expand(manifest)) if names else expand(manifest):
        first.add(item)
    if names:
        names.verify()
    need = first.unknown_inputs

    declared = 0
    url_of: dict[str, str] = {}
    for inp in manifest.iter_inputs():
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


# -- rendering ----------------------------------------------------------------------


def _usd(micros: int) -> str:
    return str(micros_to_decimal(micros))


def _money(micros: int) -> dict[str, Any]:
    return {"micros": micros, "usd": _usd(micros)}


def estimate_to_dict(est: Estimate, *, budget_micros: int | None = None) -> dict[str, Any]:
    """A JSON-ready estimate: every amount as integer micros and as a decimal string.

    ``total`` is what is still to pay; ``plan`` (None when no state file was read) what the
    state file already holds of this manifest, per category and per step and tier.
    """
    s = est.sizes
    held = committed_micros(est)
    return {
        "total": {"low": _money(est.low_micros), "high": _money(est.high_micros), "exact": est.exact},
        "budget": None if budget_micros is None else {
            **_money(budget_micros), "fits": held + est.high_micros <= budget_micros},
        "item_count": est.item_count,
        "duplicates": est.duplicates,
        "lines": [
            {"step": x.step, "op": x.op, "tier": x.tier, "count": x.count, "exact": x.exact,
             "unit_low": _money(x.unit_low_micros), "unit_high": _money(x.unit_high_micros),
             "subtotal_low": _money(x.subtotal_low_micros), "subtotal_high": _money(x.subtotal_high_micros),
             "reason": x.reason}
            for x in est.lines
        ],
        "uncertain": [{"step": u.step, "reason": u.reason, "count": u.count, "examples": list(u.examples),
                       "unit_low": _money(u.low_micros), "unit_high": _money(u.high_micros),
                       "suggestion": u.suggestion}
                      for u in est.uncertain],
        "plan": None if est.state_path is None else {
            "state_file": est.state_path,
            "still_to_pay": {"items": est.to_pay_count, "low": _money(est.low_micros), "high": _money(est.high_micros)},
            **{cat: {"items": est.category_total(cat)[0], **_money(est.category_total(cat)[1])} for cat in CATEGORIES},
            "lines": [{"step": x.step, "op": x.op, "tier": x.tier, "category": x.category, "count": x.count,
                       **_money(x.micros)} for x in est.plan],
        },
        "state_note": est.state_note,
        "sizes": None if s is None else {
            "declared": s.declared, "needed": s.needed, "probed": s.probed, "cached": s.cached,
            "unknown": s.unknown, "probing": s.probing, "cache_note": s.cache_note,
            "probe_errors": [{"url": f.url, "error": f.error, "inputs": list(f.input_ids)} for f in s.failures],
        },
        "price_table": {"source": est.table_source, "effective_date": est.table_effective_date,
                        "path": est.table_path},
        "assumptions": list(est.assumptions),
    }


def _rng(lo: int, hi: int) -> str:
    return format_usd(hi) if lo == hi else f"{format_usd(lo)} - {format_usd(hi)}"


def headline(est: Estimate) -> str:
    """The estimate's one line: the total (still to pay, with a plan), exact or a range."""
    how = ("exact" if est.exact else f"a range: {est.uncertain_count:,} items have an uncertain price")
    if est.state_path is None or not est.plan:
        if est.exact:
            return f"Total: {est.total_text()} (exact) for {est.item_count:,} requests"
        return f"Total: {est.total_text()} ({how})"
    parts = []
    for cat, what in ((PAID, "already paid (reused)"), (IN_FLIGHT, "reserved in flight"),
                      (AT_RISK, "at risk (AMBIGUOUS)")):
        n, micros = est.category_total(cat)
        if n:
            parts.append(f"{format_usd(micros)} {what} for {n:,}")
    n_not, _ = est.category_total(NOT_SENT)
    if n_not:
        parts.append(f"{n_not:,} not sent again")
    return (f"Still to pay: {est.total_text()} ({how}) for {est.to_pay_count:,} of {est.item_count:,} requests; "
            + "; ".join(parts))


def render_estimate(est: Estimate, console: Any, *, budget_micros: int | None = None,
                    max_errors: int = 20, title: str | None = None) -> None:
    """Print the estimate (a plan when a state file holds some of it) as rich tables: lines, total,
    uncertain items with their fix, probe errors, assumptions."""
    from rich.table import Table

    if est.plan:
        _render_plan_table(est, console, title or "Plan")
    else:
        t = Table(title=title or "Estimate", show_footer=True)
        t.add_column("step", footer="total")
        t.add_column("op")
        t.add_column("price tier")
        t.add_column("count", justify="right", footer=f"{est.item_count:,}")
        t.add_column("unit", justify="right")
        t.add_column("subtotal", justify="right", footer=est.total_text())
        for x in est.lines:
            t.add_row(x.step, x.op, x.tier, f"{x.count:,}", _rng(x.unit_low_micros, x.unit_high_micros),
                      _rng(x.subtotal_low_micros, x.subtotal_high_micros))
        console.print(t)
    console.print(headline(est), markup=False, highlight=False)
    if est.state_note:
        console.print(est.state_note, markup=False, highlight=False)
    if budget_micros is not None:
        held = committed_micros(est)
        verdict = "fits" if held + est.high_micros <= budget_micros else "EXCEEDS"
        what = (f"{format_usd(held)} held + {format_usd(est.high_micros)} still to pay at most" if held
                else f"the upper bound {format_usd(est.high_micros)}")
        console.print(f"Budget: {format_usd(budget_micros)} ({verdict} {what})", markup=False, highlight=False)
    if est.uncertain:
        console.print("\nUncertain prices:")
        for u in est.uncertain:
            each = f" cost {_rng(u.low_micros, u.high_micros).replace(' - ', '-')} each" if u.high_micros else ""
            console.print(f"  {u.step}: {u.count:,} items{each}: {u.reason}", markup=False, highlight=False)
            if u.suggestion:
                console.print(f"      fix: {u.suggestion}", markup=False, highlight=False)
            for ex in u.examples:
                console.print(f"      e.g. {ex}", markup=False, highlight=False)
    if est.sizes is not None and est.sizes.failures:
        fails = est.sizes.failures
        console.print(f"\nProbe errors ({len(fails):,} URLs; these items are priced as a range):")
        for f in fails[:max_errors]:
            ids = ", ".join(f.input_ids)
            console.print(f"  input {ids}: {f.url}: {f.error}", markup=False, highlight=False)
        if len(fails) > max_errors:
            console.print(f"  ... and {len(fails) - max_errors:,} more (see --json)")
    console.print("\nAssumptions:")
    for a in est.assumptions:
        console.print(f"  - {a}", markup=False, highlight=False)


def _render_plan_table(est: Estimate, console: Any, title: str) -> None:
    """One row per step, operation and tier: what is paid, in flight, at risk, not sent, and still to pay."""
    from rich.table import Table

    rows: dict[tuple[str, str, str], dict[str, Any]] = {}
    for p in est.plan:
        r = rows.setdefault((p.step, p.op, p.tier), {})
        r[p.category] = (r.get(p.category, (0, 0))[0] + p.count, r.get(p.category, (0, 0))[1] + p.micros)
    for ln in est.lines:
        rows.setdefault((ln.step, ln.op, ln.tier), {})["line"] = ln
    steps: list[str] = []
    for step, _, _ in rows:
        if step not in steps:
            steps.append(step)

    def cell(r: dict[str, Any], cat: str, money: bool = True) -> str:
        n, micros = r.get(cat, (0, 0))
        if not n:
            return ""
        return f"{n:,} ({format_usd(micros)})" if money else f"{n:,}"

    t = Table(title=f"{title} (state file {est.state_path})", show_footer=True)
    totals = {cat: est.category_total(cat) for cat in CATEGORIES}
    t.add_column("step", footer="total")
    t.add_column("op")
    t.add_column("price tier")
    t.add_column("paid (reused)", justify="right",
                 footer=f"{totals[PAID][0]:,} ({format_usd(totals[PAID][1])})" if totals[PAID][0] else "")
    t.add_column("in flight", justify="right",
                 footer=f"{totals[IN_FLIGHT][0]:,} ({format_usd(totals[IN_FLIGHT][1])})" if totals[IN_FLIGHT][0] else "")
    t.add_column("at risk", justify="right",
                 footer=f"{totals[AT_RISK][0]:,} ({format_usd(totals[AT_RISK][1])})" if totals[AT_RISK][0] else "")
    t.add_column("not sent", justify="right", footer=f"{totals[NOT_SENT][0]:,}" if totals[NOT_SENT][0] else "")
    t.add_column("to pay", justify="right", footer=f"{est.to_pay_count:,}")
    t.add_column("unit", justify="right")
    t.add_column("still to pay", justify="right", footer=est.total_text())
    for step in steps:
        for (s, op, tier), r in rows.items():
            if s != step:
                continue
            x = r.get("line")
            t.add_row(s, op, tier, cell(r, PAID), cell(r, IN_FLIGHT), cell(r, AT_RISK), cell(r, NOT_SENT, False),
                      f"{x.count:,}" if x else "", _rng(x.unit_low_micros, x.unit_high_micros) if x else "",
                      _rng(x.subtotal_low_micros, x.subtotal_high_micros) if x else "")
    console.print(t)
