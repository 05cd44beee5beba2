"""Who may talk to an emulated controller: the daemon (operate) and operator tools (read).

asyncua's defaults admit anyone (``PermissiveUserManager`` makes every session a
user and the name "admin" an administrator; every certificate is accepted). The
controllers replace all of it:

* :class:`StrictUserManager` admits exactly the configured user name with the
  right password (scrypt hash, constant-time compare) and only over a secure
  channel opened with a pinned daemon certificate; an operator user over a
  channel opened with a pinned operator certificate gets the read-only role
  (:class:`ReadOnlyUser`); everything else, anonymous included, is refused
  (``BadUserAccessDenied``).
* :class:`PinnedCertificateValidator` refuses a session whose client certificate
  is not byte-for-byte one of the pinned ones, or is expired, lacks the
  application URI or the clientAuth usage (asyncua's validator, extended).
* :class:`ControllerRuleset` lets the daemon's user browse, read, subscribe and
  call methods and a read-only user browse, read and subscribe; it never lets
  anyone write or change the address space.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from asyncua import ua as _ua
from asyncua.common.utils import ServiceError
from asyncua.crypto.permission_rules import SimpleRoleRuleset, User, UserRole
from asyncua.crypto.validator import CertificateValidator, CertificateValidatorOptions
from asyncua.server.user_managers import UserManager
from cryptography import x509
from cryptography.hazmat.primitives import serialization

if TYPE_CHECKING:
    from asyncua.server.internal_server import InternalServer

# asyncua's ``ua`` package re-exports its names without ``__all__``, which strict
# mypy rejects, and types NodeId's arguments with its own aliases: use it untyped.
ua: Any = _ua

__all__ = [
    "ControllerRuleset",
    "PasswordHash",
    "PinnedCertificateValidator",
    "ReadOnlyUser",
    "StrictUserManager",
]

logger = logging.getLogger(__name__)

_SCRYPT_N = 2**14
_SCRYPT_R = 8
_SCRYPT_P = 1


@dataclass(frozen=True)
class PasswordHash:
    """An scrypt password hash (the controller never keeps the password itself)."""

    salt: bytes
    digest: bytes
    n: int = _SCRYPT_N
    r: int = _SCRYPT_R
    p: int = _SCRYPT_P

    @classmethod
    def create(cls, password: str, salt: bytes | None = None) -> PasswordHash:
        """Hash ``password`` with a fresh random salt (or the given one)."""
        salt = os.urandom(16) if salt is None else salt
        return cls(salt=salt, digest=cls._derive(password, salt, _SCRYPT_N, _SCRYPT_R, _SCRYPT_P))

    @staticmethod
    def _derive(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
        return hashlib.scrypt(
            password.encode("utf-8"), salt=salt, n=n, r=r, p=p, maxmem=64 * 1024 * 1024, dklen=32
        )

    def matches(self, password: str) -> bool:
        """Whether ``password`` hashes to this digest (constant-time compare)."""
        candidate = self._derive(password, self.salt, self.n, self.r, self.p)
        return hmac.compare_digest(candidate, self.digest)


@dataclass
class ReadOnlyUser(User):  # type: ignore[misc]
    """An operator tool's session: browse, read and subscribe; never call a method."""


class StrictUserManager(UserManager):
    """Admit exactly one user name/password, over a channel with a pinned client certificate.

    asyncua calls :meth:`get_user` on ActivateSession with the decrypted user
    token and the certificate the secure channel was opened with (whose private
    key the client proved it holds in the asymmetric handshake). Returning
    ``None`` makes asyncua answer ``BadUserAccessDenied``.
    """

    def __init__(
        self,
        user: str,
        password: PasswordHash,
        client_certificates_der: Iterable[bytes],
        operators: Mapping[str, PasswordHash] | None = None,
        operator_certificates_der: Iterable[bytes] = (),
    ) -> None:
        self._user = user.encode("utf-8")
        self._password = password
        self._pinned = tuple(bytes(c) for c in client_certificates_der)
        self._operators = {k.encode("utf-8"): v for k, v in (operators or {}).items()}
        self._operator_pins = tuple(bytes(c) for c in operator_certificates_der)
        # A verified (user, password) pair is remembered by its keyed digest so that
        # reconnects do not pay scrypt again; the key never leaves this object.
        self._memo_key = os.urandom(32)
        self._accepted: set[bytes] = set()

    @staticmethod
    def _among(certificate: Any, pins: tuple[bytes, ...]) -> bool:
        if not isinstance(certificate, bytes | bytearray) or not certificate:
            return False
        return any(hmac.compare_digest(bytes(certificate), pin) for pin in pins)

    def _pinned_certificate(self, certificate: Any) -> bool:
        return self._among(certificate, self._pinned)

    def _password_ok(self, password: str, expected: PasswordHash, who: bytes = b"") -> bool:
        token = hmac.new(
            self._memo_key, who + b"\0" + password.encode("utf-8"), hashlib.sha256
        ).digest()
        if token in self._accepted:
            return True
        if expected.matches(password):
            self._accepted.add(token)
            return True
        return False

    def _operator(self, username: str, password: str, certificate: Any) -> User | None:
        name = username.encode("utf-8")
        # An operator tool authenticates as an operator user, or as the daemon's user
        # (who is read-only on an operator certificate: the role is the certificate's).
        expected = self._operators.get(name)
        if expected is None and hmac.compare_digest(name, self._user):
            expected = self._password
        if expected is None or not self._among(certificate, self._operator_pins):
            return None
        if not self._password_ok(password, expected, name):
            return None
        return ReadOnlyUser(role=UserRole.User, name=username)

    def get_user(
        self,
        iserver: InternalServer,
        username: str | None = None,
        password: str | None = None,
        certificate: Any = None,
    ) -> User | None:
        """The session's user, or ``None`` (refused)."""
        if username is None or password is None:
            logger.warning("refused a session without user name and password")
            return None
        if self._among(certificate, self._operator_pins) and not self._pinned_certificate(
            certificate
        ):
            operator = self._operator(username, password, certificate)
            if operator is None:
                logger.warning("refused operator %r: wrong user name or password", username)
            return operator
        if not self._pinned_certificate(certificate):
            logger.warning(
                "refused user %r: secure channel not opened with a pinned certificate", username
            )
            return None
        name_ok = hmac.compare_digest(username.encode("utf-8"), self._user)
        # Always run the password check so that timing does not tell names apart.
        password_ok = self._password_ok(password, self._password)
        if not (name_ok and password_ok):
            logger.warning("refused user %r: wrong user name or password", username)
            return None
        return User(role=UserRole.User, name=username)


