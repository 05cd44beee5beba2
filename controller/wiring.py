"""The composition root: adapters from the packages' public APIs to the cycle's ports.

The cycle (:mod:`controller.cycle`) knows only its ports
(:mod:`controller.contracts`); this module builds the real ones from
:class:`configs.settings.Settings` and connects them: the twin on libsumo worker
processes with demand estimated from detector counts, the proposer (RL policy,
Webster, the current plan; the screening search is :mod:`edge_accel.screening`),
the renderer, and the controllers over OPC UA (:class:`OpcUaFleet`). It builds
and connects only; the logic lives in the packages. Nothing imports this module
but the CLI and the demo.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from configs.errors import (
    ActuationError,
    ConfigError,
    SignaltwinError,
    SimulationError,
    WhatIfCancelled,
)
from configs.settings import Settings
from configs.settings_file import read_secret
from configs.timing import IntersectionTiming, NetworkRef, TimingConfiguration
from controller.contracts import (
    ComputeStatus,
    CounterfactualEstimate,
    CycleCancelled,
    DeployOutcome,
    Observation,
    WhatIfSummary,
    count_increase,
)
from controller.cycle import CycleRunner
from controller.feedback import FeedbackCollector
from controller.gate import CandidateOutcome
from controller.recovery import deploy_outcome, recover, settle
from simulators.calibration import TwinCalibration
from simulators.demand import RoadGraph, candidate_routes, estimate_demand, write_routes
from simulators.detector_health import LoopHealth
from simulators.field.records import FieldCounters, WindowTotals
from simulators.network import NetworkModel
from simulators.twin import CounterfactualEstimate as TwinEstimate
from simulators.twin import (
    DemandSource,
    RayWhatIfEngine,
    WhatIfEngine,
    WhatIfRequest,
    WhatIfResult,
    estimate_counterfactual,
    request_from_settings,
    whatif_engine,
)

__all__ = [
    "CalibrationFile",
    "CounterfactualAdapter",
    "OpcUaFleet",
    "Assembly",
    "ProposerAdapter",
    "RendererAdapter",
    "TwinAdapter",
    "assemble_runner",
    "build_runner",
    "outcomes_of",
]

if TYPE_CHECKING:
    from edge_accel.screening import PerturbationPool

logger = logging.getLogger(__name__)


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
        found.append(
            CandidateOutcome(
                item.name, wait.mean, wait.ci, nox.mean, nox.ci, eliminated=item.eliminated
            )
        )
    return tuple(found)


class TwinAdapter:
    """The twin port: demand from detector counts, what-if on libsumo workers."""

    def __init__(
        self,
        settings: Settings,
        network: NetworkModel,
        detector_lanes: Mapping[str, str],
        engine: WhatIfEngine | None = None,
        calibration: CalibrationFile | None = None,
    ) -> None:
        self.settings = settings
        self.network = network
        self.calibration = calibration
        self.detector_lanes = dict(detector_lanes)
        self.graph = RoadGraph.from_net_file(Path(network.path))
        self.routes = candidate_routes(self.graph)
        if engine is None:
            chosen = whatif_engine(settings)
            if isinstance(chosen, RayWhatIfEngine):
                chosen.connect()  # an unreachable cluster stops the start-up (ConfigError)
            engine = chosen
        self.engine: WhatIfEngine = engine
        self.demand_dir = settings.state_dir / "demand"
        self._field_time_s = 0
        self.loops = LoopHealth()

    def estimate(self, observation: Observation) -> tuple[Mapping[str, Any], str]:
        """Estimate the twin's demand from the interval's detector counts."""
        if observation.interval_s <= 0 or not any(observation.counts.values()):
            raise SimulationError(
                "no detector counts yet (the first observation only sets the baseline); "
                "the next cycle will have an interval to estimate demand from"
            )
        repair = self.loops.check(observation.counts, observation.interval_s)
        estimate = estimate_demand(
            repair.counts,
            observation.interval_s,
            self.detector_lanes,
            self.graph,
            fleet=self.settings.simulation.fleet,
            routes=self.routes,
        )
        self._field_time_s = int(observation.field_time_s)
        snapshot: Mapping[str, Any] = estimate.snapshot
        if repair.repaired:
            logger.warning(
                "%d loop(s) counted far less than their recent rate implies; bridged from "
                "it for the twin's demand: %s",
                len(repair.repaired),
                ", ".join(
                    f"{d} ({c:g} counted, {u:g} used)"
                    for d, (c, u) in sorted(repair.repaired.items())
                ),
            )
            snapshot = repair.record_in(snapshot)
        if self.calibration is None:
            return snapshot, str(snapshot["digest"])
        snapshot = self.calibration.apply(snapshot)
        return snapshot, str(snapshot["digest"])

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
        return request_from_settings(
            self.settings,
            network=self.network.path,
            demand=self._routes_file(demand),
            current=current,
            candidates=candidates,
            field_time_s=self._field_time_s,
            record_video=True,
        )

    def whatif(
        self,
        demand: Mapping[str, Any],
        current: Mapping[str, IntersectionTiming],
        candidates: Mapping[str, Mapping[str, IntersectionTiming]],
        cancel: threading.Event,
    ) -> WhatIfSummary:
        """Run current vs candidates on paired seeds.

        Raises:
            CycleCancelled: ``cancel`` was set (shutdown) while the what-if ran.
        """
        request = self.request(demand, current, candidates)
        try:
            result = self.engine.evaluate(request, cancel=cancel)
        except WhatIfCancelled as e:
            raise CycleCancelled(f"what-if cancelled: {e}") from e
        document: dict[str, Any] = {"request": request.to_dict(), "result": result.to_dict()}
        if isinstance(self.engine, RayWhatIfEngine):
            # where it ran, and the runs retried after a lost worker (the auditor's
            # replay compares "result", which does not depend on either)
            document["compute"] = {"backend": "ray", "retried": list(self.engine.retried)}
        return WhatIfSummary(
            outcomes=outcomes_of(result),
            document=document,
            horizon_s=result.horizon_s,
            seeds=result.seeds,
            recording=result.recordings,
        )

    @property
    def backend(self) -> str:
        """Where what-ifs run: ``local`` or ``ray``."""
        return self.engine.backend if isinstance(self.engine, ComputeStatus) else "local"

    @property
    def workers_alive(self) -> int:
        """What-if workers ready now (processes, or Ray actors placed on the cluster)."""
        if isinstance(self.engine, ComputeStatus):
            return self.engine.workers_alive
        return self.settings.simulation.workers

    def close(self) -> None:
        """Stop the worker processes."""
        close = getattr(self.engine, "close", None)
        if callable(close):
            close()


# --------------------------------------------------------------------------- proposer


class ProposerAdapter:
    """Candidates from the RL policy and Webster, projected onto the safe set.

    With a surrogate, many perturbations of those proposals are screened and the
    most promising go to the twin; without one the proposals themselves do.
    """

    def __init__(
        self,
        settings: Settings,
        network: NetworkModel,
        policy: Any | None = None,
        surrogate: Any | None = None,
        surrogate_device: Any | None = None,
    ) -> None:
        from rl.features import layouts_from_network

        self.settings = settings
        self.network = network
        self.layouts = layouts_from_network(network)
        self.policy = policy
        self.surrogate = surrogate
        self.surrogate_device = surrogate_device
        self._current: Mapping[str, IntersectionTiming] = {}
        #: the screening surrogate's demand features of the last proposal
        self.demand_features: Any = None
        #: intersection -> critical flow ratio of each green, of the last proposal
        self.flow_ratios: dict[str, list[float]] = {}
        #: the per-intersection observations of the last proposal (for the feedback store)
        self.last_observations: Mapping[str, Any] = {}
        #: where the policy's weights are (fine-tuning starts from them)
        self.policy_path: Path | None = None

    def _observations(
        self, observation: Observation, current: Mapping[str, IntersectionTiming]
    ) -> Any:
        from rl.features import build_observations

        return build_observations(self.layouts, observation.counts, observation.interval_s, current)

    def _project(
        self,
        proposals: Mapping[str, Any],
        current: Mapping[str, IntersectionTiming],
        mode: str = "fixed",
    ) -> dict[str, IntersectionTiming]:
        from configs.safety import project_plans
        from rl.baselines import as_mode

        bases = {}
        for tls_id in proposals:
            base = self.layouts[tls_id].base
            bases[tls_id] = base if mode == base.mode else as_mode(base, mode)  # type: ignore[arg-type]
        return project_plans(proposals, bases, self.settings.safety, current, skip_unsafe=True)

    def propose(
        self,
        observation: Observation,
        demand: Mapping[str, Any],
        current: Mapping[str, IntersectionTiming],
    ) -> tuple[dict[str, dict[str, IntersectionTiming]], str | None]:
        """Return the candidates of this cycle and the policy's digest."""
        from rl.baselines import webster_proposal

        observations = self._observations(observation, current)
        self.last_observations = observations
        candidates: dict[str, dict[str, IntersectionTiming]] = {
            "webster": self._project(
                {t: webster_proposal(o) for t, o in observations.items()}, current
            )
        }
        policy_sha: str | None = None
        if self.policy is not None:
            # an actuated policy tunes actuated plans: project onto the actuated base
            candidates["policy"] = self._project(
                self.policy.propose(observations), current, str(self.policy.mode)
            )
            policy_sha = str(self.policy.sha256)
        from edge_accel.screening import demand_features
        from rl.features import critical_flow_ratios

        self._current = current
        self.flow_ratios = {t: critical_flow_ratios(o) for t, o in observations.items()}
        self.demand_features = demand_features([sum(r) for r in self.flow_ratios.values()])
        return candidates, policy_sha

    def perturbation_pool(
        self, candidates: Mapping[str, Mapping[str, IntersectionTiming]], n: int
    ) -> PerturbationPool:
        """The proposals and ``n`` safe perturbations of them (what :meth:`screen` scores).

        Projected as tensors on the surrogate's device; a perturbation becomes plans
        only when taken from the pool. Call after :meth:`propose` (it bounds the
        perturbations by the plans in force).
        """
        from edge_accel.screening import PerturbationPool
        from rl.baselines import as_mode

        return PerturbationPool(
            candidates,
            self._current,
            {t: layout.base for t, layout in self.layouts.items()},
            self.settings.safety,
            seed=self.settings.simulation.base_seed,
            n=n,
            device=self.surrogate_device,
            mode_base=as_mode,  # type: ignore[arg-type]
        )

    def features(self, arrays: Any) -> Any:
        """The surrogate's features of plans (``PlanArrays`` over the plans in force, sorted).

        Call after :meth:`propose` (the demand and the plans in force are its).
        """
        from edge_accel.screening import flow_ratio_array
        from edge_accel.surrogate import candidate_features, plan_arrays

        order = sorted(self._current)
        return candidate_features(
            self.demand_features,
            arrays,
            plan_arrays([self._current], order),
            self.surrogate_device,
            flow_ratios=flow_ratio_array(self.flow_ratios, order),
        )

    def screen(
        self, candidates: dict[str, dict[str, IntersectionTiming]], keep: int
    ) -> dict[str, dict[str, IntersectionTiming]]:
        """The proposals, and in the remaining slots the surrogate's best perturbations.

        The proposals themselves (policy, Webster) always reach the twin, so the
        ledger shows how each proposer fared; ``keep`` bounds the total. Only the
        perturbations kept are built as plans.
        """
        kept = dict(sorted(candidates.items())[:keep])
        n = self.settings.simulation.screen_candidates
        if self.surrogate is None or n <= 0 or not candidates or len(kept) >= keep:
            return kept
        from edge_accel.surrogate import screen

        pool = self.perturbation_pool(candidates, n)
        result = screen(
            self.surrogate,
            self.features(pool.arrays(sorted(self._current))),
            top_k=keep + len(candidates),
            max_nox_change=self.settings.gate.max_nox_increase,
        )
        for i in result.selected:
            if len(kept) >= keep:
                break
            name, plans = pool[int(i)]
            kept.setdefault(name, plans)
        logger.info("screened %d candidates, kept %s", len(pool), sorted(kept))
        return kept


