"""The console from the settings: what ``signaltwin run`` and the demo start before the daemon."""

from __future__ import annotations

import logging
import socket
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from configs.errors import ConfigError, SignaltwinError
from configs.settings import Settings
from configs.settings_file import load_settings
from controller.cli import run as cli_run
from controller.console import start_console
from controller.demo import default_demo_config

DEMO = default_demo_config()


def demo_settings(tmp_path: Path, **console: object) -> Settings:
    settings = load_settings(DEMO).with_state_dir(tmp_path / "state")
    return settings.model_copy(
        update={"console": settings.console.model_copy(update={"port": 0} | console)}
    )


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    formatters = [h.formatter for h in handlers]
    library_levels = {name: logging.getLogger(name).level for name in ("apscheduler", "asyncua")}
    yield
    root.setLevel(level)
    for handler in root.handlers[:]:
        root.removeHandler(handler)
    for handler, formatter in zip(handlers, formatters, strict=True):
        handler.setFormatter(formatter)
        root.addHandler(handler)
    for name, value in library_levels.items():
        logging.getLogger(name).setLevel(value)


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        yield listener.getsockname()[1]


def test_the_console_of_the_demo_settings_serves_the_district(tmp_path: Path) -> None:
    service = start_console(demo_settings(tmp_path))
    assert service is not None
    try:
        assert service.url.startswith("http://127.0.0.1:")
        with urllib.request.urlopen(service.url, timeout=10) as response:
            page = response.read().decode()
        assert page.count('class="tls"') == 47
        with urllib.request.urlopen(service.url + "api/state", timeout=10) as response:
            assert b'"no ledger yet' in response.read()
    finally:
        service.close()


def test_a_disabled_console_is_not_started(tmp_path: Path) -> None:
    assert start_console(demo_settings(tmp_path, enabled=False)) is None


def test_a_taken_port_names_the_keys(tmp_path: Path, taken_port: int) -> None:
    with pytest.raises(SignaltwinError, match=f"127.0.0.1:{taken_port}.*console.port"):
        start_console(demo_settings(tmp_path, port=taken_port))


def test_unreadable_tls_files_name_the_keys(tmp_path: Path) -> None:
    (tmp_path / "cert.pem").write_text("not a certificate")
    (tmp_path / "key.pem").write_text("not a key")
    settings = demo_settings(
        tmp_path, tls_certificate=tmp_path / "cert.pem", tls_private_key=str(tmp_path / "key.pem")
    )
    with pytest.raises(ConfigError, match="console.tls_certificate .* console.tls_private_key"):
        start_console(settings)


def test_signaltwin_run_stops_at_a_taken_console_port_with_exit_3(
    tmp_path: Path, taken_port: int, capsys: pytest.CaptureFixture[str], restore_logging: None
) -> None:
    text = DEMO.read_text().replace('"district/', f'"{DEMO.parent}/district/')
    text = text.replace("[metrics]\nenabled = true", "[metrics]\nenabled = false")
    text = text.replace('state_dir = "../signaltwin-demo"', 'state_dir = "state"')
    text = text.replace("port = 9110", f"port = {taken_port}")
    config = tmp_path / "run.toml"
    config.write_text(text)
    assert cli_run(["run", "--config", str(config), "--log-format", "plain"]) == 3
    assert f"operator console on 127.0.0.1:{taken_port}" in capsys.readouterr().err
    assert not (tmp_path / "state" / "ledger.sqlite").exists()  # nothing else was started
