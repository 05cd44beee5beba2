"""``audit replay`` on the real SUMO twin: a recorded what-if re-runs to the same numbers."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path
from typing import Any

import pytest

from configs.timing import IntersectionTiming, PhasePlan, classify_state
from controller.cli import run
from controller.ledger import Ledger
from simulators.network import load_network
from simulators.twin import LibsumoWhatIfEngine, WhatIfRequest
from tests.support.twin_scenarios import build_grid

pytestmark = pytest.mark.integration


def _greens(plan: IntersectionTiming, green_s: int) -> IntersectionTiming:
    phases = tuple(
        PhasePlan(state=p.state, duration_s=green_s) if classify_state(p.state) == "green" else p
        for p in plan.phases
    )
    return IntersectionTiming(
        mode="fixed", cycle_s=sum(p.duration_s for p in phases), offset_s=0, phases=phases
    )


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    d = tmp_path_factory.mktemp("replay")
    scenario = build_grid(d / "scenario", size=2, period_s=2.0, end_s=400)
    model = load_network(scenario.net)
    current = {t: IntersectionTiming.from_base(b) for t, b in model.base_programs().items()}
    request = WhatIfRequest(
        network=str(scenario.net),
        demand=str(scenario.routes),
        current=current,
        candidates={"short": {t: _greens(p, 15) for t, p in current.items()}},
        horizon_s=150,
        warmup_s=60,
        seeds=(3, 4),
    )
    result = LibsumoWhatIfEngine(workers=0).evaluate(request)
    whatif = {"request": request.to_dict(), "result": result.to_dict()}
    with Ledger.open(d / "ledger.sqlite") as led:
        led.append("cycle", {"cycle_id": "c1", "outcome": "refused", "whatif": whatif})
        wrong = copy.deepcopy(whatif)
        wrong["result"]["outcomes"][1]["changes"]["wait"]["mean"] += 0.001
        led.append("cycle", {"cycle_id": "c2", "outcome": "refused", "whatif": wrong})
    return d, whatif


@pytest.mark.slow
def test_replay_gives_the_recorded_numbers_and_catches_a_changed_one(
    recorded: tuple[Path, dict[str, Any]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d, _ = recorded
    ledger = str(d / "ledger.sqlite")
    assert run(["audit", "replay", "--ledger", ledger, "--workers", "1", "1"]) == 0
    assert "OK: cycle record 1:" in capsys.readouterr().out
    assert run(["audit", "replay", "--ledger", ledger, "--workers", "1", "2"]) == 1
    out = capsys.readouterr().out
    assert "DIFFERENT: cycle record 2: result.outcomes[1].changes.wait.mean" in out

    # an auditor's copy elsewhere: the inputs are found by name in --inputs
    audit = tmp_path / "audit"
    shutil.copytree(d, audit)
    shutil.rmtree(d / "scenario")
    try:
        inputs = str(audit / "scenario")
        code = run(
            ["audit", "replay", "--ledger", str(audit / "ledger.sqlite"), "--inputs", inputs]
            + ["--workers", "1", "1"]
        )
        assert code == 0
        # a changed demand file is refused before anything runs
        routes = audit / "scenario" / "routes.rou.xml"
        routes.write_text(routes.read_text().replace("<routes", "<routes ", 1))
        capsys.readouterr()
        code = run(
            ["audit", "replay", "--ledger", str(audit / "ledger.sqlite"), "--inputs", inputs, "1"]
        )
        assert code == 3
        assert "routes.rou.xml has sha256" in capsys.readouterr().err
    finally:
        shutil.copytree(audit / "scenario", d / "scenario")
