"""The inputs of a what-if video, as plain data: scene geometry, frame series, the estimate.

The controller fills these from the network model (edge shapes in metres,
signal heads) and the twin's recording (per-edge occupancy and queue, every
vehicle's position and speed, every light's signal state, per sample) and from
the what-if's paired estimate; edge_accel never reads SUMO files itself.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np
import numpy.typing as npt

from configs.errors import ConfigError

__all__ = [
    "PairedEstimate",
    "SceneGeometry",
    "SignalSamples",
    "VehicleSamples",
    "WhatIfFrames",
    "grid_geometry",
]

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]
SignalHead = tuple[str, str, tuple[int, ...]]
"""``(traffic-light id, approach edge id, link indices into the light's state string)``."""


@dataclass(frozen=True)
class SceneGeometry:
    """The network as drawn: one polyline per edge, in metres, plus junctions.

    Attributes:
        edge_ids: Edges to draw, in drawing order (later ones win where they overlap).
        polylines: Edge id -> its shape, a sequence of ``(x_m, y_m)`` points
            (SUMO's coordinate system: x east, y north), at least two points.
        widths_m: Edge id -> drawn road width in metres (edges missing here use
            ``default_width_m``). The renderer widens thin roads to stay visible.
        intersections: Intersection (traffic-light) id -> ``(x_m, y_m)`` marker position.
        bounds: ``(x_min_m, y_min_m, x_max_m, y_max_m)`` of the area to show.
        signal_heads: One per signal group: ``(tls id, approach edge, link
            indices)``; the heads of one approach consecutive, the one nearest
            the junction first. Drawn on the approach's downstream end.
        default_width_m: Width for edges without an entry in ``widths_m``.
    """

    edge_ids: tuple[str, ...]
    polylines: Mapping[str, Sequence[tuple[float, float]]]
    widths_m: Mapping[str, float] = field(default_factory=dict)
    intersections: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    bounds: tuple[float, float, float, float] | None = None
    signal_heads: Sequence[SignalHead] = ()
    default_width_m: float = 3.2

    def validated(self) -> SceneGeometry:
        """Return this geometry with bounds filled in, after checking it.

        Raises:
            ConfigError: An edge lacks a polyline, a polyline has fewer than two
                finite points, a width is not positive, or the bounds are empty.
        """
        if not self.edge_ids:
            raise ConfigError("scene geometry has no edges; the network model gave no edge shapes")
        for edge in self.edge_ids:
            shape = self.polylines.get(edge)
            if shape is None:
                raise ConfigError(f"scene geometry: edge {edge!r} is listed but has no polyline")
            pts = np.asarray(shape, dtype=np.float64)
            if pts.ndim != 2 or pts.shape[0] < 2 or pts.shape[1] != 2:
                raise ConfigError(
                    f"scene geometry: edge {edge!r} needs >= 2 (x, y) points, got {list(shape)!r}"
                )
            if not np.isfinite(pts).all():
                raise ConfigError(f"scene geometry: edge {edge!r} has non-finite coordinates")
            width = self.widths_m.get(edge, self.default_width_m)
            if not (math.isfinite(width) and width > 0):
                raise ConfigError(f"scene geometry: edge {edge!r} width {width!r} must be > 0")
        bounds = self.bounds
        if bounds is None:
            pts = np.concatenate(
                [np.asarray(self.polylines[e], dtype=np.float64) for e in self.edge_ids]
                + [np.asarray(list(self.intersections.values()), dtype=np.float64).reshape(-1, 2)]
            )
            bounds = (
                float(pts[:, 0].min()),
                float(pts[:, 1].min()),
                float(pts[:, 0].max()),
                float(pts[:, 1].max()),
            )
        x0, y0, x1, y1 = bounds
        if not all(math.isfinite(v) for v in bounds) or x1 < x0 or y1 < y0:
            raise ConfigError(
                f"scene geometry: bounds {bounds!r} are not (x_min, y_min, x_max, y_max)"
            )
        if x1 - x0 <= 0 and y1 - y0 <= 0:
            raise ConfigError(f"scene geometry: bounds {bounds!r} enclose no area")
        return SceneGeometry(
            edge_ids=tuple(self.edge_ids),
            polylines=self.polylines,
            widths_m=self.widths_m,
            intersections=self.intersections,
            bounds=bounds,
            signal_heads=tuple(h for h in self.signal_heads if h[1] in self.polylines),
            default_width_m=self.default_width_m,
        )


@dataclass(frozen=True)
class VehicleSamples:
    """Every vehicle at every sample, ragged: sample ``k`` is ``offsets[k]:offsets[k + 1]``.

    Attributes:
        offsets: ``[T + 1]`` row offsets.
        x_m, y_m: ``[V]`` vehicle front position (metres, the geometry's coordinates).
        angle_deg: ``[V]`` heading, SUMO's convention (0 = north, clockwise).
        speed_mps: ``[V]`` speed.
        count: ``[T]`` vehicles in the network (more than the rows when the
            recording kept only every k-th; see :attr:`stride`).
    """

    offsets: IntArray
    x_m: FloatArray
    y_m: FloatArray
    angle_deg: FloatArray
    speed_mps: FloatArray
    count: IntArray

    @classmethod
    def from_arrays(
        cls,
        offsets: npt.ArrayLike,
        x_m: npt.ArrayLike,
        y_m: npt.ArrayLike,
        angle_deg: npt.ArrayLike,
        speed_mps: npt.ArrayLike,
        count: npt.ArrayLike | None = None,
        *,
        samples: int,
    ) -> VehicleSamples:
        """Check and convert.

        Raises:
            ConfigError: The offsets do not match ``samples`` or the rows.
        """
        off = np.asarray(offsets, dtype=np.int64).reshape(-1)
        cols = [
            np.asarray(a, dtype=np.float32).reshape(-1) for a in (x_m, y_m, angle_deg, speed_mps)
        ]
        rows = int(off[-1]) if off.size else 0
        if off.shape != (samples + 1,) or off[0] != 0 or (np.diff(off) < 0).any():
            raise ConfigError(
                f"vehicle offsets must be [{samples + 1}] non-decreasing from 0, got {off.shape}"
            )
        if any(c.shape != (rows,) for c in cols):
            raise ConfigError(f"vehicle arrays must each have {rows} rows (offsets[-1])")
        per_sample = np.diff(off)
        n = per_sample if count is None else np.asarray(count, dtype=np.int64).reshape(-1)
        if n.shape != (samples,):
            raise ConfigError(f"vehicle count must have {samples} samples, got {n.shape}")
        return cls(off, cols[0], cols[1], cols[2], cols[3], np.maximum(n, per_sample))

    @property
    def stride(self) -> int:
        """1 when every vehicle was recorded, else the largest k of "every k-th"."""
        per_sample = np.diff(self.offsets)
        ratios = [
            int(-(-int(c) // max(1, int(p)))) for c, p in zip(self.count, per_sample, strict=True)
        ]
        return max([1, *ratios])


@dataclass(frozen=True)
class SignalSamples:
    """Every light's signal state at every sample.

    Attributes:
        ids: Traffic-light ids.
        offsets: ``[len(ids) + 1]``: the columns of ``ids[i]`` are ``offsets[i]:offsets[i + 1]``.
        states: ``uint8 [T, links]`` ASCII state characters (SUMO's ``G g y r``...).
    """

    ids: tuple[str, ...]
    offsets: IntArray
    states: npt.NDArray[np.uint8]

    @classmethod
    def from_arrays(
        cls, ids: Sequence[str], offsets: npt.ArrayLike, states: npt.ArrayLike, *, samples: int
    ) -> SignalSamples:
        """Check and convert.

        Raises:
            ConfigError: The shapes disagree.
        """
        off = np.asarray(offsets, dtype=np.int64).reshape(-1)
        st = np.asarray(states, dtype=np.uint8)
        if off.shape != (len(ids) + 1,) or st.ndim != 2 or st.shape != (samples, int(off[-1])):
            raise ConfigError(
                f"signal states must be [{samples}, offsets[-1]] with offsets [{len(ids) + 1}]"
            )
        return cls(tuple(ids), off, st)


@dataclass(frozen=True)
class PairedEstimate:
    """The what-if's paired multi-seed estimate for the candidate: what the gate decided on.

    Attributes:
        wait_change, nox_change: Mean paired relative change (fractions; negative =
            lower under the candidate).
        wait_ci, nox_ci: Their confidence intervals (fractions).
        seeds: The paired seeds.
        confidence_level: Two-sided level of the intervals (e.g. 0.95).
        verdict: One line on the gate's decision (e.g. its thresholds), or "".
        passed: Whether the gate let the candidate through (None: not said).
        intersection_wait_change: Traffic-light id -> relative change of the
            halting time on its approaches, means over the seeds (fractions).
    """

    wait_change: float
    wait_ci: tuple[float, float]
    nox_change: float
    nox_ci: tuple[float, float]
    seeds: tuple[int, ...]
    confidence_level: float
    verdict: str = ""
    passed: bool | None = None
    intersection_wait_change: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class WhatIfFrames:
    """One side of a what-if (the current plan or the candidate) over simulated time.

    Attributes:
        label: Shown above the panel, e.g. ``"CURRENT PLAN"``.
        edge_ids: Column order of ``occupancy`` and ``queue``.
        times_s: ``[T]`` simulated seconds of each sample, strictly increasing.
        occupancy: ``[T, E]`` float32 occupancy fraction (0..1) per edge; NaN = no data.
        queue_veh: ``[T, E]`` float32 halting vehicles per edge (drawn as a
            contrasting stripe from the edge's downstream end).
        mean_wait_s: ``[T]`` running mean waiting time per vehicle so far, seconds.
        nox_mg: ``[T]`` running NOx emitted so far, milligrams.
        vehicles: Every vehicle per sample (None: none drawn).
        signals: Every light's state per sample (None: heads drawn as off).
    """

    label: str
    edge_ids: tuple[str, ...]
    times_s: FloatArray
    occupancy: FloatArray
    queue_veh: FloatArray
    mean_wait_s: FloatArray
    nox_mg: FloatArray
    vehicles: VehicleSamples | None = None
    signals: SignalSamples | None = None

    @classmethod
    def from_arrays(
        cls,
        label: str,
        edge_ids: Sequence[str],
        times_s: npt.ArrayLike,
        occupancy: npt.ArrayLike,
        queue_veh: npt.ArrayLike | None = None,
        mean_wait_s: npt.ArrayLike | None = None,
        nox_mg: npt.ArrayLike | None = None,
        *,
        vehicles: VehicleSamples | None = None,
        signals: SignalSamples | None = None,
    ) -> WhatIfFrames:
        """Build and check a side from array-likes; missing series become NaN.

        Raises:
            ConfigError: Shapes disagree, times are not strictly increasing, or
                there are no samples.
        """
        times = np.asarray(times_s, dtype=np.float64).reshape(-1)
        n_t, n_e = times.shape[0], len(edge_ids)
        if n_t == 0:
            raise ConfigError(f"what-if series {label!r}: no time samples")
        if not np.isfinite(times).all() or (n_t > 1 and not (np.diff(times) > 0).all()):
            raise ConfigError(f"what-if series {label!r}: times_s must be finite and increasing")

        def matrix(name: str, value: npt.ArrayLike | None) -> FloatArray:
            if value is None:
                return np.full((n_t, n_e), np.nan, dtype=np.float32)
            arr = np.asarray(value, dtype=np.float32)
            if arr.shape != (n_t, n_e):
                raise ConfigError(
                    f"what-if series {label!r}: {name} has shape {arr.shape}, expected "
                    f"(len(times_s), len(edge_ids)) = {(n_t, n_e)}"
                )
            return arr

        def vector(name: str, value: npt.ArrayLike | None) -> FloatArray:
            if value is None:
                return np.full(n_t, np.nan, dtype=np.float32)
            arr = np.asarray(value, dtype=np.float32).reshape(-1)
            if arr.shape != (n_t,):
                raise ConfigError(
                    f"what-if series {label!r}: {name} has {arr.shape[0]} samples, expected {n_t}"
                )
            return arr

        return cls(
            label=label,
            edge_ids=tuple(edge_ids),
            times_s=times.astype(np.float32),
            occupancy=matrix("occupancy", occupancy),
            queue_veh=matrix("queue", queue_veh),
            mean_wait_s=vector("mean_wait_s", mean_wait_s),
            nox_mg=vector("nox_mg", nox_mg),
            vehicles=_checked(label, "vehicles", vehicles, n_t),
            signals=_checked(label, "signals", signals, n_t),
        )


def _checked(label: str, name: str, value: _Samples, n_t: int) -> _Samples:
    if value is None:
        return None
    samples = len(value.offsets) - 1 if isinstance(value, VehicleSamples) else value.states.shape[0]
    if samples != n_t:
        raise ConfigError(f"what-if series {label!r}: {name} has {samples} samples, expected {n_t}")
    return value


_Samples = TypeVar("_Samples", VehicleSamples | None, SignalSamples | None)


def grid_geometry(
    columns: int = 4, rows: int = 3, block_m: float = 200.0, points_per_edge: int = 3
) -> SceneGeometry:
    """Return a synthetic grid network (two directed edges per block side).

    Edge ids are ``"{a}->{b}"`` between junction ids ``"J{col}_{row}"``; every
    junction is an intersection marker with one signal head per incoming edge
    (link ``i`` for its ``i``-th incoming edge, sorted). Used by tests, benches
    and demos.
    """
    polylines: dict[str, list[tuple[float, float]]] = {}
    junctions = {
        f"J{c}_{r}": (c * block_m, r * block_m) for c in range(columns) for r in range(rows)
    }
    for c in range(columns):
        for r in range(rows):
            for dc, dr in ((1, 0), (0, 1)):
                if c + dc >= columns or r + dr >= rows:
                    continue
                a, b = f"J{c}_{r}", f"J{c + dc}_{r + dr}"
                (xa, ya), (xb, yb) = junctions[a], junctions[b]
                ts = np.linspace(0.0, 1.0, max(2, points_per_edge))
                fwd = [(xa + (xb - xa) * t, ya + (yb - ya) * t) for t in ts]
                polylines[f"{a}->{b}"] = fwd
                polylines[f"{b}->{a}"] = fwd[::-1]
    incoming: dict[str, list[str]] = {}
    for edge in sorted(polylines):
        incoming.setdefault(edge.split("->")[1], []).append(edge)
    heads = tuple(
        (junction, edge, (i,))
        for junction, edges in sorted(incoming.items())
        for i, edge in enumerate(edges)
    )
    return SceneGeometry(
        edge_ids=tuple(polylines),
        polylines=polylines,
        intersections=junctions,
        bounds=(0.0, 0.0, (columns - 1) * block_m, (rows - 1) * block_m),
        signal_heads=heads,
    )
