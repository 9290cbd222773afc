"""The HTML report's charts: inline SVG drawn here (no script, no network).

Spend by step (estimate vs charged, with the difference in words), status by step
(stacked by state) and completions over time; each is a pure function ``Report -> str``.
Every bar has its value written next to it (and in its tooltip), and step names get the
room they need (the margin follows the longest one).
"""

from __future__ import annotations

import html

from ..money import format_usd
from ..report import Report
from .layout import bucket_label, timestamp

STATE_COLORS = {
    "COMPLETED": "#2e7d32", "FAILED": "#c62828", "ERROR": "#ef6c00", "FAILED_VALIDATION": "#8e24aa",
    "AMBIGUOUS": "#f9a825", "BAD_INPUT": "#ad1457", "BLOCKED": "#757575", "PENDING": "#bdbdbd", "SUBMITTING": "#64b5f6",
    "SUBMITTED": "#1e88e5",
}


def _svg_text(x: float, y: float, s: str, anchor: str = "start", size: int = 11, extra: str = "") -> str:
    return (f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}" '
            f'font-family="sans-serif"{extra}>{html.escape(s)}</text>')


def _text_width(s: str, size: int = 11) -> float:
    """About how wide ``s`` is in a sans-serif font of ``size`` pixels (for margins that never cut a name)."""
    return len(s) * size * 0.62


def _bar(x: float, y: float, w: float, h: float, color: str, tip: str, cls: str = "bar") -> str:
    return (f'<rect class="{cls}" x="{x:.1f}" y="{y:.1f}" width="{max(w, 0.0):.1f}" height="{h:.1f}" fill="{color}">'
            f"<title>{html.escape(tip)}</title></rect>")


def _difference(charged: int, low: int, high: int) -> str:
    """What the charge was against the estimate, in words: ``= estimate``, ``-$0.02 (-33%)``."""
    if low <= charged <= high:
        return "= estimate" if low == high else "within the estimate"
    ref = high if charged > high else low
    pct = f" ({(charged - ref) * 100 / ref:+.0f}%)" if ref else ""
    return ("+" if charged > ref else "-") + format_usd(abs(charged - ref)) + pct + " vs estimate"


def svg_spend_by_step(r: Report) -> str:
    """Per step, horizontal bars with their values: the estimate (the range: dark to the low end,
    light to the high end) and what was charged, and the difference in words."""
    steps = r.spend.steps
    planned = bool(steps) and steps[0].planned_high_micros is not None  # a plan by `pixbatch estimate` was given
    label_w = max([_text_width(s.step) for s in steps] + [60]) + 12
    top = max([max(s.est_high_micros, s.charged_micros, s.planned_high_micros or 0) for s in steps] + [1])
    plot, right, bh = 300, 200, 14
    row = 46 + (bh + 2 if planned else 0)
    W = int(label_w + plot + right)
    H = int(34 + row * max(1, len(steps)))
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" id="chart-spend" width="{W}" height="{H}" '
             f'viewBox="0 0 {W} {H}" role="img" aria-label="Spend by step: estimate vs charged">']
    legend = (("planned (high)", "#b0bec5"),) if planned else ()
    legend += (("estimate (low - high)", "#1e88e5"), ("charged", "#2e7d32"))
    for j, (label, color) in enumerate(legend):
        parts.append(f'<rect x="{label_w + j * 150}" y="6" width="10" height="10" fill="{color}"/>')
        parts.append(_svg_text(label_w + j * 150 + 14, 15, label, size=10))
    for i, s in enumerate(steps):
        y = 30 + i * row
        if planned:
            w_plan = plot * (s.planned_high_micros or 0) / top
            plan = format_usd(s.planned_high_micros or 0)
            parts.append(_bar(label_w, y, w_plan, bh, "#b0bec5", f"{s.step}: planned (high) {plan}"))
            parts.append(_svg_text(label_w + w_plan + 4, y + 11, plan, size=10, extra=' class="value"'))
            y += bh + 2
        parts.append(_svg_text(label_w - 8, y + bh + 4, s.step, "end"))
        w_low, w_high, w_ch = (plot * v / top for v in (s.est_low_micros, s.est_high_micros, s.charged_micros))
        est = f"{format_usd(s.est_low_micros)} - {format_usd(s.est_high_micros)}" \
            if s.est_low_micros != s.est_high_micros else format_usd(s.est_high_micros)
        parts.append(_bar(label_w, y, w_high, bh, "#90caf9", f"{s.step}: estimate {est}"))
        parts.append(_bar(label_w, y, w_low, bh, "#1e88e5", f"{s.step}: estimate (low) {format_usd(s.est_low_micros)}"))
        parts.append(_svg_text(label_w + w_high + 4, y + 11, est, size=10, extra=' class="value"'))
        parts.append(_bar(label_w, y + bh + 2, w_ch, bh, "#2e7d32", f"{s.step}: charged {format_usd(s.charged_micros)}"))
        parts.append(_svg_text(label_w + w_ch + 4, y + bh + 13, format_usd(s.charged_micros), size=10,
                               extra=' class="value"'))
        diff = _difference(s.charged_micros, s.est_low_micros, s.est_high_micros)
        parts.append(_svg_text(W - 4, y + bh + 4, diff, "end", 10, extra=' class="diff"'))
    parts.append("</svg>")
    return "".join(parts)


