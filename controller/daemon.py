"""The daemon's process around the cycle: schedule, signals, reload, systemd, metrics.

The lifecycle follows uvicorn's ``server.py``: **start-up** (load settings, serve
metrics, build the cycle runner, start the scheduler, ``READY=1``) → **main
loop** (wake every ``tick_s``; act on the flags the signal handlers set) →
**shutdown** (``STOPPING=1``, cancel the running cycle, wait for it up to a
deadline, close the runner). Signal handlers only set flags.

Scheduling uses APScheduler 3: the cycle job runs every ``schedule.interval_s``
with ``max_instances=1`` and ``coalesce=True``, so a cycle never overlaps the
next; a slot that comes due while a cycle still runs is skipped (``overrun``),
one the scheduler woke up too late for is skipped (``missed``), and each skip
is logged, counted in ``signaltwin_cycle_skipped_total{reason}`` and recorded
through :meth:`CycleRunner.record_skip` (after the running cycle, so the runner
is never called from two threads at once). A second job collects measured
deltas and fine-tunes (:meth:`CycleRunner.collect_feedback`) on its own interval.
All runner calls are serialised by one lock; the runner need not be thread-safe,
except that the ``cancel`` event it was given is set from another thread.

Signals: SIGTERM or SIGINT stop gracefully (the running cycle is cancelled and
given ``schedule.shutdown_deadline_s`` to return); a second SIGINT forces the
exit; SIGHUP reloads the settings: an invalid file is refused and the old
settings kept; a valid one builds a new runner, which replaces the old one
between cycles and records the change via :meth:`CycleRunner.record_config_change`.
"""

from __future__ import annotations

__all__ = [
    "EXIT_FORCED",
    "EXIT_OK",
    "EXIT_SHUTDOWN_TIMEOUT",
    "EXIT_STARTUP_COMPONENT",
    "EXIT_STARTUP_CONFIG",
    "BasicCycleReport",
    "ComponentHealth",
    "CycleOutcome",
    "CycleRun",
    "CycleRunner",
    "Daemon",
    "DaemonOptions",
    "DaemonSettings",
    "FeedbackReport",
    "SkipReason",
    "deployment_result",
    "run_daemon",
]

import logging
import math
import signal
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import FrameType
from typing import Any, Generic, Literal, Protocol, TypeVar, runtime_checkable

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

from configs.errors import ConfigError
from controller.metrics import Metrics, MetricsServer, start_metrics_server
from controller.notify import Notifier, monotonic_usec, watchdog_timeout_s

logger = logging.getLogger(__name__)

EXIT_OK = 0
"""Stopped by a signal after the running cycle finished or aborted in time."""
EXIT_SHUTDOWN_TIMEOUT = 1
"""Stopped, but a cycle was still running when the shutdown deadline passed."""
EXIT_STARTUP_CONFIG = 2
"""The settings were invalid at start-up."""
EXIT_STARTUP_COMPONENT = 3
"""A component (metrics port, HSM, controllers, ...) failed at start-up."""
EXIT_FORCED = 130
"""A second SIGINT forced the exit."""

SkipReason = Literal["overrun", "missed", "busy"]
DeploymentResult = Literal["deployed", "shadow", "refused", "failed", "aborted"]

CYCLE_JOB_ID = "cycle"
FEEDBACK_JOB_ID = "feedback"


# --- what the daemon needs from the settings ---------------------------------------


class ScheduleSettingsLike(Protocol):
    """The ``[schedule]`` section, as far as the daemon reads it."""

    @property
    def interval_s(self) -> float:
        """Seconds between cycle starts."""
        ...

    @property
    def feedback_interval_s(self) -> float:
        """Seconds between feedback collections."""
        ...

    @property
    def shutdown_deadline_s(self) -> float:
        """How long a stop waits for the running cycle."""
        ...


class MetricsSettingsLike(Protocol):
    """The ``[metrics]`` section."""

    @property
    def enabled(self) -> bool:
        """Whether to serve metrics over HTTP."""
        ...

    @property
    def address(self) -> str:
        """Address to bind."""
        ...

    @property
    def port(self) -> int:
        """Port to bind (0: any free port)."""
        ...


