from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from configs.errors import ConfigError, SimulationError
from simulators.demand import (
    EdgeInfo,
    FleetEntry,
    RoadGraph,
    candidate_routes,
    edge_flows_from_detectors,
    estimate_demand,
    fit_route_flows,
    geh,
    snapshot_digest,
    write_routes,
)


def _edge(eid: str, a: str, b: str, lanes: int = 1) -> EdgeInfo:
    return EdgeInfo(eid, a, b, lanes, 100.0, 10.0)


def _cross() -> RoadGraph:
    """One junction C with four arms; every arm has an in- and an out-edge."""
    edges = {}
    for arm in "NESW":
        edges[f"{arm}C"] = _edge(f"{arm}C", arm, "C", lanes=2 if arm == "W" else 1)
        edges[f"C{arm}"] = _edge(f"C{arm}", "C", arm)
    successors = {
        e: tuple(sorted(o for o in edges if o.startswith("C") and o[1] != e[0]))
        if e.endswith("C")
        else ()
        for e in edges
    }
    return RoadGraph(edges=edges, successors=successors)


def test_sources_sinks_and_candidate_routes_without_u_turns() -> None:
    graph = _cross()
    assert graph.sources() == ("EC", "NC", "SC", "WC")
    assert graph.sinks() == ("CE", "CN", "CS", "CW")
    routes = candidate_routes(graph)
    assert len(routes) == 12  # 4 entries x 3 exits
    assert ("WC", "CW") not in routes
    assert routes == candidate_routes(graph)  # deterministic


def test_detector_counts_become_edge_flows() -> None:
    graph = _cross()
    lanes = {"d_w0": "WC_0", "d_n": "NC_0", "d_n_b": "NC_0", "d_x": "nowhere_0"}
    flows = edge_flows_from_detectors(
        {"d_w0": 30, "d_n": 10, "d_n_b": 14, "d_x": 5, "d_unknown": 3}, 300, lanes, graph
    )
    # WC has 2 lanes but one loop: scaled x2; two loops on one lane are averaged
    assert flows == {"NC": pytest.approx(144.0), "WC": pytest.approx(720.0)}
    with pytest.raises(ConfigError, match="interval"):
        edge_flows_from_detectors({}, 0, lanes, graph)
    with pytest.raises(ConfigError, match="d_n"):
        edge_flows_from_detectors({"d_n": -1}, 60, lanes, graph)


def test_fit_recovers_flows_that_the_edges_determine() -> None:
    routes = [("a", "b"), ("a", "c"), ("d", "b")]
    truth = np.array([100.0, 50.0, 200.0])
    observed = {"a": 150.0, "b": 300.0, "c": 50.0, "d": 200.0}
    assert fit_route_flows(routes, observed, ridge=0) == pytest.approx(truth, abs=1e-6)
    spread = fit_route_flows(routes, observed)  # the ridge shrinks, never goes negative
    assert (spread >= 0).all() and spread.sum() < truth.sum()
    with pytest.raises(SimulationError):
        fit_route_flows([("x",)], observed)


def test_geh() -> None:
    assert geh(100, 100) == 0
    assert geh(0, 0) == 0
    assert geh(150, 100) == pytest.approx(np.sqrt(2 * 50**2 / 250))


def _estimate() -> tuple[RoadGraph, dict[str, str], dict[str, float]]:
    graph = _cross()
    lanes = {f"d_{e}": f"{e}_0" for e in graph.edges}
    # 5 min counts: N->S 40, W->E 60 (two lanes, one loop each), E->N 10
    counts = {"d_NC": 40, "d_CS": 40, "d_WC": 30, "d_CE": 60, "d_EC": 10, "d_CN": 10}
    return graph, lanes, counts


def test_estimate_matches_counts_and_is_deterministic(tmp_path: Path) -> None:
    graph, lanes, counts = _estimate()
    fleet = [FleetEntry("HBEFA4/PC_petrol_Euro-6ab", 3), FleetEntry("HBEFA4/PC_BEV", 1)]
    first = estimate_demand(counts, 300, lanes, graph, fleet=fleet, ridge=0)
    second = estimate_demand(
        dict(reversed(counts.items())), 300, lanes, graph, fleet=fleet, ridge=0
    )
    assert first.snapshot == second.snapshot
    assert first.digest == snapshot_digest(first.snapshot)
    assert all(v < 1.0 for v in first.geh_values().values())
    assert first.total_vph == pytest.approx((40 + 60 + 10) * 12, rel=1e-3)
    assert [f["share"] for f in first.snapshot["fleet"]] == [0.75, 0.25]

    a = write_routes(first.snapshot, tmp_path / "a.rou.xml", end_s=1200)
    b = write_routes(second.snapshot, tmp_path / "b.rou.xml", end_s=1200)
    assert a.read_bytes() == b.read_bytes()
    root = ET.parse(a).getroot()
    types = root.find("vTypeDistribution")
    assert types is not None and types.get("id") == "fleet"
    assert {t.get("emissionClass") for t in types} == {"HBEFA4/PC_petrol_Euro-6ab", "HBEFA4/PC_BEV"}
    flows = root.findall("flow")
    assert flows and all(f.get("type") == "fleet" and f.get("end") == "1200.0" for f in flows)
    assert all(f.get("period", "").startswith("exp(") for f in flows)


def test_tampered_snapshot_is_refused(tmp_path: Path) -> None:
    graph, lanes, counts = _estimate()
    snapshot = dict(estimate_demand(counts, 300, lanes, graph).snapshot)
    snapshot["interval_s"] = 60.0
    with pytest.raises(ConfigError, match="digest"):
        write_routes(snapshot, tmp_path / "x.rou.xml", end_s=100)


def test_no_usable_counts_is_an_error() -> None:
    graph, lanes, _ = _estimate()
    with pytest.raises(SimulationError, match="detector"):
        estimate_demand({"unknown": 4}, 300, lanes, graph)
    with pytest.raises(ConfigError, match="fleet"):
        estimate_demand({"d_NC": 4}, 300, lanes, graph, fleet=[FleetEntry("HBEFA4/PC_BEV", 0)])
