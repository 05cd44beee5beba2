"""The local demo: field emulator, emulated controllers, SoftHSM token and daemon.

Everything a traffic bureau would run, on one machine: the *field* (a SUMO of
the demo district with hidden, time-varying demand, in accelerated time) behind
one emulated OPC UA controller per traffic light, in a child process; a SoftHSM2
token with the signing key; and the daemon itself, in this process, running its
real cycle on a schedule scaled to the field's speed. Nothing in the daemon knows
it is a demo: it reads the controllers over SignAndEncrypt OPC UA and deploys
signed plans to them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any, TypeVar

from configs.errors import ActuationError, ConfigError, SignaltwinError
from configs.settings import ConsoleSettings, ControllerEndpoint, MetricsSettings, Settings
from configs.settings_file import dump_settings_toml, load_settings
from controller.contracts import CycleObserver, CycleReport
from controller.cycle import CycleRunner
from controller.wiring import build_runner

__all__ = [
    "DemoOptions",
    "DemoSummary",
    "check_ports_free",
    "console_settings",
    "default_demo_config",
    "metrics_settings",
    "opening_line",
    "prepare_demo",
    "run_demo",
]

logger = logging.getLogger(__name__)


def default_demo_config() -> Path:
    """The demo settings shipped with the package (``configs/demo.toml``)."""
    import configs

    return Path(configs.__file__).parent / "demo.toml"


@dataclass(frozen=True)
class DemoOptions:
    """How to run the demo."""

    config: Path
    state_dir: Path | None = None
    cycles: int | None = None
    speed: float = 8.0
    seed: int = 1
    video: bool = True
    ready_timeout_s: float = 240.0
    echo: Callable[[str], None] = print
    metrics_port: int | None = None
    """Serve the Prometheus endpoint on this port (None: the settings'; 0: not at all)."""
    console_port: int | None = None
    """Serve the operator console on this port (None: the settings'; 0: not at all)."""


@dataclass
class DemoSummary:
    """What the demo did (printed at the end)."""

    state_dir: Path
    ledger: Path
    public_key: Path
    cycles: int = 0
    deployments: int = 0
    decisions: dict[str, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    videos: list[str] = field(default_factory=list)
    predicted_vs_measured: list[tuple[int, float, float | None]] = field(default_factory=list)

    def plan_lines(self) -> list[str]:
        """One line per deployed plan: its predicted wait change and what was measured."""
        lines = []
        for sequence, predicted, measured in self.predicted_vs_measured:
            shown = "not measured yet" if measured is None else f"measured {measured:+.1%}"
            lines.append(f"plan {sequence}: predicted wait {predicted:+.1%}, {shown}")
        return lines


def _free_ports(count: int) -> list[int]:
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


_Served = TypeVar("_Served", MetricsSettings, ConsoleSettings)


def _on_port(section: _Served, port: int | None, option: str) -> _Served:
    """``section`` on ``port`` when given, off for port 0, unchanged for None."""
    if port is None:
        return section
    if not 0 <= port <= 65535:
        raise ConfigError(f"{option} {port}: give a TCP port 1..65535, or 0 for none")
    if port == 0:
        return section.model_copy(update={"enabled": False})
    return section.model_copy(update={"enabled": True, "port": port})


def metrics_settings(settings: Settings, port: int | None) -> MetricsSettings:
    """The demo's ``[metrics]``: the settings', on ``port`` when given, off for port 0.

    Raises:
        ConfigError: a port outside 0..65535.
    """
    return _on_port(settings.metrics, port, "--metrics-port")


def console_settings(settings: Settings, port: int | None) -> ConsoleSettings:
    """The demo's ``[console]``: the settings', on ``port`` when given, off for port 0.

    Raises:
        ConfigError: a port outside 0..65535.
    """
    return _on_port(settings.console, port, "--console-port")


def check_ports_free(settings: Settings) -> None:
    """Refuse to start when the metrics or console port is taken (before anything starts).

    Raises:
        ConfigError: naming the port, what wanted it and the option to change it.
    """
    wanted: list[tuple[str, str, str, int]] = []
    if settings.metrics.enabled:
        m = settings.metrics
        wanted.append(("the Prometheus metrics", "--metrics-port", m.address, m.port))
    if settings.console.enabled and settings.console.port != 0:
        c = settings.console
        wanted.append(("the operator console", "--console-port", c.address, c.port))
    if len(wanted) == 2 and wanted[0][2:] == wanted[1][2:]:
        raise ConfigError(
            f"the metrics and the console both want {wanted[0][2]}:{wanted[0][3]}; give "
            "--metrics-port and --console-port different ports"
        )
    for what, option, address, port in wanted:
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            # as the servers will bind: a port in TIME_WAIT is free, a listening one is not
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((address, port))
            except OSError as e:
                raise ConfigError(
                    f"port {port} on {address} for {what} is not free ({e.strerror or e}): "
                    f"another demo or daemon may be running; stop it, or give {option} PORT "
                    "(0: none). Nothing was started."
                ) from e


def opening_line(settings: Settings) -> str:
    """What the demo says while the daemon opens its HSM, ledger and controller sessions."""
    count = len(settings.controllers.endpoints)
    sessions = "1 secure session" if count == 1 else f"{count} secure sessions"
    return f"daemon: opening the HSM, the ledger and {sessions} ..."


def prepare_demo(options: DemoOptions) -> tuple[Settings, Path]:
    """Provision the token, the PKI and the endpoints; write the effective settings.

    Returns:
        The effective settings and the TOML file they were written to (the
        controllers' process reads the same file).
    """
    from actuation.security import provision_demo_pki
    from hsm.provision import provision_softhsm
    from simulators.network import load_network

    settings = load_settings(options.config)
    if options.state_dir is not None:
        settings = settings.with_state_dir(options.state_dir.resolve())
    settings = settings.model_copy(
        update={
            "metrics": metrics_settings(settings, options.metrics_port),
            "console": console_settings(settings, options.console_port),
        }
    )
    check_ports_free(settings)
    state = settings.state_dir
    state.mkdir(parents=True, exist_ok=True)
    if not settings.hsm.auto_provision or not settings.controllers.auto_provision:
        raise ConfigError(
            f"{options.config}: the demo provisions its own token and certificates; "
            "set hsm.auto_provision and controllers.auto_provision to true"
        )
    network = load_network(settings.simulation.network, settings.simulation.detectors)
    options.echo(
        f"demo district: {len(network.tls_ids)} traffic lights, {len(network.detectors)} "
        f"detectors ({settings.simulation.network.name})"
    )
    result = provision_softhsm(
        state,
        module=settings.hsm.module,
        token_label=settings.hsm.token_label,
        key_label=settings.hsm.key_label,
    )
    options.echo(
        f"HSM: SoftHSM2 token '{settings.hsm.token_label}', key {result.report.key.keyid[:16]}... "
        f"({'created' if result.created_key else 'existing'})"
    )
    pki = provision_demo_pki(state / "pki", network.tls_ids)
    ports = _free_ports(len(network.tls_ids))
    endpoints = [
        ControllerEndpoint(
            intersection=tls,
            url=f"opc.tcp://127.0.0.1:{port}",
            server_certificate=pki.servers[tls].certificate,
        )
        for tls, port in zip(network.tls_ids, ports, strict=True)
    ]
    settings = settings.model_copy(
        update={
            "controllers": settings.controllers.model_copy(
                update={
                    "endpoints": endpoints,
                    "client_certificate": pki.client.certificate,
                    "client_private_key": pki.client.private_key,
                    "password_file": str(pki.password_file),
                    "public_keys": [result.public_key_path],
                }
            ),
            "video": settings.video.model_copy(
                update={"enabled": settings.video.enabled and options.video}
            ),
        }
    )
    path = state / "demo-settings.toml"
    path.write_text(dump_settings_toml(settings), encoding="utf-8")
    return load_settings(path), path


@contextlib.contextmanager
def controllers_process(
    settings_path: Path, settings: Settings, options: DemoOptions
) -> Iterator[subprocess.Popen[str]]:
    """Start ``signaltwin controllers serve`` (field + controllers) and wait until ready."""
    log_path = settings.state_dir / "controllers.log"
    command = [
        sys.executable,
        "-c",
        "from controller.cli import main; main()",
        "controllers",
        "serve",
        "--config",
        str(settings_path),
        "--speed",
        str(options.speed),
        "--seed",
        str(options.seed),
    ]
    with open(log_path, "w", encoding="utf-8") as log:
        process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            start_new_session=True,
        )
        try:
            _wait_ready(process, len(settings.controllers.endpoints), options, log_path)
            yield process
        finally:
            _stop(process)


def _wait_ready(
    process: subprocess.Popen[str], expected: int, options: DemoOptions, log_path: Path
) -> None:
    assert process.stdout is not None  # noqa: S101 - Popen(stdout=PIPE) guarantees it
    stdout: IO[str] = process.stdout
    seen: set[str] = set()
    deadline = time.monotonic() + options.ready_timeout_s
    ready = threading.Event()

    def read() -> None:
        for line in stdout:
            with contextlib.suppress(json.JSONDecodeError):
                item = json.loads(line)
                if isinstance(item, dict) and "intersection" in item:
                    seen.add(str(item["intersection"]))
                    if len(seen) >= expected:
                        ready.set()

    threading.Thread(target=read, name="controllers-stdout", daemon=True).start()
    options.echo(f"starting the field emulator and {expected} emulated OPC UA controllers ...")
    while not ready.wait(0.5):
        if process.poll() is not None:
            tail = log_path.read_text(encoding="utf-8", errors="replace")[-2000:]
            raise ActuationError(
                f"the controllers' process exited with {process.returncode}; "
                f"see {log_path}:\n{tail}"
            )
        if time.monotonic() > deadline:
            raise ActuationError(
                f"only {len(seen)} of {expected} controllers came up within "
                f"{options.ready_timeout_s:.0f} s; see {log_path}"
            )
    options.echo(f"{expected} controllers listening (SignAndEncrypt, pinned certificates)")


def _stop(process: subprocess.Popen[str]) -> None:
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


class _ObservedRunner:
    """Wraps the real runner to show progress and stop after N cycles."""

    def __init__(
        self,
        runner: CycleRunner,
        summary: DemoSummary,
        options: DemoOptions,
        on_done: Callable[[], None],
    ) -> None:
        self.runner = runner
        self.summary = summary
        self.options = options
        self._on_done = on_done

    def run_cycle(self, slot_time: datetime, cancel: threading.Event) -> CycleReport:
        n = self.summary.cycles + 1
        self.options.echo(f"cycle {n}: started (slot {slot_time:%H:%M:%S})")
        report = self.runner.run_cycle(slot_time, cancel)
        self.summary.cycles = n
        self.summary.decisions[report.decision] = self.summary.decisions.get(report.decision, 0) + 1
        if report.deployed:
            self.summary.deployments += 1
        if report.video:
            self.summary.videos.append(report.video)
        if report.failed_stage:
            self.summary.failures.append(f"cycle {n}: {report.failed_stage}: {report.error}")
        stages = " ".join(f"{k} {v:.1f}s" for k, v in report.stage_s.items() if v >= 0.05)
        if report.failed_stage:
            outcome = f"FAILED in {report.failed_stage}: {report.error}"
        elif report.deployed:
            outcome = (
                f"DEPLOYED plan {report.sequence} (predicted wait "
                f"{(report.predicted_wait_change or 0):+.1%}, NOx "
                f"{(report.predicted_nox_change or 0):+.2%})"
            )
        elif report.shadow and report.sequence:
            outcome = f"shadow: plan {report.sequence} signed, not pushed"
        elif report.held:
            outcome = f"gate passed, held: {report.held} (nothing deployed)"
        else:
            outcome = f"gate: {report.decision} (nothing deployed)"
        total = sum(report.stage_s.values())
        self.options.echo(f"cycle {n}: {outcome}; {total:.1f} s [{stages}]")
        if self.options.cycles is not None and n >= self.options.cycles:
            self._on_done()
        return report

    def __getattr__(self, name: str) -> Any:
        return getattr(self.runner, name)


def run_demo(options: DemoOptions) -> DemoSummary:
    """Run the demo until ``options.cycles`` cycles ran, or SIGINT/SIGTERM."""
    from controller.console import start_console

    settings, settings_path = prepare_demo(options)
    pubkey = settings.controllers.public_keys[0]
    summary = DemoSummary(settings.state_dir, settings.ledger.path, pubkey)
    # the field runs `speed` times faster than the wall clock: so does the schedule
    wall_interval = max(5, round(settings.schedule.interval_s / options.speed))
    daemon_settings = settings.model_copy(
        update={
            "schedule": settings.schedule.model_copy(
                update={
                    "interval_s": wall_interval,
                    "feedback_interval_s": max(
                        wall_interval, round(settings.schedule.feedback_interval_s / options.speed)
                    ),
                }
            )
        }
    )
    options.echo(
        f"state directory: {settings.state_dir}\n"
        f"field speed {options.speed:g}x: one {settings.schedule.interval_s} s cycle every "
        f"{wall_interval} s of wall time"
    )
    with contextlib.ExitStack() as stack:
        observers: list[CycleObserver] = []
        console = start_console(daemon_settings)
        if console is not None:
            stack.callback(console.close)
            observers.append(console)
            options.echo(f"operator console: {console.url} (live; read-only)")
        stack.enter_context(controllers_process(settings_path, settings, options))
        _run_daemon(settings, daemon_settings, summary, options, observers)
    _measured(summary)
    return summary


def _run_daemon(
    settings: Settings,
    daemon_settings: Settings,
    summary: DemoSummary,
    options: DemoOptions,
    observers: list[CycleObserver],
) -> None:
    """Run the daemon's real cycle against the controllers until told to stop."""
    from controller.daemon import Daemon, DaemonOptions
    from controller.metrics import Metrics, build_registry
    from controller.notify import NullNotifier

    holder: list[Daemon[Settings]] = []

    def stop() -> None:
        if holder:
            holder[0].request_stop()

    def factory(s: Settings, reload: bool = False) -> Any:
        options.echo(opening_line(s))
        return _ObservedRunner(build_runner(s, reload=reload), summary, options, stop)

    metrics = Metrics(
        build_registry(process_metrics=False),
        controllers=[e.intersection for e in settings.controllers.endpoints],
    )
    daemon: Daemon[Settings] = Daemon(
        lambda: daemon_settings,
        factory,
        metrics,
        NullNotifier(),
        DaemonOptions(
            install_signal_handlers=threading.current_thread() is threading.main_thread(),
            align_to_clock=False,
        ),
        reload_factory=lambda s: factory(s, reload=True),
        observers=observers,
    )
    holder.append(daemon)
    code = daemon.run()
    if code not in (0, 1):
        raise SignaltwinError(f"the daemon stopped with exit code {code}")


def _measured(summary: DemoSummary) -> None:
    from controller.ledger import Ledger

    with contextlib.suppress(SignaltwinError):
        ledger = Ledger.open(summary.ledger, readonly=True)
        try:
            measured = {
                int(r.body["deployment"]): r.body for r in ledger.iter_records("measured_delta")
            }
            for record in ledger.iter_records("deployment"):
                if record.body.get("result") != "deployed":
                    continue
                predicted = float(record.body["configuration"]["predicted"]["wait_change"])
                m = measured.get(record.index, {}).get("measured", {})
                value = m.get("wait_change") if isinstance(m, dict) else None
                summary.predicted_vs_measured.append(
                    (
                        int(record.body["sequence"]),
                        predicted,
                        None if value is None else float(value),
                    )
                )
        finally:
            ledger.close()
