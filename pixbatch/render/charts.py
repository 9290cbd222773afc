"""The HTML report's charts: inline SVG drawn here (no script, no network).

Spend by step (estimate vs charged), status by step (stacked by state) and completions
over time; each is a pure function ``Report -> str``.
"""

from __future__ import annotations

import html

from ..money import format_usd
from ..report import Report
from .layout import bucket_label, timestamp

STATE_COLORS = {
    "COMPLETED": "#2e7d32", "FAILED": "#c62828", "ERROR": "#ef6c00", "FAILED_VALIDATION": "#8e24aa",
    "AMBIGUOUS": "#f9a825", "BLOCKED": "#757575", "PENDING": "#bdbdbd", "SUBMITTING": "#64b5f6",
    "SUBMITTED": "#1e88e5",
}


def _svg_text(x: float, y: float, s: str, anchor: str = "start", size: int = 11, extra: str = "") -> str:
    return (f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}" '
            f'font-family="sans-serif"{extra}>{html.escape(s)}</text>')


def svg_spend_by_step(r: Report) -> str:
    """Grouped bars per step: estimate low, estimate high, charged."""
    steps = r.spend.steps
    series: tuple[tuple[str, str, str], ...] = (
        ("estimate (low)", "#90caf9", "est_low_micros"), ("estimate (high)", "#1e88e5", "est_high_micros"),
        ("charged", "#2e7d32", "charged_micros"))
    if steps and steps[0].planned_high_micros is not None:
        series = (("planned (high)", "#b0bec5", "planned_high_micros"), *series)
    top = max([getattr(s, a) or 0 for s in steps for _, _, a in series] + [1])
    W, H, left, bottom, topm = max(480, 130 * len(steps) + 90), 260, 70, 40, 30
    ph = H - bottom - topm
    group = (W - left - 10) / max(1, len(steps))
    k = len(series)
    bw = min(28, (group - 16) / k)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" id="chart-spend" width="{W}" height="{H}" '
             f'viewBox="0 0 {W} {H}" role="img" aria-label="Spend by step: estimate vs charged">']
    for i in range(5):  # grid + axis labels
        v = top * i / 4
        y = topm + ph - ph * i / 4
        parts.append(f'<line x1="{left}" x2="{W - 10}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e0e0e0"/>')
        parts.append(_svg_text(left - 6, y + 4, format_usd(int(v)), "end", 10))
    for i, s in enumerate(steps):
        x0 = left + i * group + (group - k * bw) / 2
        for j, (label, color, attr) in enumerate(series):
            v = getattr(s, attr) or 0
            h = ph * v / top
            parts.append(f'<rect class="bar" x="{x0 + j * bw:.1f}" y="{topm + ph - h:.1f}" width="{bw - 2:.1f}" '
                         f'height="{h:.1f}" fill="{color}"><title>{html.escape(s.step)}: {label} '
                         f'{format_usd(v)}</title></rect>')
        parts.append(_svg_text(left + i * group + group / 2, H - bottom + 16, s.step, "middle"))
    for j, (label, color, _) in enumerate(series):
        parts.append(f'<rect x="{left + j * 100}" y="8" width="10" height="10" fill="{color}"/>')
        parts.append(_svg_text(left + j * 100 + 14, 17, label, size=10))
    parts.append("</svg>")
    return "".join(parts)


def svg_status(r: Report) -> str:
    """A horizontal stacked bar per step, by state, with a legend that wraps."""
    st = r.status
    W, row, left = 560, 26, 110
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
    H = int(top + row * max(1, len(st.steps)) + 10)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" id="chart-status" width="{W}" height="{H}" '
             f'viewBox="0 0 {W} {H}" role="img" aria-label="Status by step">']
    for lx, ly, state, label in legend:
        parts.append(f'<rect x="{lx:.0f}" y="{ly:.0f}" width="10" height="10" fill="{STATE_COLORS.get(state, "#000")}"/>')
        parts.append(_svg_text(lx + 13, ly + 9, label, size=10))
    pw = W - left - 20
    for i, step in enumerate(st.steps):
        total = st.count(step) or 1
        y = top + i * row
        x = float(left)
        parts.append(_svg_text(left - 6, y + 14, step, "end"))
        for c in (c for c in st.counts if c.step == step):
            w = pw * c.count / total
            parts.append(f'<rect class="bar" x="{x:.1f}" y="{y:.1f}" width="{w:.1f}" height="{row - 6}" '
                         f'fill="{STATE_COLORS.get(c.state, "#000")}"><title>{html.escape(step)}: {c.state} '
                         f'{c.count:,}</title></rect>')
            x += w
    parts.append("</svg>")
    return "".join(parts)


def svg_throughput(r: Report) -> str:
    """Completions (and failures) per time bucket, as stacked columns."""
    tm = r.timing
    W, H, left, bottom, topm = 640, 220, 45, 36, 24
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
    for i, b in enumerate(tm.buckets):
        x = left + i * bw
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
