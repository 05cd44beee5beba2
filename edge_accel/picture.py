"""The static part of one what-if video: titles, legends, the paired estimate, attribution.

Drawn once per video on a copy of the scene's RGB background (then converted
to YUV once): everything that says what the picture is and how to read it.
The legend states every scale (they are ranged to the recording, so they
differ between videos), the header says which seed's run the picture shows,
and the box under the difference map quotes the what-if's paired multi-seed
estimate, the numbers the gate decided on.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from edge_accel.color import Palette
from edge_accel.layout import RGB, Canvas, Rect
from edge_accel.scene import PairedEstimate
from edge_accel.whatif_scene import WhatIfScene

__all__ = ["PictureText", "draw_picture", "signed_pct"]

#: The difference map's junction squares span this relative change (either way).
JUNCTION_RANGE = 0.5


def signed_pct(fraction: float, digits: int = 1) -> str:
    """``-0.123`` -> ``"\u221212.3 %"`` (a true minus sign); NaN -> ``"n/a"``."""
    if not math.isfinite(fraction):
        return "n/a"
    value = round(fraction * 100.0, digits)
    sign = "\u2212" if value < 0 else ("+" if value > 0 else "\u00b1")
    return f"{sign}{abs(value):.{digits}f} %"


def _num(value: float, digits: int = 1) -> str:
    if not math.isfinite(value):
        return "n/a"
    text = f"{abs(value):,.{digits}f}".replace(",", "\u2009")
    return ("\u2212" if value < 0 else "") + text


@dataclass(frozen=True)
class PictureText:
    """Everything the static picture says.

    Attributes:
        title: The header's first line.
        subtitle: Which run the picture shows, its window and time scale.
        labels: The three panels' titles.
        attribution: The bottom line (digests, simulator, seed).
        occupancy_max: The roads' scale top (fraction).
        speed_max_kmh: The vehicles' scale top.
        diff_max_veh: The difference map's scale (either way), vehicles.
        vehicles_note: How many vehicles are drawn (all, or every k-th).
        estimate: The paired estimate (None: the box says there is none).
        seed: The recorded run's seed.
    """

    title: str
    subtitle: str
    labels: tuple[str, str, str]
    attribution: str
    occupancy_max: float
    speed_max_kmh: float
    diff_max_veh: float
    vehicles_note: str
    estimate: PairedEstimate | None
    seed: int


def draw_picture(scene: WhatIfScene, canvas: Canvas, text: PictureText) -> None:
    """Draw the video's static text, legends, estimate and junction colours."""
    lay, fonts = scene.layout, scene.fonts
    canvas.text(text.title, lay.title.x, lay.title.y, fonts.title, Palette.TEXT,
                width=lay.clock.x - lay.title.x - lay.margin)  # fmt: skip
    canvas.text(text.subtitle, lay.subtitle.x, lay.subtitle.y, fonts.body, Palette.TEXT_DIM,
                width=lay.subtitle.w)  # fmt: skip
    for rect, label, colour in zip(
        lay.labels, text.labels, (Palette.CURRENT, Palette.CANDIDATE, Palette.TEXT), strict=True
    ):
        canvas.text(label, rect.x, rect.y, fonts.label, colour, width=rect.w)
    _legend_main(scene, canvas, text)
    _legend_diff(scene, canvas, text)
    _estimate_box(scene, canvas, text)
    canvas.text(text.attribution, lay.attribution.x, lay.attribution.y, fonts.small,
                Palette.TEXT_DIM, width=lay.attribution.w)  # fmt: skip
    changes = text.estimate.intersection_wait_change if text.estimate is not None else {}
    _junction_changes(scene, canvas, changes)


