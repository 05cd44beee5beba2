"""What the twin measured and predicts: per-run totals, paired changes, plan outcomes.

Everything here is pure (no SUMO): :func:`aggregate` turns the per-(plan, seed)
:class:`RunMetrics` into each plan's :class:`PlanOutcome`, with the paired
relative change of every metric against the current plan and its Student-t
interval (:mod:`simulators.stats`).
"""

from __future__ import annotations

__all__ = [
    "METRICS",
    "Change",
    "IntersectionOutcome",
    "PlanOutcome",
    "RECORDING_ARRAYS",
    "Recording",
    "RunMetrics",
    "WhatIfResult",
    "aggregate",
    "field_prediction",
    "paired_change",
]

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np

from configs.errors import ConfigError, SimulationError
from configs.timing import Prediction
from simulators.stats import relative_change, t_interval
from simulators.twin.plans import CURRENT
from simulators.twin.request import WhatIfRequest

METRICS: Final = ("wait", "delay", "nox", "throughput", "approach_wait", "approach_nox")
"""Metrics for which a paired relative change is reported.

``wait``, ``delay``, ``nox`` and ``throughput`` are district totals the gate
decides on; ``approach_wait`` (halting vehicle-seconds on the signalised
approaches, summed over the intersections) and ``approach_nox`` (their NOx, mg)
are the field-observable quantity a measured delta compares
(:class:`simulators.field.WindowTotals`). Results recorded before the two
approach metrics existed read back without them.
"""


def _no_rows(dtype: type[np.generic]) -> np.ndarray:
    return np.zeros(0, dtype=dtype)


@dataclass(frozen=True)
class Recording:
    """What one run looked like, sample by sample, for the what-if video.

    Per edge (columns ``edge_ids``): occupancy and halting vehicles. Per vehicle
    (ragged: the rows of sample ``k`` are ``vehicle_offsets[k]:vehicle_offsets[k + 1]``):
    position, heading, speed and waiting time. Per signalised intersection
    (``signal_ids``): the signal state string SUMO reports
    (``trafficlight.getRedYellowGreenState``), one ASCII character per link,
    packed side by side (the columns of ``signal_ids[i]`` are
    ``signal_offsets[i]:signal_offsets[i + 1]``).

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
        vehicle_offsets: int64 ``[T + 1]``: where each sample's vehicle rows start.
        vehicle_x_m: float32 ``[V]``: x of each vehicle's front (SUMO coordinates, m).
        vehicle_y_m: float32 ``[V]``: y of each vehicle's front (m).
        vehicle_angle_deg: float32 ``[V]``: heading (SUMO: 0 = north, clockwise).
        vehicle_speed_mps: float32 ``[V]``: speed (m/s).
        vehicle_wait_s: float32 ``[V]``: time the vehicle has been halting (s).
        vehicle_count: int32 ``[T]``: vehicles in the network at each sample; more
            than the sample's rows when the network held more than
            :attr:`RecordSpec.max_vehicles <simulators.twin.request.RecordSpec>`
            (then every k-th vehicle of SUMO's list is recorded).
        signal_ids: signalised intersections (traffic-light ids, sorted).
        signal_offsets: int64 ``[len(signal_ids) + 1]``: column ranges in ``signal_states``.
        signal_states: uint8 ``[T, links]``: ASCII codes of the state characters
            (``G g y r`` ..., SUMO's meaning).
    """

    plan: str
    seed: int
    edge_ids: tuple[str, ...]
    frame_times_s: np.ndarray
    occupancy: np.ndarray
    queue_veh: np.ndarray
    mean_wait_s: np.ndarray
    nox_mg: np.ndarray
    vehicle_offsets: np.ndarray = field(default_factory=lambda: np.zeros(1, dtype=np.int64))
    vehicle_x_m: np.ndarray = field(default_factory=lambda: _no_rows(np.float32))
    vehicle_y_m: np.ndarray = field(default_factory=lambda: _no_rows(np.float32))
    vehicle_angle_deg: np.ndarray = field(default_factory=lambda: _no_rows(np.float32))
    vehicle_speed_mps: np.ndarray = field(default_factory=lambda: _no_rows(np.float32))
    vehicle_wait_s: np.ndarray = field(default_factory=lambda: _no_rows(np.float32))
    vehicle_count: np.ndarray = field(default_factory=lambda: _no_rows(np.int32))
    signal_ids: tuple[str, ...] = ()
    signal_offsets: np.ndarray = field(default_factory=lambda: np.zeros(1, dtype=np.int64))
    signal_states: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), dtype=np.uint8))

    @property
    def has_vehicles(self) -> bool:
        """Whether vehicle rows were recorded for every sample."""
        return len(self.vehicle_offsets) == len(self.frame_times_s) + 1

    def signal_state(self, sample: int, tls_id: str) -> str:
        """The state string of ``tls_id`` at sample ``sample`` (as SUMO reported it)."""
        i = self.signal_ids.index(tls_id)
        lo, hi = int(self.signal_offsets[i]), int(self.signal_offsets[i + 1])
        return bytes(self.signal_states[sample, lo:hi]).decode("ascii")

    def save_npz(self, path: Path) -> Path:
        """Save the arrays (and edge and signal ids) to a compressed ``.npz`` file."""
        np.savez_compressed(
            path,
            edge_ids=np.array(self.edge_ids),
            frame_times_s=self.frame_times_s,
            occupancy=self.occupancy,
            queue_veh=self.queue_veh,
            mean_wait_s=self.mean_wait_s,
            nox_mg=self.nox_mg,
            vehicle_offsets=self.vehicle_offsets,
            vehicle_x_m=self.vehicle_x_m,
            vehicle_y_m=self.vehicle_y_m,
            vehicle_angle_deg=self.vehicle_angle_deg,
            vehicle_speed_mps=self.vehicle_speed_mps,
            vehicle_wait_s=self.vehicle_wait_s,
            vehicle_count=self.vehicle_count,
            signal_ids=np.array(self.signal_ids),
            signal_offsets=self.signal_offsets,
            signal_states=self.signal_states,
        )
        return Path(path)


