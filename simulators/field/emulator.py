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

__all__ = ["FieldEmulator", "ForkPoint"]

import copy
import gzip
import logging
import math
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from types import ModuleType
from typing import Any, Final

from configs.errors import ConfigError, SimulationError
from configs.timing import IntersectionTiming
from simulators.field.measurements import FieldMeasurements
from simulators.field.programs import write_program_file
from simulators.field.records import (
    ActivePlan,
    DetectorSnapshot,
    FieldCounters,
    MeasurementSnapshot,
    TripStatistics,
    parse_tripinfo,
)
from simulators.field.scenario import FieldConfig, check_config, sumo_command
from simulators.network import NetworkModel, ensure_detectors, load_network
from simulators.signal_program import AdaptiveRunner, build_logic, install_program, phase_at

logger = logging.getLogger(__name__)

_SIGNAL_CHARS: Final = frozenset("rygGsuoO")
"""SUMO's signal letters: red, yellow, green (minor, major), right-turn arrow, red-yellow, off."""

_STATE_PRECISION: Final = 10
"""Decimals of the values in a saved state (SUMO's ``--save-state.precision``; its default is 2)."""

_libsumo_owner_lock = threading.Lock()
_libsumo_in_use = False
_libsumo_rng_carry: dict[str, str] | None = {}
"""SUMO's global random streams' draw counts when this process's last libsumo simulation closed.

libsumo reseeds its global random streams (``routeHandler``, ``device``, ...) when
a simulation starts, but keeps counting their draws from where the process's
previous simulation left them, and a saved state (``--save-state.rng``) holds
those counts: a fork loading it replays the earlier simulations' draws too and
leaves the field's random streams after a few seconds. Empty: no libsumo
simulation has closed here (nothing carried); None: one closed without its counts
being read (a state saved by a later field would be wrong).
"""

_RNG_STATE: Final = re.compile(r"<rngState\b([^>]*)>")
_RNG_ATTRIBUTE: Final = re.compile(r'([\w.]+)="([^"]*)"')


@dataclass(frozen=True)
class ForkPoint:
    """What a fork of the field takes over, besides the SUMO state (evaluation only).

    Attributes:
        field_time_s: when the state was saved.
        active: every light's :meth:`FieldEmulator.active_plan` then.
        adaptive: a copy of the field's adaptive controllers then (their
            real-time logic lives in this process, not in SUMO's state).
    """

    field_time_s: float
    active: Mapping[str, ActivePlan]
    adaptive: AdaptiveRunner


@dataclass
class _Pending:
    tls_id: str
    timing: IntersectionTiming
    at_s: float
    force: bool = False


