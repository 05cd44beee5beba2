"""Exports for auditors: JSON Lines of every record and checkpoint, and tree heads.

A tree head an auditor keeps (:func:`write_heads`, ``audit checkpoints
--export FILE`` or ``audit verify --export-head FILE``) is handed back to the
next audit (:func:`read_heads`, ``audit verify --trusted-head FILE``): the
ledger must then be an extension of it, which is the only way to see a
rollback (records cut at the tail together with their checkpoints).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from pydantic import ValidationError

from configs.errors import LedgerError
from controller.ledger.checkpoints import Checkpoint
from controller.ledger.records import CheckpointHead, format_time
from controller.ledger.store import Ledger

__all__ = ["export_jsonl", "read_heads", "write_heads"]


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


def write_heads(heads: Sequence[Checkpoint], path: Path) -> Path:
    """Write signed checkpoints as JSON Lines (one :class:`CheckpointHead` per line).

    Raises:
        LedgerError: the file cannot be written.
    """
    text = "".join(json.dumps(cp.to_json(), sort_keys=True) + "\n" for cp in heads)
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as e:
        raise LedgerError(f"cannot write tree heads to {path}: {e.strerror}") from e
    return path


def read_heads(path: Path) -> list[Checkpoint]:
    """Read tree heads written by :func:`write_heads` (their signatures are checked later).

    Raises:
        LedgerError: the file is unreadable, empty, or a line is not a tree head.
    """
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise LedgerError(f"cannot read trusted tree heads from {path}: {e}") from e
    heads: list[Checkpoint] = []
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            head = CheckpointHead.model_validate_json(line)
        except ValidationError as e:
            raise LedgerError(
                f"{path} line {n} is not a tree head written by 'audit checkpoints --export' "
                f"({e.errors()[0]['msg']})"
            ) from e
        heads.append(Checkpoint.from_head(head))
    if not heads:
        raise LedgerError(
            f"{path} holds no tree head; export one with 'audit checkpoints --export'"
        )
    return heads
