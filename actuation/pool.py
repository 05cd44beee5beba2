"""The pool of controller sessions: reads and the two-phase push.

:class:`ControllerPool` keeps one :class:`~actuation.session.ControllerSession`
per controller and offers:

* :meth:`ControllerPool.read_all` - every controller's detectors, measurements,
  plan state and health, read concurrently (one Read request each);
* :meth:`ControllerPool.push` - stage the signed envelope on every controller
  concurrently; only if every one of them staged it, activate all at one common
  future field time aligned to the cycle; read back the active sequence and
  digest. If any stage is refused, times out or loses its session, the plan is
  aborted everywhere, so no controller runs a plan the others did not stage.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

from asyncua import ua as _ua

from actuation import contract as c
from actuation.contract import PlanStatus
from actuation.session import ControllerSession
from actuation.types import (
    ClientCredentials,
    ControllerPushResult,
    ControllerSnapshot,
    ControllerTarget,
    PushReport,
)
from configs.errors import ActuationError, ConfigError
from configs.outcomes import PushOutcome
from configs.settings import ControllersSettings
from configs.timing import TimingConfiguration
from hsm.envelope import Envelope

# asyncua's ``ua`` package re-exports its names without ``__all__``, which strict
# mypy rejects, and types NodeId's arguments with its own aliases: use it untyped.
ua: Any = _ua

__all__ = ["ControllerPool", "aligned_activation_time", "pool_from_settings"]

logger = logging.getLogger(__name__)

T = TypeVar("T")


def aligned_activation_time(now_s: float, lead_s: float, alignment_s: float | None) -> float:
    """The first multiple of ``alignment_s`` at or after ``now_s + lead_s``.

    Without an alignment, ``now_s + lead_s`` rounded up to a whole second.
    """
    earliest = now_s + lead_s
    if alignment_s is None or alignment_s <= 0:
        return float(math.ceil(earliest))
    return math.ceil(earliest / alignment_s) * alignment_s


_SNAPSHOT_NODES = [
    c.FIELD_TIME,
    c.HEALTH,
    c.ACTIVE_SEQUENCE,
    c.ACTIVE_DIGEST,
    c.ACTIVE_FROM_FIELD_TIME,
    c.STAGED_SEQUENCE,
    c.STAGED_DIGEST,
    c.DETECTOR_IDS,
    c.DETECTOR_COUNTS,
    c.DETECTOR_OCCUPANCY,
    c.MEAN_WAIT,
    c.NOX,
    c.INTERVAL_END,
]


def _snapshot(
    tls_id: str, values: list[Any], totals: list[Any] | None = None
) -> ControllerSnapshot:
    (ft, health, a_seq, a_dig, a_from, s_seq, s_dig, ids, counts, occ, wait, nox, end) = values
    halting_total, nox_total = (None, None) if totals is None else totals
    ids = list(ids or [])
    counts = list(counts or [])
    occ = list(occ or [])
    if not (len(ids) == len(counts) == len(occ)):
        raise ActuationError(
            f"controller {tls_id}: detector arrays differ in length "
            f"({len(ids)}, {len(counts)}, {len(occ)})"
        )
    return ControllerSnapshot(
        tls_id=tls_id,
        reachable=True,
        field_time_s=float(ft),
        health=str(health),
        active_sequence=int(a_seq),
        active_digest=str(a_dig),
        active_from_s=float(a_from),
        staged_sequence=int(s_seq),
        staged_digest=str(s_dig),
        detectors={str(i): (int(n), float(o)) for i, n, o in zip(ids, counts, occ, strict=True)},
        mean_wait_s=float(wait),
        nox_mg=float(nox),
        interval_end_s=float(end),
        halting_total_veh_s=None if halting_total is None else float(halting_total),
        nox_total_mg=None if nox_total is None else float(nox_total),
    )


def _digest_of(envelope: bytes) -> str:
    """The digest of the timing document inside ``envelope`` (what controllers report)."""
    try:
        payload = Envelope.from_json(envelope).payload
        return TimingConfiguration.parse(payload).digest()
    except Exception as e:
        raise ConfigError(f"cannot push: the envelope does not hold a timing document: {e}") from e


# --------------------------------------------------------------------------- the pool


class ControllerPool:
    """Persistent secure sessions to every controller; reads and the two-phase push.

    Use inside a running event loop: ``await pool.start()``, then
    :meth:`read_all` and :meth:`push`, then ``await pool.close()``.

    Args:
        endpoints: The controllers.
        credentials: Client certificate, key, user and password.
        connect_timeout_s: Limit for one connection attempt.
        call_timeout_s: Limit for one method call or read.
        activate_lead_s: Default lead from "now" to the activation time.
        watchdog_s: How often asyncua checks that an idle session is alive.
        backoff_max_s: Longest wait between reconnection attempts.
        connect_concurrency: Most handshakes in flight at once (each costs RSA
            work on both sides; hundreds at once would time out and storm).
    """

    def __init__(
        self,
        endpoints: Iterable[ControllerTarget],
        credentials: ClientCredentials,
        connect_timeout_s: float = 10.0,
        call_timeout_s: float = 5.0,
        activate_lead_s: float = 10.0,
        watchdog_s: float = 5.0,
        backoff_max_s: float = 30.0,
        connect_concurrency: int = 8,
    ) -> None:
        self._connect_gate = asyncio.Semaphore(max(1, connect_concurrency))
        self._links = {
            e.tls_id: ControllerSession(
                e,
                credentials,
                connect_timeout_s,
                call_timeout_s,
                watchdog_s,
                backoff_max_s,
                self._connect_gate,
            )
            for e in endpoints
        }
        if not self._links:
            raise ConfigError("controllers.endpoints is empty: configure at least one controller")
        self.activate_lead_s = activate_lead_s

    @property
    def intersections(self) -> list[str]:
        """The intersection ids, sorted."""
        return sorted(self._links)

    def connected(self) -> dict[str, bool]:
        """Whether each controller's session is up."""
        return {k: link.connected.is_set() for k, link in self._links.items()}

    async def start(self, wait_s: float | None = None) -> None:
        """Start connecting to every controller; optionally wait up to ``wait_s`` for all."""
        for link in self._links.values():
            link.start()
        if wait_s is not None:
            await self.wait_connected(wait_s)

    async def wait_connected(self, timeout_s: float) -> bool:
        """Wait until every session is up (True) or ``timeout_s`` passes (False)."""
        try:
            await asyncio.wait_for(
                asyncio.gather(*(link.connected.wait() for link in self._links.values())), timeout_s
            )
        except TimeoutError:
            return False
        return True

    async def close(self) -> None:
        """Close every session."""
        await asyncio.gather(
            *(link.close() for link in self._links.values()), return_exceptions=True
        )

    async def read_one(self, tls_id: str) -> ControllerSnapshot:
        """One controller's snapshot (``reachable=False`` with the error if it failed)."""
        link = self._links[tls_id]
        nodes = _SNAPSHOT_NODES + list(c.CUMULATIVE_TOTALS)
        try:
            try:
                values = await link.read(nodes)
            except ActuationError as e:
                if not str(e).startswith("read refused"):
                    raise
                # a controller that predates the cumulative totals: the rest still counts
                return _snapshot(tls_id, await link.read(_SNAPSHOT_NODES))
            n = len(_SNAPSHOT_NODES)
            return _snapshot(tls_id, values[:n], values[n:])
        except (ActuationError, ValueError, TypeError) as e:
            return ControllerSnapshot(
                tls_id=tls_id, reachable=False, health="unreachable", error=str(e)
            )

    async def read_all(self) -> dict[str, ControllerSnapshot]:
        """Every controller's snapshot, read concurrently."""
        snaps = await asyncio.gather(*(self.read_one(t) for t in self._links))
        return {s.tls_id: s for s in snaps}

    async def abort_staged(
        self, sequence: int, only: Iterable[str] | None = None
    ) -> dict[str, tuple[int, str] | str]:
        """Call ``AbortStaged(sequence)`` on every controller (or those in ``only``).

        Used by the daemon's start-up reconciliation after a crash mid-push
        (:mod:`controller.recovery`). Returns per controller the (status,
        message) the controller answered, or the error text when the call failed
        (that abort is then retried when the session is back).
        """
        out = await self._each(
            lambda link: link.call(c.ABORT_STAGED, ua.Variant(sequence, ua.VariantType.UInt64)),
            only,
        )
        answers: dict[str, tuple[int, str] | str] = {}
        for tls, result in out.items():
            if isinstance(result, BaseException):
                self._links[tls].pending_abort = sequence
                answers[tls] = f"{type(result).__name__}: {result}"
            else:
                answers[tls] = result
        return answers

    async def _each(
        self, fn: Callable[[ControllerSession], Awaitable[T]], only: Iterable[str] | None = None
    ) -> dict[str, T | BaseException]:
        ids = list(self._links) if only is None else list(only)
        out = await asyncio.gather(*(fn(self._links[t]) for t in ids), return_exceptions=True)
        return dict(zip(ids, out, strict=True))

    async def push(
        self,
        envelope: bytes,
        sequence: int,
        *,
        alignment_s: float | None = None,
        lead_s: float | None = None,
    ) -> PushReport:
        """Stage on all, activate all at one aligned field time, read back.

        Args:
            envelope: The signed DSSE envelope (bytes, as from ``Envelope.to_json()``).
            sequence: The plan's sequence (as inside the document).
            alignment_s: Activate at a multiple of this many field seconds (the
                cycle length, so every plan starts on a cycle boundary).
            lead_s: Least field time from now to activation (default
                ``activate_lead_s``); must cover staging and activation.

        Returns:
            The report; it never raises for a controller's failure (rows say what
            failed); the outcome says whether the plan runs everywhere.
        """
        started = time.perf_counter()
        digest = _digest_of(envelope)
        lead = self.activate_lead_s if lead_s is None else lead_s
        rows = {t: ControllerPushResult(tls_id=t) for t in self._links}

        async def stage(link: ControllerSession) -> tuple[tuple[int, str], float]:
            call = link.call(c.STAGE_PLAN, ua.Variant(envelope, ua.VariantType.ByteString))
            clock = link.read([c.FIELD_TIME])
            (status, message), values = await asyncio.gather(call, clock)
            return (status, message), float(values[0])

        staged = await self._each(stage)
        field_now = 0.0
        probe: str | None = None
        all_staged = True
        for tls, stage_out in staged.items():
            if isinstance(stage_out, BaseException):
                rows[tls] = replace(rows[tls], error=f"stage: {stage_out}")
                all_staged = False
                continue
            (status, message), ft = stage_out
            rows[tls] = replace(rows[tls], stage_status=status, stage_message=message)
            if probe is None or ft > field_now:
                field_now, probe = ft, tls
            if status != PlanStatus.OK:
                all_staged = False
        stage_done = time.perf_counter()

        if not all_staged:
            # Drop it everywhere it may have been staged (a timed-out call may still land).
            refused = {t for t, r in rows.items() if r.stage_status not in (None, PlanStatus.OK)}
            targets = [t for t in self._links if t not in refused]
            aborted = await self._each(
                lambda link: link.call(c.ABORT_STAGED, ua.Variant(sequence, ua.VariantType.UInt64)),
                targets,
            )
            for tls, abort_out in aborted.items():
                if isinstance(abort_out, BaseException):
                    note = f"abort: {abort_out} (retried when the session is back)"
                    rows[tls] = rows[tls].note(note)
                    self._links[tls].pending_abort = sequence
                else:
                    status, message = abort_out
                    rows[tls] = replace(rows[tls], abort_status=status, abort_message=message)
            failed = sorted(t for t, r in rows.items() if not r.staged)
            reason = f"stage failed on {len(failed)} controller(s): {', '.join(failed[:10])}"
            logger.warning("push %d aborted: %s", sequence, reason)
            end = time.perf_counter()
            return PushReport(
                sequence=sequence,
                digest=digest,
                outcome=PushOutcome.ABORTED,
                activate_at_field_time_s=None,
                controllers=list(rows.values()),
                stage_s=stage_done - started,
                total_s=end - started,
                reason=reason,
            )

        if probe is not None:
            # Staging took a while (hundreds of large documents); the field clock
            # moved on meanwhile, possibly faster than the wall clock: re-read it
            # on the controller that was furthest ahead.
            try:
                (again,) = await self._links[probe].read([c.FIELD_TIME])
                field_now = max(field_now, float(again))
            except ActuationError as e:
                logger.warning("push %d: field clock re-read on %s failed: %s", sequence, probe, e)
        at = aligned_activation_time(field_now, lead, alignment_s)
        activated = await self._each(
            lambda link: link.call(
                c.ACTIVATE_PLAN,
                ua.Variant(sequence, ua.VariantType.UInt64),
                ua.Variant(at, ua.VariantType.Double),
            )
        )
        for tls, act_out in activated.items():
            if isinstance(act_out, BaseException):
                rows[tls] = replace(rows[tls], error=f"activate: {act_out}")
            else:
                status, message = act_out
                rows[tls] = replace(rows[tls], activate_status=status, activate_message=message)
        activate_done = time.perf_counter()

        readback = await self._each(lambda link: link.read([c.ACTIVE_SEQUENCE, c.ACTIVE_DIGEST]))
        for tls, rb_out in readback.items():
            if isinstance(rb_out, BaseException):
                rows[tls] = rows[tls].note(f"readback: {rb_out}")
            else:
                rows[tls] = replace(
                    rows[tls], readback_sequence=int(rb_out[0]), readback_digest=str(rb_out[1])
                )
        end = time.perf_counter()
        good = [r.running(sequence, digest) for r in rows.values()]
        outcome_name = PushOutcome.ACTIVATED if all(good) else PushOutcome.PARTIAL
        reason = ""
        if outcome_name is PushOutcome.PARTIAL:
            bad = sorted(r.tls_id for r, g in zip(rows.values(), good, strict=True) if not g)
            reason = (
                f"activation or read-back failed on {len(bad)} controller(s): {', '.join(bad[:10])}"
            )
            logger.error("push %d partial: %s", sequence, reason)
        return PushReport(
            sequence=sequence,
            digest=digest,
            outcome=outcome_name,
            activate_at_field_time_s=at,
            controllers=list(rows.values()),
            stage_s=stage_done - started,
            activate_s=activate_done - stage_done,
            readback_s=end - activate_done,
            total_s=end - started,
            reason=reason,
        )


