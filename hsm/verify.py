"""Verify a signed envelope with public keys only: no HSM, no PKCS#11.

Controllers run this before they accept a timing plan; auditors run it over the
ledger. The bytes come from the network or from disk, so they are parsed
strictly (:meth:`hsm.envelope.Envelope.from_json`) before any signature is
checked, and every failure is a :class:`~configs.errors.SigningError` that says
what was wrong.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from securesystemslib.exceptions import VerificationError
from securesystemslib.signer import Key, SSlibKey  # type: ignore[attr-defined]

from configs.digests import sha256_hex
from configs.errors import ConfigError
from configs.timing import TimingConfiguration
from hsm.base import TIMING_PAYLOAD_TYPE
from hsm.envelope import MAX_ENVELOPE_BYTES, Envelope, sslib_key
from hsm.errors import EnvelopeFormatError, SignatureMismatchError

__all__ = [
    "VerificationKey",
    "VerifiedEnvelope",
    "keyid_of",
    "load_public_key",
    "verify_envelope",
    "verify_timing",
]


@dataclass(frozen=True)
class VerificationKey:
    """A trusted ECDSA P-256 public key and its keyid."""

    keyid: str
    pem: bytes

    def to_sslib(self) -> SSlibKey:
        """The securesystemslib key that verifies DSSE signatures by this key."""
        return sslib_key(self.pem, keyid=self.keyid)


@dataclass(frozen=True)
class VerifiedEnvelope:
    """An envelope whose signatures met the threshold.

    Attributes:
        payload: The signed payload bytes (now trustworthy).
        payload_type: Its DSSE payloadType.
        keyids: The trusted keys whose signatures verified.
        envelope: The parsed envelope.
    """

    payload: bytes
    payload_type: str
    keyids: tuple[str, ...]
    envelope: Envelope


def keyid_of(public_key_pem: bytes) -> str:
    """Hex sha256 of the SubjectPublicKeyInfo DER of a PEM public key.

    Raises:
        SignatureMismatchError: the PEM is not an ECDSA P-256 public key.
    """
    return load_public_key(public_key_pem).keyid


def load_public_key(source: bytes | str | Path, *, name: str | None = None) -> VerificationKey:
    """Load a trusted ECDSA P-256 public key from PEM bytes/text or a PEM file.

    Args:
        source: PEM bytes, PEM text, or the path of a PEM file.
        name: How to call the key in error messages (defaults to the path).

    Raises:
        SignatureMismatchError: unreadable, not PEM, or not an EC P-256 key.
    """
    if isinstance(source, Path):
        label = name or str(source)
        try:
            pem = source.read_bytes()
        except OSError as e:
            raise SignatureMismatchError(
                f"cannot read public key {label}: {e.strerror}; export it with "
                "'signaltwin hsm info --export-public-key FILE'"
            ) from e
    else:
        label = name or "public key"
        pem = source.encode("ascii") if isinstance(source, str) else bytes(source)
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError) as e:
        raise SignatureMismatchError(f"{label} is not a PEM public key: {e}") from e
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise SignatureMismatchError(f"{label} is not an ECDSA P-256 (secp256r1) public key")
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    canonical_pem = key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return VerificationKey(keyid=sha256_hex(der), pem=canonical_pem)


def verify_envelope(
    data: bytes | Envelope,
    keys: Iterable[VerificationKey | bytes],
    *,
    payload_type: str | None = TIMING_PAYLOAD_TYPE,
    threshold: int = 1,
    max_bytes: int = MAX_ENVELOPE_BYTES,
) -> VerifiedEnvelope:
    """Verify a DSSE envelope against trusted public keys.

    Args:
        data: Untrusted envelope bytes (parsed strictly) or a parsed envelope.
        keys: The trusted keys (:class:`VerificationKey` or PEM bytes).
        payload_type: The payloadType the caller expects; ``None`` accepts any.
        threshold: How many distinct trusted keys must have signed.
        max_bytes: Size limit for ``data``.

    Returns:
        The verified payload and the keyids that signed it.

    Raises:
        EnvelopeFormatError: malformed envelope or unexpected payloadType.
        SignatureMismatchError: no trusted key signed it, or a signature by a
            trusted key does not verify (payload or signature altered), or
            fewer than ``threshold`` trusted keys signed.
    """
    envelope = data if isinstance(data, Envelope) else Envelope.from_json(data, max_bytes=max_bytes)
    if payload_type is not None and envelope.payload_type != payload_type:
        raise EnvelopeFormatError(
            f"payloadType is {envelope.payload_type!r}; expected {payload_type!r}"
        )
    trusted = {
        k.keyid: k
        for k in (key if isinstance(key, VerificationKey) else load_public_key(key) for key in keys)
    }
    if threshold < 1:
        raise SignatureMismatchError(f"threshold must be at least 1, got {threshold}")
    if len(trusted) < threshold:
        raise SignatureMismatchError(
            f"{len(trusted)} trusted key(s) given, fewer than the threshold {threshold}; "
            "provision more public keys"
        )
    signed_by = [s.keyid for s in envelope.signatures]
    known = [k for k in signed_by if k in trusted]
    if not known:
        raise SignatureMismatchError(
            f"envelope is signed by keyid(s) {', '.join(signed_by)}, none of which is "
            f"trusted here (trusted: {', '.join(sorted(trusted))}); install the signer's "
            "public key or check that the envelope comes from this deployment"
        )
    sslib_keys: list[Key] = [trusted[k].to_sslib() for k in known]
    try:
        accepted = envelope.to_sslib().verify(sslib_keys, min(threshold, len(sslib_keys)))
    except VerificationError as e:
        raise SignatureMismatchError(
            f"signature by trusted keyid(s) {', '.join(known)} does not verify over the "
            "payload and payloadType: the envelope was altered or signed with another key"
        ) from e
    except ValueError as e:
        raise SignatureMismatchError(f"cannot verify envelope: {e}") from e
    if len(accepted) < threshold:
        raise SignatureMismatchError(
            f"{len(accepted)} trusted signature(s) verified; the threshold is {threshold}"
        )
    return VerifiedEnvelope(
        payload=envelope.payload,
        payload_type=envelope.payload_type,
        keyids=tuple(sorted(accepted)),
        envelope=envelope,
    )


def verify_timing(
    data: bytes | Envelope,
    keys: Iterable[VerificationKey | bytes],
    *,
    threshold: int = 1,
) -> tuple[TimingConfiguration, VerifiedEnvelope]:
    """Verify a signed timing configuration and parse its payload.

    The payload must be the canonical serialisation of the configuration (what
    the daemon signs), so that its digest is the one recorded in the ledger.

    Raises:
        EnvelopeFormatError: malformed envelope, wrong payloadType, or a payload
            that is not a canonical, valid timing configuration.
        SignatureMismatchError: see :func:`verify_envelope`.
    """
    verified = verify_envelope(data, keys, payload_type=TIMING_PAYLOAD_TYPE, threshold=threshold)
    try:
        config = TimingConfiguration.parse(verified.payload)
    except ConfigError as e:
        raise EnvelopeFormatError(f"signed payload is not a valid timing configuration: {e}") from e
    if config.canonical_bytes() != verified.payload:
        raise EnvelopeFormatError(
            "signed payload is not the canonical serialisation of its timing configuration "
            "(sorted keys, no whitespace); sign TimingConfiguration.canonical_bytes()"
        )
    return config, verified
