"""The daemon's side of the contract: secure sessions, reads, and the two-phase push.

:class:`ControllerPool` keeps one persistent SignAndEncrypt session per
controller (pinned server certificate, client certificate, user and password),
reconnecting with exponential backoff, and offers:

* :meth:`ControllerPool.read_all` - every controller's detectors, measurements,
  plan state and health, read concurrently (one Read request each);
* :meth:`ControllerPool.push` - stage the signed envelope on every controller
  concurrently; only if every one of them staged it, activate all at one common
  future field time aligned to the cycle; read back the active sequence and
  digest. If any stage is refused, times out or loses its session, the plan is
  aborted everywhere, so no controller runs a plan the others did not stage.

:class:`ThreadedActuator` wraps a pool in an event-loop thread for synchronous
callers (the daemon runs its cycle in a worker thread); it satisfies the
:class:`Actuator` protocol.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar, runtime_checkable

from asyncua import ua as _ua
from asyncua.client.client import Client
from asyncua.crypto import security_policies

from actuation import contract as c
from actuation.contract import PlanStatus
from actuation.security import CLIENT_APPLICATION_URI, load_certificate_der
from configs.errors import ActuationError, ConfigError
from configs.outcomes import PushOutcome
from configs.settings import ControllersSettings
from configs.timing import TimingConfiguration
from hsm.envelope import Envelope

# asyncua's ``ua`` package re-exports its names without ``__all__``, which strict
# mypy rejects, and types NodeId's arguments with its own aliases: use it untyped.
ua: Any = _ua

__all__ = [
    "Actuator",
    "ClientCredentials",
    "ControllerTarget",
    "ControllerPool",
    "ControllerPushResult",
    "ControllerSnapshot",
    "PushReport",
    "SecurityPolicyName",
    "ThreadedActuator",
    "aligned_activation_time",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")

SecurityPolicyName = Literal["Basic256Sha256", "Aes256Sha256RsaPss"]
_POLICIES: dict[str, type[security_policies.SecurityPolicy]] = {
    "Basic256Sha256": security_policies.SecurityPolicyBasic256Sha256,
    "Aes256Sha256RsaPss": security_policies.SecurityPolicyAes256Sha256RsaPss,
}


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
            "error": self.error,
        }


@dataclass
class ControllerPushResult:
    """What happened on one controller during a push (a row of the ledger record)."""

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

    def note(self, error: str) -> None:
        """Add ``error`` to this row's errors."""
        self.error = error if not self.error else f"{self.error}; {error}"

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
                return f"{phase}: {_status_name(status)} {message}".rstrip()
        return None

    def to_dict(self) -> dict[str, Any]:
        """Plain data for the ledger."""
        name = _status_name

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


def _status_name(code: int | None) -> str | None:
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


def aligned_activation_time(now_s: float, lead_s: float, alignment_s: float | None) -> float:
    """The first multiple of ``alignment_s`` at or after ``now_s + lead_s``.

    Without an alignment, ``now_s + lead_s`` rounded up to a whole second.
    """
    earliest = now_s + lead_s
    if alignment_s is None or alignment_s <= 0:
        return float(math.ceil(earliest))
    return math.ceil(earliest / alignment_s) * alignment_s


# --------------------------------------------------------------------------- one link


