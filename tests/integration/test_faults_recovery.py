"""The start-up reconciliation's decisions, on a real ledger with a fake set of controllers.

A crash mid-push is simulated in-process: the field port raises a
``BaseException`` the cycle does not catch, leaving the ``pushing`` cycle
record without its ``deployment`` record exactly as ``kill -9`` would (the real
kill is in ``test_faults_push.py``). The controllers are a fake with the
snapshot fields and ``abort_staged`` of ``actuation.client.ThreadedActuator``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from configs.errors import ActuationError
from configs.timing import IntersectionTiming, TimingConfiguration
from controller.cycle import CycleRunner, Observation, WhatIfSummary
from controller.gate import CandidateOutcome
from controller.ledger import verify_ledger
from controller.recovery import find_interrupted, reconcile, recover
from controller.wiring import OpcUaFleet
from hsm.verify import load_public_key
from tests.support.actuation_fleet import NETWORK, base_program, timing
from tests.support.cycle_ports import cycle_settings, make_runner
from tests.support.softkeys import SoftwareSigner

pytestmark = [pytest.mark.integration]

IDS = ["J000", "J001", "J002"]


class Crash(BaseException):
    """The process dies here (nothing after it runs)."""


@dataclass
class Snap:
    tls_id: str
    reachable: bool
    active_sequence: int = 0
    active_digest: str = ""
    staged_sequence: int = 0
    staged_digest: str = ""
    error: str | None = None
    field_time_s: float = 1000.0
    detectors: dict[str, tuple[int, float]] | None = None
    mean_wait_s: float = 20.0
    nox_mg: float = 100.0


class Controllers:
    """Fake controllers: (active seq, active digest, staged seq, staged digest), reachability."""

    def __init__(self) -> None:
        self.state = {t: [0, "", 0, ""] for t in IDS}
        self.down: set[str] = set()
        self.aborts: list[tuple[int, list[str]]] = []
        self.on_push: Any = None

    def read_all(self) -> dict[str, Any]:
        out = {}
        for t, (a, ad, s, sd) in self.state.items():
            if t in self.down:
                out[t] = Snap(t, False, error="connection refused")
            else:
                snap = Snap(t, True, a, ad, s, sd)
                snap.detectors = {f"{t}_d": (100, 5.0)}
                out[t] = snap
        return out

    def abort_staged(
        self, sequence: int, only: Iterable[str] | None = None
    ) -> dict[str, tuple[int, str] | str]:
        ids = list(only) if only is not None else list(self.state)
        self.aborts.append((sequence, ids))
        answers: dict[str, tuple[int, str] | str] = {}
        for t in ids:
            if self.state[t][2] == sequence:
                self.state[t][2:] = [0, ""]
                answers[t] = (0, f"staged plan {sequence} dropped")
            else:
                answers[t] = (12, "nothing staged")
        return answers

    def push(self, envelope: bytes, sequence: int, **kw: Any) -> Any:
        return self.on_push(envelope, sequence)

    def close(self) -> None:
        pass


class Twin:
    def estimate(self, observation: Observation) -> tuple[Mapping[str, Any], str]:
        return {}, "d" * 64

    def whatif(
        self, demand: Any, current: Any, candidates: Mapping[str, Any], cancel: threading.Event
    ) -> WhatIfSummary:
        outcomes = tuple(
            CandidateOutcome(n, -0.2, (-0.22, -0.18), 0.0, (0.0, 0.0)) for n in candidates
        )
        return WhatIfSummary(outcomes, {}, 600, (1, 2))


class Proposer:
    def propose(self, observation: Any, demand: Any, current: Any) -> tuple[Any, str | None]:
        return {"policy": {t: timing(34, 22) for t in IDS}}, None

    def screen(self, candidates: Any, keep: int) -> Any:
        return candidates


def runner_for(
    tmp_path: Path, controllers: Controllers, signer: SoftwareSigner
) -> tuple[CycleRunner, OpcUaFleet]:
    port = OpcUaFleet(controllers, cycle_settings(tmp_path))
    runner, _, _ = make_runner(
        tmp_path,
        port,
        Twin(),
        Proposer(),
        signer=signer,
        enrol=True,
        bases={t: base_program(t) for t in IDS},
        network=NETWORK,
    )
    return runner, port


SLOT = datetime(2026, 11, 23, 11, 0, tzinfo=UTC)


def crash_mid_push(
    tmp_path: Path, controllers: Controllers, signer: SoftwareSigner, activated: set[str]
) -> tuple[int, str]:
    """Run a cycle that stages everywhere, activates on ``activated``, then dies."""
    runner, _ = runner_for(tmp_path, controllers, signer)

    def push(envelope: bytes, sequence: int) -> Any:
        config = TimingConfiguration.model_validate(
            runner.ledger.latest("cycle").body["configuration"]  # type: ignore[union-attr]
        )
        digest = config.digest()
        for t in IDS:
            controllers.state[t][2:] = [sequence, digest]
        for t in activated:
            controllers.state[t] = [sequence, digest, 0, ""]
        raise Crash

    controllers.on_push = push
    with pytest.raises(Crash):
        runner.run_cycle(SLOT, threading.Event())
    interrupted = find_interrupted(runner.ledger)
    assert interrupted is not None
    sequence = int(interrupted.body["configuration"]["sequence"])
    digest = str(interrupted.body["configuration_sha256"])
    runner.ledger.close()
    return sequence, digest


def _verify(path: Path, signer: SoftwareSigner) -> None:
    result = verify_ledger(path, [load_public_key(signer.public_key_pem())])
    assert result.ok, result.first_problem


@pytest.mark.parametrize(
    ("activated", "result"),
    [
        (set(), "recovered-aborted"),
        ({"J000"}, "recovered-partial"),
        (set(IDS), "recovered-activated"),
    ],
)
def test_reconcile_settles_by_read_back_and_never_pushes(
    tmp_path: Path, activated: set[str], result: str
) -> None:
    controllers, signer = Controllers(), SoftwareSigner()
    sequence, digest = crash_mid_push(tmp_path, controllers, signer, activated)
    controllers.on_push = lambda *a: pytest.fail("recovery must never push")
    runner, _ = runner_for(tmp_path, controllers, signer)
    report = recover(runner, controllers, settle_interrupted=True)
    assert report.needed and report.sequence == sequence and report.result == result
    deployment = runner.ledger.find("deployment")[-1].body
    assert deployment["result"] == result and deployment["sequence"] == sequence
    assert deployment["config_digest"] == digest
    rows = {r["tls_id"]: r for r in deployment["push"]["results"]["controllers"]}
    for t in IDS:
        assert rows[t]["state"] == ("activated" if t in activated else "aborted")
        assert controllers.state[t][2] == 0  # nothing left staged
    staged_only = sorted(set(IDS) - activated)
    assert controllers.aborts == ([(sequence, staged_only)] if staged_only else [])
    # the current plan follows what runs; the next plan is above the interrupted one
    for t in IDS:
        expected = (
            timing(34, 22) if t in activated else IntersectionTiming.from_base(base_program(t))
        )
        assert runner.current[t] == expected
    assert runner.sequence == sequence
    assert find_interrupted(runner.ledger) is None
    assert reconcile(runner.ledger, controllers, signer).needed is False  # once only
    _verify(runner.ledger.path, signer)
    runner.close()


def test_unreachable_controllers_are_never_claimed_aborted(tmp_path: Path) -> None:
    controllers, signer = Controllers(), SoftwareSigner()
    sequence, _ = crash_mid_push(tmp_path, controllers, signer, set())
    controllers.down = {"J002"}
    runner, _ = runner_for(tmp_path, controllers, signer)
    report = recover(runner, controllers, settle_interrupted=True)
    assert report.result == "recovered-partial"
    rows = {r["tls_id"]: r["state"] for r in report.rows}
    assert rows == {"J000": "aborted", "J001": "aborted", "J002": "unreachable"}
    runner.close()


def test_no_readable_controller_refuses_to_start_and_writes_nothing(tmp_path: Path) -> None:
    controllers, signer = Controllers(), SoftwareSigner()
    crash_mid_push(tmp_path, controllers, signer, set())
    controllers.down = set(IDS)
    runner, _ = runner_for(tmp_path, controllers, signer)
    size = runner.ledger.size()
    with pytest.raises(ActuationError, match="no controller can be read"):
        recover(runner, controllers, settle_interrupted=True)
    assert runner.ledger.size() == size and find_interrupted(runner.ledger) is not None
    runner.close()


def test_a_reload_does_not_settle_a_push_in_flight(tmp_path: Path) -> None:
    controllers, signer = Controllers(), SoftwareSigner()
    sequence, _ = crash_mid_push(tmp_path, controllers, signer, set())
    runner, _ = runner_for(tmp_path, controllers, signer)
    report = recover(runner, controllers, settle_interrupted=False)
    assert not report.needed and runner.ledger.find("deployment") == []
    assert controllers.aborts == [] and runner.sequence == sequence  # still never reused
    runner.close()


def test_controllers_ahead_of_the_ledger_raise_the_next_sequence(tmp_path: Path) -> None:
    controllers, signer = Controllers(), SoftwareSigner()
    for t in IDS:
        controllers.state[t] = [7, "x" * 64, 0, ""]
    controllers.state["J001"][2:] = [9, "y" * 64]
    runner, _ = runner_for(tmp_path, controllers, signer)
    report = recover(runner, controllers, settle_interrupted=True)
    assert not report.needed and report.highest_sequence == 9 and runner.sequence == 9
    runner.close()


def test_a_push_call_that_fails_is_settled_by_read_back(tmp_path: Path) -> None:
    """The actuator's call timed out mid-push in a running daemon: the record says what runs."""
    controllers, signer = Controllers(), SoftwareSigner()
    runner, _ = runner_for(tmp_path, controllers, signer)

    def push(envelope: bytes, sequence: int) -> Any:
        config = TimingConfiguration.model_validate(
            runner.ledger.latest("cycle").body["configuration"]  # type: ignore[union-attr]
        )
        for t in IDS:
            controllers.state[t][2:] = [sequence, config.digest()]
        controllers.state["J001"] = [sequence, config.digest(), 0, ""]
        raise ActuationError("controller operation took longer than 120.0s")

    controllers.on_push = push
    report = runner.run_cycle(SLOT, threading.Event())
    assert not report.deployed and report.failed_stage == "push"
    deployment = runner.ledger.find("deployment")[-1].body
    assert deployment["result"] == "partial" and deployment["push"]["results"]["settled"]
    assert all(controllers.state[t][2] == 0 for t in IDS)  # the staged ones were aborted
    assert runner.current["J001"] == timing(34, 22)
    assert runner.current["J000"] == IntersectionTiming.from_base(base_program("J000"))
    assert runner.sequence == report.sequence
    _verify(runner.ledger.path, signer)
    runner.close()


