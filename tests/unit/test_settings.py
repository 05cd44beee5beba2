"""Settings schema and `signaltwin config check` (no SUMO/HSM/network needed)."""

from __future__ import annotations

import os
import re
import shutil
import stat
from pathlib import Path

import pytest

from configs.errors import ConfigError
from configs.settings import ControllerEndpoint
from configs.settings_file import check_environment, load_settings, read_secret
from controller.cli import run

DEMO = Path(__file__).resolve().parents[2] / "configs" / "demo.toml"


def _copy_demo(tmp_path: Path, replace: tuple[str, str] | None = None) -> Path:
    text = DEMO.read_text()
    text = text.replace('"district/', f'"{DEMO.parent}/district/')
    if replace is not None:
        old, new = replace
        assert re.search(old, text, flags=re.M), old
        text = re.sub(old, new, text, count=1, flags=re.M)
    path = tmp_path / "settings.toml"
    path.write_text(text)
    return path


def test_demo_settings_load_with_documented_defaults() -> None:
    settings = load_settings(DEMO)
    assert settings.schedule.interval_s == 240
    assert settings.gate.min_wait_reduction == pytest.approx(0.12)
    assert settings.gate.max_nox_increase == pytest.approx(0.008)
    assert settings.safety.min_yellow_s >= 3
    assert settings.simulation.network.is_absolute()
    assert settings.ledger.path.is_relative_to(settings.state_dir)
    assert abs(sum(f.share for f in settings.simulation.fleet) - 1) < 1e-9


