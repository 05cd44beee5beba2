from __future__ import annotations

import json

import numpy as np
import pytest

from configs.errors import SimulationError
from configs.timing import IntersectionTiming, PhasePlan, classify_state
from simulators.network import load_network
from simulators.twin import (
    CURRENT,
    RECORDING_ARRAYS,
    LibsumoWhatIfEngine,
    RecordSpec,
    WhatIfRequest,
)
from tests.support.twin_scenarios import GridScenario, build_grid

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def arterial(tmp_path_factory: pytest.TempPathFactory) -> GridScenario:
    return build_grid(
        tmp_path_factory.mktemp("arterial"), size=3, period_s=1.5, end_s=1200, arterial=True
    )


@pytest.fixture(scope="module")
def base_plans(arterial: GridScenario) -> dict[str, IntersectionTiming]:
    model = load_network(arterial.net)
    return {t: IntersectionTiming.from_base(b) for t, b in model.base_programs().items()}


def _greens(plan: IntersectionTiming, green_s: int) -> IntersectionTiming:
    phases = tuple(
        PhasePlan(state=p.state, duration_s=green_s) if classify_state(p.state) == "green" else p
        for p in plan.phases
    )
    return IntersectionTiming(
        mode="fixed", cycle_s=sum(p.duration_s for p in phases), offset_s=0, phases=phases
    )


def _all_red(plan: IntersectionTiming) -> IntersectionTiming:
    phases = tuple(PhasePlan(state="r" * len(p.state), duration_s=30) for p in plan.phases[:2])
    return IntersectionTiming(mode="fixed", cycle_s=60, offset_s=0, phases=phases)


def _request(
    scenario: GridScenario, current: dict[str, IntersectionTiming], **kw: object
) -> WhatIfRequest:
    args: dict[str, object] = {
        "network": str(scenario.net),
        "demand": str(scenario.routes),
        "current": current,
        "candidates": {},
        "horizon_s": 600,
        "warmup_s": 300,
        "seeds": (11, 12, 13),
    }
    args.update(kw)
    return WhatIfRequest(**args)  # type: ignore[arg-type]


@pytest.mark.slow
def test_same_inputs_and_seeds_give_identical_numbers(
    arterial: GridScenario, base_plans: dict[str, IntersectionTiming]
) -> None:
    short = {t: _greens(p, 20) for t, p in base_plans.items()}
    request = _request(
        arterial,
        base_plans,
        candidates={"same": base_plans, "short": short},
        record=RecordSpec(fps=5, duration_s=4, window_s=120),
    )
    with LibsumoWhatIfEngine(workers=2) as engine:
        first = engine.evaluate(request)
        second = engine.evaluate(request)
    third = LibsumoWhatIfEngine(workers=0).evaluate(request)
    assert first.to_dict() == second.to_dict() == third.to_dict()
    # and an auditor replaying from the recorded JSON gets the same numbers again
    replay = WhatIfRequest.from_dict(json.loads(json.dumps(request.to_dict())))
    assert LibsumoWhatIfEngine(workers=0).evaluate(replay).to_dict() == first.to_dict()

    # the identical candidate changes nothing, and its interval contains 0
    same = first.outcome("same")
    assert same.failed is None
    for metric in ("wait", "delay", "nox", "throughput"):
        change = same.changes[metric]
        assert change.mean == 0.0
        assert change.ci[0] <= 0.0 <= change.ci[1]
    current = first.current
    assert current.mean_wait_s > 0 and current.nox_mg > 0 and current.throughput_veh > 0
    assert set(current.intersections) == set(arterial.tls_ids)
    assert sum(i.nox_mg for i in current.intersections.values()) < current.nox_mg

    # recordings for the video: float32 [frames, edges], occupancy in [0, 1]
    rec = first.recordings[CURRENT]
    assert rec.occupancy.shape == rec.queue_veh.shape == (20, len(rec.edge_ids))
    assert rec.occupancy.dtype == np.float32 and rec.queue_veh.dtype == np.float32
    assert 0.0 <= rec.occupancy.min() and rec.occupancy.max() <= 1.0
    assert rec.queue_veh.max() > 0
    assert rec.frame_times_s[0] == 786.0 and rec.frame_times_s[-1] == 900.0
    assert rec.mean_wait_s.shape == rec.nox_mg.shape == (20,)
    assert (np.diff(rec.nox_mg) >= 0).all() and rec.nox_mg[-1] > 0
    assert (rec.mean_wait_s >= 0).all()
    assert set(first.recordings) == {CURRENT, "same", "short"}

    # vehicles and signal states per sample, identical run to run (pool and serial)
    assert rec.has_vehicles and rec.vehicle_offsets[-1] == len(rec.vehicle_x_m) > 0
    assert (np.diff(rec.vehicle_offsets) == rec.vehicle_count).all()  # under the cap
    for field in ("vehicle_x_m", "vehicle_y_m", "vehicle_angle_deg", "vehicle_speed_mps"):
        assert getattr(rec, field).dtype == np.float32
    assert rec.signal_ids == tuple(sorted(arterial.tls_ids))
    assert rec.signal_states.shape == (20, int(rec.signal_offsets[-1]))
    assert set(bytes(rec.signal_states.ravel()).decode()) <= set("GgyYrRsuoO")
    assert "G" in rec.signal_state(10, rec.signal_ids[0]).upper()
    for other in (second, third):
        for name, recording in first.recordings.items():
            theirs = other.recordings[name]
            assert recording.signal_ids == theirs.signal_ids
            for field in RECORDING_ARRAYS:
                np.testing.assert_array_equal(getattr(recording, field), getattr(theirs, field))