def _legend_main(scene: WhatIfScene, canvas: Canvas, text: PictureText) -> None:
    small, r = scene.fonts.small, scene.layout.legend_main
    gap = small.size_px
    bar_w = max(40, round(small.size_px * 7))
    bar_h = max(4, small.line_h // 2)
    bar_y = r.y + (small.line_h - bar_h) // 2
    x = canvas.text("Vehicles by speed", r.x, r.y, small, Palette.TEXT) + gap // 2
    x = canvas.text("0", x, r.y, small, Palette.TEXT_DIM) + gap // 3
    x = canvas.ramp(x, bar_y, bar_w, bar_h, scene.speed_lut) + gap // 3
    x = canvas.text(f"{text.speed_max_kmh:g} km/h", x, r.y, small, Palette.TEXT_DIM) + 2 * gap
    x = canvas.text("Roads by occupancy", x, r.y, small, Palette.TEXT) + gap // 2
    x = canvas.text("0", x, r.y, small, Palette.TEXT_DIM) + gap // 3
    x = canvas.ramp(x, bar_y, bar_w, bar_h, scene.road_lut) + gap // 3
    x = canvas.text(
        f"{text.occupancy_max * 100:g} % (scaled to this recording)", x, r.y, small,
        Palette.TEXT_DIM,
    ) + gap  # fmt: skip
    x = canvas.swatch(x, bar_y, bar_h * 2, bar_h, Palette.NO_DATA) + gap // 3
    canvas.text("no data", x, r.y, small, Palette.TEXT_DIM, width=max(0, r.x1 - x))
    y = r.y + small.line_h
    box = max(3, bar_h)
    x = canvas.text("Signal heads, one per signal group:", r.x, y, small, Palette.TEXT) + gap // 2
    for label, colour in (
        ("red", Palette.SIGNAL_RED),
        ("amber", Palette.SIGNAL_AMBER),
        ("green", Palette.SIGNAL_GREEN),
        ("off", Palette.SIGNAL_OFF),
    ):
        top = y + (small.line_h - box) // 2
        canvas.fill(Rect(x - 1, top - 1, box + 2, box + 2), Palette.OUTLINE)
        x = canvas.swatch(x, top, box, box, colour) + gap // 3
        x = canvas.text(label, x, y, small, Palette.TEXT_DIM) + gap
    canvas.text(
        text.vehicles_note, x + gap, y, small, Palette.TEXT_DIM, width=max(0, r.x1 - x - gap)
    )


def _legend_diff(scene: WhatIfScene, canvas: Canvas, text: PictureText) -> None:
    small, r = scene.fonts.small, scene.layout.legend_diff
    gap = small.size_px
    bar_w = max(40, round(small.size_px * 6))
    bar_h = max(4, small.line_h // 2)
    bar_y = r.y + (small.line_h - bar_h) // 2
    d = text.diff_max_veh
    x = canvas.text(f"\u2212{d:g}", r.x, r.y, small, Palette.TEXT_DIM) + gap // 3
    x = canvas.ramp(x, bar_y, bar_w, bar_h, scene.diff_lut) + gap // 3
    x = canvas.text(f"+{d:g} veh", x, r.y, small, Palette.TEXT_DIM) + gap // 2
    canvas.text(
        "mean queue so far; blue: shorter with the candidate", x, r.y, small, Palette.TEXT,
        width=max(0, r.x1 - x),
    )  # fmt: skip
    y = r.y + small.line_h
    seeds = len(text.estimate.seeds) if text.estimate is not None else 0
    what = (
        f"Junctions: approach wait change, mean of {seeds} seeds, \u00b1{JUNCTION_RANGE * 100:g} %"
        if text.estimate is not None and text.estimate.intersection_wait_change
        else "Junctions: no per-approach estimate given"
    )
    canvas.text(what, r.x, y, small, Palette.TEXT_DIM, width=r.w)


def _estimate_box(scene: WhatIfScene, canvas: Canvas, text: PictureText) -> None:
    body, r = scene.fonts.body, scene.layout.estimate
    canvas.fill(r, Palette.MAP)
    canvas.frame(r, Palette.PANEL_EDGE)
    pad = max(3, body.size_px // 2)
    x, y, w = r.x + pad, r.y + pad // 2, r.w - 2 * pad
    est = text.estimate
    lines: list[tuple[str, RGB]]
    if est is None:
        lines = [
            ("No paired estimate was given:", Palette.TEXT),
            (f"every number here is the run with seed {text.seed}.", Palette.TEXT_DIM),
        ]
    else:
        lo_w, hi_w = est.wait_ci
        lo_n, hi_n = est.nox_ci
        level = f"{est.confidence_level * 100:g} %"
        lines = [
            (f"What-if estimate: {len(est.seeds)} paired seeds, {level} interval", Palette.TEXT),
            (f"Mean wait  {signed_pct(est.wait_change)}   [{signed_pct(lo_w)} \u2026 "
             f"{signed_pct(hi_w)}]", Palette.TEXT),
            (f"NOx  {signed_pct(est.nox_change, 2)}   [{signed_pct(lo_n, 2)} \u2026 "
             f"{signed_pct(hi_n, 2)}]", Palette.TEXT),
        ]  # fmt: skip
        if est.verdict:
            colour = {True: Palette.PASS, False: Palette.FAIL, None: Palette.TEXT}[est.passed]
            lines.append((est.verdict, colour))
        lines.append((f"Seeds {', '.join(str(s) for s in est.seeds)}; the picture: seed "
                      f"{text.seed}", Palette.TEXT_DIM))  # fmt: skip
    for paragraph, colour in lines:
        for line in body.wrap(paragraph, w):
            if y + body.line_h > r.y1:
                return
            canvas.text(line, x, y, body, colour, width=w)
            y += body.line_h


def _junction_changes(scene: WhatIfScene, canvas: Canvas, changes: Mapping[str, float]) -> None:
    """Colour the difference map's junction squares by the paired approach-wait change."""
    dx = scene.panel_dx[2]
    rect = scene.layout.maps[2]
    lut = scene.diff_lut.to(torch.float32)
    for tls, box in scene.junction_boxes.items():
        change = changes.get(tls)
        if change is None or not math.isfinite(change):
            continue
        t = max(-1.0, min(1.0, change / JUNCTION_RANGE))
        idx = int(round((t + 1.0) / 2.0 * 255))
        colour = tuple(int(v) for v in lut[idx].round().tolist())
        inner = Rect(box.x + dx, box.y, box.w, box.h)
        if inner.x < rect.x or inner.x1 > rect.x1:
            continue
        # the square is the junction's marker (edges never draw over it)
        canvas.fill(inner, Palette.OUTLINE)
        canvas.fill(Rect(inner.x + 1, inner.y + 1, inner.w - 2, inner.h - 2),
                    (colour[0], colour[1], colour[2]))  # fmt: skip
