"""Start-up reconciliation after a crash in the middle of a push.

The cycle appends its ``cycle`` record (with the signed envelope, outcome
``"pushing"``) *before* it pushes, and a ``deployment`` record after. A daemon
killed between the two (``kill -9``, power loss, OOM) leaves a ``pushing``
record with no deployment: the plan may be staged on some controllers,
activated on some, or nowhere. :func:`reconcile` runs once at start-up (see
:func:`controller.wiring.build_runner`) and settles it *without ever pushing
again*:

1. read every controller's active and staged plan;
2. call ``AbortStaged(sequence)`` wherever the interrupted plan is staged but
   not active (it never runs there);
3. append the missing ``deployment`` record with result
   ``recovered-activated`` (every controller runs it), ``recovered-partial``
   (some do) or ``recovered-aborted`` (none does), the read-back rows and
   what was aborted, and sign a checkpoint;
4. report the highest sequence any controller knows, so the next plan's
   sequence is above it (a sequence is never reused).

The same read-back-and-abort (:func:`settle`) also decides the outcome of a push
whose call itself failed in a running daemon (the actuator's thread timed out),
so its ``deployment`` record says what the field actually runs.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from configs.errors import ActuationError, SignaltwinError
from configs.outcomes import PushOutcome
from configs.settings import Settings
from controller.contracts import DeployOutcome
from controller.ledger import DeploymentRecord, Ledger, Record
from hsm.base import Signer

__all__ = [
    "RECOVERED_RESULTS",
    "RecoveryReport",
    "ResumableRunner",
    "Settlement",
    "deploy_outcome",
    "find_interrupted",
    "highest_controller_sequence",
    "reconcile",
    "recover",
    "settle",
]

logger = logging.getLogger(__name__)

#: ``deployment.result`` values written by reconciliation.
RECOVERED_RESULTS = ("recovered-activated", "recovered-partial", "recovered-aborted")

#: AbortStaged status codes (docs/controller-contract.md).
_OK = 0


class SnapshotLike(Protocol):
    """What reconciliation reads of a controller (``actuation.ControllerSnapshot``)."""

    tls_id: str
    reachable: bool
    active_sequence: int
    active_digest: str
    staged_sequence: int
    staged_digest: str
    error: str | None


class ResumableRunner(Protocol):
    """What :func:`recover` needs of a freshly built runner (``controller.cycle.CycleRunner``)."""

    ledger: Ledger
    signer: Signer
    sequence: int
    settings: Settings

    def resume_from_ledger(self, min_sequence: int = 0) -> None:
        """Re-read the current plans and the last sequence from the ledger."""
        ...


class AbortingActuator(Protocol):
    """The controllers as reconciliation needs them (``actuation.ThreadedActuator``)."""

    def read_all(self) -> Mapping[str, Any]:
        """Every controller's snapshot, by intersection id."""
        ...

    def abort_staged(
        self, sequence: int, only: Iterable[str] | None = None
    ) -> Mapping[str, tuple[int, str] | str]:
        """AbortStaged on every controller in ``only`` (status, message) or the error."""
        ...


@dataclass(frozen=True)
class Settlement:
    """Where one plan stands on the controllers after read-back (and aborts)."""

    sequence: int
    #: activated (every controller the plan names runs it), aborted (every
    #: one was read and none runs it) or partial (some run it, or some could
    #: not be read)
    outcome: PushOutcome
    #: one row per controller (plain data for the ledger)
    rows: tuple[dict[str, Any], ...]
    #: the highest active or staged sequence any controller reported
    highest_sequence: int

    @property
    def unreachable(self) -> tuple[str, ...]:
        """Controllers that could not be read."""
        return tuple(r["tls_id"] for r in self.rows if not r["reachable"])

    @property
    def running(self) -> frozenset[str]:
        """Controllers that run the plan (read back as active)."""
        return frozenset(r["tls_id"] for r in self.rows if r["state"] == "activated")

    @property
    def errors(self) -> dict[str, str]:
        """Controller -> the error met reading or aborting there."""
        return {r["tls_id"]: str(r["error"]) for r in self.rows if r.get("error")}


