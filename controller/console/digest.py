"""The console's running summary of the ledger, fed its records one by one in index order.

:class:`LedgerDigest` keeps only what the page needs, bounded: the last cycles
(stage times, the gate's decision, each candidate's predicted changes with their
intervals), the last deployments with what was measured after them, the plan in
force at each intersection and the deployment that last changed it, the
controllers' health from the latest observation, and the latest what-if video.

Nothing here trusts the ledger's nested documents: each record is parsed
through its kind's model (and the nested plans, predictions, gate decisions and
reports through their owners'); one that does not parse is counted and skipped,
never shown half-read.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any

from pydantic import ValidationError

from configs.errors import LedgerError
from configs.timing import IntersectionTiming, Prediction
from controller.console.views import CandidateView, CycleView, DeploymentView, Interval, finite
from controller.contracts import CycleReport
from controller.gate import GateDecision
from controller.ledger import CycleRecord, DeploymentRecord, MeasuredDeltaRecord, Record

__all__ = ["LedgerDigest", "Observed", "PlanInForce", "slot_key"]

logger = logging.getLogger(__name__)


@dataclass
class PlanInForce:
    """One intersection's plan in force: its sequence, and the plan that last changed it."""

    plan: IntersectionTiming
    sequence: int = 0
    last_change: int | None = None
    previous_cycle_s: int | None = None


@dataclass(frozen=True)
class Observed:
    """The controllers as one cycle observed them (answered, errors, active sequence)."""

    cycle_id: str
    up: Mapping[str, bool]
    errors: Mapping[str, int]
    active: Mapping[str, int]


class LedgerDigest:
    """The console's running summary of one ledger, fed its records in index order."""

    def __init__(self, cycles_kept: int = 20, deployments_kept: int = 20) -> None:
        self._cycles_kept = cycles_kept
        self._deployments_kept = deployments_kept
        self.cycles: OrderedDict[str, CycleView] = OrderedDict()
        self.deployments: OrderedDict[int, DeploymentView] = OrderedDict()
        self.plans: dict[str, PlanInForce] = {}
        self.observed: Observed | None = None
        self.video: tuple[str, str] | None = None
        self.mode: str | None = None
        self.network_id: str | None = None
        self.last_deployed: int | None = None
        self.last_index = 0
        self.unreadable = 0

    def ingest(self, record: Record) -> None:
        """Take in one record (later than every record before); a bad one is counted, skipped."""
        self.last_index = max(self.last_index, record.index)
        try:
            body = record.model()
            if isinstance(body, CycleRecord):
                self._cycle(record.index, body)
            elif isinstance(body, DeploymentRecord):
                self._deployment(record.index, body)
            elif isinstance(body, MeasuredDeltaRecord):
                self._measured(body)
        except (LedgerError, ValidationError, ValueError, TypeError, KeyError) as e:
            self.unreadable += 1
            logger.debug("console: record %d not shown: %s", record.index, e)

    # ------------------------------------------------------------------ cycles

    def _cycle(self, index: int, body: CycleRecord) -> None:
        report = CycleReport.from_dict(body.report) if body.report else None
        gate = GateDecision.from_dict(body.gate) if body.gate else None
        settings = body.gate_settings or {}
        held = body.gate.get("held") if body.gate else None
        if body.mode:
            self.mode = body.mode
        if body.network and isinstance(body.network.get("id"), str):
            self.network_id = body.network["id"]
        video = None
        if body.video and isinstance(body.video.get("path"), str):
            video = PurePath(body.video["path"]).name
            self.video = (video, body.cycle_id)
        view = CycleView(
            cycle_id=body.cycle_id,
            outcome=body.outcome,
            slot_time=body.slot_time,
            ledger_index=index,
            decision=report.decision if report else (gate.decision if gate else "none"),
            chosen=gate.chosen if gate else None,
            basis=gate.basis if gate else None,
            candidates=_candidates(gate, body.whatif),
            held=str(held) if held else (report.held if report else None),
            reason=body.reason,
            failed_stage=report.failed_stage if report else None,
            error=report.error if report else None,
            stage_s=dict(report.stage_s) if report else {},
            sequence=report.sequence if report else None,
            min_wait_reduction=finite(settings.get("min_wait_reduction")),
            max_nox_increase=finite(settings.get("max_nox_increase")),
            video=video,
        )
        self.cycles[body.cycle_id] = view
        self.cycles.move_to_end(body.cycle_id)
        while len(self.cycles) > 2 * self._cycles_kept:
            oldest = min(self.cycles.values(), key=slot_key)
            del self.cycles[oldest.cycle_id]
        self._known_plans(body.current or {}, body.observation or {})
        if body.observation is not None:
            self.observed = _observation(body.cycle_id, body.observation, report)

    def _known_plans(self, current: Mapping[str, Any], observation: Mapping[str, Any]) -> None:
        active = observation.get("active") if isinstance(observation, Mapping) else None
        for tls, data in current.items():
            if tls in self.plans:
                continue
            try:
                plan = IntersectionTiming.model_validate(data)
            except ValidationError:
                continue
            sequence = 0
            if isinstance(active, Mapping) and isinstance(active.get(tls), list) and active[tls]:
                sequence = int(finite(active[tls][0]) or 0)
            self.plans[str(tls)] = PlanInForce(plan, sequence)

    # ------------------------------------------------------------------ deployments

    def _deployment(self, index: int, body: DeploymentRecord) -> None:
        config = body.configuration or {}
        prediction = _prediction(config.get("predicted"))
        self.deployments[index] = DeploymentView(
            ledger_index=index,
            sequence=body.sequence,
            result=body.result,
            cycle_index=body.cycle_index,
            predicted_wait=prediction[0],
            predicted_nox=prediction[1],
        )
        while len(self.deployments) > self._deployments_kept:
            self.deployments.popitem(last=False)
        if body.result != "deployed":
            return
        self.last_deployed = body.sequence
        intersections = config.get("intersections")
        if not isinstance(intersections, Mapping):
            return
        for tls, data in intersections.items():
            try:
                plan = IntersectionTiming.model_validate(data)
            except ValidationError:
                continue
            known = self.plans.get(str(tls))
            if known is None:
                self.plans[str(tls)] = PlanInForce(plan, body.sequence, body.sequence)
                continue
            if known.plan != plan:
                known.previous_cycle_s = known.plan.cycle_s
                known.last_change = body.sequence
                known.plan = plan
            known.sequence = body.sequence

    def _measured(self, body: MeasuredDeltaRecord) -> None:
        deployment = self.deployments.get(body.deployment)
        if deployment is None:
            return
        estimated = body.estimated or {}
        measured = body.measured
        status = body.status or str(measured.get("status") or "measured")
        source = estimated if estimated else measured
        predicted = body.predicted or {}
        wait = Interval.of(source.get("wait_change"), source.get("wait_ci"))
        nox = Interval.of(source.get("nox_change"), source.get("nox_ci"))
        predicted_wait = Interval.of(predicted.get("wait_change"), predicted.get("wait_ci"))
        predicted_nox = Interval.of(predicted.get("nox_change"), predicted.get("nox_ci"))
        reason = measured.get("reason")
        superseded = body.superseded_by
        note = str(reason) if reason else None
        if superseded is not None:
            note = f"cut short by plan {superseded}" + (f"; {note}" if note else "")
        method = estimated.get("method") if estimated else None
        self.deployments[body.deployment] = DeploymentView(
            ledger_index=deployment.ledger_index,
            sequence=deployment.sequence,
            result=deployment.result,
            cycle_index=deployment.cycle_index,
            # the measured record's prediction is of the quantity measured (approach
            # halting vehicle-seconds): the one to hold the measurement against
            predicted_wait=predicted_wait or deployment.predicted_wait,
            predicted_nox=predicted_nox or deployment.predicted_nox,
            measured_status=status if wait is not None or status != "measured" else "pending",
            measured_wait=wait,
            measured_nox=nox,
            method=str(method) if method else None,
            note=note,
            quantity=body.quantity or _text(predicted.get("quantity")),
        )


