"""The what-if scene: three map panels rasterised once, drawn per frame on the device.

A :class:`WhatIfScene` is built once per network, frame size and device (a
daemon reuses it every cycle): the layout (:mod:`edge_accel.layout`), the glyph
atlases, the static background (panels, junctions), and flat pixel tables of
every edge in the three panels (current, candidate, difference) for the luma
and the chroma planes, and of every signal head in the first two. A video
(:mod:`edge_accel.render`) adds its own static text and charts to that
background once; each frame is then drawn directly in YUV 4:2:0 by
:meth:`WhatIfScene.draw`:

1. vehicle pixels of the buffer's previous frame go back to the background;
2. every edge takes its colour: the roads' occupancy on the first two panels,
   the change of the mean queue on the third (gathered from LUTs already in YUV);
3. vehicles are stamped as oriented marks coloured by speed
   (:mod:`edge_accel.marks`);
4. signal heads take their colour from the recorded state; black rims;
5. the text fields that change (the clock, the charts' values) are composed
   from the glyph atlas and blended into the luma plane;
6. the strip charts fill in up to the cursor (:mod:`edge_accel.chart`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import torch

from configs.errors import ConfigError
from edge_accel.chart import StripChart
from edge_accel.color import Palette, colormap_lut, rgb_to_yuv, rgb_to_yuv420
from edge_accel.font import Align, GlyphAtlas
from edge_accel.layout import Canvas, Fonts, Layout, Rect, fonts_for
from edge_accel.marks import HeadPixels, VehicleStamp, head_anchors, head_pixels, last_wins
from edge_accel.raster import WorldToPixel, rasterise_polylines
from edge_accel.scene import SceneGeometry

__all__ = ["FrameBatch", "FrameBuffer", "TextField", "VehicleBatch", "WhatIfScene", "lut_rows"]

logger = logging.getLogger(__name__)

#: LUT rows: roads 0..255, no data 256, difference 257..512, signal classes 513..516.
ROAD, NO_DATA, DIFF, SIGNAL = 0, 256, 257, 513
_LANE_M = 3.2
_VEHICLE_LENGTH_M = 5.0
_VEHICLE_WIDTH_M = 1.9


@dataclass(frozen=True, eq=False)
class TextField:
    """A text box that changes every frame (luma only, on a plain background)."""

    rect: Rect
    atlas: GlyphAtlas
    align: Align = "left"
    luma: int = 235


@dataclass(frozen=True)
class VehicleBatch:
    """The vehicles of a batch of frames, flat (all tensors ``[V]`` on the device).

    Attributes:
        x_px, y_px: Mark centres in frame pixels (panel offset included).
        ux, uy: Unit heading in pixel coordinates (y down).
        colour: ``long`` speed LUT index 0..255.
        frame: ``long`` frame within the batch.
        panel: ``long`` 0 (current) or 1 (candidate): the map rect that clips the mark.
    """

    x_px: torch.Tensor
    y_px: torch.Tensor
    ux: torch.Tensor
    uy: torch.Tensor
    colour: torch.Tensor
    frame: torch.Tensor
    panel: torch.Tensor


@dataclass
class FrameBatch:
    """What changes in a batch of ``B`` frames.

    Attributes:
        road: ``long [B, 2E]`` LUT rows of the roads on panels 0 and 1 (0..255, 256 no data).
        diff: ``long [B, E]`` LUT rows of the difference panel (257..512, 256 no data).
        heads: ``long [B, 2Hd]`` signal classes of the heads on panels 0 and 1 (0..3).
        vehicles: The vehicles, or None.
        text: Text fields with ``long [B, n]`` glyph codes.
        cursor: ``long [B]`` strip-chart cursor column (per chart), or None.
    """

    road: torch.Tensor
    diff: torch.Tensor
    heads: torch.Tensor
    vehicles: VehicleBatch | None = None
    text: dict[TextField, torch.Tensor] = field(default_factory=dict)
    cursor: torch.Tensor | None = None


class FrameBuffer:
    """Reusable frames holding a video's background, and the vehicle pixels drawn last.

    Attributes:
        frames: ``uint8 [B, H * 3 // 2, W]`` (pinned host memory for CUDA transfers
            when asked for).
        background: The flat YUV background the frames were filled with.
    """

    def __init__(self, frames: torch.Tensor, background: torch.Tensor) -> None:
        self.frames = frames
        self.background = background
        #: whether vehicles were drawn into the frames (their maps need restoring)
        self.vehicles_drawn = False
        #: per strip chart, the cursor last drawn into each frame slot (-1: none)
        self.chart_cursor: dict[int, list[int]] = {}


def planes(frames: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, ...]:
    """Y ``[B, H, W]``, U and V ``[B, H/2, W/2]`` views of packed YUV 4:2:0 frames."""
    batch = frames.shape[0] if frames.dim() == 3 else 1
    flat = frames.reshape(batch, -1)
    plane, quarter = height * width, height * width // 4
    return (
        flat[:, :plane].view(batch, height, width),
        flat[:, plane : plane + quarter].view(batch, height // 2, width // 2),
        flat[:, plane + quarter :].view(batch, height // 2, width // 2),
    )


class WhatIfScene:
    """A laid-out, rasterised three-panel what-if scene on one device."""

    def __init__(
        self,
        geometry: SceneGeometry,
        width: int,
        height: int,
        device: torch.device,
        *,
        colormap: str = "greys",
        font: object = None,
    ) -> None:
        """Lay out the frame, draw the static background and rasterise edges and heads.

        The scene depends only on the geometry, the frame size, the colormap and
        the font, so a daemon builds it once per network and reuses it.

        Args:
            geometry: The network as drawn.
            width: Frame width (even, >= 320).
            height: Frame height (even, >= 180).
            device: Where everything is drawn.
            colormap: The roads' occupancy colormap: ``greys``, ``viridis`` or ``cividis``.
            font: A ``.ttf`` file; None = DejaVu Sans from the system.

        Raises:
            ConfigError: The frame is too small or odd-sized, the geometry is
                invalid, the colormap unknown or the font missing.
        """
        if width % 2 or height % 2 or width < 320 or height < 180:
            raise ConfigError(
                f"[video] size {width}x{height}: need even width >= 320 and height >= 180"
            )
        self.geometry = geometry.validated()
        self.width = width
        self.height = height
        self.device = device
        self.colormap = colormap
        self.n_edges = len(self.geometry.edge_ids)
        self.fonts: Fonts = fonts_for(height, device, font)
        self.layout = Layout.compute(width, height, self.fonts)
        self.panel_dx = tuple(r.x - self.layout.maps[0].x for r in self.layout.maps)
        rgb = torch.tensor(Palette.BACKGROUND, dtype=torch.uint8, device=device)
        self.background_rgb = rgb.expand(height, width, 3).clone()
        self._build_luts(colormap)
        self._rasterise()
        self.background = rgb_to_yuv420(self.background_rgb).reshape(-1)

    # -- colours ----------------------------------------------------------------------

    def _build_luts(self, colormap: str) -> None:
        dev = self.device
        self.road_lut = colormap_lut(colormap, 256, dev)
        self.speed_lut = colormap_lut("speed", 256, dev)
        self.diff_lut = colormap_lut("blue-orange", 256, dev)
        signal = torch.tensor(
            [Palette.SIGNAL_OFF, Palette.SIGNAL_RED, Palette.SIGNAL_AMBER, Palette.SIGNAL_GREEN],
            dtype=torch.uint8,
            device=dev,
        )
        no_data = torch.tensor([Palette.NO_DATA], dtype=torch.uint8, device=dev)
        self.lut_yuv = rgb_to_yuv(torch.cat((self.road_lut, no_data, self.diff_lut, signal)))
        self.speed_yuv = rgb_to_yuv(self.speed_lut)
        # what a drawn vehicle pixel holds -> its colour: 0 the rim, 1 + (254 - speed index)
        rim = torch.tensor([Palette.OUTLINE], dtype=torch.uint8, device=dev)
        self.vehicle_yuv = rgb_to_yuv(torch.cat((rim, self.speed_lut[:255].flip(0))))

    # -- rasterisation ----------------------------------------------------------------

    def _rasterise(self) -> None:
        geo, lay = self.geometry, self.layout
        if geo.bounds is None:  # validated() always fills them
            raise ConfigError("scene geometry has no bounds")
        m0 = lay.maps[0]
        pad = lay.margin
        bx0, by0, bx1, by1 = geo.bounds
        span_x, span_y = max(bx1 - bx0, 1e-6), max(by1 - by0, 1e-6)
        scale = min((m0.w - 2 * pad) / span_x, (m0.h - 2 * pad) / span_y)
        ox = m0.x + (m0.w - scale * span_x) / 2 - scale * bx0
        oy = m0.y1 - (m0.h - scale * span_y) / 2 + scale * by0
        self.to_px = WorldToPixel(scale, ox, oy)
        self.scale_px_per_m = scale
        u = self.height / 1080.0
        min_band = max(2.0, self.height / 160)
        band_px = {
            e: max(min_band, geo.widths_m.get(e, geo.default_width_m) * scale) for e in geo.edge_ids
        }
        polylines = {e: np.asarray(geo.polylines[e], dtype=np.float64) for e in geo.edge_ids}
        # vehicles sit on their band's middle (bands are drawn wider than to scale)
        self.vehicle_shift_px = max(0.0, max(min_band, _LANE_M * scale) - _LANE_M * scale) / 2
        self.stamp = VehicleStamp(
            max(4.0, 8.0 * u, _VEHICLE_LENGTH_M * scale),
            max(2.0, 3.6 * u, _VEHICLE_WIDTH_M * scale),
            self.width,
            self.device,
            rim_px=1.0,
        )

        canvas = Canvas(self.background_rgb)
        for rect in lay.maps:
            canvas.fill(rect, Palette.MAP)
            canvas.frame(rect, Palette.PANEL_EDGE)
        # junctions: neutral squares under the heads, excluded from the edges
        markers = torch.zeros(self.height, self.width, dtype=torch.bool, device=self.device)
        half = max(2, round(min_band * 0.7))
        self.junction_boxes: dict[str, Rect] = {}
        for tls, (jx, jy) in geo.intersections.items():
            px, py = (int(round(v)) for v in self.to_px.apply(np.array([[jx, jy]]))[0])
            box = Rect(px - half, py - half, 2 * half, 2 * half)
            self.junction_boxes[tls] = box
            for dx, rect in zip(self.panel_dx, lay.maps, strict=True):
                x0, x1 = max(rect.x, box.x + dx), min(rect.x1, box.x1 + dx)
                y0, y1 = max(rect.y, box.y), min(rect.y1, box.y1)
                if x1 > x0 and y1 > y0:
                    markers[y0:y1, x0:x1] = True
        self.background_rgb[markers] = torch.tensor(
            Palette.JUNCTION, dtype=torch.uint8, device=self.device
        )
        exclude_y = markers.reshape(-1)
        exclude_c = (
            markers.reshape(self.height // 2, 2, self.width // 2, 2).any(dim=3).any(dim=1)
        ).reshape(-1)

        clip = (m0.x, m0.y, m0.x1, m0.y1)
        lines = [polylines[e] for e in geo.edge_ids]
        bands = [band_px[e] for e in geo.edge_ids]
        luma = rasterise_polylines(
            lines, bands, self.to_px, clip, self.width, self.device, exclude_y
        )
        chroma = rasterise_polylines(
            lines,
            [b / 2 for b in bands],
            self.to_px.scaled(0.5),
            (m0.x // 2, m0.y // 2, (m0.x1 + 1) // 2, (m0.y1 + 1) // 2),
            self.width // 2,
            self.device,
            exclude_c,
        )
        self.luma_pixels, self.chroma_pixels = len(luma), len(chroma)
        m1 = lay.maps[1]
        x0, y0 = m0.x // 2 * 2, m0.y // 2 * 2
        #: the area vehicles are drawn in (the first two maps), even-aligned for chroma
        self.vehicle_rect = Rect(x0, y0, (m1.x1 + 1) // 2 * 2 - x0, (m0.y1 + 1) // 2 * 2 - y0)
        plane, quarter, e = self.width * self.height, self.width * self.height // 4, self.n_edges
        # a neutral road colormap (greys) leaves the maps' chroma as it is: drawn once
        neutral = bool((self.lut_yuv[: NO_DATA + 1, 1:] == 128).all())
        flats, keys = [], []
        for panel, dx in enumerate(self.panel_dx):
            for table, offset, chan in (
                (luma, dx, 0),
                (chroma, dx // 2 + plane, 1),
                (chroma, dx // 2 + plane + quarter, 2),
            ):
                if chan and panel < 2 and neutral:
                    continue
                flats.append(table.flat + offset)
                keys.append((table.edge + panel * e) * 3 + chan)
        self.pix_flat = torch.cat(flats)
        self.pix_key = torch.cat(keys)

        # signal heads, on the current and candidate panels
        self.heads = tuple(geo.signal_heads)
        size = max(3, round(4 * u))
        rim = 1
        anchors = head_anchors(self.heads, polylines, band_px, self.to_px, size + 2 * rim + 1)
        self.n_heads = len(self.heads)
        self._head_tables(head_pixels(anchors, size, rim, self.width, clip, self.device))
        logger.debug(
            "scene %dx%d: %d edges (%d luma + %d chroma px per panel), %d signal heads",
            self.width, self.height, e, len(luma), len(chroma), self.n_heads,
        )  # fmt: skip

    def _head_tables(self, table: HeadPixels) -> None:
        w, plane, quarter = self.width, self.width * self.height, self.width * self.height // 4

        def chroma(flat: torch.Tensor) -> torch.Tensor:
            return (flat // w // 2) * (w // 2) + (flat % w) // 2

        c_fill = chroma(table.fill_flat)
        keep = last_wins(c_fill)
        c_fill, c_head = c_fill[keep], table.fill_head[keep]
        c_rim = torch.unique(chroma(table.rim_flat))
        c_rim = c_rim[~torch.isin(c_rim, c_fill)]
        fill_flat, fill_key, rim_flat, rim_val = [], [], [], []
        for panel, dx in enumerate(self.panel_dx[:2]):
            offset = panel * self.n_heads
            for flat, head, base, chan in (
                (table.fill_flat + dx, table.fill_head, 0, 0),
                (c_fill + dx // 2, c_head, plane, 1),
                (c_fill + dx // 2, c_head, plane + quarter, 2),
            ):
                fill_flat.append(flat + base)
                fill_key.append((head + offset) * 3 + chan)
            for flat, base, value in (
                (table.rim_flat + dx, 0, 16),
                (c_rim + dx // 2, plane, 128),
                (c_rim + dx // 2, plane + quarter, 128),
            ):
                rim_flat.append(flat + base)
                rim_val.append(torch.full_like(flat, value, dtype=torch.uint8))
        self.head_flat = torch.cat(fill_flat)
        self.head_key = torch.cat(fill_key)
        self.rim_flat = torch.cat(rim_flat)
        self.rim_value = torch.cat(rim_val)

    # -- per-frame drawing ------------------------------------------------------------

    def new_buffer(
        self, batch: int, *, pin: bool = False, background: torch.Tensor | None = None
    ) -> FrameBuffer:
        """Return ``batch`` frames holding ``background`` (the scene's by default).

        Passing such a buffer to :meth:`draw` reuses it: only the parts that
        change are rewritten. With ``pin`` the frames are in page-locked host
        memory (for CUDA transfers).
        """
        bg = self.background if background is None else background
        shape = (batch, self.height * 3 // 2, self.width)
        frames = bg.view(1, *shape[1:]).expand(shape)
        if pin:
            return FrameBuffer(
                frames.cpu().clone(memory_format=torch.contiguous_format).pin_memory(), bg
            )
        return FrameBuffer(frames.clone(memory_format=torch.contiguous_format), bg)

    def empty_batch(self, batch: int) -> FrameBatch:
        """A batch with every road and difference edge "no data" and every head off."""
        dev = self.device
        return FrameBatch(
            road=torch.full((batch, 2 * self.n_edges), NO_DATA, dtype=torch.long, device=dev),
            diff=torch.full((batch, self.n_edges), NO_DATA, dtype=torch.long, device=dev),
            heads=torch.zeros((batch, 2 * self.n_heads), dtype=torch.long, device=dev),
        )

    def draw(
        self,
        batch: FrameBatch,
        out: FrameBuffer | None = None,
        charts: Sequence[StripChart] = (),
    ) -> torch.Tensor:
        """Draw a batch of frames.

        Args:
            batch: What changes (see :class:`FrameBatch`).
            out: A buffer from :meth:`new_buffer` (at least ``B`` frames) to draw
                into; a new one (with the scene's background) when None.
            charts: The video's strip charts; ``batch.cursor[:, i]`` is chart ``i``'s.

        Returns:
            ``uint8 [B, H * 3 // 2, W]`` packed YUV 4:2:0 frames on the device
            (a view of the buffer).
        """
        n = batch.road.shape[0]
        buffer = self.new_buffer(n) if out is None else out
        bg = buffer.background
        frames = buffer.frames[:n]
        flat = frames.reshape(n, -1)
        all_flat = frames.reshape(-1)
        frame_len = flat.shape[1]
        y_plane, u_plane, v_plane = planes(frames, self.height, self.width)
        bg_y, bg_u, bg_v = (p[0] for p in planes(bg.view(1, -1), self.height, self.width))
        # 1. the maps with vehicles back to the background (a plain copy of their rows)
        if buffer.vehicles_drawn:
            r = self.vehicle_rect
            for plane, bg_plane, half in (
                (y_plane, bg_y, 1),
                (u_plane, bg_u, 2),
                (v_plane, bg_v, 2),
            ):
                ys, xs = slice(r.y // half, r.y1 // half), slice(r.x // half, r.x1 // half)
                plane[:, ys, xs] = bg_plane[ys, xs]
        # 2. edges (all three panels)
        rows = torch.cat((batch.road, batch.diff), dim=1)  # [B, 3E]
        colour = self.lut_yuv[rows].reshape(n, -1)
        flat[:, self.pix_flat] = colour[:, self.pix_key]
        # 3. vehicles
        buffer.vehicles_drawn = self._draw_vehicles(all_flat, batch.vehicles, frame_len)
        # 4. signal heads
        if self.n_heads:
            head_colour = self.lut_yuv[batch.heads + SIGNAL].reshape(n, -1)
            flat[:, self.head_flat] = head_colour[:, self.head_key]
            flat[:, self.rim_flat] = self.rim_value
        # 5. text
        for text_field, codes in batch.text.items():
            r = text_field.rect
            mask = text_field.atlas.render_codes(codes, r.w, text_field.align)
            h = min(mask.shape[1], self.height - r.y)
            region = y_plane[:, r.y : r.y + h, r.x : r.x1]
            base = bg_y[r.y : r.y + h, r.x : r.x1].to(torch.int16)
            alpha = mask[:, :h, : region.shape[2]].to(torch.int16)
            region.copy_((base + ((text_field.luma - base) * alpha + 127) // 255).to(torch.uint8))
        # 6. strip charts
        if batch.cursor is not None:
            cursors = batch.cursor.cpu().tolist()
            for index, chart in enumerate(charts):
                previous = buffer.chart_cursor.setdefault(index, [-1] * buffer.frames.shape[0])
                chart.apply((y_plane, u_plane, v_plane), [c[index] for c in cursors], previous)
        return frames

    def _draw_vehicles(
        self, all_flat: torch.Tensor, vehicles: VehicleBatch | None, frame_len: int
    ) -> bool:
        """Stamp the vehicles; return whether any was drawn.

        Overlaps are resolved without sorting and the same on every run: the
        covered pixels are zeroed, then each takes the largest value of the
        points covering it (``scatter_reduce`` amax): 0 for a rim, 1 + the
        "slowness" (254 - speed index) for a mark. So a mark covers any rim, and
        where marks overlap the slowest vehicle shows (queues stay visible).
        """
        if vehicles is None or vehicles.x_px.numel() == 0:
            return False
        maps = self.layout.maps
        reach = self.stamp.length_px / 2 + self.stamp.rim_px + 1
        lo = torch.tensor([maps[0].x, maps[1].x], device=self.device)[vehicles.panel]
        hi = torch.tensor([maps[0].x1, maps[1].x1], device=self.device)[vehicles.panel]
        # marks that would cross their panel's edge are not drawn (a per-vehicle test)
        inside = (
            (vehicles.x_px - reach >= lo)
            & (vehicles.x_px + reach < hi)
            & (vehicles.y_px - reach >= maps[0].y)
            & (vehicles.y_px + reach < maps[0].y1)
        )
        keep = inside.nonzero().squeeze(1)
        if keep.numel() == 0:
            return False
        stamp = self.stamp
        cx = torch.floor(vehicles.x_px[keep]).long()
        cy = torch.floor(vehicles.y_px[keep]).long()
        bins = stamp.heading_bins(vehicles.ux[keep], vehicles.uy[keep])
        base = vehicles.frame[keep] * frame_len
        mark = (255 - vehicles.colour[keep].clamp(max=254)).to(torch.uint8).unsqueeze(1)
        plane = self.width * self.height
        quarter = plane // 4
        luma = ((base + cy * self.width + cx).unsqueeze(1) + stamp.offsets[bins]).reshape(-1)
        luma_values = torch.where(stamp.inner[bins], mark, 0).reshape(-1)
        centre_c = base + plane + (cy // 2) * (self.width // 2) + cx // 2
        offsets_c = stamp.offsets_c[bins, (cx % 2) + 2 * (cy % 2)]
        chroma = (centre_c.unsqueeze(1) + offsets_c).reshape(-1)
        chroma_values = mark.expand_as(offsets_c).reshape(-1)
        for flat, values in ((luma, luma_values), (chroma, chroma_values)):
            all_flat[flat] = 0
            all_flat.scatter_reduce_(0, flat, values, reduce="amax")
        all_flat[luma] = self.vehicle_yuv[all_flat[luma].long(), 0]
        colour = all_flat[chroma].long()
        all_flat[chroma] = self.vehicle_yuv[colour, 1]
        all_flat[chroma + quarter] = self.vehicle_yuv[colour, 2]
        return True

    # -- geometry helpers for a video -------------------------------------------------

    def vehicle_pixels(
        self, x_m: torch.Tensor, y_m: torch.Tensor, angle_deg: torch.Tensor, panel: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mark centres and headings in pixels of vehicles (front, SUMO heading) on ``panel``."""
        t = self.to_px
        rad = torch.deg2rad(angle_deg)
        ux, uy = torch.sin(rad), -torch.cos(rad)
        half = self.stamp.length_px / 2
        shift = self.vehicle_shift_px
        x = t.ox + self.panel_dx[panel] + t.scale_px_per_m * x_m - ux * half - uy * shift
        y = t.oy - t.scale_px_per_m * y_m - uy * half + ux * shift
        return x, y, ux, uy


def lut_rows(
    values: npt.NDArray[np.float32] | torch.Tensor, lo: float, hi: float, base: int
) -> torch.Tensor:
    """Values scaled from ``[lo, hi]`` to LUT rows ``base..base + 255`` (NaN -> no data)."""
    v = values if isinstance(values, torch.Tensor) else torch.from_numpy(values)
    rows = ((v - lo) / (hi - lo)).clamp(0.0, 1.0).mul(255.0).round().long() + base
    return torch.where(torch.isnan(v), NO_DATA, rows)
