"""One (plan, seed) run of the twin: the SUMO loop and what it measures.

Each run is ``warmup_s`` under the **current** plan (the network fills as it is
now), then ``horizon_s`` under the plan being evaluated, which is what is measured.
:func:`run_plan` is what every worker process runs (libsumo holds one
simulation per process).

Measured per run (over the horizon only, from SUMO ``edgeData`` outputs plus a
few per-step counters):

* ``mean_wait_s``: waiting (halting) vehicle-seconds on the road network plus
  vehicle-seconds spent in the insertion backlog, per vehicle served (vehicles in
  the network or waiting to enter at the start of the horizon, plus those loaded
  during it). Counting the backlog matters: a plan that keeps vehicles from
  entering must not look better for it.
* ``mean_delay_s``: time loss (against free-flow speed) plus backlog time, per vehicle.
* ``throughput_veh``: vehicles that completed their trip during the horizon.
* ``nox_mg``: total NOx (HBEFA, from each vehicle's emission class) on every edge
  and junction, plus the backlog's vehicle-seconds times the mean idle NOx rate of
  the halted vehicles in the network (a held-back vehicle idles upstream).
* per intersection: waiting vehicle-seconds, vehicles and NOx on its approach edges.

A run in which nothing moves (no arrival and a mean speed below
``gridlock_speed_mps`` for ``gridlock_s``) or whose insertion backlog exceeds
``max_backlog_veh`` stops early and its plan is reported ``failed`` with the
reason; teleporting is always off, so a gridlock stays a gridlock.
"""

from __future__ import annotations

__all__ = ["TWIN_REVISION", "RunTask", "run_plan", "twin_identity"]

import logging
import math
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from configs.errors import SimulationError
from configs.timing import IntersectionTiming
from simulators.signal_program import AdaptiveRunner
from simulators.sumo import SUMO_VERSION
from simulators.twin.plans import CURRENT, EVALUATED_PROGRAM_ID, apply_timing
from simulators.twin.request import RecordSpec, WhatIfRequest
from simulators.twin.results import Recording, RunMetrics

#: What a plan does in the twin. Bump it when the SUMO loop, how plans are
#: installed or what is measured changes, so that models learnt from the old
#: twin's runs (the screening surrogate) are refused until retrained.
#: 2: actuated plans run as actuated programs; the policy's action scheme of 2026-12.
TWIN_REVISION = 2


def twin_identity(mesoscopic: bool = False) -> str:
    """The twin a what-if runs on, as a string recorded with what was learnt from it."""
    model = "mesoscopic" if mesoscopic else "microscopic"
    return f"signaltwin twin r{TWIN_REVISION}, SUMO {SUMO_VERSION}, {model}"


logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunTask:
    """One (plan, seed) simulation, as sent to a worker process."""

    request: WhatIfRequest
    plan: str
    seed: int
    record: bool
    marker_dir: str | None = None


def _frame_steps(request: WhatIfRequest, spec: RecordSpec) -> list[int]:
    step = request.step_length_s
    end = request.warmup_s + request.horizon_s
    window = request.horizon_s if spec.window_s is None else min(spec.window_s, request.horizon_s)
    start = end - window
    n = spec.frames
    steps = {max(1, math.ceil((start + (i + 1) * window / n) / step - 1e-9)) for i in range(n)}
    return sorted(steps)  # distinct: the renderer needs strictly increasing times


def _edge_data_file(directory: Path, begin: float, end: float) -> Path:
    path = directory / "measure.add.xml"
    path.write_text(
        "<additional>\n"
        f'  <edgeData id="twin_edges" file="{directory / "edges.xml"}" begin="{begin}" '
        f'end="{end}" withInternal="true" excludeEmpty="true"/>\n'
        f'  <edgeData id="twin_emissions" type="emissions" file="{directory / "emissions.xml"}" '
        f'begin="{begin}" end="{end}" withInternal="true" excludeEmpty="true"/>\n'
        "</additional>\n",
        encoding="utf-8",
    )
    return path


def _read_edge_values(path: Path, attributes: Sequence[str]) -> dict[str, tuple[float, ...]]:
    out: dict[str, tuple[float, ...]] = {}
    if not path.is_file():
        return out
    for edge in ET.parse(path).getroot().iter("edge"):
        out[edge.get("id", "")] = tuple(float(edge.get(a, "0")) for a in attributes)
    return out


