"""The drawn geometry of a SUMO network: edge polylines, road widths, junctions, signal heads.

Plain data (no edge_accel types), so that whoever draws the network (the what-if
renderer) builds its own scene from it: ``SceneGeometry(**vars(geometry))``.

Signal heads: one per **signal group** of each signalised approach, i.e. the
links from one approach edge whose state is the same in every phase of the
light's base program (a protected and a permissive left turn are two groups).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from simulators.network import Intersection, NetworkModel, load_network

__all__ = ["NetworkGeometry", "network_geometry"]


@dataclass(frozen=True)
class NetworkGeometry:
    """The network as drawn, in SUMO's coordinates (metres; x east, y north).

    Attributes:
        edge_ids: edges with vehicle lanes and a shape, sorted.
        polylines: edge id -> its shape, at least two ``(x_m, y_m)`` points.
        widths_m: edge id -> total width of its vehicle lanes, metres.
        intersections: traffic-light id -> ``(x_m, y_m)`` of its junction.
        bounds: ``(x_min_m, y_min_m, x_max_m, y_max_m)`` of the network.
        signal_heads: ``(tls id, approach edge id, link indices)`` per signal
            group, the indices into the light's state string; the groups of one
            approach are consecutive, the most left-turning first. The head
            stands at the approach edge's downstream end (its stop line).
    """

    edge_ids: tuple[str, ...]
    polylines: dict[str, list[tuple[float, float]]]
    widths_m: dict[str, float]
    intersections: dict[str, tuple[float, float]]
    bounds: tuple[float, float, float, float]
    signal_heads: tuple[tuple[str, str, tuple[int, ...]], ...] = ()


def network_geometry(net_path: Path) -> NetworkGeometry:
    """Load the drawn geometry of the SUMO network at ``net_path``."""
    model = load_network(net_path)
    polylines: dict[str, list[tuple[float, float]]] = {}
    widths: dict[str, float] = {}
    shapes = model.edge_geometry()
    for edge_id, lane_ids in model.edges.items():
        lanes = [model.lanes[lane] for lane in lane_ids if model.lanes[lane].vehicles]
        if not lanes or edge_id not in shapes or len(shapes[edge_id]) < 2:
            continue
        polylines[edge_id] = [(float(x), float(y)) for x, y in shapes[edge_id]]
        widths[edge_id] = float(sum(lane.width_m for lane in lanes))
    intersections = {
        tls: (float(i.position[0]), float(i.position[1])) for tls, i in model.intersections.items()
    }
    x0, y0, x1, y1 = (float(v) for v in model.bounds)
    return NetworkGeometry(
        edge_ids=tuple(sorted(polylines)),
        polylines=polylines,
        widths_m=widths,
        intersections=intersections,
        bounds=(x0, y0, x1, y1),
        signal_heads=signal_heads(model, frozenset(polylines)),
    )


def signal_heads(
    model: NetworkModel, drawn: frozenset[str] | None = None
) -> tuple[tuple[str, str, tuple[int, ...]], ...]:
    """The signal heads of every light (see :class:`NetworkGeometry`), sorted by light and edge.

    Args:
        model: the loaded network.
        drawn: only approaches on these edges (None: every approach).
    """
    heads: list[tuple[str, str, tuple[int, ...]]] = []
    for _, light in sorted(model.intersections.items()):
        heads.extend(_heads_of(model, light, drawn))
    return tuple(heads)


def _heads_of(
    model: NetworkModel, light: Intersection, drawn: frozenset[str] | None
) -> list[tuple[str, str, tuple[int, ...]]]:
    states = [phase.state for phase in light.base.phases]
    groups: dict[tuple[str, str], list[int]] = {}
    turns: dict[tuple[str, str], list[float]] = {}
    for link in light.links:
        lane = model.lanes.get(link.from_lane)
        if link.pedestrian or lane is None or (drawn is not None and lane.edge_id not in drawn):
            continue
        signature = "".join(s[link.index] if link.index < len(s) else "?" for s in states)
        key = (lane.edge_id, signature)
        groups.setdefault(key, []).append(link.index)
        turns.setdefault(key, []).append(_turn_deg(model, link.from_lane, link.to_lane))
    order = sorted(groups, key=lambda k: (k[0], -sum(turns[k]) / len(turns[k]), min(groups[k])))
    return [(light.tls_id, edge, tuple(sorted(groups[(edge, sig)]))) for edge, sig in order]


def _turn_deg(model: NetworkModel, from_lane: str, to_lane: str) -> float:
    """Signed turn from one lane's end into another's start (degrees, left positive)."""
    a, b = model.lanes.get(from_lane), model.lanes.get(to_lane)
    if a is None or b is None or len(a.shape) < 2 or len(b.shape) < 2:
        return 0.0
    (ax0, ay0), (ax1, ay1) = a.shape[-2], a.shape[-1]
    (bx0, by0), (bx1, by1) = b.shape[0], b.shape[1]
    turn = math.degrees(math.atan2(by1 - by0, bx1 - bx0) - math.atan2(ay1 - ay0, ax1 - ax0))
    return (turn + 180.0) % 360.0 - 180.0
