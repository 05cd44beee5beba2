"""Signed checkpoints: the ledger's tree head at a size, signed by the HSM.

A checkpoint is stored as its signed note (the layout of a C2SP checkpoint) and
its signature; :class:`Checkpoint` parses a stored row strictly and
:meth:`Checkpoint.head` gives the :class:`~controller.ledger.records.CheckpointHead`
model an auditor exports and later hands back as a trusted head.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from configs.errors import LedgerError
from controller.ledger.records import CheckpointHead, format_time, parse_time

__all__ = ["Checkpoint", "RawCheckpoint"]

_TIME_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$")


@dataclass(frozen=True)
class RawCheckpoint:
    """A stored checkpoint row, unparsed and untrusted."""

    seq: int
    size: int
    keyid: str
    note: bytes
    signature: bytes


@dataclass(frozen=True)
class Checkpoint:
    """A signed tree head: the ledger had ``size`` records with root ``root_hash`` at ``time``.

    ``note`` is the signed text, in the layout of a C2SP checkpoint::

        signaltwin.ledger/<ledger id>
        <size>
        <base64 root hash>
        time <UTC time>

    ``signature`` is the DER ECDSA P-256 signature over SHA-256(note).
    """

    seq: int
    origin: str
    size: int
    root_hash: bytes
    time: datetime
    keyid: str
    note: bytes
    signature: bytes

    @staticmethod
    def make_note(origin: str, size: int, root_hash: bytes, time: datetime) -> bytes:
        """The exact bytes that are signed."""
        root_b64 = base64.b64encode(root_hash).decode("ascii")
        return f"{origin}\n{size}\n{root_b64}\ntime {format_time(time)}\n".encode()

    @classmethod
    def parse(cls, raw: RawCheckpoint) -> Checkpoint:
        """Parse a stored checkpoint strictly.

        Raises:
            LedgerError: the note is not in the layout above.
        """
        try:
            text = raw.note.decode("utf-8")
        except UnicodeDecodeError as e:
            raise LedgerError(f"checkpoint {raw.seq}: note is not UTF-8") from e
        lines = text.split("\n")
        if len(lines) != 5 or lines[4] != "" or not lines[3].startswith("time "):
            raise LedgerError(f"checkpoint {raw.seq}: note is not a 4-line checkpoint")
        origin, size_text, root_text, time_text = lines[0], lines[1], lines[2], lines[3][5:]
        if not size_text.isdigit() or str(int(size_text)) != size_text:
            raise LedgerError(f"checkpoint {raw.seq}: size {size_text!r} is not a number")
        try:
            root_hash = base64.b64decode(root_text, validate=True)
        except ValueError as e:
            raise LedgerError(f"checkpoint {raw.seq}: root hash is not base64") from e
        if len(root_hash) != 32 or not _TIME_RE.match(time_text):
            raise LedgerError(f"checkpoint {raw.seq}: bad root hash length or time")
        cp = cls(
            seq=raw.seq,
            origin=origin,
            size=int(size_text),
            root_hash=root_hash,
            time=parse_time(time_text),
            keyid=raw.keyid,
            note=raw.note,
            signature=raw.signature,
        )
        if cls.make_note(origin, cp.size, root_hash, cp.time) != raw.note:
            raise LedgerError(f"checkpoint {raw.seq}: note is not in canonical form")
        if cp.size != raw.size:
            raise LedgerError(
                f"checkpoint {raw.seq}: size column {raw.size} differs from the signed size "
                f"{cp.size}"
            )
        return cp

    def signed_note(self) -> str:
        """The checkpoint as a signed note: the text, a blank line, a signature line."""
        sig = base64.b64encode(bytes.fromhex(self.keyid[:8]) + self.signature).decode("ascii")
        return f"{self.note.decode()}\n\u2014 signaltwin-ledger-{self.keyid[:16]} {sig}\n"

    def head(self) -> CheckpointHead:
        """The exported form (``audit checkpoints --export``, ``--trusted-head``)."""
        return CheckpointHead(
            checkpoint=self.seq,
            origin=self.origin,
            size=self.size,
            root_hash=self.root_hash.hex(),
            time=format_time(self.time),
            keyid=self.keyid,
            note=self.note.decode(),
            signature=base64.b64encode(self.signature).decode("ascii"),
        )

    @classmethod
    def from_head(cls, head: CheckpointHead) -> Checkpoint:
        """Parse an exported head back (its note is checked as strictly as a stored one).

        Raises:
            LedgerError: the note or signature is malformed.
        """
        try:
            signature = base64.b64decode(head.signature, validate=True)
        except ValueError as e:
            raise LedgerError(f"checkpoint {head.checkpoint}: signature is not base64") from e
        cp = cls.parse(
            RawCheckpoint(head.checkpoint, head.size, head.keyid, head.note.encode(), signature)
        )
        if cp.root_hash.hex() != head.root_hash or cp.origin != head.origin:
            raise LedgerError(
                f"checkpoint {head.checkpoint}: root_hash or origin differs from its signed note"
            )
        return cp

    def to_json(self) -> dict[str, Any]:
        """JSON view (for export and ``audit show``)."""
        data: dict[str, Any] = self.head().model_dump(mode="json")
        return data
