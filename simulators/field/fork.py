"""Ground truth in evaluation: the field forked at an activation, both plans run on it.

A real city cannot know what its previous plan would have done after a
deployment; an emulated city can. :meth:`FieldFork.start` saves the field's
whole SUMO state at the moment of activation (vehicles, signals and random
streams, :meth:`FieldEmulator.save_state`) together with the signal programs it
installed (:meth:`FieldEmulator.write_programs`), and starts two **shadows**:
fresh field emulators in their own processes that load that state, install a
set of plans on every light at the fork time, and run ``window_s`` of field
time while the field itself goes on:

- ``in_force``: the plans the deployment put in force;
- ``previous``: the plans that ran before it.

Both shadows start from the same state, seed and vehicles and install their
plans the same way (:meth:`FieldEmulator.apply` with ``force=True`` at the fork
time), so their difference is the deployment's true effect on the quantity the
twin predicts: halting vehicle-seconds on the signalised approaches and their
NOx (:class:`~simulators.field.records.WindowTotals`). Each shadow reads its
cumulative counters every ``checkpoint_s`` (what the ledger records) and its
approach totals every whole second, so the truth over any shorter horizon of
whole seconds is known too (:meth:`TrueDelta.wait_change`): a window the next
deployment cut short is compared over exactly its own length.

Processes: libsumo holds one simulation per process, so each shadow runs in a
worker process started with ``spawn`` (never ``fork``: the field's libsumo state
must not be inherited). A shadow that dies or runs past its time raises
:class:`~configs.errors.SimulationError` naming the fork time.

Evaluation only: nothing here is available to the daemon's production path.
"""

from __future__ import annotations

__all__ = [
    "IN_FORCE",
    "PREVIOUS",
    "FieldFork",
    "ShadowResult",
    "ShadowTask",
    "TrueDelta",
    "checkpoint_times",
    "merge_additional",
    "reading_plan",
    "run_shadow",
    "shadow_config",
]

import concurrent.futures as cf
import logging
import math
import multiprocessing
import os
import shutil
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Final

from configs.errors import ConfigError, SimulationError
from configs.timing import IntersectionTiming
from simulators.field.emulator import FieldEmulator, ForkPoint
from simulators.field.records import FieldCounters, WindowTotals
from simulators.field.scenario import FieldConfig

logger = logging.getLogger(__name__)

IN_FORCE: Final = "in_force"
"""Label of the shadow that runs the plans the deployment put in force."""
PREVIOUS: Final = "previous"
"""Label of the shadow that runs the plans in force before the deployment."""

_TIME_EPS: Final = 1e-6


@dataclass(frozen=True)
class ShadowResult:
    """One shadow's window.

    Attributes:
        label: :data:`IN_FORCE` or :data:`PREVIOUS`.
        totals: the whole window's approach totals.
        checkpoints: the shadow's cumulative counters at the fork time and every
            ``checkpoint_s`` after it, the last at the window's end (counters
            count from the fork: the first reading is all zeros).
        trips: the shadow's trip statistics (as
            :class:`~simulators.field.records.TripStatistics` fields) over the
            vehicles it saw, or None.
        wall_s: wall-clock seconds the shadow took, from SUMO's start (the state
            loaded) to its close.
        seconds: the cumulative approach halting and NOx (no detector counts)
            at the fork time and every whole second after it, for horizons
            between the checkpoints.
    """

    label: str
    totals: WindowTotals
    checkpoints: tuple[FieldCounters, ...]
    trips: dict[str, float] | None = None
    wall_s: float = 0.0
    seconds: tuple[FieldCounters, ...] = ()

    def window(self, horizon_s: float | None = None) -> WindowTotals:
        """The totals of the first ``horizon_s`` of the window (None: all of it).

        Raises:
            ConfigError: no reading lies ``horizon_s`` after the fork.
        """
        if horizon_s is None:
            return self.totals
        for series in (self.checkpoints, self.seconds):
            if not series:
                continue
            first = series[0]
            target = first.field_time_s + horizon_s
            for reading in series:
                if abs(reading.field_time_s - target) <= _TIME_EPS:
                    return reading.window_since(first)
        first = self.checkpoints[0]
        offered = ", ".join(f"{c.field_time_s - first.field_time_s:g}" for c in self.checkpoints)
        seconds = (
            f" and every whole second up to {self.seconds[-1].field_time_s - first.field_time_s:g}"
            if self.seconds
            else ""
        )
        raise ConfigError(
            f"shadow {self.label!r}: no reading {horizon_s:g} s after the fork at "
            f"t={first.field_time_s:g} s; horizons available: {offered}{seconds} s"
        )


