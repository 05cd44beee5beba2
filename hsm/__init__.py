"""HSM signing: PKCS#11 signer, DSSE envelopes, verification, token provisioning.

Verification (:func:`verify_envelope`) needs only public keys; signing needs a
PKCS#11 token (:class:`HsmSigner`) or any :class:`Signer`. See docs/hsm.md.
"""

from __future__ import annotations

from hsm.base import TIMING_PAYLOAD_TYPE, Signer
from hsm.enrolment import KeyReport, TokenInfo, enrolment_record
from hsm.envelope import (
    MAX_ENVELOPE_BYTES,
    Envelope,
    EnvelopeSignature,
    sign_envelope,
    sign_timing,
)
from hsm.errors import (
    EnvelopeFormatError,
    HsmModuleError,
    KeyNotHsmGeneratedError,
    PinBackoffError,
    PinError,
    PinFileError,
    SignatureMismatchError,
    SigningKeyNotFoundError,
    TokenNotFoundError,
    TokenUnavailableError,
)
from hsm.params import HsmParams, read_pin
from hsm.provision import (
    ProvisionResult,
    SoftHsmLayout,
    TokenReport,
    ensure_signing_key,
    inspect_token,
    provision_softhsm,
)
from hsm.signer import HsmSigner
from hsm.verify import (
    VerificationKey,
    VerifiedEnvelope,
    keyid_of,
    load_public_key,
    verify_envelope,
    verify_timing,
)

__all__ = [
    "MAX_ENVELOPE_BYTES",
    "TIMING_PAYLOAD_TYPE",
    "Envelope",
    "EnvelopeFormatError",
    "EnvelopeSignature",
    "HsmModuleError",
    "HsmParams",
    "HsmSigner",
    "KeyNotHsmGeneratedError",
    "KeyReport",
    "PinBackoffError",
    "PinError",
    "PinFileError",
    "ProvisionResult",
    "SignatureMismatchError",
    "Signer",
    "SigningKeyNotFoundError",
    "SoftHsmLayout",
    "TokenInfo",
    "TokenNotFoundError",
    "TokenReport",
    "TokenUnavailableError",
    "VerificationKey",
    "VerifiedEnvelope",
    "enrolment_record",
    "ensure_signing_key",
    "inspect_token",
    "keyid_of",
    "load_public_key",
    "provision_softhsm",
    "read_pin",
    "sign_envelope",
    "sign_timing",
    "verify_envelope",
    "verify_timing",
]
