"""A what-if worker process dies: the cycle fails at ``whatif``, and the next one works.

The twin is the real ``LibsumoWhatIfEngine`` (spawned worker processes running
libsumo on a small grid); its ``runner`` hook kills its own worker with SIGKILL
when it is handed the candidate named ``crash``, as SUMO dying of a segfault
or the OOM killer would. The field and the proposer are fakes. A second test
kills the idle workers between cycles (the pool is then broken before anything
is submitted).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from configs.outcomes import PushOutcome
from configs.settings import Settings, SimulationSettings
from configs.timing import IntersectionTiming, NetworkRef, TimingConfiguration
from controller.cycle import CycleRunner, DeployOutcome, Observation, WhatIfSummary
from controller.ledger import Ledger
from controller.wiring import outcomes_of
from simulators.network import load_network
from simulators.twin import LibsumoWhatIfEngine, RunMetrics, RunTask, WhatIfRequest, run_plan
from tests.support.softkeys import SoftwareSigner
from tests.support.twin_scenarios import GridScenario, build_grid

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CRASH = "crash"


def crash_on_candidate(task: RunTask) -> RunMetrics:
    """The engine's runner: SIGKILL this worker on the ``crash`` candidate, else simulate."""
    if task.plan == CRASH:
        os.kill(os.getpid(), signal.SIGKILL)
    return run_plan(task)


class Field:
    def __init__(self, tls: list[str]) -> None:
        self.tls = tls
        self.pushed: list[int] = []

    def observe(self) -> Observation:
        return Observation(
            field_time_s=3600.0,
            counts={"d": 10.0},
            interval_s=240.0,
            active={t: (0, "") for t in self.tls},
            measurements={t: (20.0, 100.0) for t in self.tls},
        )

    def deploy(self, envelope: bytes, config: TimingConfiguration, align_s: int) -> DeployOutcome:
        self.pushed.append(config.sequence)
        return DeployOutcome(PushOutcome.ACTIVATED)


class RealTwin:
    """Runs the candidates on the real engine against the grid's routes."""

    def __init__(self, scenario: GridScenario, engine: LibsumoWhatIfEngine) -> None:
        self.scenario, self.engine = scenario, engine

    def estimate(self, observation: Observation) -> tuple[Mapping[str, Any], str]:
        return {"routes": str(self.scenario.routes)}, "d" * 64

    def whatif(
        self,
        demand: Any,
        current: Mapping[str, IntersectionTiming],
        candidates: Mapping[str, Mapping[str, IntersectionTiming]],
        cancel: threading.Event,
    ) -> WhatIfSummary:
        request = WhatIfRequest(
            network=str(self.scenario.net),
            demand=str(self.scenario.routes),
            current=dict(current),
            candidates={k: dict(v) for k, v in candidates.items()},
            horizon_s=120,
            warmup_s=30,
            seeds=(1, 2),
        )
        result = self.engine.evaluate(request)
        return WhatIfSummary(
            outcomes_of(result), {"result": result.to_dict()}, result.horizon_s, result.seeds
        )


class Proposer:
    """Proposes the current plans under a name the test chooses."""

    def __init__(self) -> None:
        self.name = "same"

    def propose(self, observation: Any, demand: Any, current: Any) -> tuple[Any, str | None]:
        return {self.name: dict(current)}, None

    def screen(self, candidates: Any, keep: int) -> Any:
        return candidates


@pytest.fixture(scope="module")
def grid(tmp_path_factory: pytest.TempPathFactory) -> GridScenario:
    return build_grid(tmp_path_factory.mktemp("faults-grid"), size=2, end_s=400, period_s=3.0)


@pytest.fixture()
def setup(
    grid: GridScenario, tmp_path: Path
) -> Iterator[tuple[CycleRunner, Field, Proposer, LibsumoWhatIfEngine]]:
    model = load_network(grid.net)
    tls = sorted(model.base_programs())
    engine = LibsumoWhatIfEngine(workers=2, runner=crash_on_candidate, timeout_s=120)
    settings = Settings(
        mode="auto", simulation=SimulationSettings(network=grid.net), state_dir=tmp_path
    )
    settings = settings.model_copy(
        update={"video": settings.video.model_copy(update={"enabled": False})}
    )
    field, proposer = Field(tls), Proposer()
    ledger = Ledger.open(tmp_path / "ledger.sqlite")
    runner = CycleRunner(
        settings,
        network=NetworkRef(id="grid", sha256=model.sha256),
        bases=model.base_programs(),
        fleet=field,
        twin=RealTwin(grid, engine),
        proposer=proposer,
        signer=SoftwareSigner(),
        ledger=ledger,
        closers=[engine, ledger],
    )
    yield runner, field, proposer, engine
    runner.close()


def _slot(minute: int) -> datetime:
    return datetime(2026, 11, 23, 10, minute, tzinfo=UTC)


def test_a_worker_killed_mid_whatif_fails_the_cycle_and_the_next_one_runs(
    setup: tuple[CycleRunner, Field, Proposer, LibsumoWhatIfEngine],
) -> None:
    runner, field, proposer, _ = setup
    proposer.name = CRASH
    report = runner.run_cycle(_slot(0), threading.Event())
    assert not report.ok and not report.deployed and report.failed_stage == "whatif"
    assert "worker process died" in (report.error or "")
    assert field.pushed == []
    body = runner.ledger.latest("cycle").body  # type: ignore[union-attr]
    assert body["outcome"] == "failed" and body["report"]["failed_stage"] == "whatif"
    assert "SimulationError" in body["report"]["error"]
    assert runner.ledger.find("deployment") == []
    # the next cycle gets a fresh pool and completes (the gate decides; no failure)
    proposer.name = "same"
    again = runner.run_cycle(_slot(4), threading.Event())
    assert again.ok and again.failed_stage is None, again.error
    assert runner.ledger.latest("cycle").body["whatif"]["result"]["outcomes"]  # type: ignore[union-attr]


def test_workers_killed_while_idle_are_replaced_before_the_next_cycle(
    setup: tuple[CycleRunner, Field, Proposer, LibsumoWhatIfEngine],
    caplog: pytest.LogCaptureFixture,
) -> None:
    runner, _, _, engine = setup
    assert runner.run_cycle(_slot(0), threading.Event()).ok
    pool = engine._pool  # noqa: SLF001 - the test reaches the worker processes to kill them
    assert pool is not None
    pids = [p.pid for p in pool._processes.values()]  # noqa: SLF001
    assert pids
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    time.sleep(0.5)  # the executor notices and marks itself broken
    with caplog.at_level(logging.WARNING, logger="simulators.twin"):
        report = runner.run_cycle(_slot(4), threading.Event())
    assert report.ok and report.failed_stage is None, report.error
    assert engine._pool is not pool  # noqa: SLF001
    assert any("pool was broken" in r.getMessage() for r in caplog.records)
