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
vehicles are implausible (``p_max``); its count is then replaced by the
expectation. Implausible is judged against the reference's own noise where
the caller says how many seconds of counting the reference rate stands on
(``reference_exposure_s``): then the two counts are compared, the new one
given their sum being binomial, so a reference of one interval of 12 vehicles
does not make a count of 2 a dead loop (a Poisson test against a mean of 12
would); without it, the count is Poisson with the expectation as mean.
Loops expected to count fewer than ``min_expected`` vehicles are never
judged (a quiet side street may count zero). Nothing is flagged without a reference.

What it cannot see: a loop stuck at a plausible value, a noisy loop, a loop
dead in the reference as well, and a lane that really emptied (an edge closed
by an incident looks like a dead loop; bridging it keeps the twin's demand
where the traffic was before the closure, which the twin, not told of the
closure, would assume anyway).

Plain Python + scipy; no SUMO.
"""

from __future__ import annotations

__all__ = ["CountRepair", "LoopHealth", "repair_counts", "repair_pieces"]

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from scipy.special import betainc
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


def _p_low(counted: float, mean: float, reference: float | None) -> float:
    """The probability of counting ``counted`` or fewer where ``mean`` was expected.

    With ``reference`` (the vehicles the expectation's rate was counted from,
    before the trend) the two counts are Poisson with one rate: given their
    sum, the new count is binomial with ``p = mean / (mean + reference)``,
    whose lower tail is a regularised incomplete beta function (which also
    takes the fractional reference of a running mean). Without it, Poisson.
    """
    k = math.floor(counted)
    if reference is None:
        return float(poisson.cdf(k, mean))
    p = mean / (mean + reference)
    # P(X <= k), X ~ Bin(n, p), n = counted + reference: I_{1-p}(n - k, k + 1)
    return float(betainc(reference + (counted - k), k + 1, 1.0 - p))


def repair_counts(
    counts: Mapping[str, float],
    interval_s: float,
    reference_rates: Mapping[str, float],
    *,
    runs: Mapping[str, tuple[float, float]] | None = None,
    reference_exposure_s: Mapping[str, float] | None = None,
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
        reference_exposure_s: detector id -> the seconds of counting its
            reference rate stands on (the other window's length; for a running
            mean, :attr:`LoopHealth.exposure_s`). A loop listed is judged by a
            binomial test of its count against the reference count; one not
            listed (or None) by a Poisson test, as if its rate were known exactly.
        ratio: a flagged loop counted less than this share of its expectation.
        p_max: and fewer vehicles than that have at most this probability.
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
    exposure = dict(reference_exposure_s or {})
    for det, v in exposure.items():
        if not (math.isfinite(v) and v > 0):
            raise ConfigError(f"detector {det!r}: reference exposure {v} s must be positive")
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
        reference = reference_rates[d] * exposure[d] if d in exposure else None
        if run_m >= min_expected and _p_low(run_c, run_m, reference) <= p_max:
            used = round(mean, 3)
            repaired[d] = (counted, used)
            out[d] = used
    return CountRepair(counts=out, repaired=repaired, trend=trend, runs=low)


def _merged(
    pieces: Sequence[tuple[float, Mapping[str, float]]],
) -> list[tuple[float, dict[str, float]]]:
    """The pieces, each shorter than a quarter of the longest joined to the next (or previous).

    A window's edges fall between readings, so its first and last pieces can
    last seconds: too short to expect anything of a loop or to set a trend.

    Raises:
        ConfigError: a piece without a positive length.
    """
    for seconds, _ in pieces:
        if not (math.isfinite(seconds) and seconds > 0):
            raise ConfigError(f"a window piece must last a positive time, got {seconds} s")
    if not pieces:
        return []
    shortest = 0.25 * max(seconds for seconds, _ in pieces)
    out: list[tuple[float, dict[str, float]]] = []
    carry: tuple[float, dict[str, float]] | None = None
    for seconds, counts in pieces:
        now = (seconds, {d: float(c) for d, c in counts.items()})
        if carry is not None:
            now = _join(carry, now)
            carry = None
        if now[0] < shortest:
            carry = now
        else:
            out.append(now)
    if carry is not None:
        out[-1:] = [_join(out[-1], carry)] if out else [carry]
    return out


def _join(
    a: tuple[float, dict[str, float]], b: tuple[float, dict[str, float]]
) -> tuple[float, dict[str, float]]:
    counts = dict(a[1])
    for d, c in b[1].items():
        counts[d] = counts.get(d, 0.0) + c
    return a[0] + b[0], counts


def repair_pieces(
    pieces: Sequence[tuple[float, Mapping[str, float]]],
    reference_rates: Mapping[str, float],
    *,
    reference_exposure_s: Mapping[str, float] | None = None,
) -> CountRepair:
    """Bridge the loops of a window cut into pieces (the readings inside it).

    A loop that dies part-way through a window still counts a share of its
    rate over the whole window (on the kuehne fault day 28 % over a 600 s
    window, above the quarter :func:`repair_counts` asks for), but nothing in
    the pieces after its death. Each piece is checked in time order against
    the reference, a run of low pieces on its sums, and once a run is judged
    dead all its pieces are bridged with their expectations.

    Returns:
        The window's counts (sums over the pieces; a bridged loop's sum of its
        counted and bridged pieces), ``repaired`` as ``(counted, used)`` over
        the window, and the duration-weighted mean trend.

    Raises:
        ConfigError: as :func:`repair_counts`, or a piece without a positive length.
    """
    totals: dict[str, float] = {}
    used: dict[str, float] = {}
    bridged: set[str] = set()
    run_pieces: dict[str, list[tuple[float, float]]] = {}  # the current run's (counted, mean)
    runs: Mapping[str, tuple[float, float]] = {}
    trend_s = length_s = 0.0
    for seconds, counts in _merged(pieces):
        piece = repair_counts(
            counts, seconds, reference_rates, runs=runs, reference_exposure_s=reference_exposure_s
        )
        for d, c in counts.items():
            totals[d] = totals.get(d, 0.0) + float(c)
            used[d] = used.get(d, 0.0) + float(c)
        for d in list(run_pieces):
            if d not in piece.runs:
                del run_pieces[d]  # the loop counted again: its run ended
        for d, (run_c, run_m) in piece.runs.items():
            before_c, before_m = runs.get(d, (0.0, 0.0))
            run_pieces.setdefault(d, []).append((run_c - before_c, run_m - before_m))
            if d in piece.repaired:
                # the whole run is dead: bridge its pieces not bridged yet
                used[d] += sum(m - c for c, m in run_pieces[d])
                run_pieces[d] = []
                bridged.add(d)
        runs = piece.runs
        if math.isfinite(piece.trend):
            trend_s += piece.trend * seconds
            length_s += seconds
    repaired = {d: (totals[d], round(used[d], 3)) for d in sorted(bridged)}
    return CountRepair(
        counts={d: (repaired[d][1] if d in bridged else totals[d]) for d in totals},
        repaired=repaired,
        trend=trend_s / length_s if length_s > 0 else 1.0,
    )


class LoopHealth:
    """Each loop's recent rate, and every new interval checked against it (the daemon's, per cycle).

    The reference of a loop is an exponentially weighted mean of the counts
    *used* for it (a bridged loop keeps its bridged rate, so a loop that stays
    dead stays bridged, with the network's trend; a loop low but not yet
    judged keeps its reference). A new daemon starts without
    a reference: its first interval is not judged. Each loop's reference also
    carries how many seconds of counting it stands on (:attr:`exposure_s`),
    so that a reference of one interval is trusted less than one of many.

    Args:
        weight: weight of the newest interval in the mean (0, 1].
    """

    def __init__(self, weight: float = 0.5) -> None:
        if not 0.0 < weight <= 1.0:
            raise ConfigError(f"loop health weight must be in (0, 1], got {weight}")
        self.weight = weight
        self.rates: dict[str, float] = {}
        self.runs: dict[str, tuple[float, float]] = {}
        # sum of w_i^2 / T_i over the intervals in each mean: var(rate) = rate * it
        self._spread: dict[str, float] = {}

    @property
    def exposure_s(self) -> dict[str, float]:
        """Detector id -> the seconds of counting its reference rate is worth.

        A mean of rates with weights ``w_i`` over intervals ``T_i`` has the
        Poisson variance of one count over ``1 / sum(w_i^2 / T_i)`` seconds:
        one interval's length after the first, about three intervals' later
        (weight 0.5).
        """
        return {d: 1.0 / v for d, v in self._spread.items()}

    def check(self, counts: Mapping[str, float], interval_s: float) -> CountRepair:
        """Repair ``counts`` against the loops' recent rates, then fold them in.

        Raises:
            ConfigError: as :func:`repair_counts`.
        """
        repair = repair_counts(
            counts, interval_s, self.rates, runs=self.runs, reference_exposure_s=self.exposure_s
        )
        self.runs = dict(repair.runs)
        w = self.weight
        for det, count in repair.counts.items():
            if det in repair.runs and det not in repair.repaired:
                continue  # low but not yet judged: its own rate stays the reference
            rate = float(count) / interval_s
            old = self.rates.get(det)
            if old is None:
                self.rates[det] = rate
                self._spread[det] = 1.0 / interval_s
            else:
                self.rates[det] = (1.0 - w) * old + w * rate
                self._spread[det] = (1.0 - w) ** 2 * self._spread[det] + w * w / interval_s
        return repair
