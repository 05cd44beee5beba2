"""The settings -> what-if request builder and the shared Student-t interval (no SUMO)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from scipy import stats

from configs.errors import SimulationError
from configs.settings_file import load_settings
from configs.timing import IntersectionTiming, PhasePlan
from simulators.demand import read_detector_lanes
from simulators.netbuild import district_paths
from simulators.network import read_loops
from simulators.stats import relative_change, t_interval
from simulators.twin import RecordSpec, WhatIfRequest, request_from_settings, whatif_seeds

DEMO = Path(__file__).resolve().parents[2] / "configs" / "demo.toml"


def _timing() -> IntersectionTiming:
    phases = (
        PhasePlan(state="GGrr", duration_s=30),
        PhasePlan(state="yyrr", duration_s=3),
        PhasePlan(state="rrGG", duration_s=30),
        PhasePlan(state="rryy", duration_s=3),
    )
    return IntersectionTiming(mode="fixed", cycle_s=66, offset_s=0, phases=phases)


def test_t_interval_is_the_student_t_interval() -> None:
    values = [10.0, 12.0, 14.0, 16.0, 18.0]
    mean, low, high = t_interval(values, 0.95)
    half = float(stats.t.ppf(0.975, 4)) * math.sqrt(10.0) / math.sqrt(5)
    assert mean == 14.0
    assert (low, high) == pytest.approx((14.0 - half, 14.0 + half))
    assert t_interval([3.0], 0.9) == (3.0, 3.0, 3.0)
    with pytest.raises(SimulationError):
        t_interval([], 0.95)
    with pytest.raises(SimulationError):
        t_interval([1.0, 2.0], 1.0)


def test_relative_change_from_nothing() -> None:
    assert relative_change(10.0, 8.0) == pytest.approx(-0.2)
    assert relative_change(0.0, 0.0) == 0.0
    assert relative_change(0.0, 1.0) == 1.0


def test_request_from_settings_takes_every_setting() -> None:
    settings = load_settings(DEMO)
    sim = settings.simulation
    current = {"J": _timing()}
    request = request_from_settings(
        settings,
        network="n.net.xml",
        demand="d.rou.xml",
        current=current,
        candidates={"cand": current},
        field_time_s=120,
        record_video=True,
    )
    assert request.seeds == whatif_seeds(settings)
    assert request.seeds == tuple(sim.base_seed + i for i in range(sim.seeds))
    assert (request.horizon_s, request.warmup_s) == (sim.horizon_s, sim.warmup_s)
    assert request.step_length_s == sim.step_length_s
    assert request.gridlock_s == sim.gridlock_s
    assert request.confidence_level == settings.gate.confidence_level
    assert request.field_time_s == 120
    if settings.video.enabled:
        assert request.record == RecordSpec(
            fps=settings.video.fps, duration_s=settings.video.duration_s
        )
    plain = request_from_settings(
        settings,
        network="n.net.xml",
        demand="d.rou.xml",
        current=current,
        candidates={},
        horizon_s=60,
        warmup_s=0,
        seeds=2,
    )
    assert plain.record is None
    assert (plain.horizon_s, plain.warmup_s, plain.seeds) == (60, 0, request.seeds[:2])


def test_request_without_settings_uses_the_schema_defaults() -> None:
    request = request_from_settings(
        None, network="n.net.xml", demand="d.rou.xml", current={}, candidates={}, seeds=3
    )
    # what `signaltwin simulate` used without a settings file
    assert request.seeds == (20_240, 20_241, 20_242)
    assert (request.horizon_s, request.warmup_s) == (900, 300)
    assert (request.step_length_s, request.gridlock_s) == (1.0, 300)
    assert request.confidence_level == 0.95
    assert isinstance(request, WhatIfRequest)


def test_one_detector_parser_for_network_and_demand() -> None:
    det = district_paths()["det"]
    loops = read_loops(det)
    assert loops
    assert read_detector_lanes(det) == {d: lane for d, lane, _ in loops}