def _relative(candidate: float, reference: float) -> float:
    """``candidate / reference - 1`` (0 when both are 0, +inf when only the reference is)."""
    if reference == 0:
        return 0.0 if candidate == 0 else math.inf
    return candidate / reference - 1.0


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


@dataclass(frozen=True)
class TrueDelta:
    """A deployment's true effect: the plans in force against the previous ones, same vehicles.

    Changes are relative, ``in_force / previous - 1`` (negative: the deployment
    helped), fractions, not percent.
    """

    begin_s: float
    end_s: float
    in_force: ShadowResult
    previous: ShadowResult

    def wait_change(
        self, horizon_s: float | None = None, only: frozenset[str] | None = None
    ) -> float:
        """Relative change of halting vehicle-seconds on the approaches.

        Args:
            horizon_s: over the first ``horizon_s`` after the fork (a multiple of
                the checkpoint period, or the window); None: the whole window.
            only: these intersections (None: every one).

        Raises:
            ConfigError: no checkpoint at ``horizon_s``.
        """
        return _relative(
            self.in_force.window(horizon_s).wait_veh_s(only),
            self.previous.window(horizon_s).wait_veh_s(only),
        )

    def nox_change(
        self, horizon_s: float | None = None, only: frozenset[str] | None = None
    ) -> float:
        """Relative change of NOx on the approaches (arguments as :meth:`wait_change`)."""
        return _relative(
            self.in_force.window(horizon_s).total_nox_mg(only),
            self.previous.window(horizon_s).total_nox_mg(only),
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON for the ledger: changes, per-light window totals, totals per checkpoint.

        A change that is not finite (nothing halted under the previous plans) is
        ``null``.
        """
        return {
            "begin_s": self.begin_s,
            "end_s": self.end_s,
            "wait_change": _finite(self.wait_change()),
            "nox_change": _finite(self.nox_change()),
            "shadows": {r.label: _shadow_dict(r) for r in (self.in_force, self.previous)},
        }


def _shadow_dict(result: ShadowResult) -> dict[str, Any]:
    first = result.checkpoints[0]
    return {
        "wait_veh_s": result.totals.wait_veh_s(),
        "nox_mg": result.totals.total_nox_mg(),
        "halting_veh_s": dict(sorted(result.totals.halting_veh_s.items())),
        "nox_mg_by_tls": dict(sorted(result.totals.nox_mg.items())),
        "checkpoints": [
            {
                "t_s": c.field_time_s,
                "wait_veh_s": c.window_since(first).wait_veh_s(),
                "nox_mg": c.window_since(first).total_nox_mg(),
            }
            for c in result.checkpoints
        ],
        "trips": result.trips,
        "wall_s": result.wall_s,
    }


# ------------------------------------------------------------------ pure parts


def checkpoint_times(begin_s: float, window_s: float, checkpoint_s: float) -> tuple[float, ...]:
    """Field times of a shadow's readings after the fork: every ``checkpoint_s``, then the end.

    Raises:
        ConfigError: a window or period that is not positive and finite.
    """
    if not (window_s > 0 and math.isfinite(window_s)):
        raise ConfigError(f"fork window_s must be positive and finite, got {window_s}")
    if not (checkpoint_s > 0 and math.isfinite(checkpoint_s)):
        raise ConfigError(f"fork checkpoint_s must be positive and finite, got {checkpoint_s}")
    end = begin_s + window_s
    times = []
    k = 1
    while begin_s + k * checkpoint_s < end - _TIME_EPS:
        times.append(begin_s + k * checkpoint_s)
        k += 1
    times.append(end)
    return tuple(times)


def reading_plan(
    begin_s: float, window_s: float, checkpoint_s: float
) -> tuple[tuple[float, bool, bool], ...]:
    """A shadow's readings after the fork, in time order: ``(time, checkpoint, whole second)``.

    Checkpoints are :func:`checkpoint_times`; approach totals are read at every
    whole second after the fork within the window. A time that is both is one
    entry.

    Raises:
        ConfigError: a window or period that is not positive and finite.
    """
    marks = checkpoint_times(begin_s, window_s, checkpoint_s)
    plan: dict[float, tuple[bool, bool]] = {}
    for k in range(1, math.floor(window_s + _TIME_EPS) + 1):
        plan[begin_s + k] = (False, True)
    for m in marks:
        near = next((t for t in plan if abs(t - m) <= _TIME_EPS), None)
        if near is None:
            plan[m] = (True, False)
        else:
            plan[near] = (True, True)
    return tuple((t, *plan[t]) for t in sorted(plan))


def shadow_config(
    config: FieldConfig,
    *,
    fork_s: float,
    route_files: tuple[Path, ...],
    additional_path: Path,
    state_path: Path,
    work_dir: Path,
) -> FieldConfig:
    """The configuration of a shadow that continues ``config``'s field from a saved state.

    The shadow loads the route files the field loaded (an expanded demand
    profile is not expanded again; its scale is already in the file), the
    field's loops and programs (``additional_path``), and the state, and starts
    at the fork time with the same seed, step, interval, teleport rule and events.

    Raises:
        ConfigError: a fork time that is not a whole second (SUMO's ``--begin``
            is a field of whole seconds here).
    """
    begin = round(fork_s)
    if abs(fork_s - begin) > _TIME_EPS:
        raise ConfigError(
            f"a fork needs a whole-second field time, got t={fork_s:g} s; "
            "fork after a step that ends on a whole second"
        )
    return replace(
        config,
        routes_path=route_files or None,
        demand_profile_path=None,
        # a profile's scale is baked into the expanded file; --scale applies to route files only
        demand_scale=config.demand_scale if config.routes_path is not None else 1.0,
        detectors_path=additional_path,
        begin_s=begin,
        backend="libsumo",
        work_dir=work_dir,
        extra_args=(*config.extra_args, "--load-state", str(state_path)),
    )


def merge_additional(detectors_path: Path, programs_path: Path, out_path: Path) -> Path:
    """One additional file with the field's loops and the programs it installed.

    The field gives SUMO one additional file (``FieldConfig.detectors_path``); a
    shadow needs both. Relative output paths in the loops resolve next to
    ``out_path``, so each shadow's loop outputs stay in its own directory.

    Raises:
        SimulationError: either file is unreadable.
    """
    try:
        root = ET.parse(detectors_path).getroot()
        programs = ET.parse(programs_path).getroot()
    except (ET.ParseError, OSError) as e:
        raise SimulationError(
            f"fork could not read {detectors_path} or {programs_path}: {e}"
        ) from e
    for elem in programs:
        root.append(elem)
    ET.ElementTree(root).write(out_path, encoding="UTF-8", xml_declaration=True)
    return out_path


# ------------------------------------------------------------ in the shadow


@dataclass(frozen=True)
class ShadowTask:
    """What a shadow process is sent (picklable)."""

    label: str
    config: FieldConfig
    plans: Mapping[str, IntersectionTiming]
    window_s: float
    checkpoint_s: float
    point: ForkPoint
    """What the shadow adopts from the field (:meth:`FieldEmulator.adopt`)."""


def run_shadow(task: ShadowTask) -> ShadowResult:
    """Run one shadow: load the state, apply the plans, step the window, read the counters.

    The shadow adopts the field's plans and adaptive controllers and applies its
    plans at the fork time the way the field would (:meth:`FieldEmulator.apply`):
    a plan the field already runs changes nothing, so the shadow continues the
    field. A light it could not adopt (under direct signal control in the field)
    gets its plan installed afresh (``force``).

    Runs in a worker process (it starts a libsumo simulation).

    Raises:
        SimulationError: SUMO failed to start, load the state or step.
    """
    t0 = time.perf_counter()
    field = FieldEmulator(task.config)
    try:
        field.start()
        fork_s = field.field_time_s
        adopted = field.adopt(task.point)
        for tls_id, timing in sorted(task.plans.items()):
            field.apply(tls_id, timing, fork_s, force=tls_id not in adopted)
        readings = [field.counters()]
        seconds = [field.approach_counters()]
        for t, read_all, read_approaches in reading_plan(fork_s, task.window_s, task.checkpoint_s):
            field.step_until(t)
            if read_approaches:
                seconds.append(field.approach_counters())
            if read_all:
                readings.append(field.counters())
    finally:
        field.close()
    try:
        trips: dict[str, float] | None = asdict(field.trip_statistics())
    except SimulationError:  # SUMO wrote no tripinfo
        trips = None
    return ShadowResult(
        label=task.label,
        totals=readings[-1].window_since(readings[0]),
        checkpoints=tuple(readings),
        trips=trips,
        wall_s=time.perf_counter() - t0,
        seconds=tuple(seconds),
    )


# -------------------------------------------------------------- in the field


class FieldFork:
    """A fork of the field at one activation: two shadows running while the field goes on.

    Use :meth:`start`; then :meth:`result` (blocks until both shadows finish) or
    :meth:`cancel`.
    """

    def __init__(
        self,
        begin_s: float,
        window_s: float,
        pool: cf.ProcessPoolExecutor,
        futures: Mapping[str, cf.Future[ShadowResult]],
        remove_dir: Path | None = None,
    ) -> None:
        """Use :meth:`start`."""
        self.begin_s = begin_s
        self.window_s = window_s
        self._remove_dir = remove_dir
        self._pool: cf.ProcessPoolExecutor | None = pool
        self._futures = dict(futures)
        self._result: TrueDelta | None = None

    @classmethod
    def start(
        cls,
        field: FieldEmulator,
        in_force: Mapping[str, IntersectionTiming],
        previous: Mapping[str, IntersectionTiming],
        window_s: float,
        *,
        work_dir: Path,
        checkpoint_s: float = 60.0,
        keep_files: bool = False,
        mp_context: str = "spawn",
    ) -> FieldFork:
        """Save the field's state now and start the two shadows.

        Args:
            field: the running field (its lock is held only while the state and
                programs are written).
            in_force: tls id -> the plan the deployment put in force.
            previous: tls id -> the plan that ran before it (the same lights).
            window_s: field time each shadow runs after the fork.
            work_dir: where the state and the shadows' files go (a new directory
                per fork, ``fork-t<time>-*``).
            checkpoint_s: period of the shadows' counter readings.
            keep_files: keep that directory after :meth:`result` or :meth:`cancel`
                (state, programs, each shadow's tripinfo: a few MB on the
                district); by default it is removed.
            mp_context: ``spawn`` or ``forkserver`` (never ``fork``).

        Raises:
            ConfigError: lights unknown to the field, plan sets for different
                lights, a bad window or period, or a fork time that is not a
                whole second.
            SimulationError: the field is not running or could not save its state.
        """
        if mp_context not in ("spawn", "forkserver"):
            raise ConfigError(f"mp_context must be 'spawn' or 'forkserver' (got {mp_context!r})")
        _check_plans(field, in_force, previous)
        checkpoint_times(field.field_time_s, window_s, checkpoint_s)  # validate before any file
        Path(work_dir).mkdir(parents=True, exist_ok=True)
        directory = Path(tempfile.mkdtemp(prefix=f"fork-t{field.field_time_s:g}-", dir=work_dir))
        try:
            fork_s, save_s, pool, futures = _launch(
                field, directory, in_force, previous, window_s, checkpoint_s, mp_context
            )
        except BaseException:
            shutil.rmtree(directory, ignore_errors=True)
            raise
        logger.info(
            "field forked at t=%.0f s (state and programs saved in %.3f s): %d lights, "
            "%.0f s window",
            fork_s,
            save_s,
            len(in_force),
            window_s,
        )
        return cls(fork_s, window_s, pool, futures, None if keep_files else directory)

    def result(self, timeout_s: float | None = None) -> TrueDelta:
        """Wait for both shadows and return the true delta.

        Raises:
            SimulationError: a shadow failed or died, or ``timeout_s`` passed
                (the shadows are then stopped), or the fork was cancelled.
        """
        if self._result is not None:
            return self._result
        if self._pool is None:
            raise SimulationError(
                f"fork at t={self.begin_s:g} s was cancelled or failed; it has no result"
            )
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        results: dict[str, ShadowResult] = {}
        try:
            for label, future in self._futures.items():
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                try:
                    results[label] = future.result(timeout=left)
                except cf.TimeoutError as e:
                    raise SimulationError(
                        f"fork at t={self.begin_s:g} s: shadow {label!r} did not finish its "
                        f"{self.window_s:g} s window within {timeout_s:g} s; stopped it"
                    ) from e
                except BrokenProcessPool as e:
                    raise SimulationError(
                        f"fork at t={self.begin_s:g} s: the process of shadow {label!r} died "
                        "(SUMO crashed or ran out of memory; see its stderr)"
                    ) from e
                except Exception as e:  # the shadow's own error, raised again here
                    raise SimulationError(
                        f"fork at t={self.begin_s:g} s: shadow {label!r} failed: {e}"
                    ) from e
        finally:
            self._close(kill=len(results) < len(self._futures))
        self._result = TrueDelta(
            begin_s=self.begin_s,
            end_s=self.begin_s + self.window_s,
            in_force=results[IN_FORCE],
            previous=results[PREVIOUS],
        )
        return self._result

    def done(self) -> bool:
        """Whether both shadows have finished (or the fork was cancelled)."""
        return self._pool is None or all(f.done() for f in self._futures.values())

    def cancel(self) -> None:
        """Stop both shadows now (no-op once the result is in)."""
        self._close(kill=True)

    def _close(self, *, kill: bool) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        if kill:
            _kill(pool)
        else:
            pool.shutdown(wait=True)
        if self._remove_dir is not None:
            shutil.rmtree(self._remove_dir, ignore_errors=True)


def _launch(
    field: FieldEmulator,
    directory: Path,
    in_force: Mapping[str, IntersectionTiming],
    previous: Mapping[str, IntersectionTiming],
    window_s: float,
    checkpoint_s: float,
    mp_context: str,
) -> tuple[float, float, cf.ProcessPoolExecutor, dict[str, cf.Future[ShadowResult]]]:
    """Save the fork's files into ``directory`` and submit both shadows."""
    state, programs = directory / "state.xml", directory / "programs.add.xml"
    t0 = time.perf_counter()
    point = field.save_fork(state, programs)
    save_s = time.perf_counter() - t0
    # SUMO reads route files as it goes (--route-steps); the field may close (and
    # remove its own work directory) while the shadows run
    routes = tuple(
        _keep(route, directory / "routes" / f"{i}-{route.name}")
        for i, route in enumerate(field.route_files)
    )
    tasks = []
    for label, plans in ((IN_FORCE, in_force), (PREVIOUS, previous)):
        shadow_dir = directory / label
        shadow_dir.mkdir()
        additional = merge_additional(field.detectors_path, programs, shadow_dir / "field.add.xml")
        config = shadow_config(
            field.config,
            fork_s=point.field_time_s,
            route_files=routes,
            additional_path=additional,
            state_path=state,
            work_dir=shadow_dir,
        )
        tasks.append(ShadowTask(label, config, dict(plans), window_s, checkpoint_s, point))
    pool = cf.ProcessPoolExecutor(
        max_workers=len(tasks), mp_context=multiprocessing.get_context(mp_context)
    )
    try:
        futures = {t.label: pool.submit(run_shadow, t) for t in tasks}
    except BaseException:
        _kill(pool)
        raise
    return point.field_time_s, save_s, pool, futures


