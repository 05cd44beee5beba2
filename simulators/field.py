"""The field emulator: the stand-in city, observed only through its traffic controllers.

A :class:`FieldEmulator` owns one SUMO simulation with *hidden* demand (a routes
file, or a time-varying demand profile expanded with the field's own seed), no
teleporting by default (``--time-to-teleport -1``), and an emissions device on
every vehicle. It exposes what real traffic controllers would:

- :meth:`FieldEmulator.apply` switches a traffic light to an
  :class:`~configs.timing.IntersectionTiming` at a given field time, in step
  with the plan's offset (the phase and its remaining time are chosen so that
  the cycle starts at ``field time = offset (mod cycle)``);
- :meth:`FieldEmulator.detector_counts`: per-loop cumulative vehicle counts and
  the last completed interval's count and occupancy;
- :meth:`FieldEmulator.measurements`: per-intersection mean wait and NOx of the
  last completed interval (what a roadside sensor cabinet would report);
- :meth:`FieldEmulator.trip_statistics` (evaluation only, after
  :meth:`FieldEmulator.close`): ground truth of every vehicle, including those
  still driving and those never inserted.

For closed-loop evaluation and training (:mod:`rl`), and nothing else, it also
offers a per-step hook (:meth:`FieldEmulator.step_until` with ``hook``), the
halting vehicles on every lane a light serves or feeds
(:meth:`FieldEmulator.lane_halting`), and a direct signal-state setter
(:meth:`FieldEmulator.set_signal_state`) for real-time reference controllers
such as max-pressure, which bypasses plans and the controller contract.

Backends and processes:
    ``backend="libsumo"`` (default) runs SUMO inside this process: fastest, but
    libsumo holds ONE simulation per process, so a process that owns a libsumo
    field must not start another libsumo simulation (the twin's workers run in
    their own processes). ``backend="traci"`` starts a separate ``sumo``
    process and talks to it over a socket, so several simulations can share a
    process (slower per step).

Threading:
    Every public method takes one lock, so the field can be stepped in a worker
    thread (:meth:`FieldEmulator.run_realtime` / :meth:`FieldEmulator.start_thread`)
    while an asyncio program (the emulated controllers) calls :meth:`apply`,
    :meth:`detector_counts` and :meth:`measurements`. The lock is released
    between simulation steps.

Field time is SUMO's simulation time in seconds (starting at ``begin_s``).
"""

from __future__ import annotations

__all__ = [
    "ActivePlan",
    "Backend",
    "ControllerFieldPort",
    "DetectorReading",
    "DetectorSnapshot",
    "FieldConfig",
    "FieldEmulator",
    "IntersectionMeasurement",
    "MeasurementSnapshot",
    "TripStatistics",
    "phase_at",
]

import logging
import math
import shutil
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

from configs.errors import ConfigError, SimulationError
from configs.timing import IntersectionTiming
from simulators.netbuild import DemandProfile, district_paths, expand_demand
from simulators.network import NetworkModel, ensure_detectors, load_network
from simulators.signal_program import build_logic, install_program
from simulators.sumo import sumo_binary

logger = logging.getLogger(__name__)

Backend = Literal["libsumo", "traci"]
"""How the field runs SUMO: in this process (``libsumo``) or as a separate process (``traci``)."""

# traci.constants is a pure-Python table shared by libsumo and traci.
_VAR_VEHICLE_IDS = 0x12
_VAR_OCCUPANCY = 0x13
_VAR_HALTING = 0x14
_VAR_NOX = 0x63
_SIGNAL_CHARS = frozenset("rygGsuoO")
"""SUMO's signal letters: red, yellow, green (minor, major), right-turn arrow, red-yellow, off."""
# SUMO options the field sets itself (long and short names); SUMO refuses an option given twice.
_OWN_OPTIONS = {
    "--net-file": "net_path",
    "-n": "net_path",
    "--route-files": "routes_path / demand_profile_path",
    "-r": "routes_path / demand_profile_path",
    "--additional-files": "detectors_path",
    "-a": "detectors_path",
    "--begin": "begin_s",
    "-b": "begin_s",
    "--step-length": "step_length_s",
    "--seed": "seed",
    "--scale": "demand_scale",
    "--time-to-teleport": "teleport_s",
    "--tripinfo-output": "(the field's own tripinfo)",
    "--device.emissions.probability": "(the field's own emissions device)",
}

