"""One cycle of the closed loop, stage by stage.

observe -> estimate demand -> propose -> screen -> what-if -> gate -> render ->
sign -> push -> record. Each stage is timed. A failure in any stage deploys
nothing, leaves every controller on its current plan (a push that fails is
aborted everywhere by the actuator) and still appends a ledger record saying
which stage failed and why.

The cycle talks to the world through narrow ports (:class:`FieldPort`,
:class:`TwinPort`, :class:`ProposerPort`, :class:`RendererPort`), so the daemon,
the demo and ``signaltwin evaluate`` plug in real OPC UA controllers or an
in-process field emulator without monkeypatching. :mod:`controller.wiring` builds
the real ones.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from configs.errors import SafetyViolation, SignaltwinError, SigningError
from configs.settings import Settings
from configs.timing import (
    BaseProgram,
    Evidence,
    IntersectionTiming,
    NetworkRef,
    Prediction,
    TimingConfiguration,
    canonical_json,
    require_safe,
    sha256_hex,
)
from controller.gate import CandidateOutcome, decide
from controller.ledger import Ledger
from hsm.base import TIMING_PAYLOAD_TYPE, Signer
from hsm.envelope import sign_envelope

__all__ = [
    "STAGES",
    "CycleCancelled",
    "CycleRunner",
    "build_cycle_runner",
    "DeployOutcome",
    "FieldPort",
    "Observation",
    "ProposerPort",
    "RendererPort",
    "TwinPort",
    "WhatIfSummary",
]

logger = logging.getLogger(__name__)

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

Plans = Mapping[str, IntersectionTiming]


class CycleCancelled(SignaltwinError):
    """The cycle was cancelled (shutdown) before it deployed anything."""


# --------------------------------------------------------------------------- data


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

    def to_dict(self) -> dict[str, Any]:
        """Plain data for the ledger."""
        return {
            "field_time_s": self.field_time_s,
            "interval_s": self.interval_s,
            "counts": dict(sorted(self.counts.items())),
            "active": {k: list(v) for k, v in sorted(self.active.items())},
            "measurements": {k: list(v) for k, v in sorted(self.measurements.items())},
            "unhealthy": list(self.unhealthy),
        }


@dataclass(frozen=True)
class WhatIfSummary:
    """The twin's verdict on the candidates against the current plan."""

    outcomes: tuple[CandidateOutcome, ...]
    #: the full, JSON-able result (recorded in the ledger; replayable)
    record: Mapping[str, Any]
    horizon_s: int
    seeds: tuple[int, ...]
    #: opaque handle the renderer uses to draw the chosen candidate (time series)
    recording: Any = None


@dataclass(frozen=True)
class DeployOutcome:
    """What the push did, per controller."""

    ok: bool
    results: Mapping[str, Any]
    message: str = ""
    #: "activated" everywhere, "aborted" everywhere, "partial" (some activated), or
    #: "unknown" (the push itself raised; the port could not say)
    outcome: str = "activated"


class FieldPort(Protocol):
    """The controllers as the daemon sees them."""

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
        """Run current vs candidates on paired seeds."""
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