def _keep(path: Path, target: Path) -> Path:
    """``path`` at ``target`` too: a hard link where the file system allows, else a copy."""
    target.parent.mkdir(exist_ok=True)
    try:
        os.link(path, target)
    except OSError:
        try:
            shutil.copyfile(path, target)
        except OSError as e:
            raise SimulationError(f"fork could not keep the field's route file {path}: {e}") from e
    return target


def _check_plans(
    field: FieldEmulator,
    in_force: Mapping[str, IntersectionTiming],
    previous: Mapping[str, IntersectionTiming],
) -> None:
    known = field.network.intersections
    for name, plans in ((IN_FORCE, in_force), (PREVIOUS, previous)):
        unknown = sorted(set(plans) - set(known))
        if unknown:
            raise ConfigError(
                f"fork {name} plans name lights {unknown} that are not in network "
                f"{field.network.path.name}"
            )
        for tls_id, timing in plans.items():
            links = len(known[tls_id].base.phases[0].state)
            if any(len(phase.state) != links for phase in timing.phases):
                raise ConfigError(
                    f"fork {name} plan for {tls_id!r} has phase states that do not fit its "
                    f"{links} signals"
                )
    if set(in_force) != set(previous):
        raise ConfigError(
            "fork: in_force and previous plans must cover the same lights (a paired "
            f"comparison); only in one: {sorted(set(in_force) ^ set(previous))}"
        )


def _kill(pool: cf.ProcessPoolExecutor) -> None:
    # ProcessPoolExecutor has no public way to stop busy workers before 3.14
    # (terminate_workers); killing them is the only way not to wait on a running shadow.
    processes = getattr(pool, "_processes", None) or {}
    for proc in list(processes.values()):
        if proc.is_alive():
            proc.kill()
    pool.shutdown(wait=False, cancel_futures=True)
