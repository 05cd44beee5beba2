"""The controller's OPC UA transport before authentication: what is refused, and how.

asyncua's server is permissive before a session exists. The classes here
subclass its connection handling (no monkeypatching) so that a controller:

* refuses SecurityPolicy None and every policy/mode but the offered
  SignAndEncrypt ones, answering with an OPC UA ERR message and closing the
  socket (asyncua logs a traceback and leaves the client waiting);
* answers any undecodable message (garbage after Hello, truncated or garbage
  OpenSecureChannel) with ERR and a closed socket;
* refuses a chunk header announcing more than the receive buffer before it
  buffers the body;
* refuses RegisterServer/RegisterServer2 (an unauthenticated client could
  overwrite the discovery entry);
* refuses CreateSession unless the secure channel was opened with a pinned,
  valid client certificate (validity period, application URI, key usage: the
  validator runs on every session, not only when the request repeats the
  certificate) and the CreateSession certificate equals the channel's;
* bounds sessions per connection and in total;
* offers the UserName token only with an encrypting token policy (the
  channel's), never SecurityPolicy None;
* limits messages to what the contract needs (:func:`contract_limits`).
"""

from __future__ import annotations

import logging
import math
import socket
import struct
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from asyncua import ua as _ua
from asyncua.common.connection import TransportLimits
from asyncua.common.utils import ServiceError
from asyncua.crypto import uacrypto
from asyncua.server.binary_server_asyncio import BinaryServer, OPCUAProtocol
from asyncua.server.server import Server
from asyncua.server.uaprocessor import UaProcessor
from asyncua.ua.ua_binary import nodeid_from_binary, struct_from_binary, uatcp_to_binary
from cryptography import x509

from hsm.envelope import MAX_ENVELOPE_BYTES

# asyncua's ``ua`` package re-exports its names without ``__all__``: use it untyped.
ua: Any = _ua

__all__ = [
    "CHUNK_BYTES",
    "MAX_MESSAGE_BYTES",
    "ChannelPolicy",
    "ControllerServer",
    "contract_limits",
]

logger = logging.getLogger(__name__)

#: Largest chunk a controller receives or sends (bytes; OPC UA's usual 64 KiB).
CHUNK_BYTES = 65535
#: Largest request a controller accepts: the largest StagePlan envelope plus
#: 64 KiB for the CallRequest, security headers, padding and signatures.
MAX_MESSAGE_BYTES = MAX_ENVELOPE_BYTES + 64 * 1024
# Per-chunk overhead (headers, signature, padding) with 2048..4096-bit RSA.
_CHUNK_OVERHEAD = 1024

Validator = Callable[[x509.Certificate, Any], Awaitable[None]]


def contract_limits() -> TransportLimits:
    """Transport limits sized to the contract (not asyncua's 100 MiB default)."""
    return TransportLimits(
        max_recv_buffer=CHUNK_BYTES,
        max_send_buffer=CHUNK_BYTES,
        max_chunk_count=math.ceil(MAX_MESSAGE_BYTES / (CHUNK_BYTES - _CHUNK_OVERHEAD)) + 1,
        max_message_size=MAX_MESSAGE_BYTES,
    )


@dataclass(frozen=True)
class ChannelPolicy:
    """What a controller admits before authentication.

    Attributes:
        policy_uris: Security policy URIs offered (all SignAndEncrypt).
        validator: Checks the channel's client certificate (pinned, valid).
        max_sessions_per_connection: CreateSession calls one connection may make.
        max_sessions: Sessions the controller holds in total.
    """

    policy_uris: frozenset[str]
    validator: Validator
    max_sessions_per_connection: int = 4
    max_sessions: int = 64


_REFUSED_SERVICES = frozenset(
    {
        ua.NodeId(ua.ObjectIds.RegisterServerRequest_Encoding_DefaultBinary),
        ua.NodeId(ua.ObjectIds.RegisterServer2Request_Encoding_DefaultBinary),
    }
)
_CREATE_SESSION = ua.NodeId(ua.ObjectIds.CreateSessionRequest_Encoding_DefaultBinary)


