"""A daemon with a fake cycle runner, run as a subprocess by the lifecycle tests.

    python -m tests.support.fake_daemon CONFIG.json EVENTS.jsonl

CONFIG.json (re-read on SIGHUP; ``{"valid": false}`` or broken JSON is refused)::

    {"tag": "a", "interval_s": 0.5, "cycle_s": 0.1, "honour_cancel": true,
     "shutdown_deadline_s": 5, "feedback_interval_s": 3600, "metrics_port": 0}

Every runner call is appended to EVENTS.jsonl as one JSON object, so a test can
see what the daemon asked of its runner and in which order.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from configs.errors import ConfigError
from controller.daemon import BasicCycleReport, Daemon, DaemonOptions, FeedbackReport
from controller.metrics import Metrics, build_registry
from controller.notify import SystemdNotifier


@dataclass(frozen=True)
class FakeSchedule:
    interval_s: float = 0.5
    feedback_interval_s: float = 3600.0
    shutdown_deadline_s: float = 5.0


@dataclass(frozen=True)
class FakeMetricsSettings:
    enabled: bool = True
    address: str = "127.0.0.1"
    port: int = 0


@dataclass(frozen=True)
class FakeSettings:
    tag: str
    cycle_s: float
    honour_cancel: bool
    fail: bool
    mode: str
    schedule: FakeSchedule
    metrics: FakeMetricsSettings


def load(path: Path) -> FakeSettings:
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path}: not a valid fake config: {e}") from e
    if not isinstance(raw, dict) or not raw.get("valid", True):
        raise ConfigError(f"{path}: marked invalid")
    return FakeSettings(
        tag=str(raw.get("tag", "a")),
        cycle_s=float(raw.get("cycle_s", 0.1)),
        honour_cancel=bool(raw.get("honour_cancel", True)),
        fail=bool(raw.get("fail", False)),
        mode=str(raw.get("mode", "auto")),
        schedule=FakeSchedule(
            interval_s=float(raw.get("interval_s", 0.5)),
            feedback_interval_s=float(raw.get("feedback_interval_s", 3600)),
            shutdown_deadline_s=float(raw.get("shutdown_deadline_s", 5)),
        ),
        metrics=FakeMetricsSettings(port=int(raw.get("metrics_port", 0))),
    )


class EventLog:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def write(self, kind: str, **fields: object) -> None:
        line = json.dumps({"event": kind, "t": time.time(), **fields})
        with self._lock, self.path.open("a") as f:
            f.write(line + "\n")


class FakeRunner:
    def __init__(self, settings: FakeSettings, log: EventLog) -> None:
        self.settings = settings
        self.log = log
        log.write("built", tag=settings.tag)

    def run_cycle(self, slot_time: datetime, cancel: threading.Event) -> BasicCycleReport:
        self.log.write("cycle_start", slot=slot_time.isoformat(), tag=self.settings.tag)
        if self.settings.honour_cancel:
            aborted = cancel.wait(self.settings.cycle_s)
        else:
            time.sleep(self.settings.cycle_s)
            aborted = False
        self.log.write("cycle_end", slot=slot_time.isoformat(), aborted=aborted)
        if self.settings.fail:
            raise RuntimeError("fake cycle failure")
        return BasicCycleReport(
            ok=not aborted,
            deployed=not aborted,
            decision="none" if aborted else "pass",
            stage_s={"whatif": self.settings.cycle_s * 0.8, "push": 0.01},
            error="cancelled by shutdown" if aborted else None,
            sequence=None if aborted else 1,
            opcua_errors={"J1": 1},
            controllers_up={"J1": True, "J2": False},
        )

    def collect_feedback(self) -> FeedbackReport | None:
        self.log.write("feedback")
        return FeedbackReport(measured=1, prediction_error_ratios=(0.05,))

    def record_skip(self, slot_time: datetime, reason: str) -> None:
        self.log.write("skip", slot=slot_time.isoformat(), reason=reason)

    def record_config_change(self, settings: FakeSettings) -> None:
        self.log.write("config_change", current=settings.tag)

    def close(self) -> None:
        self.log.write("close", tag=self.settings.tag)


def main(argv: list[str]) -> int:
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s"
    )
    config, events = Path(argv[0]), EventLog(Path(argv[1]))
    daemon: Daemon[FakeSettings] = Daemon(
        lambda: load(config),
        lambda settings: FakeRunner(settings, events),
        Metrics(build_registry(process_metrics=False), controllers=["J1", "J2"]),
        SystemdNotifier.from_environment(),
        DaemonOptions(tick_s=0.05),
    )
    code = daemon.run()
    events.write("exit", code=code)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
