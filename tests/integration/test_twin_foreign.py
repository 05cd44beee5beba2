from __future__ import annotations

import json
from pathlib import Path

import pytest

from controller.cli import run
from simulators.network import load_network
from tests.support.twin_scenarios import build_foreign

pytestmark = pytest.mark.integration


@pytest.mark.slow
def test_simulate_runs_on_a_network_with_its_own_actuated_lights_and_routes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    foreign = build_foreign(tmp_path / "foreign")
    argv = [
        "simulate", "--network", str(foreign.net), "--routes", str(foreign.routes),
        "--seeds", "2", "--horizon-s", "300", "--warmup-s", "120", "--workers", "2", "--json",
    ]  # fmt: skip
    assert run(argv) == 0
    out = json.loads(capsys.readouterr().out)
    names = [o["name"] for o in out["outcomes"]]
    assert names == ["current", "greens-x0.8", "greens-x1.2"]
    current = out["outcomes"][0]
    assert current["failed"] is None and current["throughput_veh"] > 0
    assert len(current["intersections"]) > 10
    for outcome in out["outcomes"][1:]:
        low, high = outcome["changes"]["wait"]["ci"]
        assert low <= outcome["changes"]["wait"]["mean"] <= high


def test_simulate_table_and_usage_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    foreign = build_foreign(tmp_path / "foreign", end_s=400)
    assert run(["simulate", "--network", str(foreign.net)]) == 2
    assert "no demand" in capsys.readouterr().err
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"nope": {"mode": "fixed"}}))
    argv = ["simulate", "--network", str(foreign.net), "--routes", str(foreign.routes),
            "--plan", str(plan)]  # fmt: skip
    assert run(argv) == 2
    assert "nope" in capsys.readouterr().err

    # a candidate made for another network fails alone; the table says why
    tls = load_network(foreign.net).tls_ids[0]
    wrong = {"mode": "fixed", "cycle_s": 60, "offset_s": 0, "phases": [
        {"state": "GGrr", "duration_s": 27}, {"state": "yyrr", "duration_s": 3},
        {"state": "rrGG", "duration_s": 27}, {"state": "rryy", "duration_s": 3}]}  # fmt: skip
    plan.write_text(json.dumps({tls: wrong}))
    argv = ["simulate", "--network", str(foreign.net), "--routes", str(foreign.routes),
            "--plan", str(plan), "--seeds", "2", "--horizon-s", "60", "--warmup-s", "30",
            "--workers", "0"]  # fmt: skip
    assert run(argv) == 1
    out = capsys.readouterr().out
    assert "candidate" in out and "FAILED" in out and "cannot be installed" in out


@pytest.mark.slow
def test_simulate_on_the_demo_district_with_demand_from_the_field(
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = Path(__file__).resolve().parents[2] / "configs" / "demo.toml"
    argv = [
        "simulate", "--config", str(config), "--probe-field", "120",
        "--seeds", "2", "--horizon-s", "120", "--warmup-s", "60", "--json",
    ]  # fmt: skip
    assert run(argv) == 0
    captured = capsys.readouterr()
    assert "demand:" in captured.err
    out = json.loads(captured.out)
    current = out["outcomes"][0]
    assert current["failed"] is None and len(current["intersections"]) == 47
    assert current["nox_mg"] > 0
