"""Real-city scenarios (rl.scenarios) and the control-quality benchmark's smoke run."""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from configs.errors import ConfigError
from rl.scenarios import (
    SCENARIOS,
    BuiltScenario,
    build_scenario,
    playable_network,
    scenario,
    scenarios,
)
from simulators.network import load_network

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


def _departures(routes: Path) -> list[float]:
    return [
        float(e.get("depart", "nan"))
        for e in ET.parse(routes).getroot()
        if e.tag in ("vehicle", "trip")
    ]


def _grid6(out: Path, seed: int) -> BuiltScenario:
    return build_scenario("grid6", out, level="low", seed=seed, begin_s=300, hours=600 / 3600)


def test_roles_split_train_and_held_out_networks() -> None:
    train = {s.name for s in scenarios("train")}
    held_out = {s.name for s in scenarios("eval")}
    assert "district" in train
    assert not train & held_out
    assert len(held_out) >= 4
    assert set(SCENARIOS) == train | held_out
    with pytest.raises(ConfigError, match="unknown scenario"):
        scenario("atlantis")


def test_grid6_build_is_valid_and_reproducible(tmp_path: Path) -> None:
    first = build_scenario(
        "grid6", tmp_path / "a", level="low", seed=3, begin_s=300, hours=600 / 3600
    )
    again = build_scenario(
        "grid6", tmp_path / "b", level="low", seed=3, begin_s=300, hours=600 / 3600
    )

    departs = _departures(first.routes)
    assert departs and len(departs) == first.vehicles
    assert all(300 <= d < 900 for d in departs)
    model = load_network(first.net, first.detectors)
    covered = {d.tls_id for d in model.detectors}
    assert covered == set(model.intersections)
    assert first.key == again.key
    for mine, theirs in ((first.routes, again.routes), (first.detectors, again.detectors)):
        assert mine.read_bytes() == theirs.read_bytes()
    # the cache answers the same build without running randomTrips again
    cached = build_scenario(
        "grid6", tmp_path / "a", level="low", seed=3, begin_s=300, hours=600 / 3600
    )
    assert cached == first
    # another seed is other demand at the same level
    other = build_scenario(
        "grid6", tmp_path / "a", level="low", seed=4, begin_s=300, hours=600 / 3600
    )
    assert other.routes.read_bytes() != first.routes.read_bytes()


def test_levels_raise_the_load(tmp_path: Path) -> None:
    low = build_scenario("cross", tmp_path, level="low", seed=1, hours=600 / 3600)
    high = build_scenario("cross", tmp_path, level="high", seed=1, hours=600 / 3600)
    assert high.vehicles > low.vehicles
    assert high.saturation > low.saturation


def test_held_game_programs_become_fixed_time(tmp_path: Path) -> None:
    source = scenario("corridor").network()
    with pytest.raises(ConfigError, match="3600"):
        load_network(source)
    playable = playable_network(source, tmp_path)
    assert playable != source
    model = load_network(playable)
    for light in model.intersections.values():
        assert len(light.base.green_indices) >= 2
        assert all(p.duration_s <= 60 for p in light.base.phases)
    # bs3d keeps each green in a program of its own: joined into one cycle
    (light,) = load_network(
        playable_network(scenario("bs3d").network(), tmp_path)
    ).intersections.values()
    assert len(light.base.green_indices) == 4
    # a network without held programs is used as shipped
    grid6 = scenario("grid6").network()
    assert playable_network(grid6, tmp_path) == grid6


def test_bench_control_quick_smoke(tmp_path: Path) -> None:
    table = tmp_path / "table.md"
    run = subprocess.run(
        [sys.executable, "-m", "bench.control", "--quick", "--networks", "grid6",
         "--controllers", "fixed", "--workers", "1", "--markdown", str(table)],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    figures = {f["figure"]: f for f in map(json.loads, run.stdout.splitlines())}
    delay = figures["delay_grid6_fixed"]
    assert delay["unit"] == "s" and delay["value"] > 0
    assert delay["ratio"] is None  # no actuated row to compare with
    assert {"delay_grid6_fixed_ci95", "nox_grid6_fixed", "nox_grid6_fixed_ci95"} <= set(figures)
    assert "| grid6 | fixed |" in table.read_text(encoding="utf-8")
    assert "[1/1] grid6 fixed seed 1" in run.stderr
