"""The measured delta and the twin calibration with real SUMO: a district field and its twin.

One field run (module fixture): 300 s under the base plans, then a clearly worse
plan (every intersection's first green cut to 10 s) for 300 s; the roadside
counters are read at the boundaries. A second field with the same seed keeps
the base plans over the after window: the ground truth a real city never has.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from configs.timing import IntersectionTiming
from simulators.calibration import TwinCalibration
from simulators.field import WindowTotals
from simulators.twin import (
    CounterfactualEstimate,
    DemandSource,
    LibsumoWhatIfEngine,
    estimate_counterfactual,
)
from tests.support.counterfactual_day import field_windows, starved

pytestmark = pytest.mark.integration

WINDOW_S = 300
SETTLE_S = 120
FIELD_SEED = 3


@dataclass(frozen=True)
class FieldDay:
    net: Path
    detector_lanes: dict[str, str]
    previous: dict[str, IntersectionTiming]
    deployed: dict[str, IntersectionTiming]
    before: WindowTotals
    after: WindowTotals
    after_without_deployment: WindowTotals


@pytest.fixture(scope="module")
def day() -> FieldDay:
    network, before, after = field_windows(FIELD_SEED, WINDOW_S, SETTLE_S, deploy=True)
    _, _, truth = field_windows(FIELD_SEED, WINDOW_S, SETTLE_S, deploy=False)
    base = {t: IntersectionTiming.from_base(i.base) for t, i in network.intersections.items()}
    return FieldDay(
        net=network.path,
        detector_lanes={d.id: d.lane_id for d in network.detectors},
        previous=base,
        deployed={t: starved(p) for t, p in base.items()},
        before=before,
        after=after,
        after_without_deployment=truth,
    )


@pytest.fixture(scope="module")
def engine() -> Iterator[LibsumoWhatIfEngine]:
    with LibsumoWhatIfEngine(workers=1) as twin:
        yield twin


@pytest.fixture(scope="module")
def demand(day: FieldDay, tmp_path_factory: pytest.TempPathFactory) -> DemandSource:
    directory = tmp_path_factory.mktemp("demand")
    return DemandSource.from_network(day.net, day.detector_lanes, directory=directory)


def _estimate(
    day: FieldDay,
    engine: LibsumoWhatIfEngine,
    demand: DemandSource,
    seeds: tuple[int, ...],
    demand_scale: float = 1.0,
) -> CounterfactualEstimate:
    return estimate_counterfactual(
        engine,
        network=day.net,
        demand=demand,
        before=day.before,
        after=day.after,
        previous=day.previous,
        deployed=day.deployed,
        seeds=seeds,
        warmup_s=SETTLE_S,
        demand_scale=demand_scale,
    )


def test_a_clearly_worse_plan_is_measured_worse_and_nearer_the_truth_than_before_after(
    day: FieldDay, engine: LibsumoWhatIfEngine, demand: DemandSource
) -> None:
    est = _estimate(day, engine, demand, seeds=(1, 2, 3))
    values = (est.wait_change, *est.wait_ci, est.nox_change, *est.nox_ci, est.model_change)
    assert all(v == v and abs(v) < 10 for v in values)  # finite, not NaN
    assert est.wait_ci[0] <= est.wait_change <= est.wait_ci[1]
    assert est.nox_ci[0] <= est.nox_change <= est.nox_ci[1]
    assert est.wait_change > 0.05
    assert est.field_before_veh_s == pytest.approx(day.before.wait_veh_s())
    assert est.twin_before_veh_s > 0 and est.twin_previous_after_veh_s > 0
    # the ground truth: the same vehicles and seed without the deployment
    truth = day.after.wait_veh_s() / day.after_without_deployment.wait_veh_s() - 1
    naive = day.after.wait_veh_s() / day.before.wait_veh_s() - 1
    assert truth > 0.05
    assert abs(est.wait_change - truth) < abs(naive - truth)


def test_calibration_moves_the_scale_toward_the_field_from_either_side(
    day: FieldDay, engine: LibsumoWhatIfEngine, demand: DemandSource
) -> None:
    # the twin's demand 1.2 x too low, then 1.5 x too high, against what its loops saw
    low = TwinCalibration(demand_scale=1 / 1.2)
    low_estimate = _estimate(day, engine, demand, seeds=(1, 2), demand_scale=low.demand_scale)
    high = TwinCalibration(demand_scale=1.5)
    high_estimate = _estimate(day, engine, demand, seeds=(1, 2), demand_scale=high.demand_scale)
    assert low_estimate.gap_before > 1.0 > high_estimate.gap_before
    assert low.update_from_estimate(low_estimate) > 1 / 1.2
    assert high.update_from_estimate(high_estimate) < 1.5
    assert low_estimate.demand_digests[0] != high_estimate.demand_digests[0]
