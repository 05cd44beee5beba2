"""Signature checks with trusted public keys only: checkpoints and deployment envelopes."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from configs.digests import canonical_json, sha256_hex
from configs.errors import SigningError
from controller.ledger.checkpoints import Checkpoint
from hsm.base import TIMING_PAYLOAD_TYPE
from hsm.verify import VerificationKey, load_public_key, verify_envelope

__all__ = [
    "SignatureStatus",
    "load_keys",
    "verify_checkpoint_signature",
    "verify_deployment",
]


@dataclass(frozen=True)
class SignatureStatus:
    """Whether a deployment's envelope verified, and by which key."""

    ok: bool
    keyid: str | None
    message: str


def load_keys(paths: Iterable[str | Path]) -> list[VerificationKey]:
    """Load trusted ECDSA P-256 public keys from PEM files.

    Raises:
        SigningError: a file is unreadable or not an EC P-256 public key.
    """
    return [load_public_key(Path(p)) for p in paths]


def verify_checkpoint_signature(
    checkpoint: Checkpoint, keys: Sequence[VerificationKey]
) -> str | None:
    """The keyid of the trusted key whose signature over the checkpoint note verifies, or None."""
    candidates = [k for k in keys if k.keyid == checkpoint.keyid] or list(keys)
    for key in candidates:
        if _verify_der(key, checkpoint.note, checkpoint.signature):
            return key.keyid
    return None


def _verify_der(key: VerificationKey, data: bytes, signature: bytes) -> bool:
    # hsm.verify checks DSSE envelopes; a checkpoint is a plain signature over
    # the note bytes, so it is checked here with the same key material.
    public = serialization.load_pem_public_key(key.pem)
    if not isinstance(public, ec.EllipticCurvePublicKey):
        return False
    try:
        public.verify(signature, data, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError):
        return False
    return True


def verify_deployment(body: Mapping[str, Any], keys: Sequence[VerificationKey]) -> SignatureStatus:
    """Verify a record's signed envelope and that it signs what the record says.

    Works on deployment records (``envelope``, ``config_digest``, ``sequence``,
    optional ``configuration`` and ``predicted``) and on cycle records that
    carry a signed envelope (``envelope``, ``configuration_sha256``,
    ``configuration``). Checks the DSSE signature with the trusted keys, that
    the payload's sha256 is the recorded digest, that the payload is the
    recorded configuration, and that the signed sequence and predicted outcome
    are the recorded ones.
    """
    envelope = body.get("envelope")
    if not isinstance(envelope, Mapping):
        return SignatureStatus(False, None, "no envelope")
    try:
        verified = verify_envelope(
            canonical_json(dict(envelope)), keys, payload_type=TIMING_PAYLOAD_TYPE
        )
    except SigningError as e:
        return SignatureStatus(False, None, f"envelope does not verify: {e}")
    except (TypeError, ValueError) as e:
        return SignatureStatus(False, None, f"envelope is malformed: {e}")
    keyid = verified.keyids[0] if verified.keyids else None
    digest = sha256_hex(verified.payload)
    recorded_digest = body.get("config_digest", body.get("configuration_sha256"))
    if digest != recorded_digest:
        return SignatureStatus(
            False,
            keyid,
            f"signed configuration has sha256 {digest}, the record says {recorded_digest}",
        )
    try:
        config = json.loads(verified.payload)
    except ValueError:
        return SignatureStatus(False, keyid, "signed payload is not JSON")
    if not isinstance(config, dict):
        return SignatureStatus(False, keyid, "signed payload is not a JSON object")
    recorded_config = body.get("configuration")
    if recorded_config is not None and recorded_config != config:
        return SignatureStatus(
            False, keyid, "the configuration in the record differs from the signed one"
        )
    sequence = body.get("sequence", config.get("sequence"))
    if config.get("sequence") != sequence:
        return SignatureStatus(
            False,
            keyid,
            f"signed sequence {config.get('sequence')} differs from the record's {sequence}",
        )
    if "predicted" in body and config.get("predicted") != body.get("predicted"):
        return SignatureStatus(
            False, keyid, "the predicted outcome in the record differs from the signed one"
        )
    return SignatureStatus(True, keyid, f"signed by {keyid}")
