"""Verify and report on the records the real cycle writes (CycleRunner with fake ports)."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from configs.outcomes import PushOutcome
from configs.safety import Proposal, project
from configs.settings import Settings, SimulationSettings
from configs.timing import IntersectionTiming, NetworkRef, SafetyLimits, TimingConfiguration
from controller.cycle import CycleRunner, DeployOutcome, Observation, WhatIfSummary
from controller.gate import CandidateOutcome
from controller.ledger import Ledger, build_report, verify_ledger
from hsm.verify import load_public_key
from tests.support.softkeys import SoftwareSigner
from tests.support.timings import two_stage_base

BASE = two_stage_base()


class Field:
    def __init__(self) -> None:
        self.ok = True

    def observe(self) -> Observation:
        return Observation(1000.0, {"d1": 12.0}, 240.0, {"J1": (0, "")}, {"J1": (20.0, 1500.0)})

    def deploy(self, envelope: bytes, config: TimingConfiguration, align_s: int) -> DeployOutcome:
        return DeployOutcome(
            PushOutcome.ACTIVATED if self.ok else PushOutcome.ABORTED,
            push_record={"J1": {"status": 0 if self.ok else 7}},
        )


class Twin:
    def __init__(self) -> None:
        self.wait = -0.2

    def estimate(self, observation: Observation) -> tuple[Mapping[str, Any], str]:
        return {"routes": []}, "d" * 64

    def whatif(
        self, demand: Mapping[str, Any], current: Any, candidates: Any, cancel: threading.Event
    ) -> WhatIfSummary:
        w = self.wait
        outcomes = tuple(
            CandidateOutcome(n, w, (w - 0.01, w + 0.01), 0.0, (0.0, 0.0), None) for n in candidates
        )
        return WhatIfSummary(outcomes, {"plans": sorted(candidates)}, 900, (1, 2, 3))


class Proposer:
    def propose(
        self, observation: Observation, demand: Mapping[str, Any], current: Any
    ) -> tuple[dict[str, dict[str, IntersectionTiming]], str | None]:
        return {"policy": {"J1": project("J1", Proposal([45.0, 20.0]), BASE, SafetyLimits())}}, None

    def screen(self, candidates: Any, keep: int) -> Any:
        return candidates


def test_cycle_records_verify_and_report(tmp_path: Path) -> None:
    settings = Settings(simulation=SimulationSettings(network=tmp_path / "n.net.xml"))
    settings = settings.model_copy(
        update={"video": settings.video.model_copy(update={"enabled": False})}
    )
    signer = SoftwareSigner()
    field, twin = Field(), Twin()
    path = tmp_path / "ledger.sqlite"
    with Ledger.open(path) as ledger:
        ledger.enrol_key(signer)
        runner = CycleRunner(
            settings,
            network=NetworkRef(id="t", sha256="c" * 64),
            bases={"J1": BASE},
            fleet=field,
            twin=twin,
            proposer=Proposer(),
            signer=signer,
            ledger=ledger,
        )
        slot = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)
        assert runner.run_cycle(slot, threading.Event()).deployed
        twin.wait = -0.05  # refused at the gate
        runner.run_cycle(slot + timedelta(minutes=4), threading.Event())
        twin.wait, field.ok = -0.3, False  # passes, push fails: aborted
        runner.run_cycle(slot + timedelta(minutes=8), threading.Event())
        deployments = ledger.find("deployment")
        assert [d.body["result"] for d in deployments] == ["deployed", "aborted"]
        ledger.append(
            "measured_delta",
            {
                "deployment": deployments[0].index,
                "measured": {"wait_change": -0.17, "nox_change": 0.001},
            },
        )
        ledger.checkpoint(signer)

    keys = [load_public_key(signer.public_key_pem())]
    result = verify_ledger(path, keys, require_checkpoint=True)
    assert result.ok, [str(p) for p in result.problems]
    # both deployments and both signed cycle records verify
    assert len(result.signatures) == 4 and all(s.ok for s in result.signatures.values())

    with Ledger.open(path, readonly=True) as ledger:
        page = build_report(ledger, tmp_path / "r.html", verification=result)
    assert "Deployment record 3: sequence 1" in page
    assert "-20.0 %" in page and "-17.0 %" in page  # predicted (from the configuration), measured
    assert "policy: pass" in page  # the gate's verdict for the candidate
    assert "pushing → push aborted" in page
    assert "Cycles that deployed nothing" in page and "refuse" in page
    # push results per controller: the first push took, the second was refused
    assert "<summary class='ok'>1 controller: all reported OK</summary>" in page
    assert "<summary class='bad'>1 controller: none took the plan (J1)</summary>" in page


def test_records_appended_between_cycles_are_signed_before_shutdown(tmp_path: Path) -> None:
    """Strict verification needs every record under a checkpoint: the runner signs the tail."""
    settings = Settings(simulation=SimulationSettings(network=tmp_path / "n.net.xml"))
    settings = settings.model_copy(
        update={"video": settings.video.model_copy(update={"enabled": False})}
    )
    signer = SoftwareSigner()
    path = tmp_path / "ledger.sqlite"
    keys = [load_public_key(signer.public_key_pem())]
    with Ledger.open(path) as ledger:
        runner = CycleRunner(
            settings,
            network=NetworkRef(id="t", sha256="c" * 64),
            bases={"J1": BASE},
            fleet=Field(),
            twin=Twin(),
            proposer=Proposer(),
            signer=signer,
            ledger=ledger,
        )
        slot = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)
        assert runner.run_cycle(slot, threading.Event()).deployed
        runner.record_skip(slot + timedelta(minutes=4), "overrun")  # after the cycle's checkpoint
        runner.collect_feedback()
        assert verify_ledger(path, keys).ok
        runner.record_config_change(settings)
        runner.close()
    result = verify_ledger(path, keys)
    assert result.ok, [str(p) for p in result.problems]
