"""The PKCS#11 signer: one module load, one login, one session, one lock.

:class:`HsmSigner` implements :class:`hsm.base.Signer` with an ECDSA P-256 key
that was generated inside a PKCS#11 token and cannot leave it. SHA-256 is
computed on the host and the token performs raw ``CKM_ECDSA`` on the digest; the
token's ``r || s`` output is converted to DER.

Life of a signer
    Opening loads the module (once per process, see :mod:`hsm.token`), finds the
    token by label, reads the PIN (file or systemd credential), logs in, finds
    the key pair by label, refuses a key that was not generated in the token
    (``CKA_LOCAL``, ``CKA_NEVER_EXTRACTABLE`` and ``CKA_ALWAYS_SENSITIVE`` must
    all be true), and checks with one test signature that the private and
    public key belong together. The session is then kept.

    Every call holds the module's one lock, so any number of threads may share
    a signer. When a call fails with a token error (session lost, token
    removed, device error) the signer closes the session, opens a new one and
    retries once; if the token cannot be reopened it re-initialises the module
    and tries again; if that fails too the call raises
    :class:`~hsm.errors.TokenUnavailableError` and the next call tries again.

    A PIN error (CKR_PIN_INCORRECT / _LOCKED / _EXPIRED) is remembered: no
    login with the same PIN is tried again for ``pin_backoff_s`` seconds,
    doubling with each further failure up to ``pin_backoff_max_s``; meanwhile
    every call raises :class:`~hsm.errors.PinBackoffError`. A hardware token
    locks its PIN after a few wrong logins, so retrying the rejected PIN on every
    signature would lock it. A PIN file that now holds another PIN (an operator
    fixed it) gets one login at once.

DSSE
    Envelopes are made by securesystemslib's maintained DSSE implementation
    (:mod:`securesystemslib.dsse`) through :func:`hsm.envelope.sign_envelope`.
    securesystemslib's own ``HSMSigner`` is not used because it opens a new
    session and logs in for every signature (no held session, no shared lock),
    takes the module from the ``PYKCS11LIB`` environment variable, and looks
    keys up by a numeric CKA_ID.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from pkcs11.exceptions import PKCS11Error

from configs.digests import sha256_hex
from configs.errors import SigningError
from hsm.base import TIMING_PAYLOAD_TYPE
from hsm.enrolment import KeyReport, TokenInfo, enrolment_record
from hsm.envelope import Envelope, sign_envelope
from hsm.errors import (
    HsmModuleError,
    KeyNotHsmGeneratedError,
    PinBackoffError,
    PinError,
    SigningKeyNotFoundError,
    TokenNotFoundError,
    TokenUnavailableError,
)
from hsm.params import HsmParams, read_pin
from hsm.token import (
    ModuleLease,
    acquire_module,
    find_key_pair,
    find_token,
    key_report,
    open_session,
    raw_to_der,
    sign_digest,
    token_info,
)

__all__ = ["HsmSigner"]

logger = logging.getLogger(__name__)


class HsmSigner:
    """Signs with an ECDSA P-256 key held in a PKCS#11 token (a :class:`hsm.base.Signer`).

    Use as a context manager or call :meth:`close`. Thread-safe.

    Raises (from the constructor):
        HsmModuleError: module missing or not loadable.
        TokenNotFoundError: no token with the label.
        PinFileError: PIN file/credential missing or empty.
        PinError: the token rejected the PIN.
        SigningKeyNotFoundError: no (unique) EC P-256 key pair with the label.
        KeyNotHsmGeneratedError: the key was imported or was ever extractable.
    """

    def __init__(self, params: HsmParams, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._params = params
        self._clock = clock
        self._pin_failures = 0
        self._pin_retry_at = 0.0
        self._rejected_pin = ""  # sha256 of the PIN the token last rejected
        self._lease: ModuleLease = acquire_module(params.module, params.softhsm_conf)
        self._session: Any = None
        self._private_key: Any = None
        self._closed = False
        try:
            with self._lease.lock:
                report, info = self._open()
        except PKCS11Error as e:
            self._lease.release()
            raise TokenUnavailableError(
                f"token {params.token_label!r} in module {params.module} failed while "
                f"opening the signer ({type(e).__name__}: {e}); check the token is present "
                "and initialised ('signaltwin hsm info')"
            ) from e
        except BaseException:
            self._lease.release()
            raise
        self._report: KeyReport = report
        self._token_info: TokenInfo = info
        logger.info(
            "HSM signer ready: token %r key %r keyid %s",
            params.token_label,
            params.key_label,
            report.keyid,
        )

    @classmethod
    def open(cls, params: HsmParams) -> HsmSigner:
        """Open a signer (same as the constructor)."""
        return cls(params)

    # -- the Signer protocol -------------------------------------------------

    @property
    def keyid(self) -> str:
        """Hex sha256 of the public key's SubjectPublicKeyInfo DER."""
        return self._report.keyid

    def public_key_pem(self) -> bytes:
        """The public key as PEM (SubjectPublicKeyInfo)."""
        return self._report.public_key_pem

    def sign(self, data: bytes) -> bytes:
        """Return the DER ECDSA signature over SHA-256(``data``), made in the token.

        Raises:
            TokenUnavailableError: the token failed and could not be reopened.
            SigningError: the signer is closed, or another token failure.
        """
        digest = hashlib.sha256(data).digest()
        with self._lease.lock:
            if self._closed:
                raise SigningError("HSM signer is closed; open a new HsmSigner")
            if self._session is None:
                self._reopen(None)
            try:
                raw = sign_digest(self._private_key, digest)
            except PKCS11Error as first:
                logger.warning(
                    "HSM sign failed (%s); reopening the session on token %r",
                    type(first).__name__,
                    self._params.token_label,
                )
                self._reopen(first)
                try:
                    raw = sign_digest(self._private_key, digest)
                except PKCS11Error as second:
                    self._drop_session()
                    raise TokenUnavailableError(
                        f"token {self._params.token_label!r} failed to sign after reopening "
                        f"the session ({type(second).__name__}); check the token/module "
                        f"{self._params.module}"
                    ) from second
        return raw_to_der(raw)

    # -- more ----------------------------------------------------------------

    def sign_envelope(self, payload: bytes, payload_type: str = TIMING_PAYLOAD_TYPE) -> Envelope:
        """Sign ``payload`` (e.g. canonical timing bytes) into a DSSE envelope."""
        return sign_envelope(self, payload, payload_type)

    @property
    def params(self) -> HsmParams:
        """Where the key lives."""
        return self._params

    @property
    def token_info(self) -> TokenInfo:
        """The token's information as read at open."""
        return self._token_info

    @property
    def key_report(self) -> KeyReport:
        """The key's identity and attributes as read at open."""
        return self._report

    def enrolment_record(self, attestation_certificate: Path | None = None) -> dict[str, Any]:
        """The ledger's key-enrolment record for this key (see :func:`hsm.enrolment_record`)."""
        return enrolment_record(
            self._token_info,
            self._report,
            attestation_certificate=attestation_certificate or self._params.attestation_certificate,
        )

    def close(self) -> None:
        """Log out, close the session and release the module (idempotent)."""
        with self._lease.lock:
            if self._closed:
                return
            self._closed = True
            self._drop_session()
        self._lease.release()

    def __enter__(self) -> HsmSigner:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        p = self._params
        return f"HsmSigner(token={p.token_label!r}, key={p.key_label!r}, keyid={self.keyid[:16]})"

    # -- internals (call with the module lock held) --------------------------

    def _open(self) -> tuple[KeyReport, TokenInfo]:
        p = self._params
        token = find_token(self._lease, p.token_label)
        pin = read_pin(p.pin_file)
        session = self._login(token, pin)
        try:
            private_key, public_key = find_key_pair(session, p.key_label, p.token_label)
            report = key_report(private_key, public_key, p.key_label)
            if report.problems:
                raise KeyNotHsmGeneratedError(
                    f"key {p.key_label!r} on token {p.token_label!r} is refused as a signing "
                    f"key: {'; '.join(report.problems)}. Only a key generated inside the "
                    "token and never extractable may sign; generate one with "
                    "'signaltwin hsm init'"
                )
            previous = getattr(self, "_report", None)
            if previous is not None and previous.keyid != report.keyid:
                raise SigningKeyNotFoundError(
                    f"key {p.key_label!r} on token {p.token_label!r} changed while the "
                    f"signer ran (keyid {previous.keyid} became {report.keyid}); restart "
                    "to enrol the new key"
                )
            _self_test(private_key, report)
            info = token_info(self._lease, token)
        except BaseException:
            _close_quietly(session)
            raise
        self._session = session
        self._private_key = private_key
        return report, info

    def _login(self, token: Any, pin: str) -> Any:
        """Log in, unless a recent PIN error still holds logins back (exponential, capped)."""
        p = self._params
        now = self._clock()
        if now < self._pin_retry_at and sha256_hex(pin.encode("utf-8")) == self._rejected_pin:
            raise PinBackoffError(
                f"token {p.token_label!r} rejected the PIN {self._pin_failures} time(s); no "
                f"login is tried for another {self._pin_retry_at - now:.0f} s (a hardware "
                f"token locks its PIN after a few failures); put the right PIN in "
                f"{p.describe_pin()} (it is tried at once) or wait"
            )
        try:
            session = open_session(token, pin, where=p.describe_pin())
        except PinError:
            self._pin_failures += 1
            delay = min(p.pin_backoff_s * 2 ** (self._pin_failures - 1), p.pin_backoff_max_s)
            self._pin_retry_at = now + delay
            self._rejected_pin = sha256_hex(pin.encode("utf-8"))
            logger.error(
                "token %r rejected the PIN (%d failure(s)); next login in %.0f s",
                p.token_label,
                self._pin_failures,
                delay,
            )
            raise
        self._pin_failures = 0
        self._pin_retry_at = 0.0
        self._rejected_pin = ""
        return session

    def _reopen(self, cause: BaseException | None) -> None:
        self._drop_session()
        try:
            self._open()
            return
        except (PinError, KeyNotHsmGeneratedError, SigningKeyNotFoundError):
            raise
        except (PKCS11Error, TokenNotFoundError, HsmModuleError) as e:
            logger.warning(
                "reopening token %r failed (%s); re-initialising module %s",
                self._params.token_label,
                type(e).__name__,
                self._params.module,
            )
        try:
            self._lease.reinitialize()
            self._open()
        except (PinError, KeyNotHsmGeneratedError, SigningKeyNotFoundError):
            raise
        except (PKCS11Error, SigningError) as e:
            reason = type(cause).__name__ if cause is not None else "no open session"
            raise TokenUnavailableError(
                f"token {self._params.token_label!r} is unavailable ({reason}; reopening "
                f"failed: {e or type(e).__name__}); check that the token is present"
                + (
                    f" and SoftHSM's token directory in {self._params.softhsm_conf} exists"
                    if self._params.softhsm_conf is not None
                    else ""
                )
                + "; the next signature will try again"
            ) from e

    def _drop_session(self) -> None:
        session, self._session, self._private_key = self._session, None, None
        if session is not None:
            _close_quietly(session)


def _close_quietly(session: Any) -> None:
    with contextlib.suppress(PKCS11Error):
        session.close()


def _self_test(private_key: Any, report: KeyReport) -> None:
    """Sign a random digest and verify it with the public key read from the token."""
    digest_input = os.urandom(32)
    raw = sign_digest(private_key, hashlib.sha256(digest_input).digest())
    public = serialization.load_pem_public_key(report.public_key_pem)
    if not isinstance(public, ec.EllipticCurvePublicKey):
        raise SigningKeyNotFoundError(f"key {report.key_label!r} is not an EC key")
    try:
        public.verify(raw_to_der(raw), digest_input, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature as e:
        raise SigningKeyNotFoundError(
            f"the private and public keys labelled {report.key_label!r} do not belong "
            "together (a test signature does not verify); remove the stray object"
        ) from e