# --------------------------------------------------------------------------- report


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
    #: controller -> OPC UA errors met in the push (``signaltwin_opcua_errors_total``)
    opcua_errors: dict[str, int] = field(default_factory=dict)
    #: controller -> answered the observation (``signaltwin_controller_up``)
    controllers_up: dict[str, bool] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain data."""
        data = asdict(self)
        data["slot_time"] = self.slot_time.isoformat()
        return data


# --------------------------------------------------------------------------- runner


class CycleRunner:
    """Runs cycles for one district; the daemon calls :meth:`run_cycle` every interval."""

    def __init__(
        self,
        settings: Settings,
        *,
        network: NetworkRef,
        bases: Mapping[str, BaseProgram],
        field_port: FieldPort,
        twin: TwinPort,
        proposer: ProposerPort,
        signer: Signer,
        ledger: Ledger,
        renderer: RendererPort | None = None,
        clock: Callable[[], datetime] | None = None,
        on_feedback: Callable[[], Any] | None = None,
        closers: list[Any] | None = None,
        feedback: Any | None = None,
    ) -> None:
        self.settings = settings
        self.network = network
        self.bases = dict(bases)
        self.field = field_port
        self.twin = twin
        self.proposer = proposer
        self.signer = signer
        self.ledger = ledger
        self.renderer = renderer
        self._clock = clock or (lambda: datetime.now(UTC))
        self._on_feedback = on_feedback
        self._closers = closers or []
        #: measured-delta collector (controller.feedback.FeedbackCollector) or None
        self.feedback = feedback
        self._observation: Observation | None = None
        #: a push whose deployment record could not be written (disk full); the next
        #: cycle writes it first and pushes nothing until it is written
        self._unrecorded: tuple[Any, ...] | None = None
        self._lock = threading.Lock()
        self.current: dict[str, IntersectionTiming] = self._current_from_ledger()
        self.sequence = self._last_sequence()

    # ------------------------------------------------------------ state from ledger

    def resume_from_ledger(self, min_sequence: int = 0) -> None:
        """Re-read the current plans and last sequence from the ledger (after recovery).

        Args:
            min_sequence: the next plan's sequence goes above this too (the
                highest sequence any controller reported).
        """
        with self._lock:
            self.current = self._current_from_ledger()
            self.sequence = max(self._last_sequence(), int(min_sequence))

    def _current_from_ledger(self) -> dict[str, IntersectionTiming]:
        plans = {tls: IntersectionTiming.from_base(base) for tls, base in self.bases.items()}
        # replay every deployment in order: a full one sets every plan, a partial
        # one (or one settled at start-up) only those that read the new plan back
        for record in self.ledger.find("deployment"):
            result = record.body.get("result")
            if result not in ("deployed", "recovered-activated", "partial", "recovered-partial"):
                continue
            config = TimingConfiguration.model_validate(record.body["configuration"])
            if result in ("deployed", "recovered-activated"):
                plans.update(config.intersections)
                continue
            results = record.body.get("push", {}).get("results", {})
            for tls in _running(results, config.sequence):
                if tls in config.intersections:
                    plans[tls] = config.intersections[tls]
        return plans

    def _last_sequence(self) -> int:
        sequences = [int(r.body.get("sequence", 0)) for r in self.ledger.find("deployment")]
        for record in self.ledger.find("cycle"):
            signed = record.body.get("configuration")
            if isinstance(signed, Mapping):
                sequences.append(int(signed.get("sequence", 0)))
        return max(sequences, default=0)

    # ------------------------------------------------------------ the cycle

    def run_cycle(self, slot_time: datetime, cancel: threading.Event) -> CycleReport:
        """Run one cycle; never raises for a stage failure (it is recorded instead)."""
        with self._lock:
            return self._run(slot_time, cancel)

    def _run(self, slot_time: datetime, cancel: threading.Event) -> CycleReport:
        report = CycleReport(slot_time=slot_time, shadow=self.settings.mode == "shadow")
        record: dict[str, Any] = {
            "slot_time": slot_time.isoformat(),
            "mode": self.settings.mode,
            "network": self.network.model_dump(),
            "gate_settings": self.settings.gate.model_dump(),
        }
        stage = "observe"

        @contextmanager
        def timed(name: str) -> Iterator[None]:
            nonlocal stage
            stage = name
            if cancel.is_set() and name not in ("record",):
                raise CycleCancelled(f"cancelled before stage {name}")
            start = time.perf_counter()
            try:
                yield
            finally:
                report.stage_s[name] = round(time.perf_counter() - start, 4)

        try:
            if self._unrecorded is not None:
                stage = "record"
                self._append_deployment(*self._unrecorded)
                self._unrecorded = None
                logger.warning("recorded the deployment a previous cycle could not record")
            with timed("observe"):
                observation = self.field.observe()
                self._observation = observation
                record["observation"] = observation.to_dict()
                report.controllers_up = {t: True for t in observation.active}
                report.controllers_up.update({t: False for t in observation.unhealthy})
            with timed("estimate"):
                demand, demand_sha = self.twin.estimate(observation)
                record["demand"] = {"sha256": demand_sha, "snapshot": demand}
            with timed("propose"):
                candidates, policy_sha = self.proposer.propose(observation, demand, self.current)
                record["policy_sha256"] = policy_sha
                record["proposed"] = sorted(candidates)
            with timed("screen"):
                kept = self.proposer.screen(candidates, self.settings.simulation.candidates)
                record["candidates"] = {
                    name: {t: p.model_dump(mode="json") for t, p in sorted(plans.items())}
                    for name, plans in sorted(kept.items())
                }
                record["current"] = {
                    t: p.model_dump(mode="json") for t, p in sorted(self.current.items())
                }
            with timed("whatif"):
                summary = self.twin.whatif(demand, self.current, kept, cancel)
                record["whatif"] = dict(summary.record)
            with timed("gate"):
                decision = decide(summary.outcomes, self.settings.gate)
                record["gate"] = decision.to_dict()
                report.decision = decision.decision
            if decision.chosen is None:
                report.ok = True
                return self._finish(report, record, "refused")
            chosen = decision.chosen
            outcome = next(o for o in summary.outcomes if o.name == chosen)
            report.predicted_wait_change = outcome.wait_change
            report.predicted_nox_change = outcome.nox_change
            video_sha: str | None = None
            with timed("render"):
                if self.renderer is not None and self.settings.video.enabled:
                    out = self.settings.video.directory / f"cycle-{slot_time:%Y%m%dT%H%M%S}.mp4"
                    attribution = {
                        "network_sha256": self.network.sha256,
                        "demand_sha256": demand_sha,
                        "candidate": chosen,
                    }
                    path, video_sha = self.renderer.render(summary, chosen, attribution, out)
                    record["video"] = {"path": str(path), "sha256": video_sha}
                    report.video = str(path)
            with timed("sign"):
                config = self._configuration(
                    kept[chosen], outcome, summary, demand_sha, video_sha, policy_sha
                )
                # checked when built (projection), again here before signing
                require_safe(config, self.bases, self.settings.safety, self.current)
                envelope = sign_envelope(self.signer, config.canonical_bytes(), TIMING_PAYLOAD_TYPE)
                envelope_bytes = envelope.to_json()
                record["configuration"] = config.to_dict()
                record["configuration_sha256"] = config.digest()
                record["envelope"] = envelope.to_dict()
                report.sequence = config.sequence
            if self.settings.mode == "shadow":
                report.ok = True
                return self._finish(report, record, "shadow")
            # the cycle record (with the signed envelope) is written before the push,
            # so that a crash mid-push is recognised and reconciled on restart; if it
            # cannot be written (disk full) nothing is pushed
            stage = "record"
            record_start = time.perf_counter()
            cycle_ref = self._append_cycle(report, record, "pushing")
            record_s = time.perf_counter() - record_start
            # from here on this sequence is spent, whatever the push does
            self.sequence = max(self.sequence, config.sequence)
            with timed("push"):
                align = max(p.cycle_s for p in config.intersections.values())
                try:
                    pushed = self.field.deploy(envelope_bytes, config, align)
                except Exception as e:  # noqa: BLE001 - recorded as the deployment's result
                    logger.error("push of plan %d raised: %s", config.sequence, e)
                    pushed = DeployOutcome(
                        ok=False,
                        results={"error": f"{type(e).__name__}: {e}"},
                        message=f"push raised {type(e).__name__}: {e}; field state unknown",
                        outcome="unknown",
                    )
            result = (
                "deployed"
                if pushed.ok
                else (pushed.outcome if pushed.outcome in ("partial", "unknown") else "aborted")
            )
            report.opcua_errors = _push_errors(pushed.results)
            if not pushed.ok:
                report.failed_stage = "push"
                report.error = pushed.message or "push failed; aborted on every controller"
            stage = "record"
            record_start = time.perf_counter()
            self._unrecorded = (config, record["envelope"], cycle_ref, result, pushed)
            self._append_deployment(*self._unrecorded)
            self._unrecorded = None
            report.stage_s["record"] = round(record_s + time.perf_counter() - record_start, 4)
            report.ok = pushed.ok
            report.deployed = pushed.ok
            return self._checkpoint(report)
        except Exception as e:  # noqa: BLE001 - every failure is recorded, none deploys
            report.failed_stage = stage
            report.error = f"{type(e).__name__}: {e}"
            if isinstance(e, SafetyViolation):
                record["safety_violations"] = [str(v) for v in e.violations]
            elif isinstance(e, SigningError):
                report.hsm_errors += 1
            logger.warning("cycle %s failed in stage %s: %s", slot_time, stage, report.error)
            return self._finish(report, record, "failed")

    def _configuration(
        self,
        plans: Plans,
        outcome: CandidateOutcome,
        summary: WhatIfSummary,
        demand_sha: str,
        video_sha: str | None,
        policy_sha: str | None,
    ) -> TimingConfiguration:
        now = self._clock().replace(microsecond=0)
        interval = timedelta(seconds=self.settings.schedule.interval_s)
        merged = dict(self.current)
        merged.update(plans)
        return TimingConfiguration(
            network=self.network,
            sequence=self.sequence + 1,
            issued_at=now,
            valid_from=now,
            valid_until=now + 3 * interval,
            predicted=Prediction(
                wait_change=round(outcome.wait_change, 6),
                wait_change_ci=(
                    round(outcome.wait_change_ci[0], 6),
                    round(outcome.wait_change_ci[1], 6),
                ),
                nox_change=round(outcome.nox_change, 6),
                nox_change_ci=(
                    round(outcome.nox_change_ci[0], 6),
                    round(outcome.nox_change_ci[1], 6),
                ),
                horizon_s=summary.horizon_s,
                seeds=summary.seeds,
            ),
            evidence=Evidence(
                video_sha256=video_sha, policy_sha256=policy_sha, demand_sha256=demand_sha
            ),
            intersections=merged,
            intent="shadow" if self.settings.mode == "shadow" else "deploy",
        )

    def _append_cycle(self, report: CycleReport, record: dict[str, Any], outcome: str) -> int:
        cycle_id = report.slot_time.isoformat()
        record["report"] = report.to_dict()
        body = {"cycle_id": cycle_id, "outcome": outcome, **record}
        ref = self.ledger.append("cycle", body, dedupe_key=f"cycle-{cycle_id}")
        report.ledger_index = ref.index
        return ref.index

    def _append_deployment(
        self,
        config: TimingConfiguration,
        envelope: Mapping[str, Any],
        cycle_index: int,
        result: str,
        pushed: DeployOutcome,
    ) -> None:
        ref = self.ledger.append(
            "deployment",
            {
                "sequence": config.sequence,
                "config_digest": config.digest(),
                "envelope": dict(envelope),
                "configuration": config.to_dict(),
                "cycle_index": cycle_index,
                "result": result,
                "push": {
                    "ok": pushed.ok,
                    "message": pushed.message,
                    "results": dict(pushed.results),
                },
            },
            dedupe_key=f"deployment-{config.sequence}",
        )
        # a sequence once signed is never reused, deployed or not
        self.sequence = config.sequence
        if result == "deployed":
            self.current = dict(config.intersections)
            if self.feedback is not None and self._observation is not None:
                at = pushed.results.get("activate_at_field_time_s")
                try:
                    self.feedback.deployed(
                        ref.index, config, self._observation, None if at is None else float(at)
                    )
                except Exception:  # noqa: BLE001 - feedback must never fail a deployment
                    logger.exception("could not register plan %d for feedback", config.sequence)
        elif result == "partial":
            # the controllers that read back the new plan run it; the others do not
            for tls in _running(pushed.results, config.sequence):
                if tls in config.intersections:
                    self.current[tls] = config.intersections[tls]

    def _finish(self, report: CycleReport, record: dict[str, Any], outcome: str) -> CycleReport:
        start = time.perf_counter()
        try:
            self._append_cycle(report, record, outcome)
            if outcome == "shadow" and report.sequence is not None:
                self.sequence = report.sequence
        except SignaltwinError as e:
            report.ok = False
            report.failed_stage = report.failed_stage or "record"
            report.error = f"{report.error + '; ' if report.error else ''}ledger: {e}"
            logger.error("could not record cycle %s: %s", report.slot_time, e)
        report.stage_s["record"] = round(time.perf_counter() - start, 4)
        return self._checkpoint(report)

    def _checkpoint(self, report: CycleReport) -> CycleReport:
        try:
            self.ledger.checkpoint(self.signer)
        except SignaltwinError as e:
            report.ok = False
            if isinstance(e, SigningError):
                report.hsm_errors += 1
            report.error = f"{report.error + '; ' if report.error else ''}checkpoint: {e}"
            logger.error("could not sign a ledger checkpoint: %s", e)
        return report

    # ------------------------------------------------------------ daemon hooks

    def record_skip(self, slot_time: datetime, reason: str) -> None:
        """Record a skipped slot (overrun) in the ledger."""
        cycle_id = slot_time.isoformat()
        self.ledger.append(
            "cycle",
            {"cycle_id": cycle_id, "outcome": "skipped", "reason": reason},
            dedupe_key=f"cycle-{cycle_id}",
        )

    def record_config_change(self, settings: Settings) -> None:
        """Record a reloaded configuration (its digest and mode)."""
        body = settings.model_dump(mode="json")
        self.ledger.append(
            "config_change", {"sha256": sha256_hex(canonical_json(body)), "settings": body}
        )

    def collect_feedback(self) -> Any:
        """Collect measured deltas and fine-tune (delegated to the feedback hook)."""
        with self._lock:
            if self.feedback is not None:
                return self.feedback.collect()
            if self._on_feedback is not None:
                return self._on_feedback()
            return None

    def close(self) -> None:
        """Release what :func:`build_cycle_runner` opened (sessions, workers, HSM, ledger)."""
        for item in self._closers:
            try:
                item.close()
            except Exception:  # noqa: BLE001 - close everything we can
                logger.exception("error while closing %s", type(item).__name__)
        self._closers = []


def _push_errors(results: Any) -> dict[str, int]:
    """Controller -> 1 for every push row that carries an error (timeouts, lost sessions)."""
    rows = results.get("controllers", []) if isinstance(results, Mapping) else []
    return {
        str(row["tls_id"]): 1
        for row in (rows if isinstance(rows, list) else [])
        if isinstance(row, Mapping) and row.get("error") and row.get("tls_id")
    }


def _running(results: Any, sequence: int) -> list[str]:
    """The controllers whose push row read back ``sequence`` as their active plan."""
    rows = results.get("controllers", []) if isinstance(results, Mapping) else []
    found = []
    for row in rows if isinstance(rows, list) else []:
        if not isinstance(row, Mapping):
            continue
        readback = row.get("readback")
        seq = readback.get("sequence") if isinstance(readback, Mapping) else None
        if seq is None:
            seq = row.get("readback_sequence")
        if seq == sequence and isinstance(row.get("tls_id"), str):
            found.append(row["tls_id"])
    return found


def build_cycle_runner(settings: Settings) -> CycleRunner:
    """The daemon's runner for ``settings``: real HSM, ledger, controllers, twin, policy."""
    from controller.wiring import build_runner

    return build_runner(settings)