# --------------------------------------------------------------------------- renderer


class RendererAdapter:
    """Draws the what-if video of the chosen candidate next to the current plan.

    The picture is the recorded seed's run (vehicles, signal states, edges); the
    numbers quoted in it are the what-if's paired multi-seed estimate, the ones
    the gate decided on, with the gate's verdict on them.
    """

    def __init__(self, settings: Settings, network: NetworkModel) -> None:
        from edge_accel.device import select_device
        from edge_accel.scene import SceneGeometry
        from simulators.geometry import network_geometry

        self.settings = settings
        self.geometry = SceneGeometry(**vars(network_geometry(Path(network.path))))
        self.device = select_device(settings.edge.device)
        # the rasterised scene depends only on geometry, size and device: build it once
        self._scene: Any = None

    def render(
        self, summary: WhatIfSummary, candidate: str, attribution: Mapping[str, Any], out: Path
    ) -> tuple[Path, str]:
        """Render current | candidate | difference and return (video path, sha256)."""
        from configs.timing import canonical_json, sha256_hex
        from edge_accel.encode import Attribution
        from edge_accel.render import render_whatif
        from simulators.sumo import SUMO_VERSION

        recordings = summary.recording or {}
        if "current" not in recordings or candidate not in recordings:
            raise SimulationError(
                f"the what-if recorded no time series for 'current' and {candidate!r}; "
                "enable [video] before the what-if runs"
            )
        request = summary.document.get("request", {})

        def plan_digest(plans: Any) -> str:
            return sha256_hex(canonical_json(plans)) if plans else "0" * 64

        video = self.settings.video
        out.parent.mkdir(parents=True, exist_ok=True)
        if self._scene is None:
            from edge_accel.whatif_scene import WhatIfScene

            self._scene = WhatIfScene(self.geometry, video.width, video.height, self.device)
        artifact = render_whatif(
            self.geometry,
            _frames("CURRENT PLAN", recordings["current"]),
            _frames(f"CANDIDATE ({candidate})", recordings[candidate]),
            Attribution(
                network_sha256=str(attribution.get("network_sha256", "")),
                demand_sha256=str(attribution.get("demand_sha256", "")),
                plan_current_sha256=plan_digest(request.get("current")),
                plan_candidate_sha256=plan_digest(request.get("candidates", {}).get(candidate)),
                simulator_version=f"sumo {SUMO_VERSION}",
                seed=int(recordings[candidate].seed),
            ),
            out,
            width=video.width,
            height=video.height,
            fps=video.fps,
            device=self.device,
            duration_s=video.duration_s,
            preset=video.preset,
            crf=video.crf,
            scene=self._scene,
            # the on-screen clock is the field's (the twin's time 0 is field_time_s)
            clock_offset_s=float(request.get("field_time_s", 0)),
            estimate=self.estimate(summary, candidate),
            title=f"signaltwin what-if: candidate \u201c{candidate}\u201d against the current plan",
        )
        return artifact.path, artifact.sha256

    def estimate(self, summary: WhatIfSummary, candidate: str) -> Any:
        """The paired estimate the gate decided on, with its verdict (an ``edge_accel`` value)."""
        from controller.gate import decide
        from edge_accel.scene import PairedEstimate

        outcome = next((o for o in summary.outcomes if o.name == candidate), None)
        if outcome is None or outcome.failed is not None:
            return None
        gate = self.settings.gate
        verdict = next(
            (v for v in decide(summary.outcomes, gate).verdicts if v.candidate == candidate), None
        )
        basis = (
            f"upper {gate.confidence_level * 100:g} % bounds"
            if gate.decide_on == "confidence_bound"
            else "point estimates"
        )
        thresholds = (
            f"wait \u2264 \u2212{gate.min_wait_reduction * 100:g} %, "
            f"NOx < +{gate.max_nox_increase * 100:g} %"
        )
        passed = verdict.passed if verdict is not None else None
        line = f"Gate {'passed' if passed else 'refused'} on the {basis}: {thresholds}"
        return PairedEstimate(
            wait_change=outcome.wait_change,
            wait_ci=outcome.wait_change_ci,
            nox_change=outcome.nox_change,
            nox_ci=outcome.nox_change_ci,
            seeds=tuple(summary.seeds),
            confidence_level=gate.confidence_level,
            verdict=line if verdict is not None else "",
            passed=passed,
            intersection_wait_change=_approach_wait_changes(summary, candidate),
        )


