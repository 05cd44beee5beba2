"""The district drawn as SVG: roads from the network's geometry, one marker per intersection.

Drawn once per network from :class:`simulators.geometry.NetworkGeometry` (SUMO
coordinates, metres, y north; SVG's y runs south). Each intersection is a
``<circle class="tls" data-tls="ID">`` that the page colours by the plan in
force (its ``data-status``); :func:`render_map` can also colour them itself, for
``/map.svg`` opened on its own. Ids come from the network file: every one is
escaped.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from html import escape

from simulators.geometry import NetworkGeometry

__all__ = ["MAP_STATUSES", "render_map"]

#: the marker classes (``data-status``) and what they mean, for the legend
MAP_STATUSES = {
    "changed-latest": "changed by the plan in force",
    "changed-earlier": "changed by an earlier plan",
    "unchanged": "base program (never changed)",
    "down": "controller not answering",
}

_MARGIN_M = 40.0


def _attr(value: object) -> str:
    return escape(str(value), quote=True)


def render_map(
    geometry: NetworkGeometry,
    statuses: Mapping[str, str] | None = None,
    *,
    down: Collection[str] = (),
    standalone: bool = False,
) -> str:
    """The ``<svg>`` of the network.

    Args:
        geometry: the network's drawn geometry.
        statuses: intersection id -> a plan status of :data:`MAP_STATUSES`
            (default: unchanged).
        down: intersections whose controller did not answer (marked ``data-up="false"``).
        standalone: a complete SVG document (XML declaration, inline colours),
            rather than markup for the console page, whose stylesheet colours it.
    """
    x0, y0, x1, y1 = geometry.bounds
    width = max(x1 - x0, 1.0) + 2 * _MARGIN_M
    height = max(y1 - y0, 1.0) + 2 * _MARGIN_M
    radius = max(8.0, min(width, height) / 90)

    def point(x: float, y: float) -> str:
        return f"{x - x0 + _MARGIN_M:.1f},{y1 - y + _MARGIN_M:.1f}"

    parts = []
    if standalone:
        parts.append('<?xml version="1.0" encoding="UTF-8"?>')
    parts.append(
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width:.1f} {height:.1f}" '
        f'class="network-map" role="img" aria-label="network map">'
    )
    if standalone:
        parts.append(
            "<style>.road{fill:none;stroke:#c9ced6;stroke-linecap:round}"
            ".tls{stroke:#fff;stroke-width:3}"
            '.tls[data-status="unchanged"]{fill:#8a94a3}'
            '.tls[data-status="changed-earlier"]{fill:#8fb8de}'
            '.tls[data-status="changed-latest"]{fill:#2f6fb0}'
            '.tls[data-up="false"]{stroke:#c0392b;stroke-width:6}</style>'
        )
    parts.append('<g class="roads">')
    for edge_id in geometry.edge_ids:
        points = " ".join(point(x, y) for x, y in geometry.polylines[edge_id])
        stroke = max(3.0, geometry.widths_m.get(edge_id, 3.2))
        parts.append(
            f'<polyline class="road" points="{points}" stroke-width="{stroke:.1f}">'
            f"<title>{_attr(edge_id)}</title></polyline>"
        )
    parts.append('</g><g class="intersections">')
    for tls in sorted(geometry.intersections):
        x, y = geometry.intersections[tls]
        cx, cy = point(x, y).split(",")
        status = (statuses or {}).get(tls, "unchanged")
        if status not in MAP_STATUSES or status == "down":
            status = "unchanged"
        up = "false" if tls in down else "true"
        parts.append(
            f'<circle class="tls" data-tls="{_attr(tls)}" data-status="{status}" '
            f'data-up="{up}" cx="{cx}" cy="{cy}" r="{radius:.1f}">'
            f"<title>{_attr(tls)}</title></circle>"
        )
    parts.append("</g></svg>")
    return "\n".join(parts)
