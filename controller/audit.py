"""Old import path of the auditor's tools, now in :mod:`controller.ledger` (kept for importers)."""

from __future__ import annotations

from controller.ledger import (
    Finding,
    ReplayResult,
    ReplayTwin,
    SignatureStatus,
    VerifyResult,
    export_jsonl,
    load_keys,
    replay_cycle,
    resolve_artifact,
    verify_checkpoint_signature,
    verify_deployment,
    verify_ledger,
)

__all__ = [
    "Finding",
    "ReplayResult",
    "ReplayTwin",
    "SignatureStatus",
    "VerifyResult",
    "export_jsonl",
    "load_keys",
    "replay_cycle",
    "resolve_artifact",
    "verify_checkpoint_signature",
    "verify_deployment",
    "verify_ledger",
]
