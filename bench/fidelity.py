"""Prediction fidelity of the gated closed loop on event days, against the field's ground truth.

Runs the daemon's cycle (twin, proposer with screening, gate, HSM signing,
ledger, feedback collector with the counterfactual estimator and calibration;
the demo's settings) on each shipped event-day scenario (``configs/scenarios``:
incidents, demand pulses, OD shifts and detector faults the twin is not told
about) in field time (:mod:`controller.lockstep`), forks the field at every
activation for the true effect (:mod:`simulators.field.fork`), and runs
actuated control alone and max-pressure alone on the same days. Prints one JSON
line per figure:

* ``fidelity_deployments``: deployments measured (with a true delta);
* ``fidelity_within_5pp_share``: share whose predicted change of the approach
  halting vehicle-seconds is within 5 percentage points of the true change;
* ``fidelity_false_pass_rate``: share that passed the gate but made the true
  wait worse;
* ``fidelity_estimator_error_p50_pp``: median |estimated - true| (pp), the
  estimator a city runs without a fork;
* ``loop_delay_vs_actuated`` / ``loop_delay_vs_max_pressure``: mean delay per
  vehicle of the loop over the days, ``ratio`` against the reference alone.

    .venv/bin/python -m bench.fidelity [--scenarios a.toml,b.toml] [--json-out rows.jsonl]
    .venv/bin/python -m bench.fidelity --multi-day 6 --plot docs/img/learning.svg

``--multi-day N`` runs N district days twice on one state directory each, once
learning (twin calibration and policy fine-tuning on) and once frozen, and
prints the per-day prediction error and delay of both (the learning curves).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

logger = logging.getLogger("bench.fidelity")

SCENARIOS = ROOT / "configs" / "scenarios"


def emit(figure: str, value: float, unit: str, ratio: float | None, against: str | None) -> None:
    """One figure as a JSON line."""
    print(
        json.dumps(
            {
                "figure": figure,
                "value": None if value is None or not math.isfinite(value) else round(value, 4),
                "unit": unit,
                "ratio": None if ratio is None or not math.isfinite(ratio) else round(ratio, 4),
                "against": against,
            }
        ),
        flush=True,
    )


@dataclass
class Deployment:
    """One deployment's predicted, estimated and true change (fractions)."""

    day: str
    sequence: int
    activate_s: float
    predicted: float | None
    estimated: float | None
    true: float | None
    estimated_ci: tuple[float, float] | None = None
    passed_gate: bool = True
    superseded: bool = False
    events_active: tuple[str, ...] = ()
    true_by_horizon: dict[str, float] = field(default_factory=dict)


@dataclass
class DayResult:
    """What one day of one controller did."""

    day: str
    controller: str
    delay_s: float
    vehicles: int
    wall_s: float
    deployments: list[Deployment] = field(default_factory=list)
    cycles: int = 0
    calibration: float | None = None


# ---------------------------------------------------------------------------- references


def run_reference(day: Any, kind: str, work: Path) -> DayResult:
    """Actuated control alone or max-pressure alone on one event day (ground-truth delay)."""
    from configs.settings_file import load_settings
    from controller.demo import default_demo_config
    from rl.baselines import MaxPressureController, actuated_plans
    from simulators.field import FieldEmulator

    settings = load_settings(default_demo_config())
    started = time.perf_counter()
    config = day.field_config(work / f"ref-{kind}")
    field_ = FieldEmulator(config).start()
    try:
        hook = None
        if kind == "actuated":
            for tls, plan in actuated_plans(field_.network.base_programs(), settings.safety).items():
                field_.apply(tls, plan, field_.field_time_s)
        elif kind == "max-pressure":
            hook = MaxPressureController(field_.network, settings.safety)
        else:
            raise ValueError(kind)
        field_.step_until(config.begin_s + day.duration_s, hook)
    finally:
        field_.close()
    stats = field_.trip_statistics()
    return DayResult(
        day=day.name,
        controller=kind,
        delay_s=stats.mean_delay_s,
        vehicles=stats.vehicles,
        wall_s=time.perf_counter() - started,
    )


# ---------------------------------------------------------------------------- figures


def fidelity_figures(deployments: Sequence[Deployment]) -> dict[str, float]:
    """The fidelity figures over deployments that have a true delta."""
    scored = [d for d in deployments if d.true is not None and d.predicted is not None]
    n = len(scored)
    within = sum(1 for d in scored if abs(d.predicted - d.true) <= 0.05) if n else 0  # type: ignore[operator]
    false_pass = sum(1 for d in scored if d.passed_gate and d.true > 0) if n else 0  # type: ignore[operator]
    est = [abs(d.estimated - d.true) for d in scored if d.estimated is not None]  # type: ignore[operator]
    return {
        "deployments": float(n),
        "within_5pp_share": within / n if n else math.nan,
        "false_pass_rate": false_pass / n if n else math.nan,
        "estimator_error_p50_pp": 100 * statistics.median(est) if est else math.nan,
    }


def mean_delay(results: Sequence[DayResult]) -> float:
    """Vehicle-weighted mean delay over days."""
    vehicles = sum(r.vehicles for r in results)
    return sum(r.delay_s * r.vehicles for r in results) / vehicles if vehicles else math.nan
