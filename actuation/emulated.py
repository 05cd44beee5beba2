"""Emulated traffic controllers: one secured asyncua server per intersection.

Each :class:`EmulatedController` implements ``docs/controller-contract.md``
exactly: it serves ``Objects/TrafficController`` on its own port with its own
certificate, accepts only SignAndEncrypt sessions (Basic256Sha256 or
Aes256Sha256RsaPss) from the pinned client certificate with the configured user
and password (operator certificates: read-only), refuses everything else before
authentication with an OPC UA ERR (:mod:`actuation.channel`), verifies every
plan with :class:`~actuation.core.ControllerCore` before staging it, and drives
the street through a :class:`~actuation.core.SignalField`. Method arguments of the
wrong number or OPC UA type are answered ``BAD_ARGUMENTS``. Many controllers can
share one process and event loop (:class:`EmulatedFleet`), as a gateway would host several.

Start-up cost: asyncua builds the ~6000-node standard address space for every
server, which takes seconds of CPU each. The controllers here build it once per
process and give each server a copy-on-access view of it (a node is copied the
first time that server touches it), so a fleet of hundreds starts in seconds.
"""

from __future__ import annotations

import asyncio
import collections.abc
import contextlib
import logging
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from asyncua import ua as _ua
from asyncua.server.address_space import AddressSpace, AttributeValue, NodeData
from asyncua.server.internal_server import InternalServer
from asyncua.server.server import Server

from actuation import contract as c
from actuation.channel import ChannelPolicy, ControllerServer, policy_uris
from actuation.contract import PlanStatus
from actuation.core import ControllerCore, PlanResult
from actuation.security import CertificatePair, controller_application_uri
from actuation.users import (
    ControllerRuleset,
    PasswordHash,
    PinnedCertificateValidator,
    StrictUserManager,
)
from configs.errors import ActuationError

# asyncua's ``ua`` package re-exports its names without ``__all__``, which strict
# mypy rejects, and types NodeId's arguments with its own aliases: use it untyped.
ua: Any = _ua

__all__ = [
    "SECURITY_POLICIES",
    "ControllerAccess",
    "CountingField",
    "EmulatedController",
    "EmulatedFleet",
    "pinned_clients",
]

logger = logging.getLogger(__name__)

#: The only security policies a controller offers (both SignAndEncrypt).
SECURITY_POLICIES = (
    ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt,
    ua.SecurityPolicyType.Aes256Sha256RsaPss_SignAndEncrypt,
)


@dataclass(frozen=True)
class ControllerAccess:
    """Who may connect, and what the transport admits before authentication.

    Attributes:
        user: The daemon's user name (the only one that may call the methods).
        password: Its password, as a hash.
        client_certificates_der: The daemon's pinned client certificate(s).
        operators: Operator tools' user names and password hashes (read-only role).
        operator_certificates_der: Operator tools' pinned certificates; a session on
            one of these may browse, read and subscribe, never call a method.
        max_sessions_per_connection: CreateSession calls one TCP connection may make.
        max_sessions: Sessions a controller holds at once.
    """

    user: str
    password: PasswordHash
    client_certificates_der: tuple[bytes, ...]
    operators: Mapping[str, PasswordHash] = field(default_factory=dict)
    operator_certificates_der: tuple[bytes, ...] = ()
    max_sessions_per_connection: int = 4
    max_sessions: int = 64


@runtime_checkable
class CountingField(Protocol):
    """A :class:`~actuation.core.SignalField` that also keeps cumulative approach totals.

    A field that has this method gets ``Measurements.HaltingTotal`` and
    ``Measurements.NOxTotal`` served; one without it is served like a controller
    that predates them (the nodes are absent).
    """

    def totals(self, tls_id: str) -> tuple[float, float]:
        """``(halting_veh_s, nox_mg)`` on ``tls_id``'s approach lanes since the field started."""
        ...


# --------------------------------------------------------------------------- fast address space

