"""``signaltwin run``: arguments, exit codes of --once, log format."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from configs.settings import Settings
from configs.settings_file import load_settings
from controller.cli import _configure_logging
from controller.cli import run as cli_run
from controller.commands.run import _run_once, configure_logging
from controller.daemon import BasicCycleReport, CycleReportLike, FeedbackReport

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "configs" / "demo.toml"


class OnceRunner:
    def __init__(self, report: CycleReportLike) -> None:
        self.report = report
        self.closed = False

    def run_cycle(self, slot_time: datetime, cancel: threading.Event) -> CycleReportLike:
        return self.report

    def collect_feedback(self) -> FeedbackReport | None:
        return None

    def record_skip(self, slot_time: datetime, reason: str) -> None:
        pass

    def record_config_change(self, settings: Settings) -> None:
        pass

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    libraries = [logging.getLogger(name) for name in ("apscheduler", "asyncua")]
    level, handlers = root.level, list(root.handlers)
    library_levels = [log.level for log in libraries]
    formatters = [h.formatter for h in handlers]
    yield
    root.setLevel(level)
    for log, library_level in zip(libraries, library_levels, strict=True):
        log.setLevel(library_level)
    for handler in root.handlers[:]:
        root.removeHandler(handler)
    for handler, formatter in zip(handlers, formatters, strict=True):
        handler.setFormatter(formatter)
        root.addHandler(handler)


def test_missing_settings_file_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], restore_logging: None
) -> None:
    assert cli_run(["run", "--config", str(tmp_path / "nope.toml")]) == 2
    assert "nope.toml" in capsys.readouterr().err


def test_config_is_required(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli_run(["run"])
    assert exit_info.value.code == 2
    assert "--config" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("report", "code"),
    [
        (BasicCycleReport(ok=True, deployed=True, decision="pass", sequence=7), 0),
        (BasicCycleReport(ok=True, deployed=False, decision="pass"), 0),  # shadow
        (BasicCycleReport(ok=True, deployed=False, decision="refuse_wait"), 1),
        (BasicCycleReport(ok=False, deployed=False, error="sign: HSM login failed"), 3),
    ],
)
def test_once_exit_code_follows_the_cycle(
    report: BasicCycleReport, code: int, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = load_settings(DEMO)
    runner = OnceRunner(report)
    assert _run_once(DEMO, settings, lambda s: runner) == code
    assert runner.closed
    assert capsys.readouterr().out.startswith("cycle ")


def test_journal_log_format(capsys: pytest.CaptureFixture[str], restore_logging: None) -> None:
    root = logging.getLogger()
    for handler in root.handlers[:]:
        root.removeHandler(handler)  # pytest's capture handlers come back in the fixture
    configure_logging("info", "journal")
    logging.getLogger("controller.daemon").warning("slot skipped")
    logging.getLogger("controller.daemon").debug("not shown")
    err = capsys.readouterr().err
    assert "<4>controller.daemon: slot skipped" in err
    assert "not shown" not in err
    assert logging.getLogger("apscheduler").getEffectiveLevel() == logging.WARNING


@pytest.mark.parametrize(("level", "shown"), [("info", False), ("warning", False), ("debug", True)])
def test_asyncua_reads_are_logged_only_at_debug(
    level: str, shown: bool, capsys: pytest.CaptureFixture[str], restore_logging: None
) -> None:
    root = logging.getLogger()
    for handler in root.handlers[:]:
        root.removeHandler(handler)
    configure_logging(level, "plain")
    # the names asyncua's client logs each read and session step under
    logging.getLogger("asyncua.client.ua_client.UaClient").info("read 1 node")
    logging.getLogger("asyncua.uaprotocol").debug("chunk received")
    logging.getLogger("asyncua.client.client").warning("reconnecting")
    err = capsys.readouterr().err
    assert ("read 1 node" in err) is shown
    assert ("chunk received" in err) is shown
    assert "reconnecting" in err  # trouble is always shown
    assert logging.getLogger("apscheduler").getEffectiveLevel() >= logging.WARNING


def test_the_cli_verbosity_keeps_asyncua_quiet_until_debug(restore_logging: None) -> None:
    # `signaltwin -v demo` runs the daemon's cycle in the CLI's process
    root = logging.getLogger()
    asyncua = logging.getLogger("asyncua.client.ua_client.UaClient")
    for verbosity, asyncua_level in ((1, logging.WARNING), (2, logging.DEBUG)):
        for handler in root.handlers[:]:
            root.removeHandler(handler)  # else basicConfig leaves the level alone
        _configure_logging(verbosity)  # -v, -vv
        assert root.level == (logging.INFO if verbosity == 1 else logging.DEBUG)
        assert asyncua.getEffectiveLevel() == asyncua_level


def test_an_unreachable_ray_cluster_stops_the_start_up_with_a_clear_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, restore_logging: None
) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens on it once closed
    text = DEMO.read_text().replace('"district/', f'"{DEMO.parent}/district/')
    text = text.replace("[metrics]\nenabled = true", "[metrics]\nenabled = false")
    text = text.replace('state_dir = "../signaltwin-demo"', 'state_dir = "state"')
    text = text.replace("[console]\nenabled = true", "[console]\nenabled = false")
    config = tmp_path / "ray.toml"
    config.write_text(
        text
        + f'\n[compute]\nbackend = "ray"\naddress = "127.0.0.1:{port}"\nconnect_timeout_s = 5\n'
    )
    written = config.read_text()
    assert written.count("enabled = false") == 2 and 'state_dir = "state"' in written
    with caplog.at_level(logging.ERROR):
        assert cli_run(["run", "--config", str(config)]) == 2
    message = caplog.text
    assert f"Ray cluster at '127.0.0.1:{port}' unreachable" in message
    assert 'backend = "local"' in message  # says how to do without
    # nothing was opened before the check: no ledger, no token
    assert not list((tmp_path / "state").rglob("*.sqlite"))
    assert not (tmp_path / "state" / "hsm").exists()