class DaemonSettings(Protocol):
    """What the daemon reads from the settings (``configs.settings.Settings`` fits)."""

    @property
    def mode(self) -> str:
        """``auto`` or ``shadow``."""
        ...

    @property
    def schedule(self) -> ScheduleSettingsLike:
        """The schedule section."""
        ...

    @property
    def metrics(self) -> MetricsSettingsLike:
        """The metrics section."""
        ...


S = TypeVar("S", bound=DaemonSettings)
S_contra = TypeVar("S_contra", contravariant=True)


# --- what a cycle reports -------------------------------------------------------------


class CycleOutcome(Protocol):
    """What the daemon reads from a cycle's report (``controller.cycle.CycleReport`` fits).

    Attributes:
        ok: the cycle ran to its end without error (a refusal by the gate is ok).
        deployed: a plan was activated on the controllers.
        decision: the gate's decision (``pass``, ``refuse_wait``, ``refuse_nox``,
            ``refuse_failed``), or ``none`` when the cycle ended before the gate.
        stage_s: seconds per stage (``observe``, ``estimate``, ``propose``, ``screen``,
            ``whatif``, ``gate``, ``render``, ``sign``, ``push``, ``record``).
        error: what failed and why, when not ok.
        sequence: the sequence number of the deployed (or shadow) configuration.
    """

    @property
    def ok(self) -> bool: ...  # noqa: D102

    @property
    def deployed(self) -> bool: ...  # noqa: D102

    @property
    def decision(self) -> str: ...  # noqa: D102

    @property
    def stage_s(self) -> Mapping[str, float]: ...  # noqa: D102

    @property
    def error(self) -> str | None: ...  # noqa: D102

    @property
    def sequence(self) -> int | None: ...  # noqa: D102


@runtime_checkable
class ComponentHealth(Protocol):
    """Optional extra a report may carry: component errors met during the cycle.

    When a cycle's report has these attributes too, the daemon records them in
    ``signaltwin_hsm_errors_total``, ``signaltwin_opcua_errors_total{controller}``
    and ``signaltwin_controller_up{controller}``.
    """

    @property
    def hsm_errors(self) -> int: ...  # noqa: D102

    @property
    def opcua_errors(self) -> Mapping[str, int]: ...  # noqa: D102

    @property
    def controllers_up(self) -> Mapping[str, bool]: ...  # noqa: D102


@dataclass(frozen=True)
class BasicCycleReport:
    """A plain :class:`CycleOutcome` with :class:`ComponentHealth` (for fakes and crashes)."""

    ok: bool
    deployed: bool
    decision: str = "none"
    stage_s: Mapping[str, float] = field(default_factory=dict)
    error: str | None = None
    sequence: int | None = None
    hsm_errors: int = 0
    opcua_errors: Mapping[str, int] = field(default_factory=dict)
    controllers_up: Mapping[str, bool] = field(default_factory=dict)


@dataclass(frozen=True)
class FeedbackReport:
    """What a feedback collection did.

    Attributes:
        measured: deployments whose field outcome was measured in this run.
        prediction_error_ratios: per measured deployment, the relative error of the
            predicted change against the measured one (``|measured - predicted| /
            |predicted|``, or whatever ratio the runner documents).
        fine_tuned: whether the policy was fine-tuned.
    """

    measured: int = 0
    prediction_error_ratios: tuple[float, ...] = ()
    fine_tuned: bool = False


def deployment_result(report: CycleOutcome, cancelled: bool = False) -> DeploymentResult:
    """Classify a cycle's outcome for ``signaltwin_deployments_total{result}``.

    Args:
        report: the cycle's report.
        cancelled: whether the cycle's cancel event was set when it returned (a
            cycle that did not finish ok then counts as ``aborted``).
    """
    if report.deployed:
        return "deployed"
    if not report.ok:
        return "aborted" if cancelled else "failed"
    if report.decision == "pass":
        return "shadow"
    return "refused"


