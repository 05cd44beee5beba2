"""Small base programs, plans and what-if requests the tests share."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from configs.timing import BaseProgram, IntersectionTiming, PhasePlan
from simulators.twin import RunMetrics, WhatIfRequest


def two_stage_base(tls_id: str = "J1", green_s: int = 30, yellow_s: int = 3) -> BaseProgram:
    """Two greens (links 0-1, then 2-3), each followed by its yellow."""
    return BaseProgram.from_sumo(
        tls_id,
        "0",
        [
            ("GGrr", green_s, None, None),
            ("yyrr", yellow_s, None, None),
            ("rrGG", green_s, None, None),
            ("rryy", yellow_s, None, None),
        ],
    )


def two_stage_timing(green_s: int = 30) -> IntersectionTiming:
    """A fixed plan of two greens of ``green_s``, each followed by a 3 s yellow."""
    phases = (
        PhasePlan(state="GGrr", duration_s=green_s),
        PhasePlan(state="yyrr", duration_s=3),
        PhasePlan(state="rrGG", duration_s=green_s),
        PhasePlan(state="rryy", duration_s=3),
    )
    return IntersectionTiming(mode="fixed", cycle_s=2 * green_s + 6, offset_s=0, phases=phases)


def stub_request(tmp_path: Path, **kw: Any) -> WhatIfRequest:
    """A what-if over placeholder network and demand files (for engines with a fake runner)."""
    net = tmp_path / "n.net.xml"
    rou = tmp_path / "r.rou.xml"
    net.write_text("<net/>")
    rou.write_text("<routes/>")
    args: dict[str, Any] = {
        "network": str(net),
        "demand": str(rou),
        "current": {"J": two_stage_timing()},
        "candidates": {"cand": {"J": two_stage_timing(20)}},
        "seeds": (1, 2, 3),
    }
    args.update(kw)
    return WhatIfRequest(**args)


def run_metrics(
    plan: str, seed: int, wait: float, nox: float, failed: str | None = None
) -> RunMetrics:
    """One run's totals: 100 vehicles waiting ``wait`` s each, ``nox`` mg, one light "J"."""
    return RunMetrics(
        plan=plan,
        seed=seed,
        failed=failed,
        vehicles=100,
        wait_veh_s=wait * 100,
        delay_veh_s=wait * 150,
        backlog_veh_s=0.0,
        arrived=90,
        nox_mg=nox,
        per_intersection={"J": (wait * 50, 40, nox / 2)},
        simulated_veh_s=1000.0,
        wall_s=0.5,
    )
