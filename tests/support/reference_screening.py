"""The screening pool as the daemon built it before it was batched (the reference).

One perturbation at a time, one ``numpy`` draw at a time, each plan projected
by :func:`configs.safety.project_plans` and built as a model.
:class:`edge_accel.screening.PerturbationPool` must give the same pool
(tests/unit/test_perturbation_pool.py), and ``bench/screen.py`` measures the
daemon's screening against this design.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from configs.safety import Proposal, project_plans
from configs.timing import BaseProgram, IntersectionTiming, LimitsSource, SafetyLimits

Plans = Mapping[str, IntersectionTiming]


def reference_pool(
    candidates: Mapping[str, Plans],
    current: Plans,
    bases: Mapping[str, BaseProgram],
    limits: SafetyLimits | LimitsSource,
    seed: int,
    n: int,
) -> list[tuple[str, dict[str, IntersectionTiming]]]:
    """The proposals, then ``"<origin>~<k>"`` for ``k < n``, each projected plan by plan."""
    rng = np.random.default_rng(seed)
    pool = [(name, dict(plans)) for name, plans in sorted(candidates.items())]
    names = sorted(candidates)
    for k in range(n):
        origin = candidates[names[k % len(names)]]
        scale = float(rng.uniform(0.85, 1.15))
        proposals = {}
        for tls_id, plan in origin.items():
            greens = [
                plan.phases[i].duration_s * float(rng.uniform(0.8, 1.2))
                for i in bases[tls_id].green_indices
            ]
            proposals[tls_id] = Proposal(greens, plan.cycle_s * scale, plan.offset_s)
        pool.append(
            (f"{names[k % len(names)]}~{k}", project_plans(proposals, bases, limits, current))
        )
    return pool