@dataclass(frozen=True)
class CycleRun:
    """One cycle as the daemon saw it: the runner's report plus timing and outcome."""

    slot_time: datetime
    report: CycleOutcome
    result: DeploymentResult
    duration_s: float
    returned: bool
    """False when ``run_cycle`` raised and ``report`` was made up by the daemon."""

    def describe(self) -> str:
        """One line for logs and systemd's STATUS, e.g. ``cycle 12:04:00Z: deployed``."""
        slot = self.slot_time.astimezone(UTC).strftime("%H:%M:%SZ")
        text = f"cycle {slot}: {self.result}"
        report = self.report
        if report.decision and report.decision != "none":
            text += f" (gate {report.decision})"
        if report.sequence is not None and self.result in ("deployed", "shadow"):
            text += f", sequence {report.sequence}"
        if report.error:
            text += f": {report.error}"
        return text


class CycleRunner(Protocol[S_contra]):
    """One configured cycle pipeline (built from settings by a factory).

    The daemon calls these methods from worker threads, never two at once.
    """

    def run_cycle(self, slot_time: datetime, cancel: threading.Event) -> CycleOutcome:
        """Run one cycle for ``slot_time`` (UTC); return promptly once ``cancel`` is set.

        Must never leave a plan staged but not activated: on cancel, abort what
        was staged (or let the activation complete) before returning.
        """
        ...

    def collect_feedback(self) -> FeedbackReport | None:
        """Collect measured deltas of past deployments and fine-tune the policy."""
        ...

    def record_skip(self, slot_time: datetime, reason: str) -> None:
        """Record in the ledger that the cycle slot ``slot_time`` was skipped, and why."""
        ...

    def record_config_change(self, settings: S_contra) -> None:
        """Record in the ledger that ``settings`` now apply (called on the new runner)."""
        ...

    def close(self) -> None:
        """Release connections, sessions and files."""
        ...


# --- the executor: one daemon thread per job run ---------------------------------------


class _JobThread(threading.Thread):
    """A job run, carrying the time it was scheduled for."""

    scheduled_run_time: datetime | None = None


class _DaemonThreadExecutor(BaseExecutor):  # type: ignore[misc]
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


def _scheduled_run_time() -> datetime:
    thread = threading.current_thread()
    if isinstance(thread, _JobThread) and thread.scheduled_run_time is not None:
        return thread.scheduled_run_time.astimezone(UTC)
    return datetime.now(UTC)


# --- the daemon ---------------------------------------------------------------------------


@dataclass(frozen=True)
class DaemonOptions:
    """Process-level knobs that are not in the settings file.

    Attributes:
        tick_s: how often the main loop looks at the signal flags.
        install_signal_handlers: install SIGTERM/SIGINT/SIGHUP handlers (only
            possible in the main thread; in-process tests call
            :meth:`Daemon.request_stop` / :meth:`Daemon.request_reload` instead).
        align_to_clock: put cycle slots on multiples of the interval since the Unix
            epoch (240 s: hh:00, hh:04, ...), so that slot times are predictable;
            otherwise the first slot is one interval after start-up.
        misfire_grace_s: how late a slot may start before it counts as missed
            (None: a quarter of the interval, at least 1 s).
    """

    tick_s: float = 0.1
    install_signal_handlers: bool = True
    align_to_clock: bool = True
    misfire_grace_s: int | None = None


