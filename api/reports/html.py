"""The report as an HTML page with its SVG charts: the dashboard's report page and
``slotbandit report --format html``.

Charts (pure functions returning SVG text; every label is escaped):
    :func:`series_chart`  cumulative mean reward per arm over time with its interval band
    :func:`forest_plot`   absolute lift of every arm against control with its interval
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from typing import Any

from api.pages import STATIC, environment, format_number

__all__ = ["PALETTE", "forest_plot", "render_report_page", "series_chart"]


PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#7f7f7f", "#bcbd22")


def _scale(low: float, high: float, out_low: float, out_high: float) -> Any:
    span = (high - low) or 1.0
    return lambda v: out_low + (v - low) / span * (out_high - out_low)


def _ticks(low: float, high: float, count: int = 5) -> list[float]:
    if high <= low:
        return [low]
    raw = (high - low) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.ceil(low / step) * step
    return [first + i * step for i in range(int((high - first) / step) + 1)]


def series_chart(series: Mapping[str, Any], arms: Sequence[str], width: int = 640, height: int = 260) -> str:
    """Cumulative mean reward per arm after each time bucket, with the interval as a band."""
    points = series.get("points", [])
    buckets = list(dict.fromkeys(p["bucket"] for p in points))
    if not buckets:
        return '<p class="muted">No decisions yet.</p>'
    values = [v for p in points if p["mean"] is not None for v in (p["ci"] or [p["mean"], p["mean"]])]
    values += [p["mean"] for p in points if p["mean"] is not None]
    if not values:
        return '<p class="muted">Not enough data for a chart yet.</p>'
    low, high = min(values), max(values)
    pad = (high - low) * 0.08 or abs(high) * 0.1 or 0.1
    low, high = low - pad, high + pad
    left, right, top, bottom = 52, 12, 12, 30
    x = _scale(0, max(len(buckets) - 1, 1), left, width - right)
    y = _scale(low, high, height - bottom, top)
    parts = [f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" aria-label="mean reward over time per arm" '
             f'xmlns="http://www.w3.org/2000/svg">']
    for t in _ticks(low, high):
        parts.append(f'<line x1="{left}" x2="{width - right}" y1="{y(t):.1f}" y2="{y(t):.1f}" class="grid"/>'
                     f'<text x="{left - 6}" y="{y(t) + 4:.1f}" class="tick" text-anchor="end">{format_number(t)}</text>')
    step = max(1, len(buckets) // 6)
    for i in range(0, len(buckets), step):
        parts.append(f'<text x="{x(i):.1f}" y="{height - 10}" class="tick" text-anchor="middle">'
                     f'{html.escape(buckets[i][5:] if len(buckets[i]) >= 10 else buckets[i])}</text>')
    for index, arm in enumerate(arms):
        color = PALETTE[index % len(PALETTE)]
        mine = {p["bucket"]: p for p in points if p["arm"] == arm}
        line, band_top, band_bottom = [], [], []
        for i, bucket in enumerate(buckets):
            p = mine.get(bucket)
            if p is None or p["mean"] is None:
                continue
            line.append(f"{x(i):.1f},{y(p['mean']):.1f}")
            if p["ci"]:
                band_top.append(f"{x(i):.1f},{y(p['ci'][1]):.1f}")
                band_bottom.append(f"{x(i):.1f},{y(p['ci'][0]):.1f}")
        if band_top:
            polygon = " ".join(band_top + band_bottom[::-1])
            parts.append(f'<polygon points="{polygon}" fill="{color}" fill-opacity="0.15" stroke="none"/>')
        if line:
            parts.append(f'<polyline points="{" ".join(line)}" fill="none" stroke="{color}" stroke-width="2" '
                         f'data-arm="{html.escape(arm)}"/>')
            for point in line:
                cx, cy = point.split(",")
                parts.append(f'<circle cx="{cx}" cy="{cy}" r="2.5" fill="{color}"/>')
    parts.append("</svg>")
    legend = "".join(f'<span class="key"><i style="background:{PALETTE[i % len(PALETTE)]}"></i>{html.escape(a)}</span>'
                     for i, a in enumerate(arms))
    return "".join(parts) + f'<div class="legend">{legend}</div>'


def forest_plot(comparisons: Sequence[Mapping[str, Any]], arms: Sequence[str], percent_points: bool,
                width: int = 640) -> str:
    """Absolute lift of every arm against control with its confidence interval; 0 marked."""
    rows = [c for c in comparisons if c.get("absolute_lift") is not None]
    if not rows:
        return '<p class="muted">No comparison can be made yet.</p>'
    scale_factor = 100.0 if percent_points else 1.0
    values = [0.0]
    for c in rows:
        values.append(c["absolute_lift"] * scale_factor)
        if c.get("absolute_ci"):
            values += [v * scale_factor for v in c["absolute_ci"]]
    low, high = min(values), max(values)
    pad = (high - low) * 0.1 or 1.0
    low, high = low - pad, high + pad
    row_h, left, right, top = 34, 110, 16, 10
    height = top + row_h * len(rows) + 30
    x = _scale(low, high, left, width - right)
    parts = [f'<svg class="chart forest" viewBox="0 0 {width} {height}" role="img" '
             f'aria-label="lift against control with confidence intervals" xmlns="http://www.w3.org/2000/svg">']
    for t in _ticks(low, high):
        parts.append(f'<line x1="{x(t):.1f}" x2="{x(t):.1f}" y1="{top}" y2="{height - 26}" class="grid"/>'
                     f'<text x="{x(t):.1f}" y="{height - 10}" class="tick" text-anchor="middle">{format_number(t)}</text>')
    parts.append(f'<line x1="{x(0):.1f}" x2="{x(0):.1f}" y1="{top}" y2="{height - 26}" class="zero"/>')
    for i, c in enumerate(rows):
        cy = top + row_h * i + row_h / 2
        color = PALETTE[arms.index(c["arm"]) % len(PALETTE)] if c["arm"] in arms else "#333"
        parts.append(f'<text x="{left - 8}" y="{cy + 4:.1f}" class="label" text-anchor="end">{html.escape(c["arm"])}</text>')
        if c.get("absolute_ci"):
            lo, hi = (v * scale_factor for v in c["absolute_ci"])
            parts.append(f'<line x1="{x(lo):.1f}" x2="{x(hi):.1f}" y1="{cy:.1f}" y2="{cy:.1f}" stroke="{color}" '
                         f'stroke-width="3"/>')
        mark = "sig" if c.get("significant") else "ns"
        parts.append(f'<circle cx="{x(c["absolute_lift"] * scale_factor):.1f}" cy="{cy:.1f}" r="6" fill="{color}" '
                     f'class="{mark}" data-arm="{html.escape(c["arm"])}"/>')
    parts.append("</svg>")
    unit = "percentage points" if percent_points else "reward units"
    return "".join(parts) + f'<p class="muted small">Lift against control in {unit}; filled dot = significant after correction.</p>'


def render_report_page(report: Mapping[str, Any], *, standalone: bool = False) -> str:
    """The report as an HTML page (``standalone`` inlines the CSS for ``slotbandit report --format html``)."""
    arms = [a["arm"] for a in report["arms"]]
    percent = bool(report["summary"].get("binary")) and report["summary"].get("metric") == "reward_per_decision"
    css = (STATIC / "dashboard.css").read_text(encoding="utf-8") if standalone else None
    return environment.get_template("report.html").render(
        report=report, e=report["experiment"], arms=arms, css=css,
        series_svg=series_chart(report["time_series"], arms),
        forest_svg=forest_plot(report["comparisons"], arms, percent),
        percent=percent,
    )