RECORDING_ARRAYS: Final = (
    "frame_times_s",
    "occupancy",
    "queue_veh",
    "mean_wait_s",
    "nox_mg",
    "vehicle_offsets",
    "vehicle_x_m",
    "vehicle_y_m",
    "vehicle_angle_deg",
    "vehicle_speed_mps",
    "vehicle_wait_s",
    "vehicle_count",
    "signal_offsets",
    "signal_states",
)
"""Every array field of :class:`Recording` (what a comparison of two recordings checks)."""


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

    def approach_wait_veh_s(self, only: frozenset[str] | None = None) -> float:
        """Halting vehicle-seconds on the approaches of the intersections (``only``: those)."""
        return math.fsum(
            v[0] for t, v in sorted(self.per_intersection.items()) if only is None or t in only
        )

    def approach_nox_mg(self, only: frozenset[str] | None = None) -> float:
        """NOx on the approaches of the intersections (``only``: those), mg."""
        return math.fsum(
            v[2] for t, v in sorted(self.per_intersection.items()) if only is None or t in only
        )

    def metric(self, name: str) -> float:
        """The value of one of :data:`METRICS`."""
        if name == "approach_wait":
            return self.approach_wait_veh_s()
        if name == "approach_nox":
            return self.approach_nox_mg()
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


