"""The daemon as a real process: real signals, a real notify socket, a real HTTP scrape.

Each test starts ``tests/support/fake_daemon.py`` (the real Daemon with a fake
cycle runner and sub-second intervals) in a subprocess, like uvicorn's
``test_server_interrupt``.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


class NotifySocket:
    """A bound AF_UNIX datagram socket standing in for systemd's $NOTIFY_SOCKET."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.1)
        self.messages: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            self.messages.append(data.decode())

    def assignments(self) -> list[str]:
        return [line for message in list(self.messages) for line in message.split("\n")]

    def count(self, assignment: str) -> int:
        return self.assignments().count(assignment)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


class DaemonProcess:
    def __init__(self, directory: Path, notify: NotifySocket, **config: Any) -> None:
        self.config_path = directory / "config.json"
        self.events_path = directory / "events.jsonl"
        self.notify = notify
        self.write_config(**config)
        env = dict(os.environ, NOTIFY_SOCKET=str(notify.path))
        env.pop("WATCHDOG_USEC", None)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.support.fake_daemon", self.config_path, self.events_path],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def write_config(self, **config: Any) -> None:
        self.config_path.write_text(json.dumps(config))

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        if not self.events_path.exists():
            return []
        rows = [json.loads(line) for line in self.events_path.read_text().splitlines() if line]
        return [r for r in rows if kind is None or r["event"] == kind]

    def wait_for(self, what: str, predicate: Callable[[], bool], timeout_s: float = 10) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if predicate():
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        if predicate():
            return
        self.kill()
        pytest.fail(f"timed out waiting for {what}; daemon output:\n{self.output()}")

    def wait_ready(self) -> None:
        self.wait_for("READY=1", lambda: self.notify.count("READY=1") >= 1)

    def metrics_url(self) -> str:
        for line in self.notify.assignments():
            match = re.search(r"metrics on (http://\S+/metrics)", line)
            if match:
                return match.group(1)
        raise AssertionError(f"no metrics URL in {self.notify.messages}")

    def scrape(self) -> dict[str, float]:
        with urllib.request.urlopen(self.metrics_url(), timeout=5) as response:
            text = response.read().decode()
        samples: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
                samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
        return samples

    def signal(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    def wait_exit(self, timeout_s: float = 10) -> int:
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"daemon did not exit in {timeout_s} s; output:\n{self.output()}")

    def output(self) -> str:
        if self.proc.stdout is None:
            return ""
        if self.proc.poll() is None:
            return "(still running)"
        return self.proc.stdout.read()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


@pytest.fixture
def short_dir(tmp_path: Path) -> Iterator[Path]:
    # AF_UNIX paths are limited to 107 bytes; pytest's tmp_path can be longer.
    if len(str(tmp_path / "notify.sock")) < 100:
        yield tmp_path
        return
    with tempfile.TemporaryDirectory(prefix="st-") as d:
        yield Path(d)


@pytest.fixture
def notify(short_dir: Path) -> Iterator[NotifySocket]:
    sock = NotifySocket(short_dir / "notify.sock")
    yield sock
    sock.close()


@pytest.fixture
def start(tmp_path: Path, notify: NotifySocket) -> Iterator[Callable[..., DaemonProcess]]:
    started: list[DaemonProcess] = []

    def _start(**config: Any) -> DaemonProcess:
        daemon = DaemonProcess(tmp_path, notify, **config)
        started.append(daemon)
        return daemon

    yield _start
    for daemon in started:
        daemon.kill()
        if daemon.proc.stdout is not None:
            daemon.proc.stdout.close()


def test_sigterm_cancels_a_slow_cycle_and_exits_zero(
    start: Callable[..., DaemonProcess], notify: NotifySocket
) -> None:
    daemon = start(tag="a", interval_s=0.5, cycle_s=30, shutdown_deadline_s=5)
    daemon.wait_ready()
    daemon.wait_for("a cycle to start", lambda: bool(daemon.events("cycle_start")))
    sent = time.monotonic()
    daemon.signal(signal.SIGTERM)
    code = daemon.wait_exit()
    assert code == 0, daemon.output()
    assert time.monotonic() - sent < 3
    ends = daemon.events("cycle_end")
    assert ends and ends[-1]["aborted"] is True
    kinds = [e["event"] for e in daemon.events()]
    # the runner is closed after the aborted cycle returned, never under it
    assert kinds.index("close") > kinds.index("cycle_end")
    assert kinds[-1] == "exit"
    assert notify.count("STOPPING=1") == 1
    # an aborted cycle is not a completed one: no watchdog ping for it
    assert notify.count("WATCHDOG=1") == 0


