"""The daemon's schedule: APScheduler executor, cycle slots and their skips.

Cycles run every ``schedule.interval_s`` on slots put on multiples of the
interval since the Unix epoch (when aligned), with ``max_instances=1`` and
``coalesce=True``, so a cycle never overlaps the next; a slot that comes due
while a cycle still runs is skipped (``overrun``), one the scheduler woke up
too late for is skipped (``missed``), one that could not get the runner is
skipped (``busy``). :class:`SlotLog` keeps those skips until they can be
recorded through the runner (after the running cycle, so the runner is never
called from two threads at once). :func:`deployment_result` and
:class:`CycleRun` classify and describe what one slot's cycle did.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from apscheduler.events import (
    EVENT_JOB_MAX_INSTANCES,
    EVENT_JOB_MISSED,
    JobExecutionEvent,
    JobSubmissionEvent,
    SchedulerEvent,
)
from apscheduler.executors.base import BaseExecutor, run_job
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger

from configs.outcomes import DeploymentResult
from controller.contracts import ComponentHealth, CycleReportLike, SkipReason
from controller.metrics import Metrics

__all__ = [
    "CYCLE_JOB_ID",
    "FEEDBACK_JOB_ID",
    "CycleRun",
    "DaemonThreadExecutor",
    "SlotLog",
    "build_scheduler",
    "cycle_trigger",
    "deployment_result",
    "misfire_grace_s",
    "next_run_time",
    "record_cycle_metrics",
    "scheduled_run_time",
    "slot_floor",
]

logger = logging.getLogger(__name__)

CYCLE_JOB_ID = "cycle"
FEEDBACK_JOB_ID = "feedback"

_SKIP_WHY: dict[SkipReason, str] = {
    "overrun": "the previous cycle is still running",
    "missed": "the scheduler woke up too late for it (host suspended or overloaded)",
    "busy": "feedback collection or a reload held the runner",
}


# --- the executor: one daemon thread per job run ---------------------------------------


class _JobThread(threading.Thread):
    """A job run, carrying the time it was scheduled for."""

    scheduled_run_time: datetime | None = None


class DaemonThreadExecutor(BaseExecutor):  # type: ignore[misc]
    """Runs each job in its own daemon thread.

    APScheduler's pool executor uses non-daemon threads that the interpreter
    joins at exit, so a cycle stuck past the shutdown deadline would keep the
    process alive; these threads do not. The thread also carries the scheduled
    run time, which APScheduler does not pass to the job function.
    """

    def _do_submit_job(self, job: Any, run_times: list[datetime]) -> None:
        def target() -> None:
            try:
                events = run_job(job, job._jobstore_alias, run_times, self._logger.name)
            except BaseException as e:  # pragma: no cover - run_job catches job errors
                self._run_job_error(job.id, e, e.__traceback__)
            else:
                self._run_job_success(job.id, events)

        thread = _JobThread(target=target, name=f"signaltwin-{job.id}", daemon=True)
        thread.scheduled_run_time = run_times[-1] if run_times else None
        thread.start()


def scheduled_run_time() -> datetime:
    """The slot the running job was scheduled for (now, outside a job thread)."""
    thread = threading.current_thread()
    if isinstance(thread, _JobThread) and thread.scheduled_run_time is not None:
        return thread.scheduled_run_time.astimezone(UTC)
    return datetime.now(UTC)


def slot_floor(moment: datetime, interval_s: float) -> datetime:
    """The latest slot at or before ``moment`` (slots are multiples of the interval)."""
    epoch_s = moment.timestamp()
    return datetime.fromtimestamp(math.floor(epoch_s / interval_s) * interval_s, UTC)


def misfire_grace_s(interval_s: float, configured: int | None = None) -> int:
    """How late a slot may start before it counts as missed (a quarter interval, >= 1 s)."""
    if configured is not None:
        return max(1, configured)
    return max(1, int(interval_s / 4))


def cycle_trigger(interval_s: float, align_to_clock: bool) -> IntervalTrigger:
    """The cycle job's trigger: every ``interval_s``, on the slot grid when aligned."""
    now = datetime.now(UTC)
    start = slot_floor(now, interval_s) if align_to_clock else now
    return IntervalTrigger(seconds=interval_s, start_date=start, timezone=UTC)


def build_scheduler(
    cycle_job: Callable[[], None],
    feedback_job: Callable[[], None],
    trigger: IntervalTrigger,
    *,
    cycle_grace_s: int,
    feedback_interval_s: float,
) -> BackgroundScheduler:
    """The daemon's scheduler: the cycle job and the feedback job, never overlapping."""
    scheduler = BackgroundScheduler(
        executors={"default": DaemonThreadExecutor()},
        timezone=UTC,
        daemon=True,
    )
    scheduler.add_job(
        cycle_job,
        trigger=trigger,
        id=CYCLE_JOB_ID,
        name="signaltwin cycle",
        max_instances=1,
        coalesce=True,
        misfire_grace_time=cycle_grace_s,
    )
    scheduler.add_job(
        feedback_job,
        trigger=IntervalTrigger(seconds=feedback_interval_s, timezone=UTC),
        id=FEEDBACK_JOB_ID,
        name="signaltwin feedback",
        max_instances=1,
        coalesce=True,
        misfire_grace_time=max(1, int(feedback_interval_s)),
    )
    return scheduler


