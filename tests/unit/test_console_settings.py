"""``[console]``: loopback by default; elsewhere only with HTTPS and a users file."""

from __future__ import annotations

from pathlib import Path

import pytest

from configs.errors import ConfigError
from configs.settings import ConsoleSettings, is_loopback_address
from configs.settings_file import check_environment, load_settings

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, console: str) -> Path:
    path = tmp_path / "settings.toml"
    path.write_text(
        f'state_dir = "state"\n[simulation]\nnetwork = "x.net.xml"\n[console]\n{console}\n'
    )
    return path


@pytest.mark.parametrize(
    ("address", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("localhost", True),
        ("::1", True),
        ("[::1]", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.0.2.1", False),
        ("console.example", False),
    ],
)
def test_loopback_addresses(address: str, loopback: bool) -> None:
    assert is_loopback_address(address) is loopback


def test_the_default_is_loopback_without_tls() -> None:
    console = ConsoleSettings()
    assert console.enabled and console.address == "127.0.0.1" and not console.protected


def test_off_loopback_without_tls_and_users_is_refused_naming_the_keys(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(write(tmp_path, 'address = "0.0.0.0"'))
    message = str(caught.value)
    assert "console.address = '0.0.0.0' is not a loopback address" in message
    for key in ("console.tls_certificate", "console.tls_private_key", "console.users_file"):
        assert key in message
    with pytest.raises(ConfigError, match="console.users_file"):
        load_settings(
            write(
                tmp_path,
                'address = "0.0.0.0"\ntls_certificate = "c.pem"\ntls_private_key = "k.pem"',
            )
        )


def test_certificate_and_key_go_together(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="go together"):
        load_settings(write(tmp_path, 'tls_certificate = "c.pem"'))


def test_off_loopback_with_tls_and_users_loads_resolved_under_the_state_dir(
    tmp_path: Path,
) -> None:
    settings = load_settings(
        write(
            tmp_path,
            'address = "0.0.0.0"\nport = 8443\ntls_certificate = "console.pem"\n'
            'tls_private_key = "credential:console-key"\nusers_file = "console-users"',
        )
    )
    console = settings.console
    assert console.protected and console.port == 8443
    assert console.tls_certificate == tmp_path / "state" / "console.pem"
    assert console.tls_private_key == "credential:console-key"
    assert console.users_file == str(tmp_path / "state" / "console-users")
    problems = check_environment(settings)
    assert any(p.startswith("console.tls_certificate") for p in problems)
    assert any(p.startswith("console.users_file") for p in problems)


def test_a_disabled_console_may_name_any_address(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, 'enabled = false\naddress = "0.0.0.0"'))
    assert not settings.console.enabled


def test_unknown_console_keys_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"console.password = 'x': unknown key"):
        load_settings(write(tmp_path, 'password = "x"'))


@pytest.mark.parametrize("name", ["demo.toml", "production.example.toml"])
def test_the_shipped_files_have_a_loopback_console(name: str) -> None:
    text = (REPO / "configs" / name).read_text()
    assert "[console]" in text
    settings = load_settings(REPO / "configs" / name)
    assert settings.console.enabled and is_loopback_address(settings.console.address)
    assert settings.console.port != settings.metrics.port