def _frames(label: str, rec: Any) -> Any:
    """A recording of the twin (:class:`simulators.twin.Recording`) as one side of the video."""
    from edge_accel.scene import SignalSamples, VehicleSamples, WhatIfFrames

    samples = len(rec.frame_times_s)
    vehicles = (
        VehicleSamples.from_arrays(
            rec.vehicle_offsets, rec.vehicle_x_m, rec.vehicle_y_m, rec.vehicle_angle_deg,
            rec.vehicle_speed_mps, rec.vehicle_count, samples=samples,
        )
        if rec.has_vehicles
        else None
    )  # fmt: skip
    signals = (
        SignalSamples.from_arrays(
            rec.signal_ids, rec.signal_offsets, rec.signal_states, samples=samples
        )
        if rec.signal_ids
        else None
    )
    return WhatIfFrames.from_arrays(
        label,
        rec.edge_ids,
        rec.frame_times_s,
        rec.occupancy,
        rec.queue_veh,
        rec.mean_wait_s,
        rec.nox_mg,
        vehicles=vehicles,
        signals=signals,
    )


def _approach_wait_changes(summary: WhatIfSummary, candidate: str) -> dict[str, float]:
    """Per light, the relative change of its approaches' halting time (means over the seeds)."""
    result_data = summary.document.get("result")
    if not isinstance(result_data, Mapping):
        return {}
    try:
        result = WhatIfResult.from_dict(result_data)
        current, chosen = result.current, result.outcome(candidate)
    except (ConfigError, KeyError):
        return {}
    out: dict[str, float] = {}
    for tls, now in sorted(current.intersections.items()):
        new = chosen.intersections.get(tls)
        if new is not None and now.wait_veh_s > 0:
            out[tls] = new.wait_veh_s / now.wait_veh_s - 1.0
    return out


