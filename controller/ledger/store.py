"""The tamper-evident deployment ledger: append-only records in SQLite.

Every record is a canonical JSON document (sorted keys, no whitespace, UTF-8)
that carries the previous record's hash and is a leaf of an RFC 9162 Merkle
tree; signed checkpoints (tree size, root hash, time) are added every N records
and on demand. An auditor with only the public key can verify the whole file
offline (:mod:`controller.ledger.verify`). Record bodies are the models of
:mod:`controller.ledger.records`, checked on the way in and parsed on the way out.

One append is one SQLite transaction (WAL journal, ``synchronous=FULL``) that
writes the record and its leaf hash together, so a process killed mid-append
leaves either the whole record or nothing; an optional ``dedupe_key`` makes a
retried append idempotent. Triggers make UPDATE and DELETE fail.

Record indices count from 1 (record *n* is leaf *n* of the tree, and a tree of
size *n* holds records 1..n).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from configs.digests import canonical_json
from configs.errors import LedgerError
from controller.ledger.checkpoints import Checkpoint, RawCheckpoint
from controller.ledger.merkle import LeafTree, ProofError, leaf_hash, rfc9162_audit_path
from controller.ledger.records import (
    KeyEnrolmentRecord,
    RawRecord,
    Record,
    RecordBody,
    RecordKind,
    RecordRef,
    format_time,
    kind_of,
    parse_body,
    parse_time,
)
from controller.ledger.sqlite_file import (
    APPLICATION_ID,
    GENESIS_PREV,
    RECORD_SCHEMA,
    SCHEMA_VERSION,
    check_header,
    initialise,
)
from hsm.base import Signer

__all__ = [
    "APPLICATION_ID",
    "GENESIS_PREV",
    "RECORD_SCHEMA",
    "SCHEMA_VERSION",
    "Ledger",
    "Record",
    "RecordRef",
    "RawRecord",
]

logger = logging.getLogger(__name__)


_P = ParamSpec("_P")
_R = TypeVar("_R")


def _locked(method: Callable[_P, _R]) -> Callable[_P, _R]:
    """Serialise a Ledger method on the ledger's lock (the connection is shared by threads)."""

    @functools.wraps(method)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        with args[0]._lock:  # type: ignore[attr-defined]
            return method(*args, **kwargs)

    return wrapper