def test_stop_deadline_passes_when_the_cycle_ignores_cancel(
    start: Callable[..., DaemonProcess], notify: NotifySocket
) -> None:
    daemon = start(interval_s=0.5, cycle_s=20, honour_cancel=False, shutdown_deadline_s=1)
    daemon.wait_ready()
    daemon.wait_for("a cycle to start", lambda: bool(daemon.events("cycle_start")))
    sent = time.monotonic()
    daemon.signal(signal.SIGTERM)
    assert daemon.wait_exit() == 1
    assert 0.9 < time.monotonic() - sent < 4
    assert not daemon.events("cycle_end")
    assert notify.count("STOPPING=1") == 1


def test_second_sigint_forces_exit(start: Callable[..., DaemonProcess]) -> None:
    daemon = start(interval_s=0.5, cycle_s=20, honour_cancel=False, shutdown_deadline_s=30)
    daemon.wait_ready()
    daemon.wait_for("a cycle to start", lambda: bool(daemon.events("cycle_start")))
    daemon.signal(signal.SIGINT)
    time.sleep(0.3)
    assert daemon.proc.poll() is None  # still waiting for the cycle
    sent = time.monotonic()
    daemon.signal(signal.SIGINT)
    assert daemon.wait_exit() == 130
    assert time.monotonic() - sent < 2


def test_notify_ready_watchdog_per_completed_cycle_and_stopping(
    start: Callable[..., DaemonProcess], notify: NotifySocket
) -> None:
    daemon = start(interval_s=0.3, cycle_s=0.05)
    daemon.wait_ready()
    assert notify.assignments()[0].startswith("STATUS=")  # "starting" before READY
    daemon.wait_for("three cycles", lambda: len(daemon.events("cycle_end")) >= 3)
    daemon.signal(signal.SIGTERM)
    assert daemon.wait_exit() == 0
    completed = len(daemon.events("cycle_end"))
    assert notify.count("READY=1") == 1
    assert notify.count("WATCHDOG=1") == completed
    assert notify.count("STOPPING=1") == 1
    order = [a for a in notify.assignments() if a in ("READY=1", "WATCHDOG=1", "STOPPING=1")]
    assert order[0] == "READY=1" and order[-1] == "STOPPING=1"
    assert any(a.startswith("STATUS=cycle ") and "deployed" in a for a in notify.assignments())


def test_sighup_with_an_invalid_config_keeps_the_old_one(
    start: Callable[..., DaemonProcess], notify: NotifySocket
) -> None:
    daemon = start(tag="old", interval_s=0.3, cycle_s=0.02)
    daemon.wait_ready()
    daemon.wait_for("a cycle", lambda: bool(daemon.events("cycle_end")))
    daemon.config_path.write_text("{ this is not json")
    daemon.signal(signal.SIGHUP)
    daemon.wait_for(
        "the rejection to be counted",
        lambda: daemon.scrape()['signaltwin_config_reload_total{result="rejected"}'] == 1,
    )
    before = len(daemon.events("cycle_start"))
    daemon.wait_for("two more cycles", lambda: len(daemon.events("cycle_start")) >= before + 2)
    assert {e["tag"] for e in daemon.events("cycle_start")} == {"old"}
    assert not daemon.events("config_change")
    assert len(daemon.events("built")) == 1
    samples = daemon.scrape()
    assert samples['signaltwin_config_reload_total{result="applied"}'] == 0
    assert daemon.proc.poll() is None  # a bad reload never stops the daemon
    daemon.signal(signal.SIGTERM)
    assert daemon.wait_exit() == 0


def test_sighup_with_a_valid_config_swaps_the_runner_between_cycles(
    start: Callable[..., DaemonProcess],
) -> None:
    daemon = start(tag="old", interval_s=0.3, cycle_s=0.02)
    daemon.wait_ready()
    daemon.wait_for("a cycle", lambda: bool(daemon.events("cycle_end")))
    daemon.write_config(tag="new", interval_s=0.3, cycle_s=0.02)
    daemon.signal(signal.SIGHUP)
    daemon.wait_for(
        "a cycle with the new settings",
        lambda: any(e["tag"] == "new" for e in daemon.events("cycle_start")),
    )
    changes = daemon.events("config_change")
    assert [c["current"] for c in changes] == ["new"]
    kinds = [(e["event"], e.get("tag")) for e in daemon.events()]
    # the old runner is closed before the change is recorded, and no cycle overlaps the swap
    assert kinds.index(("close", "old")) < kinds.index(("config_change", None))
    assert daemon.scrape()['signaltwin_config_reload_total{result="applied"}'] == 1
    daemon.signal(signal.SIGTERM)
    assert daemon.wait_exit() == 0
    assert daemon.events("close")[-1]["tag"] == "new"