class _Link:
    """One controller's persistent session, reconnected with backoff."""

    def __init__(
        self,
        endpoint: ControllerTarget,
        credentials: ClientCredentials,
        connect_timeout_s: float,
        call_timeout_s: float,
        watchdog_s: float,
        backoff_max_s: float,
        connect_gate: asyncio.Semaphore | None = None,
    ) -> None:
        self.endpoint = endpoint
        self._gate = connect_gate
        self._credentials = credentials
        self._connect_timeout_s = connect_timeout_s
        self._call_timeout_s = call_timeout_s
        self._watchdog_s = watchdog_s
        self._backoff_max_s = backoff_max_s
        self.client: Client | None = None
        self.ns = 0
        self.connected = asyncio.Event()
        self._lost = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self.last_error: str | None = None
        #: A plan to abort as soon as the session is back (its abort failed).
        self.pending_abort: int | None = None

    @property
    def tls_id(self) -> str:
        return self.endpoint.tls_id

    def node(self, node_id: str) -> ua.NodeId:
        return ua.NodeId(node_id, self.ns)

    def start(self) -> None:
        self._task = asyncio.create_task(self._supervise(), name=f"link-{self.tls_id}")

    async def close(self) -> None:
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        await self._drop()

    async def _drop(self) -> None:
        self.connected.clear()
        client, self.client = self.client, None
        if client is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.disconnect(), timeout=2.0)

    def mark_lost(self, reason: str) -> None:
        if self.connected.is_set():
            logger.warning("controller %s: session lost (%s)", self.tls_id, reason)
        self.last_error = reason
        self.connected.clear()
        self._lost.set()

    async def _connect_once(self) -> None:
        cred = self._credentials
        client = Client(
            self.endpoint.url, timeout=self._call_timeout_s, watchdog_intervall=self._watchdog_s
        )
        client.application_uri = cred.application_uri
        client.session_timeout = 600_000  # the controllers' maximum; asyncua warns otherwise
        client.name = "signaltwin daemon"
        client.description = "signaltwin daemon"
        client.set_user(cred.user)
        client.set_password(cred.password)
        await client.set_security(
            _POLICIES[cred.policy],
            certificate=str(cred.certificate),
            private_key=str(cred.private_key),
            server_certificate=self.endpoint.server_certificate_der,
            mode=ua.MessageSecurityMode.SignAndEncrypt,
        )

        async def lost(exc: Exception) -> None:
            self.mark_lost(f"{type(exc).__name__}: {exc}")

        client.connection_lost_callback = lost
        try:
            await asyncio.wait_for(client.connect(auto_reconnect=False), self._connect_timeout_s)
            namespaces = await asyncio.wait_for(client.get_namespace_array(), self._call_timeout_s)
        except BaseException:
            with contextlib.suppress(Exception):
                client.disconnect_socket()
            raise
        if c.NAMESPACE_URI not in namespaces:
            with contextlib.suppress(Exception):
                await client.disconnect()
            raise ActuationError(
                f"{self.endpoint.url} does not serve namespace {c.NAMESPACE_URI}: not a "
                "signaltwin traffic controller"
            )
        self.ns = namespaces.index(c.NAMESPACE_URI)
        self.client = client

    async def _supervise(self) -> None:
        delay = 0.5
        while not self._closing:
            try:
                if self._gate is None:
                    await self._connect_once()
                else:
                    async with self._gate:
                        await self._connect_once()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - any failure means retry later
                self.last_error = f"connect failed: {type(e).__name__}: {e}"
                logger.info(
                    "controller %s: %s (retry in %.1fs)", self.tls_id, self.last_error, delay
                )
                await asyncio.sleep(delay * random.uniform(0.8, 1.2))
                delay = min(delay * 2, self._backoff_max_s)
                continue
            delay = 0.5
            self.last_error = None
            self._lost.clear()
            self.connected.set()
            await self._abort_pending()
            await self._lost.wait()
            await self._drop()

    async def _abort_pending(self) -> None:
        sequence = self.pending_abort
        if sequence is None:
            return
        try:
            status, message = await self.call(
                c.ABORT_STAGED, ua.Variant(sequence, ua.VariantType.UInt64)
            )
        except ActuationError as e:
            logger.warning(
                "controller %s: abort of plan %d still pending: %s", self.tls_id, sequence, e
            )
            return
        self.pending_abort = None
        logger.info(
            "controller %s: pending abort of plan %d after reconnect: %s %s",
            self.tls_id,
            sequence,
            _status_name(status),
            message,
        )

    async def call(self, method: str, *args: ua.Variant) -> tuple[int, str]:
        client = self.client
        if client is None or not self.connected.is_set():
            raise ActuationError(f"not connected ({self.last_error or 'connecting'})")
        request = ua.CallMethodRequest()
        request.ObjectId = self.node(c.OBJECT)
        request.MethodId = self.node(method)
        request.InputArguments = list(args)
        try:
            results = await asyncio.wait_for(client.uaclient.call([request]), self._call_timeout_s)
        except TimeoutError as e:
            raise ActuationError(f"{method} timed out after {self._call_timeout_s}s") from e
        except (ConnectionError, OSError, ua.UaError) as e:
            self.mark_lost(f"{type(e).__name__}: {e}")
            raise ActuationError(f"{method} failed: {type(e).__name__}: {e}") from e
        result = results[0]
        if not result.StatusCode.is_good():
            raise ActuationError(f"{method} refused by the server: {result.StatusCode}")
        outputs = result.OutputArguments
        if len(outputs) != 2:
            raise ActuationError(f"{method} returned {len(outputs)} values; the contract says 2")
        return int(outputs[0].Value), str(outputs[1].Value)

    async def read(self, node_ids: list[str]) -> list[Any]:
        client = self.client
        if client is None or not self.connected.is_set():
            raise ActuationError(f"not connected ({self.last_error or 'connecting'})")
        nodes = [client.get_node(self.node(n)) for n in node_ids]
        try:
            return await asyncio.wait_for(client.read_values(nodes), self._call_timeout_s)
        except TimeoutError as e:
            raise ActuationError(f"read timed out after {self._call_timeout_s}s") from e
        except (ConnectionError, OSError, ua.UaError) as e:
            if isinstance(e, ua.UaStatusCodeError):
                raise ActuationError(f"read refused: {e}") from e
            self.mark_lost(f"{type(e).__name__}: {e}")
            raise ActuationError(f"read failed: {type(e).__name__}: {e}") from e


