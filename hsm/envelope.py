"""DSSE envelopes: signing with any :class:`~hsm.base.Signer`, strict parsing.

The envelope format, the pre-authentication encoding (PAE) and verification are
securesystemslib's maintained DSSE implementation (:mod:`securesystemslib.dsse`);
this module adapts our :class:`~hsm.base.Signer` seam to it and adds what a
controller needs on top: an immutable value type and a strict parser of
untrusted bytes.

securesystemslib's own PKCS#11 signer (``HSMSigner``) is not used: it reads the
module path from ``PYKCS11LIB``, opens a new session and logs in for every
signature, and finds keys by a numeric CKA_ID. We keep one logged-in session per
process behind one lock (:class:`hsm.signer.HsmSigner`) and only hand
securesystemslib a thin adapter whose ``sign`` calls it.

Wire format (DSSE v1 JSON envelope, serialised canonically: sorted keys, no
whitespace)::

    {"payload": "<base64>", "payloadType": "application/vnd.signaltwin.timing+json",
     "signatures": [{"keyid": "<sha256 hex of the SPKI DER>", "sig": "<base64 DER ECDSA>"}]}
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from typing import Any

from securesystemslib import dsse
from securesystemslib.signer import Key, Signature, SSlibKey  # type: ignore[attr-defined]
from securesystemslib.signer import Signer as SslibSigner  # type: ignore[attr-defined]

from configs.digests import strict_json_loads
from configs.timing import MAX_DOCUMENT_BYTES, TimingConfiguration, canonical_json
from hsm.base import TIMING_PAYLOAD_TYPE, Signer
from hsm.errors import EnvelopeFormatError

__all__ = [
    "MAX_ENVELOPE_BYTES",
    "MAX_SIGNATURES",
    "Envelope",
    "EnvelopeSignature",
    "sign_envelope",
    "sign_timing",
    "sslib_key",
]

#: Largest envelope accepted from the wire: a maximal timing document in base64
#: plus room for signatures.
MAX_ENVELOPE_BYTES = MAX_DOCUMENT_BYTES * 4 // 3 + 64 * 1024
#: Most signatures one envelope may carry.
MAX_SIGNATURES = 16
_MAX_SIG_BYTES = 1024
_MAX_PAYLOAD_TYPE_CHARS = 256
_KEYID = re.compile(r"[0-9a-f]{64}")
_ECDSA_SCHEME = "ecdsa-sha2-nistp256"


@dataclass(frozen=True)
class EnvelopeSignature:
    """One DSSE signature: the signer's keyid and the DER ECDSA signature bytes."""

    keyid: str
    sig: bytes


