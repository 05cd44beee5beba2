"""The daemon's process lifecycle pieces: signals, systemd watchdog, the metrics endpoint.

The lifecycle follows uvicorn's ``server.py``: **start-up** (load settings,
serve metrics, build the cycle runner, start the scheduler, ``READY=1``) ->
**main loop** (wake every ``tick_s``; act on the flags the signal handlers set)
-> **shutdown** (``STOPPING=1``, cancel the running cycle, wait for it up to a
deadline, close the runner). :class:`controller.daemon.Daemon` runs those
steps; this module holds the parts that talk to the process and to systemd.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType
from typing import Any

from controller.contracts import MetricsSettingsLike
from controller.metrics import Metrics, MetricsServer, start_metrics_server
from controller.notify import watchdog_timeout_s

__all__ = ["DaemonOptions", "SignalHandlers", "check_watchdog", "serve_metrics"]

logger = logging.getLogger(__name__)

SignalHandler = Callable[[int, FrameType | None], None]

#: the signals the daemon handles: stop (SIGINT, SIGTERM) and reload (SIGHUP)
HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


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


class SignalHandlers:
    """Installs a handler for the daemon's signals and puts the previous ones back."""

    def __init__(self, handler: SignalHandler) -> None:
        self._handler = handler
        self._saved: dict[int, Any] = {}

    def install(self) -> None:
        """Install the handler (only possible in the main thread; elsewhere a no-op)."""
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in HANDLED_SIGNALS:
            self._saved[sig] = signal.signal(sig, self._handler)

    def restore(self) -> None:
        """Put back the handlers that were there before :meth:`install`."""
        for sig, handler in self._saved.items():
            signal.signal(sig, handler)
        self._saved.clear()


def check_watchdog(interval_s: float) -> None:
    """Warn when systemd's WatchdogSec is shorter than two cycle intervals."""
    watchdog_s = watchdog_timeout_s()
    needed_s = 2 * interval_s
    if watchdog_s is not None and watchdog_s < needed_s:
        logger.warning(
            "WatchdogSec=%.0f is shorter than two cycle intervals (%.0f s): WATCHDOG=1 is "
            "sent after each completed cycle, so systemd may kill a healthy daemon; raise "
            "WatchdogSec in the unit",
            watchdog_s,
            needed_s,
        )


def serve_metrics(metrics: Metrics, settings: MetricsSettingsLike) -> MetricsServer | None:
    """Serve ``metrics`` when enabled; None when disabled.

    Raises:
        OSError: the address or port cannot be bound (logged with the fix).
    """
    if not settings.enabled:
        return None
    try:
        return start_metrics_server(metrics.registry, settings.address, settings.port)
    except OSError as e:
        logger.error(
            "cannot start: metrics endpoint %s:%s: %s (change metrics.address / "
            "metrics.port in the settings, or set metrics.enabled = false)",
            settings.address,
            settings.port,
            e,
        )
        raise