class _Refused(Exception):
    """A transport-level refusal: answered with ERR, then the socket is closed."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class _GuardedProcessor(UaProcessor):  # type: ignore[misc]
    def __init__(self, iserver: Any, transport: Any, limits: Any, policy: ChannelPolicy) -> None:
        super().__init__(iserver, transport, limits)
        self._policy = policy
        self._sessions_created = 0

    def _send_error(self, code: int, reason: str) -> None:
        err = ua.ErrorMessage(ua.StatusCode(code), reason[:200])
        self._transport.write(uatcp_to_binary(ua.MessageType.Error, err))

    async def process(self, header: Any, body: Any) -> bool:
        try:
            return bool(await super().process(header, body))  # type: ignore[no-untyped-call]
        except _Refused as e:
            logger.warning("refused %s: %s", self.name, e.reason)
            self._send_error(e.code, e.reason)
        except ua.UaError as e:
            # "No matching policy", a bad certificate or signature, undecodable chunks.
            code = (
                ua.StatusCodes.BadSecurityPolicyRejected
                if "policy" in str(e).lower()
                else ua.StatusCodes.BadSecurityChecksFailed
            )
            logger.warning("refused %s: %s", self.name, e)
            self._send_error(code, str(e))
        except Exception as e:  # noqa: BLE001 - untrusted bytes: any decoder failure is refused
            logger.warning("refused undecodable message from %s: %r", self.name, e)
            self._send_error(ua.StatusCodes.BadDecodingError, f"undecodable message: {e!r}")
        return False

    def open_secure_channel(self, algohdr: Any, seqhdr: Any, body: Any) -> None:
        if not self._connection.is_open():
            uri = algohdr.SecurityPolicyURI
            if uri not in self._policy.policy_uris:
                raise _Refused(
                    ua.StatusCodes.BadSecurityPolicyRejected,
                    f"security policy {str(uri)[:80]!r} is not offered",
                )
            # The mode is in the (already decrypted) request body; asyncua checks it
            # against the offered policies in select_policy (UaError when not offered).
        super().open_secure_channel(algohdr, seqhdr, body)  # type: ignore[no-untyped-call]

    async def process_message(self, seqhdr: Any, body: Any) -> Any:
        typeid = nodeid_from_binary(body.copy())
        if typeid in _REFUSED_SERVICES:
            raise _Refused(ua.StatusCodes.BadServiceUnsupported, "discovery registration refused")
        if typeid == _CREATE_SESSION:
            await self._admit_session(body)
        return await super().process_message(seqhdr, body)  # type: ignore[no-untyped-call]

    async def _admit_session(self, body: Any) -> None:
        peek = body.copy()
        nodeid_from_binary(peek)
        struct_from_binary(ua.RequestHeader, peek)
        params = struct_from_binary(ua.CreateSessionParameters, peek)
        peer = self._connection.security_policy.peer_certificate
        if not peer:
            raise _Refused(
                ua.StatusCodes.BadSecurityChecksFailed,
                "CreateSession on a channel without a client certificate",
            )
        if not params.ClientCertificate or bytes(params.ClientCertificate) != bytes(peer):
            raise _Refused(
                ua.StatusCodes.BadCertificateInvalid,
                "the CreateSession certificate is not the secure channel's",
            )
        try:
            await self._policy.validator(
                x509.load_der_x509_certificate(peer), params.ClientDescription
            )
        except ServiceError as e:
            raise _Refused(e.code, "client certificate refused") from e
        except ValueError as e:
            raise _Refused(ua.StatusCodes.BadCertificateInvalid, f"bad certificate: {e}") from e
        self._sessions_created += 1
        if self._sessions_created > self._policy.max_sessions_per_connection:
            raise _Refused(
                ua.StatusCodes.BadTooManySessions, "too many sessions on this connection"
            )
        if len(self.iserver._external_sessions) >= self._policy.max_sessions:  # noqa: SLF001
            raise _Refused(ua.StatusCodes.BadTooManySessions, "too many sessions")


_HEADER = struct.Struct("<3scI")
_MESSAGE_TYPES = frozenset({b"HEL", b"ACK", b"ERR", b"RHE", b"OPN", b"MSG", b"CLO"})
_CHUNK_TYPES = frozenset({b"F", b"C", b"A"})


class _GuardedProtocol(OPCUAProtocol):  # type: ignore[misc]
    def __init__(self, *args: Any, channel_policy: ChannelPolicy, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._channel_policy = channel_policy

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        if self.processor is not None:
            self.processor = _GuardedProcessor(
                self.iserver, self.transport, self.limits, self._channel_policy
            )
            self.processor.set_policies(self.policies)  # type: ignore[no-untyped-call]

    def _refuse_head(self) -> bool:
        """Refuse the message at the head of the buffer before buffering its body."""
        head = self._buffer[: _HEADER.size]
        if len(head) < 4 or self.transport is None:
            return False
        kind, chunk = head[:3], head[3:4]
        reason = None
        code = ua.StatusCodes.BadTcpMessageTypeInvalid
        if kind not in _MESSAGE_TYPES or chunk not in _CHUNK_TYPES:
            reason = f"message type {head[:4]!r} is not an OPC UA TCP message"
        elif len(head) == _HEADER.size:
            size = _HEADER.unpack(head)[2]
            if size > self.limits.max_recv_buffer or size < _HEADER.size:
                code = ua.StatusCodes.BadTcpMessageTooLarge
                reason = f"chunk of {size} bytes; the limit is {self.limits.max_recv_buffer}"
        if reason is None:
            return False
        logger.warning("refused %s: %s", self.peer_name, reason)
        err = ua.ErrorMessage(ua.StatusCode(code), reason)
        self.transport.write(uatcp_to_binary(ua.MessageType.Error, err))
        self.transport.close()
        self._buffer = b""
        return True

    def data_received(self, data: bytes) -> None:
        if self.transport is None:
            return
        # Check the head before asyncio's parser buffers a body, and again after it
        # consumed complete messages (the next one may already be waiting).
        self._buffer += data
        if self._refuse_head():
            return
        pending, self._buffer = self._buffer, b""
        super().data_received(pending)
        self._refuse_head()


class _GuardedBinaryServer(BinaryServer):  # type: ignore[misc]
    def __init__(self, *args: Any, channel_policy: ChannelPolicy, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._channel_policy = channel_policy

    def _make_protocol(self) -> OPCUAProtocol:
        return _GuardedProtocol(
            iserver=self.iserver,
            policies=self._policies,
            clients=self.clients,
            closing_tasks=self.closing_tasks,
            limits=self.limits,
            channel_policy=self._channel_policy,
        )


class ControllerServer(Server):  # type: ignore[misc]
    """An asyncua server whose connections go through :class:`ChannelPolicy`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limits = contract_limits()
        self.channel_policy: ChannelPolicy | None = None

    def _set_endpoints(self, policy: Any, mode: Any, level: int) -> None:
        super()._set_endpoints(policy, mode, level)
        # asyncua offers the UserName token with SecurityPolicy None on SignAndEncrypt
        # endpoints; require the channel's encrypting policy for the token as well.
        for token in self.iserver.endpoints[-1].UserIdentityTokens:
            if token.TokenType == ua.UserTokenType.UserName:
                token.SecurityPolicyUri = policy.URI

    async def start(self) -> None:
        """Listen, like :meth:`Server.start`, with the guarded connection handling."""
        if self.channel_policy is None:
            raise RuntimeError("ControllerServer.channel_policy must be set before start()")
        if self.iserver.certificate is not None:
            uacrypto.check_certificate(
                self.iserver.certificate, self._application_uri, socket.gethostname()
            )
        await self._setup_server_nodes()
        await self.iserver.start()
        try:
            host, port = self._get_bind_socket_info()
            self.bserver = _GuardedBinaryServer(
                self.iserver, host, port, self.limits, channel_policy=self.channel_policy
            )
            self.bserver.set_policies(self._policies)
            await self.bserver.start()
        except Exception:
            await self.iserver.stop()
            raise


def policy_uris(policies: Sequence[Any]) -> frozenset[str]:
    """The URIs of asyncua ``SecurityPolicyType`` members."""
    from asyncua.crypto import security_policies

    table: Any = security_policies.SECURITY_POLICY_TYPE_MAP
    return frozenset(str(table[p][0].URI) for p in policies)
