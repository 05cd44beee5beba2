"""What the field reports: detector and measurement snapshots, active plans, trip statistics."""

from __future__ import annotations

__all__ = [
    "ActivePlan",
    "DetectorReading",
    "DetectorSnapshot",
    "FieldCounters",
    "IntersectionMeasurement",
    "MeasurementSnapshot",
    "TripStatistics",
    "WindowTotals",
    "parse_tripinfo",
]

import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from configs.errors import SimulationError
from configs.timing import IntersectionTiming


@dataclass(frozen=True)
class DetectorReading:
    """One induction loop as a controller reports it."""

    detector_id: str
    lane_id: str
    tls_id: str | None
    count: int
    """Vehicles counted since the field started (cumulative)."""
    interval_count: int
    """Vehicles counted in the last completed interval."""
    occupancy: float
    """Fraction of the last completed interval the loop was occupied (0..1)."""


@dataclass(frozen=True)
class DetectorSnapshot:
    """Every loop at one field time."""

    field_time_s: float
    interval_s: int
    interval_end_s: float | None
    """End of the last completed interval (None before the first one completes)."""
    readings: dict[str, DetectorReading]


@dataclass(frozen=True)
class IntersectionMeasurement:
    """What one intersection measured over the last completed interval."""

    tls_id: str
    mean_wait_s: float
    """Halting vehicle-seconds on the approaches divided by vehicles seen there."""
    nox_mg: float
    """NOx emitted on the approach edges, in mg."""
    vehicles: int
    """Distinct vehicles seen on the approaches."""
    halting_veh_s: float
    """Sum over steps of halting vehicles (speed < 0.1 m/s) times step length."""


@dataclass(frozen=True)
class MeasurementSnapshot:
    """Per-intersection measurements of the last completed interval."""

    field_time_s: float
    interval_begin_s: float | None
    interval_end_s: float | None
    intersections: dict[str, IntersectionMeasurement]

    @property
    def total_nox_mg(self) -> float:
        """NOx over all intersections' approaches."""
        return sum(m.nox_mg for m in self.intersections.values())

    @property
    def mean_wait_s(self) -> float:
        """Vehicle-weighted mean wait over all intersections."""
        vehicles = sum(m.vehicles for m in self.intersections.values())
        halting = sum(m.halting_veh_s for m in self.intersections.values())
        return halting / vehicles if vehicles else 0.0


@dataclass(frozen=True)
class FieldCounters:
    """Cumulative roadside totals since the field started, at one field time.

    What a controller's cabinet can keep for ever and report at any moment (like
    a loop's cumulative count): a window's totals are the difference of two
    readings (:meth:`window_since`), whenever the readings were taken.

    Attributes:
        field_time_s: when the counters were read.
        halting_veh_s: tls id -> halting vehicle-seconds (speed < 0.1 m/s) on its
            approach lanes since the start.
        nox_mg: tls id -> NOx emitted on its approach lanes since the start (mg).
        detector_counts: detector id -> vehicles counted since the start (true
            counts; a faulty loop's report is the events' business).
    """

    field_time_s: float
    halting_veh_s: Mapping[str, float]
    nox_mg: Mapping[str, float]
    detector_counts: Mapping[str, int]

    def window_since(self, earlier: FieldCounters) -> WindowTotals:
        """The totals of ``[earlier.field_time_s, self.field_time_s]``."""
        if earlier.field_time_s > self.field_time_s + 1e-9:
            raise SimulationError(
                f"counters at t={earlier.field_time_s:g} s are later than "
                f"t={self.field_time_s:g} s; a window runs forward"
            )
        return WindowTotals(
            begin_s=earlier.field_time_s,
            end_s=self.field_time_s,
            halting_veh_s={
                t: v - earlier.halting_veh_s.get(t, 0.0) for t, v in self.halting_veh_s.items()
            },
            nox_mg={t: v - earlier.nox_mg.get(t, 0.0) for t, v in self.nox_mg.items()},
            detector_counts={
                d: v - earlier.detector_counts.get(d, 0) for d, v in self.detector_counts.items()
            },
        )


