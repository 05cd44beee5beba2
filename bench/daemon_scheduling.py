"""Daemon overheads against the raw libraries, side by side in one run.

- slot start latency: how late a cycle starts after its scheduled slot, our Daemon
  (daemon-thread executor, runner lock, gap check) against a bare APScheduler
  BackgroundScheduler interval job on its default thread pool;
- sd_notify: one notification through SystemdNotifier against a bare
  socket.sendto on the same datagram socket.

    .venv/bin/python bench/daemon_scheduling.py
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from apscheduler.schedulers.background import BackgroundScheduler
from prometheus_client import CollectorRegistry

from controller.daemon import BasicCycleReport, Daemon, DaemonOptions, FeedbackReport
from controller.metrics import Metrics
from controller.notify import NullNotifier, SystemdNotifier

INTERVAL_S = 0.1
SLOTS = 30


@dataclass(frozen=True)
class Schedule:
    interval_s: float = INTERVAL_S
    feedback_interval_s: float = 3600.0
    shutdown_deadline_s: float = 5.0


@dataclass(frozen=True)
class MetricsOff:
    enabled: bool = False
    address: str = "127.0.0.1"
    port: int = 0


@dataclass(frozen=True)
class BenchSettings:
    mode: str = "auto"
    schedule: Schedule = field(default_factory=Schedule)
    metrics: MetricsOff = field(default_factory=MetricsOff)


def emit(figure: str, value: float, unit: str, ratio: float | None, against: str) -> None:
    print(
        json.dumps(
            {
                "figure": figure,
                "value": round(value, 6),
                "unit": unit,
                "ratio": ratio,
                "against": against,
            }
        )
    )


class LatencyRunner:
    def __init__(self) -> None:
        self.latencies_s: list[float] = []

    def run_cycle(self, slot_time: datetime, cancel: threading.Event) -> BasicCycleReport:
        self.latencies_s.append(time.time() - slot_time.timestamp())
        return BasicCycleReport(ok=True, deployed=True, decision="pass")

    def collect_feedback(self) -> FeedbackReport | None:
        return None

    def record_skip(self, slot_time: datetime, reason: str) -> None:
        pass

    def record_config_change(self, settings: BenchSettings) -> None:
        pass

    def close(self) -> None:
        pass


def ours() -> list[float]:
    runner = LatencyRunner()
    settings = BenchSettings()
    daemon: Daemon[BenchSettings] = Daemon(
        lambda: settings,
        lambda s: runner,
        Metrics(CollectorRegistry()),
        NullNotifier(),
        DaemonOptions(tick_s=0.02, install_signal_handlers=False),
    )
    thread = threading.Thread(target=daemon.run)
    thread.start()
    while len(runner.latencies_s) < SLOTS:
        time.sleep(0.05)
    daemon.request_stop()
    thread.join()
    return runner.latencies_s[:SLOTS]


def raw_apscheduler() -> list[float]:
    latencies_s: list[float] = []
    start = datetime.fromtimestamp((time.time() // INTERVAL_S + 1) * INTERVAL_S, UTC)

    def tick() -> None:
        # a bare job is not told its slot: slots are start + k * interval
        now = time.time()
        k = len(latencies_s)
        latencies_s.append(now - (start.timestamp() + k * INTERVAL_S))

    scheduler = BackgroundScheduler(timezone=UTC)
    scheduler.add_job(
        tick, "interval", seconds=INTERVAL_S, start_date=start, max_instances=1, coalesce=True
    )
    scheduler.start()
    while len(latencies_s) < SLOTS:
        time.sleep(0.05)
    scheduler.shutdown(wait=True)
    return latencies_s[:SLOTS]


def notify_cost() -> tuple[float, float]:
    n = 2000
    with tempfile.TemporaryDirectory(prefix="st-") as d:
        path = str(Path(d) / "notify")
        server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        server.bind(path)
        server.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
        stop = threading.Event()

        def drain() -> None:
            server.settimeout(0.05)
            while not stop.is_set():
                try:
                    server.recv(4096)
                except TimeoutError:
                    continue

        drainer = threading.Thread(target=drain, daemon=True)
        drainer.start()
        notifier = SystemdNotifier(path)
        started = time.perf_counter()
        for _ in range(n):
            notifier.notify("WATCHDOG=1", "STATUS=cycle 12:04:00Z: deployed")
        ours_s = (time.perf_counter() - started) / n
        raw = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        started = time.perf_counter()
        for _ in range(n):
            raw.sendto(b"WATCHDOG=1\nSTATUS=cycle 12:04:00Z: deployed", path)
        raw_s = (time.perf_counter() - started) / n
        raw.close()
        stop.set()
        drainer.join()
        server.close()
    return ours_s, raw_s


def main() -> None:
    ours_lat = ours()
    raw_lat = raw_apscheduler()
    ours_p50, raw_p50 = statistics.median(ours_lat), statistics.median(raw_lat)
    emit(
        "slot_start_latency_p50",
        ours_p50,
        "s",
        round(ours_p50 / raw_p50, 3),
        "bare APScheduler interval job (thread pool), median over 30 slots of 0.1 s",
    )
    ours_max, raw_max = max(ours_lat), max(raw_lat)
    emit(
        "slot_start_latency_max",
        ours_max,
        "s",
        round(ours_max / raw_max, 3),
        "bare APScheduler interval job (thread pool), max over 30 slots of 0.1 s",
    )
    ours_s, raw_s = notify_cost()
    emit(
        "sd_notify_per_message",
        ours_s,
        "s",
        round(ours_s / raw_s, 3),
        "bare socket.sendto of the same datagram (ours connects a fresh socket each time)",
    )
    emit("cpu_count", float(os.cpu_count() or 0), "cores", None, "machine")


if __name__ == "__main__":
    main()
