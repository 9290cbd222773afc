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


def examples_text(examples) -> str:
    return ", ".join(f"{short(e.key)} ({e.step}/{e.input_id})" if e.input_id else short(e.key) for e in examples)


@dataclass(frozen=True, slots=True)
class Section:
    title: str
    headers: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    intro: str = ""  # a sentence before the table
    empty: str = "none"  # shown instead of an empty table
    numeric: tuple[int, ...] = ()  # right-aligned columns
    nowrap: tuple[int, ...] = ()  # columns never wrapped (checksums)


def summary_pairs(r: Report) -> list[tuple[str, str]]:
    t = r.spend.totals
    pairs = [("State file", r.state_path)]
    if r.run:
        pairs.append(("Run", f"{r.run.run_id} ({r.run.outcome or 'no outcome recorded'}), started "
                             f"{timestamp(r.run.started_at)}" + (f", ended {timestamp(r.run.finished_at)}" if r.run.finished_at else "")
                      + (f"; its settlements charged {usd(r.run.charged_micros)}"
                         if r.run.charged_micros is not None else "")))
    if r.scope_run_id:
        pairs.append(("Scope", f"items touched by run {r.scope_run_id}"))
    pairs += [
        ("Items", f"{t.items:,}"),
        ("Estimated", usd_range(t.est_low_micros, t.est_high_micros)),
    ]
    if r.spend.planned_high_micros is not None:
        pairs.append(("Estimate (plan)", usd_range(r.spend.planned_low_micros, r.spend.planned_high_micros)))
    pairs += [
        ("Charged", f"{usd(t.charged_micros)} ({t.charged_items:,} items)"),
        ("Not charged", f"{t.not_charged_items:,} items (ERROR, FAILED_VALIDATION; estimate "
                        f"{usd(t.not_charged_est_micros)})"),
        ("At risk", f"{usd(t.at_risk_micros)} ({t.at_risk_items:,} AMBIGUOUS items)"
                    + (f" + {usd(t.abandoned_micros)} ({t.abandoned_attempts:,} resent ambiguous attempts)"
                       if t.abandoned_attempts else "")),
        ("Reserved", f"{usd(t.reserved_micros)} ({t.in_flight_items:,} items in flight)"),
        ("Not spent", f"{t.unspent_items:,} items PENDING/BLOCKED (estimate {usd(t.unspent_est_micros)})"),
    ]
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


def sections(r: Report, *, outputs_limit: int | None = None) -> list[Section]:
    t = r.spend.totals
    out: list[Section] = [Section("Summary", ("", ""), tuple(summary_pairs(r)))]

    spend_rows = [
        (ln.step, ln.op, ln.tier, f"{ln.items:,}", usd_range(ln.est_low_micros, ln.est_high_micros),
         usd(ln.charged_micros), f"{ln.not_charged_items:,}", usd(ln.at_risk_micros), usd(ln.reserved_micros),
         f"{ln.unspent_items:,}")
        for ln in r.spend.lines
    ]
    if spend_rows:
        spend_rows.append(("Total", "", "", f"{t.items:,}", usd_range(t.est_low_micros, t.est_high_micros),
                           usd(t.charged_micros), f"{t.not_charged_items:,}", usd(t.at_risk_micros),
                           usd(t.reserved_micros), f"{t.unspent_items:,}"))
    out.append(Section(
        "Spend by step, operation and tier",
        ("Step", "Op", "Tier", "Items", "Estimated", "Charged", "Not charged", "At risk", "Reserved", "Not sent"),
        tuple(spend_rows), intro="Tier is the actual price tier once an item finished, else the estimated one.",
        numeric=(3, 4, 5, 6, 7, 8, 9)))

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

    states = [s for s, _ in r.status.by_state]
    status_rows = []
    for step in r.status.steps:
        status_rows.append((step, *(_n(r.status.count(step, s)) for s in states), f"{r.status.count(step):,}"))
    if status_rows:
        status_rows.append(("Total", *(f"{n:,}" for _, n in r.status.by_state), f"{r.status.count():,}"))
    out.append(Section("Status", ("Step", *states, "Total"), tuple(status_rows),
                       numeric=tuple(range(1, len(states) + 2))))

    out.append(Section(
        "Failures", ("State", "Items", "Message", "Examples"),
        tuple((g.state, f"{g.count:,}", g.message, examples_text(g.examples)) for g in r.status.failures),
        intro=(f"{r.status.more_failure_groups} more messages not listed." if r.status.more_failure_groups else ""),
        numeric=(1,)))
    out.append(Section(
        "Blocked", ("Items", "Why", "Examples"),
        tuple((f"{g.count:,}", g.message, examples_text(g.examples)) for g in r.status.blocked),
        intro=(f"{r.status.more_blocked_groups} more reasons not listed." if r.status.more_blocked_groups else ""),
        numeric=(0,)))

    out.append(Section(
        "Timing", ("Step", "Finished", "Queue p50", "Queue p95", "Processing p50", "Processing p95"),
        tuple((s.step, f"{s.finished:,}", duration(s.queue_p50_ms), duration(s.queue_p95_ms),
               duration(s.processing_p50_ms), duration(s.processing_p95_ms)) for s in r.timing.steps
              if s.finished or s.queue_n),
        intro="Queue: submitted to started. Processing: started to finished.", numeric=(1, 2, 3, 4, 5)))

    out.append(Section("Throughput", ("", ""), tuple(throughput_pairs(r)), empty="nothing finished yet"))

    o = r.outputs
    files = o.files if outputs_limit is None else o.files[:outputs_limit]
    intro = f"{o.count:,} files, {_bytes(o.total_bytes)}"
    if o.output_dir:
        intro += f", under {o.output_dir}"
    if len(files) < o.count:
        intro += f"; the first {len(files):,} are listed (json and csv list them all)"
    out.append(Section(
        "Outputs", ("Path", "Bytes", "Size", "SHA-256"),
        tuple((f.path, f"{f.bytes:,}", f"{f.width}x{f.height}" if f.width and f.height else "-", f.sha256)
              for f in files),
        intro=intro + ".", numeric=(1,), nowrap=(3,)))
    if r.live:  # a running run's status file has totals and counts only: show nothing that would look empty
        return [sec for sec in out if sec.title in ("Summary", "Status")]
    return out


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
