"""A small SVG line chart for the benchmarks' curves (no plotting library needed).

from bench.svg_chart import line_chart
svg = line_chart("Prediction error per day", "day", "pp", {"learning": [(1, 4.0), ...]})
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence

__all__ = ["line_chart", "panels"]

_COLOURS = ("#0d6efd", "#dc3545", "#198754", "#6f42c1", "#fd7e14")


def line_chart(
    title: str,
    x_label: str,
    y_label: str,
    series: Mapping[str, Sequence[tuple[float, float]]],
    *,
    width: int = 460,
    height: int = 280,
) -> str:
    """One chart: each series a polyline with dots, axes with ticks, a legend."""
    left, right, top, bottom = 56, 16, 34, 44
    points = [p for values in series.values() for p in values]
    if not points:
        return f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}"></svg>'
    xs = [p[0] for p in points]
    ys = [p[1] for p in points]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(0.0, min(ys)), max(ys)
    if x1 == x0:
        x1 = x0 + 1
    if y1 == y0:
        y1 = y0 + 1
    y1 += 0.08 * (y1 - y0)

    def sx(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * (width - left - right)

    def sy(y: float) -> float:
        return height - bottom - (y - y0) / (y1 - y0) * (height - top - bottom)

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'font-family="DejaVu Sans, sans-serif" font-size="11">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{width / 2}" y="18" text-anchor="middle" font-size="13">'
        f"{html.escape(title)}</text>",
        f'<line x1="{left}" y1="{sy(y0)}" x2="{width - right}" y2="{sy(y0)}" stroke="#333"/>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{height - bottom}" stroke="#333"/>',
    ]
    for k in range(5):
        y = y0 + k * (y1 - y0) / 4
        out.append(
            f'<text x="{left - 6}" y="{sy(y) + 4:.1f}" text-anchor="end">{y:.3g}</text>'
            f'<line x1="{left}" y1="{sy(y):.1f}" x2="{width - right}" y2="{sy(y):.1f}" '
            'stroke="#ddd"/>'
        )
    for x in sorted(set(xs)):
        out.append(
            f'<text x="{sx(x):.1f}" y="{height - bottom + 16}" text-anchor="middle">{x:g}</text>'
        )
    out.append(
        f'<text x="{width / 2}" y="{height - 8}" text-anchor="middle">{html.escape(x_label)}</text>'
        f'<text x="14" y="{height / 2}" text-anchor="middle" '
        f'transform="rotate(-90 14 {height / 2})">{html.escape(y_label)}</text>'
    )
    for i, (name, values) in enumerate(series.items()):
        colour = _COLOURS[i % len(_COLOURS)]
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in values)
        out.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"/>')
        out.extend(
            f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3" fill="{colour}"/>' for x, y in values
        )
        out.append(
            f'<rect x="{left + 10 + 120 * i}" y="{top - 4}" width="10" height="10" '
            f'fill="{colour}"/>'
            f'<text x="{left + 24 + 120 * i}" y="{top + 5}">{html.escape(name)}</text>'
        )
    out.append("</svg>")
    return "\n".join(out)


def panels(charts: Sequence[str], *, width: int = 460, height: int = 280) -> str:
    """Several charts side by side in one SVG."""
    total = width * len(charts)
    body = "\n".join(
        f'<g transform="translate({i * width},0)">{c}</g>' for i, c in enumerate(charts)
    )
    head = f'<svg xmlns="http://www.w3.org/2000/svg" width="{total}" height="{height}">'
    return f"{head}\n{body}\n</svg>"
