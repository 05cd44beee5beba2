"""The controller's contracts: the ports the cycle talks through and the types it hands on.

Like stable-baselines3's ``common/type_aliases.py``, this module holds only
Protocols, small data types and aliases, so that the cycle, the daemon, the
feedback collector, recovery and the composition root (:mod:`controller.wiring`)
all depend on it and not on each other. It imports nothing of ``controller``
at run time: it is the bottom layer.

Names (one per concept):

* :class:`ControllerFleet` -- the controllers as the cycle sees them (observe,
  deploy); :class:`controller.wiring.OpcUaFleet` is the real one.
* :class:`TwinPort`, :class:`ProposerPort`, :class:`RendererPort` -- the twin,
  the proposers and the video renderer.
* :class:`DeployOutcome` -- what a push did, typed (never a dict to re-parse).
* :class:`RunsCycles` -- what the daemon needs of a cycle pipeline
  (:class:`controller.cycle.CycleRunner` is one).
* :class:`CycleReportLike` / :class:`ComponentHealth` -- what the daemon reads
  of a cycle's report; :class:`CycleReport` is the cycle's own.
* :class:`CycleObserver` -- what the daemon tells about each cycle it runs
  (:class:`controller.console.ConsoleFeed` is one).
* :class:`MeasurementSource`, :class:`PolicyHolder`, :class:`FeedbackSink` --
  what the feedback collector needs of the field, the proposer and the RL
  feedback store; :class:`CounterfactualPort` (the twin re-simulating the
  previous plan on the demand the field had), :class:`CalibrationPort` (the
  twin's demand correction) and :class:`TruthPort` (evaluation only: the field
  forked at activation) -- what it needs to turn windows of counters into a
  measured delta.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar, runtime_checkable

from configs.errors import SignaltwinError
from configs.outcomes import PushOutcome
from configs.timing import IntersectionTiming, TimingConfiguration

if TYPE_CHECKING:
    from controller.gate import CandidateOutcome
    from simulators.field.records import FieldCounters, WindowTotals

__all__ = [
    "STAGES",
    "BasicCycleReport",
    "CalibrationPort",
    "ComponentHealth",
    "ComputeCapacity",
    "ComputeStatus",
    "ControllerFleet",
    "CounterfactualEstimate",
    "CounterfactualPort",
    "CycleCancelled",
    "CycleObserver",
    "CycleReport",
    "CycleReportLike",
    "DaemonSettings",
    "DeployOutcome",
    "FeedbackHook",
    "FeedbackReport",
    "FeedbackSink",
    "MeasurementSource",
    "MetricsSettingsLike",
    "Observation",
    "Plans",
    "PolicyHolder",
    "ProposerPort",
    "RendererPort",
    "RunsCycles",
    "ScheduleSettingsLike",
    "SkipReason",
    "TrueDeltaLike",
    "TruthPending",
    "TruthPort",
    "TwinPort",
    "WhatIfSummary",
]

STAGES = (
    "observe",
    "estimate",
    "propose",
    "screen",
    "whatif",
    "gate",
    "render",
    "sign",
    "push",
    "record",
)
"""The cycle's stages, in order (each one timed in :attr:`CycleReport.stage_s`)."""

Plans = Mapping[str, IntersectionTiming]
"""Intersection id -> its timing plan."""

SkipReason = Literal["overrun", "missed", "busy"]
"""Why the daemon skipped a cycle slot."""

S_contra = TypeVar("S_contra", contravariant=True)


class CycleCancelled(SignaltwinError):
    """The cycle was cancelled (shutdown) before it deployed anything."""


# --------------------------------------------------------------------------- cycle data