# --------------------------------------------------------------------------- field over OPC UA


class OpcUaFleet:
    """The controllers over OPC UA: the field as they report it, and the push to them.

    Detector counts are cumulative on the controllers; each observation returns
    the counts since the previous one (the first observation is taken when the
    port is primed at start-up, so the first cycle already has an interval).
    """

    def __init__(self, actuator: Any, settings: Settings) -> None:
        self.actuator = actuator
        self.settings = settings
        self._previous: dict[str, int] | None = None
        self._previous_time_s = 0.0
        self.last_snapshots: dict[str, Any] = {}

    @staticmethod
    def _counters(reachable: list[Any]) -> FieldCounters | None:
        """The cumulative totals of the controllers that report them (None: none does)."""
        # an actuator's snapshot may predate the totals (a fake, an older adapter)
        read = [
            (s, getattr(s, "halting_total_veh_s", None), getattr(s, "nox_total_mg", None))
            for s in reachable
        ]
        totals = [(s, h, n) for s, h, n in read if h is not None and n is not None]
        if not totals:
            return None
        return FieldCounters(
            field_time_s=max(s.field_time_s for s in reachable),
            halting_veh_s={s.tls_id: float(h) for s, h, _ in totals},
            nox_mg={s.tls_id: float(n) for s, _, n in totals},
            detector_counts={d: int(v[0]) for s in reachable for d, v in s.detectors.items()},
        )

    def prime(self) -> None:
        """Take the baseline observation (counts start from here)."""
        try:
            self.observe()
        except SignaltwinError as e:
            logger.warning("could not read the controllers at start-up: %s", e)

    def observe(self) -> Observation:
        """Read every controller; counts are the increase since the last observation."""
        snapshots = self.actuator.read_all()
        self.last_snapshots = dict(snapshots)
        reachable = [s for s in snapshots.values() if s.reachable]
        if not reachable:
            raise ActuationError("no controller could be read; is the field reachable?")
        field_time = max(s.field_time_s for s in reachable)
        cumulative = {d: int(v[0]) for s in reachable for d, v in s.detectors.items()}
        counts: dict[str, float] = {}
        interval = 0.0
        if self._previous is not None:
            interval = field_time - self._previous_time_s
            counts = count_increase(self._previous, cumulative)
        self._previous, self._previous_time_s = cumulative, field_time
        return Observation(
            field_time_s=field_time,
            counts=counts,
            interval_s=max(0.0, interval),
            active={s.tls_id: (s.active_sequence, s.active_digest) for s in reachable},
            measurements={s.tls_id: (s.mean_wait_s, s.nox_mg) for s in reachable},
            unhealthy=tuple(sorted(t for t, s in snapshots.items() if not s.reachable)),
            counters=self._counters(reachable),
        )

    def deploy(self, envelope: bytes, config: TimingConfiguration, align_s: int) -> DeployOutcome:
        """Two-phase push to every controller (aborted everywhere unless all staged).

        If the push call itself fails (the actuator's thread timed out), every
        controller is read back and the plan aborted wherever it is only staged
        (:func:`controller.recovery.settle`), so the outcome says what runs.
        """
        try:
            report = self.actuator.push(
                envelope,
                config.sequence,
                alignment_s=float(align_s),
                lead_s=self.settings.controllers.activate_lead_s,
            )
        except SignaltwinError as e:
            logger.error("push of plan %d failed (%s); settling by read-back", config.sequence, e)
            settled = settle(self.actuator, config.sequence, config.digest(), config.intersections)
            message = f"push failed ({e}); read back: {settled.outcome}"
            return deploy_outcome(settled, config.digest(), message, settled_after_failure=True)
        return DeployOutcome(
            outcome=report.outcome,
            running=frozenset(report.running()),
            errors=report.errors(),
            message=report.reason,
            activate_at_field_time_s=report.activate_at_field_time_s,
            push_record=report.to_dict(),
        )

    def read_counters(self) -> FieldCounters | None:
        """The reachable controllers' cumulative totals now (None: no controller reports them).

        The field time is the latest any controller reports; controllers of one
        field read within a second of each other.
        """
        snapshots = [s for s in self.actuator.read_all().values() if s.reachable]
        if not snapshots:
            raise ActuationError("no controller could be read for measurements")
        return self._counters(snapshots)

    def close(self) -> None:
        """Close the sessions."""
        self.actuator.close()


