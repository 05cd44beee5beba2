"""One cycle of the closed loop, stage by stage.

observe -> estimate demand -> propose -> screen -> what-if -> gate -> render ->
sign -> push -> record. Each stage is timed. A failure in any stage deploys
nothing, leaves every controller on its current plan (a push that fails is
aborted everywhere by the actuator) and still appends a ledger record saying
which stage failed and why.

The cycle talks to the world through narrow ports defined in
:mod:`controller.contracts` (:class:`~controller.contracts.ControllerFleet`,
:class:`~controller.contracts.TwinPort`, :class:`~controller.contracts.ProposerPort`,
:class:`~controller.contracts.RendererPort`), so the daemon, the demo and
``signaltwin evaluate`` plug in real OPC UA controllers or an in-process field
emulator without monkeypatching. :mod:`controller.wiring` builds the real ones;
this module imports neither it nor the feedback collector nor recovery.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

from configs.errors import SafetyViolation, SignaltwinError, SigningError
from configs.outcomes import CycleOutcome, PushOutcome
from configs.safety import require_safe
from configs.settings import Settings
from configs.timing import (
    BaseProgram,
    Evidence,
    IntersectionTiming,
    NetworkRef,
    Prediction,
    TimingConfiguration,
    canonical_json,
    sha256_hex,
)
from controller.contracts import (
    STAGES,
    ComputeStatus,
    ControllerFleet,
    CycleCancelled,
    CycleReport,
    DeployOutcome,
    FeedbackHook,
    Observation,
    Plans,
    ProposerPort,
    RendererPort,
    TwinPort,
    WhatIfSummary,
)
from controller.gate import CandidateOutcome, decide
from controller.ledger import ConfigChangeRecord, CycleRecord, DeploymentRecord, Ledger
from hsm.base import TIMING_PAYLOAD_TYPE, Signer
from hsm.envelope import sign_envelope

# The ports and report types live in controller.contracts; they are re-exported
# here so that ``from controller.cycle import Observation`` keeps working.
__all__ = [
    "STAGES",
    "ControllerFleet",
    "CycleCancelled",
    "CycleReport",
    "CycleRunner",
    "DeployOutcome",
    "Observation",
    "ProposerPort",
    "RendererPort",
    "TwinPort",
    "WhatIfSummary",
    "running_in_record",
]

logger = logging.getLogger(__name__)

#: ``deployment.result`` values after which every named controller runs the plan
_FULL_RESULTS = ("deployed", "recovered-activated")
#: ``deployment.result`` values after which only the controllers that read it back run it
_PARTIAL_RESULTS = ("partial", "recovered-partial")


# --------------------------------------------------------------------------- runner


class CycleRunner:
    """Runs cycles for one district; the daemon calls :meth:`run_cycle` every interval."""

    def __init__(
        self,
        settings: Settings,
        *,
        network: NetworkRef,
        bases: Mapping[str, BaseProgram],
        fleet: ControllerFleet,
        twin: TwinPort,
        proposer: ProposerPort,
        signer: Signer,
        ledger: Ledger,
        renderer: RendererPort | None = None,
        clock: Callable[[], datetime] | None = None,
        on_feedback: Callable[[], Any] | None = None,
        closers: list[Any] | None = None,
        feedback: FeedbackHook | None = None,
    ) -> None:
        self.settings = settings
        self.network = network
        self.bases = dict(bases)
        self.fleet = fleet
        self.twin = twin
        self.proposer = proposer
        self.signer = signer
        self.ledger = ledger
        self.renderer = renderer
        self._clock = clock or (lambda: datetime.now(UTC))
        self._on_feedback = on_feedback
        self._closers = closers or []
        #: measured-delta collector (controller.feedback.FeedbackCollector) or None
        self.feedback: FeedbackHook | None = feedback
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
            if result not in _FULL_RESULTS + _PARTIAL_RESULTS:
                continue
            config = TimingConfiguration.model_validate(record.body["configuration"])
            if result in _FULL_RESULTS:
                plans.update(config.intersections)
                continue
            for tls in running_in_record(record.body, config.sequence):
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
                observation = self.fleet.observe()
                self._observation = observation
                record["observation"] = observation.to_dict()
                report.controllers_up = {t: True for t in observation.active}
                report.controllers_up.update({t: False for t in observation.unhealthy})
                self._tell_feedback_observed(observation)
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
                record["whatif"] = dict(summary.document)
            with timed("gate"):
                decision = decide(summary.outcomes, self.settings.gate)
                record["gate"] = decision.to_dict()
                report.decision = decision.decision
            if decision.chosen is None:
                report.ok = True
                return self._finish(report, record, CycleOutcome.REFUSED)
            held = self._held(observation)
            if held is not None:
                # a deployment's measuring window is open: a new plan now would
                # put two plans in one window (feedback.hold_deployments)
                record["reason"] = held
                record["gate"]["held"] = held
                report.decision = "held"
                report.held = held
                report.ok = True
                logger.info("gate passed %s but deployment is held: %s", decision.chosen, held)
                return self._finish(report, record, CycleOutcome.REFUSED)
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
                return self._finish(report, record, CycleOutcome.SHADOW)
            # the cycle record (with the signed envelope) is written before the push,
            # so that a crash mid-push is recognised and reconciled on restart; if it
            # cannot be written (disk full) nothing is pushed
            stage = "record"
            record_start = time.perf_counter()
            cycle_ref = self._append_cycle(report, record, CycleOutcome.PUSHING)
            record_s = time.perf_counter() - record_start
            # from here on this sequence is spent, whatever the push does
            self.sequence = max(self.sequence, config.sequence)
            with timed("push"):
                align = max(p.cycle_s for p in config.intersections.values())
                try:
                    pushed = self.fleet.deploy(envelope_bytes, config, align)
                except Exception as e:  # noqa: BLE001 - recorded as the deployment's result
                    logger.error("push of plan %d raised: %s", config.sequence, e)
                    pushed = DeployOutcome(
                        outcome=PushOutcome.UNKNOWN,
                        message=f"push raised {type(e).__name__}: {e}; field state unknown",
                        push_record={"error": f"{type(e).__name__}: {e}"},
                    )
            result = _deployment_result(pushed.outcome)
            report.opcua_errors = dict.fromkeys(sorted(pushed.errors), 1)
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
            return self._finish(report, record, CycleOutcome.FAILED)

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

    def _append_cycle(
        self, report: CycleReport, record: dict[str, Any], outcome: CycleOutcome
    ) -> int:
        cycle_id = report.slot_time.isoformat()
        record["report"] = report.to_dict()
        body = CycleRecord(cycle_id=cycle_id, outcome=str(outcome), **record)
        ref = self.ledger.append(body, dedupe_key=f"cycle-{cycle_id}")
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
            DeploymentRecord(
                sequence=config.sequence,
                config_digest=config.digest(),
                envelope=dict(envelope),
                configuration=config.to_dict(),
                cycle_index=cycle_index,
                result=result,
                push={
                    "ok": pushed.ok,
                    "message": pushed.message,
                    "results": dict(pushed.push_record),
                },
            ),
            dedupe_key=f"deployment-{config.sequence}",
        )
        # a sequence once signed is never reused, deployed or not
        self.sequence = config.sequence
        if result == "deployed":
            previous = dict(self.current)
            self.current = dict(config.intersections)
            if self.feedback is not None and self._observation is not None:
                try:
                    self.feedback.deployed(
                        ref.index,
                        config,
                        self._observation,
                        pushed.activate_at_field_time_s,
                        previous=previous,
                    )
                except Exception:  # noqa: BLE001 - feedback must never fail a deployment
                    logger.exception("could not register plan %d for feedback", config.sequence)
        elif result == "partial":
            # the controllers that read back the new plan run it; the others do not
            for tls in sorted(pushed.running):
                if tls in config.intersections:
                    self.current[tls] = config.intersections[tls]

    def _tell_feedback_observed(self, observation: Observation) -> None:
        if self.feedback is None:
            return
        try:
            self.feedback.observed(observation)
        except Exception:  # noqa: BLE001 - feedback must never fail a cycle
            logger.exception("feedback collector could not keep the observation")

    def _held(self, observation: Observation) -> str | None:
        """Why the deployment must wait (a measuring window is open), or None."""
        if self.feedback is None or self.settings.mode == "shadow":
            return None
        try:
            return self.feedback.holding(observation.field_time_s)
        except Exception:  # noqa: BLE001 - an unreadable hold never blocks the loop for ever
            logger.exception("feedback collector could not say whether to hold")
            return None

    def _finish(
        self, report: CycleReport, record: dict[str, Any], outcome: CycleOutcome
    ) -> CycleReport:
        start = time.perf_counter()
        try:
            self._append_cycle(report, record, outcome)
            if outcome == CycleOutcome.SHADOW and report.sequence is not None:
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
            CycleRecord(cycle_id=cycle_id, outcome=str(CycleOutcome.SKIPPED), reason=reason),
            dedupe_key=f"cycle-{cycle_id}",
        )

    def record_config_change(self, settings: Settings) -> None:
        """Record a reloaded configuration (its digest and mode)."""
        body = settings.model_dump(mode="json")
        self.ledger.append(
            ConfigChangeRecord(sha256=sha256_hex(canonical_json(body)), settings=body)
        )

    def collect_feedback(self) -> Any:
        """Collect measured deltas and fine-tune (delegated to the feedback hook)."""
        with self._lock:
            try:
                if self.feedback is not None:
                    return self.feedback.collect()
                if self._on_feedback is not None:
                    return self._on_feedback()
                return None
            finally:
                self._cover_tail()

    def _cover_tail(self) -> None:
        # audit verify requires every record to be under a signed checkpoint
        try:
            self.ledger.checkpoint(self.signer)
        except Exception as e:  # noqa: BLE001 - never fails feedback or shutdown
            logger.error("could not sign a ledger checkpoint: %s", e)

    @property
    def backend(self) -> str:
        """Where the twin's what-ifs run (``[compute] backend``): ``local`` or ``ray``."""
        return self.twin.backend if isinstance(self.twin, ComputeStatus) else "local"

    @property
    def workers_alive(self) -> int:
        """What-if workers the twin has ready now (0 when the twin does not say)."""
        return self.twin.workers_alive if isinstance(self.twin, ComputeStatus) else 0

    @property
    def workers_configured(self) -> int:
        """What-if workers the settings ask for (``simulation.workers``)."""
        return self.settings.simulation.workers

    def close(self) -> None:
        """Release what :func:`controller.wiring.build_runner` opened (sessions, HSM, ledger)."""
        self._cover_tail()
        for item in self._closers:
            try:
                item.close()
            except Exception:  # noqa: BLE001 - close everything we can
                logger.exception("error while closing %s", type(item).__name__)
        self._closers = []


def _deployment_result(outcome: PushOutcome) -> str:
    """The ``deployment.result`` a push outcome is recorded as."""
    if outcome == PushOutcome.ACTIVATED:
        return "deployed"
    if outcome in (PushOutcome.PARTIAL, PushOutcome.UNKNOWN):
        return str(outcome)
    return "aborted"


def running_in_record(body: Mapping[str, Any], sequence: int) -> list[str]:
    """The controllers a ``deployment`` record's push rows say read back ``sequence``.

    Reads what the ledger holds (written by this module or by recovery), the
    only place the rows are parsed again: the running cycle uses the typed
    :attr:`DeployOutcome.running`.
    """
    push = body.get("push")
    results = push.get("results") if isinstance(push, Mapping) else None
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
