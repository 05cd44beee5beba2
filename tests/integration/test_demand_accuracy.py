from __future__ import annotations

from pathlib import Path

import pytest

from configs.timing import IntersectionTiming
from simulators.demand import DemandEstimator, geh, write_routes
from simulators.network import load_network
from simulators.twin import LibsumoWhatIfEngine, WhatIfRequest
from tests.support.twin_scenarios import build_grid

pytestmark = pytest.mark.integration


def _field(net: Path, routes: Path, detectors: Path) -> tuple[dict[str, float], dict[str, float]]:
    """Loop counts and true edge flows (veh/h) of a 'field' run over [300, 900) s."""
    import libsumo

    libsumo.start(
        ["sumo", "-n", str(net), "-r", str(routes), "-a", str(detectors), "--seed", "5",
         "--time-to-teleport", "-1", "--no-step-log", "true", "--no-warnings", "true"]
    )  # fmt: skip
    try:
        loops = libsumo.inductionloop.getIDList()
        edges = [e for e in libsumo.edge.getIDList() if not e.startswith(":")]
        on_loop: dict[str, set[str]] = {d: set() for d in loops}
        on_edge: dict[str, set[str]] = {e: set() for e in edges}
        for step in range(900):
            libsumo.simulationStep()
            if step >= 300:
                for d in loops:
                    on_loop[d].update(libsumo.inductionloop.getLastStepVehicleIDs(d))
                for e in edges:
                    on_edge[e].update(libsumo.edge.getLastStepVehicleIDs(e))
    finally:
        libsumo.close()
    return (
        {d: float(len(v)) for d, v in on_loop.items()},
        {e: len(v) * 6.0 for e, v in on_edge.items()},
    )


def test_estimated_flows_match_the_true_flows(tmp_path: Path) -> None:
    grid = build_grid(tmp_path / "grid", size=3, period_s=1.2, end_s=1000, seed=3)
    counts, truth = _field(grid.net, grid.routes, grid.detectors)
    model = load_network(grid.net, grid.detectors)
    estimator = DemandEstimator(grid.net, {d.id: d.lane_id for d in model.detectors})
    estimate = estimator.estimate(counts, 600)

    gehs = {e: geh(estimate.fitted_vph.get(e, 0.0), v) for e, v in truth.items()}
    detected = [gehs[e] for e in estimate.observed_vph]
    assert sum(g < 5 for g in detected) / len(detected) >= 0.95
    assert sum(g < 5 for g in gehs.values()) / len(gehs) >= 0.85
    total_true = sum(truth[e] for e in estimator.graph.sources())
    assert estimate.total_vph == pytest.approx(total_true, rel=0.15)

    # the estimate is a scenario the twin runs
    routes = write_routes(estimate.snapshot, tmp_path / "twin.rou.xml", end_s=600)
    current = {t: IntersectionTiming.from_base(b) for t, b in model.base_programs().items()}
    request = WhatIfRequest(
        network=str(grid.net), demand=str(routes), current=current, candidates={},
        horizon_s=300, warmup_s=200, seeds=(1,),
    )  # fmt: skip
    outcome = LibsumoWhatIfEngine(workers=0).evaluate(request).current
    assert outcome.failed is None
    assert outcome.throughput_veh > 0.5 * estimate.total_vph * 300 / 3600
    assert outcome.nox_mg > 0