# --------------------------------------------------------------------------- feedback


class CalibrationFile:
    """The twin's calibration, persisted in ``state_dir/calibration.json`` after each update."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.calibration = TwinCalibration.load_or_new(path)

    @property
    def demand_scale(self) -> float:
        """Factor applied to the twin's estimated demand."""
        return self.calibration.demand_scale

    def update_from_estimate(self, estimate: CounterfactualEstimate) -> float:
        """Learn from both windows of a measured deployment; save; return the new scale."""
        if not isinstance(estimate, TwinEstimate):
            raise SimulationError(
                f"calibration learns from simulators.twin estimates, not {type(estimate).__name__}"
            )
        scale = self.calibration.update_from_estimate(estimate)
        self.calibration.save(self.path)
        return scale

    def apply(self, snapshot: Mapping[str, Any]) -> dict[str, Any]:
        """The demand snapshot with the scale applied."""
        return self.calibration.apply(snapshot)

    def to_dict(self) -> dict[str, Any]:
        """Plain data."""
        return self.calibration.to_dict()


class CounterfactualAdapter:
    """The counterfactual port: :func:`simulators.twin.estimate_counterfactual` on the twin."""

    def __init__(self, settings: Settings, twin: TwinAdapter) -> None:
        self.settings = settings
        self.twin = twin
        self.demand = DemandSource(
            twin.detector_lanes,
            twin.graph,
            directory=settings.state_dir / "counterfactual",
            routes=twin.routes,
            fleet=settings.simulation.fleet,
        )

    def estimate(
        self,
        *,
        before: WindowTotals,
        after: WindowTotals,
        previous: Mapping[str, IntersectionTiming],
        deployed: Mapping[str, IntersectionTiming],
        only: frozenset[str],
        demand_scale: float,
    ) -> TwinEstimate:
        """Re-simulate the previous and deployed plans on the windows' own demand."""
        sim = self.settings.simulation
        return estimate_counterfactual(
            self.twin.engine,
            network=Path(self.twin.network.path),
            demand=self.demand,
            before=before,
            after=after,
            previous=previous,
            deployed=deployed,
            seeds=tuple(sim.base_seed + i for i in range(self.settings.estimator_seeds)),
            warmup_s=sim.warmup_s,
            confidence_level=self.settings.gate.confidence_level,
            only=only,
            demand_scale=demand_scale,
            step_length_s=sim.step_length_s,
        )


