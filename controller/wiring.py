"""Adapters from the packages' public APIs to the cycle's ports.

The cycle (:mod:`controller.cycle`) knows only its ports; this module builds the
real ones from :class:`configs.settings.Settings`: the twin on libsumo worker
processes with demand estimated from detector counts, the proposer (RL policy,
Webster, the current plan), the renderer, and the field over OPC UA.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from configs.errors import SimulationError
from configs.settings import Settings
from configs.timing import IntersectionTiming
from controller.cycle import Observation, WhatIfSummary
from controller.gate import CandidateOutcome
from simulators.demand import FleetShare, RoadGraph, candidate_routes, estimate_demand, write_routes
from simulators.network import NetworkModel
from simulators.twin import (
    LibsumoWhatIfEngine,
    RecordSpec,
    WhatIfEngine,
    WhatIfRequest,
    WhatIfResult,
)

__all__ = ["TwinAdapter", "outcomes_of", "whatif_request_seeds"]

logger = logging.getLogger(__name__)


def whatif_request_seeds(settings: Settings) -> tuple[int, ...]:
    """The paired seeds of every what-if (deterministic, recorded in the ledger)."""
    base = settings.simulation.base_seed
    return tuple(base + i for i in range(settings.simulation.seeds))


def outcomes_of(result: WhatIfResult) -> tuple[CandidateOutcome, ...]:
    """The gate's view of a what-if result: each candidate's paired changes."""
    found: list[CandidateOutcome] = []
    current_failed = result.current.failed
    for item in result.outcomes:
        if item.name == result.current.name:
            continue
        failed = item.failed or (
            f"current plan failed: {current_failed}" if current_failed else None
        )
        wait = item.changes.get("wait")
        nox = item.changes.get("nox")
        if failed is not None or wait is None or nox is None:
            found.append(
                CandidateOutcome(item.name, 0.0, (0.0, 0.0), 0.0, (0.0, 0.0), failed or "no change")
            )
            continue
        found.append(CandidateOutcome(item.name, wait.mean, wait.ci, nox.mean, nox.ci))
    return tuple(found)


class TwinAdapter:
    """The twin port: demand from detector counts, what-if on libsumo workers."""

    def __init__(
        self,
        settings: Settings,
        network: NetworkModel,
        detector_lanes: Mapping[str, str],
        engine: WhatIfEngine | None = None,
    ) -> None:
        self.settings = settings
        self.network = network
        self.detector_lanes = dict(detector_lanes)
        self.graph = RoadGraph.from_net_file(Path(network.path))
        self.routes = candidate_routes(self.graph)
        self.engine: WhatIfEngine = engine or LibsumoWhatIfEngine(settings.simulation.workers)
        self.demand_dir = settings.state_dir / "demand"
        self._field_time_s = 0

    def estimate(self, observation: Observation) -> tuple[Mapping[str, Any], str]:
        """Estimate the twin's demand from the interval's detector counts."""
        if observation.interval_s <= 0 or not any(observation.counts.values()):
            raise SimulationError(
                "no detector counts yet (the first observation only sets the baseline); "
                "the next cycle will have an interval to estimate demand from"
            )
        fleet = [FleetShare(f.emission_class, f.share) for f in self.settings.simulation.fleet]
        estimate = estimate_demand(
            observation.counts,
            observation.interval_s,
            self.detector_lanes,
            self.graph,
            fleet=fleet,
            routes=self.routes,
        )
        self._field_time_s = int(observation.field_time_s)
        return estimate.snapshot, estimate.digest

    def _routes_file(self, demand: Mapping[str, Any]) -> Path:
        sim = self.settings.simulation
        self.demand_dir.mkdir(parents=True, exist_ok=True)
        path = self.demand_dir / f"{demand['digest']}.rou.xml"
        if not path.exists():
            tmp = path.with_suffix(".tmp")
            write_routes(demand, tmp, end_s=sim.warmup_s + sim.horizon_s + 60)
            tmp.replace(path)
        return path

    def request(
        self,
        demand: Mapping[str, Any],
        current: Mapping[str, IntersectionTiming],
        candidates: Mapping[str, Mapping[str, IntersectionTiming]],
    ) -> WhatIfRequest:
        """The what-if request of a cycle (recorded so an auditor can replay it)."""
        sim = self.settings.simulation
        video = self.settings.video
        return WhatIfRequest(
            network=str(self.network.path),
            demand=str(self._routes_file(demand)),
            current=dict(current),
            candidates={k: dict(v) for k, v in candidates.items()},
            horizon_s=sim.horizon_s,
            warmup_s=sim.warmup_s,
            seeds=whatif_request_seeds(self.settings),
            step_length_s=sim.step_length_s,
            gridlock_s=sim.gridlock_s,
            field_time_s=self._field_time_s,
            record=RecordSpec(fps=video.fps, duration_s=video.duration_s)
            if video.enabled
            else None,
            confidence_level=self.settings.gate.confidence_level,
        )

    def whatif(
        self,
        demand: Mapping[str, Any],
        current: Mapping[str, IntersectionTiming],
        candidates: Mapping[str, Mapping[str, IntersectionTiming]],
        cancel: threading.Event,
    ) -> WhatIfSummary:
        """Run current vs candidates on paired seeds."""
        request = self.request(demand, current, candidates)
        result = self.engine.evaluate(request)
        return WhatIfSummary(
            outcomes=outcomes_of(result),
            record={"request": request.to_dict(), "result": result.to_dict()},
            horizon_s=result.horizon_s,
            seeds=result.seeds,
            recording=result.recordings,
        )

    def close(self) -> None:
        """Stop the worker processes."""
        close = getattr(self.engine, "close", None)
        if callable(close):
            close()