def svg_status(r: Report) -> str:
    """A horizontal stacked bar per step, by state, its counts written on it; a legend that wraps."""
    st = r.status
    left = max([_text_width(s) for s in st.steps] + [40]) + 12
    pw = 420
    W = int(left + pw + 20)
    legend: list[tuple[float, float, str, str]] = []  # x, y, state, label
    x, y = 10.0, 8.0
    for state, n in st.by_state:
        label = f"{state} {n:,}"
        width = 22 + 6.2 * len(label)
        if x + width > W and x > 10:
            x, y = 10.0, y + 16
        legend.append((x, y, state, label))
        x += width
    top = y + 24
    row = 26
    H = int(top + row * max(1, len(st.steps)) + 10)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" id="chart-status" width="{W}" height="{H}" '
             f'viewBox="0 0 {W} {H}" role="img" aria-label="Status by step">']
    for lx, ly, state, label in legend:
        parts.append(f'<rect x="{lx:.0f}" y="{ly:.0f}" width="10" height="10" fill="{STATE_COLORS.get(state, "#000")}"/>')
        parts.append(_svg_text(lx + 13, ly + 9, label, size=10))
    for i, step in enumerate(st.steps):
        total = st.count(step) or 1
        y = top + i * row
        x = float(left)
        parts.append(_svg_text(left - 6, y + 14, step, "end"))
        for c in (c for c in st.counts if c.step == step):
            w = pw * c.count / total
            parts.append(_bar(x, y, w, row - 6, STATE_COLORS.get(c.state, "#000"), f"{step}: {c.state} {c.count:,}"))
            if w >= 8 + 7 * len(f"{c.count:,}"):
                parts.append(_svg_text(x + w / 2, y + 14, f"{c.count:,}", "middle", 10,
                                       extra=' fill="#fff" class="value"'))
            x += w
    parts.append("</svg>")
    return "".join(parts)


def svg_throughput(r: Report) -> str:
    """Completions (and failures) per time bucket, as stacked columns."""
    tm = r.timing
    W, H, left, bottom, topm = 640, 230, 45, 36, 34
    pw, ph = W - left - 10, H - bottom - topm
    top = max([b.completed + b.failed for b in tm.buckets] + [1])
    n = max(1, len(tm.buckets))
    bw = min(pw / n, 40.0)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" id="chart-throughput" width="{W}" '
             f'height="{H}" viewBox="0 0 {W} {H}" role="img" aria-label="Completions over time">']
    for v in sorted({0, top // 2, top}):
        y = topm + ph - ph * v / top
        parts.append(f'<line x1="{left}" x2="{W - 10}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e0e0e0"/>')
        parts.append(_svg_text(left - 6, y + 4, f"{v:,}", "end", 10))
    labelled = len(tm.buckets) <= 40 and bw >= 12
    for i, b in enumerate(tm.buckets):
        x = left + i * bw
        if labelled and b.completed + b.failed:
            parts.append(_svg_text(x + bw / 2, topm + ph - ph * (b.completed + b.failed) / top - 3,
                                   f"{b.completed + b.failed:,}", "middle", 9, extra=' class="value"'))
        hc = ph * b.completed / top
        hf = ph * b.failed / top
        label = f"{timestamp(b.start)}: {b.completed} completed, {b.failed} failed"
        parts.append(f'<rect class="bar" x="{x:.1f}" y="{topm + ph - hc:.1f}" width="{max(bw - 1, 0.5):.1f}" '
                     f'height="{hc:.1f}" fill="#2e7d32"><title>{html.escape(label)}</title></rect>')
        if b.failed:
            parts.append(f'<rect class="bar" x="{x:.1f}" y="{topm + ph - hc - hf:.1f}" '
                         f'width="{max(bw - 1, 0.5):.1f}" height="{hf:.1f}" fill="#c62828">'
                         f'<title>{html.escape(label)}</title></rect>')
    if tm.buckets:
        parts.append(_svg_text(left, H - 12, timestamp(tm.buckets[0].start), size=10))
        parts.append(_svg_text(max(left + n * bw, left + 230), H - 12, timestamp(tm.buckets[-1].start), "end", 10))
    parts.append(_svg_text(left, 14, f"per {bucket_label(tm.bucket_seconds)}: completed (green), failed (red)",
                           size=10))
    parts.append("</svg>")
    return "".join(parts)