def test_much_shorter_greens_on_a_loaded_arterial_are_worse(
    arterial: GridScenario, base_plans: dict[str, IntersectionTiming]
) -> None:
    short = {t: _greens(p, 7) for t, p in base_plans.items()}
    request = _request(arterial, base_plans, candidates={"short": short}, seeds=(1, 2, 3))
    result = LibsumoWhatIfEngine(workers=2).evaluate(request)
    outcome = result.outcome("short")
    assert outcome.failed is None
    assert outcome.mean_wait_s > result.current.mean_wait_s
    wait = outcome.changes["wait"]
    assert min(wait.per_seed) > 0.1 and wait.ci[0] > 0, wait
    assert outcome.changes["throughput"].mean < 0


def test_gridlock_is_a_failure_with_its_reason(
    arterial: GridScenario, base_plans: dict[str, IntersectionTiming]
) -> None:
    red = {t: _all_red(p) for t, p in base_plans.items()}
    request = _request(arterial, base_plans, candidates={"red": red}, seeds=(1, 2), gridlock_s=120)
    result = LibsumoWhatIfEngine(workers=2).evaluate(request)
    assert result.current.failed is None
    failed = result.outcome("red").failed
    assert failed is not None and "gridlock" in failed
    assert result.outcome("red").changes == {}
    with pytest.raises(SimulationError, match="gridlock"):
        result.prediction("red")


def test_apply_timing_puts_the_light_in_the_phase_its_offset_implies(
    arterial: GridScenario, base_plans: dict[str, IntersectionTiming]
) -> None:
    import libsumo

    from simulators.twin import apply_timing

    plan = base_plans["B1"].model_copy(update={"offset_s": 50})  # cycle 90: 42 G, 3 y, 42 G, 3 y
    libsumo.start(["sumo", "-n", str(arterial.net), "--no-step-log", "true"])
    try:
        # field time 100 -> position (100 - 50) mod 90 = 50: phase 2, 37 s left
        apply_timing(libsumo, "B1", plan, 0.0, field_time_s=100)
        assert libsumo.trafficlight.getProgram("B1") == "signaltwin"
        assert libsumo.trafficlight.getPhase("B1") == 2
        assert libsumo.trafficlight.getNextSwitch("B1") == pytest.approx(37.0)
        with pytest.raises(SimulationError, match="B1"):
            apply_timing(
                libsumo,
                "B1",
                _all_red(plan).model_copy(
                    update={
                        "phases": tuple(
                            p.model_copy(update={"state": "rr"}) for p in _all_red(plan).phases
                        )
                    }
                ),
                0.0,
            )
    finally:
        libsumo.close()


def test_an_actuated_candidate_over_fixed_plans_runs_as_actuated_control() -> None:
    # the twin once installed candidates under the current plan's SUMO program id;
    # SUMO then updated the fixed program in place and kept it fixed, so actuated
    # candidates were simulated as fixed-time plans (and, with rest-in-green
    # successors, stuck in green): on the district an actuated plan must cut
    # the waiting time of the fixed plans, as it does in the field
    from configs.timing import SafetyLimits
    from rl.baselines import actuated_plan
    from simulators.netbuild import district_paths

    paths = district_paths()
    bases = load_network(paths["net"], paths["det"]).base_programs()
    current = {t: IntersectionTiming.from_base(b) for t, b in bases.items()}
    actuated = {t: actuated_plan(t, b, SafetyLimits()) for t, b in bases.items()}
    request = WhatIfRequest(
        network=str(paths["net"]),
        demand=str(paths["rou"]),
        current=current,
        candidates={"actuated": actuated},
        horizon_s=600,
        warmup_s=300,
        seeds=(1,),
    )
    result = LibsumoWhatIfEngine(workers=0).evaluate(request)
    fixed, candidate = (
        next(o for o in result.outcomes if o.name == n) for n in (CURRENT, "actuated")
    )
    assert candidate.failed is None
    assert candidate.mean_wait_s < 0.7 * fixed.mean_wait_s


def test_a_cancelled_what_if_stops_promptly_and_the_engine_runs_again() -> None:
    # the daemon's shutdown (and a cycle past its deadline) sets the cycle's
    # cancel event: a district what-if must stop within about a second, not run
    # to the end, and the engine must still serve the next cycle
    import threading
    import time

    from configs.errors import WhatIfCancelled
    from simulators.netbuild import district_paths

    paths = district_paths()
    bases = load_network(paths["net"], paths["det"]).base_programs()
    current = {t: IntersectionTiming.from_base(b) for t, b in bases.items()}
    long_request = WhatIfRequest(
        network=str(paths["net"]),
        demand=str(paths["rou"]),
        current=current,
        candidates={"same": current},
        horizon_s=3600,
        warmup_s=300,
        seeds=(1, 2, 3),
    )
    cancel = threading.Event()
    with LibsumoWhatIfEngine(workers=2) as engine:
        outcome: list[BaseException | None] = []

        def run() -> None:
            try:
                engine.evaluate(long_request, cancel=cancel)
                outcome.append(None)
            except BaseException as e:
                outcome.append(e)

        thread = threading.Thread(target=run)
        thread.start()
        time.sleep(1.0)
        cancel.set()
        set_at = time.monotonic()
        thread.join(30)
        stopped_after_s = time.monotonic() - set_at
        assert not thread.is_alive()
        assert len(outcome) == 1 and isinstance(outcome[0], WhatIfCancelled)
        # six runs of 3900 simulated seconds on the district take minutes
        assert stopped_after_s < 3.0
        short = WhatIfRequest(
            network=str(paths["net"]),
            demand=str(paths["rou"]),
            current=current,
            candidates={},
            horizon_s=60,
            warmup_s=0,
            seeds=(1,),
        )
        result = engine.evaluate(short, cancel=threading.Event())
        assert result.current.failed is None