_TEMPLATE_LOCK = threading.Lock()
_TEMPLATE: dict[ua.NodeId, NodeData] | None = None


def _standard_nodes() -> dict[ua.NodeId, NodeData]:
    """The standard address space, built once per process (never mutated afterwards)."""
    global _TEMPLATE
    with _TEMPLATE_LOCK:
        if _TEMPLATE is None:
            from asyncua.server.address_space import NodeManagementService
            from asyncua.server.standard_address_space import standard_address_space

            aspace = AddressSpace()
            standard_address_space.fill_address_space(NodeManagementService(aspace))  # type: ignore[no-untyped-call]
            _TEMPLATE = aspace._nodes  # noqa: SLF001 - read-only template, see _CopyOnAccessNodes
        return _TEMPLATE


def _clone(node: NodeData) -> NodeData:
    copy = NodeData(node.nodeid)
    copy.call = node.call
    copy.references = list(node.references)
    for key, value in node.attributes.items():
        attribute = AttributeValue(value.value)  # type: ignore[arg-type]
        attribute.value_callback = value.value_callback
        attribute.value_setter = value.value_setter
        copy.attributes[key] = attribute
    return copy


class _CopyOnAccessNodes(collections.abc.MutableMapping[ua.NodeId, NodeData]):
    """One server's nodes: its own, plus the shared template copied on first access.

    Every node a server reads or writes is its own copy, so servers never see
    each other's values, references or callbacks.
    """

    def __init__(self, template: Mapping[ua.NodeId, NodeData]) -> None:
        self._template = template
        self._own: dict[ua.NodeId, NodeData] = {}
        self._deleted: set[ua.NodeId] = set()

    def __getitem__(self, key: ua.NodeId) -> NodeData:
        try:
            return self._own[key]
        except KeyError:
            if key in self._deleted:
                raise
            node = self._own[key] = _clone(self._template[key])
            return node

    def __setitem__(self, key: ua.NodeId, value: NodeData) -> None:
        self._deleted.discard(key)
        self._own[key] = value

    def __delitem__(self, key: ua.NodeId) -> None:
        if key in self._own:
            del self._own[key]
        elif key not in self._template or key in self._deleted:
            raise KeyError(key)
        self._deleted.add(key)

    def __contains__(self, key: object) -> bool:
        return key in self._own or (key in self._template and key not in self._deleted)

    def __iter__(self) -> Iterator[ua.NodeId]:
        yield from self._own
        for key in self._template:
            if key not in self._own and key not in self._deleted:
                yield key

    def __len__(self) -> int:
        return sum(1 for _ in self)


class _SharedStandardSpaceServer(InternalServer):  # type: ignore[misc]
    async def load_standard_address_space(self, shelf_file: Path | None = None) -> None:
        template = await asyncio.to_thread(_standard_nodes)
        self.aspace._nodes = _CopyOnAccessNodes(template)  # type: ignore[assignment]


# --------------------------------------------------------------------------- the controller


_KINDS = {
    "String": ua.VariantType.String,
    "UInt64": ua.VariantType.UInt64,
    "UInt32": ua.VariantType.UInt32,
    "Double": ua.VariantType.Double,
    "ByteString": ua.VariantType.ByteString,
    "String[]": ua.VariantType.String,
    "UInt64[]": ua.VariantType.UInt64,
    "Double[]": ua.VariantType.Double,
}


def _variant(value: Any, ua_type: str) -> ua.Variant:
    return ua.Variant(value, _KINDS[ua_type], is_array=ua_type.endswith("[]"))


def _argument(arg: c.Argument) -> ua.Argument:
    out = ua.Argument()
    out.Name = arg.name
    out.DataType = ua.NodeId(_KINDS[arg.ua_type].value)
    out.ValueRank = 1 if arg.ua_type.endswith("[]") else -1
    out.ArrayDimensions = []
    out.Description = ua.LocalizedText(arg.description)
    return out


def _answer(result: PlanResult) -> list[ua.Variant]:
    return [
        ua.Variant(int(result.status), ua.VariantType.UInt32),
        ua.Variant(result.message[:4000], ua.VariantType.String),
    ]


