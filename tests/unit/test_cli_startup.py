"""Building the ``signaltwin`` parser imports none of the heavy libraries (issue 13)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

HEAVY = (
    "torch",
    "stable_baselines3",
    "gymnasium",
    "libsumo",
    "traci",
    "sumolib",
    "asyncua",
    "av",
    "scipy",
    "apscheduler",
    "prometheus_client",
    "simulators.twin",
    "simulators",
    "rl",
    "edge_accel",
    "actuation",
    "controller.wiring",
    "controller.daemon",
    "controller.demo",
)

_PROBE = """
import json, sys
import controller.cli
controller.cli.build_parser()
print(json.dumps(sorted(m for m in {heavy!r} if m in sys.modules)))
"""


def test_building_the_parser_imports_no_heavy_library() -> None:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE.format(heavy=HEAVY)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    assert json.loads(out.stdout) == []