def run_plan(task: RunTask) -> RunMetrics:
    """Simulate one (plan, seed) in this process with libsumo and measure it.

    This is what each worker process runs; it is also usable directly (one
    simulation at a time per process).

    Raises:
        SimulationError: SUMO failed to load or run the scenario (naming plan and seed).
    """
    try:
        return _simulate(task)
    except SimulationError as e:
        raise SimulationError(f"plan {task.plan!r} seed {task.seed}: {e}") from None
    except Exception as e:  # libsumo raises its own exception types
        raise SimulationError(
            f"plan {task.plan!r} seed {task.seed}: SUMO failed: {type(e).__name__}: {e}"
        ) from None


def _simulate(task: RunTask) -> RunMetrics:
    import libsumo  # only worker code touches SUMO

    request = task.request
    started = time.perf_counter()
    step_s = request.step_length_s
    warmup_steps = round(request.warmup_s / step_s)
    total_steps = warmup_steps + round(request.horizon_s / step_s)
    start_s = float(request.begin_s)
    begin_s, end_s = start_s + warmup_steps * step_s, start_s + total_steps * step_s
    plan = request.current if task.plan == CURRENT else request.candidates[task.plan]
    with tempfile.TemporaryDirectory(prefix="signaltwin-twin-") as tmp:
        directory = Path(tmp)
        measure = _edge_data_file(directory, begin_s, end_s)
        cmd = [
            "sumo",
            "-n", request.network,
            "-r", request.demand,
            "-a", ",".join([*request.additional, str(measure)]),
            "--seed", str(task.seed),
            "--step-length", repr(step_s),
            "--begin", repr(start_s),
            "--end", repr(end_s),
            "--time-to-teleport", "-1",
            "--ignore-route-errors", "true",
            "--no-step-log", "true",
            "--no-warnings", "true",
            "--duration-log.disable", "true",
            "--output-prefix", "",
        ]  # fmt: skip
        if request.mesoscopic:
            cmd += ["--mesosim", "true", "--meso-junction-control", "true"]
        try:
            libsumo.start(cmd)
        except Exception as e:
            raise SimulationError(f"SUMO could not load the scenario: {e}") from e
        try:
            return _loop(libsumo, task, plan, directory, started, warmup_steps, total_steps)
        finally:
            try:
                libsumo.close()
            except Exception:  # already closed after a failure
                logger.debug("libsumo.close failed", exc_info=True)