def test_overrun_skips_a_slot_and_says_so(start: Callable[..., DaemonProcess]) -> None:
    daemon = start(interval_s=0.4, cycle_s=1.0)
    daemon.wait_ready()
    daemon.wait_for("a skipped slot recorded", lambda: bool(daemon.events("skip")), 8)
    skips = daemon.events("skip")
    assert {s["reason"] for s in skips} == {"overrun"}
    # the skip is recorded between cycles, never while one runs
    kinds = [e["event"] for e in daemon.events()]
    first_skip = kinds.index("skip")
    assert kinds[:first_skip].count("cycle_start") == kinds[:first_skip].count("cycle_end")
    # a skipped slot is never run later
    started = {e["slot"] for e in daemon.events("cycle_start")}
    assert not started & {s["slot"] for s in skips}
    samples = daemon.scrape()
    assert samples['signaltwin_cycle_skipped_total{reason="overrun"}'] >= len(skips)
    daemon.signal(signal.SIGTERM)
    assert daemon.wait_exit() == 0
    output = daemon.output()
    assert "skipped (overrun)" in output


def test_metrics_scraped_over_http_after_cycles(start: Callable[..., DaemonProcess]) -> None:
    daemon = start(interval_s=0.3, cycle_s=0.05)
    daemon.wait_ready()
    daemon.wait_for("two cycles", lambda: len(daemon.events("cycle_end")) >= 2)
    samples = daemon.scrape()
    assert samples['signaltwin_cycles_total{result="deployed"}'] >= 2
    assert samples['signaltwin_deployments_total{result="deployed"}'] >= 2
    assert samples['signaltwin_gate_decisions_total{decision="pass"}'] >= 2
    assert samples["signaltwin_cycle_duration_seconds_count"] >= 2
    assert samples['signaltwin_cycle_stage_duration_seconds_count{stage="whatif"}'] >= 2
    assert samples['signaltwin_opcua_errors_total{controller="J1"}'] >= 2
    assert samples['signaltwin_controller_up{controller="J2"}'] == 0
    assert samples["signaltwin_last_successful_cycle_timestamp_seconds"] > time.time() - 60
    daemon.signal(signal.SIGTERM)
    assert daemon.wait_exit() == 0


def test_slots_lost_while_the_process_was_stopped_are_reported_missed(
    start: Callable[..., DaemonProcess],
) -> None:
    daemon = start(interval_s=0.3, cycle_s=0.02)
    daemon.wait_ready()
    daemon.wait_for("a cycle", lambda: bool(daemon.events("cycle_end")))
    daemon.signal(signal.SIGSTOP)  # like a suspended host: the scheduler wakes up late
    time.sleep(1.3)
    daemon.signal(signal.SIGCONT)
    # an overrun skip may be reported first, as the stopped cycle ends late;
    # the missed slots come with the next cycle's start
    daemon.wait_for(
        "missed slots recorded",
        lambda: any(s["reason"] == "missed" for s in daemon.events("skip")),
    )
    skips = daemon.events("skip")
    missed = [s for s in skips if s["reason"] == "missed"]
    assert {s["reason"] for s in skips} <= {"missed", "overrun"}  # overrun only on a slow host
    assert 2 <= len(missed) <= 8  # about 1.3 s / 0.3 s slots lost
    # every slot is accounted for: run or recorded as skipped, none twice
    daemon.wait_for("a cycle after the gap", lambda: len(daemon.events("cycle_end")) >= 3)
    daemon.signal(signal.SIGTERM)
    assert daemon.wait_exit() == 0
    run = [e["slot"] for e in daemon.events("cycle_start")]
    skipped = [s["slot"] for s in daemon.events("skip")]
    slots = sorted(run + skipped)
    assert len(slots) == len(set(slots))
    times = [datetime.fromisoformat(t).timestamp() for t in slots]
    gaps = {round(b - a, 3) for a, b in zip(times, times[1:], strict=False)}
    assert gaps == {0.3}
