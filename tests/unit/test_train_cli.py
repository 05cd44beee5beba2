"""``signaltwin train`` for a bureau's own network (issue 15): options and what it prints."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

import pytest

from configs.errors import ConfigError
from configs.settings import ComputeSettings, Settings
from controller.cli import build_parser, run
from controller.commands.train import (
    compute_settings,
    evaluate_command,
    initial_weights,
    output_path,
)
from controller.exit_codes import ExitCode

SHIPPED = Path(__file__).resolve().parents[2] / "rl" / "policies" / "adaptive.pt"


def _parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["train", *argv])


def test_help_lists_the_fine_tuning_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    text = capsys.readouterr().out
    for option in (
        "--network",
        "--routes",
        "--from",
        "--budget-min",
        "--resume",
        "--out",
        "--checkpoint-every",
        "--value-warmup",
        "--mode",
        "--backend",
        "--ray-address",
    ):
        assert option in text, option
    assert "shipped" in text and "none" in text
    assert "{local,ray}" in text


def test_from_defaults_to_the_shipped_policy_with_a_network(tmp_path: Path) -> None:
    assert initial_weights(_parse("--network", "city.net.xml"), None) == SHIPPED
    assert initial_weights(_parse("--network", "city.net.xml", "--from", "none"), None) is None
    assert initial_weights(_parse(), None) is None  # the demo district: from scratch
    own = tmp_path / "own.pt"
    own.write_bytes(b"")
    assert initial_weights(_parse("--from", str(own)), None) == own
    assert initial_weights(_parse("--from", "shipped"), None) == SHIPPED


def test_fine_tuning_never_writes_over_the_shipped_policy_by_default() -> None:
    assert output_path(_parse("--network", "nets/city.net.xml")) == Path("runs/city/policy.pt")
    assert output_path(_parse("--network", "c.net.xml", "--out", "x.pt")) == Path("x.pt")


def test_the_evaluate_command_compares_before_and_after_on_the_same_seeds() -> None:
    after = Path("runs/city/policy.pt")
    command = evaluate_command(
        network=Path("my city/city.net.xml"),
        routes=[Path("a.rou.xml"), Path("b.rou.xml")],
        detectors=None,
        config=None,
        before=SHIPPED,
        after=after,
    )
    words = shlex.split(command)
    assert words[:2] == ["signaltwin", "evaluate"]
    assert words[words.index("--network") + 1] == "my city/city.net.xml"
    routes_at = words.index("--routes")
    assert words[routes_at + 1 : routes_at + 3] == ["a.rou.xml", "b.rou.xml"]
    assert words[words.index("--policy") + 1] == str(SHIPPED)
    assert words[words.index("--policy-b") + 1] == str(after)
    assert "policy" in words[words.index("--compare") + 1].split(",")
    # the command parses as an evaluate command
    parsed = build_parser().parse_args(words[1:])
    assert parsed.policy == SHIPPED and parsed.policy_b == after
    scratch = evaluate_command(
        network=Path("n.net.xml"),
        routes=[Path("r.xml")],
        detectors=None,
        config=None,
        before=None,
        after=after,
    )
    assert "--policy-b" not in scratch and shlex.split(scratch)[-1] == str(after)


def test_a_budget_that_is_not_positive_is_a_usage_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert run(["train", "--budget-min", "-1"]) == ExitCode.USAGE
    assert "--budget-min" in capsys.readouterr().err


def test_an_unknown_initial_source_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--from"):
        initial_weights(_parse("--from", str(tmp_path / "absent.pt")), None)


def test_the_backend_and_ray_address_default_to_the_settings_compute_section() -> None:
    assert compute_settings(_parse(), None) == ("local", ComputeSettings())
    settings = Settings.model_validate(
        {
            "simulation": {"network": "city.net.xml"},
            "compute": {"backend": "ray", "address": "10.0.0.5:6379", "connect_timeout_s": 5},
        }
    )
    backend, compute = compute_settings(_parse(), settings)
    assert backend == "ray" and compute == settings.compute
    # the options win; the rest of [compute] stays
    backend, compute = compute_settings(_parse("--backend", "local"), settings)
    assert backend == "local"
    backend, compute = compute_settings(_parse("--ray-address", "ray://head:10001"), settings)
    assert compute.address == "ray://head:10001" and compute.connect_timeout_s == 5
    backend, compute = compute_settings(
        _parse("--backend", "ray", "--ray-address", "127.0.0.1:6380"), None
    )
    assert backend == "ray" and compute.address == "127.0.0.1:6380"


def test_a_ray_address_needs_the_ray_backend_and_a_port() -> None:
    with pytest.raises(ConfigError, match="--ray-address 127.0.0.1:6379 needs the Ray backend"):
        compute_settings(_parse("--ray-address", "127.0.0.1:6379"), None)
    with pytest.raises(ConfigError, match=r"--ray-address 'head'.*host:port"):
        compute_settings(_parse("--backend", "ray", "--ray-address", "head"), None)
    with pytest.raises(ConfigError, match="out of range"):
        compute_settings(_parse("--backend", "ray", "--ray-address", "head:70000"), None)
