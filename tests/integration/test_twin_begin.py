"""The twin simulates a city's 7:00 routes from 7:00 (issue 15), on real SUMO."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from controller.cli import run
from simulators.sumo import sumo_home

pytestmark = pytest.mark.integration

FKK = sumo_home() / "tools" / "game" / "fkk_in"


def _morning_routes(path: Path) -> Path:
    """Ingolstadt's flows moved to 7:00-8:00, departing at speed 0 (SUMO's default)."""
    text = (FKK / "fkk_in.rou.xml").read_text(encoding="utf-8")
    text = re.sub(
        r'begin="(\d+)" end="90000"',
        lambda m: f'begin="{25200 + int(m.group(1))}" end="28800"',
        text,
    ).replace(' departSpeed="max"', "")
    path.write_text(text, encoding="utf-8")
    return path


def test_simulate_runs_morning_routes_from_their_first_departure(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if not (FKK / "ingolstadt.net.xml.gz").is_file():
        pytest.skip("the SUMO wheel has no tools/game/fkk_in")
    routes = _morning_routes(tmp_path / "am.rou.xml")
    config = tmp_path / "ingolstadt.toml"
    config.write_text(
        f'[simulation]\nnetwork = "{FKK / "ingolstadt.net.xml.gz"}"\ndemand = "{routes}"\n'
        '[safety.intersections."gneJ21"]\nmax_cycle_s = 240\n',
        encoding="utf-8",
    )
    argv = ["simulate", "--config", str(config), "--seeds", "2", "--horizon-s", "240",
            "--warmup-s", "60", "--workers", "0", "--json"]  # fmt: skip
    assert run(argv) == 0
    captured = capsys.readouterr()
    assert "the twin starts at 07:00:00 (25200 s)" in captured.err
    out = json.loads(captured.out)
    for outcome in out["outcomes"]:
        assert outcome["failed"] is None  # no false "gridlock" from a clock at 0
        assert outcome["throughput_veh"] > 20
