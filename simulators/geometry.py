"""The drawn geometry of a SUMO network: edge polylines, road widths, junction markers.

Plain data (no edge_accel types), so that whoever draws the network (the what-if
renderer) builds its own scene from it: ``SceneGeometry(**vars(geometry))``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from simulators.network import load_network

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
    """

    edge_ids: tuple[str, ...]
    polylines: dict[str, list[tuple[float, float]]]
    widths_m: dict[str, float]
    intersections: dict[str, tuple[float, float]]
    bounds: tuple[float, float, float, float]


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
    )