def next_run_time(scheduler: BackgroundScheduler | None, job_id: str) -> str:
    """The job's next run time as ``YYYY-MM-DDTHH:MM:SSZ`` ("?" when not scheduled)."""
    if scheduler is None:
        return "?"
    job = scheduler.get_job(job_id)
    if job is None or job.next_run_time is None:
        return "?"
    moment: datetime = job.next_run_time
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class SlotLog:
    """The slots handled so far and the skips not yet recorded in the ledger.

    Args:
        metrics: where skips are counted (``signaltwin_cycle_skipped_total{reason}``).
    """

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self._last_slot: datetime | None = None  # the last slot run or skipped
        self._skips: list[tuple[datetime, SkipReason]] = []
        self._lock = threading.Lock()

    def reset(self) -> None:
        """Forget the last slot (the slot grid changed)."""
        with self._lock:
            self._last_slot = None

    def skip(self, slot_time: datetime, reason: SkipReason) -> None:
        """Log, count and remember a skipped slot."""
        slot_time = slot_time.astimezone(UTC)
        logger.warning(
            "cycle slot %s skipped (%s): %s", slot_time.isoformat(), reason, _SKIP_WHY[reason]
        )
        self._metrics.count_skip(reason)
        with self._lock:
            self._skips.append((slot_time, reason))
            if self._last_slot is None or slot_time > self._last_slot:
                self._last_slot = slot_time

    def listen(self, scheduler: BackgroundScheduler) -> None:
        """Log the cycle slots the scheduler skips (overrun, missed) as skips."""
        scheduler.add_listener(self._on_max_instances, EVENT_JOB_MAX_INSTANCES)
        scheduler.add_listener(self._on_missed, EVENT_JOB_MISSED)

    def _on_max_instances(self, event: SchedulerEvent) -> None:
        if event.job_id != CYCLE_JOB_ID or not isinstance(event, JobSubmissionEvent):
            if event.job_id == FEEDBACK_JOB_ID:
                logger.info("feedback collection still running; this run is skipped")
            return
        for run_time in event.scheduled_run_times:
            self.skip(run_time, "overrun")

    def _on_missed(self, event: SchedulerEvent) -> None:
        if event.job_id != CYCLE_JOB_ID or not isinstance(event, JobExecutionEvent):
            return
        self.skip(event.scheduled_run_time, "missed")

    def note_gap(self, slot_time: datetime, interval_s: float) -> None:
        """Report slots between the last one handled and ``slot_time`` as missed.

        APScheduler's ``coalesce`` silently drops all but the latest of several
        overdue run times (after the host was suspended, or the process stopped),
        so gaps in the slot sequence are found here instead.
        """
        with self._lock:
            last, self._last_slot = self._last_slot, max(slot_time, self._last_slot or slot_time)
        if last is None or slot_time <= last:
            return
        lost = round((slot_time - last).total_seconds() / interval_s) - 1
        for k in range(1, lost + 1):
            self.skip(last + timedelta(seconds=k * interval_s), "missed")

    def flush(self, record_skip: Callable[[datetime, str], None]) -> None:
        """Hand every remembered skip to ``record_skip`` (the runner's), quietly."""
        with self._lock:
            skips, self._skips = self._skips, []
        for slot_time, reason in skips:
            try:
                record_skip(slot_time, reason)
            except Exception:
                logger.exception("runner.record_skip failed for slot %s", slot_time.isoformat())


# --- what one slot's cycle did ------------------------------------------------------------


def deployment_result(report: CycleReportLike, cancelled: bool = False) -> DeploymentResult:
    """Classify a cycle's outcome for ``signaltwin_cycles_total{result}``.

    Args:
        report: the cycle's report.
        cancelled: whether the cycle's cancel event was set when it returned (a
            cycle that did not finish ok then counts as ``aborted``).
    """
    if report.deployed:
        return DeploymentResult.DEPLOYED
    if not report.ok:
        return DeploymentResult.ABORTED if cancelled else DeploymentResult.FAILED
    if report.decision == "pass":
        return DeploymentResult.SHADOW
    return DeploymentResult.REFUSED


@dataclass(frozen=True)
class CycleRun:
    """One cycle as the daemon saw it: the runner's report plus timing and outcome."""

    slot_time: datetime
    report: CycleReportLike
    result: DeploymentResult
    duration_s: float
    returned: bool
    """False when ``run_cycle`` raised and ``report`` was made up by the daemon."""

    def describe(self) -> str:
        """One line for logs and systemd's STATUS, e.g. ``cycle 12:04:00Z: deployed``."""
        slot = self.slot_time.astimezone(UTC).strftime("%H:%M:%SZ")
        text = f"cycle {slot}: {self.result.value}"
        report = self.report
        if report.decision and report.decision != "none":
            text += f" (gate {report.decision})"
        shown = (DeploymentResult.DEPLOYED, DeploymentResult.SHADOW)
        if report.sequence is not None and self.result in shown:
            text += f", sequence {report.sequence}"
        if report.error:
            text += f": {report.error}"
        return text


def record_cycle_metrics(metrics: Metrics, run: CycleRun) -> None:
    """Record what one cycle did in the daemon's metrics."""
    report = run.report
    metrics.observe_cycle(run.duration_s)
    for stage, stage_s in report.stage_s.items():
        metrics.observe_stage(stage, stage_s)
    if report.decision and report.decision != "none":
        metrics.count_gate_decision(report.decision)
    metrics.count_cycle(run.result)
    if isinstance(report, ComponentHealth):
        metrics.count_hsm_error(report.hsm_errors)
        for controller, errors in report.opcua_errors.items():
            metrics.count_opcua_error(controller, errors)
        for controller, up in report.controllers_up.items():
            metrics.set_controller_up(controller, up)
    if report.ok:
        metrics.mark_success(time.time())
