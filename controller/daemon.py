"""The daemon: runs cycles on a schedule until told to stop (the thin process around them).

The schedule's pieces (executor, slot grid, skips) are :mod:`controller.schedule`;
the process's (signals, watchdog, metrics endpoint) :mod:`controller.lifecycle`;
the contracts (:class:`~controller.contracts.RunsCycles`, the report types)
:mod:`controller.contracts`; exit codes :class:`controller.exit_codes.ExitCode`.

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
through :meth:`RunsCycles.record_skip` (after the running cycle, so the runner
is never called from two threads at once). A second job collects measured
deltas and fine-tunes (:meth:`RunsCycles.collect_feedback`) on its own interval.
All runner calls are serialised by one lock; the runner need not be thread-safe,
except that the ``cancel`` event it was given is set from another thread.

Signals: SIGTERM or SIGINT stop gracefully (the running cycle is cancelled and
given ``schedule.shutdown_deadline_s`` to return); a second SIGINT forces the
exit; SIGHUP reloads the settings: an invalid file is refused and the old
settings kept; a valid one builds a new runner (with ``reload_factory``, told
that it is a reload, so it does not settle the running runner's push), which replaces the old one
between cycles and records the change via :meth:`RunsCycles.record_config_change`.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from types import FrameType
from typing import Generic, TypeVar

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger

from configs.errors import ConfigError
from configs.outcomes import DeploymentResult
from controller.contracts import (
    BasicCycleReport,
    ComponentHealth,
    ComputeStatus,
    CycleObserver,
    CycleReportLike,
    DaemonSettings,
    FeedbackReport,
    RunsCycles,
    SkipReason,
)
from controller.exit_codes import ExitCode
from controller.lifecycle import DaemonOptions, SignalHandlers, check_watchdog, serve_metrics
from controller.metrics import Metrics, MetricsServer
from controller.notify import Notifier, monotonic_usec
from controller.schedule import (
    CYCLE_JOB_ID,
    FEEDBACK_JOB_ID,
    CycleRun,
    SlotLog,
    build_scheduler,
    cycle_trigger,
    deployment_result,
    misfire_grace_s,
    next_run_time,
    record_cycle_metrics,
    scheduled_run_time,
    slot_floor,
)

# The contracts and schedule types are re-exported: ``from controller.daemon
# import FeedbackReport`` keeps working.
__all__ = [
    "BasicCycleReport",
    "ComponentHealth",
    "CycleReportLike",
    "CycleRun",
    "Daemon",
    "DaemonOptions",
    "DaemonSettings",
    "FeedbackReport",
    "RunsCycles",
    "SkipReason",
    "deployment_result",
    "run_daemon",
]

logger = logging.getLogger(__name__)

S = TypeVar("S", bound=DaemonSettings)

# --- the daemon ---------------------------------------------------------------------------


class Daemon(Generic[S]):
    """The signaltwin daemon: runs cycles on a schedule until told to stop."""

    def __init__(
        self,
        settings_loader: Callable[[], S],
        cycle_factory: Callable[[S], RunsCycles[S]],
        metrics: Metrics,
        notifier: Notifier,
        options: DaemonOptions | None = None,
        reload_factory: Callable[[S], RunsCycles[S]] | None = None,
        observers: Sequence[CycleObserver] = (),
    ) -> None:
        """Prepare the daemon; nothing starts until :meth:`run`.

        Args:
            settings_loader: reads and validates the settings file (again on SIGHUP);
                raises ConfigError when it is invalid.
            cycle_factory: builds a runner from settings (connects, opens the ledger).
            metrics: where to record (its registry is served when metrics are enabled).
            notifier: systemd notifications (a no-op outside systemd).
            options: process-level knobs.
            reload_factory: builds the runner of a reload (SIGHUP), told that it is
                not the process's start-up (e.g. ``build_runner(s, reload=True)``,
                which leaves a push in flight to the running runner); default
                ``cycle_factory``.
            observers: told when each cycle starts and ends (the operator console);
                one that raises is logged and ignored.
        """
        self._loader = settings_loader
        self._factory = cycle_factory
        self._reload_factory = reload_factory or cycle_factory
        self.metrics = metrics
        self._notifier = notifier
        self.options = options or DaemonOptions()
        self._observers = tuple(observers)

        # Flags set by signal handlers (plain attribute writes, safe in a handler).
        self.should_exit = False
        self.force_exit = False
        self._reload_requested = False

        self._cancel = threading.Event()
        self._stopping = False
        self._runner_lock = threading.Lock()
        self._settings: S | None = None
        self._runner: RunsCycles[S] | None = None
        self._pending: tuple[S, RunsCycles[S]] | None = None
        self._pending_lock = threading.Lock()  # ownership of _pending moves atomically
        self._slots = SlotLog(metrics)
        self._scheduler: BackgroundScheduler | None = None
        self._server: MetricsServer | None = None
        self._signals = SignalHandlers(self.handle_signal)
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

    def run(self) -> ExitCode:
        """Start up, run cycles until stopped, shut down; return the exit code."""
        self._install_signal_handlers()
        try:
            code = self._startup()
            if code != ExitCode.OK:
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
            slot_time = slot_floor(datetime.now(UTC), settings.schedule.interval_s)
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

    def _watch(self, runner: RunsCycles[S]) -> None:
        """Serve the runner's what-if worker count in the metrics, where it reports one."""
        if isinstance(runner, ComputeStatus):
            self.metrics.watch_compute(runner)

    # --- start-up ---------------------------------------------------------------------

    def _startup(self) -> ExitCode:
        self._status("starting")
        try:
            settings = self._loader()
        except ConfigError as e:
            logger.error("cannot start: %s", e)
            return ExitCode.USAGE
        except Exception as e:
            logger.exception("cannot start: loading the settings failed: %s", e)
            return ExitCode.USAGE
        self._settings = settings
        if self.should_exit:
            return ExitCode.OK

        try:
            self._server = serve_metrics(self.metrics, settings.metrics)
        except OSError:
            return ExitCode.COMPONENT

        try:
            self._runner = self._factory(settings)
            self._watch(self._runner)
        except ConfigError as e:
            logger.error("cannot start: %s", e)
            return ExitCode.USAGE
        except Exception as e:
            logger.exception("cannot start: building the cycle failed: %s", e)
            return ExitCode.COMPONENT
        if self.should_exit:
            return ExitCode.OK

        check_watchdog(settings.schedule.interval_s)
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
        return ExitCode.OK

    def _misfire_grace_s(self, interval_s: float) -> int:
        return misfire_grace_s(interval_s, self.options.misfire_grace_s)

    def _build_scheduler(self, settings: S) -> BackgroundScheduler:
        scheduler = build_scheduler(
            self._cycle_job,
            self._feedback_job,
            cycle_trigger(settings.schedule.interval_s, self.options.align_to_clock),
            cycle_grace_s=self._misfire_grace_s(settings.schedule.interval_s),
            feedback_interval_s=settings.schedule.feedback_interval_s,
        )
        self._slots.listen(scheduler)
        return scheduler

    def _next_run_time(self, job_id: str) -> str:
        return next_run_time(self._scheduler, job_id)

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
            new_runner = self._reload_factory(new_settings)
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
        self._watch(new_runner)
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
            self._slots.reset()  # the slot grid changes
            self._scheduler.modify_job(
                CYCLE_JOB_ID, misfire_grace_time=self._misfire_grace_s(interval_s)
            )
            self._scheduler.reschedule_job(
                CYCLE_JOB_ID, trigger=cycle_trigger(interval_s, self.options.align_to_clock)
            )
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
        slot_time = scheduled_run_time()
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
            if run.returned and run.result != DeploymentResult.ABORTED:
                self._notifier.notify("WATCHDOG=1", status)
            else:
                self._notifier.notify(status)
        except Exception:
            logger.exception("the cycle for slot %s crashed", slot_time.isoformat())
        finally:
            self._runner_lock.release()

    def _execute_cycle(self, runner: RunsCycles[S], slot_time: datetime) -> CycleRun:
        """Run one cycle, time it, log it and record its metrics; never raises."""
        logger.info("cycle for slot %s starting", slot_time.isoformat())
        self._tell_observers("cycle_started", lambda o: o.cycle_started(slot_time))
        self.metrics.set_cycle_running(True)
        started = time.monotonic()
        report: CycleReportLike
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
        record_cycle_metrics(self.metrics, run)
        log = logger.info if report.ok else logger.error
        log("%s (%.1f s)", run.describe(), run.duration_s)
        self._tell_observers(
            "cycle_finished",
            lambda o: o.cycle_finished(slot_time, report, run.result.value, run.duration_s),
        )
        return run

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

    def _skip(self, slot_time: datetime, reason: SkipReason) -> None:
        self._slots.skip(slot_time, reason)

    def _note_gap(self, slot_time: datetime) -> None:
        if self._settings is not None:
            self._slots.note_gap(slot_time, self._settings.schedule.interval_s)

    def _flush_skips(self, runner: RunsCycles[S]) -> None:
        self._slots.flush(runner.record_skip)

    # --- shutdown ------------------------------------------------------------------------------

    def _shutdown(self) -> ExitCode:
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
            code = ExitCode.OK
            logger.info("stopped")
        elif self.force_exit:
            logger.warning("forced exit: a running cycle was abandoned")
            code = ExitCode.INTERRUPTED
        else:
            logger.error(
                "a cycle (or feedback run) was still running %s s after the stop request; "
                "exiting without "
                "waiting for it (raise schedule.shutdown_deadline_s if cycles need longer "
                "to abort)",
                deadline_s,
            )
            code = ExitCode.PROBLEM
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

    def _tell_observers(self, event: str, call: Callable[[CycleObserver], object]) -> None:
        for observer in self._observers:
            try:
                call(observer)
            except Exception:
                logger.exception("cycle observer %s failed on %s", type(observer).__name__, event)

    @staticmethod
    def _call_quietly(what: str, call: Callable[[], object]) -> None:
        try:
            call()
        except Exception:
            logger.exception("runner.%s failed", what)

    # --- signals ------------------------------------------------------------------------------

    def _install_signal_handlers(self) -> None:
        if self.options.install_signal_handlers:
            self._signals.install()

    def _restore_signal_handlers(self) -> None:
        self._signals.restore()

    def _status(self, text: str) -> None:
        self._notifier.notify(f"STATUS={text}")


def run_daemon(
    settings_loader: Callable[[], S],
    cycle_factory: Callable[[S], RunsCycles[S]],
    metrics: Metrics,
    notifier: Notifier,
    options: DaemonOptions | None = None,
    reload_factory: Callable[[S], RunsCycles[S]] | None = None,
) -> ExitCode:
    """Run the daemon in the foreground until a signal stops it; return the exit code.

    Exit codes (:class:`~controller.exit_codes.ExitCode`): OK stopped cleanly;
    PROBLEM stopped with a cycle still running after the shutdown deadline; USAGE
    invalid settings at start-up; COMPONENT a component failed at start-up;
    INTERRUPTED forced by a second SIGINT.
    """
    daemon = Daemon(settings_loader, cycle_factory, metrics, notifier, options, reload_factory)
    return daemon.run()