def _loop(
    ls: Any,
    task: RunTask,
    plan: Mapping[str, IntersectionTiming],
    directory: Path,
    started: float,
    warmup_steps: int,
    total_steps: int,
) -> RunMetrics:
    request = task.request
    step_s = request.step_length_s
    runner = AdaptiveRunner()
    for tls_id, timing in sorted(request.current.items()):
        apply_timing(
            ls, tls_id, timing, request.begin_s, field_time_s=request.field_time_s, runner=runner
        )
    approaches: dict[str, set[str]] = {}
    for tls_id in ls.trafficlight.getIDList():
        approaches[tls_id] = {
            ls.lane.getEdgeID(lane) for lane in ls.trafficlight.getControlledLanes(tls_id)
        }
    edge_ids = tuple(sorted(e for e in ls.edge.getIDList() if not e.startswith(":")))

    spec = request.record if task.record else None
    frames: dict[int, int] = {}
    if spec is not None:
        frames = {s: i for i, s in enumerate(_frame_steps(request, spec))}
        occupancy = np.zeros((len(frames), len(edge_ids)), dtype=np.float32)
        queue = np.zeros((len(frames), len(edge_ids)), dtype=np.float32)
        frame_times = np.zeros(len(frames), dtype=np.float64)
        running_wait = np.zeros(len(frames), dtype=np.float32)
        running_nox = np.zeros(len(frames), dtype=np.float32)
        window_start_s = request.begin_s + (min(frames) - 1) * step_s
        last_sample_s, wait_so_far, nox_so_far = window_start_s, 0.0, 0.0
        vehicles_at_window, running_at_window = -1, 0
        scene = _SceneRecorder(ls, len(frames), spec.max_vehicles)

    sim = ls.simulation
    vehicles = 0
    arrived = 0
    backlog_veh_s = 0.0
    idle_nox_mg_s, idle_samples = 0.0, 0
    simulated_veh_s = 0.0
    last_progress_s = float(request.begin_s)
    failed: str | None = None
    for step in range(1, total_steps + 1):
        if step == warmup_steps + 1:
            now = sim.getTime()
            try:
                for tls_id, timing in sorted(plan.items()):
                    # a program of its own: SUMO updates an existing program id in
                    # place and keeps its type, so an actuated candidate installed
                    # over the current fixed plan's id would run as a fixed plan
                    apply_timing(
                        ls,
                        tls_id,
                        timing,
                        now,
                        field_time_s=request.field_time_s,
                        program_id=EVALUATED_PROGRAM_ID,
                        runner=runner,
                    )
            except SimulationError as e:
                if task.plan == CURRENT:
                    raise
                # a candidate that does not fit the network fails alone, not the what-if
                failed = f"plan cannot be installed: {e}"
                break
            vehicles = ls.vehicle.getIDCount() + len(sim.getPendingVehicles())
        sim.step()
        now = sim.getTime()
        runner.step(ls, now)
        running = ls.vehicle.getIDCount()
        pending = len(sim.getPendingVehicles())
        arrivals = sim.getArrivedNumber()
        simulated_veh_s += running * step_s
        if step > warmup_steps:
            vehicles += sim.getLoadedNumber()
            arrived += arrivals
            backlog_veh_s += pending * step_s
            if pending and step % 10 == 0:
                nox_sum, halted = _idle_nox(ls)
                idle_nox_mg_s += nox_sum
                idle_samples += halted
        if arrivals > 0 or running == 0:
            last_progress_s = now
        elif now - last_progress_s >= request.gridlock_s:
            speed = _mean_speed(ls)
            if speed < request.gridlock_speed_mps:
                failed = (
                    f"gridlock at t={now:.0f} s: no vehicle arrived for {request.gridlock_s} s, "
                    f"{running} vehicles in the network at mean speed {speed:.2f} m/s"
                )
                break
            last_progress_s = now - request.gridlock_s / 2  # moving: look again later
        if request.max_backlog_veh is not None and pending > request.max_backlog_veh:
            failed = (
                f"insertion backlog of {pending} vehicles at t={now:.0f} s exceeds "
                f"max_backlog_veh={request.max_backlog_veh}"
            )
            break
        if spec is not None and step in frames:
            i = frames[step]
            edge = ls.edge
            occ = np.array([edge.getLastStepOccupancy(e) for e in edge_ids], dtype=np.float32)
            halt = np.array([edge.getLastStepHaltingNumber(e) for e in edge_ids], dtype=np.float32)
            nox_rate = math.fsum(edge.getNOxEmission(e) for e in edge_ids)
            # running counters for the video, integrated from the samples themselves
            dt = now - last_sample_s
            wait_so_far += (float(halt.sum()) + pending) * dt
            nox_so_far += nox_rate * dt
            if vehicles_at_window < 0:
                vehicles_at_window, running_at_window = vehicles, running + pending
            served = max(1, vehicles - vehicles_at_window + running_at_window)
            occupancy[i] = np.clip(occ, 0.0, 1.0)
            queue[i] = halt
            frame_times[i] = now
            running_wait[i] = wait_so_far / served
            running_nox[i] = nox_so_far
            last_sample_s = now
            scene.sample(ls, i)
    ls.close()  # flushes the edgeData outputs

    recording = None
    if spec is not None and failed is None:
        recording = Recording(
            plan=task.plan,
            seed=task.seed,
            edge_ids=edge_ids,
            frame_times_s=frame_times,
            occupancy=occupancy,
            queue_veh=queue,
            mean_wait_s=running_wait,
            nox_mg=running_nox,
            **scene.arrays(),
        )
    if failed is not None:
        return RunMetrics(
            plan=task.plan, seed=task.seed, failed=failed, vehicles=vehicles,
            wait_veh_s=0.0, delay_veh_s=0.0, backlog_veh_s=backlog_veh_s, arrived=arrived,
            nox_mg=0.0, per_intersection={}, simulated_veh_s=simulated_veh_s,
            wall_s=time.perf_counter() - started,
        )  # fmt: skip
    edges = _read_edge_values(directory / "edges.xml", ("waitingTime", "timeLoss", "entered"))
    nox = _read_edge_values(directory / "emissions.xml", ("NOx_abs",))
    # Vehicles held in the insertion backlog would queue upstream, idling: charge
    # them the mean idle NOx rate of the halted vehicles seen in the network.
    backlog_nox_mg = backlog_veh_s * (idle_nox_mg_s / idle_samples if idle_samples else 0.0)
    wait = math.fsum(v[0] for _, v in sorted(edges.items())) + backlog_veh_s
    delay = math.fsum(v[1] for _, v in sorted(edges.items())) + backlog_veh_s
    per_tls: dict[str, tuple[float, int, float]] = {}
    for tls_id, approach in sorted(approaches.items()):
        rows = [edges.get(e, (0.0, 0.0, 0.0)) for e in sorted(approach)]
        per_tls[tls_id] = (
            math.fsum(r[0] for r in rows),
            int(sum(r[2] for r in rows)),
            math.fsum(nox.get(e, (0.0,))[0] for e in sorted(approach)),
        )
    return RunMetrics(
        plan=task.plan,
        seed=task.seed,
        failed=None,
        vehicles=vehicles,
        wait_veh_s=wait,
        delay_veh_s=delay,
        backlog_veh_s=backlog_veh_s,
        arrived=arrived,
        nox_mg=math.fsum(v[0] for _, v in sorted(nox.items())) + backlog_nox_mg,
        per_intersection=per_tls,
        simulated_veh_s=simulated_veh_s,
        wall_s=time.perf_counter() - started,
        recording=recording,
    )


