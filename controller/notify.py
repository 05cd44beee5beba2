"""systemd integration without a dependency: ``sd_notify`` and a journald log format.

``sd_notify`` is a datagram of ``KEY=VALUE`` lines sent to the AF_UNIX socket
named by ``$NOTIFY_SOCKET`` (a filesystem path, or an abstract socket written
with a leading ``@``). When the variable is unset (not started by systemd with
``Type=notify``) every call is a silent no-op, so the daemon behaves the same in
a terminal, in tests and under systemd.

A notification must never take the daemon down: send errors are logged once
and reported as ``False``.
"""

from __future__ import annotations

__all__ = [
    "JournalFormatter",
    "NullNotifier",
    "Notifier",
    "SystemdNotifier",
    "sd_notify",
    "stderr_is_journal",
    "watchdog_timeout_s",
]

import logging
import os
import socket
import threading
import time
from collections.abc import Mapping
from typing import Protocol

logger = logging.getLogger(__name__)


class Notifier(Protocol):
    """Where the daemon reports its state (systemd, or nowhere)."""

    def notify(self, *assignments: str) -> bool:
        """Send ``KEY=VALUE`` assignments as one message; return whether it was delivered."""
        ...


def _socket_address(value: str) -> str | bytes:
    """Translate a ``$NOTIFY_SOCKET`` value into an address for ``sendto``."""
    if value.startswith("@"):
        # Abstract namespace: a leading NUL byte instead of '@', no terminator.
        return b"\0" + value[1:].encode()
    return value


def sd_notify(message: str, socket_path: str | None) -> bool:
    """Send one notification ``message`` to ``socket_path`` (a ``$NOTIFY_SOCKET`` value).

    Args:
        message: newline-separated ``KEY=VALUE`` assignments (``READY=1``, ``STATUS=...``).
        socket_path: a filesystem path or an abstract socket name starting with ``@``;
            ``None`` or empty means "not under systemd" and nothing is sent.

    Returns:
        True when the datagram was sent, False when there was nowhere to send it.

    Raises:
        OSError: the socket exists but the datagram could not be sent.
    """
    if not socket_path:
        return False
    if not (socket_path.startswith("/") or socket_path.startswith("@")):
        # systemd >= 254 also offers vsock: addresses (for VMs); not used on a host.
        raise OSError(f"unsupported NOTIFY_SOCKET address {socket_path!r}")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.connect(_socket_address(socket_path))
        sock.sendall(message.encode())
    return True


def watchdog_timeout_s(environ: Mapping[str, str] | None = None) -> float | None:
    """The watchdog timeout systemd set for this process (``WatchdogSec=``), if any."""
    env = os.environ if environ is None else environ
    usec = env.get("WATCHDOG_USEC")
    if not usec:
        return None
    pid = env.get("WATCHDOG_PID")
    if pid and pid.isdigit() and int(pid) != os.getpid():
        return None
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 1_000_000 if value > 0 else None


def stderr_is_journal(environ: Mapping[str, str] | None = None) -> bool:
    """Whether stderr is connected to journald (``$JOURNAL_STREAM`` names its device:inode)."""
    env = os.environ if environ is None else environ
    stream = env.get("JOURNAL_STREAM", "")
    device, _, inode = stream.partition(":")
    if not (device.isdigit() and inode.isdigit()):
        return False
    try:
        st = os.fstat(2)
    except OSError:
        return False
    return st.st_dev == int(device) and st.st_ino == int(inode)


class SystemdNotifier:
    """Sends notifications to ``$NOTIFY_SOCKET`` (read once, at construction).

    Thread-safe: the daemon notifies from its main loop and from the cycle thread.
    """

    def __init__(self, socket_path: str | None) -> None:
        """Create a notifier for ``socket_path``; ``None`` makes every call a no-op."""
        self.socket_path = socket_path or None
        self._lock = threading.Lock()
        self._warned = False

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> SystemdNotifier:
        """Build a notifier from ``$NOTIFY_SOCKET`` (unset: a notifier that sends nothing)."""
        env = os.environ if environ is None else environ
        return cls(env.get("NOTIFY_SOCKET"))

    @property
    def enabled(self) -> bool:
        """Whether a notify socket was given."""
        return self.socket_path is not None

    def notify(self, *assignments: str) -> bool:
        """Send ``assignments`` (``"READY=1"``, ``"STATUS=..."``) as one datagram.

        Newlines inside a value are replaced by spaces so that a STATUS text cannot
        inject another assignment.
        """
        if self.socket_path is None or not assignments:
            return False
        message = "\n".join(a.replace("\n", " ") for a in assignments)
        with self._lock:
            try:
                return sd_notify(message, self.socket_path)
            except OSError as e:
                if not self._warned:
                    self._warned = True
                    logger.warning(
                        "cannot notify systemd at NOTIFY_SOCKET=%s: %s (further errors are "
                        "logged at debug level)",
                        self.socket_path,
                        e,
                    )
                else:
                    logger.debug("sd_notify failed: %s", e)
                return False


class NullNotifier:
    """A notifier that sends nothing (for ``--once`` and for tests)."""

    def notify(self, *assignments: str) -> bool:
        """Do nothing."""
        return False


def monotonic_usec() -> str:
    """The ``MONOTONIC_USEC=`` assignment systemd expects next to ``RELOADING=1``."""
    return f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}"


_SYSLOG_PRIORITY = (
    (logging.CRITICAL, 2),
    (logging.ERROR, 3),
    (logging.WARNING, 4),
    (logging.INFO, 6),
)


class JournalFormatter(logging.Formatter):
    """Log lines for journald: a ``<N>`` syslog priority prefix and no timestamp.

    journald reads the prefix on a service's stderr (``SyslogLevelPrefix=yes``, the
    default) and stores the line with that priority, so ``journalctl -p warning``
    works; it adds its own timestamp.
    """

    def __init__(self) -> None:
        """Use ``logger: message`` after the prefix."""
        super().__init__("%(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        """Prefix every line of the formatted record with its syslog priority."""
        priority = 7
        for level, value in _SYSLOG_PRIORITY:
            if record.levelno >= level:
                priority = value
                break
        text = super().format(record)
        return "\n".join(f"<{priority}>{line}" for line in text.splitlines() or [""])