class Ledger:
    """An open ledger file. Use :meth:`open`; close it (or use ``with``) when done.

    A ledger object is used by one thread; several processes may open the same
    file (appends are serialised by SQLite's write lock).
    """

    def __init__(
        self,
        path: Path,
        conn: sqlite3.Connection,
        *,
        readonly: bool,
        signer: Signer | None,
        checkpoint_every: int,
        clock: Callable[[], datetime],
    ) -> None:
        self.path = path
        self._conn = conn
        self.readonly = readonly
        self._signer = signer
        self._checkpoint_every = checkpoint_every
        self._clock = clock
        # the daemon calls from a new thread per job (never two at once); the lock
        # makes concurrent use from several threads safe as well
        self._lock = threading.RLock()
        self.ledger_id = self._meta("ledger_id")
        self.origin = f"signaltwin.ledger/{self.ledger_id}"
        self._tree = LeafTree(_SqliteLeaves(self))

    # ----------------------------------------------------------------- opening

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        create: bool = True,
        readonly: bool = False,
        signer: Signer | None = None,
        checkpoint_every: int = 0,
        clock: Callable[[], datetime] | None = None,
    ) -> Ledger:
        """Open (and with ``create`` make) the ledger at ``path``.

        Args:
            path: the SQLite ledger file.
            create: make a new, empty ledger if there is no file.
            readonly: open for reading only (auditing); appends raise.
            signer: signs a checkpoint automatically every ``checkpoint_every`` records.
            checkpoint_every: 0 for checkpoints on demand only.
            clock: returns the current aware UTC time (tests pass a fake).

        Raises:
            LedgerError: the file is missing, is not an SQLite database, is not a
                signaltwin ledger, has another schema version, or is damaged.
        """
        p = Path(path)
        if checkpoint_every < 0:
            raise LedgerError(f"checkpoint_every must be >= 0, got {checkpoint_every}")
        exists = p.exists() and p.stat().st_size > 0
        if not exists and (readonly or not create):
            raise LedgerError(
                f"no ledger at {p}: check the path (--ledger or [ledger].path in the config)"
            )
        if p.is_dir():
            raise LedgerError(f"ledger path {p} is a directory; give the ledger file")
        try:
            if readonly:
                conn = sqlite3.connect(
                    f"{p.resolve().as_uri()}?mode=ro",
                    uri=True,
                    isolation_level=None,
                    check_same_thread=False,
                )
            else:
                p.parent.mkdir(parents=True, exist_ok=True)
                conn = sqlite3.connect(p, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA busy_timeout = 10000")
        except (sqlite3.Error, OSError) as e:
            raise LedgerError(f"cannot open ledger {p}: {e}") from e
        try:
            if exists:
                check_header(p, conn)
            else:
                initialise(conn)
            if not readonly:
                conn.execute("PRAGMA journal_mode = WAL")
                conn.execute("PRAGMA synchronous = FULL")
            ledger = cls(
                p,
                conn,
                readonly=readonly,
                signer=signer,
                checkpoint_every=checkpoint_every,
                clock=clock or (lambda: datetime.now(UTC)),
            )
        except sqlite3.DatabaseError as e:
            conn.close()
            raise LedgerError(
                f"{p} is not a readable signaltwin ledger ({e}); if it was damaged, restore "
                "it from a backup and run 'signaltwin audit verify'"
            ) from e
        except LedgerError:
            conn.close()
            raise
        return ledger

    def _meta(self, key: str) -> str:
        row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        if row is None:
            raise LedgerError(f"{self.path}: meta key {key!r} is missing; the file is damaged")
        return str(row[0])

    @_locked
    def close(self) -> None:
        """Close the file, folding the WAL into it so the file is self-contained."""
        try:
            if not self.readonly:
                self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error as e:
            logger.warning("ledger %s: WAL checkpoint on close failed: %s", self.path, e)
        finally:
            self._conn.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ writing

    @_locked
    def append(
        self,
        record: RecordBody | RecordKind | str,
        body: Mapping[str, Any] | None = None,
        *,
        dedupe_key: str | None = None,
    ) -> RecordRef:
        """Append one record and return where it landed.

        Pass the body's model (``ledger.append(CycleRecord(...))``); the older
        form ``append(kind, mapping)`` parses the mapping through the same model.
        With a ``dedupe_key`` already in the ledger nothing is written and the
        existing record's reference is returned (a retried append after a crash).

        Raises:
            LedgerError: the kind or body is invalid, or the write failed.
        """
        if self.readonly:
            raise LedgerError(f"ledger {self.path} is open read-only")
        if isinstance(record, str):
            if not isinstance(body, Mapping):
                raise LedgerError(
                    f"{record} record body must be a mapping, got {type(body).__name__}"
                )
            model = parse_body(record, dict(body))
        elif body is not None:
            raise LedgerError("give either a record model or a kind and a body, not both")
        else:
            model = record
        kind = kind_of(model)
        checked = model.to_body()
        if dedupe_key is not None and (not isinstance(dedupe_key, str) or not dedupe_key):
            raise LedgerError(f"dedupe_key must be a non-empty string, got {dedupe_key!r}")
        time = format_time(self._clock())
        conn = self._conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                if dedupe_key is not None:
                    row = conn.execute(
                        "SELECT idx, kind, leaf_hash FROM records WHERE dedupe_key = ?",
                        (dedupe_key,),
                    ).fetchone()
                    if row is not None:
                        conn.execute("ROLLBACK")
                        if row[1] != kind:
                            raise LedgerError(
                                f"dedupe_key {dedupe_key!r} is already record {row[0]} of kind "
                                f"{row[1]}, not {kind}"
                            )
                        logger.info("ledger: %s already recorded as %d", dedupe_key, row[0])
                        return RecordRef(int(row[0]), bytes(row[2]).hex())
                if kind == "measured_delta":
                    self._check_reference(checked["deployment"])
                last = conn.execute(
                    "SELECT idx, leaf_hash FROM records ORDER BY idx DESC LIMIT 1"
                ).fetchone()
                index = 1 if last is None else int(last[0]) + 1
                prev = GENESIS_PREV if last is None else bytes(last[1]).hex()
                doc = {
                    "schema": RECORD_SCHEMA,
                    "ledger": self.ledger_id,
                    "index": index,
                    "kind": kind,
                    "time": time,
                    "prev": prev,
                    "dedupe_key": dedupe_key,
                    "body": checked,
                }
                try:
                    raw = canonical_json(doc)
                except (TypeError, ValueError) as e:
                    raise LedgerError(
                        f"{kind} record body is not plain JSON ({e}); convert datetimes, paths "
                        "and models to strings/dicts first"
                    ) from e
                digest = leaf_hash(raw)
                conn.execute(
                    "INSERT INTO records(idx, kind, time, dedupe_key, leaf_hash, body) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (index, kind, time, dedupe_key, digest, raw),
                )
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as e:
            raise LedgerError(f"cannot append to ledger {self.path}: {e}") from e
        ref = RecordRef(index, digest.hex())
        logger.debug("ledger: appended %s record %d", kind, index)
        if (
            self._signer is not None
            and self._checkpoint_every > 0
            and index % self._checkpoint_every == 0
        ):
            self.checkpoint(self._signer)
        return ref

    def _check_reference(self, index: int) -> None:
        row = self._conn.execute("SELECT kind FROM records WHERE idx = ?", (index,)).fetchone()
        if row is None or row[0] != "deployment":
            raise LedgerError(
                f"measured_delta refers to record {index}, which is not a deployment record"
            )

    def enrol_key(self, signer: Signer, *, enrolment: Mapping[str, Any] | None = None) -> RecordRef:
        """Record ``signer``'s public key as a ``key_enrolment`` record (once per key)."""
        body = KeyEnrolmentRecord(
            keyid=signer.keyid,
            public_key_pem=signer.public_key_pem().decode(),
            **({} if enrolment is None else {"enrolment": dict(enrolment)}),
        )
        return self.append(body, dedupe_key=f"key:{signer.keyid}")

    @_locked
    def checkpoint(self, signer: Signer, *, force: bool = False) -> Checkpoint:
        """Sign the current tree head and store it as a checkpoint.

        Returns the latest checkpoint instead when it already covers every record
        and was signed by the same key (unless ``force``).

        Raises:
            LedgerError: the ledger is read-only or signing failed.
        """
        if self.readonly:
            raise LedgerError(f"ledger {self.path} is open read-only")
        size = self.size()
        latest = self.latest_checkpoint()
        if latest is not None and latest.size == size and latest.keyid == signer.keyid:
            if not force:
                return latest
        now = self._clock()
        note = Checkpoint.make_note(self.origin, size, self._tree.root(size), now)
        signature = signer.sign(note)
        try:
            self._conn.execute("BEGIN IMMEDIATE")
            cur = self._conn.execute(
                "INSERT INTO checkpoints(size, keyid, note, signature) VALUES (?, ?, ?, ?)",
                (size, signer.keyid, note, signature),
            )
            seq = int(cur.lastrowid or 0)
            self._conn.execute("COMMIT")
        except sqlite3.Error as e:
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
            raise LedgerError(f"cannot store checkpoint in ledger {self.path}: {e}") from e
        logger.info("ledger: checkpoint %d at size %d", seq, size)
        return Checkpoint.parse(RawCheckpoint(seq, size, signer.keyid, note, signature))

    # ------------------------------------------------------------------ reading

    @_locked
    def size(self) -> int:
        """Number of records (the tree size)."""
        row = self._conn.execute("SELECT COALESCE(MAX(idx), 0) FROM records").fetchone()
        return int(row[0])

    @_locked
    def get(self, index: int) -> Record:
        """The record at ``index`` (from 1).

        Raises:
            LedgerError: there is no such record, or it does not parse.
        """
        row = self._conn.execute(
            "SELECT idx, kind, time, dedupe_key, leaf_hash, body FROM records WHERE idx = ?",
            (index,),
        ).fetchone()
        if row is None:
            raise LedgerError(f"ledger {self.path} has no record {index} (it has {self.size()})")
        return self._parse(RawRecord(*row))

    def _parse(self, raw: RawRecord) -> Record:
        try:
            doc = json.loads(raw.body)
        except (ValueError, UnicodeDecodeError) as e:
            raise LedgerError(f"record {raw.index}: body is not JSON: {e}") from e
        if not isinstance(doc, dict) or not isinstance(doc.get("body"), dict):
            raise LedgerError(f"record {raw.index}: body is not a record document")
        return Record(
            index=raw.index,
            kind=raw.kind,
            time=parse_time(str(doc.get("time", raw.time))),
            prev=str(doc.get("prev", "")),
            dedupe_key=raw.dedupe_key,
            body=doc["body"],
            hash=leaf_hash(raw.body).hex(),
            raw=raw.body,
        )

    def iter_records(
        self,
        kind: str | None = None,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        start: int = 1,
        stop: int | None = None,
    ) -> Iterator[Record]:
        """Records in index order, filtered by kind, time ``[since, until)`` and index."""
        sql = "SELECT idx, kind, time, dedupe_key, leaf_hash, body FROM records WHERE idx >= ?"
        params: list[Any] = [start]
        if stop is not None:
            sql += " AND idx <= ?"
            params.append(stop)
        if kind is not None:
            sql += " AND kind = ?"
            params.append(kind)
        if since is not None:
            sql += " AND time >= ?"
            params.append(format_time(since))
        if until is not None:
            sql += " AND time < ?"
            params.append(format_time(until))
        with self._lock:
            rows = self._conn.execute(sql + " ORDER BY idx", params).fetchall()
        for row in rows:
            yield self._parse(RawRecord(*row))

    @_locked
    def latest(self, kind: str) -> Record | None:
        """The newest record of ``kind``, or None."""
        row = self._conn.execute(
            "SELECT idx, kind, time, dedupe_key, leaf_hash, body FROM records WHERE kind = ? "
            "ORDER BY idx DESC LIMIT 1",
            (kind,),
        ).fetchone()
        return None if row is None else self._parse(RawRecord(*row))

    def find(self, kind: str, **match: Any) -> list[Record]:
        """Records of ``kind`` whose body has every given field equal.

        Example: ``ledger.find("deployment", sequence=7)``.
        """
        return [
            r
            for r in self.iter_records(kind)
            if all(k in r.body and r.body[k] == v for k, v in match.items())
        ]

    @_locked
    def by_dedupe_key(self, dedupe_key: str) -> Record | None:
        """The record appended with ``dedupe_key``, or None."""
        row = self._conn.execute(
            "SELECT idx, kind, time, dedupe_key, leaf_hash, body FROM records WHERE dedupe_key = ?",
            (dedupe_key,),
        ).fetchone()
        return None if row is None else self._parse(RawRecord(*row))

    def raw_records(self) -> Iterator[RawRecord]:
        """Every stored row in index order, unparsed (for verification)."""
        sql = "SELECT idx, kind, time, dedupe_key, leaf_hash, body FROM records"
        last: int | None = None  # every row, including any with index <= 0
        while True:
            with self._lock:
                if last is None:
                    rows = self._conn.execute(f"{sql} ORDER BY idx LIMIT 4096").fetchall()
                else:
                    rows = self._conn.execute(
                        f"{sql} WHERE idx > ? ORDER BY idx LIMIT 4096", (last,)
                    ).fetchall()
            if not rows:
                return
            last = int(rows[-1][0])
            for row in rows:
                yield RawRecord(
                    int(row[0]),
                    str(row[1]),
                    str(row[2]),
                    None if row[3] is None else str(row[3]),
                    bytes(row[4]),
                    bytes(row[5]),
                )

    @_locked
    def raw_checkpoints(self) -> list[RawCheckpoint]:
        """Every stored checkpoint row in order, unparsed."""
        rows = self._conn.execute(
            "SELECT seq, size, keyid, note, signature FROM checkpoints ORDER BY seq"
        ).fetchall()
        return [
            RawCheckpoint(int(r[0]), int(r[1]), str(r[2]), bytes(r[3]), bytes(r[4])) for r in rows
        ]

    def checkpoints(self) -> list[Checkpoint]:
        """Every checkpoint, parsed (not verified: see :func:`controller.ledger.verify_ledger`)."""
        return [Checkpoint.parse(r) for r in self.raw_checkpoints()]

    @_locked
    def latest_checkpoint(self) -> Checkpoint | None:
        """The newest checkpoint, or None."""
        row = self._conn.execute(
            "SELECT seq, size, keyid, note, signature FROM checkpoints ORDER BY seq DESC LIMIT 1"
        ).fetchone()
        if row is None:
            return None
        return Checkpoint.parse(
            RawCheckpoint(int(row[0]), int(row[1]), str(row[2]), bytes(row[3]), bytes(row[4]))
        )

    @_locked
    def integrity_problems(self) -> list[str]:
        """SQLite's own page-level check (``PRAGMA quick_check``); empty when sound."""
        try:
            rows = self._conn.execute("PRAGMA quick_check").fetchall()
        except sqlite3.DatabaseError as e:
            return [str(e)]
        msgs = [str(r[0]) for r in rows]
        return [] if msgs == ["ok"] else msgs

    # ------------------------------------------------------------------- proofs

    @_locked
    def root(self, size: int | None = None) -> str:
        """Hex root hash of the tree of the first ``size`` records (all by default)."""
        return self._tree.root(size).hex()

    @_locked
    def prove_inclusion(self, index: int, size: int | None = None) -> dict[str, Any]:
        """Proof that record ``index`` is in the tree of ``size`` records.

        Returns a JSON-ready mapping: ``index``, ``size``, ``leaf_hash``,
        ``root_hash``, ``audit_path`` (RFC 9162 sibling hashes, leaf to root)
        and ``proof`` (pymerkle's serialized proof, verifiable with
        :func:`controller.ledger.merkle.verify_inclusion_proof`).
        """
        n = self.size() if size is None else size
        record = self.get(index)
        try:
            proof = self._tree.inclusion(index, n)
        except ProofError as e:
            raise LedgerError(str(e)) from e
        return {
            "index": index,
            "size": n,
            "leaf_hash": record.hash,
            "root_hash": self.root(n),
            "audit_path": rfc9162_audit_path(proof),
            "proof": proof,
        }

    @_locked
    def prove_consistency(self, prior_size: int, later_size: int | None = None) -> dict[str, Any]:
        """Proof that the tree of ``prior_size`` records is a prefix of that of ``later_size``.

        Returns a JSON-ready mapping in RFC 9162 section 2.1.4 terms:
        ``prior_size``, ``size``, ``prior_root_hash``, ``root_hash`` and
        ``consistency_path`` (the node hashes of ``PROOF(m, D[n])``, hex, in the
        RFC's order; verify with
        :func:`controller.ledger.merkle.verify_rfc9162_consistency` or any RFC
        9162 verifier).
        """
        n = self.size() if later_size is None else later_size
        if prior_size < 1:
            raise LedgerError(f"--from must be a tree size of at least 1, got {prior_size}")
        try:
            path = self._tree.rfc9162_consistency(prior_size, n)
        except ProofError as e:
            raise LedgerError(str(e)) from e
        return {
            "prior_size": prior_size,
            "size": n,
            "prior_root_hash": self.root(prior_size),
            "root_hash": self.root(n),
            "consistency_path": [h.hex() for h in path],
        }

    @_locked
    def backup(self, dest: str | os.PathLike[str]) -> None:
        """Write a consistent, self-contained copy of the ledger (for auditors)."""
        try:
            target = sqlite3.connect(Path(dest))
            with target:
                self._conn.backup(target)
            target.execute("PRAGMA journal_mode = DELETE")
            target.close()
        except sqlite3.Error as e:
            raise LedgerError(f"cannot copy ledger {self.path} to {dest}: {e}") from e


class _SqliteLeaves:
    """Leaf hashes read from the ledger's records table."""

    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger

    def count(self) -> int:
        return self._ledger.size()

    def leaves(self, offset: int, width: int) -> list[bytes]:
        rows = self._ledger._conn.execute(
            "SELECT leaf_hash FROM records WHERE idx BETWEEN ? AND ? ORDER BY idx",
            (offset + 1, offset + width),
        ).fetchall()
        return [bytes(r[0]) for r in rows]
