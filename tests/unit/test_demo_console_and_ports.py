"""The demo's fixes from issue 18: real session count, ports checked first, summary wording."""

from __future__ import annotations

import argparse
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from configs.errors import ConfigError
from configs.settings import ControllerEndpoint
from configs.settings_file import load_settings
from controller.commands import demo as demo_command
from controller.demo import (
    DemoOptions,
    DemoSummary,
    console_settings,
    default_demo_config,
    opening_line,
    run_demo,
)


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    demo_command.register(parser.add_subparsers())
    return parser.parse_args(["demo", *argv])


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        yield listener.getsockname()[1]


def test_the_opening_line_counts_the_real_sessions() -> None:
    settings = load_settings(default_demo_config())
    endpoints = [
        ControllerEndpoint(intersection=f"J{i}", url=f"opc.tcp://127.0.0.1:{4840 + i}")
        for i in range(3)
    ]
    three = settings.model_copy(
        update={"controllers": settings.controllers.model_copy(update={"endpoints": endpoints})}
    )
    assert opening_line(three).endswith("the ledger and 3 secure sessions ...")
    one = three.model_copy(
        update={"controllers": three.controllers.model_copy(update={"endpoints": endpoints[:1]})}
    )
    assert "1 secure session ..." in opening_line(one)
    assert "47" not in opening_line(three)


def test_the_summary_says_not_measured_yet_once() -> None:
    summary = DemoSummary(Path("s"), Path("l"), Path("k"))
    summary.predicted_vs_measured = [(1, -0.2, None), (2, -0.15, -0.12)]
    assert summary.plan_lines() == [
        "plan 1: predicted wait -20.0%, not measured yet",
        "plan 2: predicted wait -15.0%, measured -12.0%",
    ]


def test_a_taken_metrics_port_fails_before_anything_starts(tmp_path: Path, taken_port: int) -> None:
    state = tmp_path / "state"
    options = DemoOptions(
        config=default_demo_config(),
        state_dir=state,
        metrics_port=taken_port,
        console_port=0,
        echo=lambda line: None,
    )
    with pytest.raises(ConfigError) as caught:
        run_demo(options)
    message = str(caught.value)
    assert f"port {taken_port} on 127.0.0.1 for the Prometheus metrics" in message
    assert "--metrics-port PORT" in message and "Nothing was started" in message
    assert not state.exists()  # no token, no certificates, no controllers


def test_a_taken_console_port_fails_before_anything_starts(tmp_path: Path, taken_port: int) -> None:
    state = tmp_path / "state"
    options = DemoOptions(
        config=default_demo_config(),
        state_dir=state,
        metrics_port=0,
        console_port=taken_port,
        echo=lambda line: None,
    )
    with pytest.raises(ConfigError, match=f"port {taken_port} .* operator console.*--console-port"):
        run_demo(options)
    assert not state.exists()


def test_metrics_and_console_on_one_port_is_refused(tmp_path: Path) -> None:
    options = DemoOptions(
        config=default_demo_config(),
        state_dir=tmp_path / "state",
        metrics_port=19999,
        console_port=19999,
        echo=lambda line: None,
    )
    with pytest.raises(ConfigError, match="both want 127.0.0.1:19999"):
        run_demo(options)


def test_the_console_port_option() -> None:
    settings = load_settings(default_demo_config())
    assert settings.console.port == 9110 and _parse().console_port is None
    chosen = console_settings(settings, _parse("--console-port", "19110").console_port)
    assert chosen.enabled and chosen.port == 19110 and chosen.address == "127.0.0.1"
    assert console_settings(settings, 0).enabled is False
    assert console_settings(settings, None) == settings.console
    with pytest.raises(ConfigError, match="--console-port 70000"):
        console_settings(settings, 70000)
