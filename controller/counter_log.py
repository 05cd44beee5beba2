"""The counter readings the feedback collector keeps, and windows of totals between them.

Controllers report cumulative totals (approach halting vehicle-seconds, NOx,
loop counts); :class:`CounterLog` keeps the readings seen (each cycle's
observation, the collector's own reads) and turns them into the totals of any
window (:class:`simulators.field.records.WindowTotals`), leaving out what a
restart broke. Pure logic, no I/O.
"""

from __future__ import annotations

import bisect
import logging
from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from simulators.field.records import FieldCounters, WindowTotals

__all__ = ["CounterLog", "restricted"]

logger = logging.getLogger(__name__)


class CounterLog:
    """The counter readings seen so far, in field-time order, as series without breaks.

    Readings come at irregular times (each cycle's observation, the collector's
    own reads); a window's edges fall between them, so the totals at an edge are
    interpolated linearly between the readings either side (counters are
    cumulative: the error is only how unevenly the queue grew in between). A
    reading whose field time is below the latest one (the field or every
    controller restarted) starts a new log. Per intersection (and per loop), a
    total that goes down between two readings (that controller restarted) is a
    break: a window across it leaves that intersection out.
    """

    def __init__(self, keep_s: float) -> None:
        self.keep_s = keep_s
        self._readings: list[FieldCounters] = []

    def __len__(self) -> int:
        return len(self._readings)

    def add(self, reading: FieldCounters) -> None:
        """Keep ``reading`` (replacing one at the same field time)."""
        times = [r.field_time_s for r in self._readings]
        if times and reading.field_time_s < times[-1] - 1e-9:
            logger.warning(
                "field time went back from %.0f s to %.0f s: counter readings start anew",
                times[-1],
                reading.field_time_s,
            )
            self._readings = []
            times = []
        i = bisect.bisect_left(times, reading.field_time_s - 1e-9)
        if i < len(times) and abs(times[i] - reading.field_time_s) <= 1e-9:
            self._readings[i] = reading
        else:
            self._readings.insert(i, reading)

    def prune(self, keep_from_s: float) -> None:
        """Forget readings before ``keep_from_s`` (and older than ``keep_s`` before the latest)."""
        if not self._readings:
            return
        cutoff = min(keep_from_s, self._readings[-1].field_time_s - self.keep_s)
        # keep the last reading before the cutoff: an edge at the cutoff interpolates from it
        times = [r.field_time_s for r in self._readings]
        i = max(0, bisect.bisect_right(times, cutoff) - 1)
        self._readings = self._readings[i:]

    @property
    def earliest_s(self) -> float | None:
        """Field time of the earliest reading kept."""
        return self._readings[0].field_time_s if self._readings else None

    @property
    def latest_s(self) -> float | None:
        """Field time of the latest reading."""
        return self._readings[-1].field_time_s if self._readings else None

    def _around(self, time_s: float, max_gap_s: float) -> tuple[int, int] | None:
        """Indices of the readings either side of ``time_s`` (equal when one is at it)."""
        times = [r.field_time_s for r in self._readings]
        i = bisect.bisect_left(times, time_s - 1e-9)
        if i < len(times) and abs(times[i] - time_s) <= 1e-9:
            return i, i
        if i == 0 or i == len(times) or times[i] - times[i - 1] > max_gap_s:
            return None
        return i - 1, i

    def window(self, begin_s: float, end_s: float, max_gap_s: float) -> WindowTotals | None:
        """The totals of ``[begin_s, end_s]``, or None when no readings bracket an edge.

        An edge is interpolated between the readings either side of it, at most
        ``max_gap_s`` apart. An intersection (or detector) is in the window only
        when every reading from the one at or before ``begin_s`` to the one at
        or after ``end_s`` has it and its totals never decrease.
        """
        from simulators.field.records import WindowTotals

        first = self._around(begin_s, max_gap_s)
        last = self._around(end_s, max_gap_s)
        if first is None or last is None:
            return None
        span = self._readings[first[0] : last[1] + 1]
        r0, r1 = self._readings[first[0]], self._readings[first[1]]
        q0, q1 = self._readings[last[0]], self._readings[last[1]]

        def value(
            a: Mapping[str, float], b: Mapping[str, float], ta: float, tb: float, key: str, t: float
        ) -> float:
            if tb <= ta:
                return float(a[key])
            return float(a[key]) + (float(b[key]) - float(a[key])) * (t - ta) / (tb - ta)

        def steady(series: list[Mapping[str, Any]], key: str) -> bool:
            values = [m.get(key) for m in series]
            if any(v is None for v in values):
                return False
            floats = [float(v) for v in values if v is not None]
            return all(y >= x - 1e-9 for x, y in zip(floats, floats[1:], strict=False))

        def totals(pick: Any, keys: list[str]) -> dict[str, float]:
            return {
                k: value(pick(q0), pick(q1), q0.field_time_s, q1.field_time_s, k, end_s)
                - value(pick(r0), pick(r1), r0.field_time_s, r1.field_time_s, k, begin_s)
                for k in keys
            }

        def halting(r: FieldCounters) -> Mapping[str, float]:
            return r.halting_veh_s

        def nox(r: FieldCounters) -> Mapping[str, float]:
            return r.nox_mg

        def loops(r: FieldCounters) -> Mapping[str, float]:
            return {k: float(v) for k, v in r.detector_counts.items()}

        tls = sorted(
            t
            for t in span[-1].halting_veh_s
            if steady([halting(r) for r in span], t) and steady([nox(r) for r in span], t)
        )
        dets = sorted(d for d in span[-1].detector_counts if steady([loops(r) for r in span], d))
        return WindowTotals(
            begin_s=begin_s,
            end_s=end_s,
            halting_veh_s=totals(halting, tls),
            nox_mg=totals(nox, tls),
            detector_counts={k: round(v) for k, v in totals(loops, dets).items()},
            detector_pieces=self._pieces(begin_s, end_s, first, last, dets),
        )

    def _pieces(
        self,
        begin_s: float,
        end_s: float,
        first: tuple[int, int],
        last: tuple[int, int],
        dets: list[str],
    ) -> tuple[tuple[float, Mapping[str, float]], ...]:
        """The window's loop counts between the readings inside it (one piece: none)."""
        inner = [
            r
            for r in self._readings[first[1] : last[0] + 1]
            if begin_s + 1e-9 < r.field_time_s < end_s - 1e-9
        ]
        if not inner or not dets:
            return ()

        def at(t: float, pair: tuple[int, int]) -> dict[str, float]:
            a, b = self._readings[pair[0]], self._readings[pair[1]]
            ta, tb = a.field_time_s, b.field_time_s
            share = 0.0 if tb <= ta else (t - ta) / (tb - ta)
            return {
                d: float(a.detector_counts[d])
                + (float(b.detector_counts[d]) - float(a.detector_counts[d])) * share
                for d in dets
            }

        edges = [(begin_s, at(begin_s, first))]
        edges += [(r.field_time_s, {d: float(r.detector_counts[d]) for d in dets}) for r in inner]
        edges.append((end_s, at(end_s, last)))
        return tuple(
            (t1 - t0, {d: c1[d] - c0[d] for d in dets})
            for (t0, c0), (t1, c1) in zip(edges, edges[1:], strict=False)
        )


def restricted(window: WindowTotals, keep: frozenset[str]) -> WindowTotals:
    """``window`` over the intersections in ``keep`` only (detector counts unchanged)."""
    return replace(
        window,
        halting_veh_s={t: v for t, v in window.halting_veh_s.items() if t in keep},
        nox_mg={t: v for t, v in window.nox_mg.items() if t in keep},
    )
