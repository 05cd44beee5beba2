"""Twin calibration: the demand-scale step, its bounds, the snapshot it scales, its file."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest

from configs.errors import ConfigError, SimulationError
from simulators.calibration import TwinCalibration
from simulators.demand import snapshot_digest, write_routes
from simulators.twin import CounterfactualEstimate


def _halting(demand: float) -> float:
    """The synthetic twin and field: halting grows with the square of demand."""
    return 50.0 * demand**2


def test_converges_on_a_twin_where_halting_goes_with_demand_squared() -> None:
    # the twin's detectors miss one vehicle in six: the field's demand is 1.2x the twin's
    true_demand, estimated = 1200.0, 1000.0
    rng = random.Random(4)
    cal = TwinCalibration()
    errors = []
    for _ in range(12):
        field = _halting(true_demand) * rng.uniform(0.97, 1.03)  # the field's noise
        twin = _halting(estimated * cal.demand_scale)
        errors.append(abs(twin / field - 1))
        cal.update(field, twin)
    assert cal.demand_scale == pytest.approx(1.2, rel=0.03)
    assert errors[-1] < 0.1 < errors[0]
    assert len(cal.history) == 12
    assert cal.history[-1].demand_scale == cal.demand_scale


def test_a_twin_without_learning_keeps_its_error() -> None:
    frozen, learning = TwinCalibration(), TwinCalibration()
    for _ in range(8):
        field = _halting(1200.0)
        frozen_error = abs(_halting(1000.0 * frozen.demand_scale) / field - 1)
        learning.update(field, _halting(1000.0 * learning.demand_scale))
    learnt_error = abs(_halting(1000.0 * learning.demand_scale) / _halting(1200.0) - 1)
    assert frozen_error > 0.3 > 0.05 > learnt_error


def test_one_outlier_moves_the_scale_at_most_max_step_and_bounds_hold() -> None:
    cal = TwinCalibration()
    cal.update(1000.0, 10.0)  # an incident the twin was not told about: gap 100
    assert cal.demand_scale == pytest.approx(1.2)
    assert cal.history[0].gap == pytest.approx(100.0)
    assert cal.history[0].log_step == pytest.approx(math.log(1.2))
    for _ in range(20):
        cal.update(1000.0, 10.0)
    assert cal.demand_scale == 2.0
    for _ in range(40):
        cal.update(1.0, 1000.0)
    assert cal.demand_scale == 0.5
    assert cal.history[-1].log_step == 0.0


def test_damped_step_is_rate_over_elasticity_in_log_space() -> None:
    cal = TwinCalibration()
    cal.update(1.1, 1.0, elasticity=2.0, rate=0.5)
    assert cal.demand_scale == pytest.approx(1.1**0.25)
    cal = TwinCalibration()
    cal.update(1.1, 1.0, elasticity=1.0, rate=1.0)
    assert cal.demand_scale == pytest.approx(1.1)


@pytest.mark.parametrize(
    ("args", "kw", "error", "message"),
    [
        ((0.0, 1.0), {}, SimulationError, "field_veh_s"),
        ((1.0, math.nan), {}, SimulationError, "twin_veh_s"),
        ((1.0, 1.0), {"rate": 0.0}, ConfigError, "rate"),
        ((1.0, 1.0), {"elasticity": -1.0}, ConfigError, "elasticity"),
        ((1.0, 1.0), {"bounds": (1.5, 2.0)}, ConfigError, "bounds"),
    ],
)
def test_bad_updates_are_refused_and_change_nothing(
    args: tuple[float, float], kw: dict[str, object], error: type[Exception], message: str
) -> None:
    cal = TwinCalibration()
    with pytest.raises(error, match=message):
        cal.update(*args, **kw)  # type: ignore[arg-type]
    assert cal.demand_scale == 1.0 and cal.history == []


def _snapshot() -> dict[str, object]:
    snapshot: dict[str, object] = {
        "schema": "signaltwin.demand/v1",
        "fleet": [{"emission_class": "HBEFA4/PC_petrol_Euro-6ab", "share": 1.0}],
        "routes": [{"id": "r0", "edges": ["a", "b"], "vph": 300.0}],
    }
    snapshot["digest"] = snapshot_digest(snapshot)
    return snapshot


def test_apply_scales_the_rates_records_the_scale_and_writes_those_routes(tmp_path: Path) -> None:
    snapshot = _snapshot()
    assert TwinCalibration().apply(snapshot) == snapshot
    scaled = TwinCalibration(demand_scale=1.25).apply(snapshot)
    assert scaled["routes"][0]["vph"] == pytest.approx(375.0)
    assert scaled["calibration"] == {"demand_scale": 1.25}
    assert scaled["digest"] == snapshot_digest(scaled) != snapshot["digest"]
    assert snapshot["routes"][0]["vph"] == 300.0  # type: ignore[index]
    text = write_routes(scaled, tmp_path / "r.rou.xml", end_s=100).read_text()
    assert f'period="exp({375.0 / 3600:.9g})"' in text
    with pytest.raises(ConfigError, match="already calibrated"):
        TwinCalibration(demand_scale=1.1).apply(scaled)


def test_save_load_round_trip_is_atomic_and_a_corrupt_file_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "state" / "calibration.json"
    assert TwinCalibration.load_or_new(path) == TwinCalibration()
    cal = TwinCalibration()
    cal.update(1200.0, 1000.0)
    cal.save(path)
    assert [p.name for p in path.parent.iterdir()] == ["calibration.json"]
    assert TwinCalibration.load(path) == cal
    assert TwinCalibration.load_or_new(path) == cal
    path.write_text('{"schema": "signaltwin.calibration/v1", "demand_scale": ')
    with pytest.raises(ConfigError, match=r"calibration\.json is unreadable or corrupt"):
        TwinCalibration.load_or_new(path)
    path.write_text(json.dumps({"schema": "other", "demand_scale": 1.0}))
    with pytest.raises(ConfigError, match="key 'schema'"):
        TwinCalibration.load(path)
    path.write_text(json.dumps({"schema": "signaltwin.calibration/v1", "demand_scale": -1}))
    with pytest.raises(ConfigError, match="'demand_scale' must be > 0"):
        TwinCalibration.load(path)
    path.write_text(json.dumps({"schema": "signaltwin.calibration/v1", "demand_scale": "x"}))
    with pytest.raises(ConfigError, match="malformed"):
        TwinCalibration.load(path)
    with pytest.raises(ConfigError, match="does not exist"):
        TwinCalibration.load(tmp_path / "missing.json")


def test_update_from_an_estimate_pools_both_windows_at_the_estimates_scale() -> None:
    estimate = CounterfactualEstimate(
        wait_change=0.0,
        wait_ci=(0.0, 0.0),
        nox_change=0.0,
        nox_ci=(0.0, 0.0),
        field_before_veh_s=1100.0,
        field_after_veh_s=1300.0,
        twin_before_veh_s=900.0,
        twin_previous_after_veh_s=1000.0,
        twin_deployed_after_veh_s=1100.0,
        gap_before=1100.0 / 900.0,
        model_change=0.1,
        method="twin-ratio/v1",
        seeds=(1, 2),
    )
    cal = TwinCalibration()
    cal.update_from_estimate(estimate)
    assert cal.history[0].field_veh_s == 2400.0 and cal.history[0].twin_veh_s == 2000.0
    assert cal.demand_scale == pytest.approx(1.2**0.25)
    with pytest.raises(SimulationError, match="demand scale 1.0"):
        cal.update_from_estimate(estimate)
