"""A small SUMO session for training and evaluation (temporary adapter).

The field emulator (``simulators/field.py``) is the intended home of this loop;
until it offers per-step hooks and per-intersection interval measurements, this
adapter gives :mod:`rl` the few operations it needs behind the
:class:`FieldSimulation` protocol, so that swapping it for the field emulator is
a change of constructor only.

It runs libsumo in-process (one simulation per process; the vectorised trainer
puts further simulations in worker processes).
"""

from __future__ import annotations

import logging
import math
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from configs.errors import SimulationError
from configs.timing import IntersectionTiming
from simulators.network import NetworkModel
from simulators.sumo import sumo_binary

__all__ = [
    "FieldSimulation",
    "IntervalMeasurements",
    "StepHook",
    "SumoSession",
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
    """Detector id -> vehicles counted in the interval."""
    occupancy: Mapping[str, float]
    """Detector id -> mean occupancy in the interval (fraction 0..1)."""
    wait_veh_s: Mapping[str, float]
    """Intersection -> halting vehicle-seconds on its incoming lanes."""
    nox_mg: Mapping[str, float]
    """Intersection -> NOx emitted on its incoming lanes (mg)."""

    @property
    def interval_s(self) -> float:
        """Length of the interval."""
        return self.end_s - self.start_s


@dataclass(frozen=True)
class TripStats:
    """Ground-truth trip statistics of one run (every loaded vehicle)."""

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
        """Switch ``tls_id`` to ``timing`` now, in phase with its offset."""
        ...

    def run_until(self, end_s: float, hook: StepHook | None = None) -> IntervalMeasurements:
        """Advance to ``end_s`` and return the interval's measurements."""
        ...

    def lane_halting(self, lane_id: str) -> int:
        """Vehicles halting on a lane now."""
        ...

    def set_signal_state(self, tls_id: str, state: str) -> None:
        """Set a light's signal state directly (reference controllers only)."""
        ...

    def finish(self) -> TripStats:
        """End the run and return its trip statistics."""
        ...


_STATIC = 0
_ACTUATED = 3


@dataclass
class _Accumulator:
    counts: dict[str, float] = field(default_factory=dict)
    occupancy: dict[str, float] = field(default_factory=dict)
    wait: dict[str, float] = field(default_factory=dict)
    nox: dict[str, float] = field(default_factory=dict)
    steps: int = 0


class SumoSession:
    """One libsumo simulation of a network with detectors and routes.

    Args:
        network: the network model (with detectors).
        route_files: SUMO route files (the demand).
        seed: SUMO's random seed.
        begin_s: simulation start time.
        scale: demand scale factor (SUMO ``--scale``).
        step_length_s: simulation step.
        teleport_s: SUMO ``--time-to-teleport`` (-1, as in the field: never teleport;
            training uses a finite value so that a gridlocked episode still moves).
        workdir: where the tripinfo file goes (a temporary directory by default).
    """

    def __init__(
        self,
        network: NetworkModel,
        route_files: Sequence[Path],
        *,
        seed: int = 0,
        begin_s: float = 0.0,
        scale: float = 1.0,
        step_length_s: float = 1.0,
        teleport_s: float = -1.0,
        workdir: Path | None = None,
    ) -> None:
        import libsumo

        self._sumo: Any = libsumo
        self.network = network
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if workdir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="signaltwin-rl-")
            workdir = Path(self._tmp.name)
        base_dir = workdir
        self._tripinfo = base_dir / f"tripinfo-{seed}.xml"
        cmd = [
            str(sumo_binary()),
            "-n",
            str(network.path),
            "-r",
            ",".join(str(p) for p in route_files),
            "--begin",
            str(begin_s),
            "--seed",
            str(int(seed)),
            "--scale",
            str(scale),
            "--step-length",
            str(step_length_s),
            "--time-to-teleport",
            str(teleport_s),
            "--no-step-log",
            "true",
            "--no-warnings",
            "true",
            "--duration-log.disable",
            "true",
            "--device.emissions.probability",
            "1",
            "--tripinfo-output",
            str(self._tripinfo),
            "--tripinfo-output.write-unfinished",
            "true",
            "--tripinfo-output.write-undeparted",
            "true",
        ]
        if network.detectors_path is not None:
            cmd += ["-a", str(network.detectors_path)]
        try:
            self._sumo.start(cmd)
        except Exception as e:  # libsumo raises its own TraCIException / FatalTraCIError
            raise SimulationError(f"SUMO failed to start on {network.path}: {e}") from e
        self._open = True
        self._step_s = step_length_s
        self._det_ids = [d.id for d in network.detectors]
        self._tls_lanes = {t: i.incoming_lanes for t, i in network.intersections.items()}
        self._lanes = sorted({lane for lanes in self._tls_lanes.values() for lane in lanes})
        self._lane_halt: dict[str, int] = {}
        self._applied: dict[str, IntersectionTiming] = {}

    # ------------------------------------------------------------------ protocol

    @property
    def time_s(self) -> float:
        """Current simulation time."""
        return float(self._sumo.simulation.getTime())

    def apply(self, tls_id: str, timing: IntersectionTiming) -> None:
        """Switch ``tls_id`` to ``timing`` now, entering the phase its offset implies.

        Re-applying the plan the light already runs changes nothing (a controller
        given its active plan again does not restart its cycle).
        """
        if self._applied.get(tls_id) == timing:
            return
        tl = self._sumo.trafficlight
        phases = []
        for p in timing.phases:
            lo = float(p.min_s) if p.min_s is not None else float(p.duration_s)
            hi = float(p.max_s) if p.max_s is not None else float(p.duration_s)
            phases.append(tl.Phase(float(p.duration_s), p.state, lo, hi))
        kind = _ACTUATED if timing.mode == "actuated" else _STATIC
        elapsed = (self.time_s - timing.offset_s) % timing.cycle_s
        index, remaining = 0, float(timing.phases[0].duration_s)
        for i, p in enumerate(timing.phases):
            if elapsed < p.duration_s:
                index, remaining = i, p.duration_s - elapsed
                break
            elapsed -= p.duration_s
        logic = tl.Logic("signaltwin", kind, index, phases)
        try:
            tl.setProgramLogic(tls_id, logic)
            tl.setProgram(tls_id, "signaltwin")
            tl.setPhase(tls_id, index)
            if kind == _STATIC:
                tl.setPhaseDuration(tls_id, max(1.0, remaining))
        except Exception as e:
            raise SimulationError(f"SUMO refused the plan for {tls_id!r}: {e}") from e
        self._applied[tls_id] = timing

    def run_until(self, end_s: float, hook: StepHook | None = None) -> IntervalMeasurements:
        """Advance to ``end_s`` step by step, accumulating the interval's measurements."""
        lane, loop = self._sumo.lane, self._sumo.inductionloop
        start = self.time_s
        acc = _Accumulator(
            counts=dict.fromkeys(self._det_ids, 0.0),
            occupancy=dict.fromkeys(self._det_ids, 0.0),
        )
        lane_wait = dict.fromkeys(self._lanes, 0.0)
        lane_nox = dict.fromkeys(self._lanes, 0.0)
        try:
            while self.time_s < end_s - 1e-6:
                self._sumo.simulationStep()
                acc.steps += 1
                for det in self._det_ids:
                    acc.counts[det] += loop.getLastStepVehicleNumber(det)
                    acc.occupancy[det] += loop.getLastStepOccupancy(det) / 100.0
                for ln in self._lanes:
                    halt = lane.getLastStepHaltingNumber(ln)
                    self._lane_halt[ln] = halt
                    lane_wait[ln] += halt * self._step_s
                    lane_nox[ln] += lane.getNOxEmission(ln) * self._step_s
                if hook is not None:
                    hook(self)
        except SimulationError:
            raise
        except Exception as e:
            raise SimulationError(f"SUMO failed at t={self.time_s:.0f} s: {e}") from e
        steps = max(1, acc.steps)
        occupancy = {d: v / steps for d, v in acc.occupancy.items()}
        wait = {t: sum(lane_wait[ln] for ln in lanes) for t, lanes in self._tls_lanes.items()}
        nox = {t: sum(lane_nox[ln] for ln in lanes) for t, lanes in self._tls_lanes.items()}
        return IntervalMeasurements(start, self.time_s, acc.counts, occupancy, wait, nox)

    def lane_halting(self, lane_id: str) -> int:
        """Vehicles halting on a lane at the last step (0 for lanes not tracked)."""
        cached = self._lane_halt.get(lane_id)
        if cached is not None:
            return cached
        try:
            return int(self._sumo.lane.getLastStepHaltingNumber(lane_id))
        except Exception:  # an outgoing lane outside the network model
            return 0

    def set_signal_state(self, tls_id: str, state: str) -> None:
        """Set a light's state directly (used by the max-pressure reference controller)."""
        self._sumo.trafficlight.setRedYellowGreenState(tls_id, state)

    def finish(self) -> TripStats:
        """Close SUMO and summarise every vehicle's trip (never-departed included)."""
        self.close()
        return _trip_stats(self._tripinfo)

    def close(self) -> None:
        """Close SUMO (idempotent)."""
        if self._open:
            self._open = False
            try:
                self._sumo.close()
            except Exception as e:  # closing must not mask the run's result
                logger.warning("closing SUMO: %s", e)

    def cleanup(self) -> None:
        """Close SUMO and remove the temporary directory."""
        self.close()
        if self._tmp is not None:
            self._tmp.cleanup()