class Daemon(Generic[S]):
    """The signaltwin daemon: runs cycles on a schedule until told to stop."""

    def __init__(
        self,
        settings_loader: Callable[[], S],
        cycle_factory: Callable[[S], CycleRunner[S]],
        metrics: Metrics,
        notifier: Notifier,
        options: DaemonOptions | None = None,
    ) -> None:
        """Prepare the daemon; nothing starts until :meth:`run`.

        Args:
            settings_loader: reads and validates the settings file (again on SIGHUP);
                raises ConfigError when it is invalid.
            cycle_factory: builds a runner from settings (connects, opens the ledger).
            metrics: where to record (its registry is served when metrics are enabled).
            notifier: systemd notifications (a no-op outside systemd).
            options: process-level knobs.
        """
        self._loader = settings_loader
        self._factory = cycle_factory
        self.metrics = metrics
        self._notifier = notifier
        self.options = options or DaemonOptions()

        # Flags set by signal handlers (plain attribute writes, safe in a handler).
        self.should_exit = False
        self.force_exit = False
        self._reload_requested = False

        self._cancel = threading.Event()
        self._stopping = False
        self._runner_lock = threading.Lock()
        self._settings: S | None = None
        self._runner: CycleRunner[S] | None = None
        self._pending: tuple[S, CycleRunner[S]] | None = None
        self._pending_lock = threading.Lock()  # ownership of _pending moves atomically
        self._last_slot: datetime | None = None  # the last slot run or skipped
        self._skips: list[tuple[datetime, SkipReason]] = []
        self._skips_lock = threading.Lock()
        self._scheduler: BackgroundScheduler | None = None
        self._server: MetricsServer | None = None
        self._saved_handlers: dict[int, Any] = {}
        self._once = False
        self.cycles_completed = 0

    # --- public controls ----------------------------------------------------------------

    @property
    def settings(self) -> S | None:
        """The settings in force (None before start-up)."""
        return self._settings

    @property
    def metrics_server(self) -> MetricsServer | None:
        """The running metrics endpoint, if any."""
        return self._server

    def request_stop(self, force: bool = False) -> None:
        """Ask the daemon to stop (what SIGTERM does; ``force``: what a second SIGINT does)."""
        if force:
            self.force_exit = True
        self.should_exit = True

    def request_reload(self) -> None:
        """Ask the daemon to reload its settings (what SIGHUP does)."""
        self._reload_requested = True

    def handle_signal(self, sig: int, frame: FrameType | None) -> None:
        """Signal handler: only sets flags, the main loop acts on them.

        The one exception is a second SIGINT during :meth:`run_once`, where there is
        no main loop to abandon the cycle: it raises KeyboardInterrupt, as Python's
        default handler would.
        """
        if sig == signal.SIGHUP:
            self._reload_requested = True
        elif sig == signal.SIGINT and self.should_exit:
            self.force_exit = True
            if self._once:
                raise KeyboardInterrupt
        else:
            self.should_exit = True

    # --- the lifecycle --------------------------------------------------------------------

    def run(self) -> int:
        """Start up, run cycles until stopped, shut down; return the exit code."""
        self._install_signal_handlers()
        try:
            code = self._startup()
            if code != EXIT_OK:
                self._close_quietly()
                return code
            self._main_loop()
            return self._shutdown()
        finally:
            self._restore_signal_handlers()

    def run_once(self, slot_time: datetime | None = None) -> CycleRun:
        """Load settings, build the runner, run one cycle, close; return what happened.

        SIGTERM/SIGINT during the cycle set its cancel event.

        Raises:
            ConfigError: the settings are invalid.
            SignaltwinError: the runner could not be built.
        """
        self._once = True
        settings = self._loader()
        runner = self._factory(settings)
        if slot_time is None:
            slot_time = self._slot_floor(datetime.now(UTC), settings.schedule.interval_s)
        watcher_stop = threading.Event()

        def watch() -> None:
            while not watcher_stop.wait(self.options.tick_s):
                if self.should_exit:
                    self._cancel.set()
                    return

        self._install_signal_handlers()
        watcher = threading.Thread(target=watch, name="signaltwin-once-watch", daemon=True)
        watcher.start()
        try:
            run = self._execute_cycle(runner, slot_time)
        finally:
            watcher_stop.set()
            self._restore_signal_handlers()
            self._call_quietly("close", runner.close)
        return run

    # --- start-up ---------------------------------------------------------------------

    def _startup(self) -> int:
        self._status("starting")
        try:
            settings = self._loader()
        except ConfigError as e:
            logger.error("cannot start: %s", e)
            return EXIT_STARTUP_CONFIG
        except Exception as e:
            logger.exception("cannot start: loading the settings failed: %s", e)
            return EXIT_STARTUP_CONFIG
        self._settings = settings
        if self.should_exit:
            return EXIT_OK

        if settings.metrics.enabled:
            try:
                self._server = start_metrics_server(
                    self.metrics.registry, settings.metrics.address, settings.metrics.port
                )
            except OSError as e:
                logger.error(
                    "cannot start: metrics endpoint %s:%s: %s (change metrics.address / "
                    "metrics.port in the settings, or set metrics.enabled = false)",
                    settings.metrics.address,
                    settings.metrics.port,
                    e,
                )
                return EXIT_STARTUP_COMPONENT

        try:
            self._runner = self._factory(settings)
        except ConfigError as e:
            logger.error("cannot start: %s", e)
            return EXIT_STARTUP_CONFIG
        except Exception as e:
            logger.exception("cannot start: building the cycle failed: %s", e)
            return EXIT_STARTUP_COMPONENT
        if self.should_exit:
            return EXIT_OK

        self._check_watchdog(settings)
        self._scheduler = self._build_scheduler(settings)
        self._scheduler.start()
        next_slot = self._next_run_time(CYCLE_JOB_ID)
        where = f"; metrics on {self._server.url}" if self._server else ""
        logger.info(
            "signaltwin daemon ready: mode %s, a cycle every %s s, next at %s%s",
            settings.mode,
            settings.schedule.interval_s,
            next_slot,
            where,
        )
        self._notifier.notify(
            "READY=1", f"STATUS=ready, mode {settings.mode}, next cycle {next_slot}{where}"
        )
        return EXIT_OK

    def _check_watchdog(self, settings: S) -> None:
        watchdog_s = watchdog_timeout_s()
        needed_s = 2 * settings.schedule.interval_s
        if watchdog_s is not None and watchdog_s < needed_s:
            logger.warning(
                "WatchdogSec=%.0f is shorter than two cycle intervals (%.0f s): WATCHDOG=1 is "
                "sent after each completed cycle, so systemd may kill a healthy daemon; raise "
                "WatchdogSec in the unit",
                watchdog_s,
                needed_s,
            )

    def _misfire_grace_s(self, interval_s: float) -> int:
        if self.options.misfire_grace_s is not None:
            return max(1, self.options.misfire_grace_s)
        return max(1, int(interval_s / 4))

    def _cycle_trigger(self, interval_s: float) -> IntervalTrigger:
        now = datetime.now(UTC)
        if self.options.align_to_clock:
            start = self._slot_floor(now, interval_s)
        else:
            start = now
        return IntervalTrigger(seconds=interval_s, start_date=start, timezone=UTC)

    @staticmethod
    def _slot_floor(moment: datetime, interval_s: float) -> datetime:
        epoch_s = moment.timestamp()
        return datetime.fromtimestamp(math.floor(epoch_s / interval_s) * interval_s, UTC)

    def _build_scheduler(self, settings: S) -> BackgroundScheduler:
        interval_s = settings.schedule.interval_s
        scheduler = BackgroundScheduler(
            executors={"default": _DaemonThreadExecutor()},
            timezone=UTC,
            daemon=True,
        )
        scheduler.add_job(
            self._cycle_job,
            trigger=self._cycle_trigger(interval_s),
            id=CYCLE_JOB_ID,
            name="signaltwin cycle",
            max_instances=1,
            coalesce=True,
            misfire_grace_time=self._misfire_grace_s(interval_s),
        )
        feedback_s = settings.schedule.feedback_interval_s
        scheduler.add_job(
            self._feedback_job,
            trigger=IntervalTrigger(seconds=feedback_s, timezone=UTC),
            id=FEEDBACK_JOB_ID,
            name="signaltwin feedback",
            max_instances=1,
            coalesce=True,
            misfire_grace_time=max(1, int(feedback_s)),
        )
        scheduler.add_listener(self._on_max_instances, EVENT_JOB_MAX_INSTANCES)
        scheduler.add_listener(self._on_missed, EVENT_JOB_MISSED)
        return scheduler

    def _next_run_time(self, job_id: str) -> str:
        if self._scheduler is None:
            return "?"
        job = self._scheduler.get_job(job_id)
        if job is None or job.next_run_time is None:
            return "?"
        moment: datetime = job.next_run_time
        return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

    # --- main loop ------------------------------------------------------------------------

    def _main_loop(self) -> None:
        while not self.should_exit:
            try:
                if self._reload_requested:
                    self._reload_requested = False
                    self._reload()
                if self._pending is not None:
                    self._try_swap()
            except Exception:
                # A reload must never take the daemon down; the cycle goes on.
                logger.exception("applying the reloaded settings failed")
            time.sleep(self.options.tick_s)

    def _reload(self) -> None:
        with self._pending_lock:
            current = self._pending[0] if self._pending is not None else self._settings
        logger.info("SIGHUP: reloading the settings")
        self._notifier.notify("RELOADING=1", monotonic_usec(), "STATUS=reloading settings")
        try:
            new_settings = self._loader()
        except Exception as e:
            self._refuse_reload(f"invalid settings: {e}")
            return
        if current is not None and new_settings == current:
            logger.info("settings unchanged; nothing to reload")
            self.metrics.count_reload("unchanged")
            self._notifier.notify("READY=1", "STATUS=settings unchanged")
            return
        if current is not None and (
            new_settings.metrics.address != current.metrics.address
            or new_settings.metrics.port != current.metrics.port
            or new_settings.metrics.enabled != current.metrics.enabled
        ):
            logger.warning(
                "metrics.address/port/enabled changed; the metrics endpoint keeps its old "
                "address until the daemon restarts"
            )
        try:
            new_runner = self._factory(new_settings)
        except Exception as e:
            self._refuse_reload(f"cannot build the cycle from the new settings: {e}")
            return
        with self._pending_lock:
            previous, self._pending = self._pending, (new_settings, new_runner)
        if previous is not None:
            self._call_quietly("close", previous[1].close)
        logger.info("new settings accepted; they apply from the next cycle")
        self._notifier.notify("READY=1", "STATUS=new settings accepted, apply at the next cycle")
        self._try_swap()

    def _refuse_reload(self, why: str) -> None:
        logger.error("reload refused, keeping the current settings: %s", why)
        self.metrics.count_reload("rejected")
        self._notifier.notify("READY=1", "STATUS=reload refused, current settings kept")

    def _try_swap(self) -> None:
        if not self._runner_lock.acquire(blocking=False):
            return
        try:
            self._swap_locked()
        finally:
            self._runner_lock.release()

    def _swap_locked(self) -> None:
        with self._pending_lock:
            pending, self._pending = self._pending, None
        if pending is None:
            return
        new_settings, new_runner = pending
        old_settings, old_runner = self._settings, self._runner
        if old_runner is not None:
            self._flush_skips(old_runner)
            self._call_quietly("close", old_runner.close)
        self._settings, self._runner = new_settings, new_runner
        if old_settings is not None:
            self._call_quietly(
                "record_config_change",
                lambda: new_runner.record_config_change(new_settings),
            )
            self._reschedule(old_settings, new_settings)
        self.metrics.count_reload("applied")
        logger.info("new settings applied (mode %s)", new_settings.mode)

    def _reschedule(self, old: S, new: S) -> None:
        if self._scheduler is None:
            return
        if new.schedule.interval_s != old.schedule.interval_s:
            interval_s = new.schedule.interval_s
            with self._skips_lock:
                self._last_slot = None  # the slot grid changes
            self._scheduler.modify_job(
                CYCLE_JOB_ID, misfire_grace_time=self._misfire_grace_s(interval_s)
            )
            self._scheduler.reschedule_job(CYCLE_JOB_ID, trigger=self._cycle_trigger(interval_s))
            logger.info(
                "cycle interval now %s s; next cycle at %s",
                interval_s,
                self._next_run_time(CYCLE_JOB_ID),
            )
        if new.schedule.feedback_interval_s != old.schedule.feedback_interval_s:
            feedback_s = new.schedule.feedback_interval_s
            self._scheduler.reschedule_job(
                FEEDBACK_JOB_ID, trigger=IntervalTrigger(seconds=feedback_s, timezone=UTC)
            )

    # --- jobs --------------------------------------------------------------------------------

    def _cycle_job(self) -> None:
        slot_time = _scheduled_run_time()
        self._note_gap(slot_time)
        if self._stopping:
            return
        settings = self._settings
        interval_s = settings.schedule.interval_s if settings is not None else 1.0
        if not self._runner_lock.acquire(timeout=self._misfire_grace_s(interval_s)):
            self._skip(slot_time, "busy")
            return
        try:
            if self._stopping:
                return
            if self._pending is not None:
                self._swap_locked()
            runner = self._runner
            if runner is None:  # pragma: no cover - the scheduler starts after the runner
                return
            self._flush_skips(runner)
            run = self._execute_cycle(runner, slot_time)
            self._flush_skips(runner)
            self.cycles_completed += 1
            status = f"STATUS={run.describe()}; next cycle {self._next_run_time(CYCLE_JOB_ID)}"
            # The watchdog is fed by completed cycles only (not aborted ones, nor
            # ones that raised: a runner that raises every time may need a restart).
            if run.returned and run.result != "aborted":
                self._notifier.notify("WATCHDOG=1", status)
            else:
                self._notifier.notify(status)
        except Exception:
            logger.exception("the cycle for slot %s crashed", slot_time.isoformat())
        finally:
            self._runner_lock.release()

    def _execute_cycle(self, runner: CycleRunner[S], slot_time: datetime) -> CycleRun:
        """Run one cycle, time it, log it and record its metrics; never raises."""
        logger.info("cycle for slot %s starting", slot_time.isoformat())
        self.metrics.set_cycle_running(True)
        started = time.monotonic()
        report: CycleOutcome
        returned = False
        try:
            report = runner.run_cycle(slot_time, self._cancel)
            returned = True
        except Exception as e:
            logger.exception("cycle for slot %s raised", slot_time.isoformat())
            report = BasicCycleReport(ok=False, deployed=False, error=f"{type(e).__name__}: {e}")
        finally:
            self.metrics.set_cycle_running(False)
        run = CycleRun(
            slot_time=slot_time,
            report=report,
            result=deployment_result(report, self._cancel.is_set()),
            duration_s=time.monotonic() - started,
            returned=returned,
        )
        self._record_cycle(run)
        log = logger.info if report.ok else logger.error
        log("%s (%.1f s)", run.describe(), run.duration_s)
        return run

    def _record_cycle(self, run: CycleRun) -> None:
        metrics, report = self.metrics, run.report
        metrics.observe_cycle(run.duration_s)
        for stage, stage_s in report.stage_s.items():
            metrics.observe_stage(stage, stage_s)
        if report.decision and report.decision != "none":
            metrics.count_gate_decision(report.decision)
        metrics.count_deployment(run.result)
        if isinstance(report, ComponentHealth):
            metrics.count_hsm_error(report.hsm_errors)
            for controller, errors in report.opcua_errors.items():
                metrics.count_opcua_error(controller, errors)
            for controller, up in report.controllers_up.items():
                metrics.set_controller_up(controller, up)
        if report.ok:
            metrics.mark_success(time.time())

    def _feedback_job(self) -> None:
        if self._stopping:
            return
        while not self._runner_lock.acquire(timeout=max(self.options.tick_s, 0.5)):
            if self._stopping:
                return
        try:
            if self._stopping or self._runner is None:
                return
            runner = self._runner
            try:
                report = runner.collect_feedback()
            except Exception:
                logger.exception("feedback collection failed")
                self.metrics.count_feedback(False)
                return
            self.metrics.count_feedback(True)
            if report is not None:
                for ratio in report.prediction_error_ratios:
                    self.metrics.observe_prediction_error(ratio)
                logger.info(
                    "feedback: %d deployment(s) measured%s",
                    report.measured,
                    ", policy fine-tuned" if report.fine_tuned else "",
                )
        finally:
            self._runner_lock.release()

    # --- skips -------------------------------------------------------------------------------

    def _on_max_instances(self, event: SchedulerEvent) -> None:
        if event.job_id != CYCLE_JOB_ID or not isinstance(event, JobSubmissionEvent):
            if event.job_id == FEEDBACK_JOB_ID:
                logger.info("feedback collection still running; this run is skipped")
            return
        for run_time in event.scheduled_run_times:
            self._skip(run_time, "overrun")

    def _on_missed(self, event: SchedulerEvent) -> None:
        if event.job_id != CYCLE_JOB_ID or not isinstance(event, JobExecutionEvent):
            return
        self._skip(event.scheduled_run_time, "missed")

    def _skip(self, slot_time: datetime, reason: SkipReason) -> None:
        slot_time = slot_time.astimezone(UTC)
        why = {
            "overrun": "the previous cycle is still running",
            "missed": "the scheduler woke up too late for it (host suspended or overloaded)",
            "busy": "feedback collection or a reload held the runner",
        }[reason]
        logger.warning("cycle slot %s skipped (%s): %s", slot_time.isoformat(), reason, why)
        self.metrics.count_skip(reason)
        with self._skips_lock:
            self._skips.append((slot_time, reason))
            if self._last_slot is None or slot_time > self._last_slot:
                self._last_slot = slot_time

    def _note_gap(self, slot_time: datetime) -> None:
        """Report slots between the last one handled and ``slot_time`` as missed.

        APScheduler's ``coalesce`` silently drops all but the latest of several
        overdue run times (after the host was suspended, or the process stopped),
        so gaps in the slot sequence are found here instead.
        """
        settings = self._settings
        if settings is None:
            return
        interval_s = settings.schedule.interval_s
        with self._skips_lock:
            last, self._last_slot = self._last_slot, max(slot_time, self._last_slot or slot_time)
        if last is None or slot_time <= last:
            return
        lost = round((slot_time - last).total_seconds() / interval_s) - 1
        for k in range(1, lost + 1):
            self._skip(last + timedelta(seconds=k * interval_s), "missed")

    def _flush_skips(self, runner: CycleRunner[S]) -> None:
        with self._skips_lock:
            skips, self._skips = self._skips, []
        for slot_time, reason in skips:
            try:
                runner.record_skip(slot_time, reason)
            except Exception:
                logger.exception("runner.record_skip failed for slot %s", slot_time.isoformat())

    # --- shutdown ------------------------------------------------------------------------------

    def _shutdown(self) -> int:
        self._stopping = True
        settings = self._settings
        deadline_s = settings.schedule.shutdown_deadline_s if settings is not None else 30.0
        logger.info("stopping: cancelling any running cycle (deadline %s s)", deadline_s)
        self._notifier.notify("STOPPING=1", "STATUS=stopping")
        self._cancel.set()
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=False)
        deadline = time.monotonic() + deadline_s
        acquired = self._runner_lock.acquire(blocking=False)
        while not acquired and not self.force_exit:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            if self._runner_lock.acquire(timeout=min(self.options.tick_s, remaining)):
                acquired = True
                break
        if acquired:
            try:
                runner = self._runner
                if runner is not None:
                    self._flush_skips(runner)
                self._close_quietly()
            finally:
                self._runner_lock.release()
            code = EXIT_OK
            logger.info("stopped")
        elif self.force_exit:
            logger.warning("forced exit: a running cycle was abandoned")
            code = EXIT_FORCED
        else:
            logger.error(
                "a cycle (or feedback run) was still running %s s after the stop request; "
                "exiting without "
                "waiting for it (raise schedule.shutdown_deadline_s if cycles need longer "
                "to abort)",
                deadline_s,
            )
            code = EXIT_SHUTDOWN_TIMEOUT
        if self._server is not None:
            self._server.close()
            self._server = None
        return code

    def _close_quietly(self) -> None:
        with self._pending_lock:
            pending, self._pending = self._pending, None
        if pending is not None:
            self._call_quietly("close", pending[1].close)
        runner, self._runner = self._runner, None
        if runner is not None:
            self._call_quietly("close", runner.close)
        if self._server is not None:
            self._server.close()
            self._server = None

    @staticmethod
    def _call_quietly(what: str, call: Callable[[], object]) -> None:
        try:
            call()
        except Exception:
            logger.exception("runner.%s failed", what)

    # --- signals ------------------------------------------------------------------------------

    def _install_signal_handlers(self) -> None:
        if not self.options.install_signal_handlers:
            return
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            self._saved_handlers[sig] = signal.signal(sig, self.handle_signal)

    def _restore_signal_handlers(self) -> None:
        for sig, handler in self._saved_handlers.items():
            signal.signal(sig, handler)
        self._saved_handlers.clear()

    def _status(self, text: str) -> None:
        self._notifier.notify(f"STATUS={text}")


def run_daemon(
    settings_loader: Callable[[], S],
    cycle_factory: Callable[[S], CycleRunner[S]],
    metrics: Metrics,
    notifier: Notifier,
    options: DaemonOptions | None = None,
) -> int:
    """Run the daemon in the foreground until a signal stops it; return the exit code.

    Exit codes: 0 stopped cleanly; 1 stopped with a cycle still running after the
    shutdown deadline; 2 invalid settings at start-up; 3 a component failed at
    start-up; 130 forced by a second SIGINT.
    """
    return Daemon(settings_loader, cycle_factory, metrics, notifier, options).run()
