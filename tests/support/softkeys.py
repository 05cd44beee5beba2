"""A software ECDSA P-256 signer for tests of pure logic (never shipped).

Integration tests use the real SoftHSM2 signer from :mod:`hsm.signer`.
"""

from __future__ import annotations

import hashlib

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec


class SoftwareSigner:
    """Implements :class:`hsm.base.Signer` with an in-memory key."""

    def __init__(self) -> None:
        self._key = ec.generate_private_key(ec.SECP256R1())
        der = self._key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self._keyid = hashlib.sha256(der).hexdigest()

    @property
    def keyid(self) -> str:
        return self._keyid

    def public_key_pem(self) -> bytes:
        return self._key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def sign(self, data: bytes) -> bytes:
        return self._key.sign(data, ec.ECDSA(hashes.SHA256()))