_libsumo_owner_lock = threading.Lock()
_libsumo_in_use = False


# ------------------------------------------------------------------ snapshots


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


@dataclass(frozen=True)
class FieldConfig:
    """How to start a field emulator.

    Attributes:
        net_path: the ``.net.xml`` (any signalised SUMO network).
        detectors_path: E1 loops; ``None`` generates loops into the work directory.
        routes_path: a routes/trips file (hidden demand), or several as a tuple, or
        demand_profile_path: a demand profile expanded with ``seed`` (exactly one
            of the two, or neither for an empty city).
        demand_scale: multiplier on the demand: on the profile's rates when it is
            expanded, or SUMO's ``--scale`` for ``routes_path``.
        demand_repeat: how many times the profile runs back to back (4 x the
            district's 3-hour peak keeps a demo busy for 12 field hours).
        seed: SUMO's random seed (and the profile expansion's).
        begin_s: field time at start (e.g. the start of the morning peak).
        step_length_s: simulation step.
        interval_s: detector and measurement interval; intervals end at
            multiples of it in field time.
        teleport_s: SUMO ``--time-to-teleport``: ``-1`` (default) never teleports
            a stuck vehicle, as a city would not; training uses e.g. 300 so that
            a gridlocked episode still ends.
        backend: ``libsumo`` (in-process, one per process) or ``traci``.
        work_dir: where tripinfo and expanded demand go (default: a temp dir,
            removed on close).
        extra_args: further SUMO options (not one the field sets itself).
    """

    net_path: Path
    detectors_path: Path | None = None
    routes_path: Path | tuple[Path, ...] | None = None
    demand_profile_path: Path | None = None
    demand_scale: float = 1.0
    demand_repeat: int = 4
    seed: int = 0
    begin_s: int = 0
    step_length_s: float = 1.0
    interval_s: int = 60
    teleport_s: float = -1
    backend: Backend = "libsumo"
    work_dir: Path | None = None
    extra_args: tuple[str, ...] = ()

    @classmethod
    def for_district(
        cls,
        seed: int,
        *,
        directory: Path | None = None,
        begin_s: int | None = None,
        demand_scale: float = 1.0,
        **kwargs: Any,
    ) -> FieldConfig:
        """The demo district with its demand profile expanded with ``seed``.

        ``begin_s`` defaults to 15 minutes before the first peak bin.
        """
        paths = district_paths(directory)
        if begin_s is None:
            profile = DemandProfile.load(paths["demand"])
            begin_s = max(0, profile.peak_begin_s - 900)
        return cls(
            net_path=paths["net"],
            detectors_path=paths["det"],
            demand_profile_path=paths["demand"],
            demand_scale=demand_scale,
            seed=seed,
            begin_s=begin_s,
            **kwargs,
        )


# -------------------------------------------------------------------- timing


def phase_at(timing: IntersectionTiming, field_time_s: float) -> tuple[int, float]:
    """Phase index and remaining seconds of ``timing`` at ``field_time_s``.

    The plan's cycle starts (phase 0 begins) whenever
    ``(field_time_s - offset_s) mod cycle_s == 0``.
    """
    cycle = sum(p.duration_s for p in timing.phases)
    if cycle <= 0:
        raise ConfigError("timing plan has no duration (cycle 0)")
    position = (field_time_s - timing.offset_s) % cycle
    start = 0.0
    for index, phase in enumerate(timing.phases):
        end = start + phase.duration_s
        if position < end - 1e-9:
            return index, end - position
        start = end
    return 0, float(timing.phases[0].duration_s)


# ------------------------------------------------------------------ accumulators


@dataclass
class _TlsAcc:
    halting_veh_s: float = 0.0
    nox_mg: float = 0.0
    vehicles: set[str] = field(default_factory=set)


@dataclass
class _Pending:
    tls_id: str
    timing: IntersectionTiming
    at_s: float


