"""Fakes of the cycle's ports (controller.contracts) and a runner over them.

Real ledger in a tmp directory, software signer; no SUMO, HSM or network.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from configs.outcomes import PushOutcome
from configs.safety import Proposal, project
from configs.settings import Settings, SimulationSettings
from configs.timing import (
    BaseProgram,
    IntersectionTiming,
    NetworkRef,
    SafetyLimits,
    TimingConfiguration,
)
from controller.contracts import (
    ControllerFleet,
    DeployOutcome,
    Observation,
    ProposerPort,
    TwinPort,
    WhatIfSummary,
)
from controller.cycle import CycleRunner
from controller.gate import CandidateOutcome
from controller.ledger import Ledger
from hsm.base import Signer
from tests.support.softkeys import SoftwareSigner
from tests.support.timings import two_stage_base

__all__ = [
    "BASE",
    "NET",
    "FakeField",
    "FakeProposer",
    "FakeTwin",
    "cycle_settings",
    "make_runner",
]

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
            PushOutcome.ACTIVATED if self.ok else PushOutcome.ABORTED,
            message="" if self.ok else "J1 timed out",
            push_record={"J1": {"status": 0 if self.ok else 7}},
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


def cycle_settings(tmp_path: Path, mode: str = "auto", network: Path | None = None) -> Settings:
    """Settings for a cycle under test: state in ``tmp_path``, video off."""
    settings = Settings(
        mode=mode,  # type: ignore[arg-type]
        simulation=SimulationSettings(network=network or tmp_path / "n.net.xml"),
        state_dir=tmp_path,
    )
    return settings.model_copy(
        update={"video": settings.video.model_copy(update={"enabled": False})}
    )


def make_runner(
    tmp_path: Path,
    field: ControllerFleet,
    twin: TwinPort,
    proposer: ProposerPort | None = None,
    mode: str = "auto",
    *,
    signer: Signer | None = None,
    enrol: bool = False,
    bases: Mapping[str, BaseProgram] | None = None,
    network: NetworkRef = NET,
    settings: Settings | None = None,
    closers: list[Any] | None = None,
) -> tuple[CycleRunner, Ledger, Signer]:
    """A cycle runner over fake (or given) ports, ledger at ``tmp_path/ledger.sqlite``.

    Args:
        tmp_path: the state directory.
        field: the controllers.
        twin: the twin.
        proposer: the proposer (default :class:`FakeProposer`).
        mode: ``auto`` or ``shadow``.
        signer: the signer (default a fresh software key).
        enrol: enrol the signer's key in the ledger first.
        bases: the base programs (default ``{"J1": BASE}``).
        network: the network reference plans are signed for.
        settings: the settings (default :func:`cycle_settings`).
        closers: what the runner closes (default the ledger).
    """
    signer = signer or SoftwareSigner()
    ledger = Ledger.open(tmp_path / "ledger.sqlite")
    if enrol:
        ledger.enrol_key(signer)
    runner = CycleRunner(
        settings or cycle_settings(tmp_path, mode),
        network=network,
        bases=bases or {"J1": BASE},
        fleet=field,
        twin=twin,
        proposer=proposer or FakeProposer(),
        signer=signer,
        ledger=ledger,
        closers=[ledger] if closers is None else closers,
    )
    return runner, ledger, signer