class FieldEmulator:
    """The city: one SUMO simulation stepped in (scaled) real time or as fast as possible."""

    def __init__(self, config: FieldConfig) -> None:
        """Load the network and detectors; SUMO starts in :meth:`start`."""
        self.config = config
        check_config(config)
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
        self._route_files: tuple[Path, ...] | None = None
        self._net_programs: frozenset[tuple[str, str]] = frozenset()
        self._lock = threading.RLock()
        self._api: Any = None
        self._backend_module: ModuleType | None = None
        self._label = f"field-{id(self)}"
        self._time_s = float(config.begin_s)
        self._closed = False
        self._trip_stats: TripStatistics | None = None
        self._tripinfo = self._work_dir / "tripinfo.xml"
        self._measure = FieldMeasurements(
            self.network, config.interval_s, config.step_length_s, config.begin_s
        )
        # plans
        self._pending: list[_Pending] = []
        self._active: dict[str, ActivePlan] = {
            t: ActivePlan(t, i.base.program_id, IntersectionTiming.from_base(i.base), None)
            for t, i in self.network.intersections.items()
        }
        self._program_seq = 0
        self._adaptive = AdaptiveRunner()
        # what a saved state's random-stream counts carry from earlier simulations of
        # this process (_libsumo_rng_carry); None: not known
        self._rng_offset: dict[str, str] | None = {}
        # real-time runner
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    # ------------------------------------------------------------ lifecycle

    def _command(self) -> list[str]:
        cmd = sumo_command(self.config, self._work_dir, self._det_path, self._tripinfo)
        if not any(a.split("=", 1)[0] == "--save-state.precision" for a in self.config.extra_args):
            # SUMO writes a state's positions and speeds with 2 decimals by default; a
            # fork loaded from it then drifts from the field (NOx first)
            cmd += ["--save-state.precision", str(_STATE_PRECISION)]
        return cmd

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
            self._route_files = _route_files(cmd)
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
                    # a loaded state sets the counts to its own; a fresh start keeps
                    # counting from the process's previous simulation
                    loads_state = any(
                        a == "--load-state" or a.startswith("--load-state=") for a in cmd
                    )
                    carry = _libsumo_rng_carry
                    self._rng_offset = (
                        {} if loads_state else (None if carry is None else dict(carry))
                    )
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
            self._net_programs = self._program_ids()
            # a state loaded from another field may bring its programs (a fork): new ones
            # must not reuse their ids
            self._program_seq = max(
                [self._program_seq]
                + [
                    int(p.removeprefix("signaltwin-"))
                    for _, p in self._net_programs
                    if p.startswith("signaltwin-") and p.removeprefix("signaltwin-").isdigit()
                ]
            )
            self._subscribe()
            if self.config.events is not None:
                self.config.events.start(self._api, self._time_s)
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
        self._measure.subscribe(self._api)

    def close(self) -> None:
        """Stop the runner thread, end SUMO and compute the trip statistics."""
        global _libsumo_in_use, _libsumo_rng_carry
        self.stop_thread()
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._api is not None:
                # the next libsumo simulation of this process counts on from here
                carry = self._raw_rng_state() if self.config.backend == "libsumo" else None
                try:
                    self._api.close()
                except Exception as e:  # pragma: no cover - depends on SUMO state
                    logger.warning("closing SUMO failed: %s", e)
                if self.config.backend == "libsumo":
                    with _libsumo_owner_lock:
                        _libsumo_in_use = False
                        _libsumo_rng_carry = carry
                self._api = None
                if self._tripinfo.is_file():
                    self._trip_stats = parse_tripinfo(self._tripinfo)
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
            if self.config.events is not None:
                self.config.events.step(api, self._time_s)
            # Plans due now take effect before the next step, so the light shows
            # the plan's phase for this field time.
            self._apply_due()
            if self._adaptive.active:
                self._adaptive.step(api, self._time_s, self._measure.sensors(api))
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
        self._measure.collect(self._api, self._time_s)

    def detector_counts(self) -> DetectorSnapshot:
        """Cumulative counts and the last completed interval's count and occupancy."""
        with self._lock:
            snapshot = self._measure.detector_counts(self._time_s)
            events = self.config.events
            return snapshot if events is None else events.report(snapshot)

    def counters(self) -> FieldCounters:
        """Cumulative approach halting and NOx, and the loops' reported counts, now.

        Halting and NOx are the approach sensors' true totals; detector counts are
        what the loops report (an event day's faults included), as a controller
        would keep them. Two readings give a window (:meth:`FieldCounters.window_since`).
        """
        with self._lock:
            true = self._measure.counters(self._time_s)
            if self.config.events is None:
                return true
            reported = self.detector_counts().readings
            return replace(true, detector_counts={d: r.count for d, r in reported.items()})

    def approach_counters(self) -> FieldCounters:
        """Cumulative approach halting and NOx now, without the loops' counts (cheap to read).

        What a shadow reads every second (:mod:`simulators.field.fork`); use
        :meth:`counters` for what a controller reports.
        """
        with self._lock:
            true = self._measure.counters(self._time_s)
        return replace(true, detector_counts={})

    def save_state(self, path: Path) -> Path:
        """Save SUMO's whole state now (vehicles, signals, random streams) to ``path``.

        Evaluation only: a shadow started from it (``--load-state``) is a fork of
        the city at this moment (:mod:`simulators.field.fork`).

        Raises:
            SimulationError: the field is not running, or SUMO could not write it.
        """
        with self._lock:
            api = self._require()
            offset = self._rng_offset
            if offset is None:
                raise SimulationError(
                    "a libsumo simulation that ran earlier in this process closed without "
                    "its random streams' draw counts being read, so a state saved now would "
                    "not continue this field; save states from a fresh process or use "
                    "backend='traci'"
                )
            try:
                api.simulation.saveState(str(path))
            except Exception as e:
                raise SimulationError(f"field could not save its state to {path}: {e}") from e
            if any(v.isdigit() and int(v) for v in offset.values()):
                _write_state_text(path, _corrected_rng_state(_read_state_text(path), offset))
            return Path(path)

    def _raw_rng_state(self) -> dict[str, str] | None:
        """The global random streams as SUMO saves them now (None: it could not say)."""
        path = self._work_dir / f".rng-state-{id(self)}.xml"
        try:
            self._api.simulation.saveState(str(path))
            return _rng_state_of(_read_state_text(path))
        except Exception as e:  # noqa: BLE001 - libsumo raises its own TraCIException
            logger.warning("field could not read its random streams' counts at close: %s", e)
            return None
        finally:
            path.unlink(missing_ok=True)

    def save_fork(self, state_path: Path, programs_path: Path) -> ForkPoint:
        """:meth:`save_state` and :meth:`write_programs` at one moment, and what a fork adopts.

        Evaluation only (:mod:`simulators.field.fork`): the field cannot step
        between the files and the bookkeeping.

        Raises:
            SimulationError: the field is not running, or a file could not be written.
        """
        with self._lock:
            self.save_state(state_path)
            self.write_programs(programs_path)
            return ForkPoint(self._time_s, dict(self._active), copy.deepcopy(self._adaptive))

    def adopt(self, point: ForkPoint) -> frozenset[str]:
        """Take over the plans of the field this one was forked from (see :class:`ForkPoint`).

        Evaluation only: a fork (started with ``--load-state`` and the field's
        programs) runs the field's programs, but its own bookkeeping says base
        program and its adaptive lights have no real-time logic. Adopted,
        :meth:`apply` treats each light as the field would: the plan it runs
        already changes nothing, an actuated plan is re-tuned in place, and
        adaptive lights decide on as the field's did. Lights under
        :meth:`set_signal_state` are not adopted (SUMO holds their last state);
        give them a plan with ``force=True``.

        Returns:
            The lights adopted.

        Raises:
            ConfigError: a light that is not in the network.
            SimulationError: the field is not running.
        """
        with self._lock:
            self._require()
            unknown = sorted(set(point.active) - set(self._active))
            if unknown:
                raise ConfigError(
                    f"traffic lights {unknown} are not in network {self.network.path.name}"
                )
            adopted = []
            for tls_id, plan in point.active.items():
                if plan.externally_controlled:
                    continue
                if plan.timing.mode == "adaptive" and tls_id not in point.adaptive:
                    continue
                self._active[tls_id] = plan
                adopted.append(tls_id)
            self._adaptive = copy.deepcopy(point.adaptive)
            for tls_id in set(point.active) - set(adopted):
                self._adaptive.release(tls_id)
            return frozenset(adopted)

    @property
    def route_files(self) -> tuple[Path, ...]:
        """The route files SUMO loaded (an expanded demand profile's file included).

        A fork loads exactly these, so that it meets the same vehicles without
        expanding the demand again.

        Raises:
            SimulationError: the field has not been started.
        """
        with self._lock:
            if self._route_files is None:
                raise SimulationError("field has not been started; its route files are not known")
            return self._route_files

    @property
    def detectors_path(self) -> Path:
        """The additional file with the field's induction loops."""
        return self._det_path

    def _program_ids(self) -> frozenset[tuple[str, str]]:
        tl = self._api.trafficlight
        return frozenset(
            (str(tls_id), str(logic.programID))
            for tls_id in tl.getIDList()
            for logic in tl.getAllProgramLogics(tls_id)
        )

    def write_programs(self, path: Path) -> Path:
        """Write every signal program installed since the start as a SUMO additional file.

        Evaluation only, with :meth:`save_state`: a saved state names the program
        each light runs, and SUMO refuses to load a state whose program it does
        not know. A fork loads this file (``-a``) with the state, so the programs
        the field installed through TraCI (plans, ``online``) exist there too.
        The file holds an empty ``<additional/>`` when no program was installed.

        Raises:
            SimulationError: the field is not running, or a program has a type
                this method cannot write.
        """
        with self._lock:
            tl = self._require().trafficlight
            installed = [
                (tls_id, logic)
                for tls_id in sorted(self.network.intersections)
                for logic in tl.getAllProgramLogics(tls_id)
                if (tls_id, str(logic.programID)) not in self._net_programs
            ]
            return write_program_file(installed, Path(path))

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
            return self._measure.lane_halting(lane_id)

    def step_occupancy(self, detector_id: str) -> float:
        """Fraction of the last simulation step ``detector_id`` was occupied (0..1)."""
        with self._lock:
            return self._measure.step_occupancy(detector_id)

    def measurements(self) -> MeasurementSnapshot:
        """Per-intersection mean wait and NOx of the last completed interval."""
        with self._lock:
            last = self._measure.last_interval()
            if last is None:
                return MeasurementSnapshot(self._time_s, None, None, {})
            return replace(last, field_time_s=self._time_s)

    # ---------------------------------------------------------------- plans

    def apply(
        self,
        tls_id: str,
        timing: IntersectionTiming,
        at_field_time_s: float,
        *,
        force: bool = False,
    ) -> None:
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

        ``force=True`` installs the plan even when the bookkeeping says the
        light already runs it: a fork of the field (:mod:`simulators.field.fork`)
        starts from a saved state whose programs this emulator did not apply,
        so its bookkeeping (the base program) says nothing about what runs.

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
            self._pending.append(_Pending(tls_id, timing, float(at_field_time_s), force))
            self._pending.sort(key=lambda p: p.at_s)
            if self._api is not None:
                self._apply_due()

    def _apply_due(self) -> None:
        while self._pending and self._pending[0].at_s <= self._time_s + 1e-9:
            item = self._pending.pop(0)
            self._apply_now(item.tls_id, item.timing, item.force)

    def _apply_now(self, tls_id: str, timing: IntersectionTiming, force: bool = False) -> None:
        active = self._active[tls_id]
        if not force and not active.externally_controlled and active.timing == timing:
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
                install_program(
                    self._api, tls_id, timing, program_id, index, remaining, self._adaptive
                )
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
                self._adaptive.release(tls_id)
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