_SNAPSHOT_NODES = [
    c.FIELD_TIME,
    c.HEALTH,
    c.ACTIVE_SEQUENCE,
    c.ACTIVE_DIGEST,
    c.ACTIVE_FROM_FIELD_TIME,
    c.STAGED_SEQUENCE,
    c.STAGED_DIGEST,
    c.DETECTOR_IDS,
    c.DETECTOR_COUNTS,
    c.DETECTOR_OCCUPANCY,
    c.MEAN_WAIT,
    c.NOX,
    c.INTERVAL_END,
]


def _snapshot(tls_id: str, values: list[Any]) -> ControllerSnapshot:
    (ft, health, a_seq, a_dig, a_from, s_seq, s_dig, ids, counts, occ, wait, nox, end) = values
    ids = list(ids or [])
    counts = list(counts or [])
    occ = list(occ or [])
    if not (len(ids) == len(counts) == len(occ)):
        raise ActuationError(
            f"controller {tls_id}: detector arrays differ in length "
            f"({len(ids)}, {len(counts)}, {len(occ)})"
        )
    return ControllerSnapshot(
        tls_id=tls_id,
        reachable=True,
        field_time_s=float(ft),
        health=str(health),
        active_sequence=int(a_seq),
        active_digest=str(a_dig),
        active_from_s=float(a_from),
        staged_sequence=int(s_seq),
        staged_digest=str(s_dig),
        detectors={str(i): (int(n), float(o)) for i, n, o in zip(ids, counts, occ, strict=True)},
        mean_wait_s=float(wait),
        nox_mg=float(nox),
        interval_end_s=float(end),
    )


def _digest_of(envelope: bytes) -> str:
    """The digest of the timing document inside ``envelope`` (what controllers report)."""
    try:
        payload = Envelope.from_json(envelope).payload
        return TimingConfiguration.parse(payload).digest()
    except Exception as e:
        raise ConfigError(f"cannot push: the envelope does not hold a timing document: {e}") from e


# --------------------------------------------------------------------------- the pool


