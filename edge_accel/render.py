"""Render a what-if video (current plan | candidate) on the device and encode it.

The scene is laid out and rasterised once: a static background (panels,
intersection markers, legend, titles, attribution line) converted to YUV 4:2:0,
and flat pixel tables of every edge for the luma and the chroma planes of both
panels. Each batch of frames is then drawn with three tensor operations per
plane group -- gather per-edge colours from a colormap LUT (already in YUV),
scatter them into copies of the background, overwrite queued core pixels with a
contrasting stripe -- plus text stamped from a pre-rendered glyph atlas. Frames
never leave the device until a whole batch is copied (through pinned memory on
CUDA) to the encoder, which works on the previous batch meanwhile.

Time: the video spans the recorded simulated horizon; frame ``k`` of ``N``
shows simulated time ``t0 + (t1 - t0) * k / (N - 1)``. Series are linearly
interpolated between recorded samples (and held beyond a side's last sample),
so a short recording still fills the configured duration.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch

from configs.digests import sha256_file
from configs.errors import ConfigError
from edge_accel.color import colormap_lut, rgb_to_yuv, rgb_to_yuv420
from edge_accel.device import select_device
from edge_accel.encode import Attribution, H264Writer, VideoArtifact, write_sidecar
from edge_accel.font import GlyphAtlas
from edge_accel.raster import PixelTable, WorldToPixel, rasterise_polylines
from edge_accel.scene import SceneGeometry, WhatIfFrames

__all__ = ["FrameTimeline", "WhatIfScene", "render_whatif"]

logger = logging.getLogger(__name__)

_BACKGROUND = (20, 20, 20)
_MAP_BACKGROUND = (34, 34, 34)
_DIVIDER = (90, 90, 90)
_TEXT = (235, 235, 235)
_MARKER = (245, 245, 245)
_NO_DATA = (95, 95, 95)
_Y_WHITE = 235
_Y_DIM = 158
_NO_DATA_INDEX = 256
_VEHICLE_SPACING_M = 7.5


@dataclass(frozen=True)
class _TextField:
    x: int
    y: int
    width_chars: int
    atlas: GlyphAtlas
    luma: int = _Y_WHITE


@dataclass(frozen=True)
class FrameTimeline:
    """Which simulated time each video frame shows, and how to sample each side.

    Attributes:
        sim_time_s: ``[N]`` simulated time per frame.
        lo, hi, weight: Per side (``"current"``, ``"candidate"``), ``[N]``
            sample indices and the interpolation weight of ``hi``.
    """

    sim_time_s: npt.NDArray[np.float64]
    lo: dict[str, npt.NDArray[np.int64]]
    hi: dict[str, npt.NDArray[np.int64]]
    weight: dict[str, npt.NDArray[np.float32]]

    @classmethod
    def build(cls, n_frames: int, sides: dict[str, npt.NDArray[np.float32]]) -> FrameTimeline:
        """Spread ``n_frames`` over the union of the sides' recorded times."""
        t0 = min(float(t[0]) for t in sides.values())
        t1 = max(float(t[-1]) for t in sides.values())
        if n_frames > 1:
            sim = t0 + (t1 - t0) * np.arange(n_frames, dtype=np.float64) / (n_frames - 1)
        else:
            sim = np.array([t0], dtype=np.float64)
        lo: dict[str, npt.NDArray[np.int64]] = {}
        hi: dict[str, npt.NDArray[np.int64]] = {}
        weight: dict[str, npt.NDArray[np.float32]] = {}
        for name, times in sides.items():
            t = times.astype(np.float64)
            upper = np.clip(np.searchsorted(t, sim, side="right"), 1, max(1, len(t) - 1))
            lower = upper - 1
            if len(t) == 1:
                lower = upper = np.zeros(n_frames, dtype=np.int64)
                w = np.zeros(n_frames)
            else:
                span = t[upper] - t[lower]
                w = np.clip((sim - t[lower]) / span, 0.0, 1.0)
            lo[name] = lower.astype(np.int64)
            hi[name] = upper.astype(np.int64)
            weight[name] = w.astype(np.float32)
        return cls(sim_time_s=sim, lo=lo, hi=hi, weight=weight)

    def sample(self, side: str, series: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Interpolate a ``[T]`` series of ``side`` at every frame (host-side)."""
        w = self.weight[side]
        out: npt.NDArray[np.float32] = (
            series[self.lo[side]] * (1.0 - w) + series[self.hi[side]] * w
        ).astype(np.float32)
        return out


def _clock(t_s: float) -> str:
    if not math.isfinite(t_s):
        return "--:--:--"
    total = int(round(t_s)) % 86_400
    return f"{total // 3600:02d}:{total % 3600 // 60:02d}:{total % 60:02d}"


def _num(value: float, width: int, digits: int = 1) -> str:
    if not math.isfinite(value):
        return "N/A".rjust(width)
    text = f"{value:{width}.{digits}f}"
    return text if len(text) <= width else f"{value:{width}.0f}"[-width:]


def _pct(value: float) -> str:
    if not math.isfinite(value):
        return "    N/A"
    return f"{max(-999.9, min(999.9, value)):+6.1f}%"


class WhatIfScene:
    """A laid-out, rasterised side-by-side what-if scene on one device."""

    def __init__(
        self,
        geometry: SceneGeometry,
        width: int,
        height: int,
        device: torch.device,
        *,
        colormap: str = "viridis",
    ) -> None:
        """Lay out the frame, draw the static background and rasterise every edge.

        The scene depends only on the geometry, the frame size and the colormap,
        so a daemon can build it once per network and reuse it every cycle;
        plan labels and the attribution line are per-video text fields.

        Raises:
            ConfigError: The frame is too small or odd-sized, or the geometry is invalid.
        """
        if width % 2 or height % 2 or width < 320 or height < 180:
            raise ConfigError(
                f"[video] size {width}x{height}: need even width >= 320 and height >= 180"
            )
        self.geometry = geometry.validated()
        self.width = width
        self.height = height
        self.device = device
        self.n_edges = len(self.geometry.edge_ids)
        self.big = GlyphAtlas(max(1, round(height / 360)), device)
        self.small = GlyphAtlas(max(1, round(height / 540)), device)
        self._layout()
        self._build_luts(colormap)
        self._rasterise()

    # -- layout and static background -------------------------------------------------

    def _layout(self) -> None:
        w, h = self.width, self.height
        big, small = self.big, self.small
        m = max(4, round(h * 0.02))
        self.margin = m
        rgb = torch.tensor(_BACKGROUND, dtype=torch.uint8, device=self.device)
        self._bg_rgb = rgb.expand(h, w, 3).clone()

        header_y = m
        self._stamp_static("SIGNALTWIN WHAT-IF", m, header_y, big, _TEXT)
        clock_chars = len("SIM TIME 00:00:00")
        self.clock_field = _TextField(w - m - big.width(clock_chars), header_y, clock_chars, big)

        label_y = header_y + big.cell_h + m // 2
        panel_w = ((w - 3 * m) // 2) // 2 * 2
        self.panel_x = (m, 2 * m + panel_w)
        self.label_fields = tuple(
            _TextField(x, label_y, panel_w // big.cell_w, big) for x in self.panel_x
        )

        map_y0 = label_y + big.cell_h + m // 3
        attrib_y = h - m - small.cell_h
        legend_y = attrib_y - m // 2 - small.cell_h
        stats_y = legend_y - m // 2 - 2 * big.cell_h
        map_y1 = stats_y - m // 2
        if map_y1 - map_y0 < 40:
            raise ConfigError(f"[video] height {h} leaves no room for the map; use >= 360")
        self.map_rect = (self.panel_x[0], map_y0, self.panel_x[0] + panel_w, map_y1)
        self.panel_dx = self.panel_x[1] - self.panel_x[0]
        for x in self.panel_x:
            self._bg_rgb[map_y0:map_y1, x : x + panel_w] = torch.tensor(
                _MAP_BACKGROUND, dtype=torch.uint8, device=self.device
            )
        div_x = self.panel_x[0] + panel_w + m // 2
        self._bg_rgb[map_y0:map_y1, div_x - max(1, m // 8) // 2 : div_x + max(1, m // 8)] = (
            torch.tensor(_DIVIDER, dtype=torch.uint8, device=self.device)
        )

        # Running statistics: two rows of text under each map.
        stat_chars = min(panel_w // big.cell_w, 26)
        self.stat_fields = {
            (side, row): _TextField(self.panel_x[i], stats_y + row * big.cell_h, stat_chars, big)
            for i, side in enumerate(("current", "candidate"))
            for row in (0, 1)
        }
        self._legend(legend_y)
        self.attribution_field = _TextField(m, attrib_y, (w - 2 * m) // small.cell_w, small, _Y_DIM)

    def _legend(self, y: int) -> None:
        small, m = self.small, self.margin
        x = m
        x = self._stamp_static("OCCUPANCY 0%", x, y, small, _TEXT) + small.cell_w // 2
        bar_w = max(64, self.width // 5)
        self._legend_bar = (
            x,
            y + small.scale,
            bar_w,
            small.cell_h - 2 * small.scale,
        )  # see _build_luts
        x += bar_w + small.cell_w // 2
        x = self._stamp_static("100%", x, y, small, _TEXT) + 2 * small.cell_w
        swatch = (x, y + small.scale, 2 * small.cell_w, small.cell_h - 2 * small.scale)
        self._bg_rgb[swatch[1] : swatch[1] + swatch[3], swatch[0] : swatch[0] + swatch[2]] = (
            torch.tensor(_NO_DATA, dtype=torch.uint8, device=self.device)
        )
        x = self._stamp_static("NO DATA", x + swatch[2] + small.cell_w // 2, y, small, _TEXT)
        x += 2 * small.cell_w
        stripe_y = y + small.cell_h // 2 - small.scale
        self._bg_rgb[stripe_y : stripe_y + 2 * small.scale, x : x + 2 * small.cell_w] = (
            torch.tensor(_TEXT, dtype=torch.uint8, device=self.device)
        )
        x = self._stamp_static("QUEUE", x + 2 * small.cell_w + small.cell_w // 2, y, small, _TEXT)
        x += 2 * small.cell_w
        half = max(2, small.cell_h // 4)
        cy = y + small.cell_h // 2
        self._bg_rgb[cy - half : cy + half, x : x + 2 * half] = torch.tensor(
            _MARKER, dtype=torch.uint8, device=self.device
        )
        self._stamp_static("SIGNAL", x + 2 * half + small.cell_w // 2, y, small, _TEXT)

    def _stamp_static(
        self, text: str, x: int, y: int, atlas: GlyphAtlas, colour: tuple[int, int, int]
    ) -> int:
        """Draw ``text`` into the RGB background; return the x just past it."""
        mask = atlas.render(text)
        h = min(mask.shape[0], self.height - y)
        w = min(mask.shape[1], self.width - x)
        if h > 0 and w > 0:
            region = self._bg_rgb[y : y + h, x : x + w]
            region[mask[:h, :w]] = torch.tensor(colour, dtype=torch.uint8, device=self.device)
        return x + mask.shape[1]

    def _build_luts(self, colormap: str) -> None:
        lut = colormap_lut(colormap, 256, self.device)
        x, y, bw, bh = self._legend_bar
        ramp = lut[torch.linspace(0, 255, bw, device=self.device).round().long()]
        self._bg_rgb[y : y + bh, x : x + bw] = ramp.unsqueeze(0).expand(bh, bw, 3)
        no_data = torch.tensor([_NO_DATA], dtype=torch.uint8, device=self.device)
        lut_yuv = rgb_to_yuv(torch.cat((lut, no_data)))  # [257, 3]
        white = torch.tensor([235, 128, 128], dtype=torch.uint8, device=self.device)
        black = torch.tensor([16, 128, 128], dtype=torch.uint8, device=self.device)
        light = (lut_yuv[:, 0] > 140).unsqueeze(1)
        self.lut_yuv = lut_yuv
        self.contrast_yuv = torch.where(light, black, white)

    # -- rasterisation ----------------------------------------------------------------

    def _rasterise(self) -> None:
        geo = self.geometry
        if geo.bounds is None:  # validated() always fills them
            raise ConfigError("scene geometry has no bounds")
        x0, y0, x1, y1 = self.map_rect
        pad = self.margin
        bx0, by0, bx1, by1 = geo.bounds
        span_x = max(bx1 - bx0, 1e-6)
        span_y = max(by1 - by0, 1e-6)
        scale = min((x1 - x0 - 2 * pad) / span_x, (y1 - y0 - 2 * pad) / span_y)
        ox = x0 + (x1 - x0 - scale * span_x) / 2 - scale * bx0
        oy = y1 - (y1 - y0 - scale * span_y) / 2 + scale * by0
        to_px = WorldToPixel(scale, ox, oy)
        min_band = max(2.0, self.height / 160)
        band_px = [
            max(min_band, geo.widths_m.get(e, geo.default_width_m) * scale) for e in geo.edge_ids
        ]
        polylines = [np.asarray(geo.polylines[e], dtype=np.float64) for e in geo.edge_ids]

        # Intersection markers: drawn into the background, excluded from edges.
        markers = torch.zeros(self.height, self.width, dtype=torch.bool, device=self.device)
        half = max(2, round(max(band_px) * 1.1))
        if geo.intersections:
            pts = to_px.apply(np.asarray(list(geo.intersections.values()), dtype=np.float64))
            for px, py in np.round(pts).astype(int):
                for dx in (0, self.panel_dx):
                    markers[
                        max(y0, py - half) : min(y1, py + half),
                        max(x0, px + dx - half) : min(x1 + dx, px + dx + half),
                    ] = True
        self._bg_rgb[markers] = torch.tensor(_MARKER, dtype=torch.uint8, device=self.device)
        exclude_y = markers.reshape(-1)
        exclude_c = (
            markers.reshape(self.height // 2, 2, self.width // 2, 2).any(dim=3).any(dim=1)
        ).reshape(-1)

        luma = rasterise_polylines(
            polylines, band_px, to_px, self.map_rect, self.width, self.device, exclude_y
        )
        half_rect = (x0 // 2, y0 // 2, (x1 + 1) // 2, (y1 + 1) // 2)
        chroma = rasterise_polylines(
            polylines,
            [b / 2 for b in band_px],
            to_px.scaled(0.5),
            half_rect,
            self.width // 2,
            self.device,
            exclude_c,
        )
        self.luma_pixels = len(luma)
        self.chroma_pixels = len(chroma)

        plane = self.width * self.height
        quarter = plane // 4
        dx_c = self.panel_dx // 2
        e = self.n_edges
        parts: list[tuple[torch.Tensor, torch.Tensor, int, PixelTable]] = []
        for table, dx, base, chan in (
            (luma, self.panel_dx, 0, 0),
            (chroma, dx_c, plane, 1),
            (chroma, dx_c, plane + quarter, 2),
        ):
            parts.append((table.flat + base, table.edge, chan, table))
            parts.append((table.flat + dx + base, table.edge + e, chan, table))
        self.pix_flat = torch.cat([p[0] for p in parts])
        self.pix_key = torch.cat([p[1] * 3 + p[2] for p in parts])
        cores = [
            (p[0][p[3].core], p[1][p[3].core], p[2], p[3].dist_to_end_m[p[3].core]) for p in parts
        ]
        self.core_flat = torch.cat([c[0] for c in cores])
        self.core_col = torch.cat([c[1] for c in cores])
        self.core_key = torch.cat([c[1] * 3 + c[2] for c in cores])
        self.core_dist_m = torch.cat([c[3] for c in cores])
        self.background = rgb_to_yuv420(self._bg_rgb).reshape(-1)
        logger.debug(
            "scene %dx%d: %d edges, %d luma + %d chroma pixels per panel",
            self.width, self.height, e, len(luma), len(chroma),
        )  # fmt: skip

    # -- per-frame drawing ------------------------------------------------------------

    def new_buffer(self, batch: int, *, pin: bool = False) -> torch.Tensor:
        """Return ``[batch, H * 3 // 2, W]`` frames holding the background.

        Passing such a buffer to :meth:`draw` as ``out`` reuses it: only edge
        pixels and text fields are rewritten, so a batch never copies whole frames.
        With ``pin`` the buffer is in page-locked host memory (for CUDA transfers).
        """
        shape = (batch, self.height * 3 // 2, self.width)
        frames = self.background.view(1, *shape[1:]).expand(shape)
        if pin:
            return frames.cpu().clone(memory_format=torch.contiguous_format).pin_memory()
        return frames.clone(memory_format=torch.contiguous_format)

    def draw(
        self,
        occupancy: torch.Tensor,
        queue_m: torch.Tensor,
        text: dict[_TextField, torch.Tensor] | None = None,
        out: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Draw a batch of frames.

        Args:
            occupancy: ``[B, 2E]`` float occupancy (current edges, then candidate);
                NaN draws the no-data grey.
            queue_m: ``[B, 2E]`` queue length in metres from each edge's end.
            text: Text fields to stamp, each with ``[B, n]`` glyph codes.
            out: A buffer from :meth:`new_buffer` (at least ``B`` frames) to draw
                into; a new one is made when None.

        Returns:
            ``uint8 [B, H * 3 // 2, W]`` packed YUV 4:2:0 frames on the device.
        """
        batch = occupancy.shape[0]
        frames = self.new_buffer(batch) if out is None else out[:batch]
        index = (occupancy.clamp(0.0, 1.0) * 255.0).round().long()
        index = torch.where(torch.isnan(occupancy), _NO_DATA_INDEX, index)
        colour = self.lut_yuv[index].reshape(batch, -1)  # [B, 2E*3]
        contrast = self.contrast_yuv[index].reshape(batch, -1)
        flat = frames.view(batch, -1)
        flat.index_copy_(1, self.pix_flat, colour.index_select(1, self.pix_key))
        # Queue stripes: only the queued core pixels are rewritten (usually few).
        queued = queue_m.index_select(1, self.core_col) > self.core_dist_m
        frame_of, pixel = queued.nonzero(as_tuple=True)
        if frame_of.numel():
            frames_flat = flat.view(-1)
            target = frame_of * flat.shape[1] + self.core_flat[pixel]
            source = frame_of * contrast.shape[1] + self.core_key[pixel]
            frames_flat.index_copy_(0, target, contrast.reshape(-1).index_select(0, source))
        background = self.background.view(self.height * 3 // 2, self.width)
        for field, codes in (text or {}).items():
            mask = field.atlas.render_codes(codes)
            h = min(mask.shape[1], self.height - field.y)
            w = min(mask.shape[2], self.width - field.x)
            ys, xs = slice(field.y, field.y + h), slice(field.x, field.x + w)
            region = frames[:, ys, xs]
            region.copy_(background[ys, xs].expand_as(region))
            region.masked_fill_(mask[:, :h, :w], field.luma)
        return frames

    def text_codes(self, field: _TextField, lines: list[str]) -> torch.Tensor:
        """Encode one fixed-width text field for every frame as ``[N, n]`` glyph codes."""
        n = field.width_chars
        codes = [GlyphAtlas.codes(line[:n].ljust(n)) for line in lines]
        return torch.tensor(codes, dtype=torch.long).to(self.device)

    def constant_codes(self, field: _TextField, line: str, n_frames: int) -> torch.Tensor:
        """Encode one text for all ``n_frames`` frames (an expanded view, no copies)."""
        return self.text_codes(field, [line]).expand(n_frames, -1)


def _align(side: WhatIfFrames, edge_ids: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Reorder a side's columns to the geometry's edges (missing -> NaN)."""
    column = {e: i for i, e in enumerate(side.edge_ids)}
    idx = np.array([column.get(e, -1) for e in edge_ids], dtype=np.int64)
    missing = idx < 0
    if missing.any():
        logger.info(
            "%s: %d of %d drawn edges have no series (drawn as no data)",
            side.label, int(missing.sum()), len(edge_ids),
        )  # fmt: skip
    occ = side.occupancy[:, np.where(missing, 0, idx)].astype(np.float32)
    queue = side.queue_veh[:, np.where(missing, 0, idx)].astype(np.float32)
    occ[:, missing] = np.nan
    queue[:, missing] = 0.0
    finite = occ[np.isfinite(occ)]
    if finite.size and float(finite.max()) > 1.5:
        logger.warning(
            "%s: occupancy reaches %.1f; treating it as percent (expected a 0..1 fraction)",
            side.label, float(finite.max()),
        )  # fmt: skip
        occ = occ / 100.0
    return occ, np.nan_to_num(queue, nan=0.0) * _VEHICLE_SPACING_M


def _default_batch(width: int, height: int) -> int:
    frame_bytes = width * height * 3 // 2
    return int(max(1, min(32, (128 << 20) // frame_bytes)))


def render_whatif(
    geometry: SceneGeometry,
    frames_current: WhatIfFrames,
    frames_candidate: WhatIfFrames,
    attribution: Attribution,
    out_path: Path,
    width: int = 1920,
    height: int = 1080,
    fps: int = 30,
    device: torch.device | str | None = None,
    *,
    duration_s: float = 20.0,
    preset: str = "veryfast",
    crf: int = 23,
    batch_frames: int | None = None,
    colormap: str = "viridis",
    clock_offset_s: float = 0.0,
    scene: WhatIfScene | None = None,
) -> VideoArtifact:
    """Render the side-by-side what-if video and its attribution sidecar.

    Args:
        geometry: The network as drawn.
        frames_current: The current plan's series (left panel).
        frames_candidate: The candidate's series (right panel).
        attribution: Digests and seed stamped on every frame.
        out_path: The .mp4 to write; the sidecar goes next to it as ``<name>.json``.
        width: Frame width (even), 1920 by default; 3840 for 4K.
        height: Frame height (even), 1080 by default; 2160 for 4K.
        fps: Frames per second.
        device: A device, a ``[edge] device`` preference string, or None (= "auto").
        duration_s: Video length; ``round(duration_s * fps)`` frames.
        preset: libx264 preset.
        crf: libx264 constant rate factor.
        batch_frames: Frames drawn per device batch (default from frame size).
        colormap: ``"viridis"`` or ``"cividis"``.
        clock_offset_s: Added to simulated time for the on-screen clock
            (seconds since midnight of the simulated start).
        scene: A scene built earlier for this geometry, size and device (reused
            across cycles to skip rasterisation); built here when None.

    Returns:
        The written video with the sha256 of the MP4 and of the sidecar.

    Raises:
        ConfigError: Bad sizes, durations, device or inputs.
        SignaltwinError: Encoding or writing failed.
    """
    dev = device if isinstance(device, torch.device) else select_device(device or "auto")
    n_frames = int(round(duration_s * fps))
    if n_frames < 1 or fps < 1:
        raise ConfigError(f"[video] duration_s={duration_s}, fps={fps} give no frames")
    if scene is None:
        scene = WhatIfScene(geometry, width, height, dev, colormap=colormap)
    elif (scene.width, scene.height, scene.device) != (width, height, dev):
        raise ConfigError(
            f"the reused scene is {scene.width}x{scene.height} on {scene.device}, "
            f"not {width}x{height} on {dev}"
        )
    edge_ids = scene.geometry.edge_ids
    timeline = FrameTimeline.build(
        n_frames, {"current": frames_current.times_s, "candidate": frames_candidate.times_s}
    )
    series: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for name, side in (("current", frames_current), ("candidate", frames_candidate)):
        occ, queue_m = _align(side, edge_ids)
        series[name] = (torch.from_numpy(occ).to(dev), torch.from_numpy(queue_m).to(dev))

    # Text for every frame, encoded once on the host and moved once.
    wait = {
        n: timeline.sample(n, s.mean_wait_s)
        for n, s in (("current", frames_current), ("candidate", frames_candidate))
    }
    nox = {
        n: timeline.sample(n, s.nox_mg)
        for n, s in (("current", frames_current), ("candidate", frames_candidate))
    }
    with np.errstate(divide="ignore", invalid="ignore"):
        wait_rel = (wait["candidate"] / wait["current"] - 1.0) * 100.0
        nox_rel = (nox["candidate"] / nox["current"] - 1.0) * 100.0
    lines: dict[_TextField, list[str]] = {
        scene.clock_field: [f"SIM TIME {_clock(t + clock_offset_s)}" for t in timeline.sim_time_s]
    }
    for side_name in ("current", "candidate"):
        rows: tuple[list[str], list[str]] = ([], [])
        for k in range(n_frames):
            w_txt = f"MEAN WAIT {_num(float(wait[side_name][k]), 6)} S"
            n_txt = f"NOX  {_num(float(nox[side_name][k]) / 1000.0, 10)} G"
            if side_name == "candidate":
                w_txt += f" {_pct(float(wait_rel[k]))}"
                n_txt += f" {_pct(float(nox_rel[k]))}"
            rows[0].append(w_txt)
            rows[1].append(n_txt)
        lines[scene.stat_fields[(side_name, 0)]] = rows[0]
        lines[scene.stat_fields[(side_name, 1)]] = rows[1]
    codes = {field: scene.text_codes(field, text) for field, text in lines.items()}
    for field, label in zip(
        scene.label_fields, (frames_current.label, frames_candidate.label), strict=True
    ):
        codes[field] = scene.constant_codes(field, label, n_frames)
    attribution_line = (
        f"NET {attribution.network_sha256[:12]}  DEMAND {attribution.demand_sha256[:12]}  "
        f"PLAN {attribution.plan_current_sha256[:12]} | {attribution.plan_candidate_sha256[:12]}  "
        f"{attribution.simulator_version}  SEED {attribution.seed}"
    )
    codes[scene.attribution_field] = scene.constant_codes(
        scene.attribution_field, attribution_line, n_frames
    )

    def frame_values(lo_k: int, hi_k: int) -> tuple[torch.Tensor, torch.Tensor]:
        occs, queues = [], []
        for name in ("current", "candidate"):
            occ, queue_m = series[name]
            lo = torch.from_numpy(timeline.lo[name][lo_k:hi_k]).to(dev)
            hi = torch.from_numpy(timeline.hi[name][lo_k:hi_k]).to(dev)
            w = torch.from_numpy(timeline.weight[name][lo_k:hi_k]).to(dev).unsqueeze(1)
            occs.append(occ[lo] * (1 - w) + occ[hi] * w)
            queues.append(queue_m[lo] * (1 - w) + queue_m[hi] * w)
        return torch.cat(occs, dim=1), torch.cat(queues, dim=1)

    batch = batch_frames or _default_batch(width, height)
    # Two frame buffers: one is drawn while the encoder reads the other.
    buffers = [scene.new_buffer(batch) for _ in range(2 if dev.type == "cpu" else 1)]
    pinned = [scene.new_buffer(batch, pin=True) for _ in range(2)] if dev.type == "cuda" else []

    def render_batch(number: int) -> np.ndarray:
        lo_k = number * batch
        hi_k = min(n_frames, lo_k + batch)
        occ, queue_m = frame_values(lo_k, hi_k)
        text = {field: c[lo_k:hi_k] for field, c in codes.items()}
        frames = scene.draw(occ, queue_m, text, out=buffers[number % len(buffers)])
        if dev.type == "cuda":
            host = pinned[number % 2][: hi_k - lo_k]
            host.copy_(frames, non_blocking=True)
            torch.cuda.current_stream(dev).synchronize()
            return host.numpy()
        return frames.numpy()

    out_path = Path(out_path)
    metadata = {
        "title": "signaltwin what-if: current plan | candidate",
        "comment": attribution.summary(),
        "description": attribution.summary(),
    }
    n_batches = math.ceil(n_frames / batch)
    with (
        ThreadPoolExecutor(max_workers=1, thread_name_prefix="whatif-render") as pool,
        H264Writer(out_path, width, height, fps, preset=preset, crf=crf, metadata=metadata) as out,
    ):
        pending: Future[np.ndarray] = pool.submit(render_batch, 0)
        for number in range(n_batches):
            host = pending.result()
            if number + 1 < n_batches:
                pending = pool.submit(render_batch, number + 1)
            out.write_many(_rows(host))
    video_sha = sha256_file(out_path)
    tags = [
        attribution.frame_tags(k, k / fps, float(timeline.sim_time_s[k])) for k in range(n_frames)
    ]
    sidecar = out_path.with_name(out_path.name + ".json")
    sidecar_sha = write_sidecar(
        sidecar,
        out_path,
        video_sha,
        attribution,
        tags,
        {"width": width, "height": height, "fps": fps, "frames": n_frames, "codec": "h264",
         "preset": preset, "crf": crf, "time_mapping": "linear interpolation, ends held"},
    )  # fmt: skip
    logger.info("what-if video %s: %d frames, sha256 %s", out_path, n_frames, video_sha)
    return VideoArtifact(
        path=out_path,
        sha256=video_sha,
        sidecar_path=sidecar,
        sidecar_sha256=sidecar_sha,
        frames=n_frames,
        duration_s=n_frames / fps,
        width=width,
        height=height,
        fps=fps,
    )


def _rows(batch: np.ndarray) -> Iterator[np.ndarray]:
    for k in range(batch.shape[0]):
        yield batch[k]