def _read_state_text(path: Path) -> str:
    path = Path(path)
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rt", encoding="utf-8") as f:
                return f.read()
        if path.suffix == ".sbx":
            raise SimulationError(f"{path}: a binary state's random streams cannot be read here")
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise SimulationError(f"could not read the saved state {path}: {e}") from e


def _write_state_text(path: Path, text: str) -> None:
    path = Path(path)
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "wt", encoding="utf-8") as f:
                f.write(text)
        else:
            path.write_text(text, encoding="utf-8")
    except OSError as e:
        raise SimulationError(f"could not write the saved state {path}: {e}") from e


def _rng_state_of(text: str) -> dict[str, str]:
    """A saved state's ``<rngState>`` attributes: each global random stream's draws or state."""
    match = _RNG_STATE.search(text)
    return {} if match is None else dict(_RNG_ATTRIBUTE.findall(match.group(1)))


def _corrected_rng_state(text: str, offset: Mapping[str, str]) -> str:
    """A saved state with the draws of earlier simulations taken off its random streams' counts.

    SUMO saves a random stream as the number of draws since it was seeded (a
    fork reseeds and skips that many) or, past a million draws, as the
    generator's whole state, which is exact as it stands. ``offset`` is what the
    process's earlier simulations left in the counts (:data:`_libsumo_rng_carry`).

    Raises:
        SimulationError: a count below its offset (an earlier simulation's draws
            were not recorded).
    """
    match = _RNG_STATE.search(text)
    if match is None:
        return text

    def fixed(attribute: re.Match[str]) -> str:
        name, value = attribute.group(1), attribute.group(2)
        carried = offset.get(name, "0")
        if not value.isdigit():
            return attribute.group(0)  # the generator's whole state
        if not carried.isdigit() or int(value) < int(carried):
            raise SimulationError(
                f"saved state: random stream {name!r} drew {value} times, fewer than the "
                f"{carried} an earlier simulation of this process left; a libsumo simulation "
                "ran here that the field did not see close"
            )
        return f'{name}="{int(value) - int(carried)}"'

    element = _RNG_ATTRIBUTE.sub(fixed, match.group(0))
    return text[: match.start()] + element + text[match.end() :]


def _route_files(command: list[str]) -> tuple[Path, ...]:
    """The route files named by a SUMO command line's ``-r`` option."""
    for flag, value in zip(command, command[1:], strict=False):
        if flag in ("-r", "--route-files"):
            return tuple(Path(f) for f in value.split(",") if f)
    return ()