# --------------------------------------------------------------------------- composition


@dataclass
class Assembly:
    """What :func:`assemble_runner` built: the runner and the parts a caller may need."""

    runner: CycleRunner
    fleet: Any
    collector: FeedbackCollector
    ledger: Any
    signer: Any


def build_runner(settings: Settings, *, reload: bool = False) -> CycleRunner:
    """Build the daemon's cycle runner from settings (opens HSM, ledger, sessions, workers).

    Args:
        settings: the validated settings.
        reload: the daemon builds this runner on a reload (SIGHUP) while the
            previous runner of this process may be pushing: a push left at
            "pushing" in the ledger is then not settled (only at start-up).
    """
    from actuation import ThreadedActuator, pool_from_settings
    from simulators.network import ensure_detectors, load_network

    sim = settings.simulation
    # simulation.detectors is written (loops on every incoming lane) when absent
    detectors = ensure_detectors(
        sim.network, sim.detectors or settings.state_dir / "detectors.add.xml"
    )
    network = load_network(sim.network, detectors)
    actuators: list[Any] = []

    def opcua_fleet(signer: Any, ref: NetworkRef) -> OpcUaFleet:
        password = read_secret(settings.controllers.password_file, "controllers.password_file")
        actuator = ThreadedActuator(
            lambda: pool_from_settings(settings.controllers, password.get_secret_value()),
            start_wait_s=settings.controllers.connect_timeout_s,
        )
        actuators.append(actuator)
        return OpcUaFleet(actuator, settings)

    assembly = assemble_runner(settings, network, opcua_fleet)
    try:
        # a push interrupted by a crash is settled before the first cycle (never
        # re-pushed); a runner built by a reload only takes the sequence floor, as
        # the previous runner of this process may be pushing right now
        recover(assembly.runner, actuators[0], settle_interrupted=not reload)
    except BaseException:
        assembly.runner.close()
        raise
    return assembly.runner


