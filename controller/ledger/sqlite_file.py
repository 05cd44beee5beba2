"""The SQLite file layout of a ledger: header pragmas, tables, append-only triggers.

``PRAGMA application_id`` marks the file as a signaltwin ledger and ``PRAGMA
user_version`` is the layout below; UPDATE and DELETE on every table are
refused by triggers (an attacker with the file can drop them, which is why the
auditor verifies hashes and signed checkpoints, not the triggers).
"""

from __future__ import annotations

import sqlite3
import uuid
from datetime import UTC, datetime
from pathlib import Path

from configs.errors import LedgerError
from controller.ledger.records import format_time

__all__ = [
    "APPLICATION_ID",
    "GENESIS_PREV",
    "RECORD_SCHEMA",
    "SCHEMA_VERSION",
    "check_header",
    "initialise",
]

#: ``PRAGMA application_id`` of a signaltwin ledger file ("STLG").
APPLICATION_ID = 0x53544C47
#: ``PRAGMA user_version``: the layout of the tables below.
SCHEMA_VERSION = 1
#: ``schema`` field of every record document.
RECORD_SCHEMA = "signaltwin.ledger.record/v1"
#: ``prev`` of the first record.
GENESIS_PREV = "0" * 64

_SCHEMA_SQL = """
CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE records(
    idx INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    time TEXT NOT NULL,
    dedupe_key TEXT UNIQUE,
    leaf_hash BLOB NOT NULL,
    body BLOB NOT NULL
);
CREATE INDEX records_kind ON records(kind, idx);
CREATE INDEX records_time ON records(time);
CREATE TABLE checkpoints(
    seq INTEGER PRIMARY KEY,
    size INTEGER NOT NULL,
    keyid TEXT NOT NULL,
    note BLOB NOT NULL,
    signature BLOB NOT NULL
);
"""

_APPEND_ONLY_TABLES = ("meta", "records", "checkpoints")


def initialise(conn: sqlite3.Connection) -> None:
    """Make the tables, the append-only triggers and the meta rows of a new ledger."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        for stmt in _SCHEMA_SQL.strip().split(";"):
            if stmt.strip():
                conn.execute(stmt)
        for table in _APPEND_ONLY_TABLES:
            for action in ("UPDATE", "DELETE"):
                conn.execute(
                    f"CREATE TRIGGER {table}_no_{action.lower()} BEFORE {action} ON {table} "
                    f"BEGIN SELECT RAISE(ABORT, 'the ledger is append-only: "
                    f"{action} on {table} refused'); END"
                )
        now = format_time(datetime.now(UTC))
        conn.executemany(
            "INSERT INTO meta(key, value) VALUES (?, ?)",
            [
                ("ledger_id", str(uuid.uuid4())),
                ("created_at", now),
                ("record_schema", RECORD_SCHEMA),
            ],
        )
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def check_header(path: Path, conn: sqlite3.Connection) -> None:
    """Refuse a file that is not a signaltwin ledger of this schema version.

    Raises:
        LedgerError: another application id, schema version, or missing tables.
    """
    app_id = conn.execute("PRAGMA application_id").fetchone()[0]
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if app_id != APPLICATION_ID:
        raise LedgerError(
            f"{path} is an SQLite database but not a signaltwin ledger "
            f"(application_id {app_id:#x}, expected {APPLICATION_ID:#x}); check the path"
        )
    if version != SCHEMA_VERSION:
        raise LedgerError(
            f"{path} has ledger schema version {version}; this signaltwin reads version "
            f"{SCHEMA_VERSION}: use the signaltwin release that wrote it"
        )
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    missing = {"meta", "records", "checkpoints"} - tables
    if missing:
        raise LedgerError(f"{path} lacks the ledger table(s) {', '.join(sorted(missing))}")
