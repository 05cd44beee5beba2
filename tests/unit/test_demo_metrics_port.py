"""``signaltwin demo --metrics-port``: a second demo need not collide with the first on 9108."""

from __future__ import annotations

import argparse

import pytest

from configs.errors import ConfigError
from configs.settings_file import load_settings
from controller.commands import demo as demo_command
from controller.demo import default_demo_config, metrics_settings


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    demo_command.register(parser.add_subparsers())
    return parser.parse_args(["demo", *argv])


def test_the_port_given_replaces_the_settings_port() -> None:
    settings = load_settings(default_demo_config())
    assert settings.metrics.port == 9108
    args = _parse("--metrics-port", "19108")
    chosen = metrics_settings(settings, args.metrics_port)
    assert chosen.enabled and chosen.port == 19108 and chosen.address == "127.0.0.1"


def test_port_zero_turns_the_endpoint_off_and_none_keeps_the_settings() -> None:
    settings = load_settings(default_demo_config())
    assert metrics_settings(settings, 0).enabled is False
    assert metrics_settings(settings, _parse().metrics_port) == settings.metrics
    with pytest.raises(ConfigError, match="--metrics-port 70000"):
        metrics_settings(settings, 70000)