class PinnedCertificateValidator:
    """Refuse client certificates that are not pinned, or are expired or misused.

    Runs asyncua's :class:`CertificateValidator` (validity period, application
    URI in subjectAltName, key usage, clientAuth) and then requires the exact
    certificate to be one of the pinned ones.
    """

    def __init__(self, client_certificates_der: Iterable[bytes]) -> None:
        self._pinned = tuple(bytes(c) for c in client_certificates_der)
        self._inner = CertificateValidator(
            CertificateValidatorOptions.EXT_VALIDATION | CertificateValidatorOptions.PEER_CLIENT
        )

    async def __call__(
        self, cert: x509.Certificate, app_description: ua.ApplicationDescription
    ) -> None:
        """Raise ``ServiceError(BadCertificateUntrusted)`` unless ``cert`` is pinned and valid."""
        await self._inner.validate(cert, app_description)
        der = cert.public_bytes(serialization.Encoding.DER)
        if not any(hmac.compare_digest(der, pin) for pin in self._pinned):
            logger.warning(
                "refused an unpinned client certificate (%s)", cert.subject.rfc4514_string()
            )
            raise ServiceError(ua.StatusCodes.BadCertificateUntrusted)


_ALLOWED_REQUESTS = (
    ua.ObjectIds.CreateSessionRequest_Encoding_DefaultBinary,
    ua.ObjectIds.CloseSessionRequest_Encoding_DefaultBinary,
    ua.ObjectIds.ActivateSessionRequest_Encoding_DefaultBinary,
    ua.ObjectIds.GetEndpointsRequest_Encoding_DefaultBinary,
    ua.ObjectIds.FindServersRequest_Encoding_DefaultBinary,
    ua.ObjectIds.ReadRequest_Encoding_DefaultBinary,
    ua.ObjectIds.BrowseRequest_Encoding_DefaultBinary,
    ua.ObjectIds.BrowseNextRequest_Encoding_DefaultBinary,
    ua.ObjectIds.TranslateBrowsePathsToNodeIdsRequest_Encoding_DefaultBinary,
    ua.ObjectIds.CreateSubscriptionRequest_Encoding_DefaultBinary,
    ua.ObjectIds.ModifySubscriptionRequest_Encoding_DefaultBinary,
    ua.ObjectIds.DeleteSubscriptionsRequest_Encoding_DefaultBinary,
    ua.ObjectIds.CreateMonitoredItemsRequest_Encoding_DefaultBinary,
    ua.ObjectIds.ModifyMonitoredItemsRequest_Encoding_DefaultBinary,
    ua.ObjectIds.DeleteMonitoredItemsRequest_Encoding_DefaultBinary,
    ua.ObjectIds.SetMonitoringModeRequest_Encoding_DefaultBinary,
    ua.ObjectIds.SetPublishingModeRequest_Encoding_DefaultBinary,
    ua.ObjectIds.PublishRequest_Encoding_DefaultBinary,
    ua.ObjectIds.RepublishRequest_Encoding_DefaultBinary,
    ua.ObjectIds.CloseSecureChannelRequest_Encoding_DefaultBinary,
    ua.ObjectIds.CallRequest_Encoding_DefaultBinary,
    ua.ObjectIds.RegisterNodesRequest_Encoding_DefaultBinary,
    ua.ObjectIds.UnregisterNodesRequest_Encoding_DefaultBinary,
)


_OPERATE_ONLY = (ua.ObjectIds.CallRequest_Encoding_DefaultBinary,)


class ControllerRuleset(SimpleRoleRuleset):  # type: ignore[misc]
    """The daemon's user reads, browses, subscribes and calls; operators only read; nobody writes.

    A refused request is answered ``BadUserAccessDenied`` as the service result.
    """

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._allowed = frozenset(ua.NodeId(i) for i in _ALLOWED_REQUESTS)
        self._operate = frozenset(ua.NodeId(i) for i in _OPERATE_ONLY)

    def check_validity(self, user: User, action_type_id: ua.NodeId, body: Any) -> bool:
        """Whether ``user`` may send a request of type ``action_type_id``."""
        if user is None or user.role != UserRole.User:
            return False
        if isinstance(user, ReadOnlyUser) and action_type_id in self._operate:
            return False
        return action_type_id in self._allowed
