"""Rasterise edge polylines once into flat pixel tables on the device.

Every drawn pixel of every edge is found once per video (or per scene): a flat
pixel index, the edge that owns it, its distance in metres to the edge's
downstream end (for the queue stripe) and whether it lies on the band's core
(the middle third, where the queue stripe is drawn). Per-frame drawing is then
a gather from per-edge colours and a scatter into the frame buffers.

Each directed edge is drawn as a band on the right-hand side of its centreline
(right-hand traffic), so both directions of a two-way street stay visible.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["PixelTable", "WorldToPixel", "rasterise_polylines"]

# Candidate pixels processed per chunk; bounds temporary memory on big networks.
_CHUNK = 1 << 22


@dataclass(frozen=True)
class WorldToPixel:
    """Affine map from metres (y up) to pixels (y down): ``px = ox + s*x``, ``py = oy - s*y``."""

    scale_px_per_m: float
    ox: float
    oy: float

    def apply(self, pts: np.ndarray) -> np.ndarray:
        """Map ``[N, 2]`` metre coordinates to pixel coordinates."""
        out = np.empty_like(pts, dtype=np.float64)
        out[:, 0] = self.ox + self.scale_px_per_m * pts[:, 0]
        out[:, 1] = self.oy - self.scale_px_per_m * pts[:, 1]
        return out

    def scaled(self, factor: float) -> WorldToPixel:
        """Return the same map on a canvas scaled by ``factor`` (e.g. 0.5 for chroma)."""
        return WorldToPixel(self.scale_px_per_m * factor, self.ox * factor, self.oy * factor)


@dataclass(frozen=True)
class PixelTable:
    """Pixels covered by edges on one canvas (all ``[P]`` tensors on one device).

    Attributes:
        flat: ``long`` flat pixel index ``y * width + x``, unique.
        edge: ``long`` index of the owning edge (into the rasterised polyline list).
        dist_to_end_m: ``float32`` metres from this pixel to the edge's downstream end.
        core: ``bool``, True in the middle third of the band.
    """

    flat: torch.Tensor
    edge: torch.Tensor
    dist_to_end_m: torch.Tensor
    core: torch.Tensor

    def __len__(self) -> int:
        return int(self.flat.shape[0])


def rasterise_polylines(
    polylines: Sequence[np.ndarray],
    band_px: Sequence[float],
    to_px: WorldToPixel,
    clip: tuple[int, int, int, int],
    canvas_width: int,
    device: torch.device,
    exclude: torch.Tensor | None = None,
) -> PixelTable:
    """Rasterise directed polylines as right-hand bands.

    Args:
        polylines: Per edge, ``[n, 2]`` points in metres.
        band_px: Per edge, the band width in pixels.
        to_px: Metres -> pixels for this canvas.
        clip: ``(x0, y0, x1, y1)`` pixel rectangle (exclusive end) to keep.
        canvas_width: Width of the canvas the flat indices refer to.
        device: Where the tables live.
        exclude: Optional ``bool`` canvas mask ``[height * width]``; pixels set
            there are not drawn (e.g. intersection markers stay on top).

    Returns:
        The edge pixels; where edges overlap, the later edge owns the pixel.
    """
    seg_a: list[np.ndarray] = []
    seg_b: list[np.ndarray] = []
    seg_edge: list[np.ndarray] = []
    seg_end_m: list[np.ndarray] = []  # metres from segment start to the edge's end
    seg_len_m: list[np.ndarray] = []
    for index, poly in enumerate(polylines):
        pts = np.asarray(poly, dtype=np.float64)
        lengths = np.hypot(*(pts[1:] - pts[:-1]).T)
        total = float(lengths.sum())
        before = np.concatenate(([0.0], np.cumsum(lengths)[:-1]))
        pts_px = to_px.apply(pts)
        seg_a.append(pts_px[:-1])
        seg_b.append(pts_px[1:])
        seg_edge.append(np.full(len(lengths), index, dtype=np.int64))
        seg_end_m.append(total - before)
        seg_len_m.append(lengths)
    a = torch.from_numpy(np.concatenate(seg_a)).to(device=device, dtype=torch.float32)
    b = torch.from_numpy(np.concatenate(seg_b)).to(device=device, dtype=torch.float32)
    edge = torch.from_numpy(np.concatenate(seg_edge)).to(device)
    end_m = torch.from_numpy(np.concatenate(seg_end_m)).to(device=device, dtype=torch.float32)
    len_m = torch.from_numpy(np.concatenate(seg_len_m)).to(device=device, dtype=torch.float32)
    band = torch.tensor(list(band_px), dtype=torch.float32, device=device)[edge]

    d = b - a
    seg_len_px = torch.linalg.vector_norm(d, dim=1)
    keep = seg_len_px > 1e-6
    a, d, edge, end_m, len_m, band, seg_len_px = (
        t[keep] for t in (a, d, edge, end_m, len_m, band, seg_len_px)
    )
    unit = d / seg_len_px.unsqueeze(1)
    # Right-hand normal in pixel coordinates (y down): (-uy, ux).
    normal = torch.stack((-unit[:, 1], unit[:, 0]), dim=1)
    # Sample along each segment every half pixel, overrunning the ends by half a
    # band so that consecutive segments join without gaps at bends.
    overrun = band * 0.5
    n_along = torch.ceil((seg_len_px + 2 * overrun) * 2).long() + 1
    max_band = float(band.max().item()) if band.numel() else 1.0
    steps_across = torch.arange(0, int(math.ceil(max_band * 2)) + 1, device=device) * 0.5 + 0.25

    x0, y0, x1, y1 = clip
    height = int(exclude.shape[0] // canvas_width) if exclude is not None else 0
    owner = torch.full((0,), -1, dtype=torch.long, device=device)
    flats: list[torch.Tensor] = []
    edges: list[torch.Tensor] = []
    dists: list[torch.Tensor] = []
    cores: list[torch.Tensor] = []
    seg_ids = torch.repeat_interleave(torch.arange(len(n_along), device=device), n_along)
    starts = torch.cumsum(n_along, 0) - n_along
    per_chunk = max(1, _CHUNK // len(steps_across))
    for lo in range(0, int(seg_ids.shape[0]), per_chunk):
        sid = seg_ids[lo : lo + per_chunk]
        k = torch.arange(lo, lo + sid.shape[0], device=device) - starts[sid]
        along_px = k.to(torch.float32) * 0.5 - overrun[sid]
        centre = a[sid] + unit[sid] * along_px.unsqueeze(1)
        frac = (along_px / seg_len_px[sid]).clamp(0.0, 1.0)
        dist_m = end_m[sid] - frac * len_m[sid]
        across = steps_across.unsqueeze(0).expand(sid.shape[0], -1)
        inside = across <= band[sid].unsqueeze(1)
        pos = centre.unsqueeze(1) + normal[sid].unsqueeze(1) * across.unsqueeze(2)
        third = band[sid].unsqueeze(1) / 3.0
        core = (across >= third) & (across <= 2 * third)
        px = torch.floor(pos[..., 0]).long()
        py = torch.floor(pos[..., 1]).long()
        ok = inside & (px >= x0) & (px < x1) & (py >= y0) & (py < y1)
        flats.append((py * canvas_width + px)[ok])
        edges.append(edge[sid].unsqueeze(1).expand_as(ok)[ok])
        dists.append(dist_m.unsqueeze(1).expand_as(ok)[ok])
        cores.append(core[ok])
    flat: torch.Tensor = torch.cat(flats)
    edge_px = torch.cat(edges)
    dist_px = torch.cat(dists)
    core_px = torch.cat(cores)
    if exclude is not None and height:
        keep_px = ~exclude[flat]
        flat, edge_px, dist_px, core_px = (t[keep_px] for t in (flat, edge_px, dist_px, core_px))
    if flat.numel() == 0:
        empty = torch.zeros(0, dtype=torch.long, device=device)
        return PixelTable(empty, empty, torch.zeros(0, device=device), empty.bool())
    # Deduplicate: the highest edge index owns a pixel; among its candidates
    # take the smallest distance to the end, and core if any candidate is core.
    size = int(flat.max().item()) + 1
    owner = torch.full((size,), -1, dtype=torch.long, device=device)
    owner.scatter_reduce_(0, flat, edge_px, reduce="amax")
    mine = owner[flat] == edge_px
    flat, edge_px, dist_px, core_px = (t[mine] for t in (flat, edge_px, dist_px, core_px))
    best = torch.full((size,), float("inf"), device=device)
    best.scatter_reduce_(0, flat, dist_px, reduce="amin")
    is_core = torch.zeros(size, dtype=torch.long, device=device)
    is_core.scatter_reduce_(0, flat, core_px.long(), reduce="amax")
    pixels = torch.nonzero(owner >= 0).squeeze(1)
    return PixelTable(
        flat=pixels,
        edge=owner[pixels],
        dist_to_end_m=best[pixels].clamp(min=0.0),
        core=is_core[pixels].bool(),
    )
