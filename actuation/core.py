"""What a controller decides, without OPC UA: verify, stage, activate, abort, expire.

:class:`ControllerCore` is the emulated controller's brain, and the reference
for a vendor implementing the contract: every check a controller makes before it
accepts a plan, in order, each mapped to its :class:`~actuation.contract.PlanStatus`.
The OPC UA server (:mod:`actuation.emulated`) only translates method calls into
these functions. It drives the street through a :class:`SignalField`.
"""

from __future__ import annotations

import logging
import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from actuation._verify import EnvelopeRejected, TrustedKeys, open_envelope
from actuation.contract import PlanStatus
from actuation.documents import parse_strict
from actuation.persistence import ActiveRecord, ControllerMemory
from configs.digests import sha256_hex
from configs.errors import ActuationError, ConfigError
from configs.safety import check_intersection
from configs.timing import (
    BaseProgram,
    IntersectionTiming,
    NetworkRef,
    SafetyLimits,
    TimingConfiguration,
)

__all__ = [
    "ControllerCore",
    "ControllerProvisioning",
    "ControllerState",
    "SignalField",
    "PlanResult",
    "StagedPlan",
]

logger = logging.getLogger(__name__)

#: How long a staged plan waits for ActivatePlan (field seconds) by default.
DEFAULT_STAGED_TTL_S = 120.0
#: Furthest ahead of the field clock an activation may be scheduled (field seconds).
DEFAULT_MAX_ACTIVATION_LEAD_S = 600.0
#: Longest validity window (valid_until - valid_from) a controller accepts (seconds).
DEFAULT_MAX_VALIDITY_S = 86400.0
#: How far valid_from may lie ahead of the controller's wall clock (seconds).
DEFAULT_CLOCK_SKEW_S = 5.0


class _Memo:
    """Results of the deterministic, controller-independent steps, keyed by exact bytes.

    Controllers hosted in one process (a gateway, or the emulated fleet) receive
    the same envelope; opening it (signature check) depends only on its bytes
    and the trusted key set, and parsing the document only on the payload bytes.
    Both are remembered by sha256 of the exact bytes so that a district of
    hundreds of controllers in one process does not verify and parse the same
    document hundreds of times. Every controller-specific check (network,
    intersection, sequence, validity window, safety) still runs per controller.
    Refusals are not remembered (their outcome is recomputed each time).
    """

    def __init__(self, size: int = 8) -> None:
        self._size = size
        self._lock = threading.Lock()
        self._opened: OrderedDict[tuple[str, frozenset[str]], bytes] = OrderedDict()
        self._parsed: OrderedDict[str, tuple[TimingConfiguration, str]] = OrderedDict()

    def _put(self, table: OrderedDict[Any, Any], key: Any, value: Any) -> None:
        with self._lock:
            table[key] = value
            table.move_to_end(key)
            while len(table) > self._size:
                table.popitem(last=False)

    def _get(self, table: OrderedDict[Any, Any], key: Any) -> Any:
        with self._lock:
            return table.get(key)

    def open(self, data: bytes, trusted: TrustedKeys) -> bytes:
        key = (sha256_hex(data), trusted.keyids)
        payload: bytes | None = self._get(self._opened, key)
        if payload is None:
            payload = open_envelope(data, trusted)
            self._put(self._opened, key, payload)
        return payload

    def parse(self, payload: bytes) -> tuple[TimingConfiguration, str]:
        key = sha256_hex(payload)
        found: tuple[TimingConfiguration, str] | None = self._get(self._parsed, key)
        if found is None:
            config = parse_strict(payload)
            found = (config, config.digest())
            self._put(self._parsed, key, found)
        return found


_MEMO = _Memo()