def deploy_outcome(
    settled: Settlement, digest: str, message: str, *, settled_after_failure: bool = False
) -> DeployOutcome:
    """The typed push outcome of a settled plan (a failed push's, or a crash's at start-up).

    Args:
        settled: the read-back (and aborts) of the plan.
        digest: the plan's configuration digest.
        message: why it had to be settled, and what was found.
        settled_after_failure: the push call of a running daemon failed (not a crash).
    """
    record: dict[str, Any] = {
        "sequence": settled.sequence,
        "digest": digest,
        "outcome": str(settled.outcome),
        "reason": message,
        "controllers": [dict(r) for r in settled.rows],
    }
    if settled_after_failure:
        record["settled"] = True
    return DeployOutcome(
        outcome=settled.outcome,
        running=settled.running,
        errors=settled.errors,
        message=message,
        push_record=record,
    )


@dataclass
class RecoveryReport:
    """What :func:`reconcile` found and did."""

    #: whether an interrupted push was found
    needed: bool = False
    #: the interrupted plan's sequence
    sequence: int | None = None
    #: the ``deployment.result`` written (one of :data:`RECOVERED_RESULTS`)
    result: str | None = None
    #: the index of the ``cycle`` record left at "pushing"
    cycle_index: int | None = None
    #: the index of the ``deployment`` record appended
    deployment_index: int | None = None
    #: the highest sequence any controller reported (the next plan goes above it)
    highest_sequence: int = 0
    #: the per-controller rows
    rows: list[dict[str, Any]] = field(default_factory=list)
    message: str = ""
    #: why a controller-reported sequence was not adopted (None when it was)
    anomaly: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain data (logs, status)."""
        return {
            "needed": self.needed,
            "sequence": self.sequence,
            "result": self.result,
            "cycle_index": self.cycle_index,
            "deployment_index": self.deployment_index,
            "highest_sequence": self.highest_sequence,
            "message": self.message,
            "anomaly": self.anomaly,
        }


def find_interrupted(ledger: Ledger) -> Record | None:
    """The last ``cycle`` record if it is at "pushing" with no ``deployment`` record for it."""
    last = ledger.latest("cycle")
    if last is None or last.body.get("outcome") != "pushing":
        return None
    config = last.body.get("configuration")
    sequence = config.get("sequence") if isinstance(config, Mapping) else None
    for deployment in reversed(ledger.find("deployment")):
        if deployment.index < last.index:
            break
        if deployment.body.get("cycle_index") == last.index or (
            sequence is not None and deployment.body.get("sequence") == sequence
        ):
            return None
    return last


def highest_controller_sequence(snapshots: Mapping[str, Any]) -> int:
    """The highest active or staged sequence reported by any reachable controller."""
    found = [0]
    for snap in snapshots.values():
        if snap.reachable:
            found.append(int(snap.active_sequence))
            found.append(int(snap.staged_sequence))
    return max(found)


def settle(
    actuator: AbortingActuator,
    sequence: int,
    digest: str,
    intersections: Iterable[str] | None = None,
) -> Settlement:
    """Read every controller, abort plan ``sequence`` where it is only staged, classify.

    Never stages or activates anything. A controller that runs the plan
    (``ActiveSequence == sequence``) keeps it: activation cannot be undone by
    AbortStaged, and the next cycle pushes a higher sequence to all.

    Args:
        actuator: the controllers.
        sequence: the interrupted plan's sequence.
        digest: its configuration digest (sha256 of the canonical document),
            compared with each controller's ``ActiveDigest``/``StagedDigest``.
        intersections: the controllers the plan names (default: all read).

    Raises:
        ActuationError: the controllers could not be read at all.
    """
    snapshots = dict(actuator.read_all())
    names = sorted(snapshots if intersections is None else set(intersections) & set(snapshots))
    rows: dict[str, dict[str, Any]] = {}
    to_abort: list[str] = []
    for tls in names:
        snap = snapshots[tls]
        row: dict[str, Any] = {
            "tls_id": tls,
            "reachable": bool(snap.reachable),
            "active_sequence": int(snap.active_sequence),
            "active_digest": str(snap.active_digest),
            "staged_sequence": int(snap.staged_sequence),
            "staged_digest": str(snap.staged_digest),
            "readback": {"sequence": int(snap.active_sequence), "digest": str(snap.active_digest)},
            "abort": None,
            "error": snap.error,
        }
        if not snap.reachable:
            row["state"] = "unreachable"
        elif snap.active_sequence == sequence:
            row["state"] = "activated"
            if digest and snap.active_digest and snap.active_digest != digest:
                row["state"] = "activated-other-digest"
        elif snap.staged_sequence == sequence:
            row["state"] = "staged"
            to_abort.append(tls)
        else:
            row["state"] = "not-staged"
        rows[tls] = row
    if to_abort:
        answers = actuator.abort_staged(sequence, to_abort)
        for tls in to_abort:
            answer = answers.get(tls, "no answer")
            row = rows[tls]
            if isinstance(answer, str):
                row["abort"] = {"status": None, "message": answer}
                row["state"] = "staged-abort-failed"
                logger.error(
                    "recovery: AbortStaged(%d) on %s failed: %s (retried when the session "
                    "is back; the staged plan also expires unactivated)",
                    sequence,
                    tls,
                    answer,
                )
            else:
                status, message = answer
                row["abort"] = {"status": int(status), "message": message}
                row["state"] = "aborted" if status == _OK else "abort-refused"
    running = [r for r in rows.values() if r["state"] == "activated"]
    unknown = [r for r in rows.values() if r["state"] == "unreachable"]
    if running and len(running) == len(rows):
        outcome = PushOutcome.ACTIVATED
    elif running or unknown:
        # an unreachable controller may run it: never claim "runs nowhere" then
        outcome = PushOutcome.PARTIAL
    else:
        outcome = PushOutcome.ABORTED
    return Settlement(
        sequence=sequence,
        outcome=outcome,
        rows=tuple(rows[t] for t in names),
        highest_sequence=highest_controller_sequence(snapshots),
    )


def reconcile(ledger: Ledger, actuator: AbortingActuator, signer: Signer) -> RecoveryReport:
    """Settle a push interrupted by a crash; run once at start-up, before the first cycle.

    If the last ``cycle`` record is at "pushing" without a ``deployment``
    record, reads every controller, aborts the plan wherever it is only
    staged, and appends the missing ``deployment`` record (result
    ``recovered-activated`` / ``recovered-partial`` / ``recovered-aborted``,
    with the read-back rows), then signs a checkpoint. Never re-pushes.

    In every case the report carries the highest sequence any controller
    reports, so the caller keeps the next sequence above it.

    Raises:
        LedgerError: the deployment record could not be written (the daemon
            must not start: the ledger would not say what the field runs).
        ActuationError: no controller could be read while a push is unsettled.
    """
    report = RecoveryReport()
    interrupted = find_interrupted(ledger)
    if interrupted is None:
        try:
            report.highest_sequence = highest_controller_sequence(actuator.read_all())
        except SignaltwinError as e:
            logger.warning("recovery: could not read the controllers' sequences: %s", e)
        return report
    body = interrupted.body
    config = body.get("configuration")
    if not isinstance(config, Mapping) or "sequence" not in config:
        report.message = f"cycle record {interrupted.index} is at 'pushing' without a configuration"
        logger.error("recovery: %s; nothing to settle", report.message)
        return report
    sequence = int(config["sequence"])
    digest = str(body.get("configuration_sha256", ""))
    intersections = config.get("intersections")
    names = list(intersections) if isinstance(intersections, Mapping) else None
    report.needed = True
    report.sequence = sequence
    report.cycle_index = interrupted.index
    logger.warning(
        "recovery: cycle record %d (plan %d) was interrupted during its push; reading back "
        "every controller",
        interrupted.index,
        sequence,
    )
    settled = settle(actuator, sequence, digest, names)
    if settled.rows and len(settled.unreachable) == len(settled.rows):
        raise ActuationError(
            f"plan {sequence} was interrupted mid-push and no controller can be read to settle "
            "it; start the daemon again once the controllers are reachable (nothing is "
            "pushed until then)"
        )
    result = f"recovered-{settled.outcome.value}"
    report.result = result
    report.rows = [dict(r) for r in settled.rows]
    report.highest_sequence = max(settled.highest_sequence, sequence)
    counts: dict[str, int] = {}
    for row in settled.rows:
        counts[row["state"]] = counts.get(row["state"], 0) + 1
    summary = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
    report.message = (
        f"plan {sequence} was interrupted mid-push (daemon stopped); read back at start-up: "
        f"{summary}; never re-pushed"
    )
    pushed = deploy_outcome(settled, digest, report.message)
    ref = ledger.append(
        DeploymentRecord(
            sequence=sequence,
            config_digest=digest,
            envelope=dict(body.get("envelope") or {}),
            configuration=dict(config),
            cycle_index=interrupted.index,
            result=result,
            recovered=True,
            push={
                "ok": pushed.ok,
                "message": pushed.message,
                "results": dict(pushed.push_record),
            },
        ),
        dedupe_key=f"deployment-{sequence}",
    )
    report.deployment_index = ref.index
    log = logger.warning if settled.outcome != PushOutcome.ACTIVATED else logger.info
    log("recovery: deployment record %d: %s (%s)", ref.index, result, summary)
    try:
        ledger.checkpoint(signer)
    except SignaltwinError as e:
        logger.error("recovery: could not sign a ledger checkpoint: %s", e)
    return report


def recover(
    runner: ResumableRunner, actuator: AbortingActuator, *, settle_interrupted: bool
) -> RecoveryReport:
    """Start-up step of the daemon: :func:`reconcile`, then resume the runner from the ledger.

    The runner's current plans are re-read (a ``recovered-activated`` or
    ``recovered-partial`` deployment counts like a deployed or partial one)
    and its next sequence is put above every sequence in the ledger and every
    sequence any controller reports.

    Args:
        runner: the freshly built runner.
        actuator: its controllers.
        settle_interrupted: False for a runner built by a reload (the previous
            runner of this process may be pushing right now): only the
            sequence floor is taken from the controllers.
    """
    if settle_interrupted:
        report = reconcile(runner.ledger, actuator, runner.signer)
    else:
        report = RecoveryReport()
        try:
            report.highest_sequence = highest_controller_sequence(actuator.read_all())
        except SignaltwinError as e:
            logger.warning("recovery: could not read the controllers' sequences: %s", e)
    runner.resume_from_ledger()
    ledger_sequence = runner.sequence
    margin = runner.settings.controllers.max_sequence_margin
    if report.highest_sequence > ledger_sequence + margin:
        # one faulty controller must not push every later sequence out of range
        report.anomaly = (
            f"a controller reports plan sequence {report.highest_sequence}, more than "
            f"{margin} above the ledger's highest ({ledger_sequence}); not adopted (check that "
            "controller; raise [controllers] max_sequence_margin only if the ledger is behind)"
        )
        logger.error("recovery: %s", report.anomaly)
    else:
        runner.resume_from_ledger(report.highest_sequence)
    if report.needed:
        logger.warning("recovery: %s", report.message)
    logger.info("recovery: next plan sequence %d", runner.sequence + 1)
    return report
