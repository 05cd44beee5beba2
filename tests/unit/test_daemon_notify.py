"""sd_notify over a real AF_UNIX datagram socket (path and abstract), and the journal format."""

from __future__ import annotations

import logging
import os
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.notify import (
    JournalFormatter,
    NullNotifier,
    SystemdNotifier,
    sd_notify,
    stderr_is_journal,
    watchdog_timeout_s,
)


@pytest.fixture
def bound_socket() -> Iterator[tuple[socket.socket, str]]:
    with tempfile.TemporaryDirectory(prefix="st-") as d:  # AF_UNIX paths are short
        path = str(Path(d) / "notify")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(path)
        sock.settimeout(2)
        yield sock, path
        sock.close()


def test_notify_sends_one_datagram_to_a_path_socket(
    bound_socket: tuple[socket.socket, str],
) -> None:
    sock, path = bound_socket
    notifier = SystemdNotifier.from_environment({"NOTIFY_SOCKET": path})
    assert notifier.enabled
    assert notifier.notify("READY=1", "STATUS=ready, next cycle 12:04")
    assert sock.recv(4096) == b"READY=1\nSTATUS=ready, next cycle 12:04"


def test_a_newline_in_a_status_cannot_inject_an_assignment(
    bound_socket: tuple[socket.socket, str],
) -> None:
    sock, path = bound_socket
    SystemdNotifier(path).notify("STATUS=failed: bad\nREADY=1")
    assert sock.recv(4096) == b"STATUS=failed: bad READY=1"


def test_abstract_socket_with_at_prefix() -> None:
    name = f"signaltwin-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        sock.settimeout(2)
        assert sd_notify("WATCHDOG=1", "@" + name)
        assert sock.recv(4096) == b"WATCHDOG=1"


def test_nothing_is_sent_without_notify_socket() -> None:
    notifier = SystemdNotifier.from_environment({})
    assert not notifier.enabled
    assert notifier.notify("READY=1") is False
    assert sd_notify("READY=1", None) is False
    assert NullNotifier().notify("READY=1") is False


def test_a_dead_socket_is_logged_once_and_never_raises(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    notifier = SystemdNotifier(str(tmp_path / "gone"))
    with caplog.at_level(logging.DEBUG, logger="controller.notify"):
        assert notifier.notify("READY=1") is False
        assert notifier.notify("WATCHDOG=1") is False
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "NOTIFY_SOCKET" in warnings[0].getMessage()


def test_unsupported_address_is_refused() -> None:
    assert SystemdNotifier("vsock:2:1234").notify("READY=1") is False


def test_watchdog_timeout_from_environment() -> None:
    assert watchdog_timeout_s({"WATCHDOG_USEC": "600000000"}) == 600.0
    assert watchdog_timeout_s({}) is None
    assert watchdog_timeout_s({"WATCHDOG_USEC": "600000000", "WATCHDOG_PID": "1"}) is None
    assert watchdog_timeout_s({"WATCHDOG_USEC": "x"}) is None


def test_stderr_is_journal_only_when_the_inode_matches() -> None:
    st = os.fstat(2)
    assert stderr_is_journal({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
    assert not stderr_is_journal({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino + 1}"})
    assert not stderr_is_journal({})


def test_journal_formatter_prefixes_every_line_with_the_priority() -> None:
    formatter = JournalFormatter()

    def line(level: int, msg: str) -> str:
        record = logging.LogRecord("controller.daemon", level, __file__, 1, msg, None, None)
        return formatter.format(record)

    assert line(logging.ERROR, "push failed") == "<3>controller.daemon: push failed"
    assert line(logging.WARNING, "skipped").startswith("<4>")
    assert line(logging.INFO, "ready").startswith("<6>")
    assert line(logging.DEBUG, "tick").startswith("<7>")
    assert line(logging.CRITICAL, "a\nb") == "<2>controller.daemon: a\n<2>b"
