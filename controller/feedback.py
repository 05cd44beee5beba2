"""Measured deltas: what a deployment did in the field, against what the twin predicted.

After each deployment the cycle hands the collector the observation the decision
rested on, the deployed plans and the activation time. The collector (the
daemon's feedback job) waits until the field has run the plan for
``schedule.measure_after_s`` field seconds, reads every controller's interval
measurements (mean wait and NOx on each intersection's approaches), and

* appends a ``measured_delta`` ledger record referencing the deployment
  (measured change, predicted change, their difference),
* stores the per-intersection samples in the RL feedback store, whose reward
  is the *measured* change,
* and, once enough measured samples exist, fine-tunes the policy from them and
  records the new policy version (with its digest) in the ledger.

Nothing here can deploy anything.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass

from configs.errors import SignaltwinError
from configs.settings import Settings
from configs.timing import TimingConfiguration
from controller.contracts import (
    FeedbackReport,
    FeedbackSink,
    MeasurementSource,
    Observation,
    PolicyHolder,
)
from controller.ledger import Ledger, MeasuredDeltaRecord, PolicyVersionRecord
from rl.measured import measure_delta

__all__ = ["FeedbackCollector", "PendingMeasurement"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PendingMeasurement:
    """A deployment waiting for its field outcome."""

    ledger_index: int
    deployment_id: str
    sequence: int
    activate_at_field_time_s: float
    before: Mapping[str, tuple[float, float]]
    predicted_wait_change: float
    predicted_nox_change: float


class FeedbackCollector:
    """Collects measured deltas after deployments and fine-tunes the policy."""

    def __init__(
        self,
        settings: Settings,
        ledger: Ledger,
        read_measurements: MeasurementSource,
        proposer: PolicyHolder,
        store: FeedbackSink | None = None,
    ) -> None:
        self.settings = settings
        self.ledger = ledger
        self.read_measurements = read_measurements
        self.proposer = proposer
        self.store = store
        self._pending: list[PendingMeasurement] = []
        self._lock = threading.Lock()
        self._measured_since_tune = 0

    # ---------------------------------------------------------------- from the cycle

    def deployed(
        self,
        ledger_index: int,
        config: TimingConfiguration,
        observation: Observation,
        activate_at_field_time_s: float | None,
    ) -> None:
        """Remember a deployment until its outcome can be measured."""
        deployment_id = config.digest()
        pending = PendingMeasurement(
            ledger_index=ledger_index,
            deployment_id=deployment_id,
            sequence=config.sequence,
            activate_at_field_time_s=activate_at_field_time_s or observation.field_time_s,
            before=dict(observation.measurements),
            predicted_wait_change=config.predicted.wait_change,
            predicted_nox_change=config.predicted.nox_change,
        )
        with self._lock:
            self._pending.append(pending)
        if self.store is not None:
            observations = self.proposer.last_observations or {}
            policy = self.proposer.policy
            try:
                self.store.record_deployment(
                    deployment_id,
                    observations,
                    config.intersections,
                    policy_sha256=None if policy is None else str(policy.sha256),
                    predicted_wait_change=config.predicted.wait_change,
                    predicted_nox_change=config.predicted.nox_change,
                )
            except SignaltwinError as e:
                logger.warning("feedback store: could not record deployment: %s", e)

    # ---------------------------------------------------------------- the feedback job

    def collect(self) -> FeedbackReport:
        """Measure every deployment whose measuring window has passed; maybe fine-tune."""
        with self._lock:
            pending = list(self._pending)
        if not pending:
            return FeedbackReport()
        field_time, after = self.read_measurements()
        wait_after = self.settings.schedule.measure_after_s
        errors: list[float] = []
        measured = 0
        for item in pending:
            if field_time < item.activate_at_field_time_s + wait_after:
                continue
            try:
                errors.append(self._measure(item, after, field_time))
                measured += 1
            except SignaltwinError as e:
                logger.warning("measured delta of plan %d not recorded: %s", item.sequence, e)
            with self._lock:
                self._pending = [p for p in self._pending if p is not item]
        fine_tuned = self._maybe_fine_tune() if measured else False
        return FeedbackReport(
            measured=measured, prediction_error_ratios=tuple(errors), fine_tuned=fine_tuned
        )

    def _measure(
        self,
        item: PendingMeasurement,
        after: Mapping[str, tuple[float, float]],
        field_time: float,
    ) -> float:
        change = measure_delta(item.before, after)
        if change is None:
            raise SignaltwinError("no intersection was measured both before and after")
        wait_change, nox_change = change.wait_change, change.nox_change
        error = wait_change - item.predicted_wait_change
        ratio = abs(error) / max(abs(item.predicted_wait_change), 1e-6)
        self.ledger.append(
            MeasuredDeltaRecord(
                deployment=item.ledger_index,
                sequence=item.sequence,
                measured={
                    "wait_change": round(wait_change, 6),
                    "nox_change": round(nox_change, 6),
                    "wait_before_s": round(change.wait_before_s, 3),
                    "wait_after_s": round(change.wait_after_s, 3),
                    "nox_before_mg": round(change.nox_before_mg, 3),
                    "nox_after_mg": round(change.nox_after_mg, 3),
                    "intersections": change.intersections,
                    "field_time_s": field_time,
                },
                predicted={
                    "wait_change": item.predicted_wait_change,
                    "nox_change": item.predicted_nox_change,
                },
                wait_error=round(error, 6),
            ),
            dedupe_key=f"measured-{item.sequence}",
        )
        logger.info(
            "plan %d measured: wait %+.1f%% (predicted %+.1f%%), NOx %+.2f%%",
            item.sequence,
            100 * wait_change,
            100 * item.predicted_wait_change,
            100 * nox_change,
        )
        if self.store is not None:
            try:
                self.store.record_measurement(item.deployment_id, item.before, after)
                self._measured_since_tune += 1
            except SignaltwinError as e:
                logger.warning("feedback store: %s", e)
        return ratio

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
                method="reward-weighted regression on measured deltas (rl.finetune)",
            ),
            dedupe_key=f"policy:{version.sha256}",
        )
        self.proposer.policy = TorchPolicy.load(version.path)
        self.proposer.policy_path = version.path
        self._measured_since_tune = 0
        logger.info("policy fine-tuned on %d samples: %s", version.samples, version.sha256[:12])
        return True
