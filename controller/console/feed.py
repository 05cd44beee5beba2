"""The console's live data: the ledger read in the background, the daemon's reports, changes.

:class:`ConsoleFeed` is a :class:`~controller.contracts.CycleObserver` (the
daemon tells it when each cycle starts and ends) and owns one thread that reads
the ledger read-only: every ``poll_s`` and at once after a cycle, it takes in the
records appended since its last look (records written outside a cycle, such as
measured deltas, arrive this way too), rebuilds the page's state and, when
anything changed, publishes a new version. The HTTP threads only read the
published JSON and wait for the next version (:meth:`ConsoleFeed.wait_for_change`).

At start-up only the newest ``initial_records`` records are read, one at a time,
so a ledger of a year's cycles costs the console a bounded moment and bounded memory.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from configs.errors import LedgerError
from controller.console.digest import LedgerDigest
from controller.console.state import LiveCycles
from controller.console.state import build_state as _build_state
from controller.console.views import ConsoleContext, ConsoleState
from controller.contracts import CycleReportLike
from controller.ledger import Ledger

__all__ = ["ConsoleFeed", "encode_state"]

logger = logging.getLogger(__name__)


def encode_state(data: dict[str, Any]) -> bytes:
    """The state as compact JSON (ASCII only; NaN refused: a bug, never sent to a browser).

    Keys keep their order: the stages of a cycle are listed in the cycle's order.
    """
    return json.dumps(data, allow_nan=False, separators=(",", ":")).encode("ascii")


class ConsoleFeed:
    """The console's data source and the daemon's cycle observer."""

    def __init__(
        self,
        context: ConsoleContext,
        ledger_path: Path,
        *,
        poll_s: float = 2.0,
        initial_records: int = 400,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        """Prepare the feed; :meth:`start` starts reading."""
        self.context = context
        self.ledger_path = ledger_path
        self.poll_s = poll_s
        self.initial_records = initial_records
        self._clock = clock or (lambda: datetime.now(UTC))
        self._digest = LedgerDigest(context.cycles_shown)
        self._live = LiveCycles(context.cycles_shown)
        self._ledger: Ledger | None = None
        self._problem: str | None = None
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._wake = threading.Event()
        self._closed = False
        self._thread: threading.Thread | None = None
        self._version = 0
        self._compare = b""
        self._state: ConsoleState = _build_state(context, self._digest, self._live)
        self._json = encode_state(self._state.to_dict() | {"version": 0})

    # ------------------------------------------------------------------ the observer

    def cycle_started(self, slot_time: datetime) -> None:
        """The daemon began a cycle."""
        with self._lock:
            self._live.started(slot_time, self._clock())
        self._wake.set()

    def cycle_finished(
        self, slot_time: datetime, report: CycleReportLike, result: str, duration_s: float
    ) -> None:
        """The daemon finished a cycle."""
        with self._lock:
            self._live.finished_cycle(slot_time, report, result, duration_s, self._clock())
        self._wake.set()

    # ------------------------------------------------------------------ readers

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def snapshot(self) -> tuple[int, bytes]:
        """The published version and its JSON."""
        with self._lock:
            return self._version, self._json

    def state(self) -> ConsoleState:
        """The published state."""
        with self._lock:
            return self._state

    def wait_for_change(self, version: int, timeout_s: float) -> tuple[int, bytes] | None:
        """The next version after ``version``; None after ``timeout_s`` or once closed."""
        with self._changed:
            self._changed.wait_for(lambda: self._version != version or self._closed, timeout_s)
            if self._closed or self._version == version:
                return None
            return self._version, self._json

    # ------------------------------------------------------------------ the reader thread

    def start(self) -> None:
        """Read the ledger in a background thread (at once, then every ``poll_s``)."""
        self._thread = threading.Thread(target=self._loop, name="signaltwin-console", daemon=True)
        self._thread.start()

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop reading, wake every waiting client, close the ledger."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        if self._ledger is not None:
            self._ledger.close()
            self._ledger = None

    def _loop(self) -> None:
        while not self._closed:
            try:
                self.refresh()
            except Exception:
                # the console must never take the daemon down; the next poll retries
                logger.exception("console: refreshing the state failed")
            self._wake.wait(self.poll_s)
            self._wake.clear()

    def refresh(self) -> bool:
        """Take in new ledger records and the daemon's reports; True when the state changed."""
        self._read_ledger()
        with self._lock:
            state = _build_state(
                self.context,
                self._digest,
                self._live,
                ledger_problem=self._problem,
                now=self._clock(),
            )
            data = state.to_dict()
            compare = encode_state({k: v for k, v in data.items() if k != "generated_at"})
            if compare == self._compare:
                return False
            self._compare = compare
            self._version += 1
            self._state = state
            self._json = encode_state(data | {"version": self._version})
            self._changed.notify_all()
            return True

    def _read_ledger(self) -> None:
        try:
            if self._ledger is None:
                if not self.ledger_path.is_file():
                    self._problem = "no ledger yet: the first cycle creates it"
                    return
                self._ledger = Ledger.open(self.ledger_path, readonly=True)
            size = self._ledger.size()
            if size < self._digest.last_index:
                # another ledger file took its place (restored from a backup): start over
                logger.warning("console: %s shrank; reading it again", self.ledger_path)
                self._digest = LedgerDigest(self.context.cycles_shown)
            start = max(self._digest.last_index + 1, size - self.initial_records + 1, 1)
            for index in range(start, size + 1):
                if self._closed:
                    return
                self._digest.ingest(self._ledger.get(index))
            self._problem = None
        except (LedgerError, sqlite3.Error) as e:
            self._problem = f"ledger not readable: {e}"
            logger.warning("console: %s", self._problem)
            if self._ledger is not None:
                self._ledger.close()
                self._ledger = None