def paired_change(current: Sequence[float], candidate: Sequence[float], level: float) -> Change:
    """Mean paired relative change with a t-distribution confidence interval.

    Args:
        current: per-seed values under the current plan.
        candidate: per-seed values under the candidate (same seeds, same order).
        level: two-sided confidence level (e.g. 0.95).

    With a single seed the interval collapses to the point (no spread is known).

    Raises:
        SimulationError: the two plans do not have the same non-empty set of seeds.
    """
    if len(current) != len(candidate) or not current:
        raise SimulationError("paired change needs the same non-empty set of seeds for both plans")
    rel = tuple(relative_change(a, b) for a, b in zip(current, candidate, strict=True))
    mean, low, high = t_interval(rel, level)
    return Change(mean=mean, ci=(low, high), per_seed=rel)


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
        changes: metric (one of :data:`METRICS`) -> paired change against the
            current plan; empty for the current plan and for failed plans (a
            result recorded before a metric existed lacks its key).
        runs: the per-seed totals.
        eliminated: why the plan ran only the first seeds (sequential elimination:
            its changes are over those seeds, and the gate refuses it), else None.
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
    eliminated: str | None = None

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
            **({"eliminated": self.eliminated} if self.eliminated is not None else {}),
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
            eliminated=None if data.get("eliminated") is None else str(data["eliminated"]),
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


def field_prediction(
    result: WhatIfResult, name: str, only: frozenset[str] | None = None
) -> tuple[Change, Change]:
    """The twin's prediction of the field-observable change for candidate ``name``.

    The paired relative change (mean and t-interval over the result's seeds) of
    the approach halting vehicle-seconds and of the approach NOx, summed over
    the intersections in ``only`` (those a deployment changes), or over every
    intersection when ``only`` is None; the latter equals the outcome's
    ``approach_wait`` and ``approach_nox`` changes.

    Returns:
        ``(wait change, nox change)``.

    Raises:
        SimulationError: the candidate or the current plan failed, or an
            intersection in ``only`` is not in the twin's runs.
        KeyError: no plan ``name`` in the result.
    """
    item, current = result.outcome(name), result.current
    if item.failed is not None or current.failed is not None:
        raise SimulationError(
            f"plan {name!r} has no field prediction: {item.failed or current.failed}"
        )
    if only is not None:
        known = {t for r in (*item.runs, *current.runs) for t in r.per_intersection}
        missing = sorted(only - known)
        if missing or not only:
            raise SimulationError(
                f"field prediction over intersections {sorted(only)}: "
                f"{missing or 'none'} not measured by the twin; name intersections of the network"
            )
    runs_now = sorted(current.runs, key=lambda r: r.seed)
    runs_new = sorted(item.runs, key=lambda r: r.seed)
    if [r.seed for r in runs_now] != [r.seed for r in runs_new]:
        raise SimulationError(f"plan {name!r} and the current plan ran different seeds")
    level = result.confidence_level
    wait = paired_change(
        [r.approach_wait_veh_s(only) for r in runs_now],
        [r.approach_wait_veh_s(only) for r in runs_new],
        level,
    )
    nox = paired_change(
        [r.approach_nox_mg(only) for r in runs_now],
        [r.approach_nox_mg(only) for r in runs_new],
        level,
    )
    return wait, nox


def _clip(value: float) -> float:
    return max(-10.0, min(10.0, value)) if math.isfinite(value) else 10.0


def aggregate(
    request: WhatIfRequest,
    runs: Mapping[tuple[str, int], RunMetrics],
) -> tuple[PlanOutcome, ...]:
    """Build every plan's outcome from the per-(plan, seed) runs (pure).

    With sequential elimination (``request.elimination_seeds``), a candidate
    that has runs on the first seeds only is reported eliminated, its changes
    paired with the current plan's runs on those seeds.
    """
    outcomes = []
    for name in request.plan_names():
        seeds = request.seeds
        eliminated = None
        if (
            name != CURRENT
            and request.elimination_seeds
            and (name, seeds[request.elimination_seeds]) not in runs
        ):
            seeds = seeds[: request.elimination_seeds]
            eliminated = (
                f"ran {len(seeds)} of {len(request.seeds)} paired seeds: sequential elimination "
                f"took the {request.finalists} best by wait change on them further"
            )
        current_runs = tuple(runs[(CURRENT, s)] for s in seeds)
        current_failed = next((r.failed for r in current_runs if r.failed), None)
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
                eliminated=eliminated,
            )
        )
    return tuple(outcomes)
