"""The plain data of the daemon's side of the contract, and the :class:`Actuator` seam.

A controller to talk to (:class:`ControllerTarget`), how to authenticate
(:class:`ClientCredentials`), what one read returned (:class:`ControllerSnapshot`)
and what one push did (:class:`PushReport` with a :class:`ControllerPushResult`
per controller).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

from actuation.contract import PlanStatus
from actuation.security import CLIENT_APPLICATION_URI, load_certificate_der
from configs.outcomes import PushOutcome

__all__ = [
    "Actuator",
    "ClientCredentials",
    "ControllerPushResult",
    "ControllerSnapshot",
    "ControllerTarget",
    "PushReport",
    "SecurityPolicyName",
    "status_name",
]

SecurityPolicyName = Literal["Basic256Sha256", "Aes256Sha256RsaPss"]


@dataclass(frozen=True)
class ControllerTarget:
    """One controller: its intersection, URL and pinned server certificate (DER)."""

    tls_id: str
    url: str
    server_certificate_der: bytes

    @classmethod
    def from_files(cls, tls_id: str, url: str, server_certificate: Path) -> ControllerTarget:
        """Build from a certificate file (DER or PEM)."""
        return cls(tls_id, url, load_certificate_der(server_certificate))


@dataclass(frozen=True)
class ClientCredentials:
    """How the daemon authenticates: client certificate and key, user and password."""

    certificate: Path
    private_key: Path
    user: str
    password: str = field(repr=False)
    application_uri: str = CLIENT_APPLICATION_URI
    policy: SecurityPolicyName = "Basic256Sha256"


@dataclass(frozen=True)
class ControllerSnapshot:
    """What one controller reported in one read (or why it could not be read)."""

    tls_id: str
    reachable: bool
    field_time_s: float = 0.0
    health: str = ""
    active_sequence: int = 0
    active_digest: str = ""
    active_from_s: float = 0.0
    staged_sequence: int = 0
    staged_digest: str = ""
    detectors: dict[str, tuple[int, float]] = field(default_factory=dict)
    mean_wait_s: float = 0.0
    nox_mg: float = 0.0
    interval_end_s: float = 0.0
    #: halting vehicle-seconds on the approaches since the controller started
    #: (``Measurements.HaltingTotal``); None when the controller does not report it
    halting_total_veh_s: float | None = None
    #: NOx on the approaches since the controller started, mg (``Measurements.NOxTotal``)
    nox_total_mg: float | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain data for the ledger and logs."""
        return {
            "tls_id": self.tls_id,
            "reachable": self.reachable,
            "field_time_s": self.field_time_s,
            "health": self.health,
            "active_sequence": self.active_sequence,
            "active_digest": self.active_digest,
            "active_from_s": self.active_from_s,
            "staged_sequence": self.staged_sequence,
            "staged_digest": self.staged_digest,
            "detectors": {k: [v[0], v[1]] for k, v in sorted(self.detectors.items())},
            "mean_wait_s": self.mean_wait_s,
            "nox_mg": self.nox_mg,
            "interval_end_s": self.interval_end_s,
            "halting_total_veh_s": self.halting_total_veh_s,
            "nox_total_mg": self.nox_total_mg,
            "error": self.error,
        }


@dataclass(frozen=True)
class ControllerPushResult:
    """What happened on one controller during a push (a row of the ledger record).

    Frozen: the pool builds each step's row with :func:`dataclasses.replace`
    (or :meth:`note`), so a report handed on can no longer change.
    """

    tls_id: str
    stage_status: int | None = None
    stage_message: str = ""
    activate_status: int | None = None
    activate_message: str = ""
    abort_status: int | None = None
    abort_message: str = ""
    readback_sequence: int | None = None
    readback_digest: str | None = None
    error: str | None = None

    def note(self, error: str) -> ControllerPushResult:
        """This row with ``error`` added to its errors (the row itself is unchanged)."""
        return replace(self, error=error if not self.error else f"{self.error}; {error}")

    @property
    def staged(self) -> bool:
        """Whether StagePlan answered OK."""
        return self.stage_status == PlanStatus.OK

    @property
    def activated(self) -> bool:
        """Whether ActivatePlan answered OK."""
        return self.activate_status == PlanStatus.OK

    @property
    def ok(self) -> bool:
        """Whether this controller staged, activated and read back the plan without error.

        Compare :meth:`running` for the stricter check against an expected
        sequence and digest (what :meth:`PushReport.running` uses).
        """
        return self.staged and self.activated and self.error is None

    def running(self, sequence: int, digest: str) -> bool:
        """Whether the read-back shows this controller running plan ``sequence``/``digest``."""
        return (
            self.activated and self.readback_sequence == sequence and self.readback_digest == digest
        )

    @property
    def error_text(self) -> str | None:
        """One line saying what went wrong on this controller, or ``None`` if nothing did.

        The transport error when there was one, else the first refusal (stage,
        activate, abort) as ``"<phase>: <STATUS_NAME> <message>"``.
        """
        if self.error:
            return self.error
        for phase, status, message in (
            ("stage", self.stage_status, self.stage_message),
            ("activate", self.activate_status, self.activate_message),
            ("abort", self.abort_status, self.abort_message),
        ):
            if status is not None and status != PlanStatus.OK:
                return f"{phase}: {status_name(status)} {message}".rstrip()
        return None

    def to_dict(self) -> dict[str, Any]:
        """Plain data for the ledger."""
        name = status_name

        return {
            "tls_id": self.tls_id,
            "stage": {
                "status": self.stage_status,
                "name": name(self.stage_status),
                "message": self.stage_message,
            },
            "activate": {
                "status": self.activate_status,
                "name": name(self.activate_status),
                "message": self.activate_message,
            },
            "abort": {
                "status": self.abort_status,
                "name": name(self.abort_status),
                "message": self.abort_message,
            },
            "readback": {"sequence": self.readback_sequence, "digest": self.readback_digest},
            "error": self.error,
        }