class _SceneRecorder:
    """Vehicles and signal states at each recorded sample (the video's picture).

    Plain libsumo getters on the sample steps only: for the demo district's few
    hundred vehicles they cost about 2 us per vehicle, less than vehicle
    subscriptions, which SUMO evaluates on every step (see docs/video.md).
    """

    def __init__(self, ls: Any, samples: int, max_vehicles: int) -> None:
        self.max_vehicles = max_vehicles
        self.rows: list[np.ndarray] = []
        self.count = np.zeros(samples, dtype=np.int32)
        self.signal_ids = tuple(sorted(ls.trafficlight.getIDList()))
        widths = [len(ls.trafficlight.getRedYellowGreenState(t)) for t in self.signal_ids]
        self.signal_offsets = np.concatenate(([0], np.cumsum(widths))).astype(np.int64)
        self.widths = widths
        self.states = np.zeros((samples, int(self.signal_offsets[-1])), dtype=np.uint8)

    def sample(self, ls: Any, index: int) -> None:
        vehicle = ls.vehicle
        ids = vehicle.getIDList()
        self.count[index] = len(ids)
        if len(ids) > self.max_vehicles:
            ids = ids[:: -(-len(ids) // self.max_vehicles)]
        rows = [
            (*vehicle.getPosition(v), vehicle.getAngle(v), vehicle.getSpeed(v),
             vehicle.getWaitingTime(v))
            for v in ids
        ]  # fmt: skip
        self.rows.append(np.array(rows, dtype=np.float32).reshape(-1, 5))
        light = ls.trafficlight
        states = "".join(
            light.getRedYellowGreenState(t).ljust(w, "o")[:w]
            for t, w in zip(self.signal_ids, self.widths, strict=True)
        )
        self.states[index] = np.frombuffer(states.encode("ascii"), dtype=np.uint8)

    def arrays(self) -> dict[str, Any]:
        rows = np.concatenate(self.rows) if self.rows else np.zeros((0, 5), dtype=np.float32)
        counts = [len(r) for r in self.rows]
        return {
            "vehicle_offsets": np.concatenate(([0], np.cumsum(counts))).astype(np.int64),
            "vehicle_x_m": np.ascontiguousarray(rows[:, 0]),
            "vehicle_y_m": np.ascontiguousarray(rows[:, 1]),
            "vehicle_angle_deg": np.ascontiguousarray(rows[:, 2]),
            "vehicle_speed_mps": np.ascontiguousarray(rows[:, 3]),
            "vehicle_wait_s": np.ascontiguousarray(rows[:, 4]),
            "vehicle_count": self.count,
            "signal_ids": self.signal_ids,
            "signal_offsets": self.signal_offsets,
            "signal_states": self.states,
        }


def _idle_nox(ls: Any) -> tuple[float, int]:
    """Sum of NOx rates (mg/s) of the halted vehicles, and how many there are."""
    total, count = 0.0, 0
    for vid in ls.vehicle.getIDList():
        if ls.vehicle.getSpeed(vid) < 0.1:
            total += ls.vehicle.getNOxEmission(vid)
            count += 1
    return total, count


def _mean_speed(ls: Any) -> float:
    ids = ls.vehicle.getIDList()
    if not ids:
        return 0.0
    return math.fsum(ls.vehicle.getSpeed(v) for v in ids) / len(ids)
