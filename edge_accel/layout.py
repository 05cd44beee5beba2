"""Where everything sits in a what-if frame, and drawing on the RGB background.

The frame, at any size (proportions from 1920x1080)::

    title                                                      simulated clock
    which seed the picture shows, the window, the time scale
    CURRENT PLAN          | CANDIDATE (name)        | DIFFERENCE candidate - current
    [map: roads, vehicles,| [map: roads, vehicles,  | [map: per-edge change of the
     signal heads]        |  signal heads]          |  mean queue, junction squares]
    legend: vehicle speed, road occupancy, signals  | legend: difference scales
    strip chart: mean wait| strip chart: NOx        | the gate's paired estimate
    attribution (digests, simulator, seed)

:class:`Layout` is pure arithmetic; :class:`Canvas` draws rectangles, text and
lines into a ``uint8 [H, W, 3]`` RGB tensor (the static parts of a video are
drawn once in RGB and converted to YUV once).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from configs.errors import ConfigError
from edge_accel.font import Align, GlyphAtlas

__all__ = ["Canvas", "Fonts", "Layout", "Rect"]

RGB = tuple[int, int, int]


@dataclass(frozen=True)
class Rect:
    """A pixel rectangle ``[x, x + w) x [y, y + h)``."""

    x: int
    y: int
    w: int
    h: int

    @property
    def x1(self) -> int:
        """Exclusive right edge."""
        return self.x + self.w

    @property
    def y1(self) -> int:
        """Exclusive bottom edge."""
        return self.y + self.h


@dataclass(frozen=True)
class Fonts:
    """The four text sizes of a frame."""

    title: GlyphAtlas
    label: GlyphAtlas
    body: GlyphAtlas
    small: GlyphAtlas


@dataclass(frozen=True)
class Layout:
    """Every region of a frame of ``width x height``.

    Attributes:
        margin: Outer margin and gutter, pixels.
        maps: The three map panels (current, candidate, difference).
        labels: The panel titles' rows, one per panel.
        title, subtitle, clock: Header rows (clock: right-aligned in the title row).
        legend_main: Under the current and candidate maps (two rows of small text).
        legend_diff: Under the difference map.
        charts: The two strip charts (mean wait, NOx), under the first two maps.
        estimate: The paired estimate's box, under the difference map.
        attribution: The bottom line.
    """

    width: int
    height: int
    margin: int
    title: Rect
    clock: Rect
    subtitle: Rect
    labels: tuple[Rect, Rect, Rect]
    maps: tuple[Rect, Rect, Rect]
    legend_main: Rect
    legend_diff: Rect
    charts: tuple[Rect, Rect]
    estimate: Rect
    attribution: Rect

    @classmethod
    def compute(cls, width: int, height: int, fonts: Fonts) -> Layout:
        """Lay out a frame.

        Raises:
            ConfigError: The frame leaves no room for the maps.
        """
        u = height / 1080.0
        m = max(4, round(16 * u))
        x_text = m
        y = m
        title = Rect(x_text, y, width - 2 * m, fonts.title.line_h)
        clock_w = fonts.title.width("simulated 00:00:00") + m
        clock = Rect(width - m - clock_w, y, clock_w, fonts.title.line_h)
        y += fonts.title.line_h
        subtitle = Rect(x_text, y, width - 2 * m, fonts.body.line_h)
        y += fonts.body.line_h + m // 2
        panel_w = ((width - 4 * m) // 3) // 2 * 2
        xs = tuple(m + i * (panel_w + m) for i in range(3))
        labels = tuple(Rect(x, y, panel_w, fonts.label.line_h) for x in xs)
        y += fonts.label.line_h + max(1, m // 4)
        maps_y0 = y
        attribution = Rect(
            x_text, height - m - fonts.small.line_h, width - 2 * m, fonts.small.line_h
        )
        chart_h = max(3 * fonts.small.line_h + 12, round(170 * u))
        charts_y = attribution.y - m // 2 - chart_h
        legend_h = 2 * fonts.small.line_h
        legend_y = charts_y - m // 2 - legend_h
        maps_y1 = legend_y - m // 2
        if maps_y1 - maps_y0 < 40 or panel_w < 60:
            raise ConfigError(
                f"[video] size {width}x{height} leaves no room for the maps; use >= 640x360"
            )
        maps = tuple(Rect(x, maps_y0, panel_w, maps_y1 - maps_y0) for x in xs)
        legend_main = Rect(xs[0], legend_y, 2 * panel_w + m, legend_h)
        legend_diff = Rect(xs[2], legend_y, panel_w, legend_h)
        charts = tuple(Rect(x, charts_y, panel_w, chart_h) for x in xs[:2])
        estimate = Rect(xs[2], charts_y, panel_w, chart_h)
        return cls(
            width=width,
            height=height,
            margin=m,
            title=title,
            clock=clock,
            subtitle=subtitle,
            labels=labels,  # type: ignore[arg-type]
            maps=maps,  # type: ignore[arg-type]
            legend_main=legend_main,
            legend_diff=legend_diff,
            charts=charts,  # type: ignore[arg-type]
            estimate=estimate,
            attribution=attribution,
        )


def fonts_for(height: int, device: torch.device, font: object = None) -> Fonts:
    """The frame's four text sizes, proportional to its height (readable minimums)."""
    from pathlib import Path

    path = Path(str(font)) if font is not None else None
    u = height / 1080.0
    return Fonts(
        title=GlyphAtlas(max(12, round(30 * u)), device, path),
        label=GlyphAtlas(max(10, round(21 * u)), device, path),
        body=GlyphAtlas(max(9, round(18 * u)), device, path),
        small=GlyphAtlas(max(8, round(15 * u)), device, path),
    )