def assemble_runner(
    settings: Settings,
    network: NetworkModel,
    make_fleet: Callable[[Any, NetworkRef], Any],
    *,
    truth: Any | None = None,
) -> Assembly:
    """The daemon's parts from settings, around the fleet ``make_fleet(signer, network ref)`` makes.

    HSM signer (the token provisioned first when ``hsm.auto_provision``), ledger
    with the key enrolled, the fleet (primed), twin with its calibration, policy,
    proposer with the screening surrogate, feedback store and collector (with the
    counterfactual estimator, and ``truth`` in evaluation), renderer, runner. The
    daemon's fleet is OPC UA (:func:`build_runner`); evaluation passes an
    in-process one (:mod:`controller.lockstep`). Everything opened is closed by
    the runner's ``close()``, or here when a later part fails.
    """
    from controller.ledger import Ledger, PolicyVersionRecord
    from hsm import HsmParams, HsmSigner

    closers: list[Any] = []
    try:
        # first: an unreachable Ray cluster stops the start-up before anything is opened
        engine = whatif_engine(settings)
        closers.append(engine)
        if isinstance(engine, RayWhatIfEngine):
            engine.connect()
        if settings.hsm.auto_provision:
            from hsm.provision import provision_softhsm

            provision_softhsm(
                settings.state_dir,
                module=settings.hsm.module,
                token_label=settings.hsm.token_label,
                key_label=settings.hsm.key_label,
            )
        signer = HsmSigner(HsmParams.from_settings(settings.hsm))
        closers.append(signer)
        settings.ledger.path.parent.mkdir(parents=True, exist_ok=True)
        ledger = Ledger.open(settings.ledger.path)
        closers.append(ledger)
        ledger.enrol_key(
            signer, enrolment=signer.enrolment_record(settings.hsm.attestation_certificate)
        )
        # controllers compare the id from the same settings and the file's sha256
        ref = NetworkRef(id=settings.network_id, sha256=network.sha256)
        fleet = make_fleet(signer, ref)
        closers.append(fleet)
        fleet.prime()
        calibration = (
            CalibrationFile(settings.state_dir / "calibration.json")
            if settings.feedback.calibrate
            else None
        )
        twin = TwinAdapter(
            settings,
            network,
            {d.id: d.lane_id for d in network.detectors},
            engine=engine,
            calibration=calibration,
        )
        closers.remove(engine)  # the twin closes it
        closers.append(twin)
        policy = load_policy(settings)
        if policy is not None:
            ledger.append(
                PolicyVersionRecord(sha256=policy.sha256, path=str(policy_path(settings))),
                dedupe_key=f"policy:{policy.sha256}",
            )
        surrogate, device = load_screening_surrogate(settings, policy)
        proposer = ProposerAdapter(
            settings, network, policy=policy, surrogate=surrogate, surrogate_device=device
        )
        proposer.policy_path = policy_path(settings) if policy is not None else None
        from rl.feedback import FeedbackStore

        store = FeedbackStore(settings.rl.feedback_path)
        closers.append(store)
        collector = FeedbackCollector(
            settings,
            ledger,
            fleet.read_counters,
            proposer,
            store,
            counterfactual=CounterfactualAdapter(settings, twin),
            calibration=calibration,
            truth=truth,
        )
        # windows a previous run of the daemon had open are measured all the same
        collector.resume_from_ledger()
        # the first before window starts at start-up, not at the first cycle's reading
        collector.read_baseline()
        renderer = RendererAdapter(settings, network) if settings.video.enabled else None
        runner = CycleRunner(
            settings,
            network=ref,
            bases=network.base_programs(),
            fleet=fleet,
            twin=twin,
            proposer=proposer,
            signer=signer,
            ledger=ledger,
            renderer=renderer,
            closers=list(reversed(closers)),
            feedback=collector,
        )
        return Assembly(
            runner=runner, fleet=fleet, collector=collector, ledger=ledger, signer=signer
        )
    except BaseException:
        for item in reversed(closers):
            try:
                item.close()
            except Exception:  # noqa: BLE001 - best effort while failing
                logger.exception("while closing after a failed start-up")
        raise