def _text(value: object) -> str | None:
    return None if value is None else str(value)


def slot_key(view: CycleView) -> str:
    """Sort key of a cycle: its slot time (ISO text of one zone sorts as time)."""
    return view.slot_time or view.cycle_id


def _prediction(data: object) -> tuple[Interval | None, Interval | None]:
    if not isinstance(data, Mapping):
        return None, None
    try:
        p = Prediction.model_validate(data)
    except ValidationError:
        return None, None
    return Interval.of(p.wait_change, p.wait_change_ci), Interval.of(p.nox_change, p.nox_change_ci)


def _candidates(
    gate: GateDecision | None, whatif: Mapping[str, Any] | None
) -> tuple[CandidateView, ...]:
    """Each judged candidate with the twin's paired changes (``wait``, ``nox``) and intervals."""
    changes: dict[str, tuple[Interval | None, Interval | None, str | None]] = {}
    result = whatif.get("result") if isinstance(whatif, Mapping) else None
    outcomes = result.get("outcomes") if isinstance(result, Mapping) else None
    for outcome in outcomes if isinstance(outcomes, list) else []:
        if not isinstance(outcome, Mapping) or not isinstance(outcome.get("name"), str):
            continue
        found = outcome.get("changes")
        found = found if isinstance(found, Mapping) else {}

        def interval(metric: str, found: Mapping[str, Any] = found) -> Interval | None:
            change = found.get(metric)
            if not isinstance(change, Mapping):
                return None
            return Interval.of(change.get("mean"), change.get("ci"))

        failed = outcome.get("failed")
        changes[outcome["name"]] = (
            interval("wait"),
            interval("nox"),
            str(failed) if failed else None,
        )
    if gate is None:
        return ()
    views = []
    for verdict in gate.verdicts:
        wait, nox, failed = changes.get(verdict.candidate, (None, None, None))
        views.append(
            CandidateView(verdict.candidate, verdict.verdict, verdict.reasons, wait, nox, failed)
        )
    return tuple(views)


def _observation(
    cycle_id: str, observation: Mapping[str, Any], report: CycleReport | None
) -> Observed:
    up: dict[str, bool] = {}
    active: dict[str, int] = {}
    if report is not None and report.controllers_up:
        up.update(report.controllers_up)
    else:
        raw_active = observation.get("active")
        for tls in raw_active if isinstance(raw_active, Mapping) else {}:
            up[str(tls)] = True
        raw_unhealthy = observation.get("unhealthy")
        for tls in raw_unhealthy if isinstance(raw_unhealthy, list) else []:
            up[str(tls)] = False
    raw_active = observation.get("active")
    if isinstance(raw_active, Mapping):
        for tls, value in raw_active.items():
            if isinstance(value, list) and value and finite(value[0]) is not None:
                active[str(tls)] = int(value[0])
    errors = dict(report.opcua_errors) if report is not None else {}
    return Observed(cycle_id, up, errors, active)