def _bad_arguments(method: str, expected: str, args: Sequence[Any]) -> list[ua.Variant]:
    got = ", ".join(str(getattr(a, "VariantType", type(a).__name__)) for a in args) or "nothing"
    return _answer(
        PlanResult(PlanStatus.BAD_ARGUMENTS, f"{method} expects {expected}; got ({got})"[:400])
    )


def _typed(args: Sequence[Any], kinds: Sequence[Any]) -> bool:
    """Whether ``args`` are scalar variants of exactly the OPC UA types ``kinds``."""
    return len(args) == len(kinds) and all(
        isinstance(a, ua.Variant) and a.VariantType == k and not a.is_array and a.Value is not None
        for a, k in zip(args, kinds, strict=True)
    )


class EmulatedController:
    """One traffic controller as a secured OPC UA server driving a :class:`SignalField`.

    Args:
        core: The plan logic and the field it drives.
        certificate: This server's certificate (DER) and private key (PEM).
        access: The user, password hash and pinned client certificates.
        host: Interface to listen on.
        port: TCP port; 0 picks a free one (see :attr:`url` after :meth:`start`).
        publish_interval_s: How often (wall seconds) field values are refreshed.
    """

    def __init__(
        self,
        core: ControllerCore,
        certificate: CertificatePair,
        access: ControllerAccess,
        host: str = "127.0.0.1",
        port: int = 0,
        publish_interval_s: float = 1.0,
    ) -> None:
        self.core = core
        self._certificate = certificate
        self._access = access
        self._host = host
        self._port = port
        self._publish_interval_s = publish_interval_s
        self._server: Server | None = None
        self._ns = 0
        self._publisher: asyncio.Task[None] | None = None
        self._detector_ids: tuple[str, ...] = ()
        self._lock = asyncio.Lock()
        #: whether the field keeps cumulative totals (HaltingTotal/NOxTotal are served)
        self._totals = isinstance(core.field, CountingField)

    @property
    def tls_id(self) -> str:
        """The intersection this controller drives."""
        return self.core.tls_id

    @property
    def port(self) -> int:
        """The TCP port it listens on (after :meth:`start`)."""
        if self._server is None or self._server.bserver is None:
            return self._port
        return int(self._server.bserver.port)

    @property
    def url(self) -> str:
        """Its endpoint URL (after :meth:`start`)."""
        return f"opc.tcp://{self._host}:{self.port}/signaltwin/"

    def _node(self, node_id: str) -> ua.NodeId:
        return ua.NodeId(node_id, self._ns)

    async def start(self) -> None:
        """Build the address space, apply the security settings and listen.

        Raises:
            ActuationError: the certificate cannot be loaded or the port is taken.
        """
        access = self._access
        server = ControllerServer(
            iserver=_SharedStandardSpaceServer(
                user_manager=StrictUserManager(
                    access.user,
                    access.password,
                    access.client_certificates_der,
                    operators=access.operators,
                    operator_certificates_der=access.operator_certificates_der,
                )
            )
        )
        validator = PinnedCertificateValidator(
            (*access.client_certificates_der, *access.operator_certificates_der)
        )
        server.channel_policy = ChannelPolicy(
            policy_uris=policy_uris(SECURITY_POLICIES),
            validator=validator,
            max_sessions_per_connection=access.max_sessions_per_connection,
            max_sessions=access.max_sessions,
        )
        await server.init()
        server.set_server_name(f"signaltwin emulated controller {self.tls_id}")
        server.product_uri = "urn:signaltwin:emulated-controller"
        server.manufacturer_name = "signaltwin"
        server.set_endpoint(f"opc.tcp://{self._host}:{self._port}/signaltwin/")
        await server.set_application_uri(controller_application_uri(self.tls_id))
        server.set_security_policy(list(SECURITY_POLICIES), permission_ruleset=ControllerRuleset())
        server.set_identity_tokens([ua.UserNameIdentityToken])
        server.set_certificate_validator(validator)
        server.iserver.allow_remote_admin = False
        try:
            await server.load_certificate(str(self._certificate.certificate))
            await server.load_private_key(str(self._certificate.private_key))
        except (OSError, ValueError) as e:
            raise ActuationError(
                f"controller {self.tls_id}: cannot load {self._certificate.certificate} / "
                f"{self._certificate.private_key}: {e}"
            ) from e
        self._ns = await server.register_namespace(c.NAMESPACE_URI)
        await self._build(server)
        # FieldTime is read live: activation times are computed from it, and a
        # value refreshed once a wall second lags by seconds when the field runs
        # faster than real time.
        server.set_attribute_value_callback(self._node(c.FIELD_TIME), self._live_field_time)
        try:
            await server.start()
        except OSError as e:
            raise ActuationError(
                f"controller {self.tls_id}: cannot listen on "
                f"{self._host}:{self._port}: {e.strerror}"
            ) from e
        self._server = server
        await self._publish_field()
        self._publisher = asyncio.create_task(self._publish_loop(), name=f"publish-{self.tls_id}")
        logger.info("controller %s listening on %s", self.tls_id, self.url)

    async def stop(self) -> None:
        """Stop publishing and close every session."""
        if self._publisher is not None:
            self._publisher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._publisher
            self._publisher = None
        if self._server is not None:
            self._port = self.port  # a restart listens where the daemon expects it
            server, self._server = self._server, None
            await server.stop()

    # ------------------------------------------------------------------ address space

    async def _build(self, server: Server) -> None:
        ns = self._ns
        obj = await server.nodes.objects.add_object(
            ua.NodeId(c.OBJECT, ns), ua.QualifiedName(c.OBJECT_BROWSE_NAME, ns)
        )
        measurements = await obj.add_object(
            ua.NodeId(c.MEASUREMENTS, ns), ua.QualifiedName("Measurements", ns)
        )
        detectors = await obj.add_folder(
            ua.NodeId(c.DETECTORS, ns), ua.QualifiedName("Detectors", ns)
        )
        initial: dict[str, Any] = {
            c.CONTROLLER_ID: self.tls_id,
            c.ACTIVE_SEQUENCE: 0,
            c.ACTIVE_DIGEST: "",
            c.ACTIVE_FROM_FIELD_TIME: 0.0,
            c.STAGED_SEQUENCE: 0,
            c.STAGED_DIGEST: "",
            c.STAGED_EXPIRES_AT: 0.0,
            c.FIELD_TIME: 0.0,
            c.HEALTH: "ok",
            c.DETECTOR_IDS: [],
            c.DETECTOR_COUNTS: [],
            c.DETECTOR_OCCUPANCY: [],
            c.MEAN_WAIT: 0.0,
            c.NOX: 0.0,
            c.INTERVAL_END: 0.0,
            c.HALTING_TOTAL: 0.0,
            c.NOX_TOTAL: 0.0,
        }
        for spec in c.VARIABLES:
            if spec.node_id in c.CUMULATIVE_TOTALS and not self._totals:
                continue
            parent = measurements if spec.node_id.startswith(c.MEASUREMENTS + ".") else obj
            var = await parent.add_variable(
                ua.NodeId(spec.node_id, ns),
                ua.QualifiedName(spec.browse_name, ns),
                _variant(initial[spec.node_id], spec.ua_type),
            )
            if spec.ua_type.endswith("[]"):
                await var.write_value_rank(1)
            await var.write_attribute(
                ua.AttributeIds.Description,
                ua.DataValue(ua.Variant(ua.LocalizedText(spec.description))),
            )
        snapshot = self.core.field.detector_snapshot(self.tls_id)
        self._detector_ids = tuple(sorted(snapshot))
        for det in self._detector_ids:
            node = await detectors.add_object(
                ua.NodeId(c.detector_node(det), ns), ua.QualifiedName(det, ns)
            )
            await node.add_variable(
                ua.NodeId(c.detector_count_node(det), ns),
                ua.QualifiedName("Count", ns),
                ua.Variant(0, ua.VariantType.UInt64),
            )
            await node.add_variable(
                ua.NodeId(c.detector_occupancy_node(det), ns),
                ua.QualifiedName("Occupancy", ns),
                ua.Variant(0.0, ua.VariantType.Double),
            )
        callbacks = {
            c.STAGE_PLAN: self._stage_plan,
            c.ACTIVATE_PLAN: self._activate_plan,
            c.ABORT_STAGED: self._abort_staged,
        }
        for method in c.METHODS:
            await obj.add_method(
                ua.NodeId(method.node_id, ns),
                ua.QualifiedName(method.browse_name, ns),
                callbacks[method.node_id],
                [_argument(a) for a in method.inputs],
                [_argument(a) for a in method.outputs],
            )

    def _live_field_time(self, _node: Any, _attr: Any) -> Any:
        try:
            now = float(self.core.field.field_time_s())
        except Exception:  # noqa: BLE001 - an unreadable field clock is a bad value, not a crash
            return ua.DataValue(StatusCode=ua.StatusCode(ua.StatusCodes.BadResourceUnavailable))
        return ua.DataValue(
            ua.Variant(now, ua.VariantType.Double),
            SourceTimestamp=datetime.now(UTC),
            ServerTimestamp=datetime.now(UTC),
        )

    # ------------------------------------------------------------------ methods

    def _called_on_controller(self, parent: ua.NodeId) -> bool:
        return bool(parent == self._node(c.OBJECT))

    async def _stage_plan(self, parent: ua.NodeId, *args: ua.Variant) -> list[ua.Variant]:
        if not self._called_on_controller(parent):
            return _answer(
                PlanResult(PlanStatus.INTERNAL_ERROR, "call StagePlan on TrafficController")
            )
        if not _typed(args, (ua.VariantType.ByteString,)) or not isinstance(
            args[0].Value, bytes | bytearray
        ):
            return _bad_arguments("StagePlan", "one ByteString argument (the DSSE envelope)", args)
        async with self._lock:
            result = self.core.stage(bytes(args[0].Value))
            await self._publish_plans()
        return _answer(result)

    async def _activate_plan(self, parent: ua.NodeId, *args: ua.Variant) -> list[ua.Variant]:
        if not self._called_on_controller(parent):
            return _answer(
                PlanResult(PlanStatus.INTERNAL_ERROR, "call ActivatePlan on TrafficController")
            )
        if not _typed(args, (ua.VariantType.UInt64, ua.VariantType.Double)):
            return _bad_arguments("ActivatePlan", "(sequence: UInt64, at_field_time: Double)", args)
        async with self._lock:
            result = self.core.activate(int(args[0].Value), float(args[1].Value))
            await self._publish_plans()
        return _answer(result)

    async def _abort_staged(self, parent: ua.NodeId, *args: ua.Variant) -> list[ua.Variant]:
        if not self._called_on_controller(parent):
            return _answer(
                PlanResult(PlanStatus.INTERNAL_ERROR, "call AbortStaged on TrafficController")
            )
        if not _typed(args, (ua.VariantType.UInt64,)):
            return _bad_arguments("AbortStaged", "(sequence: UInt64)", args)
        async with self._lock:
            result = self.core.abort(int(args[0].Value))
            await self._publish_plans()
        return _answer(result)

    # ------------------------------------------------------------------ publishing

    async def _write(self, node_id: str, value: Any, ua_type: str) -> None:
        if self._server is None:
            return
        await self._server.write_attribute_value(
            self._node(node_id), ua.DataValue(_variant(value, ua_type))
        )

    async def _publish_plans(self) -> None:
        state = self.core.state
        staged = state.staged
        await self._write(c.ACTIVE_SEQUENCE, state.active_sequence, "UInt64")
        await self._write(c.ACTIVE_DIGEST, state.active_digest, "String")
        await self._write(c.ACTIVE_FROM_FIELD_TIME, state.active_from_s, "Double")
        await self._write(c.STAGED_SEQUENCE, staged.sequence if staged else 0, "UInt64")
        await self._write(c.STAGED_DIGEST, staged.digest if staged else "", "String")
        await self._write(c.STAGED_EXPIRES_AT, staged.expires_at_s if staged else 0.0, "Double")

    async def _publish_field(self) -> None:
        field = self.core.field
        tls = self.tls_id
        try:
            snapshot = field.detector_snapshot(tls)
            mean_wait_s, nox_mg, interval_end_s = field.measurements(tls)
            totals = field.totals(tls) if isinstance(field, CountingField) else None
            health = field.health(tls)
        except Exception as e:  # noqa: BLE001 - the field failing is published, not fatal
            logger.warning("controller %s: field read failed: %s", tls, e)
            await self._write(c.HEALTH, f"fault: field unreachable ({type(e).__name__})", "String")
            return
        if self.core.expire_staged():
            await self._publish_plans()
        counts = [int(snapshot.get(d, (0, 0.0))[0]) for d in self._detector_ids]
        occupancy = [float(snapshot.get(d, (0, 0.0))[1]) for d in self._detector_ids]
        # FieldTime is not written: a write would replace its live read callback.
        await self._write(c.HEALTH, health, "String")
        await self._write(c.DETECTOR_IDS, list(self._detector_ids), "String[]")
        await self._write(c.DETECTOR_COUNTS, counts, "UInt64[]")
        await self._write(c.DETECTOR_OCCUPANCY, occupancy, "Double[]")
        for det, count, occ in zip(self._detector_ids, counts, occupancy, strict=True):
            await self._write(c.detector_count_node(det), count, "UInt64")
            await self._write(c.detector_occupancy_node(det), occ, "Double")
        await self._write(c.MEAN_WAIT, float(mean_wait_s), "Double")
        await self._write(c.NOX, float(nox_mg), "Double")
        await self._write(c.INTERVAL_END, float(interval_end_s), "Double")
        if totals is not None and self._totals:
            await self._write(c.HALTING_TOTAL, float(totals[0]), "Double")
            await self._write(c.NOX_TOTAL, float(totals[1]), "Double")

    async def _publish_loop(self) -> None:
        while True:
            await asyncio.sleep(self._publish_interval_s)
            async with self._lock:
                await self._publish_field()


