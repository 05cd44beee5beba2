"""The tamper-evident deployment ledger and the auditor's tools.

The ledger domain, one concept per module:

- :mod:`~controller.ledger.records`: one model per record kind (and the exported
  checkpoint head), used both to write and to read bodies;
- :mod:`~controller.ledger.store`: the SQLite :class:`Ledger` (append, read, dedupe);
- :mod:`~controller.ledger.checkpoints`: signed tree heads;
- :mod:`~controller.ledger.merkle`: the RFC 9162 tree and its proofs;
- :mod:`~controller.ledger.signatures`: checkpoint and envelope signatures;
- :mod:`~controller.ledger.verify`: offline verification of a ledger file;
- :mod:`~controller.ledger.replay`: replay of a cycle's what-if through a
  :class:`ReplayTwin` the caller hands in;
- :mod:`~controller.ledger.push_rows`: a deployment record's push, read back as
  one typed row per controller whatever shape it was written in;
- :mod:`~controller.ledger.report`: the self-contained HTML report (its charts,
  gate, push and measured-delta sections in the ``report_*`` modules);
- :mod:`~controller.ledger.export`: JSON Lines export and kept tree heads.

The package imports no daemon module, no torch, no SUMO and no asyncua (an
import-linter contract keeps it so): an auditor's machine needs none of them.
"""

from __future__ import annotations

from controller.ledger.checkpoints import Checkpoint, RawCheckpoint
from controller.ledger.export import export_jsonl, read_heads, write_heads
from controller.ledger.merkle import (
    EMPTY_ROOT,
    LeafSource,
    LeafTree,
    ListLeafSource,
    ProofError,
    leaf_hash,
    node_hash,
    rfc9162_audit_path,
    verify_consistency_proof,
    verify_inclusion_proof,
    verify_rfc9162_consistency,
)
from controller.ledger.push_rows import PushStep, RecordedPush, RecordedPushRow, read_push
from controller.ledger.records import (
    RECORD_KINDS,
    CheckpointHead,
    ConfigChangeRecord,
    CycleRecord,
    DeploymentRecord,
    KeyEnrolmentRecord,
    MeasuredDeltaRecord,
    PolicyVersionRecord,
    RecordBody,
    RecordKind,
    format_time,
    kind_of,
    model_for,
    parse_body,
    parse_time,
)
from controller.ledger.replay import (
    ReplayResult,
    ReplayTwin,
    contained_artifact,
    replay_cycle,
    resolve_artifact,
)
from controller.ledger.report import ReportSelection, build_report, write_report
from controller.ledger.signatures import (
    SignatureStatus,
    load_keys,
    verify_checkpoint_signature,
    verify_deployment,
)
from controller.ledger.store import (
    APPLICATION_ID,
    GENESIS_PREV,
    RECORD_SCHEMA,
    SCHEMA_VERSION,
    Ledger,
    RawRecord,
    Record,
    RecordRef,
)
from controller.ledger.verify import Finding, VerifyResult, verify_ledger

__all__ = [
    "APPLICATION_ID",
    "EMPTY_ROOT",
    "GENESIS_PREV",
    "RECORD_KINDS",
    "RECORD_SCHEMA",
    "SCHEMA_VERSION",
    "Checkpoint",
    "CheckpointHead",
    "ConfigChangeRecord",
    "CycleRecord",
    "DeploymentRecord",
    "Finding",
    "KeyEnrolmentRecord",
    "LeafSource",
    "LeafTree",
    "Ledger",
    "ListLeafSource",
    "MeasuredDeltaRecord",
    "PolicyVersionRecord",
    "ProofError",
    "PushStep",
    "RawCheckpoint",
    "RawRecord",
    "Record",
    "RecordBody",
    "RecordedPush",
    "RecordedPushRow",
    "RecordKind",
    "RecordRef",
    "ReplayResult",
    "ReplayTwin",
    "ReportSelection",
    "SignatureStatus",
    "VerifyResult",
    "build_report",
    "contained_artifact",
    "export_jsonl",
    "format_time",
    "kind_of",
    "leaf_hash",
    "load_keys",
    "model_for",
    "node_hash",
    "parse_body",
    "parse_time",
    "read_heads",
    "read_push",
    "replay_cycle",
    "resolve_artifact",
    "rfc9162_audit_path",
    "verify_checkpoint_signature",
    "verify_consistency_proof",
    "verify_deployment",
    "verify_inclusion_proof",
    "verify_ledger",
    "verify_rfc9162_consistency",
    "write_heads",
    "write_report",
]
