"""``signaltwin run --config FILE``: the daemon, in the foreground (as systemd runs it).

Logs go to stderr; under systemd (``$JOURNAL_STREAM`` names stderr) each line
carries a ``<N>`` syslog priority so journald stores the right level. ``--once``
runs a single cycle now and exits with its outcome.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from configs.errors import SignaltwinError
from configs.settings import Settings
from configs.settings_file import load_settings
from controller.exit_codes import ExitCode
from controller.log_levels import set_library_levels
from controller.notify import JournalFormatter, NullNotifier, SystemdNotifier, stderr_is_journal

if TYPE_CHECKING:
    from collections.abc import Callable

    # the daemon (APScheduler, prometheus-client) and the cycle it assembles (SUMO,
    # torch, asyncua, the HSM) are imported when the command runs, so that
    # registering it at every `signaltwin` start stays cheap.
    from controller.console.service import ConsoleService
    from controller.contracts import RunsCycles

logger = logging.getLogger(__name__)

_DESCRIPTION = """\
Run the signaltwin daemon in the foreground until SIGTERM or SIGINT: a cycle every
schedule.interval_s seconds (observe, estimate demand, propose, screen, what-if,
gate, render, sign, push, record), feedback collection every
schedule.feedback_interval_s, Prometheus metrics on metrics.address:metrics.port,
the operator console (a read-only web page) on console.address:console.port.

Signals: SIGTERM/SIGINT stop after the running cycle finished or aborted (within
schedule.shutdown_deadline_s); a second SIGINT forces the exit; SIGHUP reloads the
settings file (an invalid one is refused and the current settings kept).
Under systemd (Type=notify) it reports READY=1, WATCHDOG=1 after each completed
cycle, STOPPING=1 and STATUS= lines. See docs/operations.md.
"""

_EPILOG = """\
exit codes: 0 stopped cleanly (--once: deployed, or passed in shadow mode);
1 stopped with a cycle still running at the shutdown deadline (--once: the gate
refused); 2 invalid settings; 3 a component failed (at start-up, or --once: the
cycle failed); 130 forced by a second SIGINT (--once: interrupted).
"""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``run`` sub-command."""
    parser = subparsers.add_parser(
        "run",
        help="run the control daemon in the foreground (what the systemd unit starts)",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--config",
        type=Path,
        required=True,
        metavar="FILE",
        help="settings TOML (re-read on SIGHUP), e.g. /etc/signaltwin/signaltwin.toml",
    )
    parser.add_argument(
        "--once",
        action="store_true",
        help="run one cycle now (no schedule, no metrics endpoint) and exit with its outcome",
    )
    parser.add_argument(
        "--log-level",
        choices=("debug", "info", "warning", "error"),
        default="info",
        help="log level (default: info)",
    )
    parser.add_argument(
        "--log-format",
        choices=("auto", "journal", "plain"),
        default="auto",
        help="journal: '<N>' priority prefixes for journald, no timestamps; plain: "
        "timestamped lines; auto (default): journal when stderr is the journal",
    )
    parser.set_defaults(func=_run)


def configure_logging(level: str, log_format: Literal["auto", "journal", "plain"]) -> None:
    """Send logs to stderr at ``level``, formatted for journald or a terminal.

    asyncua and APScheduler stay at WARNING unless ``level`` is ``debug``
    (:func:`~controller.log_levels.set_library_levels`).
    """
    journal = log_format == "journal" or (log_format == "auto" and stderr_is_journal())
    formatter: logging.Formatter = (
        JournalFormatter()
        if journal
        else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    root = logging.getLogger()
    stderr_handlers = [
        h
        for h in root.handlers
        if isinstance(h, logging.StreamHandler) and getattr(h, "stream", None) is sys.stderr
    ]
    if not stderr_handlers:
        handler = logging.StreamHandler(sys.stderr)
        root.addHandler(handler)
        stderr_handlers = [handler]
    for handler in stderr_handlers:
        handler.setFormatter(formatter)
    root.setLevel(level.upper())
    set_library_levels(root.level)


def _cycle_factory() -> Callable[[Settings], RunsCycles[Settings]]:
    try:
        from controller.wiring import build_runner
    except ImportError as e:
        raise SignaltwinError(
            "controller.wiring.build_runner is not available in this build "
            f"({e}); the daemon cannot assemble its cycle"
        ) from e
    factory: Callable[[Settings], RunsCycles[Settings]] = build_runner
    return factory


def _reload_factory(settings: Settings) -> RunsCycles[Settings]:
    """A runner built on SIGHUP: it leaves the running runner's push alone."""
    from controller.wiring import build_runner

    return build_runner(settings, reload=True)


def _settings_loader(path: Path, first: Settings) -> Callable[[], Settings]:
    pending = [first]

    def load() -> Settings:
        # The first call gets the settings already validated by _run; later calls
        # (SIGHUP) re-read the file.
        return pending.pop() if pending else load_settings(path)

    return load


def _run(args: argparse.Namespace) -> int:
    from controller.daemon import Daemon, DaemonOptions
    from controller.metrics import Metrics, build_registry

    configure_logging(args.log_level, args.log_format)
    settings = load_settings(args.config)  # ConfigError -> exit 2 with the message
    factory = _cycle_factory()
    if args.once:
        return _run_once(args.config, settings, factory)

    notifier = SystemdNotifier.from_environment()
    # Children (SUMO workers) must not talk to systemd as if they were the daemon.
    os.environ.pop("NOTIFY_SOCKET", None)
    metrics = Metrics(
        build_registry(process_metrics=True),
        controllers=[e.intersection for e in settings.controllers.endpoints],
    )
    console = _start_console(settings)
    try:
        daemon: Daemon[Settings] = Daemon(
            _settings_loader(args.config, settings),
            factory,
            metrics,
            notifier,
            DaemonOptions(),
            reload_factory=_reload_factory,
            observers=() if console is None else (console,),
        )
        return daemon.run()
    finally:
        if console is not None:
            console.close()


def _start_console(settings: Settings) -> ConsoleService | None:
    """The operator console (``[console]``), bound before the daemon starts.

    Raises:
        ConfigError: HTTPS or the users file missing off loopback, or unreadable.
        SignaltwinError: its port cannot be bound.
    """
    from controller.console.service import start_console

    # [console] is read at start-up only: a SIGHUP reload keeps the console as it is
    return start_console(settings)


def _run_once(
    path: Path, settings: Settings, factory: Callable[[Settings], RunsCycles[Settings]]
) -> int:
    from controller.daemon import Daemon, DaemonOptions
    from controller.metrics import Metrics, build_registry

    metrics = Metrics(build_registry(process_metrics=False))
    daemon: Daemon[Settings] = Daemon(
        _settings_loader(path, settings), factory, metrics, NullNotifier(), DaemonOptions()
    )
    run = daemon.run_once()
    print(run.describe())
    if run.result in ("deployed", "shadow"):
        return ExitCode.OK
    if run.result == "refused":
        return ExitCode.PROBLEM
    if run.result == "aborted":
        return ExitCode.INTERRUPTED
    return ExitCode.COMPONENT