def test_a_port_that_raises_records_an_unknown_result_and_spends_the_sequence(
    tmp_path: Path,
) -> None:
    controllers, signer = Controllers(), SoftwareSigner()
    runner, _ = runner_for(tmp_path, controllers, signer)

    class Broken:
        def observe(self) -> Observation:
            return Observation(1000.0, {}, 240.0, {}, {})

        def deploy(self, *args: Any) -> Any:
            raise RuntimeError("socket closed")

    runner.fleet = Broken()
    report = runner.run_cycle(SLOT, threading.Event())
    assert not report.deployed and report.failed_stage == "push"
    deployment = runner.ledger.find("deployment")[-1].body
    assert deployment["result"] == "unknown" and "socket closed" in deployment["push"]["message"]
    nxt = runner.run_cycle(datetime(2026, 11, 23, 11, 4, tzinfo=UTC), threading.Event())
    assert nxt.sequence == (report.sequence or 0) + 1
    runner.close()


def test_snapshot_fields_match_the_real_client() -> None:
    """The fake's snapshot has the fields reconciliation reads from ``ControllerSnapshot``."""
    from actuation.client import ControllerSnapshot

    fields: Mapping[str, Any] = ControllerSnapshot.__dataclass_fields__
    for name in ("tls_id", "reachable", "active_sequence", "active_digest", "staged_sequence"):
        assert name in fields and name in Snap.__dataclass_fields__