def _trip_stats(tripinfo: Path) -> TripStats:
    """Summarise a tripinfo file written with ``write-unfinished`` and ``write-undeparted``.

    Never-departed vehicles appear with ``depart="-1"`` and their waiting time
    for insertion as ``departDelay``; they count towards the delay.
    """
    delay = wait = trip_time = nox_mg = 0.0
    vehicles = arrived = departed = 0
    try:
        for _, elem in ET.iterparse(tripinfo, events=("end",)):
            if elem.tag != "tripinfo":
                continue
            vehicles += 1
            if not elem.get("depart", "-1").startswith("-"):
                departed += 1
                trip_time += float(elem.get("duration", "0"))
            delay += float(elem.get("timeLoss", "0")) + float(elem.get("departDelay", "0"))
            wait += float(elem.get("waitingTime", "0"))
            if not elem.get("arrival", "-1").startswith("-"):
                arrived += 1
            emissions = elem.find("emissions")
            if emissions is not None:
                nox_mg += float(emissions.get("NOx_abs", "0"))
            elem.clear()
    except (ET.ParseError, OSError) as e:
        raise SimulationError(f"cannot read SUMO trip output {tripinfo}: {e}") from e
    n = max(1, vehicles)
    return TripStats(
        vehicles=vehicles,
        arrived=arrived,
        delay_s=delay / n,
        wait_s=wait / n,
        trip_time_s=trip_time / max(1, departed),
        nox_g=nox_mg / 1000.0,
        throughput_veh=arrived,
    )


def finite(value: float) -> float:
    """``value`` if finite, else 0 (guards observations against SUMO's -1 sentinels)."""
    return value if math.isfinite(value) else 0.0
