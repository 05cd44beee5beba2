"""`signaltwin evaluate` on a network the project did not make (SUMO's own grid6 scenario)."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from simulators.sumo import sumo_home

pytestmark = [pytest.mark.integration, pytest.mark.slow]

GRID6 = sumo_home() / "tools" / "game" / "grid6"
KEYS = ("delay_s", "wait_s", "trip_time_s", "nox_g", "throughput_veh")


def test_evaluate_compares_controllers_on_a_foreign_network() -> None:
    run = subprocess.run(
        [
            sys.executable,
            "-c",
            "from controller.cli import main; main()",
            "evaluate",
            "--network",
            str(GRID6 / "grid6.net.xml"),
            "--routes",
            str(GRID6 / "grid6.rou.xml"),
            "--compare",
            "fixed,webster,policy",
            "--seeds",
            "2",
            "--hours",
            "0.1",
            "--begin-s",
            "0",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    rows = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    assert [r["controller"] for r in rows] == ["fixed", "webster", "policy"]
    for row in rows:
        for key in KEYS:
            assert math.isfinite(row[key]) and row[f"{key}_ci95"] >= 0, (row["controller"], key)
        assert row["seeds"] == [1, 2] and len(row["per_seed"]) == 2
        for seed in row["per_seed"]:
            # vehicles that never departed are counted, not dropped
            assert seed["vehicles"] >= seed["arrived"] > 0
    # the gate's verdict on each proposal is reported
    assert "proposals through" in run.stderr


def test_evaluate_refuses_unknown_controllers() -> None:
    run = subprocess.run(
        [
            sys.executable,
            "-c",
            "from controller.cli import main; main()",
            "evaluate",
            "--compare",
            "fixed,magic",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2 and "magic" in run.stderr