class Canvas:
    """Drawing on an RGB ``uint8 [H, W, 3]`` tensor (clipped to the frame).

    The canvas remembers which tiles it drew on (:meth:`to_yuv420`), so that a
    video's picture, drawn on a copy of the scene's background, is converted to
    YUV only where it differs from it.
    """

    TILE = 32

    def __init__(self, rgb: torch.Tensor) -> None:
        self.rgb = rgb
        self.height, self.width = int(rgb.shape[0]), int(rgb.shape[1])
        self.device = rgb.device
        t = self.TILE
        self._dirty = torch.zeros(-(-self.height // t), -(-self.width // t), dtype=torch.bool)

    def _colour(self, colour: RGB) -> torch.Tensor:
        return torch.tensor(colour, dtype=torch.uint8, device=self.device)

    def _touch(self, x0: int, y0: int, x1: int, y1: int) -> None:
        t = self.TILE
        self._dirty[max(0, y0) // t : (min(self.height, y1) - 1) // t + 1,
                    max(0, x0) // t : (min(self.width, x1) - 1) // t + 1] = True  # fmt: skip

    def to_yuv420(self, base: torch.Tensor) -> torch.Tensor:
        """The canvas as flat YUV 4:2:0, given ``base``: the same for the untouched canvas."""
        from edge_accel.color import rgb_to_yuv420

        out = base.clone()
        h, w, t = self.height, self.width, self.TILE
        y_plane = out[: h * w].view(h, w)
        u_plane = out[h * w : h * w * 5 // 4].view(h // 2, w // 2)
        v_plane = out[h * w * 5 // 4 :].view(h // 2, w // 2)
        for row in range(self._dirty.shape[0]):
            cols = self._dirty[row].nonzero().squeeze(1).tolist()
            runs: list[list[int]] = []
            for c in cols:
                if runs and runs[-1][1] == c:
                    runs[-1][1] = c + 1
                else:
                    runs.append([c, c + 1])
            y0, y1 = row * t, min(h, (row + 1) * t) // 2 * 2
            for c0, c1 in runs:
                x0, x1 = c0 * t, min(w, c1 * t) // 2 * 2
                if x1 <= x0 or y1 <= y0:
                    continue
                packed = rgb_to_yuv420(self.rgb[y0:y1, x0:x1].contiguous())
                rh, rw = y1 - y0, x1 - x0
                q = (rh // 2) * (rw // 2)
                chroma = packed[rh:].reshape(-1)
                y_plane[y0:y1, x0:x1] = packed[:rh]
                u_plane[y0 // 2 : y1 // 2, x0 // 2 : x1 // 2] = chroma[:q].view(rh // 2, rw // 2)
                v_plane[y0 // 2 : y1 // 2, x0 // 2 : x1 // 2] = chroma[q:].view(rh // 2, rw // 2)
        return out

    def fill(self, rect: Rect, colour: RGB) -> None:
        """Fill ``rect``."""
        x0, y0 = max(0, rect.x), max(0, rect.y)
        x1, y1 = min(self.width, rect.x1), min(self.height, rect.y1)
        if x1 > x0 and y1 > y0:
            self.rgb[y0:y1, x0:x1] = self._colour(colour)
            self._touch(x0, y0, x1, y1)

    def frame(self, rect: Rect, colour: RGB, thickness: int = 1) -> None:
        """Draw the outline of ``rect``."""
        t = thickness
        self.fill(Rect(rect.x, rect.y, rect.w, t), colour)
        self.fill(Rect(rect.x, rect.y1 - t, rect.w, t), colour)
        self.fill(Rect(rect.x, rect.y, t, rect.h), colour)
        self.fill(Rect(rect.x1 - t, rect.y, t, rect.h), colour)

    def blend(self, coverage: torch.Tensor, x: int, y: int, colour: RGB) -> None:
        """Blend ``colour`` with alpha ``coverage`` (``uint8 [h, w]``) at ``(x, y)``."""
        h, w = coverage.shape
        xs, ys = max(0, x), max(0, y)
        xe, ye = min(self.width, x + w), min(self.height, y + h)
        if xe <= xs or ye <= ys:
            return
        alpha = coverage[ys - y : ye - y, xs - x : xe - x].to(torch.int32).unsqueeze(2)
        region = self.rgb[ys:ye, xs:xe].to(torch.int32)
        ink = self._colour(colour).to(torch.int32)
        self.rgb[ys:ye, xs:xe] = (region + ((ink - region) * alpha + 127) // 255).to(torch.uint8)
        self._touch(xs, ys, xe, ye)

    def text(
        self,
        text: str,
        x: int,
        y: int,
        atlas: GlyphAtlas,
        colour: RGB,
        *,
        width: int | None = None,
        align: Align = "left",
    ) -> int:
        """Draw ``text`` with its line's top at ``y``; return the x just past it.

        With ``width`` the text is cut (with an ellipsis) to fit, and ``align``
        places it within ``[x, x + width)``.
        """
        if width is not None:
            text = atlas.fit(text, width)
        w = atlas.width(text)
        if width is not None and align == "right":
            x = x + width - w
        if text:
            self.blend(atlas.render(text), x, y, colour)
        return x + w

    def swatch(self, x: int, y: int, w: int, h: int, colour: RGB) -> int:
        """A filled box; return the x just past it."""
        self.fill(Rect(x, y, w, h), colour)
        return x + w

    def ramp(self, x: int, y: int, w: int, h: int, lut: torch.Tensor) -> int:
        """A horizontal colour bar of ``lut`` (``uint8 [n, 3]``); return the x past it."""
        if w <= 0 or h <= 0:
            return x
        xs, xe = max(0, x), min(self.width, x + w)
        ys, ye = max(0, y), min(self.height, y + h)
        if xe <= xs or ye <= ys:
            return x + w
        idx = torch.linspace(0, lut.shape[0] - 1, w, device=self.device).round().long()
        bar = lut.to(self.device)[idx][xs - x : xe - x]
        self.rgb[ys:ye, xs:xe] = bar.unsqueeze(0).expand(ye - ys, -1, 3)
        self._touch(xs, ys, xe, ye)
        return x + w

    def polyline(self, xs: torch.Tensor, ys: torch.Tensor, colour: RGB, width: float) -> None:
        """A thick polyline through pixel points ``(xs[i], ys[i])`` (float tensors)."""
        if xs.numel() < 2:
            return
        a = torch.stack((xs[:-1], ys[:-1]), dim=1)
        d = torch.stack((xs[1:], ys[1:]), dim=1) - a
        n = torch.ceil(torch.linalg.vector_norm(d, dim=1) * 2).long().clamp(min=1) + 1
        seg = torch.repeat_interleave(torch.arange(len(n), device=self.device), n)
        k = torch.arange(int(n.sum()), device=self.device) - torch.repeat_interleave(
            torch.cumsum(n, 0) - n, n
        )
        t = (k.to(torch.float32) / (n[seg] - 1).clamp(min=1).to(torch.float32)).unsqueeze(1)
        pts = a[seg] + d[seg] * t
        r = max(0.5, width / 2)
        off = torch.arange(-r, r + 1e-6, 0.5, device=self.device)
        oy, ox = torch.meshgrid(off, off, indexing="ij")
        disc = (ox**2 + oy**2) <= r * r + 1e-6
        ox, oy = ox[disc], oy[disc]
        px = torch.floor(pts[:, 0:1] + ox).long().reshape(-1)
        py = torch.floor(pts[:, 1:2] + oy).long().reshape(-1)
        ok = (px >= 0) & (px < self.width) & (py >= 0) & (py < self.height)
        if bool(ok.any()):
            self.rgb[py[ok], px[ok]] = self._colour(colour)
            self._touch(int(px[ok].min()), int(py[ok].min()), int(px[ok].max()) + 1,
                        int(py[ok].max()) + 1)  # fmt: skip