@dataclass(frozen=True)
class PushReport:
    """The result of one push: outcome, activation time, per-controller rows, latencies.

    ``outcome`` (a :class:`configs.outcomes.PushOutcome`) is ``ACTIVATED`` when
    every controller staged, activated and read back the plan; ``ABORTED`` when
    staging failed somewhere and the plan was dropped everywhere (nothing
    changed in the field); ``PARTIAL`` when every controller staged but
    activation or read-back failed on some (their rows say which).

    Consumers read :attr:`ok`, :meth:`running` and :meth:`errors` (or a row's
    :attr:`ControllerPushResult.ok` / :attr:`ControllerPushResult.error_text`);
    :meth:`to_dict` is the ledger's serialisation only.
    """

    sequence: int
    digest: str
    outcome: PushOutcome
    activate_at_field_time_s: float | None
    controllers: list[ControllerPushResult]
    stage_s: float = 0.0
    activate_s: float = 0.0
    readback_s: float = 0.0
    total_s: float = 0.0
    reason: str = ""

    @property
    def ok(self) -> bool:
        """Whether the plan runs everywhere (``outcome`` is ``ACTIVATED``)."""
        return self.outcome is PushOutcome.ACTIVATED

    def running(self) -> set[str]:
        """The intersection ids whose read-back shows this report's sequence and digest."""
        return {r.tls_id for r in self.controllers if r.running(self.sequence, self.digest)}

    def errors(self) -> dict[str, str]:
        """Per intersection id, a one-line error, for every controller where something failed.

        A controller that staged, activated and read back a different plan (no
        call failed) is reported as ``"read back <sequence>/<digest prefix>"``.
        """
        out: dict[str, str] = {}
        for r in self.controllers:
            text = r.error_text
            if (
                text is None
                and self.outcome is not PushOutcome.ABORTED
                and not r.running(self.sequence, self.digest)
            ):
                text = f"read back {r.readback_sequence}/{(r.readback_digest or '')[:12]}"
            if text is not None:
                out[r.tls_id] = text
        return out

    def result(self, tls_id: str) -> ControllerPushResult:
        """The row of one controller.

        Raises:
            KeyError: ``tls_id`` was not part of this push.
        """
        for r in self.controllers:
            if r.tls_id == tls_id:
                return r
        raise KeyError(tls_id)

    def to_dict(self) -> dict[str, Any]:
        """Plain data for the ledger."""
        return {
            "sequence": self.sequence,
            "digest": self.digest,
            "outcome": str(self.outcome),
            "reason": self.reason,
            "activate_at_field_time_s": self.activate_at_field_time_s,
            "latency_s": {
                "stage": self.stage_s,
                "activate": self.activate_s,
                "readback": self.readback_s,
                "total": self.total_s,
            },
            "controllers": [r.to_dict() for r in sorted(self.controllers, key=lambda r: r.tls_id)],
        }


def status_name(code: int | None) -> str | None:
    """The :class:`PlanStatus` name of ``code`` (``UNKNOWN_<code>`` if not in the table)."""
    if code is None:
        return None
    try:
        return PlanStatus(code).name
    except ValueError:
        return f"UNKNOWN_{code}"


@runtime_checkable
class Actuator(Protocol):
    """The daemon's view of its controllers (real OPC UA, or a fake in tests)."""

    def read_all(self) -> dict[str, ControllerSnapshot]:
        """Every controller's snapshot, by intersection id."""
        ...

    def push(
        self,
        envelope: bytes,
        sequence: int,
        *,
        alignment_s: float | None = None,
        lead_s: float | None = None,
    ) -> PushReport:
        """Stage everywhere, activate together, read back (see :meth:`ControllerPool.push`)."""
        ...

    def close(self) -> None:
        """Close every session."""
        ...
