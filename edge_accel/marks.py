"""Vehicles and signal heads: small marks drawn over the roads every frame.

**Vehicles** are oriented, nose-tapered marks (longer than wide, narrowing
towards the front) with a dark rim, placed with their front at the recorded
front bumper and shifted onto their direction's band (roads are drawn wider
than to scale, on the right-hand side of the centre line). A mark's pixels
are found once per heading (:class:`VehicleStamp`); where marks overlap, the
slowest vehicle shows (resolved with a ``scatter_reduce`` maximum, so the
video is the same on every run and device).

**Signal heads** are squares with a black rim, one per signal group, standing on
the approach's band just upstream of its downstream end; the groups of one
approach line up upstream, the most left-turning nearest the junction. Their
pixels are found once per scene; per frame only their colour changes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from edge_accel.raster import WorldToPixel

__all__ = [
    "HeadPixels",
    "VehicleStamp",
    "head_anchors",
    "head_pixels",
    "last_wins",
    "signal_class_table",
]

#: Signal head colour classes, in increasing precedence within one group.
SIGNAL_OFF, SIGNAL_RED, SIGNAL_AMBER, SIGNAL_GREEN = 0, 1, 2, 3


def signal_class_table() -> np.ndarray:
    """``uint8 [256]``: SUMO state character (ASCII) -> signal class.

    ``G``/``g`` green (priority or permissive), ``y``/``Y``/``u`` amber (``u``
    is red-amber), ``r``/``R``/``s`` red (``s``: stop, then go), anything else
    (``o``/``O``: off) off.
    """
    table = np.zeros(256, dtype=np.uint8)
    for chars, cls in (("Gg", SIGNAL_GREEN), ("yYu", SIGNAL_AMBER), ("rRs", SIGNAL_RED)):
        for c in chars:
            table[ord(c)] = cls
    return table


class VehicleStamp:
    """The pixels of one vehicle mark, ``length_px`` x ``width_px`` with a dark rim, per heading.

    The mark's pixels are worked out once per scene for :attr:`HEADINGS`
    headings (a pixel belongs to the mark when its centre lies inside it, to
    the rim when it lies within ``rim_px`` of it), as flat offsets from the
    pixel of the mark's centre, for the luma plane and, per parity of that
    pixel, for the half-resolution chroma planes (the mark only: a black rim
    leaves a neutral road's chroma as it is). Per frame a vehicle then costs a
    gather and an add per pixel. Headings are rounded to 360/64 degrees and
    centres to the pixel: invisible at these sizes.
    """

    HEADINGS = 64

    def __init__(
        self,
        length_px: float,
        width_px: float,
        frame_width: int,
        device: torch.device,
        rim_px: float = 1.0,
    ) -> None:
        self.length_px = length_px
        self.width_px = width_px
        self.rim_px = rim_px
        reach = int(math.ceil(length_px / 2 + rim_px)) + 1
        grid = torch.arange(-reach, reach + 1, dtype=torch.float64)
        dy, dx = torch.meshgrid(grid, grid, indexing="ij")
        luma: list[tuple[torch.Tensor, torch.Tensor]] = []
        chroma: list[list[torch.Tensor]] = []
        half_w = frame_width // 2
        for b in range(self.HEADINGS):
            angle = 2 * math.pi * b / self.HEADINGS
            ux, uy = math.sin(angle), -math.cos(angle)
            # pixel centres relative to the mark's centre (at the centre pixel's middle)
            along = dx * ux + dy * uy
            across = -dx * uy + dy * ux
            inner = self._inside(along, across, 0.0)
            outer = self._inside(along, across, rim_px)
            keep = outer.reshape(-1)
            luma.append(
                (
                    (dy * frame_width + dx).reshape(-1)[keep].long(),
                    inner.reshape(-1)[keep],
                )
            )
            parities = []
            for py in (0, 1):
                for px in (0, 1):
                    cx = torch.div(dx + px, 2, rounding_mode="floor")
                    cy = torch.div(dy + py, 2, rounding_mode="floor")
                    flat = (cy * half_w + cx).reshape(-1)[inner.reshape(-1)].long()
                    parities.append(torch.unique(flat))
            chroma.append(parities)
        n = max(len(f) for f, _ in luma)
        nc = max(len(f) for group in chroma for f in group)

        def pad(t: torch.Tensor, size: int) -> torch.Tensor:
            return torch.cat((t, t[:1].expand(size - len(t)))) if len(t) < size else t

        #: ``long [HEADINGS, S]`` luma offsets; ``bool [HEADINGS, S]`` on the mark (else rim)
        self.offsets = torch.stack([pad(f, n) for f, _ in luma]).to(device)
        self.inner = torch.stack([pad(i, n) for _, i in luma]).to(device)
        #: ``long [HEADINGS, 4, Sc]`` chroma offsets per parity (x + 2 y) of the centre pixel
        self.offsets_c = torch.stack(
            [torch.stack([pad(f, nc) for f in group]) for group in chroma]
        ).to(device)

    def _inside(self, along: torch.Tensor, across: torch.Tensor, grow: float) -> torch.Tensor:
        half_l, half_w = self.length_px / 2 + grow, self.width_px / 2 + grow
        front = (along / half_l).clamp(min=0.0)  # 0 at the middle, 1 at the nose
        inside: torch.Tensor = (along.abs() <= half_l) & (
            across.abs() <= half_w * (1.0 - 0.55 * front)
        )
        return inside

    def heading_bins(self, ux: torch.Tensor, uy: torch.Tensor) -> torch.Tensor:
        """The heading bin of unit headings in pixel coordinates (``ux = sin a, uy = -cos a``)."""
        angle = torch.atan2(ux, -uy)
        bins = torch.round(angle * (self.HEADINGS / (2 * math.pi))).long()
        return torch.remainder(bins, self.HEADINGS)


def last_wins(flat: torch.Tensor) -> torch.Tensor:
    """Indices into ``flat`` of the last occurrence of each distinct value (deterministic)."""
    if flat.numel() == 0:
        return torch.zeros(0, dtype=torch.long, device=flat.device)
    ordered, order = torch.sort(flat, stable=True)
    last = torch.ones_like(ordered, dtype=torch.bool)
    last[:-1] = ordered[1:] != ordered[:-1]
    return order[last]


@dataclass(frozen=True)
class HeadPixels:
    """Pixels of every signal head on one canvas (flat indices, unique).

    Attributes:
        fill_flat, fill_head: the coloured inside and the head owning each pixel.
        rim_flat: the black rim.
    """

    fill_flat: torch.Tensor
    fill_head: torch.Tensor
    rim_flat: torch.Tensor


def head_pixels(
    anchors_px: np.ndarray,
    size_px: int,
    rim_px: int,
    canvas_width: int,
    clip: tuple[int, int, int, int],
    device: torch.device,
) -> HeadPixels:
    """Square heads of ``size_px`` (plus a rim) centred at ``anchors_px`` (``[H, 2]``).

    Later heads own pixels where heads overlap; the rim of a head never covers
    another head's inside.
    """
    x0, y0, x1, y1 = clip
    fill: dict[int, int] = {}
    rim: set[int] = set()
    half = size_px / 2
    for head, (cx, cy) in enumerate(np.asarray(anchors_px, dtype=np.float64).reshape(-1, 2)):
        if not (math.isfinite(cx) and math.isfinite(cy)):
            continue
        ax, ay = int(math.floor(cx - half + 0.5)), int(math.floor(cy - half + 0.5))
        for yy in range(ay - rim_px, ay + size_px + rim_px):
            for xx in range(ax - rim_px, ax + size_px + rim_px):
                if not (x0 <= xx < x1 and y0 <= yy < y1):
                    continue
                flat = yy * canvas_width + xx
                inside = ax <= xx < ax + size_px and ay <= yy < ay + size_px
                if inside:
                    fill[flat] = head
                    rim.discard(flat)
                elif flat not in fill:
                    rim.add(flat)
    fills = sorted(fill.items())
    return HeadPixels(
        fill_flat=torch.tensor([f for f, _ in fills], dtype=torch.long, device=device),
        fill_head=torch.tensor([h for _, h in fills], dtype=torch.long, device=device),
        rim_flat=torch.tensor(sorted(rim), dtype=torch.long, device=device),
    )


def head_anchors(
    heads: Sequence[tuple[str, str, tuple[int, ...]]],
    polylines: dict[str, np.ndarray],
    band_px: dict[str, float],
    to_px: WorldToPixel,
    pitch_px: float,
) -> np.ndarray:
    """Centre of each head in pixels: on its approach's band, upstream of the edge's end.

    Heads of one approach (consecutive entries with the same light and edge) line
    up upstream, ``pitch_px`` apart. Heads on edges not drawn are NaN.
    """
    out = np.full((len(heads), 2), np.nan)
    slot, previous = 0, ("", "")
    for i, (tls, edge, _) in enumerate(heads):
        slot = slot + 1 if (tls, edge) == previous else 0
        previous = (tls, edge)
        poly = polylines.get(edge)
        if poly is None or len(poly) < 2:
            continue
        pts = to_px.apply(np.asarray(poly, dtype=np.float64))
        end, before = pts[-1], pts[-2]
        d = end - before
        length = float(np.hypot(*d))
        if length < 1e-9:
            continue
        u = d / length
        normal = np.array([-u[1], u[0]])
        back = pitch_px * (slot + 0.75)
        out[i] = end - u * back + normal * (band_px.get(edge, 2.0) / 2)
    return out
