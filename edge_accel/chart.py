"""The strip charts under the maps: both sides' running mean wait and NOx over the clip.

Each chart is drawn once per video, twice: bright (the time already shown) and
dim (what is still to come). Per frame the plot area takes the bright columns
left of the cursor and the dim ones right of it, and the cursor is a white
line, so the chart fills in as the video plays without redrawing any line.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch

from edge_accel.color import Palette, rgb_to_yuv420
from edge_accel.layout import RGB, Canvas, Fonts, Rect

__all__ = ["ChartSeries", "StripChart", "nice_ceiling"]


def nice_ceiling(value: float, floor: float) -> float:
    """The smallest of 1, 2, 2.5, 5 x 10^k that is >= ``value`` (at least ``floor``)."""
    if not math.isfinite(value) or value <= floor:
        return floor
    exp = math.floor(math.log10(value))
    for step in (1.0, 2.0, 2.5, 5.0, 10.0):
        candidate = step * 10.0**exp
        if candidate >= value * (1 - 1e-9):
            return candidate
    return 10.0 ** (exp + 1)


def _dim(colour: RGB, amount: float = 0.62) -> RGB:
    bg = Palette.BACKGROUND
    r, g, b = (round(c + (k - c) * amount) for c, k in zip(colour, bg, strict=True))
    return (r, g, b)


def _even(value: int) -> int:
    return value // 2 * 2


@dataclass(frozen=True)
class ChartSeries:
    """One chart's two lines at every video frame (NaN: no data)."""

    title: str
    unit: str
    current: npt.NDArray[np.float64]
    candidate: npt.NDArray[np.float64]