class ControllerPool:
    """Persistent secure sessions to every controller; reads and the two-phase push.

    Use inside a running event loop: ``await pool.start()``, then
    :meth:`read_all` and :meth:`push`, then ``await pool.close()``.

    Args:
        endpoints: The controllers.
        credentials: Client certificate, key, user and password.
        connect_timeout_s: Limit for one connection attempt.
        call_timeout_s: Limit for one method call or read.
        activate_lead_s: Default lead from "now" to the activation time.
        watchdog_s: How often asyncua checks that an idle session is alive.
        backoff_max_s: Longest wait between reconnection attempts.
        connect_concurrency: Most handshakes in flight at once (each costs RSA
            work on both sides; hundreds at once would time out and storm).
    """

    def __init__(
        self,
        endpoints: Iterable[ControllerTarget],
        credentials: ClientCredentials,
        connect_timeout_s: float = 10.0,
        call_timeout_s: float = 5.0,
        activate_lead_s: float = 10.0,
        watchdog_s: float = 5.0,
        backoff_max_s: float = 30.0,
        connect_concurrency: int = 8,
    ) -> None:
        self._connect_gate = asyncio.Semaphore(max(1, connect_concurrency))
        self._links = {
            e.tls_id: _Link(
                e,
                credentials,
                connect_timeout_s,
                call_timeout_s,
                watchdog_s,
                backoff_max_s,
                self._connect_gate,
            )
            for e in endpoints
        }
        if not self._links:
            raise ConfigError("controllers.endpoints is empty: configure at least one controller")
        self.activate_lead_s = activate_lead_s

    @property
    def intersections(self) -> list[str]:
        """The intersection ids, sorted."""
        return sorted(self._links)

    def connected(self) -> dict[str, bool]:
        """Whether each controller's session is up."""
        return {k: link.connected.is_set() for k, link in self._links.items()}

    async def start(self, wait_s: float | None = None) -> None:
        """Start connecting to every controller; optionally wait up to ``wait_s`` for all."""
        for link in self._links.values():
            link.start()
        if wait_s is not None:
            await self.wait_connected(wait_s)

    async def wait_connected(self, timeout_s: float) -> bool:
        """Wait until every session is up (True) or ``timeout_s`` passes (False)."""
        try:
            await asyncio.wait_for(
                asyncio.gather(*(link.connected.wait() for link in self._links.values())), timeout_s
            )
        except TimeoutError:
            return False
        return True

    async def close(self) -> None:
        """Close every session."""
        await asyncio.gather(
            *(link.close() for link in self._links.values()), return_exceptions=True
        )

    async def read_one(self, tls_id: str) -> ControllerSnapshot:
        """One controller's snapshot (``reachable=False`` with the error if it failed)."""
        link = self._links[tls_id]
        try:
            return _snapshot(tls_id, await link.read(_SNAPSHOT_NODES))
        except (ActuationError, ValueError, TypeError) as e:
            return ControllerSnapshot(
                tls_id=tls_id, reachable=False, health="unreachable", error=str(e)
            )

    async def read_all(self) -> dict[str, ControllerSnapshot]:
        """Every controller's snapshot, read concurrently."""
        snaps = await asyncio.gather(*(self.read_one(t) for t in self._links))
        return {s.tls_id: s for s in snaps}

    async def abort_staged(
        self, sequence: int, only: Iterable[str] | None = None
    ) -> dict[str, tuple[int, str] | str]:
        """Call ``AbortStaged(sequence)`` on every controller (or those in ``only``).

        Used by the daemon's start-up reconciliation after a crash mid-push
        (:mod:`controller.recovery`). Returns per controller the (status,
        message) the controller answered, or the error text when the call failed
        (that abort is then retried when the session is back).
        """
        out = await self._each(
            lambda link: link.call(c.ABORT_STAGED, ua.Variant(sequence, ua.VariantType.UInt64)),
            only,
        )
        answers: dict[str, tuple[int, str] | str] = {}
        for tls, result in out.items():
            if isinstance(result, BaseException):
                self._links[tls].pending_abort = sequence
                answers[tls] = f"{type(result).__name__}: {result}"
            else:
                answers[tls] = result
        return answers

    async def _each(
        self, fn: Callable[[_Link], Awaitable[T]], only: Iterable[str] | None = None
    ) -> dict[str, T | BaseException]:
        ids = list(self._links) if only is None else list(only)
        out = await asyncio.gather(*(fn(self._links[t]) for t in ids), return_exceptions=True)
        return dict(zip(ids, out, strict=True))

    async def push(
        self,
        envelope: bytes,
        sequence: int,
        *,
        alignment_s: float | None = None,
        lead_s: float | None = None,
    ) -> PushReport:
        """Stage on all, activate all at one aligned field time, read back.

        Args:
            envelope: The signed DSSE envelope (bytes, as from ``Envelope.to_json()``).
            sequence: The plan's sequence (as inside the document).
            alignment_s: Activate at a multiple of this many field seconds (the
                cycle length, so every plan starts on a cycle boundary).
            lead_s: Least field time from now to activation (default
                ``activate_lead_s``); must cover staging and activation.

        Returns:
            The report; it never raises for a controller's failure (rows say what
            failed); the outcome says whether the plan runs everywhere.
        """
        started = time.perf_counter()
        digest = _digest_of(envelope)
        lead = self.activate_lead_s if lead_s is None else lead_s
        rows = {t: ControllerPushResult(tls_id=t) for t in self._links}

        async def stage(link: _Link) -> tuple[tuple[int, str], float]:
            call = link.call(c.STAGE_PLAN, ua.Variant(envelope, ua.VariantType.ByteString))
            clock = link.read([c.FIELD_TIME])
            (status, message), values = await asyncio.gather(call, clock)
            return (status, message), float(values[0])

        staged = await self._each(stage)
        field_now = 0.0
        probe: str | None = None
        all_staged = True
        for tls, stage_out in staged.items():
            row = rows[tls]
            if isinstance(stage_out, BaseException):
                row.error = f"stage: {stage_out}"
                all_staged = False
                continue
            (status, message), ft = stage_out
            row.stage_status, row.stage_message = status, message
            if probe is None or ft > field_now:
                field_now, probe = ft, tls
            if status != PlanStatus.OK:
                all_staged = False
        stage_done = time.perf_counter()

        if not all_staged:
            # Drop it everywhere it may have been staged (a timed-out call may still land).
            refused = {t for t, r in rows.items() if r.stage_status not in (None, PlanStatus.OK)}
            targets = [t for t in self._links if t not in refused]
            aborted = await self._each(
                lambda link: link.call(c.ABORT_STAGED, ua.Variant(sequence, ua.VariantType.UInt64)),
                targets,
            )
            for tls, abort_out in aborted.items():
                if isinstance(abort_out, BaseException):
                    rows[tls].note(f"abort: {abort_out} (retried when the session is back)")
                    self._links[tls].pending_abort = sequence
                else:
                    rows[tls].abort_status, rows[tls].abort_message = abort_out
            failed = sorted(t for t, r in rows.items() if not r.staged)
            reason = f"stage failed on {len(failed)} controller(s): {', '.join(failed[:10])}"
            logger.warning("push %d aborted: %s", sequence, reason)
            end = time.perf_counter()
            return PushReport(
                sequence=sequence,
                digest=digest,
                outcome=PushOutcome.ABORTED,
                activate_at_field_time_s=None,
                controllers=list(rows.values()),
                stage_s=stage_done - started,
                total_s=end - started,
                reason=reason,
            )

        if probe is not None:
            # Staging took a while (hundreds of large documents); the field clock
            # moved on meanwhile, possibly faster than the wall clock: re-read it
            # on the controller that was furthest ahead.
            try:
                (again,) = await self._links[probe].read([c.FIELD_TIME])
                field_now = max(field_now, float(again))
            except ActuationError as e:
                logger.warning("push %d: field clock re-read on %s failed: %s", sequence, probe, e)
        at = aligned_activation_time(field_now, lead, alignment_s)
        activated = await self._each(
            lambda link: link.call(
                c.ACTIVATE_PLAN,
                ua.Variant(sequence, ua.VariantType.UInt64),
                ua.Variant(at, ua.VariantType.Double),
            )
        )
        for tls, act_out in activated.items():
            if isinstance(act_out, BaseException):
                rows[tls].error = f"activate: {act_out}"
            else:
                rows[tls].activate_status, rows[tls].activate_message = act_out
        activate_done = time.perf_counter()

        readback = await self._each(lambda link: link.read([c.ACTIVE_SEQUENCE, c.ACTIVE_DIGEST]))
        for tls, rb_out in readback.items():
            if isinstance(rb_out, BaseException):
                rows[tls].note(f"readback: {rb_out}")
            else:
                rows[tls].readback_sequence = int(rb_out[0])
                rows[tls].readback_digest = str(rb_out[1])
        end = time.perf_counter()
        good = [r.running(sequence, digest) for r in rows.values()]
        outcome_name = PushOutcome.ACTIVATED if all(good) else PushOutcome.PARTIAL
        reason = ""
        if outcome_name is PushOutcome.PARTIAL:
            bad = sorted(r.tls_id for r, g in zip(rows.values(), good, strict=True) if not g)
            reason = (
                f"activation or read-back failed on {len(bad)} controller(s): {', '.join(bad[:10])}"
            )
            logger.error("push %d partial: %s", sequence, reason)
        return PushReport(
            sequence=sequence,
            digest=digest,
            outcome=outcome_name,
            activate_at_field_time_s=at,
            controllers=list(rows.values()),
            stage_s=stage_done - started,
            activate_s=activate_done - stage_done,
            readback_s=end - activate_done,
            total_s=end - started,
            reason=reason,
        )


