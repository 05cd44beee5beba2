"""Actuated greens that serve a crossing may gap out at ``min_s``: it honours walk + clearance."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from configs.safety import Proposal, check_intersection, project
from configs.timing import BaseProgram, IntersectionTiming, SafetyLimits
from rl.baselines import actuated_plan

LIMITS = SafetyLimits(min_green_s=7, ped_walk_s=7, ped_clearance_s=10)
GREEN_STATES = ["GGgrrrGGgrrr", "rrrGGgrrrGGg", "GrGrGrGrGrGr", "rGrGrGrGrGrG"]


def _crossing_base() -> BaseProgram:
    phases = [("GGrr", 30, 7.0, 50.0), ("yyrr", 3, None, None)]
    phases += [("rrGG", 30, 7.0, 50.0), ("rryy", 3, None, None)]
    return BaseProgram.from_sumo("J", "0", phases, mode="actuated", pedestrian_phases={0})


def test_invariant_refuses_an_actuated_crossing_green_whose_min_s_is_below_walk_clearance() -> None:
    base = _crossing_base()
    plan = project("J", Proposal([30, 30]), base, LIMITS)
    short = plan.phases[0].model_copy(update={"min_s": 7})
    bad = plan.model_copy(update={"phases": (short, *plan.phases[1:])})
    found = check_intersection("J", bad, base, LIMITS)
    assert [v.invariant for v in found] == ["actuated_bounds"]
    assert found[0].phase == 0


def test_projection_and_actuated_baseline_honour_walk_clearance_in_min_s() -> None:
    base = _crossing_base()
    assert project("J", Proposal([30, 30]), base, LIMITS).phases[0].min_s == LIMITS.ped_green_s
    assert actuated_plan("J", base, LIMITS).phases[0].min_s == LIMITS.ped_green_s


@st.composite
def actuated_bases(draw: st.DrawFn) -> BaseProgram:
    n_greens = draw(st.integers(2, 4))
    phases: list[tuple[str, float, float | None, float | None]] = []
    for i in range(n_greens):
        g = GREEN_STATES[i]
        phases.append((g, draw(st.integers(5, 60)), float(draw(st.integers(1, 30))), 90.0))
        phases.append((g.replace("G", "y").replace("g", "y"), draw(st.integers(3, 5)), None, None))
    ped = draw(st.sets(st.sampled_from([i for i, p in enumerate(phases) if "G" in p[0]])))
    return BaseProgram.from_sumo("J", "0", phases, mode="actuated", pedestrian_phases=ped)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    base=actuated_bases(),
    walk=st.integers(4, 10),
    clearance=st.integers(5, 15),
    greens=st.lists(st.floats(0, 120, allow_nan=False), min_size=4, max_size=4),
)
def test_every_projected_actuated_plan_is_safe_and_pedestrian_min_s_holds(
    base: BaseProgram, walk: int, clearance: int, greens: list[float]
) -> None:
    limits = SafetyLimits(
        min_green_s=5, ped_walk_s=walk, ped_clearance_s=clearance, min_cycle_s=30, max_cycle_s=200
    )
    proposal = Proposal(greens[: len(base.green_indices)])
    plan: IntersectionTiming = project("J", proposal, base, limits)
    assert check_intersection("J", plan, base, limits) == []
    for phase, ref in zip(plan.phases, base.phases, strict=True):
        if ref.kind == "green" and ref.serves_pedestrians:
            assert phase.min_s is not None
            assert phase.min_s >= limits.ped_green_s