@dataclass(frozen=True)
class WindowTotals:
    """What the roadside equipment measured over one window of field time.

    The field-side quantity a measured delta compares: the halting
    vehicle-seconds on the signalised approaches (the queue the plans act on) and
    their NOx, summed over the window; the twin predicts the same sums from its
    runs' per-intersection numbers.
    """

    begin_s: float
    end_s: float
    halting_veh_s: Mapping[str, float]
    nox_mg: Mapping[str, float]
    detector_counts: Mapping[str, int]
    #: the loop counts cut at the readings inside the window: ``(seconds, counts)``
    #: per piece, in time order, summing to ``detector_counts`` (empty: one piece).
    #: A loop that dies part-way through shows as a normal piece and dead ones.
    detector_pieces: tuple[tuple[float, Mapping[str, float]], ...] = ()

    @property
    def duration_s(self) -> float:
        """Length of the window (s)."""
        return self.end_s - self.begin_s

    def wait_veh_s(self, only: frozenset[str] | None = None) -> float:
        """Halting vehicle-seconds over the intersections (``only``: those)."""
        return sum(v for t, v in self.halting_veh_s.items() if only is None or t in only)

    def total_nox_mg(self, only: frozenset[str] | None = None) -> float:
        """NOx over the intersections' approaches (``only``: those), mg."""
        return sum(v for t, v in self.nox_mg.items() if only is None or t in only)


@dataclass(frozen=True)
class ActivePlan:
    """The program a traffic light is running."""

    tls_id: str
    program_id: str
    timing: IntersectionTiming
    applied_at_s: float | None
    """Field time the plan took effect (None: the network's base program)."""
    externally_controlled: bool = False
    """True once :meth:`FieldEmulator.set_signal_state` drives the light directly
    (evaluation reference controllers only): SUMO then runs its ``online``
    program, ``timing`` is the plan that ran before, and ``applied_at_s`` is
    when the direct control began. The next applied plan ends it."""


@dataclass(frozen=True)
class TripStatistics:
    """Ground truth over every vehicle (evaluation only; a real city has none).

    Delay is ``timeLoss + departDelay``. Vehicles still driving at the end and
    vehicles that never entered the network are included, not dropped (a
    never-inserted vehicle's delay is its wait for insertion). Trip time is over
    the vehicles that departed (a vehicle still driving counts up to the end):
    one that never departed has no trip.
    """

    vehicles: int
    arrived: int
    running: int
    undeparted: int
    mean_delay_s: float
    """Mean ``timeLoss + departDelay`` over every vehicle."""
    mean_waiting_s: float
    """Mean waiting time (speed below 0.1 m/s) over every vehicle."""
    mean_trip_s: float
    """Mean trip duration over the vehicles that departed."""
    total_delay_s: float
    total_nox_mg: float
    """NOx of every vehicle's emissions device, in mg."""

    @property
    def departed(self) -> int:
        """Vehicles that entered the network (arrived or still driving)."""
        return self.vehicles - self.undeparted


def parse_tripinfo(path: Path) -> TripStatistics:
    """Summarise a tripinfo file written with ``write-unfinished`` and ``write-undeparted``.

    Never-departed vehicles appear with ``depart="-1"``, their wait for
    insertion as ``departDelay`` and ``duration="0"``: they count towards delay
    and waiting, not towards trip time.
    """
    vehicles = arrived = undeparted = 0
    delay = waiting = trip = nox = 0.0
    try:
        for _, elem in ET.iterparse(path, events=("end",)):
            if elem.tag == "emissions":
                nox += float(elem.get("NOx_abs", "0"))
            elif elem.tag == "tripinfo":
                vehicles += 1
                if elem.get("depart", "-1").startswith("-"):
                    undeparted += 1
                else:
                    trip += float(elem.get("duration", "0"))
                    if not elem.get("arrival", "-1").startswith("-"):
                        arrived += 1
                delay += float(elem.get("timeLoss", "0")) + float(elem.get("departDelay", "0"))
                waiting += float(elem.get("waitingTime", "0"))
                elem.clear()
    except (ET.ParseError, ValueError, OSError) as e:
        raise SimulationError(f"field tripinfo output {path} is unreadable: {e}") from e
    n = max(1, vehicles)
    return TripStatistics(
        vehicles=vehicles,
        arrived=arrived,
        running=vehicles - arrived - undeparted,
        undeparted=undeparted,
        mean_delay_s=delay / n,
        mean_waiting_s=waiting / n,
        mean_trip_s=trip / max(1, vehicles - undeparted),
        total_delay_s=delay,
        total_nox_mg=nox,
    )
