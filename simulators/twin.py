"""The what-if engine: the current plan against candidate plans on the SUMO twin.

Every plan (the current one and each candidate) is simulated with the same K
seeds (common random numbers: the same seed gives the same arrivals, vehicle
types and driver behaviour, so the paired difference isolates the plan's effect).
Each run is:

* ``warmup_s`` under the **current** plan (the network fills as it is now), then
* ``horizon_s`` under the plan being evaluated, which is what is measured.

Each (plan, seed) run is one task in a worker process (libsumo holds one
simulation per process), so a district's what-if fans out over the configured
workers; results are assembled by (plan, seed), never by completion order, so
the same request always gives identical numbers (the auditor's replay relies on
it). A worker that dies raises :class:`SimulationError` naming the plans and seeds
that were running, never a hang.

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

__all__ = [
    "Change",
    "IntersectionOutcome",
    "LibsumoWhatIfEngine",
    "PlanOutcome",
    "Recording",
    "RecordSpec",
    "RunMetrics",
    "WhatIfEngine",
    "WhatIfRequest",
    "WhatIfResult",
    "apply_timing",
    "paired_change",
    "run_plan",
]

import concurrent.futures as cf
import hashlib
import logging
import math
import multiprocessing
import os
import statistics
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol

import numpy as np
from scipy import stats

from configs.errors import ConfigError, SimulationError
from configs.timing import IntersectionTiming, Prediction
from simulators.field import phase_at
from simulators.signal_program import install_program

logger = logging.getLogger(__name__)

CURRENT: Final = "current"
"""Name of the current plan in every result."""

PROGRAM_ID: Final = "signaltwin"
EVALUATED_PROGRAM_ID: Final = "signaltwin-evaluated"
"""Program id of the plan under evaluation (installed after the warm-up)."""
"""SUMO program id under which plans are installed."""

METRICS: Final = ("wait", "delay", "nox", "throughput")
"""Metrics for which a paired relative change is reported."""


# --------------------------------------------------------------------------- applying plans


def apply_timing(
    tc: Any,
    tls_id: str,
    timing: IntersectionTiming,
    time_s: float,
    *,
    field_time_s: float = 0.0,
    program_id: str = PROGRAM_ID,
) -> None:
    """Install ``timing`` on traffic light ``tls_id`` of a running SUMO, in phase.

    The offset is honoured against the field clock exactly as the field emulator
    does (:func:`simulators.field.phase_at`): at field time ``t`` the plan is at
    cycle position ``(t - offset_s) mod cycle_s`` (phase 0 starts at
    ``offset_s + k * cycle_s``), where ``t = field_time_s + time_s``. The program
    is installed as the controllers run it (:mod:`simulators.signal_program`:
    static, or fully actuated without recall), switched to, and put in the phase
    and remaining time that position implies, so installing the same plan again
    changes nothing.

    Args:
        tc: the ``libsumo`` or ``traci`` module (or connection) driving SUMO.
        tls_id: the traffic light.
        timing: the plan.
        time_s: current simulation time (s).
        field_time_s: field clock at simulation time 0 (s).
        program_id: SUMO program id to install the plan as.

    Raises:
        SimulationError: SUMO refused the program (unknown light, wrong state length).
    """
    tl = tc.trafficlight
    try:
        links = len(tl.getRedYellowGreenState(tls_id))
    except Exception as e:  # libsumo.TraCIException / traci.TraCIException
        raise SimulationError(f"traffic light {tls_id!r} is not in the simulated network") from e
    for number, phase in enumerate(timing.phases):
        if len(phase.state) != links:
            raise SimulationError(
                f"plan for traffic light {tls_id!r} phase {number}: state {phase.state!r} has "
                f"{len(phase.state)} signals, the light controls {links}; check that the plan "
                "was made for this network"
            )
    index, remaining = phase_at(timing, field_time_s + time_s)
    install_program(tc, tls_id, timing, program_id, index, remaining)


# --------------------------------------------------------------------------- request


@dataclass(frozen=True)
class RecordSpec:
    """What to record for rendering: per-edge occupancy and queues at a frame rate.

    Up to ``fps * duration_s`` samples are spread evenly over the recorded window
    of the horizon: its last ``window_s`` seconds, or the whole horizon when
    ``window_s`` is None (subsampled). Sample times are rounded to simulation
    steps and distinct, so a window shorter than the frame count gives one sample
    per step; the renderer maps samples to video frames.

    Attributes:
        fps: video frame rate.
        duration_s: video duration (s).
        window_s: simulated seconds the video covers (from the horizon's end).
        seed_index: which of the request's seeds is recorded.
    """

    fps: float = 30.0
    duration_s: float = 20.0
    window_s: float | None = None
    seed_index: int = 0

    @property
    def frames(self) -> int:
        """Number of frames."""
        return max(1, round(self.fps * self.duration_s))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data."""
        return {
            "fps": self.fps,
            "duration_s": self.duration_s,
            "window_s": self.window_s,
            "seed_index": self.seed_index,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RecordSpec:
        """Inverse of :meth:`to_dict`."""
        return cls(
            fps=float(data["fps"]),
            duration_s=float(data["duration_s"]),
            window_s=None if data.get("window_s") is None else float(data["window_s"]),
            seed_index=int(data.get("seed_index", 0)),
        )


def _file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _plans_to_dict(plans: Mapping[str, IntersectionTiming]) -> dict[str, Any]:
    return {k: v.model_dump(mode="json") for k, v in sorted(plans.items())}


def _plans_from_dict(data: Mapping[str, Any]) -> dict[str, IntersectionTiming]:
    return {k: IntersectionTiming.model_validate(v) for k, v in data.items()}


@dataclass(frozen=True)
class WhatIfRequest:
    """One what-if: the scenario, the current plan, the candidates, the seeds.

    Attributes:
        network: path of the ``.net.xml``.
        demand: path of the routes file (e.g. written by :func:`simulators.demand.write_routes`;
            its flows must last at least ``warmup_s + horizon_s``).
        current: tls id -> plan running now (lights not listed keep the network's program).
        candidates: candidate name -> (tls id -> plan); lights a candidate does not
            list keep the current plan. The name ``"current"`` is reserved.
        horizon_s: measured simulated time (s).
        warmup_s: simulated time under the current plan before the horizon (s).
        seeds: SUMO seeds; every plan runs with all of them.
        step_length_s: SUMO step length (s).
        gridlock_s: a run with no arrival and ~no movement for this long fails (s).
        gridlock_speed_mps: mean speed below which the network counts as not moving.
        max_backlog_veh: a run whose insertion backlog exceeds this fails (None: never).
        field_time_s: field clock at simulation time 0 (aligns offsets with the field).
        additional: extra SUMO additional files (e.g. detectors for actuated plans).
        record: what to record for the video (None: nothing).
        confidence_level: two-sided level of the paired confidence intervals.
        mesoscopic: run SUMO's mesoscopic model (queues per edge segment, signals
            honoured) instead of the microscopic one: several times faster, coarser.
    """

    network: str
    demand: str
    current: Mapping[str, IntersectionTiming]
    candidates: Mapping[str, Mapping[str, IntersectionTiming]]
    horizon_s: int = 900
    warmup_s: int = 300
    seeds: tuple[int, ...] = (1, 2, 3, 4, 5)
    step_length_s: float = 1.0
    gridlock_s: int = 300
    gridlock_speed_mps: float = 0.5
    max_backlog_veh: int | None = None
    field_time_s: int = 0
    additional: tuple[str, ...] = ()
    record: RecordSpec | None = None
    confidence_level: float = 0.95
    mesoscopic: bool = False

    def validate(self) -> None:
        """Check the request before any simulation starts.

        Raises:
            ConfigError: naming the bad field and what is expected.
        """
        for label, path in (("network", self.network), ("demand", self.demand)):
            if not Path(path).is_file():
                raise ConfigError(f"what-if {label} file {path} does not exist")
        for path in self.additional:
            if not Path(path).is_file():
                raise ConfigError(f"what-if additional file {path} does not exist")
        if CURRENT in self.candidates:
            raise ConfigError(f"candidate name {CURRENT!r} is reserved for the current plan")
        if self.horizon_s <= 0 or self.warmup_s < 0:
            raise ConfigError(
                f"horizon_s must be > 0 and warmup_s >= 0 (got {self.horizon_s}, {self.warmup_s})"
            )
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"seeds must be distinct and at least one (got {self.seeds})")
        if not 0 < self.step_length_s <= 5:
            raise ConfigError(f"step_length_s must be in (0, 5] (got {self.step_length_s})")
        if not 0 < self.confidence_level < 1:
            raise ConfigError(f"confidence_level must be in (0, 1) (got {self.confidence_level})")
        if self.record is not None and not 0 <= self.record.seed_index < len(self.seeds):
            raise ConfigError(
                f"record.seed_index {self.record.seed_index} is not an index into seeds"
            )

    def plan_names(self) -> tuple[str, ...]:
        """The current plan's name followed by the candidates' names, sorted."""
        return (CURRENT, *sorted(self.candidates))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data, with the sha256 of the network and demand files."""
        return {
            "network": self.network,
            "network_sha256": _file_sha256(self.network),
            "demand": self.demand,
            "demand_sha256": _file_sha256(self.demand),
            "current": _plans_to_dict(self.current),
            "candidates": {k: _plans_to_dict(v) for k, v in sorted(self.candidates.items())},
            "horizon_s": self.horizon_s,
            "warmup_s": self.warmup_s,
            "seeds": list(self.seeds),
            "step_length_s": self.step_length_s,
            "gridlock_s": self.gridlock_s,
            "gridlock_speed_mps": self.gridlock_speed_mps,
            "max_backlog_veh": self.max_backlog_veh,
            "field_time_s": self.field_time_s,
            "additional": list(self.additional),
            "record": None if self.record is None else self.record.to_dict(),
            "confidence_level": self.confidence_level,
            "mesoscopic": self.mesoscopic,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, verify_files: bool = True) -> WhatIfRequest:
        """Rebuild a request recorded with :meth:`to_dict` (the auditor's replay).

        Raises:
            ConfigError: the data is malformed, or a recorded file's sha256 differs
                from the file now on disk.
        """
        try:
            request = cls._from_dict(data)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ConfigError(f"malformed what-if request record: {type(e).__name__}: {e}") from e
        if verify_files:
            for key in ("network", "demand"):
                recorded = data.get(f"{key}_sha256")
                if recorded is not None and recorded != _file_sha256(str(data[key])):
                    raise ConfigError(
                        f"{key} file {data[key]} differs from the recorded one "
                        f"(sha256 {recorded}); restore the recorded input to replay"
                    )
        return request

    @classmethod
    def _from_dict(cls, data: Mapping[str, Any]) -> WhatIfRequest:
        return cls(
            network=str(data["network"]),
            demand=str(data["demand"]),
            current=_plans_from_dict(data["current"]),
            candidates={k: _plans_from_dict(v) for k, v in data["candidates"].items()},
            horizon_s=int(data["horizon_s"]),
            warmup_s=int(data["warmup_s"]),
            seeds=tuple(int(s) for s in data["seeds"]),
            step_length_s=float(data["step_length_s"]),
            gridlock_s=int(data["gridlock_s"]),
            gridlock_speed_mps=float(data["gridlock_speed_mps"]),
            max_backlog_veh=None
            if data["max_backlog_veh"] is None
            else int(data["max_backlog_veh"]),
            field_time_s=int(data["field_time_s"]),
            additional=tuple(str(a) for a in data["additional"]),
            record=None if data["record"] is None else RecordSpec.from_dict(data["record"]),
            confidence_level=float(data["confidence_level"]),
            mesoscopic=bool(data.get("mesoscopic", False)),
        )


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class Recording:
    """Per-edge time series of one run, for rendering.

    Attributes:
        plan: plan name.
        seed: the seed of the recorded run.
        edge_ids: the columns (every non-internal edge, sorted).
        frame_times_s: simulation time of each sample (s), strictly increasing, ``[T]``.
        occupancy: float32 ``[T, edges]`` in [0, 1].
        queue_veh: float32 ``[T, edges]``: halting vehicles on the edge.
        mean_wait_s: float32 ``[T]``: running mean wait per vehicle since the
            recorded window began (integrated from the samples; for display).
        nox_mg: float32 ``[T]``: running NOx on the recorded edges since the window
            began (integrated from the samples; for display).
    """

    plan: str
    seed: int
    edge_ids: tuple[str, ...]
    frame_times_s: np.ndarray
    occupancy: np.ndarray
    queue_veh: np.ndarray
    mean_wait_s: np.ndarray
    nox_mg: np.ndarray

    def save_npz(self, path: Path) -> Path:
        """Save the arrays (and edge ids) to a compressed ``.npz`` file."""
        np.savez_compressed(
            path,
            edge_ids=np.array(self.edge_ids),
            frame_times_s=self.frame_times_s,
            occupancy=self.occupancy,
            queue_veh=self.queue_veh,
            mean_wait_s=self.mean_wait_s,
            nox_mg=self.nox_mg,
        )
        return Path(path)


@dataclass(frozen=True)
class RunMetrics:
    """Raw totals of one (plan, seed) run over the horizon.

    ``per_intersection`` maps a tls id to ``(wait_veh_s, vehicles, nox_mg)`` on its
    approach edges.
    """

    plan: str
    seed: int
    failed: str | None
    vehicles: int
    wait_veh_s: float
    delay_veh_s: float
    backlog_veh_s: float
    arrived: int
    nox_mg: float
    per_intersection: Mapping[str, tuple[float, int, float]]
    simulated_veh_s: float
    wall_s: float = field(compare=False)
    recording: Recording | None = field(default=None, compare=False)

    @property
    def mean_wait_s(self) -> float:
        """Waiting time per vehicle served (s)."""
        return self.wait_veh_s / self.vehicles if self.vehicles else 0.0

    @property
    def mean_delay_s(self) -> float:
        """Delay per vehicle served (s)."""
        return self.delay_veh_s / self.vehicles if self.vehicles else 0.0

    def metric(self, name: str) -> float:
        """The value of one of :data:`METRICS`."""
        return {
            "wait": self.mean_wait_s,
            "delay": self.mean_delay_s,
            "nox": self.nox_mg,
            "throughput": float(self.arrived),
        }[name]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data (no wall time, no recording)."""
        return {
            "plan": self.plan,
            "seed": self.seed,
            "failed": self.failed,
            "vehicles": self.vehicles,
            "wait_veh_s": self.wait_veh_s,
            "delay_veh_s": self.delay_veh_s,
            "backlog_veh_s": self.backlog_veh_s,
            "arrived": self.arrived,
            "nox_mg": self.nox_mg,
            "per_intersection": {k: list(v) for k, v in sorted(self.per_intersection.items())},
            "simulated_veh_s": self.simulated_veh_s,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunMetrics:
        """Inverse of :meth:`to_dict`."""
        return cls(
            plan=str(data["plan"]),
            seed=int(data["seed"]),
            failed=data["failed"],
            vehicles=int(data["vehicles"]),
            wait_veh_s=float(data["wait_veh_s"]),
            delay_veh_s=float(data["delay_veh_s"]),
            backlog_veh_s=float(data["backlog_veh_s"]),
            arrived=int(data["arrived"]),
            nox_mg=float(data["nox_mg"]),
            per_intersection={
                k: (float(v[0]), int(v[1]), float(v[2]))
                for k, v in data["per_intersection"].items()
            },
            simulated_veh_s=float(data["simulated_veh_s"]),
            wall_s=0.0,
        )


@dataclass(frozen=True)
class Change:
    """Paired relative change of one metric against the current plan (fractions).

    Attributes:
        mean: mean over seeds of ``(candidate - current) / current``; negative = lower.
        ci: two-sided t-interval of that mean over the seeds.
        per_seed: the per-seed relative changes.
    """

    mean: float
    ci: tuple[float, float]
    per_seed: tuple[float, ...]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data."""
        return {"mean": self.mean, "ci": list(self.ci), "per_seed": list(self.per_seed)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Change:
        """Inverse of :meth:`to_dict`."""
        low, high = data["ci"]
        return cls(
            mean=float(data["mean"]),
            ci=(float(low), float(high)),
            per_seed=tuple(float(v) for v in data["per_seed"]),
        )


def _relative(current: float, candidate: float) -> float:
    if current > 0:
        return (candidate - current) / current
    return 0.0 if candidate <= current else 1.0  # from nothing to something: +100 %


def paired_change(current: Sequence[float], candidate: Sequence[float], level: float) -> Change:
    """Mean paired relative change with a t-distribution confidence interval.

    Args:
        current: per-seed values under the current plan.
        candidate: per-seed values under the candidate (same seeds, same order).
        level: two-sided confidence level (e.g. 0.95).

    With a single seed the interval collapses to the point (no spread is known).
    """
    if len(current) != len(candidate) or not current:
        raise SimulationError("paired change needs the same non-empty set of seeds for both plans")
    rel = tuple(_relative(a, b) for a, b in zip(current, candidate, strict=True))
    mean = math.fsum(rel) / len(rel)
    if len(rel) < 2:
        return Change(mean=mean, ci=(mean, mean), per_seed=rel)
    sd = statistics.stdev(rel)
    half = float(stats.t.ppf((1.0 + level) / 2.0, len(rel) - 1)) * sd / math.sqrt(len(rel))
    return Change(mean=mean, ci=(mean - half, mean + half), per_seed=rel)


@dataclass(frozen=True)
class IntersectionOutcome:
    """Mean (over seeds) waiting and NOx on one intersection's approaches."""

    wait_veh_s: float
    mean_wait_s: float
    nox_mg: float

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data."""
        return {
            "wait_veh_s": self.wait_veh_s,
            "mean_wait_s": self.mean_wait_s,
            "nox_mg": self.nox_mg,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> IntersectionOutcome:
        """Inverse of :meth:`to_dict`."""
        return cls(
            wait_veh_s=float(data["wait_veh_s"]),
            mean_wait_s=float(data["mean_wait_s"]),
            nox_mg=float(data["nox_mg"]),
        )


@dataclass(frozen=True)
class PlanOutcome:
    """What the twin predicts for one plan (means over seeds).

    Attributes:
        name: plan name (``"current"`` or the candidate's name).
        failed: why the plan failed (gridlock, backlog, SUMO error), else None.
        mean_wait_s: waiting time per vehicle (s).
        mean_delay_s: delay per vehicle (s).
        throughput_veh: vehicles that completed their trip during the horizon.
        nox_mg: total NOx over the horizon (mg).
        intersections: tls id -> approach waiting and NOx.
        changes: metric (wait, delay, nox, throughput) -> paired change against the
            current plan; empty for the current plan and for failed plans.
        runs: the per-seed totals.
    """

    name: str
    failed: str | None
    mean_wait_s: float
    mean_delay_s: float
    throughput_veh: float
    nox_mg: float
    intersections: Mapping[str, IntersectionOutcome]
    changes: Mapping[str, Change]
    runs: tuple[RunMetrics, ...]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data."""
        return {
            "name": self.name,
            "failed": self.failed,
            "mean_wait_s": self.mean_wait_s,
            "mean_delay_s": self.mean_delay_s,
            "throughput_veh": self.throughput_veh,
            "nox_mg": self.nox_mg,
            "intersections": {k: v.to_dict() for k, v in sorted(self.intersections.items())},
            "changes": {k: v.to_dict() for k, v in sorted(self.changes.items())},
            "runs": [r.to_dict() for r in self.runs],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PlanOutcome:
        """Inverse of :meth:`to_dict`."""
        return cls(
            name=str(data["name"]),
            failed=data["failed"],
            mean_wait_s=float(data["mean_wait_s"]),
            mean_delay_s=float(data["mean_delay_s"]),
            throughput_veh=float(data["throughput_veh"]),
            nox_mg=float(data["nox_mg"]),
            intersections={
                k: IntersectionOutcome.from_dict(v) for k, v in data["intersections"].items()
            },
            changes={k: Change.from_dict(v) for k, v in data["changes"].items()},
            runs=tuple(RunMetrics.from_dict(r) for r in data["runs"]),
        )


@dataclass(frozen=True)
class WhatIfResult:
    """All plans' outcomes (current first), plus the recordings for rendering.

    ``recordings`` (plan name -> :class:`Recording`) is not part of
    :meth:`to_dict`; the video made from it is recorded by its digest instead.
    """

    outcomes: tuple[PlanOutcome, ...]
    horizon_s: int
    warmup_s: int
    seeds: tuple[int, ...]
    confidence_level: float
    recordings: Mapping[str, Recording] = field(default_factory=dict, compare=False)

    @property
    def current(self) -> PlanOutcome:
        """The current plan's outcome."""
        return self.outcome(CURRENT)

    def outcome(self, name: str) -> PlanOutcome:
        """The outcome of plan ``name``.

        Raises:
            KeyError: no such plan in this result.
        """
        for item in self.outcomes:
            if item.name == name:
                return item
        raise KeyError(name)

    def prediction(self, name: str) -> Prediction:
        """The :class:`configs.timing.Prediction` of candidate ``name`` (for the document).

        Raises:
            SimulationError: the candidate (or the current plan) failed.
        """
        item = self.outcome(name)
        if item.failed is not None or "wait" not in item.changes:
            raise SimulationError(f"plan {name!r} has no prediction: {item.failed or 'no change'}")
        wait, nox = item.changes["wait"], item.changes["nox"]
        return Prediction(
            wait_change=_clip(wait.mean),
            wait_change_ci=(_clip(wait.ci[0]), _clip(wait.ci[1])),
            nox_change=_clip(nox.mean),
            nox_change_ci=(_clip(nox.ci[0]), _clip(nox.ci[1])),
            horizon_s=self.horizon_s,
            seeds=self.seeds,
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data (what the ledger records)."""
        return {
            "outcomes": [o.to_dict() for o in self.outcomes],
            "horizon_s": self.horizon_s,
            "warmup_s": self.warmup_s,
            "seeds": list(self.seeds),
            "confidence_level": self.confidence_level,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> WhatIfResult:
        """Inverse of :meth:`to_dict` (without recordings).

        Raises:
            ConfigError: the data is not a recorded what-if result.
        """
        try:
            return cls(
                outcomes=tuple(PlanOutcome.from_dict(o) for o in data["outcomes"]),
                horizon_s=int(data["horizon_s"]),
                warmup_s=int(data["warmup_s"]),
                seeds=tuple(int(s) for s in data["seeds"]),
                confidence_level=float(data["confidence_level"]),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ConfigError(f"malformed what-if result record: {type(e).__name__}: {e}") from e


def _clip(value: float) -> float:
    return max(-10.0, min(10.0, value)) if math.isfinite(value) else 10.0


def aggregate(
    request: WhatIfRequest,
    runs: Mapping[tuple[str, int], RunMetrics],
) -> tuple[PlanOutcome, ...]:
    """Build every plan's outcome from the per-(plan, seed) runs (pure)."""
    seeds = request.seeds
    current_runs = tuple(runs[(CURRENT, s)] for s in seeds)
    current_failed = next((r.failed for r in current_runs if r.failed), None)
    outcomes = []
    for name in request.plan_names():
        plan_runs = tuple(runs[(name, s)] for s in seeds)
        failed = next(
            (f"seed {r.seed}: {r.failed}" for r in plan_runs if r.failed is not None), None
        )
        changes: dict[str, Change] = {}
        if name != CURRENT and failed is None and current_failed is None:
            for metric in METRICS:
                changes[metric] = paired_change(
                    [r.metric(metric) for r in current_runs],
                    [r.metric(metric) for r in plan_runs],
                    request.confidence_level,
                )
        k = len(plan_runs)
        tls_ids = sorted({t for r in plan_runs for t in r.per_intersection})
        intersections = {}
        for tls in tls_ids:
            rows = [r.per_intersection.get(tls, (0.0, 0, 0.0)) for r in plan_runs]
            wait = math.fsum(x[0] for x in rows) / k
            vehicles = math.fsum(x[1] for x in rows) / k
            intersections[tls] = IntersectionOutcome(
                wait_veh_s=wait,
                mean_wait_s=wait / vehicles if vehicles else 0.0,
                nox_mg=math.fsum(x[2] for x in rows) / k,
            )
        outcomes.append(
            PlanOutcome(
                name=name,
                failed=failed,
                mean_wait_s=math.fsum(r.mean_wait_s for r in plan_runs) / k,
                mean_delay_s=math.fsum(r.mean_delay_s for r in plan_runs) / k,
                throughput_veh=math.fsum(r.arrived for r in plan_runs) / k,
                nox_mg=math.fsum(r.nox_mg for r in plan_runs) / k,
                intersections=intersections,
                changes=changes,
                runs=plan_runs,
            )
        )
    return tuple(outcomes)


# --------------------------------------------------------------------------- one run


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


def _guarded(runner: Callable[[RunTask], RunMetrics], task: RunTask) -> RunMetrics:
    """Run ``runner`` in a worker, leaving a marker naming the task while it runs.

    If the worker dies, the markers left behind say which (plan, seed) it was running.
    """
    marker = None
    if task.marker_dir is not None:
        marker = Path(task.marker_dir) / f"{os.getpid()}"
        marker.write_text(f"{task.plan}\n{task.seed}\n", encoding="utf-8")
    try:
        return runner(task)
    finally:
        if marker is not None:
            marker.unlink(missing_ok=True)


def _simulate(task: RunTask) -> RunMetrics:
    import libsumo  # only worker code touches SUMO

    request = task.request
    started = time.perf_counter()
    step_s = request.step_length_s
    warmup_steps = round(request.warmup_s / step_s)
    total_steps = warmup_steps + round(request.horizon_s / step_s)
    begin_s, end_s = warmup_steps * step_s, total_steps * step_s
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
            "--begin", "0",
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
    for tls_id, timing in sorted(request.current.items()):
        apply_timing(ls, tls_id, timing, 0.0, field_time_s=request.field_time_s)
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
        window_start_s = (min(frames) - 1) * step_s
        last_sample_s, wait_so_far, nox_so_far = window_start_s, 0.0, 0.0
        vehicles_at_window, running_at_window = -1, 0

    sim = ls.simulation
    vehicles = 0
    arrived = 0
    backlog_veh_s = 0.0
    idle_nox_mg_s, idle_samples = 0.0, 0
    simulated_veh_s = 0.0
    last_progress_s = 0.0
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


# --------------------------------------------------------------------------- engine


class WhatIfEngine(Protocol):
    """Seam: anything that evaluates a what-if request (libsumo here, a fake in tests)."""

    def evaluate(
        self, request: WhatIfRequest, progress: Callable[[int, int], None] | None = None
    ) -> WhatIfResult:
        """Simulate every plan with every seed and compare against the current plan."""
        ...


Runner = Callable[[RunTask], RunMetrics]


class LibsumoWhatIfEngine:
    """The what-if engine on libsumo, fanned out over worker processes.

    Args:
        workers: worker processes (0: run every simulation in this process, one
            after another; useful for debugging and profiling).
        timeout_s: wall-clock limit for one whole evaluation (None: no limit).
        mp_context: multiprocessing start method; ``spawn`` (default) or ``forkserver``
            (never ``fork``: libsumo's state must not be inherited).
        runner: the per-task function (tests substitute one; it must be importable
            by the worker processes).

    The pool is created on first use and kept for later evaluations (a daemon
    pays process start-up once); call :meth:`close` or use it as a context manager.
    """

    def __init__(
        self,
        workers: int = 2,
        *,
        timeout_s: float | None = None,
        mp_context: str = "spawn",
        runner: Runner = run_plan,
    ) -> None:
        if workers < 0:
            raise ConfigError(f"simulation.workers must be >= 0 (got {workers})")
        if mp_context not in ("spawn", "forkserver"):
            raise ConfigError(f"mp_context must be 'spawn' or 'forkserver' (got {mp_context!r})")
        self.workers = workers
        self.timeout_s = timeout_s
        self._context = multiprocessing.get_context(mp_context)
        self._runner = runner
        self._pool: cf.ProcessPoolExecutor | None = None

    def __enter__(self) -> LibsumoWhatIfEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Shut the worker pool down."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def evaluate(
        self, request: WhatIfRequest, progress: Callable[[int, int], None] | None = None
    ) -> WhatIfResult:
        """Run every plan with every seed; return outcomes with paired changes.

        Args:
            request: the what-if.
            progress: called with (runs done, runs total) after each run.

        Raises:
            ConfigError: the request is invalid.
            SimulationError: a run could not be simulated, a worker died, or the
                evaluation exceeded ``timeout_s``.
        """
        request.validate()
        recorded_seed = request.seeds[request.record.seed_index] if request.record else None
        tasks = [
            RunTask(request=request, plan=name, seed=seed, record=seed == recorded_seed)
            for name in request.plan_names()
            for seed in request.seeds
        ]
        if self.workers == 0:
            results = {}
            for i, task in enumerate(tasks):
                results[(task.plan, task.seed)] = self._runner(task)
                if progress is not None:
                    progress(i + 1, len(tasks))
        else:
            results = self._fan_out(tasks, progress)
        outcomes = aggregate(request, results)
        recordings = {
            name: rec
            for (name, _), run in sorted(results.items())
            if (rec := run.recording) is not None
        }
        return WhatIfResult(
            outcomes=outcomes,
            horizon_s=request.horizon_s,
            warmup_s=request.warmup_s,
            seeds=request.seeds,
            confidence_level=request.confidence_level,
            recordings=recordings,
        )

    def _fan_out(
        self, tasks: list[RunTask], progress: Callable[[int, int], None] | None
    ) -> dict[tuple[str, int], RunMetrics]:
        deadline = None if self.timeout_s is None else time.monotonic() + self.timeout_s
        results: dict[tuple[str, int], RunMetrics] = {}
        with tempfile.TemporaryDirectory(prefix="signaltwin-markers-") as markers:
            futures = self._submit(tasks, markers)
            try:
                pending = set(futures)
                while pending:
                    wait_s = None if deadline is None else max(0.0, deadline - time.monotonic())
                    done, pending = cf.wait(pending, timeout=wait_s, return_when=cf.FIRST_COMPLETED)
                    if not done:
                        raise SimulationError(
                            f"what-if exceeded its time limit of {self.timeout_s} s with "
                            f"{len(pending)} of {len(tasks)} runs unfinished; raise the limit, "
                            "use fewer seeds or a shorter horizon"
                        )
                    for fut in done:
                        task = futures[fut]
                        results[(task.plan, task.seed)] = fut.result()
                        if progress is not None:
                            progress(len(results), len(tasks))
            except BrokenProcessPool as e:
                self._abandon_pool()
                running = _read_markers(Path(markers))
                where = ", ".join(f"plan {p!r} seed {s}" for p, s in running) or "unknown run"
                raise SimulationError(
                    f"a what-if worker process died while running {where}; SUMO crashed or "
                    "ran out of memory (see the worker's stderr)"
                ) from e
            except BaseException:
                for fut in futures:
                    fut.cancel()
                self._abandon_pool()
                raise
        return results

    def _submit(self, tasks: list[RunTask], markers: str) -> dict[cf.Future[RunMetrics], RunTask]:
        """Submit every task; a pool broken while idle (a worker killed) is replaced once."""
        for attempt in (1, 2):
            if self._pool is None:
                self._pool = cf.ProcessPoolExecutor(
                    max_workers=self.workers, mp_context=self._context
                )
            pool = self._pool
            futures: dict[cf.Future[RunMetrics], RunTask] = {}
            try:
                for t in tasks:
                    task = RunTask(t.request, t.plan, t.seed, t.record, marker_dir=markers)
                    futures[pool.submit(_guarded, self._runner, task)] = t
            except BrokenProcessPool as e:
                for fut in futures:
                    fut.cancel()
                self._abandon_pool()
                if attempt == 2:
                    raise SimulationError(
                        "the what-if worker pool broke again right after it was rebuilt; "
                        "check memory and the workers' stderr"
                    ) from e
                logger.warning("what-if worker pool was broken (a worker died while idle); rebuilt")
                continue
            return futures
        raise AssertionError("unreachable")  # pragma: no cover

    def _abandon_pool(self) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        # ProcessPoolExecutor has no public way to stop busy workers before 3.14
        # (terminate_workers); killing them is the only way not to wait on a hung run.
        for proc in list(getattr(pool, "_processes", {}).values()):
            if proc.is_alive():
                proc.kill()
        pool.shutdown(wait=False, cancel_futures=True)


def _read_markers(directory: Path) -> list[tuple[str, int]]:
    found = []
    for marker in sorted(directory.iterdir()):
        try:
            plan, seed = marker.read_text(encoding="utf-8").splitlines()[:2]
            found.append((plan, int(seed)))
        except (OSError, ValueError):
            continue
    return found
