"""Loop counts a traffic engineer would not believe: dead loops found and bridged.

A loop that dies (or a cable cut, a controller that stops counting one input)
reports zero, or almost zero, while traffic goes on. Fed to the demand
estimation as it is, it removes the routes over its lane: on the kuehne event
day with a third of its loops dead, the twin's demand fell to 55-70 % of what
the healthy windows before showed, and the counterfactual estimate of a
deployment whose after window lay in the fault was +75 % where the truth was
-39 %.

:func:`repair_counts` compares each loop's count over an interval with what a
**reference** rate of the same loop predicts (its own recent rate, or its rate
in the neighbouring window), scaled by the **trend** of the whole network (the
median, over the loops that should have counted something, of counted over
expected: a median, so that up to half the loops may be wrong). A loop is
flagged when it counted less than ``ratio`` of its expectation *and* so few
vehicles are implausible for a Poisson count with that mean (``p_max``); its
count is then replaced by the expectation. Loops expected to count fewer than
``min_expected`` vehicles are never judged (a quiet side street may count
zero). Nothing is flagged without a reference.

What it cannot see: a loop stuck at a plausible value, a noisy loop, a loop
dead in the reference as well, and a lane that really emptied (an edge closed
by an incident looks like a dead loop; bridging it keeps the twin's demand
where the traffic was before the closure, which the twin, not told of the
closure, would assume anyway).

Plain Python + scipy; no SUMO.
"""

from __future__ import annotations

__all__ = ["CountRepair", "LoopHealth", "repair_counts"]

import math
import statistics
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from scipy.stats import poisson

from configs.errors import ConfigError
from simulators.demand import snapshot_digest


