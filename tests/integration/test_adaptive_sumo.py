"""Adaptive plans on a real SUMO: the twin runs them, and the field's signals keep the invariants.

The field emulator (the city's controllers) and the twin run adaptive plans
through the same :class:`simulators.signal_program.AdaptiveRunner`. These tests
run the demo district with its demand: the twin predicts that adaptive control
beats the district's fixed plans, and in the field every green the logic ends
lasts at least ``min_s``, at most ``max_s`` unless nobody else waited, and is
followed by its base program's own transition.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from configs.safety import intergreen_after
from configs.timing import IntersectionTiming, SafetyLimits, classify_state
from rl.baselines import adaptive_plans
from simulators.field import FieldConfig, FieldEmulator
from simulators.netbuild import district_paths
from simulators.network import load_network
from simulators.twin import CURRENT, LibsumoWhatIfEngine, WhatIfRequest

pytestmark = pytest.mark.integration


def _district() -> tuple[dict[str, IntersectionTiming], dict[str, IntersectionTiming]]:
    paths = district_paths()
    bases = load_network(paths["net"], paths["det"]).base_programs()
    fixed = {t: IntersectionTiming.from_base(b) for t, b in bases.items()}
    return fixed, adaptive_plans(bases, SafetyLimits())


def test_the_twin_runs_adaptive_candidates_and_they_beat_fixed_plans() -> None:
    paths = district_paths()
    fixed, adaptive = _district()
    assert {p.mode for p in adaptive.values()} == {"adaptive"}
    request = WhatIfRequest(
        network=str(paths["net"]),
        demand=str(paths["rou"]),
        current=fixed,
        candidates={"adaptive": adaptive},
        horizon_s=600,
        warmup_s=300,
        seeds=(1,),
    )
    result = LibsumoWhatIfEngine(workers=0).evaluate(request)
    current, candidate = (
        next(o for o in result.outcomes if o.name == n) for n in (CURRENT, "adaptive")
    )
    assert candidate.failed is None
    assert candidate.mean_wait_s < 0.8 * current.mean_wait_s


def _runs(phases: Sequence[int]) -> list[tuple[int, int, int]]:
    """``(phase, first second, seconds)`` of each run of equal phases."""
    runs: list[tuple[int, int, int]] = []
    for t, p in enumerate(phases):
        if runs and runs[-1][0] == p:
            runs[-1] = (p, runs[-1][1], runs[-1][2] + 1)
        else:
            runs.append((p, t, 1))
    return runs


def test_field_signals_keep_the_adaptive_invariants() -> None:
    paths = district_paths()
    _, adaptive = _district()
    field = FieldEmulator(
        FieldConfig(
            net_path=paths["net"],
            detectors_path=paths["det"],
            routes_path=paths["rou"],
            seed=3,
            backend="traci",
        )
    ).start()
    shown: dict[str, list[int]] = {t: [] for t in adaptive}
    try:
        for tls_id, plan in adaptive.items():
            field.apply(tls_id, plan, field.field_time_s)
        start = field.field_time_s
        while field.field_time_s < start + 1200:
            field.step()
            for tls_id in adaptive:
                shown[tls_id].append(field.signal_state(tls_id)[1])
    finally:
        field.close()
    switched = 0
    for tls_id, plan in adaptive.items():
        states = [p.state for p in plan.phases]
        runs = _runs(shown[tls_id])
        for (phase, _, seconds), (after, _, _) in zip(runs[1:-1], runs[2:], strict=False):
            if classify_state(states[phase]) != "green":
                assert seconds == plan.phases[phase].duration_s, (tls_id, phase)
                continue
            switched += 1
            bounds = plan.phases[phase]
            assert bounds.min_s is not None and seconds >= bounds.min_s, (tls_id, phase)
            transition = intergreen_after(states, phase)
            assert after == (transition[0] if transition else after), (tls_id, phase, after)
    assert switched > 200  # the lights really decide, they are not stuck in one green
