"""The Daemon in-process with fake runners: start-up failures, reloads, skips, feedback, --once.

Signals are exercised in tests/integration/test_daemon_lifecycle.py; here the
daemon runs in a thread and is driven with request_stop()/request_reload().
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from configs.errors import ConfigError, SignaltwinError
from controller.daemon import (
    BasicCycleReport,
    CycleReportLike,
    Daemon,
    DaemonOptions,
    FeedbackReport,
    deployment_result,
)
from controller.exit_codes import ExitCode
from controller.metrics import Metrics
from tests.support.fake_daemon import FakeMetricsSettings, FakeSchedule, FakeSettings


def settings(tag: str = "a", **schedule: float) -> FakeSettings:
    return FakeSettings(
        tag=tag,
        cycle_s=0.0,
        honour_cancel=True,
        fail=False,
        mode="auto",
        schedule=FakeSchedule(**({"interval_s": 0.2, "shutdown_deadline_s": 2.0} | schedule)),
        metrics=FakeMetricsSettings(enabled=False),
    )


class RecordingNotifier:
    def __init__(self) -> None:
        self.sent: list[str] = []

    def notify(self, *assignments: str) -> bool:
        self.sent.extend(assignments)
        return True

    def count(self, assignment: str) -> int:
        return self.sent.count(assignment)


@dataclass
class Runner:
    settings: FakeSettings
    report: Callable[[threading.Event], CycleReportLike] = lambda cancel: BasicCycleReport(
        ok=True, deployed=True, decision="pass", stage_s={"whatif": 0.01}
    )
    feedback: Callable[[], FeedbackReport | None] = lambda: None
    calls: list[tuple[str, Any]] = field(default_factory=list)

    def run_cycle(self, slot_time: datetime, cancel: threading.Event) -> CycleReportLike:
        self.calls.append(("cycle", slot_time))
        return self.report(cancel)

    def collect_feedback(self) -> FeedbackReport | None:
        self.calls.append(("feedback", None))
        return self.feedback()

    def record_skip(self, slot_time: datetime, reason: str) -> None:
        self.calls.append(("skip", reason))

    def record_config_change(self, settings: FakeSettings) -> None:
        self.calls.append(("config_change", settings.tag))

    def close(self) -> None:
        self.calls.append(("close", None))


class Harness:
    def __init__(
        self,
        load: Callable[[], FakeSettings],
        factory: Callable[[FakeSettings], Runner],
        reload_factory: Callable[[FakeSettings], Runner] | None = None,
        **options: Any,
    ) -> None:
        self.registry = CollectorRegistry()
        self.notifier = RecordingNotifier()
        self.daemon: Daemon[FakeSettings] = Daemon(
            load,
            factory,
            Metrics(self.registry),
            self.notifier,
            DaemonOptions(**({"tick_s": 0.02, "install_signal_handlers": False} | options)),
            reload_factory=reload_factory,
        )
        self.code: int | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        self.code = self.daemon.run()

    def start(self) -> Harness:
        self.thread.start()
        self.wait_for("READY=1", lambda: self.notifier.count("READY=1") >= 1 or self.done)
        return self

    @property
    def done(self) -> bool:
        return not self.thread.is_alive() and self.code is not None

    def wait_for(self, what: str, predicate: Callable[[], bool], timeout_s: float = 5) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if predicate():
                return
            time.sleep(0.01)
        pytest.fail(f"timed out waiting for {what}")

    def stop(self) -> int:
        self.daemon.request_stop()
        self.thread.join(10)
        assert self.code is not None
        return self.code

    def value(self, name: str, **labels: str) -> float | None:
        return self.registry.get_sample_value(name, labels)


def recording(built: list[Runner], **kwargs: Any) -> Callable[[FakeSettings], Runner]:
    def factory(s: FakeSettings) -> Runner:
        built.append(Runner(s, **kwargs))
        return built[-1]

    return factory


@pytest.fixture
def harnesses() -> Iterator[list[Harness]]:
    made: list[Harness] = []
    yield made
    for h in made:
        if h.thread.is_alive():
            h.daemon.request_stop(force=True)
            h.thread.join(5)


def test_invalid_settings_at_startup_exit_2_without_ready() -> None:
    def load() -> FakeSettings:
        raise ConfigError("settings.toml: schedule.interval_s = 0: must be > 0")

    h = Harness(load, lambda s: Runner(s))
    h.thread.start()
    h.thread.join(5)
    assert h.code == ExitCode.USAGE
    assert h.notifier.count("READY=1") == 0


@pytest.mark.parametrize(
    ("error", "code"),
    [(SignaltwinError("HSM login failed"), ExitCode.COMPONENT), (ConfigError("x"), 2)],
)
def test_runner_that_cannot_be_built_exits_with_its_code(error: Exception, code: int) -> None:
    def factory(s: FakeSettings) -> Runner:
        raise error

    h = Harness(lambda: replace(settings(), metrics=FakeMetricsSettings(port=0)), factory)
    h.thread.start()
    h.thread.join(5)
    assert h.code == code
    assert h.daemon.metrics_server is None  # the endpoint opened before was closed again


def test_metrics_port_in_use_exits_3() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        h = Harness(lambda: replace(settings(), metrics=FakeMetricsSettings(port=port)), Runner)
        h.thread.start()
        h.thread.join(5)
    assert h.code == ExitCode.COMPONENT


def test_cycles_run_on_slots_and_stop_cleanly(harnesses: list[Harness]) -> None:
    runners: list[Runner] = []

    def factory(s: FakeSettings) -> Runner:
        runners.append(Runner(s))
        return runners[-1]

    h = Harness(settings, factory)
    harnesses.append(h)
    h.start()
    h.wait_for("two cycles", lambda: h.daemon.cycles_completed >= 2)
    assert h.stop() == ExitCode.OK
    slots = [arg for kind, arg in runners[0].calls if kind == "cycle"]
    # slots are the scheduled times on the clock-aligned grid, 0.2 s apart, in UTC
    assert all(slot.tzinfo is not None for slot in slots)
    assert all(abs(t / 0.2 - round(t / 0.2)) < 1e-3 for t in (x.timestamp() for x in slots))
    assert runners[0].calls[-1] == ("close", None)
    assert h.value("signaltwin_cycles_total", result="deployed") == len(slots)
    assert h.value("signaltwin_deployments_total", result="deployed") == len(slots)
    assert h.notifier.count("WATCHDOG=1") == len(slots)
    assert h.notifier.sent.count("STOPPING=1") == 1


def test_a_crashing_cycle_counts_as_failed_feeds_no_watchdog_and_the_daemon_goes_on(
    harnesses: list[Harness],
) -> None:
    def crash(cancel: threading.Event) -> CycleReportLike:
        raise RuntimeError("bug")

    h = Harness(settings, lambda s: Runner(s, report=crash))
    harnesses.append(h)
    h.start()
    h.wait_for("two cycles", lambda: h.daemon.cycles_completed >= 2)
    assert h.stop() == ExitCode.OK
    assert h.value("signaltwin_cycles_total", result="failed") == h.daemon.cycles_completed
    # a failed cycle deployed nothing: the deployments counter has no such series
    assert h.value("signaltwin_deployments_total", result="failed") is None
    assert h.value("signaltwin_deployments_total", result="deployed") == 0
    assert h.notifier.count("WATCHDOG=1") == 0
    assert any(a.startswith("STATUS=cycle ") and "RuntimeError: bug" in a for a in h.notifier.sent)
    assert h.value("signaltwin_last_successful_cycle_timestamp_seconds") == 0


def test_reload_with_identical_settings_is_counted_unchanged(harnesses: list[Harness]) -> None:
    built: list[Runner] = []
    h = Harness(settings, recording(built))
    harnesses.append(h)
    h.start()
    h.daemon.request_reload()
    h.wait_for(
        "unchanged", lambda: h.value("signaltwin_config_reload_total", result="unchanged") == 1
    )
    assert len(built) == 1
    assert h.stop() == ExitCode.OK


def test_reload_whose_runner_cannot_be_built_is_rejected(harnesses: list[Harness]) -> None:
    current = {"s": settings("a")}

    def factory(s: FakeSettings) -> Runner:
        if s.tag == "broken":
            raise SignaltwinError("cannot reach controller J3")
        return Runner(s)

    h = Harness(lambda: current["s"], factory)
    harnesses.append(h)
    h.start()
    current["s"] = settings("broken")
    h.daemon.request_reload()
    h.wait_for(
        "rejected", lambda: h.value("signaltwin_config_reload_total", result="rejected") == 1
    )
    assert h.daemon.settings is not None and h.daemon.settings.tag == "a"
    assert "RELOADING=1" in h.notifier.sent and h.notifier.count("READY=1") == 2
    assert h.stop() == ExitCode.OK


def test_reload_applies_a_new_interval(harnesses: list[Harness]) -> None:
    current = {"s": settings("a", interval_s=60)}
    built: list[Runner] = []
    h = Harness(lambda: current["s"], recording(built))
    harnesses.append(h)
    h.start()
    assert h.daemon.cycles_completed == 0  # next slot is up to a minute away
    current["s"] = settings("b", interval_s=0.2)
    h.daemon.request_reload()
    h.wait_for("a cycle at the new interval", lambda: h.daemon.cycles_completed >= 1)
    assert built[0].calls == [("close", None)]
    assert built[1].calls[0] == ("config_change", "b")
    assert h.value("signaltwin_config_reload_total", result="applied") == 1
    assert h.stop() == ExitCode.OK


def test_a_reload_builds_its_runner_as_a_reload(harnesses: list[Harness]) -> None:
    """Start-up and reload are told apart by the daemon (no process-global state)."""
    current = {"s": settings("a")}
    started: list[Runner] = []
    reloaded: list[Runner] = []
    h = Harness(lambda: current["s"], recording(started), reload_factory=recording(reloaded))
    harnesses.append(h)
    h.start()
    current["s"] = settings("b")
    h.daemon.request_reload()
    h.wait_for(
        "the reload", lambda: h.value("signaltwin_config_reload_total", result="applied") == 1
    )
    assert len(started) == 1 and len(reloaded) == 1
    assert reloaded[0].calls[0] == ("config_change", "b")
    assert h.stop() == ExitCode.OK


def test_feedback_results_are_recorded(harnesses: list[Harness]) -> None:
    reports = iter([FeedbackReport(measured=2, prediction_error_ratios=(0.05, -0.3))])

    def feedback() -> FeedbackReport | None:
        report = next(reports, None)
        if report is None:
            raise RuntimeError("feedback store locked")
        return report

    h = Harness(
        lambda: settings(interval_s=60, feedback_interval_s=0.2),
        lambda s: Runner(s, feedback=feedback),
    )
    harnesses.append(h)
    h.start()
    h.wait_for(
        "a failed feedback run",
        lambda: h.value("signaltwin_feedback_runs_total", result="failed") == 1,
    )
    assert h.value("signaltwin_feedback_runs_total", result="ok") == 1
    assert h.value("signaltwin_prediction_error_ratio_count") == 2
    assert h.value("signaltwin_prediction_error_ratio_bucket", le="0.1") == 1
    assert h.stop() == ExitCode.OK


def test_a_slot_that_cannot_get_the_runner_is_skipped_as_busy(harnesses: list[Harness]) -> None:
    def slow_feedback() -> None:
        time.sleep(1.6)

    runners: list[Runner] = []
    h = Harness(
        lambda: settings(interval_s=0.3, feedback_interval_s=0.25),
        recording(runners, feedback=slow_feedback),
        misfire_grace_s=1,
    )
    harnesses.append(h)
    h.start()
    h.wait_for(
        "a busy skip",
        lambda: (h.value("signaltwin_cycle_skipped_total", reason="busy") or 0) >= 1,
    )
    h.wait_for("the skip recorded", lambda: ("skip", "busy") in runners[0].calls, 8)
    h.daemon.request_stop()
    h.thread.join(10)


def test_run_once_runs_one_cycle_and_closes() -> None:
    runner = Runner(settings(), report=lambda c: BasicCycleReport(ok=True, deployed=False))
    h = Harness(settings, lambda s: runner)
    slot = datetime(2026, 1, 1, 12, 4, tzinfo=UTC)
    run = h.daemon.run_once(slot)
    assert run.result == "refused" and run.returned
    assert runner.calls == [("cycle", slot), ("close", None)]
    assert run.describe() == "cycle 12:04:00Z: refused"


@pytest.mark.parametrize(
    ("report", "cancelled", "result"),
    [
        (BasicCycleReport(ok=True, deployed=True, decision="pass"), False, "deployed"),
        (BasicCycleReport(ok=True, deployed=False, decision="pass"), False, "shadow"),
        (BasicCycleReport(ok=True, deployed=False, decision="refuse_nox"), False, "refused"),
        (BasicCycleReport(ok=False, deployed=False, error="push: J2 refused"), False, "failed"),
        (BasicCycleReport(ok=False, deployed=False, error="cancelled"), True, "aborted"),
        (BasicCycleReport(ok=True, deployed=False, decision="refuse_wait"), True, "refused"),
    ],
)
def test_deployment_result(report: BasicCycleReport, cancelled: bool, result: str) -> None:
    assert deployment_result(report, cancelled) == result


def test_the_cycle_modules_report_fits_the_daemon() -> None:
    from controller.cycle import CycleReport

    report = CycleReport(slot_time=datetime.now(UTC), ok=True, decision="refuse_wait")
    outcome: CycleReportLike = report
    assert deployment_result(outcome) == "refused"


def test_an_idle_daemon_stops_cleanly_even_when_forced(
    harnesses: list[Harness],
) -> None:
    runners: list[Runner] = []
    h = Harness(lambda: settings(interval_s=60), recording(runners))
    harnesses.append(h)
    h.start()
    h.daemon.request_stop(force=True)
    h.thread.join(5)
    assert h.code == ExitCode.OK
    assert runners[0].calls == [("close", None)]


def test_a_watchdog_shorter_than_two_intervals_is_warned_about(
    harnesses: list[Harness],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "300000000")  # 300 s
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    h = Harness(lambda: settings(interval_s=240), recording([]))
    harnesses.append(h)
    with caplog.at_level("WARNING", logger="controller.daemon"):
        h.start()
    assert h.stop() == ExitCode.OK
    assert any("WatchdogSec=300" in r.getMessage() for r in caplog.records)
