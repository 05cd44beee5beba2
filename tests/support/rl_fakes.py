"""Tiny in-memory networks for the rl unit tests (no SUMO)."""

from __future__ import annotations

from pathlib import Path

from configs.timing import BaseProgram
from simulators.network import Detector, Intersection, Lane, Link, NetworkModel


def _lane(lane_id: str) -> Lane:
    return Lane(
        id=lane_id,
        edge_id=lane_id.rsplit("_", 1)[0],
        index=0,
        length_m=150.0,
        speed_mps=13.9,
        width_m=3.2,
        shape=((0.0, 0.0), (150.0, 0.0)),
        vehicles=True,
    )


def two_phase_light(tls_id: str = "J1", ped: bool = False) -> Intersection:
    """Four approaches (N, S, E, W; one lane each), two greens with yellow and all-red."""
    # links 0..3: N->S, S->N, E->W, W->E ; link 4: a crossing (pedestrian)
    base = BaseProgram.from_sumo(
        tls_id,
        "0",
        [
            ("GGrrr" if not ped else "GGrrG", 30, None, None),
            ("yyrrr" if not ped else "yyrrr", 3, None, None),
            ("rrrrr", 2, None, None),
            ("rrGGr", 30, None, None),
            ("rryyr", 3, None, None),
            ("rrrrr", 2, None, None),
        ],
        pedestrian_phases=(0,) if ped else (),
    )
    links = (
        Link(0, f"n_{tls_id}_0", f"{tls_id}_s_0", False),
        Link(1, f"s_{tls_id}_0", f"{tls_id}_n_0", False),
        Link(2, f"e_{tls_id}_0", f"{tls_id}_w_0", False),
        Link(3, f"w_{tls_id}_0", f"{tls_id}_e_0", False),
        Link(4, f":{tls_id}_w0_0", f":{tls_id}_c0_0", True),
    )
    incoming = tuple(sorted(link.from_lane for link in links if not link.pedestrian))
    return Intersection(
        tls_id=tls_id,
        position=(0.0, 0.0),
        junctions=(tls_id,),
        incoming_lanes=incoming,
        approaches=tuple(sorted(lane.rsplit("_", 1)[0] for lane in incoming)),
        links=links,
        base=base,
        programs=("0",),
    )


def three_phase_light(tls_id: str = "J2") -> Intersection:
    """Like :func:`two_phase_light` plus a protected left green (three greens)."""
    base = BaseProgram.from_sumo(
        tls_id,
        "0",
        [
            ("GGrr", 25, None, None),
            ("yyrr", 3, None, None),
            ("rrGr", 15, None, None),
            ("rryr", 3, None, None),
            ("rrrG", 20, None, None),
            ("rrry", 3, None, None),
            ("rrrr", 1, None, None),
        ],
    )
    links = (
        Link(0, f"n_{tls_id}_0", f"{tls_id}_s_0", False),
        Link(1, f"s_{tls_id}_0", f"{tls_id}_n_0", False),
        Link(2, f"e_{tls_id}_0", f"{tls_id}_w_0", False),
        Link(3, f"w_{tls_id}_0", f"{tls_id}_e_0", False),
    )
    incoming = tuple(sorted(link.from_lane for link in links))
    return Intersection(
        tls_id=tls_id,
        position=(100.0, 0.0),
        junctions=(tls_id,),
        incoming_lanes=incoming,
        approaches=tuple(sorted(lane.rsplit("_", 1)[0] for lane in incoming)),
        links=links,
        base=base,
        programs=("0",),
    )


def fake_network(*lights: Intersection) -> NetworkModel:
    """A network model of the given lights with one detector per incoming lane."""
    lanes = {}
    dets: dict[str, tuple[Detector, ...]] = {}
    all_dets = []
    for inter in lights:
        mine = []
        for link in inter.links:
            for lane_id in (link.from_lane, link.to_lane):
                lanes[lane_id] = _lane(lane_id)
        for lane_id in inter.incoming_lanes:
            det = Detector(f"e1_{lane_id}", lane_id, 120.0, inter.tls_id)
            mine.append(det)
            all_dets.append(det)
        dets[inter.tls_id] = tuple(mine)
    return NetworkModel(
        id="fake",
        path=Path("fake.net.xml"),
        sha256="0" * 64,
        intersections={i.tls_id: i for i in lights},
        lanes=lanes,
        edges={},
        junction_shapes={},
        bounds=(0.0, 0.0, 100.0, 100.0),
        detectors=tuple(all_dets),
        detectors_path=None,
        _by_tls=dets,
    )