@dataclass(frozen=True)
class CountRepair:
    """The counts to use and what was changed.

    Attributes:
        counts: detector id -> count to use (repaired where flagged).
        repaired: detector id -> ``(counted, used)`` for each flagged loop.
        trend: the network's counted / expected ratio (1.0 without a reference).
        runs: detector id -> ``(counted, expected)`` summed over the loop's current
            run of intervals below ``ratio`` of its expectation (the evidence
            :class:`LoopHealth` carries to the next interval).
    """

    counts: Mapping[str, float]
    repaired: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    trend: float = 1.0
    runs: Mapping[str, tuple[float, float]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON: ``{detector: [counted, used]}`` and the trend (what the ledger records)."""
        return {
            "repaired": {d: [c, u] for d, (c, u) in sorted(self.repaired.items())},
            "trend": round(self.trend, 6),
        }

    def record_in(self, snapshot: Mapping[str, Any]) -> dict[str, Any]:
        """``snapshot`` with this repair under ``detector_repairs`` and a new digest.

        A demand snapshot of the repaired counts records what was bridged, so the
        ledger and an auditor see it; without a repaired loop it is returned as is.
        """
        if not self.repaired:
            return dict(snapshot)
        recorded = {k: v for k, v in snapshot.items() if k != "digest"}
        recorded["detector_repairs"] = self.to_dict()
        recorded["digest"] = snapshot_digest(recorded)
        return recorded


_TREND_MIN: Final = 3.0
"""Loops expected to count at least this many vehicles set the network's trend."""


def _trend(counts: Mapping[str, float], expected: Mapping[str, float], ratio: float) -> float:
    """Median counted / expected, then again over the loops not far below the first median."""
    ratios = {d: float(counts[d]) / e for d, e in expected.items() if e >= _TREND_MIN}
    if not ratios:
        return math.nan
    first = statistics.median(ratios.values())
    plausible = [r for r in ratios.values() if r >= ratio * first]
    return statistics.median(plausible) if plausible and first > 0 else first


def repair_counts(
    counts: Mapping[str, float],
    interval_s: float,
    reference_rates: Mapping[str, float],
    *,
    runs: Mapping[str, tuple[float, float]] | None = None,
    ratio: float = 0.25,
    p_max: float = 1e-3,
    min_expected: float = 8.0,
) -> CountRepair:
    """Bridge the loops whose count the reference says cannot be true.

    Args:
        counts: detector id -> vehicles counted in the interval.
        interval_s: the interval's length (s).
        reference_rates: detector id -> the loop's expected rate (veh/s) before
            the network's trend; loops without one are never judged.
        runs: the evidence of earlier intervals (:attr:`CountRepair.runs` of the
            previous call): a loop low for several intervals in a row is judged
            on their sums, so a quiet loop that died is found after a few.
        ratio: a flagged loop counted less than this share of its expectation.
        p_max: and fewer vehicles than that have at most this probability
            (Poisson with the expectation as mean).
        min_expected: loops expected to count fewer vehicles (over their run)
            are not judged.

    Raises:
        ConfigError: a bad interval, threshold, count or rate.
    """
    if not (math.isfinite(interval_s) and interval_s > 0):
        raise ConfigError(f"detector interval must be positive, got {interval_s} s")
    if not 0.0 < ratio < 1.0 or not 0.0 < p_max < 1.0 or not min_expected > 0:
        raise ConfigError(
            f"repair thresholds out of range: ratio {ratio} and p_max {p_max} in (0, 1), "
            f"min_expected {min_expected} > 0"
        )
    for name, values in (("count", counts), ("reference rate", reference_rates)):
        for det, v in values.items():
            if not (math.isfinite(v) and v >= 0):
                raise ConfigError(f"detector {det!r}: {name} {v} must be a finite number >= 0")
    expected = {
        d: float(reference_rates[d]) * interval_s
        for d in counts
        if d in reference_rates and reference_rates[d] > 0
    }
    trend = _trend(counts, expected, ratio)
    if math.isnan(trend):
        return CountRepair(counts=dict(counts))
    if trend <= 0:
        # most loops counted nothing: a quiet night or a network-wide outage;
        # neither is a single loop to bridge
        return CountRepair(counts=dict(counts), trend=trend)
    earlier = runs or {}
    repaired: dict[str, tuple[float, float]] = {}
    low: dict[str, tuple[float, float]] = {}
    out = {d: float(c) for d, c in counts.items()}
    for d, e in expected.items():
        mean = e * trend
        counted = float(counts[d])
        if counted >= ratio * mean:
            continue  # the loop counts: its run of low intervals ends
        before_c, before_m = earlier.get(d, (0.0, 0.0))
        run_c, run_m = before_c + counted, before_m + mean
        low[d] = (run_c, run_m)
        if run_m >= min_expected and float(poisson.cdf(math.floor(run_c), run_m)) <= p_max:
            used = round(mean, 3)
            repaired[d] = (counted, used)
            out[d] = used
    return CountRepair(counts=out, repaired=repaired, trend=trend, runs=low)


class LoopHealth:
    """Each loop's recent rate, and every new interval checked against it (the daemon's, per cycle).

    The reference of a loop is an exponentially weighted mean of the counts
    *used* for it (a bridged loop keeps its bridged rate, so a loop that stays
    dead stays bridged, with the network's trend; a loop low but not yet
    judged keeps its reference). A new daemon starts without
    a reference: its first interval is not judged.

    Args:
        weight: weight of the newest interval in the mean (0, 1].
    """

    def __init__(self, weight: float = 0.5) -> None:
        if not 0.0 < weight <= 1.0:
            raise ConfigError(f"loop health weight must be in (0, 1], got {weight}")
        self.weight = weight
        self.rates: dict[str, float] = {}
        self.runs: dict[str, tuple[float, float]] = {}

    def check(self, counts: Mapping[str, float], interval_s: float) -> CountRepair:
        """Repair ``counts`` against the loops' recent rates, then fold them in.

        Raises:
            ConfigError: as :func:`repair_counts`.
        """
        repair = repair_counts(counts, interval_s, self.rates, runs=self.runs)
        self.runs = dict(repair.runs)
        w = self.weight
        for det, count in repair.counts.items():
            if det in repair.runs and det not in repair.repaired:
                continue  # low but not yet judged: its own rate stays the reference
            rate = float(count) / interval_s
            old = self.rates.get(det)
            self.rates[det] = rate if old is None else (1.0 - w) * old + w * rate
        return repair