@runtime_checkable
class SignalField(Protocol):
    """The street a controller drives (the field emulator, or a fake in tests).

    All times are field seconds (the emulator's simulation clock).
    """

    def field_time_s(self) -> float:
        """The current field time."""
        ...

    def apply(self, tls_id: str, timing: IntersectionTiming, at_field_time_s: float) -> None:
        """Switch ``tls_id`` to ``timing`` when the field clock reaches ``at_field_time_s``."""
        ...

    def detector_snapshot(self, tls_id: str) -> Mapping[str, tuple[int, float]]:
        """Detector id -> (cumulative vehicle count, occupancy % over the last field second)."""
        ...

    def measurements(self, tls_id: str) -> tuple[float, float, float]:
        """``(mean_wait_s, nox_mg, interval_end_s)`` of the last completed measurement interval."""
        ...

    def health(self, tls_id: str) -> str:
        """``"ok"`` or ``"fault: <reason>"``."""
        ...


@dataclass(frozen=True)
class ControllerProvisioning:
    """What an installer gives a controller: its intersection, program, limits, keys.

    Attributes:
        tls_id: The traffic light it drives.
        base: The engineer-approved base program (its phase states never change).
        limits: The safety limits for this intersection.
        network: The network id and .net.xml sha256 its plans must name.
        trusted_keys: The signing public keys it accepts.
        staged_ttl_s: Field seconds a staged plan waits for activation.
        max_activation_lead_s: ActivatePlan refuses a time further than this
            ahead of the field clock (ACTIVATION_TOO_FAR).
        max_validity_s: StagePlan refuses a document whose
            ``valid_until - valid_from`` exceeds this (VALIDITY_TOO_LONG).
        clock_skew_s: ``valid_from`` may lie this far ahead of the controller's
            wall clock (the daemon's and the controller's clocks differ a little).
        state_dir: Where the active plan (sequence, digest, timing) is kept
            across restarts; ``None`` keeps it in memory only (tests).
    """

    tls_id: str
    base: BaseProgram
    limits: SafetyLimits
    network: NetworkRef
    trusted_keys: TrustedKeys
    staged_ttl_s: float = DEFAULT_STAGED_TTL_S
    max_activation_lead_s: float = DEFAULT_MAX_ACTIVATION_LEAD_S
    max_validity_s: float = DEFAULT_MAX_VALIDITY_S
    clock_skew_s: float = DEFAULT_CLOCK_SKEW_S
    state_dir: Path | None = None


@dataclass(frozen=True)
class PlanResult:
    """A method's answer: a contract status code and a message."""

    status: PlanStatus
    message: str

    @property
    def ok(self) -> bool:
        """Whether the status is OK."""
        return self.status is PlanStatus.OK

    def to_dict(self) -> dict[str, object]:
        """Plain data for logs and the ledger."""
        return {
            "status": int(self.status),
            "status_name": self.status.name,
            "message": self.message,
        }


@dataclass(frozen=True)
class StagedPlan:
    """A verified plan waiting for activation."""

    sequence: int
    digest: str
    timing: IntersectionTiming
    expires_at_s: float


@dataclass
class ControllerState:
    """The controller's published state."""

    active_sequence: int = 0
    active_digest: str = ""
    active_from_s: float = 0.0
    active_timing: IntersectionTiming | None = None
    staged: StagedPlan | None = None
    last_result: PlanResult | None = field(default=None)


