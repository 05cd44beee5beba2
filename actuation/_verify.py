"""Adapter from the controller's checks to :mod:`hsm.verify` (the one DSSE implementation).

The controller needs finer answers than "verifies or not" (the contract has
separate status codes for a malformed envelope, a wrong payloadType, an unknown
key and a bad signature), so this module parses first, classifies, and only then
hands the envelope to :func:`hsm.verify.verify_envelope`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from actuation.contract import PlanStatus
from configs.errors import SigningError
from hsm.base import TIMING_PAYLOAD_TYPE
from hsm.envelope import MAX_ENVELOPE_BYTES, Envelope
from hsm.verify import VerificationKey, load_public_key, verify_envelope

__all__ = ["EnvelopeRejected", "TrustedKeys", "open_envelope"]


class EnvelopeRejected(Exception):
    """The envelope is refused, with the contract status and a message."""

    def __init__(self, status: PlanStatus, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class TrustedKeys:
    """The signing public keys a controller is provisioned with."""

    keys: tuple[VerificationKey, ...]

    @classmethod
    def from_pem(cls, pems: Iterable[bytes]) -> TrustedKeys:
        """Load PEM public keys (raises ``SigningError`` for a bad one)."""
        return cls(tuple(load_public_key(p) for p in pems))

    @property
    def keyids(self) -> frozenset[str]:
        """The keyids of the trusted keys."""
        return frozenset(k.keyid for k in self.keys)


def open_envelope(data: bytes, trusted: TrustedKeys) -> bytes:
    """Verify an untrusted envelope and return its payload.

    Raises:
        EnvelopeRejected: with MALFORMED_ENVELOPE, WRONG_PAYLOAD_TYPE,
            UNKNOWN_KEY or BAD_SIGNATURE.
    """
    if len(data) > MAX_ENVELOPE_BYTES:
        raise EnvelopeRejected(
            PlanStatus.MALFORMED_ENVELOPE,
            f"envelope is {len(data)} bytes; the limit is {MAX_ENVELOPE_BYTES}",
        )
    try:
        envelope = Envelope.from_json(bytes(data))
    except SigningError as e:
        raise EnvelopeRejected(PlanStatus.MALFORMED_ENVELOPE, f"malformed envelope: {e}") from e
    except Exception as e:  # noqa: BLE001 - untrusted bytes: any parser failure is "malformed"
        raise EnvelopeRejected(PlanStatus.MALFORMED_ENVELOPE, f"malformed envelope: {e!r}") from e
    if envelope.payload_type != TIMING_PAYLOAD_TYPE:
        raise EnvelopeRejected(
            PlanStatus.WRONG_PAYLOAD_TYPE,
            f"payloadType is {envelope.payload_type[:80]!r}; expected {TIMING_PAYLOAD_TYPE!r}",
        )
    known = trusted.keyids
    signed_by = [s.keyid for s in envelope.signatures]
    if not any(k in known for k in signed_by):
        raise EnvelopeRejected(
            PlanStatus.UNKNOWN_KEY,
            f"signed by keyid(s) {', '.join(k[:16] for k in signed_by) or '(none)'}; "
            "none is provisioned on this controller",
        )
    try:
        verified = verify_envelope(envelope, trusted.keys, payload_type=TIMING_PAYLOAD_TYPE)
    except SigningError as e:
        raise EnvelopeRejected(PlanStatus.BAD_SIGNATURE, f"bad signature: {e}") from e
    return verified.payload
