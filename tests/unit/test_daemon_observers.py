"""The daemon tells its cycle observers (the operator console) about every cycle it runs."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

from prometheus_client import CollectorRegistry

from controller.contracts import CycleReportLike
from controller.daemon import BasicCycleReport, Daemon, DaemonOptions, FeedbackReport
from controller.metrics import Metrics
from controller.notify import NullNotifier
from tests.support.fake_daemon import FakeMetricsSettings, FakeSchedule, FakeSettings

SETTINGS = FakeSettings(
    tag="a",
    cycle_s=0.0,
    honour_cancel=True,
    fail=False,
    mode="auto",
    schedule=FakeSchedule(),
    metrics=FakeMetricsSettings(enabled=False),
)


class Runner:
    def run_cycle(self, slot_time: datetime, cancel: threading.Event) -> CycleReportLike:
        return BasicCycleReport(ok=True, deployed=True, decision="pass", sequence=4)

    def collect_feedback(self) -> FeedbackReport | None:
        return None

    def record_skip(self, slot_time: datetime, reason: str) -> None:
        pass

    def record_config_change(self, settings: FakeSettings) -> None:
        pass

    def close(self) -> None:
        pass


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[object, ...]] = []

    def cycle_started(self, slot_time: datetime) -> None:
        self.events.append(("started", slot_time))

    def cycle_finished(
        self, slot_time: datetime, report: CycleReportLike, result: str, duration_s: float
    ) -> None:
        self.events.append(("finished", slot_time, report.sequence, result, duration_s >= 0))


class Broken:
    def cycle_started(self, slot_time: datetime) -> None:
        raise RuntimeError("observer bug")

    def cycle_finished(
        self, slot_time: datetime, report: CycleReportLike, result: str, duration_s: float
    ) -> None:
        raise RuntimeError("observer bug")


def test_observers_hear_of_each_cycle_and_a_broken_one_harms_nothing() -> None:
    recorder = Recorder()
    daemon: Daemon[FakeSettings] = Daemon(
        lambda: SETTINGS,
        lambda s: Runner(),
        Metrics(CollectorRegistry()),
        NullNotifier(),
        DaemonOptions(install_signal_handlers=False),
        observers=(Broken(), recorder),
    )
    slot = datetime(2026, 11, 23, 8, 4, tzinfo=UTC)
    run = daemon.run_once(slot)
    assert run.result == "deployed"
    assert recorder.events == [("started", slot), ("finished", slot, 4, "deployed", True)]
