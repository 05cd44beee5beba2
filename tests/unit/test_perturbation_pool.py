"""The batched perturbation pool is the pool a plain loop over the perturbations makes.

The reference (tests/support/reference_screening.py) is the screening pool as
the daemon built it before it was batched: one perturbation at a time, one
``numpy`` draw at a time, each plan projected by
:func:`configs.safety.project_plans`. The batched pool must give the same
names, the same plans and the same surrogate arrays.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache

import numpy as np
import pytest

from configs.errors import ConfigError, SafetyViolation
from configs.safety import Proposal, project
from configs.settings import SafetySettings
from configs.timing import BaseProgram, IntersectionTiming, SafetyLimits
from edge_accel.screening import PerturbationPool
from edge_accel.surrogate import plan_arrays
from simulators.netbuild import district_paths
from simulators.network import load_network
from tests.support.reference_screening import reference_pool

Plans = Mapping[str, IntersectionTiming]


@cache
def district() -> dict[str, BaseProgram]:
    paths = district_paths()
    return load_network(paths["net"], paths["det"]).base_programs()


def proposals(
    bases: Mapping[str, BaseProgram], limits: SafetyLimits, seed: int
) -> tuple[dict[str, IntersectionTiming], dict[str, dict[str, IntersectionTiming]]]:
    """A plan in force and three proposals (each its own intersection order and offsets)."""
    rng = np.random.default_rng(seed)
    order = sorted(bases)

    def drawn(low: float, high: float, keys: list[str]) -> dict[str, IntersectionTiming]:
        out = {}
        for t in keys:
            want = rng.uniform(low, high, size=len(bases[t].green_indices)).tolist()
            offset = float(rng.uniform(0, 200))
            out[t] = project(t, Proposal(want, float(rng.uniform(50, 140)), offset), bases[t],
                             limits)  # fmt: skip
        return out

    current = drawn(8, 40, order)
    shuffled = list(order)
    rng.shuffle(shuffled)
    return current, {
        "webster": drawn(8, 40, order),
        "policy": drawn(5, 60, shuffled),
        "current": dict(current),
    }


@pytest.mark.parametrize("seed", [0, 7, 2024])
@pytest.mark.parametrize("n", [1, 2, 37, 120])
def test_the_pool_is_the_loop_over_single_perturbations(seed: int, n: int) -> None:
    bases = district()
    limits = SafetyLimits(max_cycle_change_s=25, max_split_change_s=12)
    current, candidates = proposals(bases, limits, seed)
    pool = PerturbationPool(candidates, current, bases, limits, seed=seed + 1, n=n)
    expected = reference_pool(candidates, current, bases, limits, seed + 1, n)
    assert len(pool) == len(expected) == n + 3
    assert [name for name, _ in pool] == [name for name, _ in expected]
    for (name, plans), (_, want) in zip(pool, expected, strict=True):
        assert plans == want, name
    order = sorted(bases)
    got, ref = pool.arrays(order), plan_arrays([p for _, p in expected], order)
    np.testing.assert_array_equal(got.green_s, ref.green_s)
    np.testing.assert_array_equal(got.cycle_s, ref.cycle_s)
    np.testing.assert_array_equal(got.offset_s, ref.offset_s)


def test_per_intersection_limits_apply_to_every_perturbation() -> None:
    bases = district()
    first, second = sorted(bases)[:2]
    limits = SafetySettings(
        max_cycle_change_s=30,
        intersections={first: {"min_green_s": 12}, second: {"max_cycle_s": 100}},  # type: ignore[dict-item]
    )
    current, candidates = proposals(bases, limits, 3)
    pool = PerturbationPool(candidates, current, bases, limits, seed=5, n=60)
    expected = reference_pool(candidates, current, bases, limits, 5, 60)
    assert [p for _, p in pool] == [p for _, p in expected]
    greens = pool.arrays(sorted(bases)).green_s
    assert (greens[3:, 0][greens[3:, 0] > 0] >= 12).all()
    assert all(plans[second].cycle_s <= 100 for _, plans in pool[3:])


def test_a_proposal_without_an_intersection_in_force_is_named() -> None:
    bases = district()
    limits = SafetyLimits()
    current, candidates = proposals(bases, limits, 1)
    missing = sorted(bases)[4]
    del candidates["policy"][missing]
    pool = PerturbationPool(candidates, current, bases, limits, seed=1, n=9)
    with pytest.raises(ConfigError, match=f"'policy'.*{missing}"):
        pool.arrays(sorted(bases))
    name, plans = pool[4]  # the proposals sort current, policy, webster: k = 1 is policy's
    assert name == "policy~1"
    assert missing not in plans and len(plans) == len(bases) - 1
    with pytest.raises(IndexError):
        pool[len(pool)]
    candidates["policy"]["no-such-light"] = current[sorted(bases)[0]]
    with pytest.raises(ConfigError, match="no-such-light"):
        PerturbationPool(candidates, current, bases, limits, seed=1, n=9)


def test_limits_that_admit_no_plan_refuse_the_pool() -> None:
    bases = district()
    current, candidates = proposals(bases, SafetyLimits(), 2)
    impossible = SafetyLimits(min_green_s=60, min_cycle_s=40, max_cycle_s=80)
    with pytest.raises(SafetyViolation):
        PerturbationPool(candidates, current, bases, impossible, seed=0, n=4)
    empty = PerturbationPool(candidates, current, bases, impossible, seed=0, n=0)
    assert [name for name, _ in empty] == ["current", "policy", "webster"]


def test_perturbations_keep_their_origins_mode_and_real_time_logic() -> None:
    """An adaptive proposal's perturbations are adaptive plans with its logic; actuated stay
    actuated. (The pool used to project every perturbation onto the network's base program,
    so the policy's adaptive plans came back as plans of the base's fixed mode: +60-75 %
    wait in the twin on the event days, where the policy itself was -15 %.)
    """
    from configs.timing import AdaptiveLogic
    from rl.baselines import as_mode

    bases = district()
    limits = SafetyLimits()
    order = sorted(bases)
    current = {t: IntersectionTiming.from_base(bases[t]) for t in order}
    adaptive_bases = {t: as_mode(bases[t], "adaptive") for t in order}
    actuated_bases = {t: as_mode(bases[t], "actuated") for t in order}
    logic = {
        t: AdaptiveLogic(
            green_weights=tuple(1.0 + 0.5 * i for i in range(len(bases[t].green_indices))),
            switch_margin_veh=3.0,
            downstream_weight=0.25,
        )
        for t in order
        if adaptive_bases[t].mode == "adaptive"
    }

    def proposed(base: BaseProgram, t: str) -> IntersectionTiming:
        want = [float(base.phases[i].duration_s) for i in base.green_indices]
        return project(t, Proposal(want, adaptive=logic.get(t)), base, limits)

    candidates = {
        "policy": {t: proposed(adaptive_bases[t], t) for t in order},
        "tuned": {t: proposed(actuated_bases[t], t) for t in order},
        "webster": dict(current),
    }
    pool = PerturbationPool(candidates, current, bases, limits, seed=3, n=30, mode_base=as_mode)
    seen = set()
    for name, plans in pool[3:]:
        origin = name.split("~")[0]
        seen.add(origin)
        for t, plan in plans.items():
            want = candidates[origin][t]
            assert plan.mode == want.mode, (name, t)
            assert plan.adaptive == want.adaptive, (name, t)
            if plan.mode != "fixed":
                greens = [plan.phases[i] for i in bases[t].green_indices]
                assert all(p.min_s is not None and p.max_s is not None for p in greens)
    assert seen == {"policy", "tuned", "webster"}
    assert any(plan.adaptive is not None for plan in pool[3][1].values())
    # without a way to build the base of another mode, the pool refuses to lose the mode
    with pytest.raises(ConfigError, match="'policy'.*runs adaptive.*pass mode_base"):
        PerturbationPool(candidates, current, bases, limits, seed=3, n=30)
