"""Measured deltas: what a deployment did in the field, against what the twin predicted.

The quantity is the one the twin predicts: the **halting vehicle-seconds on the
signalised approach lanes** (and their NOx), summed over a window, over the
intersections the deployment changed. Controllers report both as cumulative
totals (``Measurements.HaltingTotal``, ``Measurements.NOxTotal``); a window's
totals are the difference of two readings.

The collector keeps every counter reading it sees (each cycle's observation
and its own reads) in a :class:`CounterLog`. For each deployment, with
``W = feedback.window_s``:

* the **before** window is ``[activation - W, activation]`` under the previous
  plan (it starts no earlier than that plan's own activation), the **after**
  window ``[activation, activation + W]``; each edge is the reading nearest to
  it (the window recorded is the one the readings span);
* if another plan activated inside the after window, the after window ends at
  that activation; shorter than ``W / 2`` it is recorded as *superseded* (no
  delta). Every deployment is measured over its own window, never another's;
* a counter that goes backwards (a controller restarted) starts a new series:
  that intersection is left out of any window across the break, never measured
  as a negative window;
* the delta is estimated against a counterfactual (:class:`CounterfactualPort`:
  the previous plan re-simulated on the twin with the after window's demand,
  corrected by the twin-vs-field gap of the before window), the twin's
  calibration learns from that gap (:class:`CalibrationPort`, a ``calibration``
  record when it changes), and in evaluation the true delta of a fork of the
  field (:class:`TruthPort`) is recorded beside it.

Each outcome is a ``measured_delta`` ledger record (predicted, estimated, true
and their errors in percentage points); the estimated change is the RL feedback
store's reward; enough measured samples fine-tune the policy. While a window is
open and ``feedback.hold_deployments`` is set, :meth:`FeedbackCollector.holding`
tells the cycle to deploy nothing. Nothing here can deploy anything.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from configs.errors import SignaltwinError
from configs.settings import Settings
from configs.timing import TimingConfiguration
from controller.contracts import (
    CalibrationPort,
    CounterfactualEstimate,
    CounterfactualPort,
    FeedbackReport,
    FeedbackSink,
    MeasurementSource,
    Observation,
    Plans,
    PolicyHolder,
    TrueDeltaLike,
    TruthPending,
    TruthPort,
)
from controller.counter_log import CounterLog, restricted
from controller.ledger import Ledger, MeasuredDeltaRecord, PolicyVersionRecord
from controller.ledger.records import CalibrationRecord
from controller.prediction import (
    QUANTITY,
    Predicted,
    changed_intersections,
    plans_of,
    predicted_from_cycle,
)

if TYPE_CHECKING:
    from simulators.field.records import WindowTotals

__all__ = [
    "QUANTITY",
    "FeedbackCollector",
    "PendingMeasurement",
    "Predicted",
    "changed_intersections",
]

logger = logging.getLogger(__name__)

#: no activation before or after
_ALL = float("inf")


@dataclass
class PendingMeasurement:
    """A deployment waiting for its field outcome."""

    ledger_index: int
    deployment_id: str
    sequence: int
    activate_at_field_time_s: float
    previous: Plans
    deployed: Plans
    #: the intersections whose plan the deployment changed (what is compared)
    only: frozenset[str]
    predicted: Predicted
    truth: TruthPending | None = None


Status = Literal["measured", "superseded", "not_measurable"]


@dataclass
class _Outcome:
    """What measuring one deployment found (one ledger record)."""

    status: Status
    reason: str = ""
    window: dict[str, float] | None = None
    superseded_by: int | None = None
    before: WindowTotals | None = None
    after: WindowTotals | None = None
    compared: frozenset[str] = frozenset()
    estimate: CounterfactualEstimate | None = None
    true: TrueDeltaLike | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class FeedbackCollector:
    """Measures deployments over their own windows and feeds the outcome back.

    Args:
        settings: ``[feedback]`` (window, hold, calibrate), ``[rl]`` (fine-tuning).
        ledger: where ``measured_delta``, ``calibration`` and ``policy_version`` go.
        read_counters: the collector's own read of the controllers' counters.
        proposer: the policy in use (fine-tuning replaces it).
        store: the RL feedback store (its reward is the estimated change).
        counterfactual: the estimator; without one every delta is not measurable.
        calibration: the twin's demand calibration, updated from each estimate
            when ``feedback.calibrate`` is set.
        truth: evaluation only, the field forked at activation.
    """

    def __init__(
        self,
        settings: Settings,
        ledger: Ledger,
        read_counters: MeasurementSource,
        proposer: PolicyHolder,
        store: FeedbackSink | None = None,
        *,
        counterfactual: CounterfactualPort | None = None,
        calibration: CalibrationPort | None = None,
        truth: TruthPort | None = None,
    ) -> None:
        self.settings = settings
        self.ledger = ledger
        self.read_counters = read_counters
        self.proposer = proposer
        self.store = store
        self.counterfactual = counterfactual
        self.calibration = calibration
        self.truth = truth
        self.window_s = float(settings.feedback_window_s)
        self.log = CounterLog(keep_s=3 * self.window_s)
        self._pending: list[PendingMeasurement] = []
        #: (activation field time, sequence) of every deployment told, in order
        self._activations: list[tuple[float, int]] = []
        self._lock = threading.RLock()
        self._measured_since_tune = 0
        #: the latest field time seen (observations, readings)
        self._now_s = -_ALL

    def _saw(self, field_time_s: float) -> None:
        """Note a field time seen. A clock that went back starts over, as the counter log does.

        A restarted field or a new day of evaluation begins at an earlier field
        time; the latest time of the old clock would otherwise declare every new
        window overdue ("no counter reading closed the window") before it closed.
        """
        if field_time_s < self._now_s - 1e-9:
            self._now_s = field_time_s
        else:
            self._now_s = max(self._now_s, field_time_s)

    # ---------------------------------------------------------------- from the cycle

    def observed(self, observation: Observation) -> None:
        """Keep the observation's counter reading (and its field time)."""
        with self._lock:
            self._saw(observation.field_time_s)
            if observation.counters is not None:
                self.log.add(observation.counters)

    def read_baseline(self) -> None:
        """Keep one counter reading now (at start-up: the first before window starts here)."""
        try:
            reading = self.read_counters()
        except SignaltwinError as e:
            logger.warning("could not read the controllers' counters at start-up: %s", e)
            return
        if reading is None:
            return
        with self._lock:
            self.log.add(reading)
            self._saw(reading.field_time_s)

    def holding(self, field_time_s: float) -> str | None:
        """Why a deployment now could not be measured, while holds are on; else None.

        ``"measuring plan N until t=..."`` while a window is open (a new plan
        would share it); ``"collecting the before window ..."`` while the
        counter readings kept (since start-up) span less than one window before
        now: a plan activated then would have no before window to be measured
        against (controllers that report no totals are not waited for).
        """
        if not self.settings.feedback.hold_deployments:
            return None
        with self._lock:
            open_ = [
                p
                for p in self._pending
                if field_time_s < p.activate_at_field_time_s + self.window_s
            ]
            earliest = self.log.earliest_s
        if not open_:
            # controllers that report no totals leave the log empty: nothing to wait for
            span = math.inf if earliest is None else field_time_s - earliest
            if span < self.window_s - 1e-9:
                return (
                    f"collecting the before window: counter readings span {span:.0f} s "
                    f"of the {self.window_s:.0f} s window"
                )
            return None
        last = max(open_, key=lambda p: p.activate_at_field_time_s)
        until = last.activate_at_field_time_s + self.window_s
        return f"measuring plan {last.sequence} until t={until:.0f} s"

    def deployed(
        self,
        ledger_index: int,
        config: TimingConfiguration,
        observation: Observation,
        activate_at_field_time_s: float | None,
        previous: Plans | None = None,
    ) -> None:
        """Remember a deployment until its window can be measured."""
        deployment_id = config.digest()
        activate = float(
            activate_at_field_time_s
            if activate_at_field_time_s is not None
            else observation.field_time_s
        )
        cycle = self._cycle_body(ledger_index)
        if previous is None:
            previous = plans_of(cycle.get("current")) if cycle else {}
        only = changed_intersections(previous, config.intersections)
        pending = PendingMeasurement(
            ledger_index=ledger_index,
            deployment_id=deployment_id,
            sequence=config.sequence,
            activate_at_field_time_s=activate,
            previous=dict(previous),
            deployed=dict(config.intersections),
            only=only,
            predicted=predicted_from_cycle(config, cycle, only),
        )
        if self.truth is not None:
            try:
                pending.truth = self.truth.start(
                    sequence=config.sequence,
                    activate_at_field_time_s=activate,
                    in_force=pending.deployed,
                    previous=pending.previous,
                    window_s=self.window_s,
                )
            except Exception as e:  # noqa: BLE001 - evaluation extra; the estimate still counts
                logger.warning("truth fork of plan %d not started: %s", config.sequence, e)
        with self._lock:
            self._saw(observation.field_time_s)
            if observation.counters is not None:
                self.log.add(observation.counters)
            self._pending.append(pending)
            self._pending.sort(key=lambda p: p.activate_at_field_time_s)
            self._activations.append((activate, config.sequence))
            self._activations.sort()
        if self.store is not None:
            policy = self.proposer.policy
            try:
                self.store.record_deployment(
                    deployment_id,
                    self.proposer.last_observations or {},
                    config.intersections,
                    policy_sha256=None if policy is None else str(policy.sha256),
                    predicted_wait_change=pending.predicted.wait_change,
                    predicted_nox_change=pending.predicted.nox_change,
                )
            except SignaltwinError as e:
                logger.warning("feedback store: could not record deployment: %s", e)

    def resume_from_ledger(self) -> int:
        """After a restart: the counter readings and open measurements the ledger holds.

        Every cycle record's observation carries the controllers' cumulative
        counters; every ``deployed`` deployment without a ``measured_delta`` is
        measured again over its own window (its truth fork, if any, is lost).

        Returns:
            How many deployments wait for their measurement.
        """
        from simulators.field.records import FieldCounters

        measured = {
            int(r.body["deployment"])
            for r in self.ledger.iter_records("measured_delta")
            if isinstance(r.body.get("deployment"), int)
        }
        with self._lock:
            for r in self.ledger.iter_records("cycle"):
                observation = r.body.get("observation")
                counters = observation.get("counters") if isinstance(observation, Mapping) else None
                if not isinstance(counters, Mapping):
                    continue
                try:
                    reading = FieldCounters(
                        field_time_s=float(counters["field_time_s"]),
                        halting_veh_s={
                            str(k): float(v) for k, v in counters["halting_veh_s"].items()
                        },
                        nox_mg={str(k): float(v) for k, v in counters["nox_mg"].items()},
                        detector_counts={
                            str(k): int(v) for k, v in counters.get("detector_counts", {}).items()
                        },
                    )
                except (KeyError, TypeError, ValueError, AttributeError) as e:
                    logger.warning("cycle record %d: counters unreadable (%s)", r.index, e)
                    continue
                self.log.add(reading)
                self._saw(reading.field_time_s)
            for r in self.ledger.iter_records("deployment"):
                if r.body.get("result") != "deployed":
                    continue
                try:
                    cfg = TimingConfiguration.model_validate(r.body["configuration"])
                except (KeyError, ValueError) as e:
                    logger.warning(
                        "deployment record %d: configuration unreadable (%s)", r.index, e
                    )
                    continue
                cycle = self._cycle_body(r.index)
                push = r.body.get("push")
                results = push.get("results") if isinstance(push, Mapping) else None
                at = (
                    results.get("activate_at_field_time_s")
                    if isinstance(results, Mapping)
                    else None
                )
                if not isinstance(at, int | float):
                    observation = cycle.get("observation")
                    at = (
                        observation.get("field_time_s")
                        if isinstance(observation, Mapping)
                        else None
                    )
                if not isinstance(at, int | float):
                    continue
                if any(s == cfg.sequence for _, s in self._activations):
                    continue
                self._activations.append((float(at), cfg.sequence))
                if r.index in measured:
                    continue
                previous = plans_of(cycle.get("current"))
                only = changed_intersections(previous, cfg.intersections)
                self._pending.append(
                    PendingMeasurement(
                        ledger_index=r.index,
                        deployment_id=cfg.digest(),
                        sequence=cfg.sequence,
                        activate_at_field_time_s=float(at),
                        previous=previous,
                        deployed=dict(cfg.intersections),
                        only=only,
                        predicted=predicted_from_cycle(cfg, cycle, only),
                    )
                )
            self._activations.sort()
            self._pending.sort(key=lambda p: p.activate_at_field_time_s)
            if self._pending:
                logger.info(
                    "resumed %d open measurement(s) and %d counter reading(s) from the ledger",
                    len(self._pending),
                    len(self.log),
                )
            return len(self._pending)

    def _cycle_body(self, deployment_index: int) -> Mapping[str, Any]:
        try:
            body = self.ledger.get(deployment_index).body
            cycle_index = body.get("cycle_index")
            if not isinstance(cycle_index, int):
                return {}
            return self.ledger.get(cycle_index).body
        except SignaltwinError as e:
            logger.warning("cycle record of deployment %d unreadable: %s", deployment_index, e)
            return {}

    # ---------------------------------------------------------------- the feedback job

    def collect(self) -> FeedbackReport:
        """Read the counters, measure every deployment whose window has closed; maybe fine-tune."""
        with self._lock:
            if not self._pending:
                return FeedbackReport()
        try:
            reading = self.read_counters()
        except SignaltwinError as e:
            logger.warning("could not read the controllers' counters: %s", e)
            reading = None
        counts = {"measured": 0, "superseded": 0, "not_measurable": 0}
        errors: list[float] = []
        with self._lock:
            if reading is not None:
                self.log.add(reading)
                self._saw(reading.field_time_s)
            for item in list(self._pending):
                outcome = self._measure(item)
                if outcome is None:
                    continue
                try:
                    error = self._record(item, outcome)
                except SignaltwinError as e:
                    logger.warning("measured delta of plan %d not recorded: %s", item.sequence, e)
                    continue
                self._pending = [p for p in self._pending if p is not item]
                counts[outcome.status] += 1
                if error is not None:
                    errors.append(error)
            oldest = min((p.activate_at_field_time_s for p in self._pending), default=math.inf)
            self.log.prune(oldest - 2 * self.window_s)
        fine_tuned = self._maybe_fine_tune() if counts["measured"] else False
        return FeedbackReport(
            measured=counts["measured"],
            prediction_error_ratios=tuple(errors),
            fine_tuned=fine_tuned,
            superseded=counts["superseded"],
            not_measurable=counts["not_measurable"],
        )

    def _neighbours(self, item: PendingMeasurement) -> tuple[float, tuple[float, int] | None]:
        """(the previous plan's activation, the next activation) around ``item``.

        Only an earlier plan (a lower sequence) comes before and only a later one
        after: a field clock that started again (a reset emulator, a new day of
        evaluation) puts old activations at times still ahead.
        """
        act = item.activate_at_field_time_s
        seq = item.sequence
        earlier = [t for t, s in self._activations if t < act and s < seq]
        later = [(t, s) for t, s in self._activations if t > act and s > seq]
        return (max(earlier) if earlier else -_ALL), (min(later) if later else None)

    def _measure(self, item: PendingMeasurement) -> _Outcome | None:
        """The outcome of ``item``, or None while its window has not closed yet."""
        w = self.window_s
        act = item.activate_at_field_time_s
        prior_s, following = self._neighbours(item)
        length = w
        if following is not None and following[0] < act + w:
            length = following[0] - act
            if length < w / 2:
                return _Outcome(
                    "superseded",
                    f"plan {following[1]} activated {length:.0f} s after this one, "
                    f"less than half the {w:.0f} s window",
                    window={"begin_s": act, "end_s": following[0]},
                    superseded_by=following[1],
                )
        latest, earliest = self.log.latest_s, self.log.earliest_s
        if latest is None or earliest is None or latest < act + length - 1e-9:
            if self._now_s > act + length + w:
                return _Outcome(
                    "not_measurable",
                    "no counter reading closed the window"
                    if latest is not None
                    else "the controllers report no cumulative totals "
                    "(Measurements.HaltingTotal, Measurements.NOxTotal)",
                    window={"begin_s": act, "end_s": act + length},
                )
            return None
        truth = None
        if item.truth is not None:
            if not item.truth.done() and latest < act + length + w:
                return None  # the fork is still running: wait for it (at most one window)
            truth = self._truth_of(item)
        outcome = self._windows(item, prior_s, earliest, length)
        outcome.true = truth
        if following is not None and following[0] < act + w:
            outcome.superseded_by = following[1]
        if outcome.status != "measured" or outcome.before is None or outcome.after is None:
            return outcome
        if self.counterfactual is None:
            outcome.status, outcome.reason = "not_measurable", "no counterfactual estimator"
            return outcome
        scale = 1.0 if self.calibration is None else float(self.calibration.demand_scale)
        try:
            outcome.estimate = self.counterfactual.estimate(
                before=outcome.before,
                after=outcome.after,
                previous=item.previous,
                deployed=item.deployed,
                only=outcome.compared,
                demand_scale=scale,
            )
        except SignaltwinError as e:
            outcome.status, outcome.reason = "not_measurable", f"estimator failed: {e}"
        return outcome

    def _truth_of(self, item: PendingMeasurement) -> TrueDeltaLike | None:
        if item.truth is None or not item.truth.done():
            return None
        try:
            return item.truth.result()
        except Exception as e:  # noqa: BLE001 - evaluation extra
            logger.warning("truth fork of plan %d failed: %s", item.sequence, e)
            return None

    def _windows(
        self, item: PendingMeasurement, prior_s: float, earliest_s: float, length: float
    ) -> _Outcome:
        """Equal before and after windows of at most ``length`` seconds around activation."""
        w = self.window_s
        act = item.activate_at_field_time_s
        # the before window lies under the previous plan, where readings exist
        room = act - max(prior_s, earliest_s)
        length = float(math.floor(min(length, room) + 1e-9))
        window = {"begin_s": act, "end_s": act + length}
        if length < w / 2:
            return _Outcome(
                "not_measurable",
                f"the readings under the previous plan span {max(room, 0):.0f} s before "
                f"activation, less than half the {w:.0f} s window",
                window=window,
            )
        before = self.log.window(act - length, act, max_gap_s=w / 2)
        after = self.log.window(act, act + length, max_gap_s=w / 2)
        if before is None or after is None:
            return _Outcome(
                "not_measurable",
                f"no two readings less than {w / 2:.0f} s apart around a window edge",
                window=window,
            )
        common = frozenset(before.halting_veh_s) & frozenset(after.halting_veh_s)
        compared = item.only & common
        if not compared:
            missing = sorted(item.only) or ["(the deployment changed no plan)"]
            return _Outcome(
                "not_measurable",
                "no changed intersection reported continuous totals over both windows: "
                + ", ".join(missing[:10]),
                window=window,
            )
        return _Outcome(
            "measured",
            window=window,
            before=restricted(before, common),
            after=restricted(after, common),
            compared=compared,
        )

    # ---------------------------------------------------------------- recording

    def _record(self, item: PendingMeasurement, outcome: _Outcome) -> float | None:
        predicted = item.predicted.to_dict()
        measured: dict[str, Any] = {"status": outcome.status}
        if outcome.reason:
            measured["reason"] = outcome.reason
        estimated: dict[str, Any] | None = None
        errors: dict[str, float] = {}
        est = outcome.estimate
        if outcome.before is not None and outcome.after is not None:
            only = outcome.compared
            measured.update(
                {
                    "intersections": sorted(only),
                    "before_window": {
                        "begin_s": outcome.before.begin_s,
                        "end_s": outcome.before.end_s,
                    },
                    "wait_before_veh_s": round(outcome.before.wait_veh_s(only), 3),
                    "wait_after_veh_s": round(outcome.after.wait_veh_s(only), 3),
                    "nox_before_mg": round(outcome.before.total_nox_mg(only), 3),
                    "nox_after_mg": round(outcome.after.total_nox_mg(only), 3),
                }
            )
        if est is not None:
            estimated = {
                "wait_change": round(est.wait_change, 6),
                "wait_ci": [round(v, 6) for v in est.wait_ci],
                "nox_change": round(est.nox_change, 6),
                "nox_ci": [round(v, 6) for v in est.nox_ci],
                "method": str(est.method),
                "gap_before": round(est.gap_before, 6),
                "model_change": round(est.model_change, 6),
                "detail": est.to_dict(),
            }
            # the daemon's measured delta (what older readers of the record take)
            measured["wait_change"] = estimated["wait_change"]
            measured["nox_change"] = estimated["nox_change"]
            errors["estimated_minus_predicted_pp"] = _pp(
                est.wait_change - item.predicted.wait_change
            )
        true: dict[str, Any] | None = None
        truth = self._true_changes(item, outcome)
        if truth is not None and outcome.true is not None:
            true = {
                "wait_change": round(truth[0], 6),
                "nox_change": round(truth[1], 6),
                "detail": outcome.true.to_dict(),
            }
            errors["true_minus_predicted_pp"] = _pp(truth[0] - item.predicted.wait_change)
            if est is not None:
                errors["true_minus_estimated_pp"] = _pp(truth[0] - est.wait_change)
        self.ledger.append(
            MeasuredDeltaRecord(
                deployment=item.ledger_index,
                sequence=item.sequence,
                quantity=QUANTITY,
                status=outcome.status,
                plan_in_force=item.sequence,
                window=outcome.window,
                superseded_by=outcome.superseded_by,
                measured=measured,
                predicted=predicted,
                estimated=estimated,
                true=true,
                errors=errors or None,
                wait_error=(
                    None if est is None else round(est.wait_change - item.predicted.wait_change, 6)
                ),
            ),
            dedupe_key=f"measured-{item.sequence}",
        )
        if est is None:
            logger.info("plan %d: %s (%s)", item.sequence, outcome.status, outcome.reason)
            return None
        logger.info(
            "plan %d measured: wait %+.1f%% (predicted %+.1f%%), NOx %+.2f%%",
            item.sequence,
            100 * est.wait_change,
            100 * item.predicted.wait_change,
            100 * est.nox_change,
        )
        self._calibrate(item, est)
        if self.store is not None:
            try:
                self.store.record_estimate(
                    item.deployment_id,
                    est.wait_change,
                    est.nox_change,
                    predicted_wait_change=item.predicted.wait_change,
                    predicted_nox_change=item.predicted.nox_change,
                    wait_change_ci=(est.wait_ci[0], est.wait_ci[1]),
                    # the store's name for an estimate against a counterfactual (the
                    # estimator's method is in the ledger record)
                    source="counterfactual",
                )
                self._measured_since_tune += 1
            except SignaltwinError as e:
                logger.warning("feedback store: %s", e)
        return abs(est.wait_change - item.predicted.wait_change) / max(
            abs(item.predicted.wait_change), 1e-6
        )

    def _true_changes(
        self, item: PendingMeasurement, outcome: _Outcome
    ) -> tuple[float, float] | None:
        """The fork's (wait, NOx) change over the same window and intersections as measured."""
        true = outcome.true
        if true is None:
            return None
        only = outcome.compared or item.only or None
        window = outcome.window or {}
        length = float(window.get("end_s", 0.0)) - float(window.get("begin_s", 0.0))
        # a window cut short by the next plan compares the fork's first seconds only
        horizon = length if 0 < length < self.window_s - 1e-6 else None
        try:
            return (
                true.wait_change(horizon_s=horizon, only=only),
                true.nox_change(horizon_s=horizon, only=only),
            )
        except SignaltwinError as e:
            logger.warning("true delta of plan %d over the window: %s", item.sequence, e)
            return None

    def _calibrate(self, item: PendingMeasurement, est: CounterfactualEstimate) -> None:
        cal = self.calibration
        if cal is None or not self.settings.feedback.calibrate:
            return
        before = float(cal.demand_scale)
        try:
            cal.update_from_estimate(est)
        except SignaltwinError as e:
            logger.warning("twin calibration not updated: %s", e)
            return
        after = float(cal.demand_scale)
        if math.isclose(after, before, rel_tol=1e-9):
            return
        logger.info("twin demand scale %.4f -> %.4f (plan %d)", before, after, item.sequence)
        self.ledger.append(
            CalibrationRecord(
                deployment=item.ledger_index,
                sequence=item.sequence,
                demand_scale=after,
                previous_demand_scale=before,
                field_before_veh_s=round(float(est.field_before_veh_s), 3),
                twin_before_veh_s=round(float(est.twin_before_veh_s), 3),
                gap_before=round(float(est.gap_before), 6),
                calibration=_last_update(cal.to_dict()),
            ),
            dedupe_key=f"calibration-{item.sequence}",
        )

    def _maybe_fine_tune(self) -> bool:
        rl = self.settings.rl
        policy = self.proposer.policy
        if not rl.fine_tune or self.store is None or policy is None:
            return False
        if self.store.count() < rl.fine_tune_min_samples or self._measured_since_tune == 0:
            return False
        from rl.finetune import finetune
        from rl.policy import TorchPolicy

        directory = self.settings.state_dir / "policies"
        directory.mkdir(parents=True, exist_ok=True)
        out = directory / f"policy-{len(list(directory.glob('policy-*.pt'))) + 1:04d}.pt"
        parent = self.proposer.policy_path
        if parent is None:
            return False
        try:
            version = finetune(
                parent,
                self.store.samples(),
                out,
                min_samples=rl.fine_tune_min_samples,
                seed=rl.seed,
            )
        except SignaltwinError as e:
            logger.warning("fine-tuning skipped: %s", e)
            return False
        self.ledger.append(
            PolicyVersionRecord(
                sha256=version.sha256,
                parent_sha256=version.parent_sha256,
                path=str(version.path),
                samples=version.samples,
                created_at=version.created_at.isoformat(),
                method="reward-weighted regression on estimated measured deltas (rl.finetune)",
            ),
            dedupe_key=f"policy:{version.sha256}",
        )
        self.proposer.policy = TorchPolicy.load(version.path)
        self.proposer.policy_path = version.path
        self._measured_since_tune = 0
        logger.info("policy fine-tuned on %d samples: %s", version.samples, version.sha256[:12])
        return True


# --------------------------------------------------------------------------- helpers


def _last_update(data: Mapping[str, Any]) -> dict[str, Any]:
    """The calibration's state without its long history (the last update kept)."""
    out = {k: v for k, v in data.items() if k != "history"}
    history = data.get("history")
    if isinstance(history, list) and history:
        out["last_update"] = history[-1]
    return out


def _pp(fraction: float) -> float:
    """A difference of fractions in percentage points."""
    return round(100.0 * fraction, 3)