@dataclass(frozen=True)
class Observation:
    """What the controllers reported at the start of a cycle."""

    field_time_s: float
    #: detector id -> vehicles counted since the previous observation
    counts: Mapping[str, float]
    #: seconds the counts cover
    interval_s: float
    #: tls id -> (active sequence, active digest)
    active: Mapping[str, tuple[int, str]]
    #: tls id -> (mean wait s, NOx mg) of the last measurement interval
    measurements: Mapping[str, tuple[float, float]]
    #: tls ids whose controller did not answer
    unhealthy: tuple[str, ...] = ()
    #: the controllers' cumulative totals (approach halting, NOx, detector counts) at
    #: this observation; None when no controller reports them (measured deltas are
    #: then not measurable); intersections whose controller lacks them are absent
    counters: FieldCounters | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain data for the ledger."""
        data: dict[str, Any] = {
            "field_time_s": self.field_time_s,
            "interval_s": self.interval_s,
            "counts": dict(sorted(self.counts.items())),
            "active": {k: list(v) for k, v in sorted(self.active.items())},
            "measurements": {k: list(v) for k, v in sorted(self.measurements.items())},
            "unhealthy": list(self.unhealthy),
        }
        if self.counters is not None:
            # cumulative, so that a restarted daemon can measure windows it had open
            data["counters"] = {
                "field_time_s": self.counters.field_time_s,
                "halting_veh_s": dict(sorted(self.counters.halting_veh_s.items())),
                "nox_mg": dict(sorted(self.counters.nox_mg.items())),
                "detector_counts": dict(sorted(self.counters.detector_counts.items())),
            }
        return data


@dataclass(frozen=True)
class WhatIfSummary:
    """The twin's verdict on the candidates against the current plan."""

    outcomes: tuple[CandidateOutcome, ...]
    #: the full, JSON-able what-if (request and result; recorded in the ledger, replayable)
    document: Mapping[str, Any]
    horizon_s: int
    seeds: tuple[int, ...]
    #: opaque handle the renderer uses to draw the chosen candidate (time series)
    recording: Any = None


