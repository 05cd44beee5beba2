"""A controller's durable memory: the active plan, kept across restarts.

A controller remembers the highest sequence it activated (and that plan's digest,
start time and timing) so that an old envelope replayed after a restart is still
refused, and the change limits of the next plan are checked against the plan the
street really runs. The record is written atomically and durably before the
controller acknowledges ActivatePlan: temporary file, fsync, rename, fsync of the
directory.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from configs.digests import canonical_json
from configs.errors import ActuationError
from configs.timing import IntersectionTiming

__all__ = ["ActiveRecord", "ControllerMemory"]

logger = logging.getLogger(__name__)

_SAFE_NAME = re.compile(r"[^A-Za-z0-9_.-]")


@dataclass(frozen=True)
class ActiveRecord:
    """The active plan as remembered on disk."""

    sequence: int
    digest: str
    from_s: float
    timing: IntersectionTiming

    def to_dict(self, tls_id: str) -> dict[str, Any]:
        """Plain data for the state file."""
        return {
            "tls_id": tls_id,
            "active_sequence": self.sequence,
            "active_digest": self.digest,
            "active_from_s": self.from_s,
            "active_timing": self.timing.model_dump(mode="json"),
        }


class ControllerMemory:
    """The state file of one controller under a state directory."""

    def __init__(self, state_dir: Path, tls_id: str) -> None:
        self.tls_id = tls_id
        self.directory = Path(state_dir)
        self.path = self.directory / f"controller-{_SAFE_NAME.sub('_', tls_id)}.state.json"

    def load(self) -> ActiveRecord | None:
        """The remembered active plan, or ``None`` when there is no state file yet.

        Raises:
            ActuationError: the file exists but cannot be read or is corrupt (a
                controller that forgot its sequence must not start: it would accept replays).
        """
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise ActuationError(f"cannot read controller state {self.path}: {e.strerror}") from e
        try:
            raw = json.loads(data)
            if raw.get("tls_id") != self.tls_id:
                raise ValueError(f"state is for {raw.get('tls_id')!r}, not {self.tls_id!r}")
            return ActiveRecord(
                sequence=int(raw["active_sequence"]),
                digest=str(raw["active_digest"]),
                from_s=float(raw["active_from_s"]),
                timing=IntersectionTiming.model_validate(raw["active_timing"]),
            )
        except (ValueError, KeyError, TypeError, AttributeError, ValidationError) as e:
            raise ActuationError(
                f"controller state {self.path} is corrupt ({e}); restore it from a backup "
                "or re-provision the controller"
            ) from e

    def save(self, record: ActiveRecord) -> None:
        """Write ``record`` atomically and durably (temp file, fsync, rename, fsync dir).

        Raises:
            ActuationError: the state directory cannot be written.
        """
        data = canonical_json(record.to_dict(self.tls_id))
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
            dir_fd = os.open(self.directory, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as e:
            raise ActuationError(
                f"cannot persist controller state {self.path}: {e.strerror}"
            ) from e
