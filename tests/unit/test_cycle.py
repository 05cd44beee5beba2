"""The cycle's stage logic with fake ports (real ledger in tmp, software signer)."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from configs.timing import (
    TimingConfiguration,
)
from hsm.envelope import Envelope
from hsm.verify import load_public_key, verify_envelope
from tests.support.cycle_ports import FakeField, FakeProposer, FakeTwin, make_runner

SLOT = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)


def test_passing_candidate_is_signed_pushed_and_recorded(tmp_path: Path) -> None:
    field = FakeField()
    runner, ledger, signer = make_runner(tmp_path, field, FakeTwin(wait=-0.2))
    report = runner.run_cycle(SLOT, threading.Event())
    assert report.ok and report.deployed and report.decision == "pass"
    assert report.sequence == 1
    assert set(report.stage_s) >= {
        "observe",
        "estimate",
        "propose",
        "whatif",
        "gate",
        "sign",
        "push",
        "record",
    }
    envelope, config = field.pushed[0]
    verified = verify_envelope(
        Envelope.from_json(envelope), [load_public_key(signer.public_key_pem())]
    )
    assert TimingConfiguration.parse(verified.payload) == config
    cycle, deployment = ledger.find("cycle")[0], ledger.find("deployment")[0]
    assert cycle.body["outcome"] == "pushing" and deployment.body["result"] == "deployed"
    assert deployment.body["sequence"] == 1 and deployment.body["config_digest"] == config.digest()
    assert runner.current["J1"] == config.intersections["J1"]
    # the next cycle uses the next sequence, and a restart continues from the ledger
    assert (
        runner.run_cycle(datetime(2026, 11, 23, 8, 4, tzinfo=UTC), threading.Event()).sequence == 2
    )
    ledger.close()
    again, ledger2, _ = make_runner(tmp_path, FakeField(), FakeTwin(wait=-0.2))
    assert again.sequence == 2 and again.current["J1"] == field.pushed[1][1].intersections["J1"]
    ledger2.close()


def test_refused_candidate_deploys_nothing_and_records_reasons(tmp_path: Path) -> None:
    field = FakeField()
    runner, ledger, _ = make_runner(tmp_path, field, FakeTwin(wait=-0.05))
    report = runner.run_cycle(SLOT, threading.Event())
    assert report.ok and not report.deployed and report.decision == "refuse_wait"
    assert field.pushed == []
    body = ledger.find("cycle")[0].body
    assert body["outcome"] == "refused"
    assert "wait reduction" in body["gate"]["verdicts"][0]["reasons"][0]


@pytest.mark.parametrize(
    ("twin", "proposer", "stage"),
    [
        (FakeTwin(wait=-0.3, raise_in_whatif=True), None, "whatif"),
        (FakeTwin(wait=-0.3), FakeProposer(unsafe=True), "sign"),
    ],
)
def test_stage_failure_deploys_nothing_and_is_recorded(
    tmp_path: Path, twin: FakeTwin, proposer: FakeProposer | None, stage: str
) -> None:
    field = FakeField()
    runner, ledger, _ = make_runner(tmp_path, field, twin, proposer)
    report = runner.run_cycle(SLOT, threading.Event())
    assert not report.deployed and report.failed_stage == stage
    assert field.pushed == []
    body = ledger.find("cycle")[0].body
    assert body["outcome"] == "failed" and body["report"]["failed_stage"] == stage
    if stage == "sign":
        assert any("min_yellow" in v for v in body["safety_violations"])


def test_failed_push_is_recorded_as_aborted_and_current_plan_kept(tmp_path: Path) -> None:
    field = FakeField(ok=False)
    runner, ledger, _ = make_runner(tmp_path, field, FakeTwin(wait=-0.3))
    before = dict(runner.current)
    report = runner.run_cycle(SLOT, threading.Event())
    assert (
        not report.deployed
        and report.failed_stage == "push"
        and "timed out" in (report.error or "")
    )
    assert ledger.find("deployment")[0].body["result"] == "aborted"
    assert runner.current == before
    assert runner.sequence == 1  # never reused


def test_shadow_mode_signs_but_never_pushes(tmp_path: Path) -> None:
    field = FakeField()
    runner, ledger, _ = make_runner(tmp_path, field, FakeTwin(wait=-0.3), mode="shadow")
    report = runner.run_cycle(SLOT, threading.Event())
    assert report.ok and report.shadow and not report.deployed
    assert field.pushed == []
    assert ledger.find("cycle")[0].body["outcome"] == "shadow"
    assert ledger.find("deployment") == []


def test_cancelled_cycle_deploys_nothing(tmp_path: Path) -> None:
    field = FakeField()
    runner, ledger, _ = make_runner(tmp_path, field, FakeTwin(wait=-0.3))
    cancel = threading.Event()
    cancel.set()
    report = runner.run_cycle(SLOT, cancel)
    assert not report.deployed and report.failed_stage == "observe"
    assert "CycleCancelled" in (report.error or "")
    assert field.pushed == [] and ledger.find("cycle")[0].body["outcome"] == "failed"


def test_every_cycle_leaves_a_signed_checkpoint(tmp_path: Path) -> None:
    runner, ledger, signer = make_runner(tmp_path, FakeField(), FakeTwin(wait=-0.3))
    runner.run_cycle(SLOT, threading.Event())
    checkpoint = ledger.latest_checkpoint()
    assert (
        checkpoint is not None
        and checkpoint.size == ledger.size()
        and checkpoint.keyid == signer.keyid
    )


class _BlockingEngine:
    """A what-if engine that runs until it is cancelled (as a long what-if would)."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.cancel: threading.Event | None = None

    def evaluate(
        self,
        request: Any,
        progress: Any = None,
        cancel: threading.Event | None = None,
    ) -> Any:
        from configs.errors import WhatIfCancelled

        self.cancel = cancel
        self.started.set()
        if cancel is None or not cancel.wait(10.0):
            raise AssertionError("the twin adapter did not pass the cycle's cancel event")
        raise WhatIfCancelled("cancelled after 0 of 6 runs")


