"""Offline verification of a ledger file with trusted public keys only.

:func:`verify_ledger` recomputes every record's hash from its stored bytes
(never trusting the stored hash column), checks that each record is canonical
JSON naming its own index, kind, time and this ledger, that its body fits its
kind's model (:mod:`controller.ledger.records`), that it carries the previous
record's hash, and that indices are contiguous. It recomputes the RFC 9162 root
for every checkpoint and checks the checkpoint's signature; checkpoint numbers
must be contiguous from 1 and each tree head must be consistent with the one
before (an RFC 9162 consistency proof, verified). Every record must be covered
by a signed checkpoint: a ledger whose checkpoints were deleted and whose
records were rewritten with recomputed hashes fails. Only a live ledger's
records after its newest checkpoint may be let through
(``allow_uncovered_tail``), never in a ledger without a checkpoint. A rollback
(the tail cut together with its checkpoints) is seen against a tree head the
auditor kept from an earlier audit (``trusted_heads``). It also verifies every
deployment's DSSE envelope and that the signed timing configuration is the one
the record describes.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from configs.digests import canonical_json
from configs.errors import LedgerError, SigningError
from controller.ledger.checkpoints import Checkpoint
from controller.ledger.merkle import (
    LeafTree,
    ListLeafSource,
    ProofError,
    leaf_hash,
    verify_rfc9162_consistency,
)
from controller.ledger.records import (
    RECORD_KINDS,
    DeploymentRecord,
    KeyEnrolmentRecord,
    MeasuredDeltaRecord,
    RecordBody,
    parse_body,
)
from controller.ledger.signatures import (
    SignatureStatus,
    verify_checkpoint_signature,
    verify_deployment,
)
from controller.ledger.store import GENESIS_PREV, RECORD_SCHEMA, Ledger
from hsm.verify import VerificationKey, load_public_key

__all__ = ["Finding", "VerifyResult", "verify_ledger"]

logger = logging.getLogger(__name__)

#: Stop collecting problems after this many (the first one is what matters).
MAX_FINDINGS = 50


@dataclass(frozen=True)
class Finding:
    """One verification problem: where (record/checkpoint index, or the file) and why."""

    where: Literal["file", "record", "checkpoint"]
    index: int | None
    message: str

    def __str__(self) -> str:
        if self.where == "file" or self.index is None:
            return self.message
        return f"{self.where} {self.index}: {self.message}"


@dataclass
class VerifyResult:
    """What :func:`verify_ledger` found."""

    path: Path
    ledger_id: str | None = None
    records: int = 0
    checkpoints: int = 0
    #: Records 1..covered_size are covered by a verified signed checkpoint.
    covered_size: int = 0
    problems: list[Finding] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    #: (size, hex root) of the newest verified signed checkpoint: keep it for the next audit.
    head: tuple[int, str] | None = None
    #: The newest checkpoint whose signature and root verified (what ``--export-head`` writes).
    newest_checkpoint: Checkpoint | None = None
    #: Per record index of every deployment (and cycle) record with a signed envelope.
    signatures: dict[int, SignatureStatus] = field(default_factory=dict)
    truncated_findings: bool = False

    @property
    def ok(self) -> bool:
        """True when nothing is wrong."""
        return not self.problems

    @property
    def first_problem(self) -> Finding | None:
        """The first problem found (in file order), or None."""
        return self.problems[0] if self.problems else None

    def add(self, finding: Finding) -> None:
        """Record a problem (up to :data:`MAX_FINDINGS`)."""
        if len(self.problems) < MAX_FINDINGS:
            self.problems.append(finding)
        else:
            self.truncated_findings = True

    def to_json(self) -> dict[str, Any]:
        """JSON view for ``audit verify --json``."""
        return {
            "ledger": str(self.path),
            "ledger_id": self.ledger_id,
            "ok": self.ok,
            "records": self.records,
            "checkpoints": self.checkpoints,
            "covered_size": self.covered_size,
            "tree_head": None
            if self.head is None
            else {"size": self.head[0], "root_hash": self.head[1]},
            "first_problem": None if self.first_problem is None else str(self.first_problem),
            "problems": [
                {"where": p.where, "index": p.index, "message": p.message} for p in self.problems
            ],
            "warnings": self.warnings,
            "deployments": {
                str(i): {"signature_ok": s.ok, "keyid": s.keyid, "message": s.message}
                for i, s in sorted(self.signatures.items())
            },
        }


def verify_ledger(
    path: str | Path,
    keys: Sequence[VerificationKey],
    *,
    allow_uncovered_tail: bool = False,
    trusted_heads: Sequence[Checkpoint | tuple[int, bytes]] = (),
    require_checkpoint: bool = True,
) -> VerifyResult:
    """Verify a ledger file offline with trusted public keys only.

    Args:
        path: the ledger file.
        keys: the trusted public keys (checkpoints and envelopes must verify
            with one of them).
        allow_uncovered_tail: let records after the newest verified checkpoint
            through with a warning (a live ledger between cycles). Never lets
            through a ledger with records and no verified checkpoint.
        trusted_heads: tree heads kept from earlier audits (signed checkpoints
            as exported, or bare (size, root hash) pairs); the ledger must be
            an extension of each (not cut back or rewritten since).
        require_checkpoint: kept for callers of the old signature; coverage is
            always required now unless ``allow_uncovered_tail``.

    Returns:
        A :class:`VerifyResult`; ``result.first_problem`` names the first bad
        record (or checkpoint) and why. Never raises for a bad ledger: a file
        that cannot be read is a problem in the result.
    """
    p = Path(path)
    result = VerifyResult(path=p)
    if not keys:
        result.add(Finding("file", None, "no trusted public key given (--pubkey FILE)"))
        return result
    try:
        ledger = Ledger.open(p, readonly=True)
    except LedgerError as e:
        result.add(Finding("file", None, str(e)))
        return result
    try:
        _verify_open(ledger, keys, result, allow_uncovered_tail, trusted_heads)
    except LedgerError as e:
        result.add(Finding("file", None, str(e)))
    finally:
        ledger.close()
    return result


def _verify_open(
    ledger: Ledger,
    keys: Sequence[VerificationKey],
    result: VerifyResult,
    allow_uncovered_tail: bool,
    trusted_heads: Sequence[Checkpoint | tuple[int, bytes]],
) -> None:
    result.ledger_id = ledger.ledger_id
    for message in ledger.integrity_problems():
        result.add(Finding("file", None, f"{ledger.path}: SQLite integrity check: {message}"))
    #: leaf hash of each stored row, in stored order (also explains insertions)
    leaves: list[bytes] = []
    kinds: dict[int, str] = {}
    enrolled: dict[str, int] = {}
    sequences: list[int] = []
    prev_hash = GENESIS_PREV
    expected = 1
    count = 0
    rows = ledger.raw_records()
    while True:
        try:
            raw = next(rows, None)
        except sqlite3.DatabaseError as e:  # a damaged page part-way through
            raise LedgerError(
                f"{ledger.path}: cannot read the records table after record {expected - 1}: {e}"
            ) from e
        if raw is None:
            break
        count += 1
        i = raw.index
        if i != expected:
            if i > expected:
                missing = f"{expected}" if i == expected + 1 else f"{expected}..{i - 1}"
                result.add(
                    Finding("record", expected, f"missing: record(s) {missing} were removed")
                )
            else:
                result.add(Finding("record", i, "stored twice or out of order"))
            expected = i
        digest = leaf_hash(raw.body)
        leaves.append(digest)
        if raw.stored_hash != digest:
            result.add(
                Finding(
                    "record",
                    i,
                    f"content changed after it was written: stored hash "
                    f"{raw.stored_hash.hex()[:16]}…, content hashes to {digest.hex()[:16]}…",
                )
            )
        doc = _parse_document(raw.body, i, result)
        if doc is not None:
            _check_document(doc, raw, ledger.ledger_id, prev_hash, leaves, result)
            body = doc.get("body")
            kind = doc.get("kind")
            if isinstance(body, dict) and isinstance(kind, str):
                kinds[i] = kind
                _check_semantics(i, kind, body, kinds, enrolled, sequences, keys, result)
        prev_hash = digest.hex()
        expected = i + 1
    result.records = count
    _verify_checkpoints(ledger, keys, leaves, enrolled, result)
    tree = LeafTree(ListLeafSource(leaves))
    if result.covered_size:
        result.head = (result.covered_size, tree.root(result.covered_size).hex())
    for head in trusted_heads:
        _check_trusted_head(ledger, head, keys, tree, result)
    if result.covered_size < result.records:
        first = result.covered_size + 1
        if result.covered_size == 0:
            result.add(
                Finding(
                    "record",
                    first,
                    f"records {first}..{result.records} are covered by no verified signed "
                    "checkpoint: without one, rewritten records with recomputed hashes cannot "
                    "be told from the originals (were the checkpoints deleted?)",
                )
            )
        elif allow_uncovered_tail:
            result.warnings.append(
                f"records {first}..{result.records} are not covered by a signed checkpoint yet "
                "(their removal could not be detected); the daemon signs one after every "
                "cycle, so verify again after the next cycle"
            )
        else:
            result.add(
                Finding(
                    "record",
                    first,
                    f"records {first}..{result.records} are not covered by a signed checkpoint "
                    "(the newest checkpoint was deleted, or the ledger is live: verify again "
                    "after the next cycle, or pass --allow-uncovered-tail)",
                )
            )


def _check_trusted_head(
    ledger: Ledger,
    head: Checkpoint | tuple[int, bytes],
    keys: Sequence[VerificationKey],
    tree: LeafTree,
    result: VerifyResult,
) -> None:
    """The ledger must be an extension of a tree head the auditor kept."""
    if isinstance(head, Checkpoint):
        if verify_checkpoint_signature(head, keys) is None:
            result.add(
                Finding(
                    "file",
                    None,
                    f"trusted head (checkpoint {head.seq}, size {head.size}) does not verify with "
                    "the given public key(s): it is not a head this ledger's key signed",
                )
            )
            return
        if head.origin != ledger.origin:
            result.add(
                Finding("file", None, f"trusted head is for {head.origin!r}, not this ledger")
            )
            return
        size, root = head.size, head.root_hash
    else:
        size, root = head
    held = tree.get_size()
    if size > held:
        result.add(
            Finding(
                "record",
                held + 1,
                f"missing: your trusted tree head covers {size} records, the ledger holds "
                f"{held}: records {held + 1}..{size} were removed (rolled back)",
            )
        )
    elif tree.root(size) != root:
        result.add(
            Finding(
                "file",
                None,
                f"records 1..{size} no longer hash to your trusted root {root.hex()[:16]}…: "
                "the ledger was rewritten or cut back since that audit",
            )
        )


def _parse_document(body: bytes, index: int, result: VerifyResult) -> dict[str, Any] | None:
    try:
        doc = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        result.add(Finding("record", index, f"stored bytes are not UTF-8 JSON ({e})"))
        return None
    if not isinstance(doc, dict):
        result.add(Finding("record", index, "stored document is not a JSON object"))
        return None
    try:
        canonical = canonical_json(doc)
    except ValueError:
        canonical = b""
    if canonical != body:
        result.add(Finding("record", index, "stored bytes are not canonical JSON (edited)"))
    return doc


def _check_document(
    doc: Mapping[str, Any],
    raw: Any,
    ledger_id: str,
    prev_hash: str,
    hashes_by_position: list[bytes],
    result: VerifyResult,
) -> None:
    i = raw.index
    if doc.get("schema") != RECORD_SCHEMA:
        result.add(Finding("record", i, f"schema is {doc.get('schema')!r}, not {RECORD_SCHEMA}"))
    if doc.get("ledger") != ledger_id:
        result.add(
            Finding("record", i, f"belongs to ledger {doc.get('ledger')!r}, not {ledger_id}")
        )
    doc_index = doc.get("index")
    if doc_index != i:
        result.add(_misplaced(i, doc_index, doc, hashes_by_position))
    elif doc.get("prev") != prev_hash:
        result.add(
            Finding(
                "record",
                i - 1 if i > 1 else i,
                f"its hash {prev_hash[:16]}… differs from the previous-record hash "
                f"{str(doc.get('prev'))[:16]}… that record {i} carries: record {i - 1} was "
                f"changed after record {i} was written (or record {i}'s link was)",
            )
        )
    if doc.get("kind") != raw.kind or doc.get("kind") not in RECORD_KINDS:
        result.add(
            Finding("record", i, f"kind {doc.get('kind')!r} differs from stored kind {raw.kind!r}")
        )
    if doc.get("time") != raw.time:
        result.add(Finding("record", i, "time differs from the stored time column"))
    if doc.get("dedupe_key") != raw.dedupe_key:
        result.add(Finding("record", i, "dedupe_key differs from the stored column"))


def _misplaced(i: int, doc_index: Any, doc: Mapping[str, Any], hashes: list[bytes]) -> Finding:
    if isinstance(doc_index, int) and 1 <= doc_index < i:
        # The original record doc_index now sits at i: if it still links to the
        # record stored at doc_index - 1, the rows doc_index..i-1 were inserted.
        before = GENESIS_PREV if doc_index == 1 else hashes[doc_index - 2].hex()
        if doc.get("prev") == before:
            span = f"{doc_index}" if doc_index == i - 1 else f"{doc_index}..{i - 1}"
            return Finding(
                "record",
                doc_index,
                f"inserted after the fact: record {i} holds the original record {doc_index}, "
                f"which links to record {doc_index - 1}, so stored record(s) {span} were "
                "slipped in",
            )
    return Finding(
        "record",
        i,
        f"holds the document of record {doc_index}: records were removed, inserted or "
        "reordered here",
    )


def _check_semantics(
    i: int,
    kind: str,
    body: dict[str, Any],
    kinds: Mapping[int, str],
    enrolled: dict[str, int],
    sequences: list[int],
    keys: Sequence[VerificationKey],
    result: VerifyResult,
) -> None:
    try:
        model: RecordBody = parse_body(kind, body)
    except LedgerError as e:
        result.add(Finding("record", i, str(e)))
        return
    if isinstance(model, MeasuredDeltaRecord):
        ref = model.deployment
        if kinds.get(ref) != "deployment" or ref >= i:
            result.add(
                Finding("record", i, f"refers to record {ref}, which is not an earlier deployment")
            )
    elif isinstance(model, KeyEnrolmentRecord):
        try:
            actual = load_public_key(model.public_key_pem, name=f"record {i} key")
        except SigningError as e:
            result.add(Finding("record", i, f"enrolled key does not load: {e}"))
            return
        if actual.keyid != model.keyid:
            result.add(
                Finding(
                    "record",
                    i,
                    f"enrolled keyid {model.keyid} is not the sha256 of its public key "
                    f"({actual.keyid})",
                )
            )
        enrolled.setdefault(actual.keyid, i)
    elif isinstance(model, DeploymentRecord):
        sequence = model.sequence
        if sequences and sequence <= sequences[-1]:
            result.add(
                Finding(
                    "record",
                    i,
                    f"deployment sequence {sequence} is not above the previous one "
                    f"({sequences[-1]}): sequences must strictly increase",
                )
            )
        sequences.append(sequence)
        cycle_index = model.cycle_index
        if cycle_index is not None and (kinds.get(cycle_index) != "cycle" or cycle_index >= i):
            result.add(
                Finding(
                    "record",
                    i,
                    f"refers to cycle record {cycle_index}, which is not an earlier cycle record",
                )
            )
    if isinstance(model, DeploymentRecord) or (kind == "cycle" and "envelope" in body):
        status = verify_deployment(body, keys)
        result.signatures[i] = status
        if not status.ok:
            what = f"deployment {body.get('sequence')}" if kind == "deployment" else "cycle"
            result.add(Finding("record", i, f"{what}: signed envelope: {status.message}"))


def _verify_checkpoints(
    ledger: Ledger,
    keys: Sequence[VerificationKey],
    leaves: list[bytes],
    enrolled: Mapping[str, int],
    result: VerifyResult,
) -> None:
    tree = LeafTree(ListLeafSource(leaves))
    raws = ledger.raw_checkpoints()
    result.checkpoints = len(raws)
    last_size = 0
    last_time: datetime | None = None
    last_verified: Checkpoint | None = None
    expected_seq = 1
    for raw in raws:
        if raw.seq != expected_seq:
            if raw.seq > expected_seq:
                gap = f"{expected_seq}" + (
                    "" if raw.seq == expected_seq + 1 else f"..{raw.seq - 1}"
                )
                message = f"checkpoint numbers are not contiguous: checkpoint(s) {gap} were deleted"
            else:
                message = "stored twice or out of order"
            result.add(Finding("checkpoint", raw.seq, message))
        expected_seq = raw.seq + 1
        try:
            cp = Checkpoint.parse(raw)
        except LedgerError as e:
            result.add(Finding("checkpoint", raw.seq, str(e)))
            continue
        keyid = verify_checkpoint_signature(cp, keys)
        if keyid is None:
            result.add(
                Finding(
                    "checkpoint",
                    cp.seq,
                    f"signature (keyid {cp.keyid[:16]}…) does not verify with the given public "
                    "key(s): the checkpoint was replaced or signed by another key",
                )
            )
            continue
        if keyid != cp.keyid:
            result.add(
                Finding("checkpoint", cp.seq, f"claims keyid {cp.keyid} but {keyid} signed it")
            )
        if cp.origin != ledger.origin:
            result.add(Finding("checkpoint", cp.seq, f"is for {cp.origin!r}, not this ledger"))
            continue
        if cp.size > len(leaves):
            result.add(
                Finding(
                    "record",
                    len(leaves) + 1,
                    f"missing: signed checkpoint {cp.seq} covers {cp.size} records but the "
                    f"ledger holds {len(leaves)}: records {len(leaves) + 1}..{cp.size} were "
                    "removed (file truncated or rows deleted)",
                )
            )
            continue
        root = tree.root(cp.size)
        if root != cp.root_hash:
            result.add(
                Finding(
                    "checkpoint",
                    cp.seq,
                    f"root of records 1..{cp.size} is {root.hex()[:16]}…, the signed root is "
                    f"{cp.root_hash.hex()[:16]}…: a record in {last_size + 1}..{cp.size} was "
                    "changed, removed, inserted or reordered",
                )
            )
            continue
        if cp.size < last_size:
            result.add(Finding("checkpoint", cp.seq, f"size {cp.size} shrank from {last_size}"))
        elif last_verified is not None:
            _check_consistent(last_verified, cp, tree, result)
        last_verified = cp
        if result.newest_checkpoint is None or cp.size >= result.newest_checkpoint.size:
            result.newest_checkpoint = cp
        if last_time is not None and cp.time < last_time:
            result.add(Finding("checkpoint", cp.seq, "time goes backwards"))
        if enrolled and keyid not in enrolled:
            result.warnings.append(
                f"checkpoint {cp.seq} is signed by key {keyid[:16]}…, which has no "
                "key_enrolment record in this ledger"
            )
        last_size = max(last_size, cp.size)
        last_time = cp.time
        result.covered_size = max(result.covered_size, cp.size)


def _check_consistent(
    prior: Checkpoint, later: Checkpoint, tree: LeafTree, result: VerifyResult
) -> None:
    """The later signed head must extend the prior one (RFC 9162 consistency proof)."""
    try:
        proof = tree.rfc9162_consistency(prior.size, later.size)
        verify_rfc9162_consistency(proof, prior.size, later.size, prior.root_hash, later.root_hash)
    except ProofError as e:
        result.add(
            Finding(
                "checkpoint",
                later.seq,
                f"is not consistent with checkpoint {prior.seq} (size {prior.size}): {e}",
            )
        )
