"""The screening search: the pool of candidate plans the surrogate ranks.

Around the proposals of a cycle (the RL policy's, Webster's) this draws seeded
random perturbations (every green and the cycle scaled a little), each
projected onto the safe set, and pools the district's demand into the
features every candidate shares. Plain data in (plans, base programs, the
safety limits, flow ratios), plain data out; :mod:`edge_accel.surrogate`
scores the pool.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import numpy.typing as npt

from configs.safety import Proposal, project_plans
from configs.timing import BaseProgram, IntersectionTiming, LimitsSource, SafetyLimits

__all__ = ["demand_features", "perturbations"]

Plans = Mapping[str, IntersectionTiming]


def demand_features(flow_ratios: Sequence[float]) -> npt.NDArray[np.float32]:
    """Demand features shared by every candidate: the district's flow ratios pooled.

    Args:
        flow_ratios: per intersection, the sum of its critical flow ratios.

    Returns:
        ``[mean, min, max]`` of the ratios (zeros without intersections).
    """
    if not flow_ratios:
        return np.zeros(3, dtype=np.float32)
    arr = np.asarray(flow_ratios, dtype=np.float32)
    return np.asarray([arr.mean(), arr.min(), arr.max()], dtype=np.float32)


def perturbations(
    candidates: Mapping[str, Plans],
    current: Plans,
    bases: Mapping[str, BaseProgram],
    limits: SafetyLimits | LimitsSource,
    *,
    seed: int,
    n: int,
) -> list[tuple[str, dict[str, IntersectionTiming]]]:
    """The proposals themselves plus ``n`` seeded random perturbations (all projected).

    Args:
        candidates: candidate name -> its plans (the cycle's proposals).
        current: the plans running now (bounds each change).
        bases: each intersection's approved base program.
        limits: the safety limits (per intersection when the settings' section).
        seed: the random seed (the simulation's base seed: the pool is reproducible).
        n: how many perturbations to draw.

    Returns:
        ``(name, plans)`` pairs: the proposals first, then ``"<origin>~<k>"``.
    """
    rng = np.random.default_rng(seed)
    pool: list[tuple[str, dict[str, IntersectionTiming]]] = [
        (name, dict(plans)) for name, plans in sorted(candidates.items())
    ]
    names = sorted(candidates)
    for k in range(n):
        origin = candidates[names[k % len(names)]]
        scale = float(rng.uniform(0.85, 1.15))
        proposals: dict[str, Proposal] = {}
        for tls_id, plan in origin.items():
            base = bases[tls_id]
            greens = [
                plan.phases[i].duration_s * float(rng.uniform(0.8, 1.2)) for i in base.green_indices
            ]
            proposals[tls_id] = Proposal(
                green_s=greens, cycle_s=plan.cycle_s * scale, offset_s=plan.offset_s
            )
        pool.append(
            (f"{names[k % len(names)]}~{k}", project_plans(proposals, bases, limits, current))
        )
    return pool
