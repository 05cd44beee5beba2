"""The cycle's stage logic with fake ports (real ledger in tmp, software signer)."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from configs.settings import Settings, SimulationSettings
from configs.timing import (
    IntersectionTiming,
    NetworkRef,
    Proposal,
    SafetyLimits,
    TimingConfiguration,
    project,
)
from controller.cycle import CycleRunner, DeployOutcome, Observation, WhatIfSummary
from controller.gate import CandidateOutcome
from controller.ledger import Ledger
from hsm.envelope import Envelope
from hsm.verify import load_public_key, verify_envelope
from tests.support.softkeys import SoftwareSigner
from tests.support.timings import two_stage_base

BASE = two_stage_base()
NET = NetworkRef(id="test", sha256="c" * 64)


class FakeField:
    def __init__(self, ok: bool = True) -> None:
        self.ok = ok
        self.pushed: list[tuple[bytes, TimingConfiguration]] = []

    def observe(self) -> Observation:
        return Observation(
            field_time_s=1000.0,
            counts={"d1": 12.0},
            interval_s=240.0,
            active={"J1": (0, "")},
            measurements={"J1": (20.0, 1500.0)},
        )

    def deploy(self, envelope: bytes, config: TimingConfiguration, align_s: int) -> DeployOutcome:
        self.pushed.append((envelope, config))
        return DeployOutcome(
            self.ok, {"J1": {"status": 0 if self.ok else 7}}, "" if self.ok else "J1 timed out"
        )


class FakeTwin:
    def __init__(
        self, wait: float, nox: float = 0.0, fail: str | None = None, raise_in_whatif: bool = False
    ) -> None:
        self.wait, self.nox, self.fail, self.raise_in_whatif = wait, nox, fail, raise_in_whatif

    def estimate(self, observation: Observation) -> tuple[Mapping[str, Any], str]:
        return {"routes": []}, "d" * 64

    def whatif(
        self,
        demand: Mapping[str, Any],
        current: Any,
        candidates: Mapping[str, Any],
        cancel: threading.Event,
    ) -> WhatIfSummary:
        if self.raise_in_whatif:
            raise RuntimeError("worker crashed")
        outcomes = tuple(
            CandidateOutcome(
                n,
                self.wait,
                (self.wait - 0.01, self.wait + 0.01),
                self.nox,
                (self.nox, self.nox),
                self.fail,
            )
            for n in candidates
        )
        return WhatIfSummary(outcomes, {"plans": sorted(candidates)}, 900, (1, 2, 3))


class FakeProposer:
    def __init__(self, greens: tuple[float, float] = (45.0, 20.0), unsafe: bool = False) -> None:
        self.greens, self.unsafe = greens, unsafe

    def propose(
        self, observation: Observation, demand: Mapping[str, Any], current: Any
    ) -> tuple[dict[str, dict[str, IntersectionTiming]], str | None]:
        plan = project("J1", Proposal(list(self.greens)), BASE, SafetyLimits())
        if self.unsafe:  # a proposer bug: a 2 s yellow slips through
            phases = list(plan.phases)
            phases[1] = phases[1].model_copy(update={"duration_s": 2})
            plan = plan.model_copy(update={"phases": tuple(phases), "cycle_s": plan.cycle_s - 1})
        return {"policy": {"J1": plan}}, "e" * 64

    def screen(
        self, candidates: dict[str, dict[str, IntersectionTiming]], keep: int
    ) -> dict[str, dict[str, IntersectionTiming]]:
        return candidates


def _runner(
    tmp_path: Path,
    field: FakeField,
    twin: FakeTwin,
    proposer: FakeProposer | None = None,
    mode: str = "auto",
) -> tuple[CycleRunner, Ledger, SoftwareSigner]:
    settings = Settings(
        mode=mode,  # type: ignore[arg-type]
        simulation=SimulationSettings(network=tmp_path / "n.net.xml"),
        state_dir=tmp_path,
    )
    settings = settings.model_copy(
        update={"video": settings.video.model_copy(update={"enabled": False})}
    )
    signer = SoftwareSigner()
    ledger = Ledger.open(tmp_path / "ledger.sqlite")
    runner = CycleRunner(
        settings,
        network=NET,
        bases={"J1": BASE},
        field_port=field,
        twin=twin,
        proposer=proposer or FakeProposer(),
        signer=signer,
        ledger=ledger,
    )
    return runner, ledger, signer


SLOT = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)


def test_passing_candidate_is_signed_pushed_and_recorded(tmp_path: Path) -> None:
    field = FakeField()
    runner, ledger, signer = _runner(tmp_path, field, FakeTwin(wait=-0.2))
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
    again, ledger2, _ = _runner(tmp_path, FakeField(), FakeTwin(wait=-0.2))
    assert again.sequence == 2 and again.current["J1"] == field.pushed[1][1].intersections["J1"]
    ledger2.close()


def test_refused_candidate_deploys_nothing_and_records_reasons(tmp_path: Path) -> None:
    field = FakeField()
    runner, ledger, _ = _runner(tmp_path, field, FakeTwin(wait=-0.05))
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
    runner, ledger, _ = _runner(tmp_path, field, twin, proposer)
    report = runner.run_cycle(SLOT, threading.Event())
    assert not report.deployed and report.failed_stage == stage
    assert field.pushed == []
    body = ledger.find("cycle")[0].body
    assert body["outcome"] == "failed" and body["report"]["failed_stage"] == stage
    if stage == "sign":
        assert any("min_yellow" in v for v in body["safety_violations"])


def test_failed_push_is_recorded_as_aborted_and_current_plan_kept(tmp_path: Path) -> None:
    field = FakeField(ok=False)
    runner, ledger, _ = _runner(tmp_path, field, FakeTwin(wait=-0.3))
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
    runner, ledger, _ = _runner(tmp_path, field, FakeTwin(wait=-0.3), mode="shadow")
    report = runner.run_cycle(SLOT, threading.Event())
    assert report.ok and report.shadow and not report.deployed
    assert field.pushed == []
    assert ledger.find("cycle")[0].body["outcome"] == "shadow"
    assert ledger.find("deployment") == []


def test_cancelled_cycle_deploys_nothing(tmp_path: Path) -> None:
    field = FakeField()
    runner, ledger, _ = _runner(tmp_path, field, FakeTwin(wait=-0.3))
    cancel = threading.Event()
    cancel.set()
    report = runner.run_cycle(SLOT, cancel)
    assert not report.deployed and report.failed_stage == "observe"
    assert "CycleCancelled" in (report.error or "")
    assert field.pushed == [] and ledger.find("cycle")[0].body["outcome"] == "failed"


def test_every_cycle_leaves_a_signed_checkpoint(tmp_path: Path) -> None:
    runner, ledger, signer = _runner(tmp_path, FakeField(), FakeTwin(wait=-0.3))
    runner.run_cycle(SLOT, threading.Event())
    checkpoint = ledger.latest_checkpoint()
    assert (
        checkpoint is not None
        and checkpoint.size == ledger.size()
        and checkpoint.keyid == signer.keyid
    )


def test_shadow_mode_plans_are_signed_with_intent_shadow(tmp_path: Path) -> None:
    runner, ledger, _ = _runner(tmp_path, FakeField(), FakeTwin(wait=-0.3), mode="shadow")
    runner.run_cycle(SLOT, threading.Event())
    signed = ledger.find("cycle")[0].body["configuration"]
    assert signed["intent"] == "shadow"
    assert TimingConfiguration.model_validate(signed).intent == "shadow"
    ledger.close()
    field = FakeField()
    deploying, ledger2, _ = _runner(tmp_path / "auto", field, FakeTwin(wait=-0.3))
    deploying.run_cycle(SLOT, threading.Event())
    assert field.pushed[0][1].intent == "deploy"
    ledger2.close()
