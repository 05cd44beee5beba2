"""The signing seam shared by the ledger, the cycle and the tests."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

__all__ = ["TIMING_PAYLOAD_TYPE", "Signer"]

#: DSSE payloadType of a signed timing configuration.
TIMING_PAYLOAD_TYPE = "application/vnd.signaltwin.timing+json"


@runtime_checkable
class Signer(Protocol):
    """Signs bytes with an ECDSA P-256 key (SHA-256 on the host).

    ``sign`` returns the DER-encoded ECDSA signature over SHA-256(data).
    ``keyid`` is the hex sha256 of the public key's SubjectPublicKeyInfo DER.
    """

    @property
    def keyid(self) -> str:
        """Hex sha256 of the public key's SubjectPublicKeyInfo DER."""
        ...

    def public_key_pem(self) -> bytes:
        """The public key as PEM (SubjectPublicKeyInfo)."""
        ...

    def sign(self, data: bytes) -> bytes:
        """Return the DER ECDSA signature over SHA-256(``data``)."""
        ...