class FieldEmulator:
    """The city: one SUMO simulation stepped in (scaled) real time or as fast as possible."""

    def __init__(self, config: FieldConfig) -> None:
        """Load the network and detectors; SUMO starts in :meth:`start`."""
        self.config = config
        if config.routes_path is not None and config.demand_profile_path is not None:
            raise ConfigError("field: give routes_path or demand_profile_path, not both")
        if config.interval_s <= 0 or config.step_length_s <= 0:
            raise ConfigError("field: interval_s and step_length_s must be positive")
        if not (config.demand_scale > 0 and math.isfinite(config.demand_scale)):
            raise ConfigError(f"field: demand_scale must be positive, got {config.demand_scale}")
        for arg in config.extra_args:
            option = arg.split("=", 1)[0]
            if option in _OWN_OPTIONS:
                raise ConfigError(
                    f"field: extra_args gives SUMO option {option}, which the field sets "
                    f"itself (FieldConfig {_OWN_OPTIONS[option]}); SUMO refuses an option twice"
                )
        self._own_work_dir = config.work_dir is None
        self._work_dir = (
            Path(tempfile.mkdtemp(prefix="signaltwin-field-"))
            if config.work_dir is None
            else Path(config.work_dir)
        )
        self._work_dir.mkdir(parents=True, exist_ok=True)
        det_path = config.detectors_path or ensure_detectors(
            config.net_path, self._work_dir / "detectors.add.xml"
        )
        self.network: NetworkModel = load_network(config.net_path, det_path)
        self._det_path = det_path
        self._lock = threading.RLock()
        self._api: Any = None
        self._backend_module: ModuleType | None = None
        self._label = f"field-{id(self)}"
        self._time_s = float(config.begin_s)
        self._closed = False
        self._trip_stats: TripStatistics | None = None
        self._tripinfo = self._work_dir / "tripinfo.xml"
        # detectors
        self._det_ids = tuple(d.id for d in self.network.detectors)
        self._det_prev: dict[str, frozenset[str]] = {d: frozenset() for d in self._det_ids}
        self._det_count: dict[str, int] = dict.fromkeys(self._det_ids, 0)
        self._det_int_count: dict[str, int] = dict.fromkeys(self._det_ids, 0)
        self._det_int_occ: dict[str, float] = dict.fromkeys(self._det_ids, 0.0)
        self._det_last: dict[str, tuple[int, float]] = {}
        self._det_step_occ: dict[str, float] = {}
        # approaches
        self._lane_tls: dict[str, list[str]] = {}
        for tls_id, inter in self.network.intersections.items():
            for edge in inter.approaches:
                for lane in self.network.edges.get(edge, ()):
                    if self.network.lanes[lane].vehicles:
                        self._lane_tls.setdefault(lane, []).append(tls_id)
        # every vehicle lane a light serves or feeds (max-pressure reads both ends)
        self._halt_lanes: frozenset[str] = frozenset(
            lane
            for inter in self.network.intersections.values()
            for link in inter.links
            if not link.pedestrian
            for lane in (link.from_lane, link.to_lane)
            if lane in self.network.lanes
        ) | frozenset(self._lane_tls)
        self._lane_results: dict[str, dict[int, Any]] = {}
        self._tls_acc: dict[str, _TlsAcc] = {t: _TlsAcc() for t in self.network.intersections}
        self._last_measure: MeasurementSnapshot | None = None
        self._interval_begin = float(config.begin_s)
        self._interval_steps = 0
        self._last_interval_end: float | None = None
        # plans
        self._pending: list[_Pending] = []
        self._active: dict[str, ActivePlan] = {
            t: ActivePlan(t, i.base.program_id, IntersectionTiming.from_base(i.base), None)
            for t, i in self.network.intersections.items()
        }
        self._program_seq = 0
        # real-time runner
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    # ------------------------------------------------------------ lifecycle

    def _demand_args(self) -> list[str]:
        cfg = self.config
        if cfg.routes_path is not None:
            files = (cfg.routes_path,) if isinstance(cfg.routes_path, Path) else cfg.routes_path
            if not files:
                raise ConfigError("field: routes_path is an empty tuple of route files")
            for route_file in files:
                if not Path(route_file).is_file():
                    raise ConfigError(f"field routes file {route_file} does not exist")
            args = ["-r", ",".join(str(f) for f in files)]
            if cfg.demand_scale != 1.0:
                args += ["--scale", f"{cfg.demand_scale:g}"]
            return args
        if cfg.demand_profile_path is not None:
            profile = DemandProfile.load(Path(cfg.demand_profile_path))
            routes = expand_demand(
                profile,
                cfg.seed,
                self._work_dir / f"field-demand-{cfg.seed}.rou.xml",
                scale=cfg.demand_scale,
                begin_s=cfg.begin_s,
                repeat=cfg.demand_repeat,
            )
            return ["-r", str(routes)]
        return []

    def _command(self) -> list[str]:
        cfg = self.config
        return [
            str(sumo_binary()),
            "-n",
            str(cfg.net_path),
            *self._demand_args(),
            "-a",
            str(self._det_path),
            "--begin",
            str(cfg.begin_s),
            "--step-length",
            f"{cfg.step_length_s:g}",
            "--seed",
            str(int(cfg.seed)),
            "--time-to-teleport",
            f"{cfg.teleport_s:g}",
            "--no-step-log",
            "true",
            "--no-warnings",
            "true",
            "--xml-validation",
            "never",
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
            *cfg.extra_args,
        ]

    def start(self) -> FieldEmulator:
        """Start SUMO. Returns ``self`` (also usable as a context manager).

        Raises:
            SimulationError: SUMO failed to start, or this process already owns a
                libsumo simulation.
        """
        global _libsumo_in_use
        with self._lock:
            if self._api is not None:
                return self
            if self._closed:
                raise SimulationError("field emulator was closed; create a new one")
            cmd = self._command()
            if self.config.backend == "libsumo":
                with _libsumo_owner_lock:
                    if _libsumo_in_use:
                        raise SimulationError(
                            "this process already runs a libsumo simulation; libsumo holds one "
                            "per process: use backend='traci' or another process"
                        )
                    import libsumo

                    try:
                        libsumo.start(cmd)
                    except Exception as e:  # libsumo raises its own TraCIException
                        raise SimulationError(f"SUMO failed to start the field: {e}") from e
                    _libsumo_in_use = True
                self._backend_module = libsumo
                self._api = libsumo
            else:
                import traci

                try:
                    traci.start(cmd, label=self._label)
                except Exception as e:
                    raise SimulationError(f"SUMO failed to start the field: {e}") from e
                self._backend_module = traci
                self._api = traci.getConnection(self._label)
            self._time_s = float(self._api.simulation.getTime())
            self._subscribe()
            logger.info(
                "field started (%s, seed %d) at t=%.0f s on %s",
                self.config.backend,
                self.config.seed,
                self._time_s,
                self.network.path.name,
            )
            return self

    def __enter__(self) -> FieldEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _subscribe(self) -> None:
        api = self._api
        for det in self._det_ids:
            api.inductionloop.subscribe(det, [_VAR_VEHICLE_IDS, _VAR_OCCUPANCY])
        for lane in sorted(self._halt_lanes):
            if lane in self._lane_tls:
                api.lane.subscribe(lane, [_VAR_HALTING, _VAR_VEHICLE_IDS, _VAR_NOX])
            else:  # an exit lane only: its queue, for lane_halting
                api.lane.subscribe(lane, [_VAR_HALTING])

    def close(self) -> None:
        """Stop the runner thread, end SUMO and compute the trip statistics."""
        global _libsumo_in_use
        self.stop_thread()
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._api is not None:
                try:
                    self._api.close()
                except Exception as e:  # pragma: no cover - depends on SUMO state
                    logger.warning("closing SUMO failed: %s", e)
                if self.config.backend == "libsumo":
                    with _libsumo_owner_lock:
                        _libsumo_in_use = False
                self._api = None
                if self._tripinfo.is_file():
                    self._trip_stats = _parse_tripinfo(self._tripinfo)
            if self._own_work_dir:
                shutil.rmtree(self._work_dir, ignore_errors=True)

    # ------------------------------------------------------------- stepping

    @property
    def field_time_s(self) -> float:
        """Current field time (SUMO simulation time, s)."""
        with self._lock:
            return self._time_s

    @property
    def running(self) -> bool:
        """True between :meth:`start` and :meth:`close`."""
        with self._lock:
            return self._api is not None

    def _require(self) -> Any:
        if self._api is None:
            raise SimulationError("field emulator is not running; call start() first")
        return self._api

    def step(self) -> float:
        """Advance one simulation step; returns the new field time."""
        with self._lock:
            api = self._require()
            self._apply_due()
            try:
                api.simulationStep()
            except Exception as e:
                raise SimulationError(f"field SUMO step failed at t={self._time_s}: {e}") from e
            self._time_s = float(api.simulation.getTime())
            self._collect()
            # Plans due now take effect before the next step, so the light shows
            # the plan's phase for this field time.
            self._apply_due()
            return self._time_s

    def step_until(
        self, field_time_s: float, hook: Callable[[FieldEmulator], None] | None = None
    ) -> float:
        """Step until field time reaches ``field_time_s`` (lock released between steps).

        Args:
            field_time_s: the field time to reach (no step if already there).
            hook: called as ``hook(self)`` after every step, outside the lock
                (evaluation reference controllers, e.g. max-pressure reading
                :meth:`lane_halting` and calling :meth:`set_signal_state`).

        Returns:
            The field time reached.
        """
        while True:
            with self._lock:
                if self._time_s + 1e-9 >= field_time_s:
                    return self._time_s
            self.step()
            if hook is not None:
                hook(self)

    def run_realtime(
        self,
        speed: float | None,
        stop_event: threading.Event,
        until_s: float | None = None,
    ) -> float:
        """Step in step with the wall clock until ``stop_event`` is set.

        Args:
            speed: field seconds per wall-clock second (1.0 = real time); ``None``
                runs as fast as possible.
            stop_event: set it (from any thread) to return.
            until_s: also return once field time reaches this.

        Returns:
            The field time at return.
        """
        if speed is not None and (speed <= 0 or not math.isfinite(speed)):
            raise ConfigError(f"field speed must be positive (or None), got {speed}")
        step_s = self.config.step_length_s
        wall0 = time.monotonic()
        field0 = self.field_time_s
        while not stop_event.is_set():
            now = self.field_time_s
            if until_s is not None and now + 1e-9 >= until_s:
                break
            if speed is not None:
                due = wall0 + (now + step_s - field0) / speed
                delay = due - time.monotonic()
                if delay > 0:
                    if stop_event.wait(min(delay, 0.5)):
                        break
                    continue
            self.step()
        return self.field_time_s

    def start_thread(self, speed: float | None, until_s: float | None = None) -> threading.Thread:
        """Run :meth:`run_realtime` in a daemon thread (stop with :meth:`stop_thread`)."""
        with self._lock:
            self._require()
            if self._thread is not None and self._thread.is_alive():
                raise SimulationError("field runner thread is already running")
            self._stop.clear()
            self._thread = threading.Thread(
                target=self._thread_main,
                args=(speed, until_s),
                name="signaltwin-field",
                daemon=True,
            )
            self._thread.start()
            return self._thread

    def _thread_main(self, speed: float | None, until_s: float | None) -> None:
        try:
            self.run_realtime(speed, self._stop, until_s)
        except Exception:
            logger.exception("field runner thread failed")

    def stop_thread(self, timeout_s: float = 10.0) -> None:
        """Stop the runner thread started by :meth:`start_thread` (no-op if none)."""
        thread = self._thread
        if thread is None:
            return
        self._stop.set()
        if thread is not threading.current_thread():
            thread.join(timeout_s)
        self._thread = None

    # ----------------------------------------------------------- collection

    def _collect(self) -> None:
        api = self._api
        step_s = self.config.step_length_s
        dets = api.inductionloop.getAllSubscriptionResults()
        prev_all = self._det_prev
        step_occ: dict[str, float] = {}
        for det_id, res in dets.items():
            ids = res[_VAR_VEHICLE_IDS]
            prev = prev_all.get(det_id)
            if prev is None or (not ids and not prev):
                continue
            now = frozenset(ids)
            new = len(now - prev)
            prev_all[det_id] = now
            if new:
                self._det_count[det_id] += new
                self._det_int_count[det_id] += new
            occupancy = res[_VAR_OCCUPANCY]
            if occupancy:
                self._det_int_occ[det_id] += float(occupancy) / 100.0
                step_occ[det_id] = float(occupancy) / 100.0
        self._det_step_occ = step_occ
        lanes = api.lane.getAllSubscriptionResults()
        self._lane_results = lanes  # read by lane_halting until the next step
        lane_tls = self._lane_tls
        accs = self._tls_acc
        for lane_id, res in lanes.items():
            vehicles = res.get(_VAR_VEHICLE_IDS)  # None on exit-only lanes
            if not vehicles:
                continue
            tls_ids = lane_tls.get(lane_id)
            if tls_ids is None:
                continue
            halting = res[_VAR_HALTING] * step_s
            nox = res[_VAR_NOX] * step_s
            for tls_id in tls_ids:
                acc = accs[tls_id]
                acc.halting_veh_s += halting
                acc.nox_mg += nox
                acc.vehicles.update(vehicles)
        self._interval_steps += 1
        interval = self.config.interval_s
        boundary = (math.floor(self._interval_begin / interval + 1e-9) + 1) * interval
        if self._time_s + 1e-9 >= boundary:
            self._close_interval()

    def _close_interval(self) -> None:
        steps = max(1, self._interval_steps)
        self._det_last = {
            d: (self._det_int_count[d], self._det_int_occ[d] / steps) for d in self._det_ids
        }
        self._last_measure = MeasurementSnapshot(
            field_time_s=self._time_s,
            interval_begin_s=self._interval_begin,
            interval_end_s=self._time_s,
            intersections={
                t: IntersectionMeasurement(
                    tls_id=t,
                    mean_wait_s=acc.halting_veh_s / len(acc.vehicles) if acc.vehicles else 0.0,
                    nox_mg=acc.nox_mg,
                    vehicles=len(acc.vehicles),
                    halting_veh_s=acc.halting_veh_s,
                )
                for t, acc in self._tls_acc.items()
            },
        )
        self._last_interval_end = self._time_s
        self._interval_begin = self._time_s
        self._interval_steps = 0
        self._det_int_count = dict.fromkeys(self._det_ids, 0)
        self._det_int_occ = dict.fromkeys(self._det_ids, 0.0)
        self._tls_acc = {t: _TlsAcc() for t in self.network.intersections}

    def detector_counts(self) -> DetectorSnapshot:
        """Cumulative counts and the last completed interval's count and occupancy."""
        with self._lock:
            readings = {}
            for det in self.network.detectors:
                last_count, last_occ = self._det_last.get(det.id, (0, 0.0))
                readings[det.id] = DetectorReading(
                    detector_id=det.id,
                    lane_id=det.lane_id,
                    tls_id=det.tls_id,
                    count=self._det_count[det.id],
                    interval_count=last_count,
                    occupancy=last_occ,
                )
            return DetectorSnapshot(
                field_time_s=self._time_s,
                interval_s=self.config.interval_s,
                interval_end_s=self._last_interval_end,
                readings=readings,
            )

    def lane_halting(self, lane_id: str) -> int:
        """Vehicles halting (speed below 0.1 m/s) on ``lane_id`` during the last step.

        Tracked for every vehicle lane that enters a traffic light (its
        approaches) and every lane its links lead to (their exit lanes), read
        from the per-step subscription: no query to SUMO. 0 before the first step.

        Raises:
            ConfigError: ``lane_id`` is neither an approach nor an exit lane of a
                traffic light in the network.
        """
        with self._lock:
            res = self._lane_results.get(lane_id)
            if res is not None:
                return int(res[_VAR_HALTING])
            if lane_id not in self._halt_lanes:
                raise ConfigError(
                    f"lane {lane_id!r} is not an approach or exit lane of a traffic light in "
                    f"network {self.network.path.name}; the field tracks queues only there"
                )
            return 0

    def step_occupancy(self, detector_id: str) -> float:
        """Fraction of the last simulation step ``detector_id`` was occupied (0..1)."""
        with self._lock:
            return self._det_step_occ.get(detector_id, 0.0)

    def measurements(self) -> MeasurementSnapshot:
        """Per-intersection mean wait and NOx of the last completed interval."""
        with self._lock:
            if self._last_measure is None:
                return MeasurementSnapshot(self._time_s, None, None, {})
            return replace(self._last_measure, field_time_s=self._time_s)

    # ---------------------------------------------------------------- plans

    def apply(self, tls_id: str, timing: IntersectionTiming, at_field_time_s: float) -> None:
        """Switch ``tls_id`` to ``timing`` when field time reaches ``at_field_time_s``.

        A time in the past applies at once. The plan enters the phase that its
        offset puts at that moment, with the phase's remaining time, so the
        light runs in step with ``field time - offset``. Safety is not checked
        here (the controller does that before activating).

        Two cases do not re-enter the cycle, as a controller would not:

        - the plan the light already runs (equal timing, not under
          :meth:`set_signal_state`): nothing changes;
        - an actuated plan replacing an actuated plan with the same phase
          states: the light stays in its current phase with the new bounds
          (offsets mean nothing to actuated control). When the running plan is
          one the field applied, its program is updated in place and the phase
          keeps its elapsed time; from the network's own actuated program the
          light enters the new program at its current phase.

        Raises:
            ConfigError: unknown light, or phase states that do not fit its links.
        """
        inter = self.network.intersections.get(tls_id)
        if inter is None:
            raise ConfigError(
                f"traffic light {tls_id!r} is not in network {self.network.path.name}"
            )
        links = len(inter.base.phases[0].state)
        for index, phase in enumerate(timing.phases):
            if len(phase.state) != links:
                raise ConfigError(
                    f"plan for {tls_id!r} phase {index}: state {phase.state!r} has "
                    f"{len(phase.state)} signals, the light controls {links}"
                )
        with self._lock:
            self._pending.append(_Pending(tls_id, timing, float(at_field_time_s)))
            self._pending.sort(key=lambda p: p.at_s)
            if self._api is not None:
                self._apply_due()

    def _apply_due(self) -> None:
        while self._pending and self._pending[0].at_s <= self._time_s + 1e-9:
            item = self._pending.pop(0)
            self._apply_now(item.tls_id, item.timing)

    def _apply_now(self, tls_id: str, timing: IntersectionTiming) -> None:
        active = self._active[tls_id]
        if not active.externally_controlled and active.timing == timing:
            logger.debug("field t=%.0f: %s already runs this plan", self._time_s, tls_id)
            return
        tl = self._api.trafficlight
        actuated = timing.mode == "actuated"
        continues = (
            actuated
            and active.timing.mode == "actuated"
            and not active.externally_controlled
            and [p.state for p in active.timing.phases] == [p.state for p in timing.phases]
        )
        in_place = continues and active.applied_at_s is not None
        try:
            if in_place:
                # the field's own actuated program: new bounds, same phase, same elapsed time
                program_id = active.program_id
                index = int(tl.getPhase(tls_id))
                tl.setProgramLogic(
                    tls_id, build_logic(self._api, tls_id, timing, program_id, index)
                )
                remaining = float(tl.getNextSwitch(tls_id)) - self._time_s
            else:
                self._program_seq += 1
                program_id = f"signaltwin-{self._program_seq}"
                if continues:
                    index = int(tl.getPhase(tls_id))
                    remaining = float(timing.phases[index].duration_s)
                else:
                    index, remaining = phase_at(timing, self._time_s)
                install_program(self._api, tls_id, timing, program_id, index, remaining)
        except Exception as e:
            raise SimulationError(f"field could not apply a plan to {tls_id!r}: {e}") from e
        self._active[tls_id] = ActivePlan(tls_id, program_id, timing, self._time_s)
        logger.info(
            "field t=%.0f: %s runs %s (%s, cycle %d s, offset %d s), phase %d with %.0f s left%s",
            self._time_s,
            tls_id,
            program_id,
            timing.mode,
            timing.cycle_s,
            timing.offset_s,
            index,
            remaining,
            " (continued)" if continues else "",
        )

    def set_signal_state(self, tls_id: str, state: str) -> None:
        """Show ``state`` at ``tls_id`` now, bypassing plans (evaluation reference only).

        This is not something a deployed controller accepts: it skips the plan,
        the safety check and the controller contract, and exists so that a
        real-time reference controller (max-pressure) can run on the field in
        closed-loop evaluation. SUMO holds the state until it is set again or a
        plan is applied; :meth:`active_plan` reports the light as
        ``externally_controlled`` until then.

        Raises:
            ConfigError: unknown light, a state of the wrong length, or a letter
                that is not a SUMO signal state.
            SimulationError: the field is not running, or SUMO refused.
        """
        inter = self.network.intersections.get(tls_id)
        if inter is None:
            raise ConfigError(
                f"traffic light {tls_id!r} is not in network {self.network.path.name}"
            )
        links = len(inter.base.phases[0].state)
        if len(state) != links:
            raise ConfigError(
                f"signal state {state!r} for {tls_id!r} has {len(state)} signals, "
                f"the light controls {links}"
            )
        if not set(state) <= _SIGNAL_CHARS:
            raise ConfigError(
                f"signal state {state!r} for {tls_id!r} has letters outside "
                f"{''.join(sorted(_SIGNAL_CHARS))!r}"
            )
        with self._lock:
            tl = self._require().trafficlight
            try:
                tl.setRedYellowGreenState(tls_id, state)
                active = self._active[tls_id]
                if not active.externally_controlled:
                    self._active[tls_id] = replace(
                        active,
                        program_id=str(tl.getProgram(tls_id)),
                        applied_at_s=self._time_s,
                        externally_controlled=True,
                    )
            except Exception as e:
                raise SimulationError(
                    f"field could not set the signal state of {tls_id!r}: {e}"
                ) from e

    def active_plan(self, tls_id: str) -> ActivePlan:
        """The plan ``tls_id`` runs now (its base program until one is applied)."""
        with self._lock:
            plan = self._active.get(tls_id)
            if plan is None:
                raise ConfigError(
                    f"traffic light {tls_id!r} is not in network {self.network.path.name}"
                )
            return plan

    def signal_state(self, tls_id: str) -> tuple[str, int, str]:
        """``(program id, phase index, signal state)`` of ``tls_id``.

        As SUMO reports it at field time ``t``: the state in force during the
        step just simulated, ``[t - step, t)`` (right after :meth:`apply` took
        effect, the state in force from ``t``).
        """
        with self._lock:
            tl = self._require().trafficlight
            return (
                str(tl.getProgram(tls_id)),
                int(tl.getPhase(tls_id)),
                str(tl.getRedYellowGreenState(tls_id)),
            )

    def vehicle_counts(self) -> tuple[int, int]:
        """``(vehicles in the network, vehicles waiting to be inserted)``."""
        with self._lock:
            api = self._require()
            return int(api.vehicle.getIDCount()), len(api.simulation.getPendingVehicles())

    # ----------------------------------------------------------- evaluation

    def trip_statistics(self) -> TripStatistics:
        """Ground-truth trip statistics; available after :meth:`close`.

        Raises:
            SimulationError: the field has not been closed yet.
        """
        with self._lock:
            if self._trip_stats is None:
                raise SimulationError(
                    "trip statistics are written when the field closes; call close() first"
                )
            return self._trip_stats


