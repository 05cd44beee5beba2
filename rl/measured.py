"""The measured delta: what a deployment changed in the field, defined once.

The twin predicts the change of the district's mean wait per vehicle and of its
total NOx. The field's measured change is defined the same way, from each
controller's interval measurements before and after activation:

* wait: the pooled mean wait over the intersections measured both times,
  ``mean(after) / mean(before) - 1`` (not the mean of per-intersection ratios,
  which lets a quiet intersection with a tiny wait dominate);
* NOx: ``sum(after) / sum(before) - 1``.

Both the ledger's ``measured_delta`` record (:mod:`controller.feedback`) and the
feedback store's deployment verdict (:class:`rl.feedback.FeedbackStore`) use
:func:`measure_delta`, so the audit trail and the RL reward agree.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

__all__ = ["FieldChange", "measure_delta", "relative_change"]

#: below this a "before" value is taken as zero (no change can be stated)
_EPSILON = 1e-9


def relative_change(after: float, before: float) -> float:
    """``after / before - 1`` (negative = lower), 0 when ``before`` is (nearly) zero."""
    return after / before - 1.0 if before > _EPSILON else 0.0


@dataclass(frozen=True)
class FieldChange:
    """The field's measured change over a set of intersections (negative = better).

    Attributes:
        intersections: how many intersections were measured before and after.
        wait_before_s: pooled mean wait per vehicle before, seconds.
        wait_after_s: pooled mean wait per vehicle after, seconds.
        nox_before_mg: total NOx of the interval before, mg.
        nox_after_mg: total NOx of the interval after, mg.
    """

    intersections: int
    wait_before_s: float
    wait_after_s: float
    nox_before_mg: float
    nox_after_mg: float

    @property
    def wait_change(self) -> float:
        """Relative change of the pooled mean wait (a fraction; negative = shorter)."""
        return relative_change(self.wait_after_s, self.wait_before_s)

    @property
    def nox_change(self) -> float:
        """Relative change of total NOx (a fraction; negative = less)."""
        return relative_change(self.nox_after_mg, self.nox_before_mg)


def measure_delta(
    before: Mapping[str, tuple[float, float]],
    after: Mapping[str, tuple[float, float]],
    only: Iterable[str] | None = None,
) -> FieldChange | None:
    """The measured change between two intervals, over the intersections in both.

    Args:
        before: tls id -> (mean wait s, NOx mg) of the interval before activation.
        after: tls id -> (mean wait s, NOx mg) of the interval after activation.
        only: restrict to these intersections (e.g. those the deployment named).

    Returns:
        The change, or None when no intersection was measured both times.
    """
    common = set(before) & set(after)
    if only is not None:
        common &= set(only)
    names = sorted(common)
    if not names:
        return None
    n = len(names)
    return FieldChange(
        intersections=n,
        wait_before_s=sum(before[t][0] for t in names) / n,
        wait_after_s=sum(after[t][0] for t in names) / n,
        nox_before_mg=sum(before[t][1] for t in names),
        nox_after_mg=sum(after[t][1] for t in names),
    )