@dataclass(frozen=True)
class DeployOutcome:
    """What the push did, per controller (typed; the cycle never re-parses a dict).

    Attributes:
        outcome: activated everywhere, aborted everywhere, partial (some run
            it) or unknown (the push itself raised; nobody could say).
        running: the controllers that read the new plan back as active.
        errors: controller -> the error met there (timeouts, lost sessions).
        message: why, when not activated everywhere.
        activate_at_field_time_s: the common activation time, when one was set.
        push_record: the push's plain data for the ``deployment`` ledger record.
    """

    outcome: PushOutcome
    running: frozenset[str] = frozenset()
    errors: Mapping[str, str] = field(default_factory=dict)
    message: str = ""
    activate_at_field_time_s: float | None = None
    push_record: Mapping[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Whether the plan runs on every controller."""
        return self.outcome == PushOutcome.ACTIVATED


# --------------------------------------------------------------------------- cycle ports


class ControllerFleet(Protocol):
    """The controllers as the cycle sees them (OPC UA, or a fake/in-process field)."""

    def observe(self) -> Observation:
        """Read detectors, measurements and active plans of every controller."""
        ...

    def deploy(self, envelope: bytes, config: TimingConfiguration, align_s: int) -> DeployOutcome:
        """Stage everywhere, activate together (aligned), read back; abort all on failure."""
        ...


class TwinPort(Protocol):
    """The digital twin."""

    def estimate(self, observation: Observation) -> tuple[Mapping[str, Any], str]:
        """Estimate demand; return (demand snapshot, its sha256)."""
        ...

    def whatif(
        self,
        demand: Mapping[str, Any],
        current: Plans,
        candidates: Mapping[str, Plans],
        cancel: threading.Event,
    ) -> WhatIfSummary:
        """Run current vs candidates on paired seeds; raise CycleCancelled once cancelled."""
        ...


class ProposerPort(Protocol):
    """Proposes candidate plans (the RL policy, Webster, ...), always through projection."""

    def propose(
        self, observation: Observation, demand: Mapping[str, Any], current: Plans
    ) -> tuple[dict[str, dict[str, IntersectionTiming]], str | None]:
        """Return ({candidate name: plans}, policy sha256 or None)."""
        ...

    def screen(
        self, candidates: dict[str, dict[str, IntersectionTiming]], keep: int
    ) -> dict[str, dict[str, IntersectionTiming]]:
        """Keep the ``keep`` most promising candidates (identity when no surrogate)."""
        ...


class RendererPort(Protocol):
    """Draws the what-if video (current | candidate)."""

    def render(
        self, summary: WhatIfSummary, candidate: str, attribution: Mapping[str, Any], out: Path
    ) -> tuple[Path, str]:
        """Render and return (video path, sha256)."""
        ...


class FeedbackHook(Protocol):
    """What the cycle tells the measured-delta collector (``feedback.FeedbackCollector``)."""

    def observed(self, observation: Observation) -> None:
        """Keep the observation's counter reading (window edges are placed on readings)."""
        ...

    def holding(self, field_time_s: float) -> str | None:
        """Why nothing may be deployed now (a window is open), or None when free to deploy."""
        ...

    def deployed(
        self,
        ledger_index: int,
        config: TimingConfiguration,
        observation: Observation,
        activate_at_field_time_s: float | None,
        previous: Plans | None = None,
    ) -> None:
        """Remember a deployment (activating at the given time) until it can be measured."""
        ...

    def collect(self) -> FeedbackReport:
        """Measure the deployments whose window has passed; maybe fine-tune."""
        ...


# --------------------------------------------------------------------------- feedback ports


class MeasurementSource(Protocol):
    """Reads the controllers' cumulative counters now (``OpcUaFleet.read_counters``)."""

    def __call__(self) -> FieldCounters | None:
        """The counters, or None when no controller reports them."""
        ...


class CounterfactualEstimate(Protocol):
    """The estimated measured delta of one deployment (what the collector reads of it).

    ``simulators.twin.counterfactual.estimate_counterfactual`` returns one.
    Changes are fractions of the approach halting vehicle-seconds (and NOx),
    ``deployed / counterfactual - 1``, negative = better.
    """

    @property
    def wait_change(self) -> float: ...  # noqa: D102

    @property
    def wait_ci(self) -> tuple[float, float]: ...  # noqa: D102

    @property
    def nox_change(self) -> float: ...  # noqa: D102

    @property
    def nox_ci(self) -> tuple[float, float]: ...  # noqa: D102

    @property
    def gap_before(self) -> float:
        """Twin-vs-field relative gap on the previous plan before activation."""
        ...

    @property
    def model_change(self) -> float:
        """The twin's own change (deployed vs previous) on the after-window's demand."""
        ...

    @property
    def field_before_veh_s(self) -> float:
        """Field halting vehicle-seconds over the before window (the intersections compared)."""
        ...

    @property
    def twin_before_veh_s(self) -> float:
        """The twin's halting vehicle-seconds of the previous plan on the before window."""
        ...

    @property
    def method(self) -> str:
        """How the estimate was made (e.g. ``twin-ratio/v1``)."""
        ...

    def to_dict(self) -> dict[str, Any]:
        """Plain data for the ledger."""
        ...


class CounterfactualPort(Protocol):
    """Estimates what the previous plan would have done over a deployment's after window."""

    def estimate(
        self,
        *,
        before: WindowTotals,
        after: WindowTotals,
        previous: Plans,
        deployed: Plans,
        only: frozenset[str],
        demand_scale: float,
    ) -> CounterfactualEstimate:
        """Re-simulate both plans on the after window's demand, corrected by the before gap."""
        ...


class CalibrationPort(Protocol):
    """The twin's demand calibration (``simulators.calibration.TwinCalibration``, persisted)."""

    @property
    def demand_scale(self) -> float:
        """Factor applied to the twin's estimated demand."""
        ...

    def update_from_estimate(self, estimate: CounterfactualEstimate) -> float:
        """Learn from one measured deployment (both windows); return the new scale."""
        ...

    def to_dict(self) -> dict[str, Any]:
        """Plain data for the ledger's ``calibration`` record."""
        ...


class TrueDeltaLike(Protocol):
    """Evaluation only: the true change of a deployment (``simulators.field.fork.TrueDelta``)."""

    def wait_change(
        self, horizon_s: float | None = None, only: frozenset[str] | None = None
    ) -> float:
        """True relative change of the approach halting vehicle-seconds.

        Over the first ``horizon_s`` after the fork (None: the whole window), on
        the intersections ``only`` (None: every one).
        """
        ...

    def nox_change(
        self, horizon_s: float | None = None, only: frozenset[str] | None = None
    ) -> float:
        """True relative change of the approaches' NOx (arguments as :meth:`wait_change`)."""
        ...

    def to_dict(self) -> dict[str, Any]:
        """Plain data for the ledger."""
        ...


class TruthPending(Protocol):
    """A truth run under way (a ``concurrent.futures.Future`` fits)."""

    def done(self) -> bool:
        """Whether :meth:`result` would answer without waiting."""
        ...

    def result(self) -> TrueDeltaLike:
        """The true delta (raises what the run raised)."""
        ...


class TruthPort(Protocol):
    """Evaluation only: fork the field at activation and run both plans on it."""

    def start(
        self,
        *,
        sequence: int,
        activate_at_field_time_s: float,
        in_force: Plans,
        previous: Plans,
        window_s: float,
    ) -> TruthPending:
        """Start the fork for deployment ``sequence``; the result arrives later."""
        ...


class PolicyHolder(Protocol):
    """The proposer as the feedback collector sees it (``wiring.ProposerAdapter``)."""

    #: the policy in use (``rl.policy.TorchPolicy``), or None (Webster only)
    policy: Any | None
    #: where the policy's weights are (fine-tuning starts from them)
    policy_path: Path | None
    #: the per-intersection observations of the last proposal
    last_observations: Mapping[str, Any]


class FeedbackSink(Protocol):
    """The RL feedback store as the collector uses it (``rl.feedback.FeedbackStore``)."""

    def record_deployment(
        self,
        deployment: str,
        observations: Mapping[str, Any],
        deployed: Mapping[str, IntersectionTiming],
        *,
        policy_sha256: str | None = None,
        predicted_wait_change: float | None = None,
        predicted_nox_change: float | None = None,
    ) -> int:
        """Log what was deployed at each intersection and on what observation."""
        ...

    def record_estimate(
        self,
        deployment: str,
        wait_change: float,
        nox_change: float,
        *,
        per_intersection: Mapping[str, tuple[float, float]] | None = None,
        predicted_wait_change: float | None = None,
        predicted_nox_change: float | None = None,
        wait_change_ci: tuple[float, float] | None = None,
        source: str = "counterfactual",
    ) -> Any:
        """Store a deployment's estimated measured delta (the reward of its samples)."""
        ...

    def count(self, measured_only: bool = True) -> int:
        """Number of (measured) samples."""
        ...

    def samples(self, policy_sha256: str | None = None) -> Any:
        """Every measured sample."""
        ...


# --------------------------------------------------------------------------- reports


@dataclass
class CycleReport:
    """What one cycle did (for the daemon, the demo and metrics)."""

    slot_time: datetime
    ok: bool = False
    deployed: bool = False
    shadow: bool = False
    decision: str = "none"
    failed_stage: str | None = None
    error: str | None = None
    stage_s: dict[str, float] = field(default_factory=dict)
    sequence: int | None = None
    predicted_wait_change: float | None = None
    predicted_nox_change: float | None = None
    video: str | None = None
    ledger_index: int | None = None
    #: HSM failures met (signing the plan, signing the checkpoint); the daemon
    #: counts them in ``signaltwin_hsm_errors_total``
    hsm_errors: int = 0
    #: why a plan that passed the gate was not deployed (feedback.hold_deployments)
    held: str | None = None
    #: controller -> OPC UA errors met in the push (``signaltwin_opcua_errors_total``)
    opcua_errors: dict[str, int] = field(default_factory=dict)
    #: controller -> answered the observation (``signaltwin_controller_up``)
    controllers_up: dict[str, bool] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain data."""
        data = asdict(self)
        data["slot_time"] = self.slot_time.isoformat()
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CycleReport:
        """Inverse of :meth:`to_dict` (a cycle record's ``report``; unknown keys ignored).

        Raises:
            ValueError: not a recorded cycle report.
        """

        def optional(key: str, kind: type[Any]) -> Any:
            value = data.get(key)
            return None if value is None else kind(value)

        try:
            return cls(
                slot_time=datetime.fromisoformat(str(data["slot_time"])),
                ok=bool(data.get("ok", False)),
                deployed=bool(data.get("deployed", False)),
                shadow=bool(data.get("shadow", False)),
                decision=str(data.get("decision", "none")),
                failed_stage=optional("failed_stage", str),
                error=optional("error", str),
                stage_s={str(k): float(v) for k, v in dict(data.get("stage_s") or {}).items()},
                sequence=optional("sequence", int),
                predicted_wait_change=optional("predicted_wait_change", float),
                predicted_nox_change=optional("predicted_nox_change", float),
                video=optional("video", str),
                ledger_index=optional("ledger_index", int),
                hsm_errors=int(data.get("hsm_errors") or 0),
                held=optional("held", str),
                opcua_errors={
                    str(k): int(v) for k, v in dict(data.get("opcua_errors") or {}).items()
                },
                controllers_up={
                    str(k): bool(v) for k, v in dict(data.get("controllers_up") or {}).items()
                },
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"not a recorded cycle report: {type(e).__name__}: {e}") from e


class CycleReportLike(Protocol):
    """What the daemon reads from a cycle's report (:class:`CycleReport` fits).

    Attributes:
        ok: the cycle ran to its end without error (a refusal by the gate is ok).
        deployed: a plan was activated on the controllers.
        decision: the gate's decision (``pass``, ``refuse_wait``, ``refuse_nox``,
            ``refuse_failed``), or ``none`` when the cycle ended before the gate.
        stage_s: seconds per stage (:data:`STAGES`).
        error: what failed and why, when not ok.
        sequence: the sequence number of the deployed (or shadow) configuration.
    """

    @property
    def ok(self) -> bool: ...  # noqa: D102

    @property
    def deployed(self) -> bool: ...  # noqa: D102

    @property
    def decision(self) -> str: ...  # noqa: D102

    @property
    def stage_s(self) -> Mapping[str, float]: ...  # noqa: D102

    @property
    def error(self) -> str | None: ...  # noqa: D102

    @property
    def sequence(self) -> int | None: ...  # noqa: D102


class CycleObserver(Protocol):
    """Told about every cycle the daemon runs (the operator console listens).

    Called from the daemon's worker thread; must return at once and never raise.
    """

    def cycle_started(self, slot_time: datetime) -> None:
        """A cycle for ``slot_time`` begins."""
        ...

    def cycle_finished(
        self, slot_time: datetime, report: CycleReportLike, result: str, duration_s: float
    ) -> None:
        """The cycle for ``slot_time`` ended: its report and its ``DeploymentResult`` value."""
        ...


@runtime_checkable
class ComponentHealth(Protocol):
    """Optional extra a report may carry: component errors met during the cycle.

    When a cycle's report has these attributes too, the daemon records them in
    ``signaltwin_hsm_errors_total``, ``signaltwin_opcua_errors_total{controller}``
    and ``signaltwin_controller_up{controller}``.
    """

    @property
    def hsm_errors(self) -> int: ...  # noqa: D102

    @property
    def opcua_errors(self) -> Mapping[str, int]: ...  # noqa: D102

    @property
    def controllers_up(self) -> Mapping[str, bool]: ...  # noqa: D102


@runtime_checkable
class ComputeStatus(Protocol):
    """Optional extra of a runner (and of a what-if engine): where what-ifs run.

    When a runner has these, the daemon serves ``signaltwin_whatif_workers{backend}``
    from them (read at each scrape).
    """

    @property
    def backend(self) -> str: ...  # noqa: D102

    @property
    def workers_alive(self) -> int: ...  # noqa: D102


@runtime_checkable
class ComputeCapacity(Protocol):
    """Optional extra of a :class:`ComputeStatus`: the what-if workers the settings ask for.

    When a runner has it, the daemon serves ``signaltwin_whatif_workers_configured{backend}``
    next to ``signaltwin_whatif_workers{backend}``, so an alert can compare the two.
    """

    @property
    def workers_configured(self) -> int: ...  # noqa: D102


@dataclass(frozen=True)
class BasicCycleReport:
    """A plain :class:`CycleReportLike` with :class:`ComponentHealth` (for fakes and crashes)."""

    ok: bool
    deployed: bool
    decision: str = "none"
    stage_s: Mapping[str, float] = field(default_factory=dict)
    error: str | None = None
    sequence: int | None = None
    hsm_errors: int = 0
    opcua_errors: Mapping[str, int] = field(default_factory=dict)
    controllers_up: Mapping[str, bool] = field(default_factory=dict)


@dataclass(frozen=True)
class FeedbackReport:
    """What a feedback collection did.

    Attributes:
        measured: deployments whose field outcome was measured in this run.
        prediction_error_ratios: per measured deployment, the relative error of the
            predicted change against the estimated one (``|estimated - predicted| /
            |predicted|``).
        fine_tuned: whether the policy was fine-tuned.
        superseded: deployments recorded as superseded (no delta) in this run.
        not_measurable: deployments recorded as not measurable in this run.
    """

    measured: int = 0
    prediction_error_ratios: tuple[float, ...] = ()
    fine_tuned: bool = False
    superseded: int = 0
    not_measurable: int = 0


# --------------------------------------------------------------------------- the daemon's view


class ScheduleSettingsLike(Protocol):
    """The ``[schedule]`` section, as far as the daemon reads it."""

    @property
    def interval_s(self) -> float:
        """Seconds between cycle starts."""
        ...

    @property
    def feedback_interval_s(self) -> float:
        """Seconds between feedback collections."""
        ...

    @property
    def shutdown_deadline_s(self) -> float:
        """How long a stop waits for the running cycle."""
        ...


class MetricsSettingsLike(Protocol):
    """The ``[metrics]`` section."""

    @property
    def enabled(self) -> bool:
        """Whether to serve metrics over HTTP."""
        ...

    @property
    def address(self) -> str:
        """Address to bind."""
        ...

    @property
    def port(self) -> int:
        """Port to bind (0: any free port)."""
        ...


class DaemonSettings(Protocol):
    """What the daemon reads from the settings (``configs.settings.Settings`` fits)."""

    @property
    def mode(self) -> str:
        """``auto`` or ``shadow``."""
        ...

    @property
    def schedule(self) -> ScheduleSettingsLike:
        """The schedule section."""
        ...

    @property
    def metrics(self) -> MetricsSettingsLike:
        """The metrics section."""
        ...


class RunsCycles(Protocol[S_contra]):
    """One configured cycle pipeline (built from settings by a factory).

    The daemon calls these methods from worker threads, never two at once.
    """

    def run_cycle(self, slot_time: datetime, cancel: threading.Event) -> CycleReportLike:
        """Run one cycle for ``slot_time`` (UTC); return promptly once ``cancel`` is set.

        Must never leave a plan staged but not activated: on cancel, abort what
        was staged (or let the activation complete) before returning.
        """
        ...

    def collect_feedback(self) -> FeedbackReport | None:
        """Collect measured deltas of past deployments and fine-tune the policy."""
        ...

    def record_skip(self, slot_time: datetime, reason: str) -> None:
        """Record in the ledger that the cycle slot ``slot_time`` was skipped, and why."""
        ...

    def record_config_change(self, settings: S_contra) -> None:
        """Record in the ledger that ``settings`` now apply (called on the new runner)."""
        ...

    def close(self) -> None:
        """Release connections, sessions and files."""
        ...


def count_increase(previous: Mapping[str, int], cumulative: Mapping[str, int]) -> dict[str, float]:
    """Each loop's count since ``previous`` from its cumulative count now.

    A controller restart resets its counters: a total below the previous one
    counts from zero. Loops absent from ``previous`` are left out.
    """
    counts: dict[str, float] = {}
    for det, total in cumulative.items():
        before = previous.get(det)
        if before is not None:
            counts[det] = float(total - before if total >= before else total)
    return counts
