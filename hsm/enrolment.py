"""What the token says about itself and the key: plain data, and the ledger record.

The key-enrolment record is appended to the ledger when a signing key is first
used, so an auditor can see which key signed, on which token, with which
attributes, and how much assurance those attributes carry.
"""

from __future__ import annotations

import base64
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from configs.errors import SigningError

__all__ = [
    "REQUIRED_KEY_ATTRIBUTES",
    "SOFTWARE_TOKEN_ASSURANCE",
    "KeyReport",
    "TokenInfo",
    "enrolment_record",
    "is_software_token",
]

#: Attributes a signing key must have (all True) to be accepted at load.
REQUIRED_KEY_ATTRIBUTES = ("CKA_LOCAL", "CKA_NEVER_EXTRACTABLE", "CKA_ALWAYS_SENSITIVE")
SOFTWARE_TOKEN_ASSURANCE = (
    "software-token: attributes enforced by SoftHSM in software, no hardware attestation"
)
ENROLMENT_SCHEMA = "signaltwin.hsm-enrolment/v1"


@dataclass(frozen=True)
class TokenInfo:
    """``CK_TOKEN_INFO`` of the token and the module that serves it."""

    label: str
    manufacturer: str
    model: str
    serial: str
    firmware_version: str
    hardware_version: str
    module: str
    library_description: str
    library_version: str

    def to_dict(self) -> dict[str, str]:
        """As a JSON-ready mapping."""
        return asdict(self)


@dataclass(frozen=True)
class KeyReport:
    """The signing key as found on the token.

    Attributes:
        key_label: CKA_LABEL of the key pair.
        key_id: CKA_ID (hex).
        keyid: Hex sha256 of the public key's SubjectPublicKeyInfo DER.
        public_key_pem: The public key (SubjectPublicKeyInfo PEM).
        attributes: The private key's boolean attributes by PKCS#11 name
            (``None`` where the token does not report one).
    """

    key_label: str
    key_id: str
    keyid: str
    public_key_pem: bytes
    attributes: dict[str, bool | None]

    @property
    def problems(self) -> tuple[str, ...]:
        """Why this key must not sign timing plans (empty when acceptable)."""
        found: list[str] = []
        for name in REQUIRED_KEY_ATTRIBUTES:
            value = self.attributes.get(name)
            if value is not True:
                state = "not reported by the token" if value is None else "false"
                found.append(f"{name} is {state}")
        if self.attributes.get("CKA_SIGN") is False:
            found.append("CKA_SIGN is false")
        return tuple(found)


def is_software_token(token: TokenInfo) -> bool:
    """Whether the token is SoftHSM (attributes enforced in software only)."""
    return "softhsm" in (token.manufacturer + " " + token.model).lower()


def enrolment_record(
    token: TokenInfo,
    key: KeyReport,
    *,
    attestation_certificate: Path | None = None,
    enrolled_at: datetime | None = None,
) -> dict[str, Any]:
    """Build the key-enrolment record for the ledger.

    Args:
        token: The token's information.
        key: The signing key's report.
        attestation_certificate: A vendor key-attestation certificate (PEM or
            DER file) from configuration; embedded as base64 DER with its
            subject, issuer and sha256. Ignored (with a note) for SoftHSM.
        enrolled_at: When the key was enrolled (defaults to now, UTC).

    Returns:
        A JSON-ready mapping: schema, time, keyid, public key PEM, token info,
        key attributes, policy verdict, assurance statement and attestation.

    Raises:
        SigningError: the attestation certificate cannot be read or parsed.
    """
    when = (enrolled_at or datetime.now(UTC)).astimezone(UTC)
    attestation: dict[str, Any] | None = None
    if is_software_token(token):
        assurance = SOFTWARE_TOKEN_ASSURANCE
    elif attestation_certificate is not None:
        attestation = _attestation(attestation_certificate)
        assurance = (
            "hardware-token: vendor key-attestation certificate attached; verify it "
            "against the vendor's attestation root and compare its public key to keyid"
        )
    else:
        assurance = (
            "hardware-token: attributes as reported by the token; no attestation "
            "certificate configured ([hsm] attestation_certificate)"
        )
    return {
        "schema": ENROLMENT_SCHEMA,
        "enrolled_at": when.isoformat().replace("+00:00", "Z"),
        "keyid": key.keyid,
        "public_key_pem": key.public_key_pem.decode("ascii"),
        "algorithm": "ECDSA P-256, SHA-256 on the host, CKM_ECDSA in the token",
        "key_label": key.key_label,
        "key_id": key.key_id,
        "token": token.to_dict(),
        "key_attributes": dict(sorted(key.attributes.items())),
        "policy": {
            "required": list(REQUIRED_KEY_ATTRIBUTES),
            "accepted": not key.problems,
            "problems": list(key.problems),
        },
        "assurance": assurance,
        "attestation": attestation,
    }


def _attestation(path: Path) -> dict[str, Any]:
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise SigningError(
            f"cannot read attestation certificate {path}: {e.strerror}; fix "
            "[hsm] attestation_certificate"
        ) from e
    try:
        cert = (
            x509.load_pem_x509_certificate(raw)
            if b"-----BEGIN" in raw
            else x509.load_der_x509_certificate(raw)
        )
    except ValueError as e:
        raise SigningError(
            f"attestation certificate {path} is not a PEM or DER X.509 certificate: {e}"
        ) from e
    der = cert.public_bytes(serialization.Encoding.DER)
    return {
        "path": str(path),
        "subject": cert.subject.rfc4514_string(),
        "issuer": cert.issuer.rfc4514_string(),
        "sha256": cert.fingerprint(hashes.SHA256()).hex(),
        "der_base64": base64.b64encode(der).decode("ascii"),
    }