class EmulatedFleet:
    """Many emulated controllers in one process and event loop (a gateway)."""

    def __init__(self, controllers: Sequence[EmulatedController]) -> None:
        self.controllers = list(controllers)

    def __iter__(self) -> Iterator[EmulatedController]:
        return iter(self.controllers)

    def by_id(self) -> dict[str, EmulatedController]:
        """Controllers by intersection id."""
        return {ctl.tls_id: ctl for ctl in self.controllers}

    def urls(self) -> dict[str, str]:
        """Endpoint URL per intersection (after :meth:`start`)."""
        return {ctl.tls_id: ctl.url for ctl in self.controllers}

    async def start(self, concurrency: int = 32) -> None:
        """Start every controller (bounded concurrency); stop all if one fails."""
        gate = asyncio.Semaphore(concurrency)

        async def one(ctl: EmulatedController) -> None:
            async with gate:
                await ctl.start()

        results = await asyncio.gather(*(one(x) for x in self.controllers), return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            await self.stop()
            raise ActuationError(f"{len(errors)} controller(s) failed to start: {errors[0]}") from (
                errors[0]
            )

    async def stop(self) -> None:
        """Stop every controller."""
        await asyncio.gather(*(ctl.stop() for ctl in self.controllers), return_exceptions=True)


def pinned_clients(paths: Iterable[Path]) -> tuple[bytes, ...]:
    """DER bytes of the client certificates to pin (files in DER or PEM)."""
    from actuation.security import load_certificate_der

    return tuple(load_certificate_der(p) for p in paths)
