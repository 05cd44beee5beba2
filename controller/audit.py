"""Auditor tools over the ledger: offline verification, replay, JSON Lines export.

Everything here needs only the ledger file and trusted public keys: no HSM, no
network, no daemon configuration. The HTML report lives in
:mod:`controller.audit_report`.

Verification (:func:`verify_ledger`) recomputes every record's hash from its
stored bytes (never trusting the stored hash column), checks that each record
is canonical JSON naming its own index, kind, time and this ledger, that it
carries the previous record's hash, and that indices are contiguous; it
recomputes the RFC 9162 root for every checkpoint and checks the checkpoint's
ECDSA signature with the given public keys; and it verifies every deployment's
DSSE envelope and that the signed timing configuration is the one the record
describes (digest, sequence, predicted outcome).
"""

from __future__ import annotations

import json
import logging
import math
import sqlite3
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, Protocol, TextIO

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from configs.errors import LedgerError, SigningError
from configs.timing import canonical_json, sha256_hex
from controller.ledger import (
    GENESIS_PREV,
    RECORD_KINDS,
    RECORD_SCHEMA,
    Checkpoint,
    Ledger,
    Record,
    _check_body,
    format_time,
)
from controller.merkle import LeafTree, ListLeafSource, leaf_hash
from hsm.base import TIMING_PAYLOAD_TYPE
from hsm.verify import VerificationKey, load_public_key, verify_envelope

