"""The report's inline SVG charts and the small formatting helpers they share.

Everything here is pure string building from plain JSON values: no file is read.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from typing import Any

from controller.ledger.records import Record, format_time

__all__ = ["bar_chart", "ci_bounds", "esc", "number", "pct", "scatter", "sub", "timeline"]

_KIND_COLOURS = {
    "cycle": "#6c757d",
    "deployment": "#0d6efd",
    "measured_delta": "#198754",
    "key_enrolment": "#6f42c1",
    "config_change": "#fd7e14",
    "policy_version": "#d63384",
    "calibration": "#20c997",
}


def esc(value: object) -> str:
    """HTML-escaped text."""
    return html.escape(str(value), quote=True)


def pct(value: object) -> str:
    """A fraction as a signed percentage, or a dash."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f"{value * 100:+.1f} %"
    return "–"


def sub(body: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    """``body[key]`` when it is a mapping, else empty."""
    value = body.get(key)
    return value if isinstance(value, Mapping) else {}


def number(value: object) -> float | None:
    """A JSON number as float (booleans are not numbers), else None."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


def ci_bounds(value: object) -> tuple[float, float] | None:
    """A two-number confidence interval, else None."""
    if isinstance(value, list | tuple) and len(value) == 2:
        lo, hi = number(value[0]), number(value[1])
        if lo is not None and hi is not None:
            return (lo, hi)
    return None


# ---------------------------------------------------------------------- charts

#: axis ends whose halves are round percentages too (fractions)
_NICE = (0.02, 0.04, 0.05, 0.1, 0.2, 0.4, 0.5, 1.0, 2.0, 4.0, 5.0, 10.0, 20.0, 50.0, 100.0)


def _nice_scale(largest: float) -> float:
    """The axis end for values up to ``largest``: a round fraction with some headroom."""
    want = largest * 1.1
    return next((n for n in _NICE if n >= want), want)


def bar_chart(
    predicted: Mapping[str, Any],
    measured: Sequence[Mapping[str, Any]],
    labels: Sequence[str] = (),
) -> str:
    """Grouped bars: predicted (with CI whiskers) vs each measured window, wait and NOx.

    ``labels`` names the measured series (default ``measured #1``, ``#2`` …).
    """
    metrics = [("wait_change", "wait time"), ("nox_change", "NOx")]
    series: list[tuple[str, str, Mapping[str, Any], bool]] = [
        ("predicted", "#0d6efd", predicted, True)
    ]
    palette = ["#198754", "#20c997", "#0f5132", "#75b798"]
    for n, m in enumerate(measured):
        name = labels[n] if n < len(labels) else f"measured #{n + 1}"
        series.append((name, palette[n % len(palette)], m, False))
    values = [0.05]
    for _, _, data, _ in series:
        for key, _ in metrics:
            v = number(data.get(key))
            if v is not None:
                values.append(abs(v))
            ci = ci_bounds(data.get(f"{key}_ci"))
            if ci is not None:
                values += [abs(ci[0]), abs(ci[1])]
    scale = _nice_scale(max(values))
    width, height, top, left = 520, 240, 20, 60
    plot_h = height - top - 40
    zero_y = top + plot_h / 2

    def y_of(v: float) -> float:
        return zero_y - (v / scale) * (plot_h / 2)

    group_w = (width - left - 20) / len(metrics)
    bar_w = min(40.0, (group_w - 30) / max(1, len(series)))
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'role="img" aria-label="predicted against measured change">',
        f'<line x1="{left}" y1="{zero_y:.1f}" x2="{width - 10}" y2="{zero_y:.1f}" '
        'stroke="#212529"/>',
    ]
    for tick in (-scale, -scale / 2, scale / 2, scale):
        y = y_of(tick)
        parts.append(
            f'<line x1="{left - 4}" y1="{y:.1f}" x2="{width - 10}" y2="{y:.1f}" '
            'stroke="#dee2e6" stroke-dasharray="3,3"/>'
            f'<text x="{left - 6}" y="{y + 4:.1f}" font-size="10" text-anchor="end">'
            f"{tick * 100:+g} %</text>"
        )
    for g, (key, label) in enumerate(metrics):
        gx = left + 15 + g * group_w
        parts.append(
            f'<text x="{gx + len(series) * bar_w / 2:.1f}" y="{height - 8}" font-size="12" '
            f'text-anchor="middle">{esc(label)}</text>'
        )
        for s, (name, colour, data, with_ci) in enumerate(series):
            v = number(data.get(key))
            if v is None:
                continue
            x = gx + s * bar_w
            y0, y1 = sorted((y_of(0), y_of(v)))
            parts.append(
                f'<rect x="{x:.1f}" y="{y0:.1f}" width="{bar_w - 4:.1f}" '
                f'height="{max(y1 - y0, 1):.1f}" fill="{colour}"><title>{esc(name)} '
                f"{esc(label)}: {v * 100:+.2f} %</title></rect>"
            )
            ci = ci_bounds(data.get(f"{key}_ci")) if with_ci else None
            if ci is not None:
                cx = x + (bar_w - 4) / 2
                parts.append(
                    f'<line x1="{cx:.1f}" y1="{y_of(ci[0]):.1f}" x2="{cx:.1f}" '
                    f'y2="{y_of(ci[1]):.1f}" stroke="#212529" stroke-width="1.5"/>'
                )
                for end in ci:
                    parts.append(
                        f'<line x1="{cx - 5:.1f}" y1="{y_of(end):.1f}" x2="{cx + 5:.1f}" '
                        f'y2="{y_of(end):.1f}" stroke="#212529" stroke-width="1.5"/>'
                    )
    for s, (name, colour, _, _) in enumerate(series):
        lx = left + s * 120
        parts.append(
            f'<rect x="{lx}" y="2" width="10" height="10" fill="{colour}"/>'
            f'<text x="{lx + 14}" y="11" font-size="11">{esc(name)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def timeline(records: Sequence[Record]) -> str:
    """SVG timeline of the records, one dot per record coloured by kind."""
    if not records:
        return "<p>No records in this selection.</p>"
    width, height, left, right = 1000, 110, 30, 20
    t0 = records[0].time.timestamp()
    t1 = records[-1].time.timestamp()
    span = max(t1 - t0, 1.0)
    lanes = {k: n for n, k in enumerate(_KIND_COLOURS)}
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        'role="img" aria-label="timeline of ledger records">',
        f'<line x1="{left}" y1="{height - 25}" x2="{width - right}" y2="{height - 25}" '
        'stroke="#212529"/>',
        f'<text x="{left}" y="{height - 8}" font-size="10">{esc(format_time(records[0].time))}'
        "</text>",
        f'<text x="{width - right}" y="{height - 8}" font-size="10" text-anchor="end">'
        f"{esc(format_time(records[-1].time))}</text>",
    ]
    for r in records:
        x = left + (r.time.timestamp() - t0) / span * (width - left - right)
        y = 12 + lanes.get(r.kind, 0) * 11
        colour = _KIND_COLOURS.get(r.kind, "#000")
        parts.append(
            f'<circle cx="{x:.1f}" cy="{y}" r="4" fill="{colour}"><title>#{r.index} '
            f"{esc(r.kind)} {esc(format_time(r.time))}</title></circle>"
        )
    parts.append("</svg>")
    legend = " ".join(
        f'<span style="color:{c}">●</span> {esc(k)}' for k, c in _KIND_COLOURS.items()
    )
    return "".join(parts) + f"<p>{legend}</p>"


def scatter(points: Sequence[tuple[int, float, float]]) -> str:
    """Predicted (x) against measured (y) wait-time change, one dot per deployment."""
    if not points:
        return "<p>No deployment in this selection has a measured delta yet.</p>"
    size, pad = 320, 40
    lim = max([0.05] + [abs(v) for _, a, b in points for v in (a, b)]) * 1.15

    def pos(v: float) -> float:
        return pad + (v + lim) / (2 * lim) * (size - 2 * pad)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{size}" height="{size}" role="img" '
        'aria-label="predicted against measured wait change">',
        f'<rect x="{pad}" y="{pad}" width="{size - 2 * pad}" height="{size - 2 * pad}" '
        'fill="none" stroke="#dee2e6"/>',
        f'<line x1="{pos(-lim):.1f}" y1="{size - pos(-lim):.1f}" x2="{pos(lim):.1f}" '
        f'y2="{size - pos(lim):.1f}" stroke="#adb5bd" stroke-dasharray="4,3"/>',
        f'<text x="{size / 2}" y="{size - 8}" font-size="11" text-anchor="middle">'
        "predicted wait change</text>",
        f'<text x="12" y="{size / 2}" font-size="11" text-anchor="middle" '
        f'transform="rotate(-90 12 {size / 2})">measured wait change</text>',
    ]
    for index, predicted, measured in points:
        parts.append(
            f'<circle cx="{pos(predicted):.1f}" cy="{size - pos(measured):.1f}" r="5" '
            f'fill="#0d6efd"><title>deployment record {index}: predicted '
            f"{predicted * 100:+.1f} %, measured {measured * 100:+.1f} %</title></circle>"
        )
    parts.append("</svg>")
    return "".join(parts)