class StripChart:
    """One strip chart: its static pictures and, per frame, its cursor."""

    def __init__(
        self,
        rect: Rect,
        series: ChartSeries,
        sim_time_s: npt.NDArray[np.float64],
        fonts: Fonts,
        clock: str,
        clock_end: str,
    ) -> None:
        """Lay the chart out in ``rect`` (drawn later by :meth:`draw`)."""
        self.rect = rect
        self.series = series
        self.fonts = fonts
        small = fonts.small
        both = np.concatenate((series.current, series.candidate))
        finite = both[np.isfinite(both)]
        self.y_max = nice_ceiling(float(finite.max()) if finite.size else 0.0, 1.0)
        self.has_data = bool(finite.size)
        axis_w = small.width(f"{self.y_max:g}") + small.size_px // 2
        x0 = _even(rect.x + axis_w + 2)
        y0 = _even(rect.y + small.line_h + 2)
        x1 = _even(rect.x1 - 2)
        y1 = _even(rect.y1 - small.line_h - 2)
        self.plot = Rect(x0, y0, max(2, x1 - x0), max(2, y1 - y0))
        self.values = Rect(rect.x + rect.w * 2 // 5, rect.y, rect.w - rect.w * 2 // 5, small.line_h)
        self.clock, self.clock_end = clock, clock_end
        n = len(sim_time_s)
        span = float(sim_time_s[-1] - sim_time_s[0]) if n > 1 else 0.0
        frac = (sim_time_s - sim_time_s[0]) / span if span > 0 else np.zeros(n)
        #: per frame, the plot column of the cursor
        self.cursor = np.round(frac * (self.plot.w - 1)).astype(np.int64)
        self._frac = frac
        self.bright: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def _lines(self, canvas: Canvas, dim: bool) -> None:
        p = self.plot
        width = max(1.5, p.h / 55)
        for values, colour in (
            (self.series.current, Palette.CURRENT),
            (self.series.candidate, Palette.CANDIDATE),
        ):
            ok = np.isfinite(values)
            if ok.sum() < 2:
                continue
            xs = torch.tensor(p.x + self._frac[ok] * (p.w - 1), dtype=torch.float32)
            ys = torch.tensor(
                p.y1 - 1 - np.clip(values[ok] / self.y_max, 0, 1) * (p.h - 1), dtype=torch.float32
            )
            canvas.polyline(
                xs.to(canvas.device), ys.to(canvas.device), _dim(colour) if dim else colour, width
            )

    def draw(self, canvas: Canvas) -> None:
        """Draw the chart (dim lines) on the video's RGB background; keep the bright plot."""
        small, p = self.fonts.small, self.plot
        canvas.text(
            f"{self.series.title} ({self.series.unit})",
            self.rect.x,
            self.rect.y,
            small,
            Palette.TEXT,
            width=self.values.x - self.rect.x - small.size_px // 2,
        )
        canvas.fill(p, Palette.MAP)
        grid = _dim(Palette.PANEL_EDGE, 0.3)
        for k in (1, 2, 3):
            canvas.fill(Rect(p.x, p.y + (p.h * k) // 4, p.w, 1), grid)
        canvas.fill(Rect(p.x - 1, p.y, 1, p.h), Palette.PANEL_EDGE)
        canvas.fill(Rect(p.x - 1, p.y1, p.w + 1, 1), Palette.PANEL_EDGE)
        right = p.x - small.size_px // 3
        top_label = f"{self.y_max:g}"
        canvas.text(top_label, right - small.width(top_label), p.y - small.baseline // 2, small,
                    Palette.TEXT_DIM)  # fmt: skip
        canvas.text("0", right - small.width("0"), p.y1 - small.baseline, small, Palette.TEXT_DIM)
        below = p.y1 + 2
        canvas.text(self.clock, p.x, below, small, Palette.TEXT_DIM)
        canvas.text(self.clock_end, p.x, below, small, Palette.TEXT_DIM, width=p.w, align="right")
        # the two lines' key, centred under the plot
        seg = small.size_px * 2
        key_w = 2 * seg + small.width("current  candidate") + small.size_px * 2
        x = p.x + (p.w - key_w) // 2
        mid = below + small.baseline * 2 // 3
        for label, colour in (("current", Palette.CURRENT), ("candidate", Palette.CANDIDATE)):
            canvas.fill(Rect(x, mid - 1, seg, 2), colour)
            x = canvas.text(label, x + small.size_px // 3 + seg, below, small, Palette.TEXT_DIM)
            x += small.size_px
        if not self.has_data:
            canvas.text("no data", p.x + p.w // 3, p.y + p.h // 3, small, Palette.TEXT_DIM)
            return
        self._lines(canvas, dim=False)
        region = canvas.rgb[p.y : p.y1, p.x : p.x1].clone()
        packed = rgb_to_yuv420(region)
        ph, pw = p.h, p.w
        luma = packed[:ph].reshape(ph, pw)
        chroma = packed[ph:].reshape(-1)
        q = (ph // 2) * (pw // 2)
        self.bright = (
            luma.clone(),
            chroma[:q].reshape(ph // 2, pw // 2).clone(),
            chroma[q:].reshape(ph // 2, pw // 2).clone(),
        )
        self._lines(canvas, dim=True)

    def apply(
        self,
        planes: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
        cursor: list[int],
        previous: list[int],
    ) -> None:
        """Compose the plot of a batch: bright left of each frame's cursor, dim right, cursor line.

        Only what changed since the frame buffer last held this chart is written:
        the columns from the previous cursor to the new one (a buffer holds the
        video's background, i.e. the dim chart, until it is first drawn on).

        Args:
            planes: The batch's Y ``[B, H, W]``, U and V ``[B, H/2, W/2]`` views.
            cursor: Per frame, the cursor column within the plot.
            previous: Per frame slot, the cursor last drawn there (-1: none yet);
                updated in place.
        """
        if self.bright is None:
            return
        p = self.plot
        for k, (now, before) in enumerate(zip(cursor, previous, strict=False)):
            start = max(0, before) if before <= now else 0
            for plane, bright, half in zip(planes, self.bright, (1, 2, 2), strict=True):
                x0, x1 = start // half, now // half + 1
                ys = slice(p.y // half, p.y1 // half)
                plane[k, ys, p.x // half + x0 : p.x // half + x1] = bright[:, x0:x1]
            planes[0][k, p.y : p.y1, p.x + now] = 235
            previous[k] = now
