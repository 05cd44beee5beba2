"""Training and evaluation run on the field emulator, seen as plan intervals.

:class:`FieldSession` wraps :class:`simulators.field.FieldEmulator` (the same
SUMO field the daemon controls in the demo) behind the small
:class:`FieldSimulation` protocol that :mod:`rl` needs: apply a plan now, run to
the end of a plan interval and read what the detectors and sensors measured in
it, read lane queues and set signal states for the max-pressure reference
controller (through a per-step hook), and finish with ground-truth trip
statistics from the field's own tripinfo parse.

Plan intervals are the field's measurement intervals: the field is started
with ``interval_s`` = the plan interval, its intervals end at multiples of it in
field time, and :meth:`FieldSession.run_until` must end on that grid
(:meth:`FieldSession.next_boundary_s`); :meth:`FieldSession.advance` runs to any
time without measuring. Detector counts are what the controllers report to the
daemon: each vehicle counted once when it reaches a loop.

libsumo (the default backend) holds one simulation per process; the vectorised
trainer puts further simulations in worker processes.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from configs.errors import ConfigError, SimulationError
from configs.timing import IntersectionTiming
from simulators.field import Backend, FieldConfig, FieldEmulator, TripStatistics
from simulators.network import NetworkModel

__all__ = [
    "FieldSession",
    "FieldSimulation",
    "IntervalMeasurements",
    "StepHook",
    "TripStats",
]

logger = logging.getLogger(__name__)

StepHook = Callable[["FieldSimulation"], None]
"""Called after every simulation step (reference controllers such as max-pressure)."""


@dataclass(frozen=True)
class IntervalMeasurements:
    """What one plan interval produced, per detector and per intersection."""

    start_s: float
    end_s: float
    counts_veh: Mapping[str, float]
    """Detector id -> vehicles counted in the interval (each vehicle once)."""
    occupancy: Mapping[str, float]
    """Detector id -> mean occupancy in the interval (fraction 0..1)."""
    wait_veh_s: Mapping[str, float]
    """Intersection -> halting vehicle-seconds on its approach lanes."""
    nox_mg: Mapping[str, float]
    """Intersection -> NOx emitted on its approach lanes (mg)."""

    @property
    def interval_s(self) -> float:
        """Length of the interval."""
        return self.end_s - self.start_s


@dataclass(frozen=True)
class TripStats:
    """Ground-truth trip statistics of one run (every loaded vehicle), as rl reports them."""

    vehicles: int
    arrived: int
    delay_s: float
    """Mean timeLoss + departDelay per vehicle, never-departed vehicles included."""
    wait_s: float
    """Mean waiting time per vehicle."""
    trip_time_s: float
    """Mean trip duration (departed vehicles)."""
    nox_g: float
    """Total NOx of all vehicles (g)."""
    throughput_veh: int
    """Vehicles that arrived."""

    @classmethod
    def from_field(cls, stats: TripStatistics) -> TripStats:
        """The field's tripinfo summary in rl's units."""
        return cls(
            vehicles=stats.vehicles,
            arrived=stats.arrived,
            delay_s=stats.mean_delay_s,
            wait_s=stats.mean_waiting_s,
            trip_time_s=stats.mean_trip_s,
            nox_g=stats.total_nox_mg / 1000.0,
            throughput_veh=stats.arrived,
        )

    def as_dict(self) -> dict[str, float]:
        """Plain data."""
        return {
            "vehicles": float(self.vehicles),
            "arrived": float(self.arrived),
            "delay_s": self.delay_s,
            "wait_s": self.wait_s,
            "trip_time_s": self.trip_time_s,
            "nox_g": self.nox_g,
            "throughput_veh": float(self.throughput_veh),
        }


class FieldSimulation(Protocol):
    """The operations rl needs from a running simulation of the field."""

    @property
    def time_s(self) -> float:
        """Current simulation time."""
        ...

    def apply(self, tls_id: str, timing: IntersectionTiming) -> None:
        """Switch ``tls_id`` to ``timing`` now (see :meth:`FieldEmulator.apply`)."""
        ...

    def run_until(self, end_s: float, hook: StepHook | None = None) -> IntervalMeasurements:
        """Advance to ``end_s`` (an interval boundary) and return the interval's measurements."""
        ...

    def advance(self, end_s: float, hook: StepHook | None = None) -> None:
        """Advance to ``end_s`` without measuring."""
        ...

    def lane_halting(self, lane_id: str) -> int:
        """Vehicles halting on a lane at the last step."""
        ...

    def set_signal_state(self, tls_id: str, state: str) -> None:
        """Set a light's signal state directly (reference controllers only)."""
        ...

    def finish(self) -> TripStats:
        """End the run and return its trip statistics."""
        ...