def _parse_tripinfo(path: Path) -> TripStatistics:
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


class ControllerFieldPort:
    """One field seen the way emulated controllers read it (per intersection).

    Matches the ``FieldPort`` protocol of the emulated OPC UA controllers
    (``actuation.core.FieldPort``) structurally, so the composition root can
    hand a field to them without either package importing the other.
    """

    def __init__(self, field: FieldEmulator) -> None:
        """Wrap ``field`` (which must be started before it is read)."""
        self.field = field
        self._by_tls = field.network.detectors_by_intersection()

    def field_time_s(self) -> float:
        """The current field time."""
        return self.field.field_time_s

    def apply(self, tls_id: str, timing: IntersectionTiming, at_field_time_s: float) -> None:
        """Switch ``tls_id`` to ``timing`` when the field clock reaches ``at_field_time_s``."""
        self.field.apply(tls_id, timing, at_field_time_s)

    def detector_snapshot(self, tls_id: str) -> dict[str, tuple[int, float]]:
        """Detector id -> (cumulative count, occupancy % over the last field step)."""
        detectors = self._by_tls.get(tls_id)
        if detectors is None:
            raise ConfigError(
                f"traffic light {tls_id!r} is not in network {self.field.network.path.name}"
            )
        snapshot = self.field.detector_counts()
        return {
            d.id: (snapshot.readings[d.id].count, 100.0 * self.field.step_occupancy(d.id))
            for d in detectors
        }

    def measurements(self, tls_id: str) -> tuple[float, float, float]:
        """``(mean_wait_s, nox_mg, interval_end_s)`` of the last completed interval.

        Before the first interval completes: ``(0.0, 0.0, begin_s)``.
        """
        snapshot = self.field.measurements()
        m = snapshot.intersections.get(tls_id)
        if m is None or snapshot.interval_end_s is None:
            if tls_id not in self._by_tls:
                raise ConfigError(
                    f"traffic light {tls_id!r} is not in network {self.field.network.path.name}"
                )
            return 0.0, 0.0, float(self.field.config.begin_s)
        return m.mean_wait_s, m.nox_mg, snapshot.interval_end_s

    def health(self, tls_id: str) -> str:
        """``"ok"`` while the field runs, else ``"fault: <reason>"``."""
        if tls_id not in self._by_tls:
            return f"fault: intersection {tls_id} is not in the field's network"
        if not self.field.running:
            return "fault: field simulation is not running"
        return "ok"