@pytest.mark.parametrize(
    ("replace", "key", "expect"),
    [
        (
            (r"^min_yellow_s = 3", "min_yellow_s = 2"),
            "safety.min_yellow_s",
            "greater than or equal to 3",
        ),
        (
            (r"^min_wait_reduction = 0.12", "min_wait_reduction = -0.1"),
            "gate.min_wait_reduction",
            "greater than or equal to 0",
        ),
        ((r"^interval_s = 240", 'interval_s = "often"'), "schedule.interval_s", "valid integer"),
        (
            (r"^\[gate\]", "[gate]\nmin_wait_reductoin = 0.2"),
            "gate.min_wait_reductoin",
            "unknown key",
        ),
        ((r'^mode = "auto"', 'mode = "yolo"'), "mode", "'auto' or 'shadow'"),
        ((r"^share = 0.42", "share = 0.5"), "simulation.fleet", "sum to 1.0"),
        ((r"^max_cycle_s = 150", "max_cycle_s = 30"), "safety", "must not exceed max_cycle_s"),
        (
            (r"^duration_s = 8.0", 'duration_s = 8.0\npreset = "fastest"'),
            "video.preset",
            "'ultrafast', 'superfast'",
        ),
        ((r"^duration_s = 8.0", "duration_s = 8.0\ncrf = 60"), "video.crf", "less than or equal"),
    ],
)
def test_invalid_settings_name_the_key_value_and_expectation(
    tmp_path: Path,
    replace: tuple[str, str],
    key: str,
    expect: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = _copy_demo(tmp_path, replace)
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    message = str(info.value)
    assert str(path) in message and key in message and expect in message
    assert run(["config", "check", str(path)]) == 2
    assert key in capsys.readouterr().err


def test_missing_file_and_bad_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such settings file"):
        load_settings(tmp_path / "absent.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[gate\nmin = 1")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(bad)


def test_environment_check_reports_unreadable_pin_file(tmp_path: Path) -> None:
    # a directory cannot be read as a file, even by root (CI runs as root)
    pin = tmp_path / "pin-dir"
    pin.mkdir()
    path = _copy_demo(tmp_path, (r'^pin_file = "hsm/pin".*$', f'pin_file = "{pin}"'))
    problems = check_environment(load_settings(path))
    assert any("hsm.pin_file" in p and "cannot read" in p for p in problems), problems
    if os.geteuid() != 0:
        file = tmp_path / "pin"
        file.write_text("1234")
        file.chmod(0)
        path = _copy_demo(tmp_path, (r'^pin_file = "hsm/pin".*$', f'pin_file = "{file}"'))
        assert any("hsm.pin_file" in p for p in check_environment(load_settings(path)))


def test_environment_check_reports_missing_and_empty_secrets(tmp_path: Path) -> None:
    empty = tmp_path / "pin"
    empty.write_text("")
    path = _copy_demo(tmp_path, (r'^pin_file = "hsm/pin".*$', f'pin_file = "{empty}"'))
    problems = check_environment(load_settings(path))
    assert any("hsm.pin_file" in p and "empty" in p for p in problems)

    text = path.read_text().replace(
        "auto_provision = true                 #", "auto_provision = false #"
    )
    path.write_text(text)
    problems = check_environment(load_settings(path))
    assert any(p.startswith("controllers.password_file") for p in problems)
    assert any(p.startswith("controllers.client_certificate") for p in problems)


def test_read_secret_from_systemd_credentials(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "hsm-pin").write_text("s3cret\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    secret = read_secret("credential:hsm-pin", "hsm.pin_file")
    assert secret.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(secret)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY")
    with pytest.raises(ConfigError, match="LoadCredential"):
        read_secret("credential:hsm-pin", "hsm.pin_file")


def test_per_intersection_overrides(tmp_path: Path) -> None:
    path = _copy_demo(
        tmp_path, (r"^\[hsm\]", "[safety.intersections.J7]\nmin_green_s = 12\n\n[hsm]")
    )
    settings = load_settings(path)
    assert settings.safety.limits_for("J7").min_green_s == 12
    assert settings.safety.limits_for("J8").min_green_s == 7
    bad = _copy_demo(
        tmp_path, (r"^\[hsm\]", "[safety.intersections.J7]\nmin_yellow_s = 1\n\n[hsm]")
    )
    with pytest.raises(ConfigError, match="min_yellow_s"):
        load_settings(bad)


def test_config_check_demo_exits_zero_when_network_present(
    capsys: pytest.CaptureFixture[str],
) -> None:
    if not (DEMO.parent / "district" / "district.net.xml").exists():
        pytest.fail("the demo district is not committed under configs/district/")
    assert run(["config", "check", str(DEMO)]) == 0
    assert "ok" in capsys.readouterr().out


def test_production_example_is_valid_schema(tmp_path: Path) -> None:
    example = DEMO.parent / "production.example.toml"
    target = tmp_path / "production.toml"
    shutil.copy(example, target)
    settings = load_settings(target)
    assert settings.mode in {"auto", "shadow"}
    assert settings.hsm.auto_provision is False
    assert settings.controllers.auto_provision is False
    assert stat.S_ISREG(example.stat().st_mode)


def test_settings_written_as_toml_load_back_equal(tmp_path: Path) -> None:
    from configs.settings_file import dump_settings_toml

    settings = load_settings(
        _copy_demo(
            tmp_path, (r"^\[hsm\]", '[safety.intersections."a b"]\nmin_green_s = 9\n\n[hsm]')
        )
    )
    settings = settings.model_copy(
        update={
            "controllers": settings.controllers.model_copy(
                update={
                    "endpoints": [
                        ControllerEndpoint(intersection="J1", url="opc.tcp://127.0.0.1:4840")
                    ]
                }
            )
        }
    )
    settings = load_settings(_write(tmp_path / "a.toml", dump_settings_toml(settings)))
    again = load_settings(_write(tmp_path / "b.toml", dump_settings_toml(settings)))
    assert again.model_dump(exclude={"source"}) == settings.model_dump(exclude={"source"})
    assert again.safety.limits_for("a b").min_green_s == 9
    assert again.controllers.endpoints[0].url == "opc.tcp://127.0.0.1:4840"


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_compute_section_defaults_to_local_and_validates_the_ray_address(
    tmp_path: Path,
) -> None:
    assert load_settings(DEMO).compute.backend == "local"
    path = _copy_demo(tmp_path)
    path.write_text(
        path.read_text()
        + '\n[compute]\nbackend = "ray"\naddress = "ray://head.example:10001"\ntimeout_s = 120\n'
    )
    compute = load_settings(path).compute
    assert (compute.backend, compute.address, compute.timeout_s) == (
        "ray",
        "ray://head.example:10001",
        120.0,
    )
    for bad, expect in (
        ('address = "head;rm -rf /:1"', "host:port"),
        ('address = "head:99999"', "out of range"),
        ('backend = "dask"', "'local' or 'ray'"),
        ("cpus_per_worker = 0", "greater than 0"),
    ):
        broken = tmp_path / "broken.toml"
        broken.write_text(_copy_demo(tmp_path).read_text() + f"\n[compute]\n{bad}\n")
        with pytest.raises(ConfigError, match="compute") as info:
            load_settings(broken)
        assert expect in str(info.value)