# --------------------------------------------------------------------------- sync facade


async def _cancel_leftover_tasks(timeout_s: float = 5.0) -> None:
    """Cancel tasks asyncua left behind for sessions that died (before the loop stops)."""
    current = asyncio.current_task()
    tasks = [t for t in asyncio.all_tasks() if t is not current and not t.done()]
    for task in tasks:
        task.cancel()
    if tasks:
        await asyncio.wait(tasks, timeout=timeout_s)


class ThreadedActuator:
    """A :class:`ControllerPool` owned by an event-loop thread, for synchronous callers.

    Args:
        pool_factory: Builds the pool (called inside the loop thread).
        start_wait_s: How long the constructor waits for the sessions to come up
            (it returns anyway; unreachable controllers keep being retried).
        call_timeout_s: Limit for one synchronous call into the loop.
    """

    def __init__(
        self,
        pool_factory: Callable[[], ControllerPool],
        start_wait_s: float = 10.0,
        call_timeout_s: float = 120.0,
    ) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="opcua-actuator", daemon=True
        )
        self._thread.start()
        self._timeout_s = call_timeout_s
        self._closed = False

        async def make() -> ControllerPool:
            pool = pool_factory()
            await pool.start(wait_s=start_wait_s)
            return pool

        try:
            self._pool = self._run(make())
        except BaseException:
            self._stop_loop()
            raise

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(self._timeout_s)
        except TimeoutError as e:
            future.cancel()
            raise ActuationError(f"controller operation took longer than {self._timeout_s}s") from e

    @property
    def pool(self) -> ControllerPool:
        """The underlying pool (use only from the loop thread)."""
        return self._pool

    def connected(self) -> dict[str, bool]:
        """Whether each controller's session is up."""
        return self._run(self._connected())

    async def _connected(self) -> dict[str, bool]:
        return self._pool.connected()

    def wait_connected(self, timeout_s: float) -> bool:
        """Wait until every session is up."""
        return self._run(self._pool.wait_connected(timeout_s))

    def read_all(self) -> dict[str, ControllerSnapshot]:
        """Every controller's snapshot."""
        return self._run(self._pool.read_all())

    def push(
        self,
        envelope: bytes,
        sequence: int,
        *,
        alignment_s: float | None = None,
        lead_s: float | None = None,
    ) -> PushReport:
        """See :meth:`ControllerPool.push`."""
        return self._run(
            self._pool.push(envelope, sequence, alignment_s=alignment_s, lead_s=lead_s)
        )

    def abort_staged(
        self, sequence: int, only: Iterable[str] | None = None
    ) -> dict[str, tuple[int, str] | str]:
        """See :meth:`ControllerPool.abort_staged`."""
        return self._run(self._pool.abort_staged(sequence, only))

    def close(self) -> None:
        """Close every session and stop the loop thread."""
        if self._closed:
            return
        self._closed = True
        try:
            self._run(self._pool.close())
            self._run(_cancel_leftover_tasks())
        finally:
            self._stop_loop()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        if not self._thread.is_alive():
            self._loop.close()


