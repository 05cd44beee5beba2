"""The batched projection gives exactly the plans configs.safety.project gives."""

from __future__ import annotations

from functools import cache

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from configs.errors import SafetyViolation
from configs.safety import Proposal, project
from configs.timing import BaseProgram, IntersectionTiming, SafetyLimits
from edge_accel.projection import BatchProjector
from simulators.netbuild import district_paths
from simulators.network import load_network


@cache
def district() -> dict[str, BaseProgram]:
    paths = district_paths()
    return load_network(paths["net"], paths["det"]).base_programs()


@st.composite
def limits(draw: st.DrawFn) -> SafetyLimits:
    min_cycle = draw(st.integers(30, 70))
    return SafetyLimits(
        min_green_s=draw(st.integers(4, 8)),
        min_yellow_s=draw(st.integers(3, 4)),
        min_red_clearance_s=draw(st.integers(0, 2)),
        ped_walk_s=draw(st.integers(4, 6)),
        ped_clearance_s=draw(st.integers(4, 8)),
        min_cycle_s=min_cycle,
        max_cycle_s=draw(st.integers(min_cycle + 80, 200)),
        max_cycle_change_s=draw(st.integers(0, 30)),
        max_split_change_s=draw(st.integers(0, 20)),
    )


def _wanted(rng: np.random.Generator, n: int, g: int) -> np.ndarray:
    """Greens of every kind: spread, negative, tied, and on half seconds (rounding ties)."""
    x = rng.uniform(-10.0, 90.0, size=(n, g))
    halves = rng.random((n, g)) < 0.3
    x[halves] = np.round(x[halves]) + 0.5
    ties = rng.random(n) < 0.2
    x[ties] = x[ties, :1]
    return x


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lim=limits(), seed=st.integers(0, 2**32 - 1), bounded=st.booleans())
def test_every_candidate_projects_to_the_scalar_projection(
    lim: SafetyLimits, seed: int, bounded: bool
) -> None:
    bases = district()
    order = sorted(bases)
    rng = np.random.default_rng(seed)
    current: dict[str, IntersectionTiming] | None = None
    if bounded:  # a plan in force, itself a projection, bounds the change
        current = {}
        for t in order:
            g = len(bases[t].green_indices)
            want = rng.uniform(5, 60, size=g).tolist()
            current[t] = project(t, Proposal(want, float(rng.uniform(40, 160))), bases[t], lim)
    try:
        projector = BatchProjector(bases, lim, current, order)
    except SafetyViolation:
        with pytest.raises(SafetyViolation):
            for t in order:
                project(t, Proposal([10.0] * len(bases[t].green_indices)), bases[t], lim, None)
                if current is not None:
                    project(t, Proposal([10.0] * len(bases[t].green_indices)), bases[t], lim,
                            current[t])  # fmt: skip
        return
    n, g = 24, max(projector.greens)
    green = np.zeros((n, len(order), g))
    for k in range(len(order)):
        green[:, k, : projector.greens[k]] = _wanted(rng, n, projector.greens[k])
    cycle = rng.uniform(10.0, 260.0, size=(n, len(order)))
    halves = rng.random((n, len(order))) < 0.2
    cycle[halves] = np.round(cycle[halves]) + 0.5
    offsets = rng.integers(0, 300, size=(n, len(order)))
    batch = projector.project(torch.from_numpy(green), torch.from_numpy(cycle))
    for c in range(n):
        wanted_offsets = {t: float(offsets[c, k]) for k, t in enumerate(order)}
        got = projector.plans(batch, c, wanted_offsets)
        for k, t in enumerate(order):
            proposal = Proposal(
                green[c, k, : projector.greens[k]].tolist(),
                float(cycle[c, k]),
                float(offsets[c, k]),
            )
            expected = project(t, proposal, bases[t], lim, None if current is None else current[t])
            assert got[t] == expected, (t, c)


def test_limits_that_admit_no_plan_are_refused_when_the_projector_is_built() -> None:
    bases = district()
    tight = SafetyLimits(min_green_s=60, min_cycle_s=40, max_cycle_s=100)
    with pytest.raises(SafetyViolation, match="no safe cycle"):
        BatchProjector(bases, tight, None, sorted(bases))


def test_many_candidates_project_in_one_call() -> None:
    bases = district()
    order = sorted(bases)
    projector = BatchProjector(bases, SafetyLimits(), None, order)
    n, g = 5000, max(projector.greens)
    rng = np.random.default_rng(0)
    batch = projector.project(
        torch.from_numpy(rng.uniform(5, 60, size=(n, len(order), g))),
        torch.from_numpy(rng.uniform(40, 160, size=(n, len(order)))),
    )
    assert batch.green_s.shape == (n, len(order), g)
    fixed = torch.tensor([projector._bounds[t].fixed_total for t in order])  # noqa: SLF001
    # every candidate's greens fill its cycle exactly, within the safe cycle range
    assert torch.equal(batch.green_s.sum(-1) + fixed, batch.cycle_s)
    assert bool((batch.cycle_s >= 40).all()) and bool((batch.cycle_s <= 150).all())
