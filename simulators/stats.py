"""Confidence intervals over seeds: the one home of the Student-t interval.

The twin's paired changes (:func:`simulators.twin.paired_change`) and the
closed-loop evaluation's per-scheme summaries (:mod:`rl.evaluate`) both report a
mean over seeds with a two-sided Student-t interval; both compute it here.
"""

from __future__ import annotations

__all__ = ["relative_change", "t_interval"]

import math
import statistics
from collections.abc import Sequence

from scipy import stats

from configs.errors import SimulationError


def t_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float, float]:
    """Mean of ``values`` and its two-sided Student-t confidence interval.

    Args:
        values: one value per seed (independent samples).
        level: two-sided confidence level, in (0, 1).

    Returns:
        ``(mean, low, high)``. With a single value the interval collapses to the
        point (no spread is known).

    Raises:
        SimulationError: ``values`` is empty, or ``level`` is not in (0, 1).
    """
    if not values:
        raise SimulationError("a confidence interval needs at least one value")
    if not 0.0 < level < 1.0:
        raise SimulationError(f"confidence level must be in (0, 1), got {level}")
    mean = math.fsum(values) / len(values)
    if len(values) < 2:
        return mean, mean, mean
    sd = statistics.stdev(values)
    half = float(stats.t.ppf((1.0 + level) / 2.0, len(values) - 1)) * sd / math.sqrt(len(values))
    return mean, mean - half, mean + half


def relative_change(current: float, candidate: float) -> float:
    """``(candidate - current) / current`` as a fraction; from nothing to something is +1.

    A current value of 0 (or below) gives 0.0 when the candidate is no higher and
    1.0 (+100 %) when it is higher, so a seed where nothing happened under the
    current plan neither divides by zero nor hides a candidate's harm.
    """
    if current > 0:
        return (candidate - current) / current
    return 0.0 if candidate <= current else 1.0