def pool_from_settings(settings: ControllersSettings, password: str) -> ControllerPool:
    """Build a pool from ``Settings.controllers`` (the daemon's TOML).

    Args:
        settings: The ``controllers`` section.
        password: The OPC UA password (read by the caller from ``password_file``).

    Raises:
        ConfigError: a certificate is not configured or cannot be read.
    """
    ctl = settings
    if ctl.client_certificate is None or ctl.client_private_key is None:
        raise ConfigError(
            "controllers.client_certificate and controllers.client_private_key must be set "
            "(or auto_provision = true for the demo)"
        )
    endpoints = []
    for e in ctl.endpoints:
        if e.server_certificate is None:
            raise ConfigError(
                f"controllers.endpoints[{e.intersection}].server_certificate is not set: "
                "the daemon only talks to controllers whose certificate it pins"
            )
        endpoints.append(ControllerTarget.from_files(e.intersection, e.url, e.server_certificate))
    return ControllerPool(
        endpoints,
        ClientCredentials(
            certificate=Path(ctl.client_certificate),
            private_key=Path(ctl.client_private_key),
            user=ctl.user,
            password=password,
        ),
        connect_timeout_s=ctl.connect_timeout_s,
        call_timeout_s=ctl.call_timeout_s,
        activate_lead_s=ctl.activate_lead_s,
    )