__all__ = [
    "Finding",
    "ReplayResult",
    "Replayer",
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


@dataclass(frozen=True)
class SignatureStatus:
    """Whether a deployment's envelope verified, and by which key."""

    ok: bool
    keyid: str | None
    message: str


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


# --------------------------------------------------------------------------- keys


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


# ------------------------------------------------------------------- verification


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


def verify_ledger(
    path: str | Path,
    keys: Sequence[VerificationKey],
    *,
    require_checkpoint: bool = False,
    trusted_heads: Sequence[tuple[int, bytes]] = (),
) -> VerifyResult:
    """Verify a ledger file offline with trusted public keys only.

    Args:
        path: the ledger file.
        keys: the trusted public keys (checkpoints and envelopes must verify
            with one of them).
        require_checkpoint: report records after the last signed checkpoint as
            a problem rather than a warning.
        trusted_heads: tree heads (size, root hash) kept from earlier audits;
            the ledger must still have exactly those first records (it was not
            cut back or rewritten since).

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
        _verify_open(ledger, keys, result, require_checkpoint, trusted_heads)
    except LedgerError as e:
        result.add(Finding("file", None, str(e)))
    finally:
        ledger.close()
    return result


def _verify_open(
    ledger: Ledger,
    keys: Sequence[VerificationKey],
    result: VerifyResult,
    require_checkpoint: bool,
    trusted_heads: Sequence[tuple[int, bytes]],
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
    for size, root in trusted_heads:
        if size > len(leaves):
            result.add(
                Finding(
                    "record",
                    len(leaves) + 1,
                    f"missing: your trusted tree head covers {size} records, the ledger holds "
                    f"{len(leaves)}: records {len(leaves) + 1}..{size} were removed",
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
    if result.covered_size < result.records:
        first = result.covered_size + 1
        msg = (
            f"records {first}..{result.records} are not covered by a signed checkpoint yet "
            "(their removal could not be detected); the daemon signs one after every cycle, "
            "so verify again after the next cycle"
        )
        if require_checkpoint:
            result.add(Finding("record", first, msg))
        else:
            result.warnings.append(msg)


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
        _check_body(kind, body)
    except LedgerError as e:
        result.add(Finding("record", i, str(e)))
        return
    if kind == "measured_delta":
        ref = body["deployment"]
        if kinds.get(ref) != "deployment" or ref >= i:
            result.add(
                Finding("record", i, f"refers to record {ref}, which is not an earlier deployment")
            )
    elif kind == "key_enrolment":
        try:
            actual = load_public_key(str(body["public_key_pem"]), name=f"record {i} key")
        except SigningError as e:
            result.add(Finding("record", i, f"enrolled key does not load: {e}"))
            return
        if actual.keyid != body["keyid"]:
            result.add(
                Finding(
                    "record",
                    i,
                    f"enrolled keyid {body['keyid']} is not the sha256 of its public key "
                    f"({actual.keyid})",
                )
            )
        enrolled.setdefault(actual.keyid, i)
    if kind == "deployment":
        sequence = body["sequence"]
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
        cycle_index = body.get("cycle_index")
        if cycle_index is not None and (kinds.get(cycle_index) != "cycle" or cycle_index >= i):
            result.add(
                Finding(
                    "record",
                    i,
                    f"refers to cycle record {cycle_index}, which is not an earlier cycle record",
                )
            )
    if kind == "deployment" or (kind == "cycle" and "envelope" in body):
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
    for raw in raws:
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


# ------------------------------------------------------------------------- export


def export_jsonl(ledger: Ledger, out: TextIO, *, checkpoints: bool = True) -> int:
    """Write every record (and checkpoint) as one JSON object per line; return the line count.

    Each record line is ``{"type": "record", "index", "kind", "time", "hash",
    "document"}`` where ``document`` is the stored record document; ``hash`` is
    its RFC 9162 leaf hash. Checkpoint lines are ``{"type": "checkpoint", ...}``.
    """
    count = 0
    for record in ledger.iter_records():
        line = {
            "type": "record",
            "index": record.index,
            "kind": record.kind,
            "time": format_time(record.time),
            "hash": record.hash,
            "document": record.document(),
        }
        out.write(json.dumps(line, sort_keys=True, ensure_ascii=False) + "\n")
        count += 1
    if checkpoints:
        for cp in ledger.checkpoints():
            out.write(json.dumps({"type": "checkpoint", **cp.to_json()}, sort_keys=True) + "\n")
            count += 1
    return count


# ------------------------------------------------------------------------- replay


class Replayer(Protocol):
    """Re-runs a recorded what-if request and returns its result as plain data."""

    def __call__(self, request: Mapping[str, Any], base_dir: Path) -> Mapping[str, Any]:
        """Run ``request`` (paths in it are relative to ``base_dir``) and return the result."""
        ...


@dataclass(frozen=True)
class ReplayResult:
    """The outcome of :func:`replay_cycle`."""

    index: int
    ok: bool
    compared: int
    differences: tuple[str, ...]
    recorded: Mapping[str, Any]
    replayed: Mapping[str, Any]


def resolve_artifact(path_text: str, base_dir: Path, search: Sequence[Path] = ()) -> Path:
    """A file named in the ledger: as recorded, else relative to ``base_dir``, else by name.

    Recorded paths are the daemon host's; an auditor copies the files next to
    the ledger (or into a ``search`` folder) and they are found by file name.
    """
    p = Path(path_text)
    first = p if p.is_absolute() else base_dir / p
    if first.exists():
        return first
    for folder in (base_dir, *search):
        candidate = folder / p.name
        if candidate.exists():
            return candidate
    return first


def _locate_inputs(
    request: Any, base_dir: Path, search: Sequence[Path], problems: list[str], where: str
) -> Any:
    """Copy of ``request`` with every recorded input file located and its sha256 checked.

    Inputs are recorded either as ``{"path": ..., "sha256": ...}`` or as a key
    ``X`` with a sibling ``X_sha256`` (the twin's what-if request).
    """
    if isinstance(request, list):
        return [
            _locate_inputs(v, base_dir, search, problems, f"{where}[{n}]")
            for n, v in enumerate(request)
        ]
    if not isinstance(request, Mapping):
        return request
    out: dict[str, Any] = {}
    for key, value in request.items():
        digest_key = "sha256" if key == "path" else f"{key}_sha256"
        digest = request.get(digest_key)
        if isinstance(value, str) and isinstance(digest, str) and key != "sha256":
            file = resolve_artifact(value, base_dir, search)
            try:
                actual = sha256_hex(file.read_bytes())
            except OSError as e:
                problems.append(
                    f"{where}.{key}: cannot read recorded input {value} (looked for {file}): "
                    f"{e.strerror}; copy it next to the ledger or pass --inputs DIR"
                )
            else:
                if actual != digest:
                    problems.append(
                        f"{where}.{key}: input {file} has sha256 {actual}, the record says {digest}"
                    )
            out[key] = str(file)
        else:
            out[key] = _locate_inputs(value, base_dir, search, problems, f"{where}.{key}")
    return out


def _compare(recorded: Any, replayed: Any, where: str, out: list[str]) -> int:
    """Compare two JSON values; numbers to 1e-9 relative. Returns the numbers compared."""
    if isinstance(recorded, bool) or isinstance(replayed, bool):
        if recorded != replayed:
            out.append(f"{where}: recorded {recorded!r}, replayed {replayed!r}")
        return 0
    if isinstance(recorded, int | float) and isinstance(replayed, int | float):
        if not math.isclose(recorded, replayed, rel_tol=1e-9, abs_tol=1e-12):
            out.append(f"{where}: recorded {recorded!r}, replayed {replayed!r}")
        return 1
    if isinstance(recorded, Mapping) and isinstance(replayed, Mapping):
        n = 0
        for key in sorted(set(recorded) | set(replayed)):
            if key not in replayed:
                out.append(f"{where}.{key}: missing from the replay")
            elif key not in recorded:
                out.append(f"{where}.{key}: not in the record")
            else:
                n += _compare(recorded[key], replayed[key], f"{where}.{key}", out)
        return n
    if isinstance(recorded, list) and isinstance(replayed, list):
        if len(recorded) != len(replayed):
            out.append(f"{where}: {len(recorded)} recorded items, {len(replayed)} replayed")
            return 0
        return sum(
            _compare(a, b, f"{where}[{k}]", out)
            for k, (a, b) in enumerate(zip(recorded, replayed, strict=True))
        )
    if recorded != replayed:
        out.append(f"{where}: recorded {recorded!r}, replayed {replayed!r}")
    return 0


def replay_cycle(
    ledger: Ledger,
    index: int,
    replayer: Replayer | Callable[[Mapping[str, Any], Path], Mapping[str, Any]],
    *,
    base_dir: Path | None = None,
    search: Sequence[Path] = (),
) -> ReplayResult:
    """Re-run cycle record ``index``'s what-if from its recorded inputs and seeds.

    The cycle record's ``whatif`` holds ``request`` (network and demand files
    with their sha256, current plan, candidates, horizon, seeds) and
    ``result``; the replay must give the same numbers. Input files are looked
    for where recorded, then by name next to the ledger and in ``search``, and
    must have the recorded sha256; the replayer gets the request with the
    located paths.

    Raises:
        LedgerError: the record is not a cycle with a what-if, or a recorded
            input file is missing or changed.
    """
    record: Record = ledger.get(index)
    if record.kind != "cycle":
        raise LedgerError(f"record {index} is a {record.kind} record; replay needs a cycle record")
    whatif = record.body.get("whatif")
    if not isinstance(whatif, Mapping) or not isinstance(whatif.get("request"), Mapping):
        raise LedgerError(f"cycle record {index} has no what-if request to replay")
    recorded = whatif.get("result")
    if not isinstance(recorded, Mapping):
        raise LedgerError(f"cycle record {index} has no recorded what-if result to compare")
    where = base_dir if base_dir is not None else ledger.path.resolve().parent
    problems: list[str] = []
    request = _locate_inputs(whatif["request"], where, search, problems, "request")
    if problems:
        raise LedgerError(f"cycle record {index}: " + "; ".join(problems))
    replayed = replayer(request, where)
    differences: list[str] = []
    compared = _compare(recorded, replayed, "result", differences)
    return ReplayResult(
        index=index,
        ok=not differences,
        compared=compared,
        differences=tuple(differences),
        recorded=recorded,
        replayed=replayed,
    )
