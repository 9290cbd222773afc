"""What the human formats share: display helpers (money, durations, sizes) and the layout.

``sections(report)`` turns a ``Report`` into titled tables of display strings (``Section``);
the table, markdown and HTML renderers only decide how a section looks.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from ..money import format_usd, micros_to_decimal
from ..report import Report


def usd(micros: int | None) -> str:
    return "-" if micros is None else format_usd(micros)


def usd_range(low: int, high: int) -> str:
    return format_usd(high) if low == high else f"{format_usd(low)}–{format_usd(high)}"


def usd_decimal(micros: int) -> str:
    return format(micros_to_decimal(micros), "f")


def signed_usd(micros: int) -> str:
    return ("+" if micros > 0 else "") + format_usd(micros) if micros else "$0.00"


def duration(ms: int | None) -> str:
    if ms is None:
        return "-"
    if ms < 1000:
        return f"{ms} ms"
    if ms < 60_000:
        return f"{ms / 1000:.1f} s"
    m, s = divmod(round(ms / 1000), 60)
    if m < 60:
        return f"{m} min {s} s"
    h, m = divmod(m, 60)
    return f"{h} h {m} min"


def bucket_label(seconds: int) -> str:
    if seconds % 3600 == 0:
        n = seconds // 3600
        return "hour" if n == 1 else f"{n} hours"
    if seconds % 60 == 0:
        n = seconds // 60
        return "minute" if n == 1 else f"{n} minutes"
    return "second" if seconds == 1 else f"{seconds} seconds"


def short(key: str) -> str:
    return key[:12]


def item_name(output_name: str | None, key: str) -> str:
    """An item as a person knows it: its output name (else its key's first 12 characters)."""
    return output_name or short(key)


def examples_text(examples) -> str:
    """``recolor/mug-red.jpg (input mug)``; a blocked item with its upstream: ``hires/mug-red.jpg <- recolor/mug-red.jpg``."""
    out = []
    for e in examples:
        name = item_name(e.output_name, e.key)
        if e.upstream:
            out.append(f"{name} <- {e.upstream}")
        else:
            out.append(f"{name} (input {e.input_id})" if e.input_id else name)
    return ", ".join(out)


@dataclass(frozen=True, slots=True)
class Section:
    title: str
    headers: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    intro: str = ""  # a sentence before the table
    empty: str = "none"  # shown instead of an empty table
    numeric: tuple[int, ...] = ()  # right-aligned columns, never wrapped


def manifest_name(r: Report) -> str | None:
    """The manifest's file name, as the run recorded it."""
    if r.run and r.run.manifest_path:
        return r.run.manifest_path.replace("\\", "/").rsplit("/", 1)[-1]
    return None


def title(r: Report) -> str:
    name = manifest_name(r)
    return "pixbatch report" + (f": {name}" if name else "")


def took(seconds: float) -> str:
    return duration(int(seconds * 1000))


def run_when(r: Report) -> str | None:
    run = r.run
    if run is None or run.started_at is None:
        return None
    text = f"started {timestamp(run.started_at)}"
    if run.finished_at:
        text += f", ended {timestamp(run.finished_at)} (took {took((run.finished_at - run.started_at).total_seconds())})"
    elif run.outcome == "killed":
        text += ", killed (it recorded no end)"
    return text


def state_counts(r: Report) -> str:
    """``12: 8 COMPLETED, 2 BAD_INPUT, 2 BLOCKED``."""
    return f"{r.status.count():,}" + (": " + ", ".join(f"{n:,} {s}" for s, n in r.status.by_state if n)
                                       if r.status.by_state else "")


def summary_pairs(r: Report) -> list[tuple[str, str]]:
    t = r.spend.totals
    pairs = []
    if r.run and r.run.manifest_path:
        pairs.append(("Manifest", r.run.manifest_path))
    pairs.append(("State file", r.state_path))
    if r.run:
        pairs.append(("Run", f"{r.run.run_id} ({r.run.outcome or 'no outcome recorded'})"
                      + (f"; its settlements charged {usd(r.run.charged_micros)}"
                         if r.run.charged_micros is not None else "")))
        when = run_when(r)
        if when:
            pairs.append(("When", when))
    if r.scope_run_id:
        pairs.append(("Scope", f"items touched by run {r.scope_run_id}"))
    pairs += [("Items", state_counts(r)), ("Estimated", usd_range(t.est_low_micros, t.est_high_micros))]
    if r.spend.planned_high_micros is not None:
        pairs.append(("Estimate (plan)", usd_range(r.spend.planned_low_micros, r.spend.planned_high_micros)))
    pairs.append(("Charged", f"{usd(t.charged_micros)} ({t.charged_items:,} items)"))
    if t.not_charged_items:
        pairs.append(("Not charged", f"{t.not_charged_items:,} items (ERROR, FAILED_VALIDATION; estimate "
                                     f"{usd(t.not_charged_est_micros)})"))
    if t.at_risk_items or t.abandoned_attempts:
        pairs.append(("At risk", f"{usd(t.at_risk_micros)} ({t.at_risk_items:,} AMBIGUOUS items)"
                      + (f" + {usd(t.abandoned_micros)} ({t.abandoned_attempts:,} resent ambiguous attempts)"
                         if t.abandoned_attempts else "")))
    if t.in_flight_items:
        pairs.append(("Reserved", f"{usd(t.reserved_micros)} ({t.in_flight_items:,} items in flight)"))
    if t.unspent_items:
        pairs.append(("Not sent", f"{t.unspent_items:,} items PENDING, BLOCKED or BAD_INPUT (estimate "
                                  f"{usd(t.unspent_est_micros)})"))
    if t.budget_micros is not None:
        pairs.append(("Budget", f"{usd(t.budget_micros)} ({usd(t.budget_micros - t.charged_micros)} left)"))
    if r.live:
        pairs.append(("Live", "from the running run's status file (partial)"))
    if r.excluded_items:
        pairs.append(("Not included", f"{r.excluded_items:,} items of other manifest versions "
                                      f"(charged {usd(r.excluded_charged_micros)})"))
    pairs.append(("Generated", timestamp(r.generated_at) + " UTC"))
    return pairs


def timestamp(v: dt.datetime | None) -> str:
    return "-" if v is None else v.isoformat(sep=" ", timespec="seconds")


def _drop_empty(headers: tuple[str, ...], rows: list[tuple[str, ...]], optional: tuple[int, ...],
                numeric: tuple[int, ...]) -> tuple[tuple[str, ...], tuple[tuple[str, ...], ...], tuple[int, ...]]:
    """Leave out the ``optional`` columns that say nothing (every cell 0, $0.00 or empty)."""
    keep = [i for i in range(len(headers))
            if i not in optional or any(row[i] not in ("", "0", "$0.00", "-") for row in rows)]
    return (tuple(headers[i] for i in keep), tuple(tuple(row[i] for i in keep) for row in rows),
            tuple(n for n, i in enumerate(keep) if i in numeric))


TIMING_INTRO = ("Queue (submitted to first seen PROCESSING) and processing (first seen PROCESSING to finished) "
                "are what polls saw: they count only the items a poll caught PROCESSING (seen), and are as "
                "coarse as the polling. Gateway is created to completed as the gateway's status says (queue "
                "and processing together), for the items whose status carried both times.")


def compact_duration(ms: int | None) -> str:
    """A duration without spaces, so that it never wraps: ``326ms``, ``1.5s``, ``4m05s``, ``2h03m``."""
    if ms is None:
        return "-"
    if ms < 1000:
        return f"{ms}ms"
    if ms < 60_000:
        return f"{ms / 1000:.1f}s"
    m, s = divmod(round(ms / 1000), 60)
    if m < 60:
        return f"{m}m{s:02d}s"
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m"


def _pair(p50: int | None, p95: int | None) -> str:
    return "-" if p50 is None else f"{compact_duration(p50)} / {compact_duration(p95)}"


def sections(r: Report, *, outputs_limit: int | None = None, narrow: bool = False) -> list[Section]:
    """The report as titled tables of display strings. ``narrow``: the terminal's layout (fits 80
    columns: fewer, combined columns; the md and HTML pages keep the wide one)."""
    t = r.spend.totals
    out: list[Section] = [Section("Summary", ("", ""), tuple(summary_pairs(r)))]

    spend_rows = [
        (ln.step, ln.tier, f"{ln.items:,}", usd_range(ln.est_low_micros, ln.est_high_micros),
         usd(ln.charged_micros), f"{ln.not_charged_items:,}", usd(ln.at_risk_micros), usd(ln.reserved_micros),
         f"{ln.unspent_items:,}")
        for ln in r.spend.lines
    ]
    if spend_rows:
        spend_rows.append(("Total", "", f"{t.items:,}", usd_range(t.est_low_micros, t.est_high_micros),
                           usd(t.charged_micros), f"{t.not_charged_items:,}", usd(t.at_risk_micros),
                           usd(t.reserved_micros), f"{t.unspent_items:,}"))
    intro = "Tier is the actual price tier once an item finished, else the estimated one."
    if narrow:  # the items not charged, at risk, in flight or not sent, in words, in one column
        def other(row: tuple[str, ...]) -> str:
            parts = [f"{v} {what}" for v, what in zip(row[5:], ("not charged", "at risk", "reserved", "not sent"))
                     if v not in ("0", "$0.00")]
            return ", ".join(parts) or "-"

        rows = tuple((row[0] + (f" · {row[1]}" if row[1] else ""), *row[2:5], other(row)) for row in spend_rows)
        out.append(Section("Spend by step and price tier", ("Step · tier", "Items", "Estimated", "Charged", "Other"),
                           rows, numeric=(1, 2, 3), intro=intro))
    else:
        headers, rows, numeric = _drop_empty(
            ("Step", "Tier", "Items", "Estimated", "Charged", "Not charged", "At risk", "Reserved", "Not sent"),
            spend_rows, optional=(5, 6, 7, 8), numeric=(2, 3, 4, 5, 6, 7, 8))
        out.append(Section("Spend by step and price tier", headers, rows, numeric=numeric, intro=intro))

    var_rows = []
    if r.spend.planned_high_micros is not None:
        var_rows += [("Planned by `pixbatch estimate` (upper bound)", "", usd(r.spend.planned_high_micros), "", ""),
                     ("sizes learned since the plan (probes, upstream outputs) and items added or reused", "",
                      "", "", signed_usd(t.est_high_micros - r.spend.planned_high_micros))]
    var_rows += [("Estimate (upper bound)", f"{t.items:,}", usd(t.est_high_micros), "", "")]
    var_rows += [(v.explanation + ("; e.g. " + "; ".join(v.examples) if v.examples else ""), f"{v.items:,}",
                  usd(v.est_high_micros), usd(v.charged_micros), signed_usd(v.delta_micros))
                 for v in r.spend.variance]
    var_rows.append(("Charged", "", "", usd(t.charged_micros), signed_usd(t.delta_micros)))
    out.append(Section("Estimate vs charged, explained", ("Cause", "Items", "Estimated", "Charged", "Difference"),
                       tuple(var_rows) if r.spend.variance else (), numeric=(1, 2, 3, 4)))

    out.append(_status_narrow(r) if narrow else _status_wide(r))

    if narrow:
        out.append(Section(
            "Failures", ("Items", "State", "Message and examples"),
            tuple((f"{g.count:,}", g.state, f"{g.message}\ne.g. {examples_text(g.examples)}")
                  for g in r.status.failures),
            intro=_more(r.status.more_failure_groups, "messages"), numeric=(0,)))
        out.append(Section(
            "Blocked", ("Items", "Why, and examples (item <- its upstream)"),
            tuple((f"{g.count:,}", f"{g.message}\ne.g. {examples_text(g.examples)}") for g in r.status.blocked),
            intro=_more(r.status.more_blocked_groups, "reasons"), numeric=(0,)))
    else:
        out.append(Section(
            "Failures", ("State", "Items", "Message", "Examples"),
            tuple((g.state, f"{g.count:,}", g.message, examples_text(g.examples)) for g in r.status.failures),
            intro=_more(r.status.more_failure_groups, "messages"), numeric=(1,)))
        out.append(Section(
            "Blocked", ("Items", "Why", "Examples (item <- its upstream)"),
            tuple((f"{g.count:,}", g.message, examples_text(g.examples)) for g in r.status.blocked),
            intro=_more(r.status.more_blocked_groups, "reasons"), numeric=(0,)))

    out.append(Section(
        "Timing", ("Step", "Finished", "Seen", "Queue p50 / p95", "Processing p50 / p95", "Gateway p50 / p95"),
        tuple((s.step, f"{s.finished:,}", f"{s.processing_n:,}", _pair(s.queue_p50_ms, s.queue_p95_ms),
               _pair(s.processing_p50_ms, s.processing_p95_ms), _pair(s.gateway_p50_ms, s.gateway_p95_ms))
              for s in r.timing.steps if s.finished or s.queue_n),
        intro=TIMING_INTRO, numeric=(1, 2)))

    out.append(Section("Throughput", ("", ""), tuple(throughput_pairs(r)), empty="nothing finished yet"))

    o = r.outputs
    files = o.files if outputs_limit is None else o.files[:outputs_limit]
    intro = f"{o.count:,} files, {_bytes(o.total_bytes)}"
    if o.output_dir:
        intro += f", under {o.output_dir}"
    if len(files) < o.count:
        intro += f"; the first {len(files):,} are listed (json and csv list them all)"
    intro += "; SHA-256 shortened to its first 12 characters (json and csv have it whole)"
    out.append(Section(
        "Outputs", ("Path", "Bytes", "Size", "SHA-256"),
        tuple((f.path, f"{f.bytes:,}", f"{f.width}x{f.height}" if f.width and f.height else "-", short(f.sha256))
              for f in files),
        intro=intro + ".", numeric=(1, 2, 3)))
    if r.live:  # a running run's status file has totals and counts only: show nothing that would look empty
        return [sec for sec in out if sec.title in ("Summary", "Status")]
    return out


def _more(n: int, what: str) -> str:
    return f"{n} more {what} not listed (`pixbatch failures` lists every item)." if n else ""


def _status_wide(r: Report) -> Section:
    states = [s for s, _ in r.status.by_state]
    rows = [(step, *(_n(r.status.count(step, s)) for s in states), f"{r.status.count(step):,}")
            for step in r.status.steps]
    if rows:
        rows.append(("Total", *(f"{n:,}" for _, n in r.status.by_state), f"{r.status.count():,}"))
    return Section("Status", ("Step", *states, "Total"), tuple(rows), numeric=tuple(range(1, len(states) + 2)))


_NOT_DONE = ("FAILED", "ERROR", "FAILED_VALIDATION", "BAD_INPUT", "BLOCKED", "AMBIGUOUS")


def _status_narrow(r: Report) -> Section:
    """Per step: done, not done, in flight, waiting, and which states (fits 80 columns whatever the states)."""
    rows = []
    for step in [*r.status.steps, None]:
        c = {s: r.status.count(step, s) for s, _ in r.status.by_state}
        detail = ", ".join(f"{c[s]:,} {s}" for s in c if s not in ("COMPLETED", "PENDING") and c[s])
        rows.append(("Total" if step is None else step, f"{c.get('COMPLETED', 0):,}",
                     f"{sum(c.get(s, 0) for s in _NOT_DONE):,}", f"{c.get('SUBMITTING', 0) + c.get('SUBMITTED', 0):,}",
                     f"{c.get('PENDING', 0):,}", detail))
    if not r.status.steps:
        rows = []
    return Section("Status", ("Step", "Done", "Not done", "In flight", "Waiting", "States"), tuple(rows),
                   numeric=(1, 2, 3, 4))


def _n(v: int) -> str:
    return f"{v:,}" if v else ""


def _bytes(n: int) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:,} {unit}" if unit == "bytes" else f"{n:,.1f} {unit}"
        n /= 1000
    raise AssertionError  # pragma: no cover


def throughput_pairs(r: Report) -> list[tuple[str, str]]:
    tm = r.timing
    if not tm.buckets:
        return []
    done = sum(b.completed for b in tm.buckets)
    failed = sum(b.failed for b in tm.buckets)
    peak = max(tm.buckets, key=lambda b: b.completed)
    span = (tm.last_finished_at - tm.first_finished_at).total_seconds()
    pairs = [("Finished", f"{done:,} completed, {failed:,} failed/error, from {timestamp(tm.first_finished_at)} "
                          f"to {timestamp(tm.last_finished_at)}")]
    if span > 0:
        pairs.append(("Average", f"{done * 60 / span:,.1f} completions per minute"))
    pairs.append(("Peak", f"{peak.completed:,} completions in the {bucket_label(tm.bucket_seconds)} "
                          f"from {timestamp(peak.start)}"))
    return pairs