def pool_from_settings(settings: ControllersSettings, password: str) -> ControllerPool:
    """Build a pool from ``Settings.controllers`` (the daemon's TOML).

    Args:
        settings: The ``controllers`` section.
        password: The OPC UA password (read by the caller from ``password_file``).

    Raises:
        ConfigError: a certificate is not configured or cannot be read.
    """
    ctl = settings
    if ctl.client_certificate is None or ctl.client_private_key is None:
        raise ConfigError(
            "controllers.client_certificate and controllers.client_private_key must be set "
            "(or auto_provision = true for the demo)"
        )
    endpoints = []
    for e in ctl.endpoints:
        if e.server_certificate is None:
            raise ConfigError(
                f"controllers.endpoints[{e.intersection}].server_certificate is not set: "
                "the daemon only talks to controllers whose certificate it pins"
            )
        endpoints.append(ControllerTarget.from_files(e.intersection, e.url, e.server_certificate))
    return ControllerPool(
        endpoints,
        ClientCredentials(
            certificate=Path(ctl.client_certificate),
            private_key=Path(ctl.client_private_key),
            user=ctl.user,
            password=password,
        ),
        connect_timeout_s=ctl.connect_timeout_s,
        call_timeout_s=ctl.call_timeout_s,
        activate_lead_s=ctl.activate_lead_s,
    )