def policy_path(settings: Settings) -> Path:
    """The policy weights in use: configured, else the one shipped with signaltwin."""
    if settings.rl.policy_path is not None:
        return settings.rl.policy_path
    from rl.policy import SHIPPED_POLICY

    return SHIPPED_POLICY


def load_policy(settings: Settings) -> Any | None:
    """Load the policy (weights only, digest checked); None when there is none to load."""
    from rl.policy import TorchPolicy

    path = policy_path(settings)
    if not path.exists():
        if settings.rl.policy_path is not None:
            raise ConfigError(f"rl.policy_path: {path} does not exist")
        logger.warning("no shipped policy at %s; proposing with Webster only", path)
        return None
    return TorchPolicy.load(path)


def surrogate_made_by(
    settings: Settings, policy: Any | None, mesoscopic: bool = False
) -> dict[str, Any]:
    """What a screening surrogate's rows must come from to screen for these settings.

    The twin (its revision, SUMO's version, micro or meso), the network file,
    the policy whose proposals the perturbations surround, and the feature
    layout. ``surrogate collect`` records it with every row; the daemon
    refuses a surrogate whose record differs (:func:`load_screening_surrogate`).
    """
    from configs.digests import sha256_file
    from edge_accel.surrogate import FEATURES_VERSION
    from simulators.twin import twin_identity

    return {
        "twin": twin_identity(mesoscopic),
        "network_sha256": sha256_file(Path(settings.simulation.network)),
        "policy_sha256": str(policy.sha256) if policy is not None else None,
        "features": FEATURES_VERSION,
    }


def load_screening_surrogate(
    settings: Settings, policy: Any | None
) -> tuple[Any | None, Any | None]:
    """The screening surrogate and its device, or (None, None) when screening is off.

    ``policy`` is the policy the daemon proposes with (None: Webster only).

    Raises:
        ConfigError: the surrogate cannot be loaded, or its rows were made by
            another twin, network, policy or feature layout than this daemon's
            (it would rank candidates by what another system did); the message
            says how to retrain it.
    """
    sim = settings.simulation
    if sim.surrogate is None or sim.screen_candidates <= 0:
        return None, None
    from edge_accel.device import select_device
    from edge_accel.surrogate import load_surrogate

    device = select_device(settings.edge.device)
    model = load_surrogate(sim.surrogate, device)
    wanted = surrogate_made_by(settings, policy)
    made_by = model.made_by or {}
    differ = [k for k in wanted if made_by.get(k) != wanted[k]]
    if differ:
        said = "; ".join(
            f"{k}: rows {made_by.get(k, 'not recorded')!r}, this daemon {wanted[k]!r}"
            for k in differ
        )
        raise ConfigError(
            f"simulation.surrogate {sim.surrogate}: trained on rows this daemon did not make "
            f"({said}). Retrain it on this twin and policy: signaltwin surrogate collect "
            "--config YOUR.toml --out rows.jsonl, then signaltwin surrogate train --data "
            f"rows.jsonl --out {sim.surrogate}; or screen nothing "
            "(simulation.screen_candidates = 0)"
        )
    return model, device