class FieldSession:
    """One field emulator run of a network with detectors and route files.

    Args:
        network: the network model (with detectors: the field loads the same files).
        route_files: SUMO route files (the demand).
        seed: SUMO's random seed.
        begin_s: field time at start (whole seconds).
        interval_s: the plan interval: the field's measurement interval (whole seconds).
        scale: demand scale factor (SUMO ``--scale``).
        step_length_s: simulation step.
        teleport_s: SUMO ``--time-to-teleport``: -1 (as the field in the demo:
            never teleport) for evaluation; training uses a finite value so that
            a gridlocked episode still moves.
        backend: ``libsumo`` (in-process, one per process) or ``traci``.

    Raises:
        ConfigError: the network has no detector file, or an interval or begin
            time that is not a whole number of seconds.
        SimulationError: SUMO failed to start (or this process already runs a
            libsumo simulation).
    """

    def __init__(
        self,
        network: NetworkModel,
        route_files: Sequence[Path],
        *,
        seed: int = 0,
        begin_s: float = 0.0,
        interval_s: float = 240.0,
        scale: float = 1.0,
        step_length_s: float = 1.0,
        teleport_s: float = -1.0,
        backend: Backend = "libsumo",
    ) -> None:
        if network.detectors_path is None:
            raise ConfigError(
                f"network {network.path.name} has no detectors; rl observes through E1 loops"
            )
        if interval_s <= 0 or interval_s != int(interval_s):
            raise ConfigError(f"plan interval must be a whole number of seconds, got {interval_s}")
        if begin_s != int(begin_s):
            raise ConfigError(f"begin time must be a whole number of seconds, got {begin_s}")
        self.network = network
        self.interval_s = int(interval_s)
        self.field = FieldEmulator(
            FieldConfig(
                net_path=network.path,
                detectors_path=network.detectors_path,
                routes_path=tuple(Path(p) for p in route_files),
                demand_scale=scale,
                seed=int(seed),
                begin_s=int(begin_s),
                step_length_s=step_length_s,
                interval_s=self.interval_s,
                teleport_s=teleport_s,
                backend=backend,
            )
        )
        self.field.start()

    # ------------------------------------------------------------------ protocol

    @property
    def time_s(self) -> float:
        """Current field time."""
        return self.field.field_time_s

    def next_boundary_s(self, after_s: float | None = None) -> float:
        """The first plan-interval boundary strictly after ``after_s`` (default: now)."""
        t = self.time_s if after_s is None else after_s
        return float((math.floor(t / self.interval_s + 1e-9) + 1) * self.interval_s)

    def apply(self, tls_id: str, timing: IntersectionTiming) -> None:
        """Switch ``tls_id`` to ``timing`` now (:meth:`FieldEmulator.apply` at the current time).

        Re-applying the plan the light runs changes nothing; an actuated plan
        replacing an actuated plan continues the current phase.
        """
        self.field.apply(tls_id, timing, self.time_s)

    def run_until(self, end_s: float, hook: StepHook | None = None) -> IntervalMeasurements:
        """Advance to ``end_s`` and return the measurements of the interval ending there.

        The interval begins at the previous boundary, or at the field's begin
        time for the first one.

        Raises:
            ConfigError: ``end_s`` is not a multiple of the plan interval, or not
                after the current time when no interval ends there yet.
        """
        if abs(end_s / self.interval_s - round(end_s / self.interval_s)) > 1e-9:
            raise ConfigError(
                f"run_until({end_s:g}): measurements end at multiples of the plan interval "
                f"({self.interval_s} s); use advance() to stop elsewhere"
            )
        self.advance(end_s, hook)
        counts = self.field.detector_counts()
        measured = self.field.measurements()
        if (
            counts.interval_end_s is None
            or abs(counts.interval_end_s - end_s) > 1e-6
            or measured.interval_end_s != counts.interval_end_s
            or measured.interval_begin_s is None
        ):
            raise ConfigError(
                f"run_until({end_s:g}): no measurement interval ends there (field time "
                f"{self.time_s:g} s, last interval end {counts.interval_end_s})"
            )
        return IntervalMeasurements(
            start_s=measured.interval_begin_s,
            end_s=counts.interval_end_s,
            counts_veh={d: float(r.interval_count) for d, r in counts.readings.items()},
            occupancy={d: r.occupancy for d, r in counts.readings.items()},
            wait_veh_s={t: m.halting_veh_s for t, m in measured.intersections.items()},
            nox_mg={t: m.nox_mg for t, m in measured.intersections.items()},
        )

    def advance(self, end_s: float, hook: StepHook | None = None) -> None:
        """Advance to ``end_s`` step by step, calling ``hook(self)`` after every step."""
        if hook is None:
            self.field.step_until(end_s)
        else:
            self.field.step_until(end_s, hook=lambda _field: hook(self))

    def lane_halting(self, lane_id: str) -> int:
        """Vehicles halting on a lane at the last step (:meth:`FieldEmulator.lane_halting`)."""
        return self.field.lane_halting(lane_id)

    def set_signal_state(self, tls_id: str, state: str) -> None:
        """Set a light's state directly (the max-pressure reference controller only)."""
        self.field.set_signal_state(tls_id, state)

    def finish(self) -> TripStats:
        """Close the field and summarise every vehicle's trip (never-departed included)."""
        self.close()
        try:
            return TripStats.from_field(self.field.trip_statistics())
        except SimulationError as e:
            raise SimulationError(f"field run on {self.network.path.name}: {e}") from e

    def close(self) -> None:
        """Close the field (idempotent; its work directory is removed)."""
        self.field.close()