def test_a_shutdown_during_the_whatif_aborts_the_cycle_promptly(tmp_path: Path) -> None:
    from configs.outcomes import DeploymentResult
    from controller.schedule import deployment_result
    from controller.wiring import TwinAdapter

    class Adapter(TwinAdapter):
        def __init__(self, engine: _BlockingEngine) -> None:  # no network to load
            self.engine = engine  # type: ignore[assignment]

        def estimate(self, observation: Any) -> tuple[Mapping[str, Any], str]:
            return {"routes": []}, "d" * 64

        def request(self, demand: Any, current: Any, candidates: Any) -> Any:
            return object()

    engine = _BlockingEngine()
    field = FakeField()
    runner, ledger, _ = make_runner(tmp_path, field, Adapter(engine))
    cancel = threading.Event()
    timer = threading.Timer(0.2, cancel.set)
    timer.start()
    report = runner.run_cycle(datetime(2026, 11, 23, 8, 0, tzinfo=UTC), cancel)
    timer.join()
    assert engine.cancel is cancel
    assert report.failed_stage == "whatif" and "CycleCancelled" in (report.error or "")
    assert deployment_result(report, cancel.is_set()) == DeploymentResult.ABORTED
    assert field.pushed == []
    assert ledger.latest("cycle") is not None
    assert ledger.latest("cycle").body["outcome"] == "failed"  # type: ignore[union-attr]


def test_shadow_mode_plans_are_signed_with_intent_shadow(tmp_path: Path) -> None:
    runner, ledger, _ = make_runner(tmp_path, FakeField(), FakeTwin(wait=-0.3), mode="shadow")
    runner.run_cycle(SLOT, threading.Event())
    signed = ledger.find("cycle")[0].body["configuration"]
    assert signed["intent"] == "shadow"
    assert TimingConfiguration.model_validate(signed).intent == "shadow"
    ledger.close()
    field = FakeField()
    deploying, ledger2, _ = make_runner(tmp_path / "auto", field, FakeTwin(wait=-0.3))
    deploying.run_cycle(SLOT, threading.Event())
    assert field.pushed[0][1].intent == "deploy"
    ledger2.close()
