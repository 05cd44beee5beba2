"""The what-if request: scenario, current plan, candidates, seeds, and what to record.

A request is plain data (it is recorded in the ledger with the sha256 of its
network and demand files, so an auditor can replay it); :func:`request_from_settings`
is the one place that turns the daemon's settings into one.
"""

from __future__ import annotations

__all__ = ["RecordSpec", "WhatIfRequest", "request_from_settings", "whatif_seeds"]

from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from configs.digests import sha256_file
from configs.errors import ConfigError
from configs.settings import GateSettings, Settings, SimulationSettings
from configs.timing import IntersectionTiming
from simulators.twin.plans import CURRENT


@dataclass(frozen=True)
class RecordSpec:
    """What to record for rendering, at a frame rate: edges, vehicles, signal states.

    Up to ``fps * duration_s`` samples are spread evenly over the recorded window
    of the horizon: its last ``window_s`` seconds, or the whole horizon when
    ``window_s`` is None (subsampled). Sample times are rounded to simulation
    steps and distinct, so a window shorter than the frame count gives one sample
    per step; the renderer maps samples to video frames. Each sample holds every
    edge's occupancy and queue, every vehicle's position, heading, speed and
    waiting time, and every traffic light's signal state
    (:class:`~simulators.twin.results.Recording`).

    Attributes:
        fps: video frame rate.
        duration_s: video duration (s).
        window_s: simulated seconds the video covers (from the horizon's end).
        seed_index: which of the request's seeds is recorded.
        max_vehicles: most vehicles recorded per sample. A network holding ``n``
            more than that records every ``ceil(n / max_vehicles)``-th vehicle of
            SUMO's vehicle list (the video says so); the demo district never
            comes near it.
    """

    fps: float = 30.0
    duration_s: float = 20.0
    window_s: float | None = None
    seed_index: int = 0
    max_vehicles: int = 4000

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
            "max_vehicles": self.max_vehicles,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RecordSpec:
        """Inverse of :meth:`to_dict`."""
        return cls(
            fps=float(data["fps"]),
            duration_s=float(data["duration_s"]),
            window_s=None if data.get("window_s") is None else float(data["window_s"]),
            seed_index=int(data.get("seed_index", 0)),
            max_vehicles=int(data.get("max_vehicles", 4000)),
        )


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
        begin_s: simulation time the warm-up starts at (s): where the demand's
            traffic is (a 7:00 routes file begins at 25200); the horizon then ends
            at ``begin_s + warmup_s + horizon_s``.
        additional: extra SUMO additional files (e.g. detectors for actuated plans).
        record: what to record for the video (None: nothing).
        confidence_level: two-sided level of the paired confidence intervals.
        mesoscopic: run SUMO's mesoscopic model (queues per edge segment, signals
            honoured) instead of the microscopic one: several times faster, coarser.
        elimination_seeds: sequential elimination: every plan first runs on the
            first ``elimination_seeds`` seeds only; then only the ``finalists``
            candidates with the best paired wait change on them (and the current
            plan) run on the remaining seeds. The others are reported as
            eliminated (the gate refuses them). 0: every plan runs every seed.
        finalists: how many candidates go on to every seed (with elimination).
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
    begin_s: int = 0
    additional: tuple[str, ...] = ()
    record: RecordSpec | None = None
    confidence_level: float = 0.95
    mesoscopic: bool = False
    elimination_seeds: int = 0
    finalists: int = 1

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
        if self.begin_s < 0:
            raise ConfigError(f"begin_s must be >= 0 (got {self.begin_s})")
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
        if self.record is not None and self.record.max_vehicles < 1:
            raise ConfigError(f"record.max_vehicles must be >= 1 (got {self.record.max_vehicles})")
        if not 0 <= self.elimination_seeds < len(self.seeds):
            raise ConfigError(
                f"elimination_seeds must be 0 (off) or fewer than the {len(self.seeds)} seeds "
                f"(got {self.elimination_seeds})"
            )
        if self.finalists < 1:
            raise ConfigError(f"finalists must be >= 1 (got {self.finalists})")

    def eliminates(self) -> bool:
        """Whether some candidates may be eliminated before running every seed."""
        return self.elimination_seeds > 0 and len(self.candidates) > self.finalists

    def plan_names(self) -> tuple[str, ...]:
        """The current plan's name followed by the candidates' names, sorted."""
        return (CURRENT, *sorted(self.candidates))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data, with the sha256 of the network and demand files."""
        return {
            "network": self.network,
            "network_sha256": sha256_file(Path(self.network)),
            "demand": self.demand,
            "demand_sha256": sha256_file(Path(self.demand)),
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
            "begin_s": self.begin_s,
            "additional": list(self.additional),
            "record": None if self.record is None else self.record.to_dict(),
            "confidence_level": self.confidence_level,
            "mesoscopic": self.mesoscopic,
            "elimination_seeds": self.elimination_seeds,
            "finalists": self.finalists,
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
                if recorded is not None and recorded != sha256_file(Path(str(data[key]))):
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
            begin_s=int(data.get("begin_s", 0)),  # records before begin_s started at 0
            additional=tuple(str(a) for a in data["additional"]),
            record=None if data["record"] is None else RecordSpec.from_dict(data["record"]),
            confidence_level=float(data["confidence_level"]),
            mesoscopic=bool(data.get("mesoscopic", False)),
            # records from before sequential elimination ran every plan on every seed
            elimination_seeds=int(data.get("elimination_seeds", 0)),
            finalists=int(data.get("finalists", 1)),
        )


def whatif_seeds(settings: Settings) -> tuple[int, ...]:
    """The paired seeds of every what-if: ``simulation.seeds`` from ``simulation.base_seed``."""
    base = settings.simulation.base_seed
    return tuple(base + i for i in range(settings.simulation.seeds))


def request_from_settings(
    settings: Settings | None,
    *,
    network: str | Path,
    demand: str | Path,
    current: Mapping[str, IntersectionTiming],
    candidates: Mapping[str, Mapping[str, IntersectionTiming]],
    field_time_s: int = 0,
    begin_s: int = 0,
    horizon_s: int | None = None,
    warmup_s: int | None = None,
    seeds: int | None = None,
    record_video: bool = False,
    mesoscopic: bool = False,
) -> WhatIfRequest:
    """The what-if request the settings call for (the daemon's cycle and ``simulate``).

    Args:
        settings: the daemon's settings; ``None`` (no settings file) uses the
            settings schema's defaults (``simulation.*`` and ``gate.confidence_level``).
        network: the ``.net.xml``.
        demand: the routes file.
        current: tls id -> plan running now.
        candidates: candidate name -> (tls id -> plan).
        field_time_s: field clock at simulation time 0 (aligns offsets with the field).
        begin_s: simulation time the warm-up starts at (the demand's window).
        horizon_s: overrides ``simulation.horizon_s``.
        warmup_s: overrides ``simulation.warmup_s``.
        seeds: overrides ``simulation.seeds`` (how many; they start at ``simulation.base_seed``).
        record_video: record for the what-if video when ``video.enabled`` (at its
            fps and duration).
        mesoscopic: run SUMO's mesoscopic model.

    Returns:
        The request (not yet validated: :meth:`WhatIfRequest.validate` runs in the engine).
    """
    if settings is None:  # the schema's defaults, as if the TOML set nothing
        sim_fields, gate_fields = SimulationSettings.model_fields, GateSettings.model_fields
        base_seed, seed_count = sim_fields["base_seed"].default, sim_fields["seeds"].default
        sim_horizon, sim_warmup = sim_fields["horizon_s"].default, sim_fields["warmup_s"].default
        step_length_s = sim_fields["step_length_s"].default
        gridlock_s = sim_fields["gridlock_s"].default
        confidence_level, record = gate_fields["confidence_level"].default, None
        elimination_seeds = sim_fields["elimination_seeds"].default
        finalists = sim_fields["finalists"].default
    else:
        sim = settings.simulation
        base_seed, seed_count = sim.base_seed, sim.seeds
        sim_horizon, sim_warmup = sim.horizon_s, sim.warmup_s
        step_length_s, gridlock_s = sim.step_length_s, sim.gridlock_s
        confidence_level = settings.gate.confidence_level
        elimination_seeds, finalists = sim.elimination_seeds, sim.finalists
        video = settings.video
        record = (
            RecordSpec(fps=video.fps, duration_s=video.duration_s)
            if record_video and video.enabled
            else None
        )
    count = seed_count if seeds is None else seeds
    if elimination_seeds >= count:  # fewer seeds asked for than elimination needs: none
        elimination_seeds = 0
    if record is not None and elimination_seeds:
        # the video shows the current plan and the chosen candidate: record on the
        # first seed past the elimination round, which only they run (a recorded
        # run costs about half a plain one more; recording every candidate on a
        # first-round seed wasted that on each eliminated one)
        record = replace(record, seed_index=elimination_seeds)
    return WhatIfRequest(
        network=str(network),
        demand=str(demand),
        current=dict(current),
        candidates={k: dict(v) for k, v in candidates.items()},
        horizon_s=sim_horizon if horizon_s is None else horizon_s,
        warmup_s=sim_warmup if warmup_s is None else warmup_s,
        seeds=tuple(base_seed + i for i in range(count)),
        step_length_s=step_length_s,
        gridlock_s=gridlock_s,
        field_time_s=field_time_s,
        begin_s=begin_s,
        record=record,
        confidence_level=confidence_level,
        mesoscopic=mesoscopic,
        elimination_seeds=elimination_seeds,
        finalists=finalists,
    )