class ControllerCore:
    """A traffic controller's plan handling: stage (after every check), activate, abort."""

    def __init__(
        self,
        provisioning: ControllerProvisioning,
        field_port: SignalField,
        wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.provisioning = provisioning
        self.field = field_port
        self._wall_clock = wall_clock
        self.state = ControllerState(active_timing=IntersectionTiming.from_base(provisioning.base))
        # What the field will run from when, as handed to it by this process:
        # (field time, timing), ascending; a restarted field holds none of the
        # earlier entries, so this is not persisted.
        self._timeline: list[tuple[float, IntersectionTiming]] = []
        self._running_before_timeline: IntersectionTiming | None = None
        self._memory = (
            None
            if provisioning.state_dir is None
            else ControllerMemory(provisioning.state_dir, provisioning.tls_id)
        )
        remembered = None if self._memory is None else self._memory.load()
        if remembered is not None:
            self.state.active_sequence = remembered.sequence
            self.state.active_digest = remembered.digest
            self.state.active_from_s = remembered.from_s
            self.state.active_timing = remembered.timing
            logger.info(
                "%s: remembered active plan %d (%s)",
                self.tls_id,
                remembered.sequence,
                remembered.digest[:12],
            )
        self._running_before_timeline = self.state.active_timing

    @property
    def tls_id(self) -> str:
        """The traffic light this controller drives."""
        return self.provisioning.tls_id

    # ------------------------------------------------------------------ checks

    def check_envelope(self, data: bytes) -> tuple[PlanResult, StagedPlan | None]:
        """Run every acceptance check on ``data``; change nothing.

        Order: envelope form, payloadType, key, signature, schema (strict),
        intent, network, intersection, sequence, validity window (length, end,
        start with clock skew), safety invariants (against this controller's own
        base program, limits and the plan that runs last, pending included).
        """
        prov = self.provisioning
        try:
            payload = _MEMO.open(data, prov.trusted_keys)
        except EnvelopeRejected as e:
            return PlanResult(e.status, e.message), None
        try:
            config, digest = _MEMO.parse(payload)
        except ConfigError as e:
            return PlanResult(PlanStatus.SCHEMA_INVALID, str(e)), None
        if config.intent != "deploy":
            return (
                PlanResult(
                    PlanStatus.SHADOW_PLAN,
                    f"plan {config.sequence} was signed with intent {config.intent!r}; "
                    "only intent 'deploy' is deployable",
                ),
                None,
            )
        if config.network.id != prov.network.id or config.network.sha256 != prov.network.sha256:
            return (
                PlanResult(
                    PlanStatus.OTHER_NETWORK,
                    f"plan is for network {config.network.id!r} ({config.network.sha256[:12]}); "
                    f"this controller runs {prov.network.id!r} ({prov.network.sha256[:12]})",
                ),
                None,
            )
        timing = config.intersections.get(prov.tls_id)
        if timing is None:
            return (
                PlanResult(
                    PlanStatus.INTERSECTION_MISSING,
                    f"plan {config.sequence} has no timing for intersection {prov.tls_id!r}",
                ),
                None,
            )
        if config.sequence <= self.state.active_sequence:
            return (
                PlanResult(
                    PlanStatus.SEQUENCE_NOT_ABOVE_ACTIVE,
                    f"sequence {config.sequence} is not above the active "
                    f"{self.state.active_sequence}",
                ),
                None,
            )
        window_s = (config.valid_until - config.valid_from).total_seconds()
        if window_s > prov.max_validity_s:
            return (
                PlanResult(
                    PlanStatus.VALIDITY_TOO_LONG,
                    f"validity window is {window_s:.0f} s; this controller accepts at most "
                    f"{prov.max_validity_s:.0f} s",
                ),
                None,
            )
        now = self._wall_clock()
        if now >= config.valid_until:
            return (
                PlanResult(
                    PlanStatus.VALIDITY_PASSED,
                    f"valid_until {config.valid_until.isoformat()} has passed "
                    f"(now {now.isoformat()})",
                ),
                None,
            )
        if now + timedelta(seconds=prov.clock_skew_s) < config.valid_from:
            return (
                PlanResult(
                    PlanStatus.VALIDITY_NOT_YET,
                    f"valid_from {config.valid_from.isoformat()} is in the future "
                    f"(now {now.isoformat()}, tolerance {prov.clock_skew_s:g} s)",
                ),
                None,
            )
        violations = check_intersection(
            prov.tls_id, timing, prov.base, prov.limits, self.state.active_timing
        )
        if violations:
            names = sorted({v.invariant for v in violations})
            detail = "; ".join(str(v) for v in violations[:6])
            return (
                PlanResult(
                    PlanStatus.UNSAFE_TIMING, f"unsafe timing [{', '.join(names)}]: {detail}"
                ),
                None,
            )
        staged = StagedPlan(
            sequence=config.sequence,
            digest=digest,
            timing=timing,
            expires_at_s=self.field.field_time_s() + prov.staged_ttl_s,
        )
        return PlanResult(PlanStatus.OK, f"plan {config.sequence} verified and staged"), staged

    # ------------------------------------------------------------------ methods

    def stage(self, data: bytes) -> PlanResult:
        """StagePlan: verify ``data`` and keep it staged (replacing any staged plan)."""
        self.expire_staged()
        try:
            result, staged = self.check_envelope(data)
        except Exception:
            logger.exception("%s: StagePlan failed", self.tls_id)
            result, staged = (
                PlanResult(PlanStatus.INTERNAL_ERROR, "internal error while verifying"),
                None,
            )
        if staged is not None:
            self.state.staged = staged
        self.state.last_result = result
        logger.info("%s StagePlan: %s %s", self.tls_id, result.status.name, result.message)
        return result

    def activate(self, sequence: int, at_field_time_s: float) -> PlanResult:
        """ActivatePlan: hand the staged plan to the field, to take over at ``at_field_time_s``."""
        expiring = self.state.staged
        expired = self.expire_staged()
        staged = self.state.staged
        now = self.field.field_time_s()
        if expired and expiring is not None and expiring.sequence == sequence:
            result = PlanResult(
                PlanStatus.STAGED_EXPIRED,
                f"staged plan {sequence} expired at field time {expiring.expires_at_s:.1f} "
                f"(now {now:.1f}); stage it again",
            )
        elif staged is None:
            result = PlanResult(
                PlanStatus.NOTHING_STAGED, f"nothing staged to activate as {sequence}"
            )
        elif staged.sequence != sequence:
            result = PlanResult(
                PlanStatus.SEQUENCE_MISMATCH,
                f"staged plan is {staged.sequence}, not {sequence}",
            )
        elif not math.isfinite(at_field_time_s) or at_field_time_s <= now:
            result = PlanResult(
                PlanStatus.ACTIVATION_IN_PAST,
                f"activation time {at_field_time_s} is not after field time {now:.1f}",
            )
        elif at_field_time_s > now + self.provisioning.max_activation_lead_s:
            result = PlanResult(
                PlanStatus.ACTIVATION_TOO_FAR,
                f"activation time {at_field_time_s:.1f} is more than "
                f"{self.provisioning.max_activation_lead_s:g} s after field time {now:.1f}",
            )
        else:
            result = self._check_activation(staged, at_field_time_s, now) or self._activate(
                staged, at_field_time_s
            )
        self.state.last_result = result
        logger.info("%s ActivatePlan: %s %s", self.tls_id, result.status.name, result.message)
        return result

    def running_at(self, field_time_s: float) -> IntersectionTiming | None:
        """The plan the street runs just before ``field_time_s`` (as this controller scheduled)."""
        running = self._running_before_timeline
        for at_s, timing in self._timeline:
            if at_s < field_time_s:
                running = timing
        return running

    def _check_activation(
        self, staged: StagedPlan, at_field_time_s: float, now: float
    ) -> PlanResult | None:
        """Refusals that depend on the plan running at ``at_field_time_s`` (None: none)."""
        state = self.state
        if staged.sequence <= state.active_sequence:
            return PlanResult(
                PlanStatus.SEQUENCE_NOT_ABOVE_ACTIVE,
                f"sequence {staged.sequence} is not above the active {state.active_sequence}",
            )
        prov = self.provisioning
        # Checked at staging against the newest plan; here against the plan the
        # street will actually run when this one takes over (an earlier activation
        # time than a pending plan's follows the plan running before that one).
        candidates = (state.active_timing, self.running_at(at_field_time_s))
        for previous in {id(t): t for t in candidates}.values():
            violations = check_intersection(
                prov.tls_id, staged.timing, prov.base, prov.limits, previous
            )
            if violations:
                names = sorted({v.invariant for v in violations})
                detail = "; ".join(str(v) for v in violations[:6])
                return PlanResult(
                    PlanStatus.UNSAFE_TIMING,
                    f"unsafe against the plan running at {at_field_time_s:.1f} "
                    f"[{', '.join(names)}]: {detail}",
                )
        return None

    def _activate(self, staged: StagedPlan, at_field_time_s: float) -> PlanResult:
        """Persist, then hand the plan to the field; restore the record if the field refuses.

        The newest sequence always wins: if an older plan is still pending at a
        later field time, the newer plan is handed to the field again at that
        time (a field applies switches with equal times in call order), so the
        older one never overrides it.
        """
        state = self.state
        previous = ActiveRecord(
            state.active_sequence,
            state.active_digest,
            state.active_from_s,
            state.active_timing or IntersectionTiming.from_base(self.provisioning.base),
        )
        record = ActiveRecord(staged.sequence, staged.digest, at_field_time_s, staged.timing)
        later = [at_s for at_s, _ in self._timeline if at_s > at_field_time_s]
        try:
            if self._memory is not None:
                self._memory.save(record)
        except ActuationError as e:
            logger.error("%s: %s", self.tls_id, e)
            return PlanResult(PlanStatus.INTERNAL_ERROR, f"cannot persist the activation: {e}")
        try:
            self.field.apply(self.tls_id, staged.timing, at_field_time_s)
            for at_s in later:
                self.field.apply(self.tls_id, staged.timing, at_s)
        except Exception as e:
            logger.exception("%s: field refused plan %d", self.tls_id, staged.sequence)
            if self._memory is not None:
                try:
                    self._memory.save(previous)
                except ActuationError:
                    logger.exception("%s: cannot restore the state record", self.tls_id)
            return PlanResult(PlanStatus.INTERNAL_ERROR, f"field apply failed: {e}")
        if later:
            logger.warning(
                "%s: plan %d supersedes a plan pending at field time %.1f",
                self.tls_id,
                staged.sequence,
                later[-1],
            )
        self._record_schedule(at_field_time_s, staged.timing)
        state.active_sequence = staged.sequence
        state.active_digest = staged.digest
        state.active_from_s = at_field_time_s
        state.active_timing = staged.timing
        state.staged = None
        return PlanResult(
            PlanStatus.OK, f"plan {staged.sequence} active from field time {at_field_time_s:.1f}"
        )

    def _record_schedule(self, at_s: float, timing: IntersectionTiming) -> None:
        now = self.field.field_time_s()
        kept = [(t, x) for t, x in self._timeline if t < at_s]
        # Entries in force before the newest one in force are history: fold them.
        while kept and kept[0][0] <= now and (len(kept) == 1 or kept[1][0] <= now):
            self._running_before_timeline = kept.pop(0)[1]
        self._timeline = [*kept, (at_s, timing)]

    def abort(self, sequence: int) -> PlanResult:
        """AbortStaged: drop the staged plan (``sequence`` 0 drops whatever is staged)."""
        self.expire_staged()
        staged = self.state.staged
        if staged is None:
            result = PlanResult(PlanStatus.NOTHING_STAGED, "nothing staged")
        elif sequence not in (0, staged.sequence):
            result = PlanResult(
                PlanStatus.SEQUENCE_MISMATCH, f"staged plan is {staged.sequence}, not {sequence}"
            )
        else:
            self.state.staged = None
            result = PlanResult(PlanStatus.OK, f"staged plan {staged.sequence} dropped")
        self.state.last_result = result
        logger.info("%s AbortStaged: %s %s", self.tls_id, result.status.name, result.message)
        return result

    def expire_staged(self) -> bool:
        """Drop the staged plan if its time is up; return whether one was dropped."""
        staged = self.state.staged
        if staged is not None and self.field.field_time_s() > staged.expires_at_s:
            logger.warning("%s: staged plan %d expired unactivated", self.tls_id, staged.sequence)
            self.state.staged = None
            self.state.last_result = PlanResult(
                PlanStatus.STAGED_EXPIRED, f"staged plan {staged.sequence} expired"
            )
            return True
        return False
