"""The shipped systemd unit: ``systemd-analyze verify`` and its fit with the daemon.

``systemd-analyze verify`` works offline (no running systemd needed). It
returns 0 even for unknown keys or bad values and only prints them, so the test
requires its output to be empty; a deliberately broken unit shows it notices.
"""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from configs.settings import ScheduleSettings

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "configs" / "systemd" / "signaltwin.service"
SIGNALTWIN = REPO / ".venv" / "bin" / "signaltwin"
ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(
    ANALYZE is None, reason="systemd-analyze is not installed (apt-get install systemd)"
)


def _verify(unit: Path) -> tuple[int, str]:
    assert ANALYZE is not None
    proc = subprocess.run(
        [ANALYZE, "verify", "--man=no", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=unit.parent,
    )
    return proc.returncode, (proc.stdout + proc.stderr).strip()


def _installed_copy(tmp_path: Path, text: str) -> Path:
    # The unit names /opt/signaltwin/.venv/bin/signaltwin (where the docs install it);
    # verify checks that ExecStart= exists, so point it at this checkout's entry point.
    copy = tmp_path / "signaltwin.service"
    copy.write_text(text.replace("/opt/signaltwin/.venv/bin/signaltwin", str(SIGNALTWIN)))
    return copy


def _service_section() -> dict[str, str]:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(UNIT.read_text())
    return dict(parser["Service"])


def _seconds(value: str) -> float:
    units = {"": 1, "s": 1, "sec": 1, "min": 60, "m": 60, "h": 3600, "ms": 0.001}
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", value):
        total += float(number) * units[unit]
    return total


@needs_analyze
def test_unit_verifies_without_a_single_complaint(tmp_path: Path) -> None:
    assert UNIT.is_file(), f"{UNIT} is missing"
    assert SIGNALTWIN.is_file(), "install the project first (scripts/setup.sh)"
    code, output = _verify(_installed_copy(tmp_path, UNIT.read_text()))
    assert code == 0 and output == "", output


@needs_analyze
def test_verify_does_notice_a_broken_unit(tmp_path: Path) -> None:
    broken = (
        UNIT.read_text()
        .replace("Type=notify", "Type=notifyy")
        .replace("WatchdogSec=", "WatchdogSecs=")
    )
    code, output = _verify(_installed_copy(tmp_path, broken))
    assert "notifyy" in output or code != 0
    assert "WatchdogSecs" in output


def test_unit_matches_what_the_daemon_does() -> None:
    service = _service_section()
    assert service["Type"] == "notify"  # READY=1 / STOPPING=1 / WATCHDOG=1 are sent
    assert service.get("NotifyAccess", "main") == "main"  # only the daemon itself notifies
    assert "run --config" in service["ExecStart"]
    assert service["ExecReload"].split()[-2:] == ["-HUP", "$MAINPID"]  # SIGHUP reloads
    assert service.get("KillSignal", "SIGTERM") == "SIGTERM"
    defaults = ScheduleSettings()
    # WATCHDOG=1 comes after each completed cycle, not from a timer: a skipped slot
    # (overrun) must not get a healthy daemon killed.
    assert _seconds(service["WatchdogSec"]) >= 2 * defaults.interval_s
    # systemd must give a stopping cycle its shutdown deadline before SIGKILL.
    assert _seconds(service["TimeoutStopSec"]) > defaults.shutdown_deadline_s


@needs_analyze
def test_unit_carries_the_hardening_and_start_limit(tmp_path: Path) -> None:
    text = UNIT.read_text()
    unit_section = text.split("[Service]")[0]
    assert "StartLimitIntervalSec=" in unit_section and "StartLimitBurst=" in unit_section
    for directive in (
        "RemoveIPC=yes",
        "PrivateMounts=yes",
        "ProtectProc=invisible",
        "SystemCallFilter=@system-service",
        "SystemCallFilter=~@privileged @resources",
        "IPAddressDeny=any",
        "IPAddressAllow=localhost",
    ):
        assert f"\n{directive}\n" in text, directive
    done = subprocess.run(
        [str(ANALYZE), "security", "--offline=yes", "--no-pager", str(UNIT)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    score = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", done.stdout)
    assert score is not None, done.stdout + done.stderr
    assert float(score.group(1)) <= 1.2  # 1.9 before RemoveIPC/ProtectProc/IPAddressDeny/...


def test_documentation_and_programs_exist_in_the_installed_checkout() -> None:
    """Documentation= and ExecStart= name files of the checkout at /opt/signaltwin."""
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.read(UNIT)
    docs = parser["Unit"]["Documentation"].split()
    assert docs
    for uri in docs:
        assert uri.startswith("file:///opt/signaltwin/"), uri
        relative = uri.removeprefix("file:///opt/signaltwin/")
        assert (REPO / relative).is_file(), f"{uri}: no {relative} in the repository"
    # the checkout's scripts/setup.sh makes .venv/bin/signaltwin, which ExecStart runs
    assert parser["Service"]["ExecStart"].startswith("/opt/signaltwin/.venv/bin/signaltwin ")