@dataclass(frozen=True)
class Envelope:
    """A DSSE envelope (immutable).

    Attributes:
        payload: The signed bytes (a canonical timing configuration).
        payload_type: The DSSE payloadType, part of what is signed.
        signatures: One entry per signing key.
    """

    payload: bytes
    payload_type: str
    signatures: tuple[EnvelopeSignature, ...]

    def pae(self) -> bytes:
        """The DSSE pre-authentication encoding: the bytes each signature covers."""
        return self.to_sslib().pae()

    def to_sslib(self) -> dsse.Envelope:
        """The equivalent :class:`securesystemslib.dsse.Envelope` (a fresh, mutable copy)."""
        return dsse.Envelope(
            self.payload,
            self.payload_type,
            {s.keyid: Signature(s.keyid, s.sig.hex()) for s in self.signatures},
        )

    @classmethod
    def from_sslib(cls, envelope: dsse.Envelope) -> Envelope:
        """Freeze a :class:`securesystemslib.dsse.Envelope`."""
        return cls(
            payload=envelope.payload,
            payload_type=envelope.payload_type,
            signatures=tuple(
                EnvelopeSignature(keyid=s.keyid, sig=bytes.fromhex(s.signature))
                for s in envelope.signatures.values()
            ),
        )

    def to_dict(self) -> dict[str, Any]:
        """The DSSE JSON object (base64 payload and signatures)."""
        return self.to_sslib().to_dict()

    def to_json(self) -> bytes:
        """Serialise canonically (sorted keys, no whitespace, UTF-8)."""
        return canonical_json(self.to_dict())

    @classmethod
    def from_json(cls, data: bytes, *, max_bytes: int = MAX_ENVELOPE_BYTES) -> Envelope:
        """Parse untrusted envelope bytes strictly.

        Checks the size, that the bytes are UTF-8 JSON without duplicate keys or
        non-finite numbers, that the object has exactly ``payload``,
        ``payloadType`` and ``signatures``, that every base64 field is canonical
        standard base64, that each keyid is a sha256 hex digest, and that no
        keyid appears twice. It does not verify signatures
        (:func:`hsm.verify.verify_envelope` does).

        Raises:
            EnvelopeFormatError: naming the offending field.
        """
        if not isinstance(data, bytes | bytearray | memoryview):
            raise EnvelopeFormatError(f"envelope must be bytes, got {type(data).__name__}")
        if len(data) > max_bytes:
            raise EnvelopeFormatError(
                f"envelope is {len(data)} bytes; the limit is {max_bytes} bytes"
            )
        try:
            obj = strict_json_loads(bytes(data))
        except ValueError as e:
            raise EnvelopeFormatError(f"envelope is not valid JSON: {e}") from e
        return cls._from_obj(obj)

    @classmethod
    def _from_obj(cls, obj: object) -> Envelope:
        if not isinstance(obj, dict):
            raise EnvelopeFormatError(f"envelope must be a JSON object, got {type(obj).__name__}")
        expected = {"payload", "payloadType", "signatures"}
        if set(obj) != expected:
            missing = sorted(expected - set(obj))
            extra = sorted(set(obj) - expected)
            raise EnvelopeFormatError(
                f"envelope must have exactly the fields {sorted(expected)}"
                + (f"; missing {missing}" if missing else "")
                + (f"; unexpected {extra}" if extra else "")
            )
        payload = _b64_field(obj["payload"], "payload")
        if len(payload) > MAX_DOCUMENT_BYTES:
            raise EnvelopeFormatError(
                f"payload is {len(payload)} bytes; the limit is {MAX_DOCUMENT_BYTES}"
            )
        payload_type = obj["payloadType"]
        if not isinstance(payload_type, str) or not payload_type:
            raise EnvelopeFormatError("payloadType must be a non-empty string")
        if len(payload_type) > _MAX_PAYLOAD_TYPE_CHARS:
            raise EnvelopeFormatError(
                f"payloadType is {len(payload_type)} characters; the limit is "
                f"{_MAX_PAYLOAD_TYPE_CHARS}"
            )
        raw_sigs = obj["signatures"]
        if not isinstance(raw_sigs, list) or not raw_sigs:
            raise EnvelopeFormatError("signatures must be a non-empty JSON array")
        if len(raw_sigs) > MAX_SIGNATURES:
            raise EnvelopeFormatError(
                f"envelope has {len(raw_sigs)} signatures; the limit is {MAX_SIGNATURES}"
            )
        signatures: list[EnvelopeSignature] = []
        seen: set[str] = set()
        for index, item in enumerate(raw_sigs):
            where = f"signatures[{index}]"
            if not isinstance(item, dict) or set(item) != {"keyid", "sig"}:
                raise EnvelopeFormatError(
                    f"{where} must be an object with exactly the fields 'keyid' and 'sig'"
                )
            keyid = item["keyid"]
            if not isinstance(keyid, str) or not _KEYID.fullmatch(keyid):
                raise EnvelopeFormatError(
                    f"{where}.keyid must be 64 lowercase hex characters (sha256 of the "
                    "signer's SubjectPublicKeyInfo DER)"
                )
            if keyid in seen:
                raise EnvelopeFormatError(f"{where}.keyid {keyid} appears more than once")
            seen.add(keyid)
            sig = _b64_field(item["sig"], f"{where}.sig")
            if not 0 < len(sig) <= _MAX_SIG_BYTES:
                raise EnvelopeFormatError(
                    f"{where}.sig is {len(sig)} bytes; expected 1..{_MAX_SIG_BYTES}"
                )
            signatures.append(EnvelopeSignature(keyid=keyid, sig=sig))
        return cls(payload=payload, payload_type=payload_type, signatures=tuple(signatures))


class _SignerAdapter(SslibSigner):
    """Presents a :class:`hsm.base.Signer` as a securesystemslib signer."""

    def __init__(self, signer: Signer) -> None:
        self._signer = signer
        self._public_key = sslib_key(signer.public_key_pem(), keyid=signer.keyid)

    @property
    def public_key(self) -> Key:
        return self._public_key

    def sign(self, payload: bytes) -> Signature:
        return Signature(self._signer.keyid, self._signer.sign(payload).hex())

    @classmethod
    def from_priv_key_uri(
        cls, priv_key_uri: str, public_key: Key, secrets_handler: Any = None
    ) -> SslibSigner:
        raise NotImplementedError("construct hsm.signer.HsmSigner from HsmParams instead")


def sslib_key(public_key_pem: bytes, *, keyid: str) -> SSlibKey:
    """A securesystemslib ECDSA P-256 verification key with our keyid convention."""
    return SSlibKey(
        keyid=keyid,
        keytype="ecdsa",
        scheme=_ECDSA_SCHEME,
        keyval={"public": public_key_pem.decode("ascii")},
    )


def sign_envelope(
    signer: Signer, payload: bytes, payload_type: str = TIMING_PAYLOAD_TYPE
) -> Envelope:
    """Sign ``payload`` into a DSSE envelope with any :class:`~hsm.base.Signer`.

    Args:
        signer: The key (HSM or, in tests, software).
        payload: The bytes to sign, e.g. ``TimingConfiguration.canonical_bytes()``.
        payload_type: DSSE payloadType; signed together with the payload.

    Returns:
        An envelope with exactly one signature, by ``signer.keyid``.
    """
    envelope = dsse.Envelope(bytes(payload), payload_type, {})
    envelope.sign(_SignerAdapter(signer))
    return Envelope.from_sslib(envelope)


def sign_timing(signer: Signer, config: TimingConfiguration) -> Envelope:
    """Sign a timing configuration's canonical bytes (payloadType: the timing type)."""
    return sign_envelope(signer, config.canonical_bytes(), TIMING_PAYLOAD_TYPE)


def _b64_field(value: object, field: str) -> bytes:
    if not isinstance(value, str):
        raise EnvelopeFormatError(f"{field} must be a base64 string")
    try:
        decoded = base64.b64decode(value.encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error) as e:
        raise EnvelopeFormatError(f"{field} is not valid standard base64: {e}") from e
    if base64.b64encode(decoded).decode("ascii") != value:
        raise EnvelopeFormatError(f"{field} is not canonical base64 (padding or stray bits)")
    return decoded
