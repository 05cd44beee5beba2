"""Faults during a real push: a controller down or slow, and ``kill -9`` mid-push.

The controllers are real emulated OPC UA controllers on 127.0.0.1 (four on one
event loop, one "slow" one on its own loop so that blocking it blocks only it),
the push goes through the daemon's real field port (``OpcUaFleet``
over ``ThreadedActuator``), the ledger is the real SQLite ledger; only the twin
and the proposer are fakes. The crash tests run the daemon's cycle in a child
process, SIGKILL it while the push is in flight, and restart it in a fresh
process, which settles the interrupted push (``controller.recovery``) and runs
the next cycle.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from actuation import ThreadedActuator
from actuation.core import PlanResult, PlanStatus
from actuation.emulated import EmulatedController, EmulatedFleet
from actuation.users import PasswordHash
from controller.cycle import CycleRunner, Observation, WhatIfSummary
from controller.gate import CandidateOutcome
from controller.ledger import Ledger, verify_ledger
from controller.recovery import recover
from controller.wiring import OpcUaFleet
from hsm.verify import load_public_key
from tests.support.actuation_fleet import (
    NETWORK,
    PASSWORD,
    FakeField,
    LoopThread,
    Pki,
    base_program,
    make_fleet,
    make_pki,
    make_pool,
    timing,
    tls_ids,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

IDS = tls_ids(5)
SLOW = IDS[-1]
ROOT = Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------------- fakes


class FileSigner:
    """An ECDSA P-256 signer whose key is in a PEM file (so a child process can sign too)."""

    def __init__(self, path: Path) -> None:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        self._key = key
        from hashlib import sha256

        der = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self.keyid = sha256(der).hexdigest()

    def public_key_pem(self) -> bytes:
        return self._key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def sign(self, data: bytes) -> bytes:
        from cryptography.hazmat.primitives import hashes

        return self._key.sign(data, ec.ECDSA(hashes.SHA256()))


class PassingTwin:
    """A twin that finds every candidate 20 % better on wait, NOx unchanged."""

    def estimate(self, observation: Observation) -> tuple[Mapping[str, Any], str]:
        return {"counts": dict(observation.counts)}, "d" * 64

    def whatif(
        self, demand: Any, current: Any, candidates: Mapping[str, Any], cancel: threading.Event
    ) -> WhatIfSummary:
        outcomes = tuple(
            CandidateOutcome(n, -0.2, (-0.22, -0.18), 0.0, (-0.001, 0.001)) for n in candidates
        )
        return WhatIfSummary(outcomes, {"plans": sorted(candidates)}, 600, (1, 2, 3))


class GreenProposer:
    """Proposes greens (34, 22) everywhere (within every safety limit of the base 30/26)."""

    def __init__(self, ids: list[str]) -> None:
        self.ids = ids

    def propose(self, observation: Any, demand: Any, current: Any) -> tuple[Any, str | None]:
        return {"policy": {t: timing(34, 22) for t in self.ids}}, "e" * 64

    def screen(self, candidates: Any, keep: int) -> Any:
        return candidates


def build_runner(
    ledger_path: Path, actuator: Any, signer: Any, ids: list[str], lead_s: float = 3.0
) -> CycleRunner:
    """The cycle as the daemon wires it, with the fake twin and proposer; recovered first."""
    from configs.settings import Settings, SimulationSettings

    settings = Settings(
        mode="auto",
        simulation=SimulationSettings(network=ledger_path.parent / "unused.net.xml"),
        state_dir=ledger_path.parent,
    )
    settings = settings.model_copy(
        update={
            "video": settings.video.model_copy(update={"enabled": False}),
            "controllers": settings.controllers.model_copy(update={"activate_lead_s": lead_s}),
        }
    )
    ledger = Ledger.open(ledger_path)
    ledger.enrol_key(signer)
    field_port = OpcUaFleet(actuator, settings)
    field_port.prime()
    runner = CycleRunner(
        settings,
        network=NETWORK,
        bases={t: base_program(t) for t in ids},
        fleet=field_port,
        twin=PassingTwin(),
        proposer=GreenProposer(ids),
        signer=signer,
        ledger=ledger,
        closers=[ledger],
    )
    recover(runner, actuator, settle_interrupted=True)
    return runner


# --------------------------------------------------------------------------- the fleet


@dataclass
class Fleet:
    loop: LoopThread
    slow_loop: LoopThread
    pki: Pki
    fleet: EmulatedFleet
    slow_fleet: EmulatedFleet
    actuator: ThreadedActuator
    key_path: Path
    signer: FileSigner

    def controllers(self) -> dict[str, EmulatedController]:
        return {**self.fleet.by_id(), **self.slow_fleet.by_id()}

    def all(self) -> EmulatedFleet:
        return EmulatedFleet([*self.fleet, *self.slow_fleet])

    def states(self) -> dict[str, tuple[int, int | None]]:
        """tls id -> (active sequence, staged sequence or None), read in-process."""
        out = {}
        for tls, ctl in self.controllers().items():
            staged = ctl.core.state.staged
            out[tls] = (ctl.core.state.active_sequence, None if staged is None else staged.sequence)
        return out

    def wait_settled(self, timeout_s: float = 5.0) -> None:
        """Wait until no controller has a plan staged (late stages/aborts landing)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if all(staged is None for _, staged in self.states().values()):
                return
            time.sleep(0.05)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    base = tmp_path_factory.mktemp("faults-fleet")
    pki = make_pki(base / "pki", IDS)
    key = ec.generate_private_key(ec.SECP256R1())
    key_path = base / "signing-key.pem"
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    signer = FileSigner(key_path)
    field = FakeField()
    ph = PasswordHash.create(PASSWORD)
    loop, slow_loop = LoopThread(), LoopThread()
    fast = make_fleet(pki, IDS[:-1], field, [signer.public_key_pem()], ph)
    slow = make_fleet(pki, [SLOW], field, [signer.public_key_pem()], ph)
    loop.run(fast.start())
    slow_loop.run(slow.start())
    both = EmulatedFleet([*fast, *slow])
    actuator = ThreadedActuator(
        lambda: make_pool(pki, both, call_timeout_s=1.0, activate_lead_s=3.0), start_wait_s=30
    )
    assert actuator.wait_connected(30)
    yield Fleet(loop, slow_loop, pki, fast, slow, actuator, key_path, signer)
    actuator.close()
    loop.run(fast.stop())
    slow_loop.run(slow.stop())
    loop.close()
    slow_loop.close()


def _slot(minute: int) -> datetime:
    return datetime(2026, 11, 23, 8, minute, tzinfo=UTC)


def _verify(ledger_path: Path, signer: FileSigner) -> None:
    result = verify_ledger(ledger_path, [load_public_key(signer.public_key_pem())])
    assert result.ok, result.first_problem


def _rows(deployment: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    return {r["tls_id"]: r for r in deployment["push"]["results"]["controllers"]}


# --------------------------------------------------------------------------- down / slow


def test_a_controller_down_during_a_push_aborts_everywhere_and_is_recorded(
    fleet: Fleet, tmp_path: Path
) -> None:
    runner = build_runner(tmp_path / "ledger.sqlite", fleet.actuator, fleet.signer, IDS)
    before = fleet.states()
    down = fleet.fleet.by_id()[IDS[1]]
    fleet.loop.run(down.stop())
    try:
        report = runner.run_cycle(_slot(0), threading.Event())
    finally:
        fleet.loop.run(down.start())
    assert not report.deployed and report.failed_stage == "push"
    assert "stage failed" in (report.error or "")
    # signaltwin_controller_up / signaltwin_opcua_errors_total{controller}
    assert report.controllers_up[IDS[1]] is False and report.controllers_up[IDS[0]] is True
    assert report.opcua_errors == {IDS[1]: 1}
    fleet.wait_settled()
    assert fleet.states() == before  # every controller on its old plan, nothing staged
    deployment = runner.ledger.find("deployment")[-1].body
    assert deployment["result"] == "aborted" and deployment["sequence"] == report.sequence
    rows = _rows(deployment)
    assert set(rows) == set(IDS)
    assert rows[IDS[1]]["error"] and rows[IDS[1]]["stage"]["status"] is None
    assert all(rows[t]["stage"]["name"] == "OK" for t in IDS if t != IDS[1])
    assert runner.ledger.find("cycle")[-1].body["outcome"] == "pushing"
    _verify(runner.ledger.path, fleet.signer)
    runner.close()
    assert fleet.actuator.wait_connected(30)


def test_a_slow_controller_during_a_push_aborts_everywhere_and_the_next_cycle_deploys(
    fleet: Fleet, tmp_path: Path
) -> None:
    runner = build_runner(tmp_path / "ledger.sqlite", fleet.actuator, fleet.signer, IDS)
    before = fleet.states()
    slow = fleet.slow_fleet.by_id()[SLOW]
    original = slow.core.stage

    def sluggish(data: bytes) -> PlanResult:
        time.sleep(1.5)  # past the 1 s call timeout; blocks only the slow controller
        return original(data)

    slow.core.stage = sluggish  # type: ignore[method-assign]
    try:
        report = runner.run_cycle(_slot(0), threading.Event())
    finally:
        slow.core.stage = original  # type: ignore[method-assign]
    assert not report.deployed and report.failed_stage == "push"
    fleet.wait_settled()
    assert fleet.states() == before
    deployment = runner.ledger.find("deployment")[-1].body
    assert deployment["result"] == "aborted"
    assert "timed out" in (_rows(deployment)[SLOW]["error"] or "")
    # the sequence is spent: the next cycle signs a higher one and deploys everywhere
    again = runner.run_cycle(_slot(4), threading.Event())
    assert again.deployed and again.sequence == (report.sequence or 0) + 1
    assert {a for a, _ in fleet.states().values()} == {again.sequence}
    _verify(runner.ledger.path, fleet.signer)
    runner.close()


# --------------------------------------------------------------------------- kill -9


CHILD = r"""
import json, sys, threading
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, sys.argv[2])
from test_faults_push import FileSigner, build_runner  # noqa: E402
from actuation import ThreadedActuator  # noqa: E402
from tests.support.actuation_fleet import ControllerTarget, make_pool  # noqa: E402

cfg = json.loads(Path(sys.argv[1]).read_text())
signer = FileSigner(Path(cfg["key"]))


def pool():
    from actuation import ClientCredentials, ControllerPool
    endpoints = [
        ControllerTarget(t, u, Path(c).read_bytes()) for t, u, c in cfg["endpoints"]
    ]
    creds = ClientCredentials(
        Path(cfg["cert"]), Path(cfg["client_key"]), cfg["user"], cfg["password"]
    )
    return ControllerPool(endpoints, creds, call_timeout_s=60.0, activate_lead_s=3.0)


actuator = ThreadedActuator(pool, start_wait_s=30)
runner = build_runner(Path(cfg["ledger"]), actuator, signer, cfg["ids"])
slot = datetime.fromisoformat(cfg["slot"])
report = runner.run_cycle(slot, threading.Event())
print(json.dumps(report.to_dict()), flush=True)
runner.close()
actuator.close()
"""


def _child(fleet: Fleet, tmp_path: Path, ledger: Path, slot: datetime) -> subprocess.Popen[str]:
    from tests.support.actuation_fleet import USER

    cfg = {
        "key": str(fleet.key_path),
        "ledger": str(ledger),
        "ids": IDS,
        "slot": slot.isoformat(),
        "endpoints": [
            [ctl.tls_id, ctl.url, str(fleet.pki.servers[ctl.tls_id].certificate)]
            for ctl in fleet.all()
        ],
        "cert": str(fleet.pki.client.certificate),
        "client_key": str(fleet.pki.client.private_key),
        "user": USER,
        "password": PASSWORD,
    }
    path = tmp_path / f"child-{slot:%H%M}.json"
    path.write_text(json.dumps(cfg))
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, str(script), str(path), str(Path(__file__).parent)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _pushing_sequence(ledger: Path) -> int | None:
    """The sequence of a 'pushing' cycle record, read straight from the SQLite file."""
    if not ledger.exists():
        return None
    conn = sqlite3.connect(f"{ledger.resolve().as_uri()}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT body FROM records WHERE kind = 'cycle'").fetchall()
    except sqlite3.Error:
        return None
    finally:
        conn.close()
    for (body,) in rows:
        doc = json.loads(bytes(body))["body"]
        if doc.get("outcome") == "pushing":
            return int(doc["configuration"]["sequence"])
    return None


def _wait(what: Callable[[], bool], timeout_s: float, child: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if what():
            return
        if child.poll() is not None:
            pytest.fail(f"child exited early: {child.communicate()}")
        time.sleep(0.02)
    child.kill()
    pytest.fail(f"timed out waiting; child said: {child.communicate()}")


def _block(
    ctl: EmulatedController, method: str, then_run: bool
) -> tuple[threading.Event, threading.Event, Callable[[], None]]:
    """Make ``ctl.core.<method>`` wait for a release (blocking only that controller's loop).

    Returns (entered, release, restore). After release the original method runs
    when ``then_run``; otherwise the call answers INTERNAL_ERROR and changes nothing.
    """
    original = getattr(ctl.core, method)
    entered, release = threading.Event(), threading.Event()

    def blocked(*args: Any) -> PlanResult:
        entered.set()
        release.wait(30)
        if then_run:
            return original(*args)  # type: ignore[no-any-return]
        return PlanResult(PlanStatus.INTERNAL_ERROR, "test: lost in the controller")

    setattr(ctl.core, method, blocked)
    return entered, release, lambda: setattr(ctl.core, method, original)


def _kill_restart_and_check(
    fleet: Fleet, tmp_path: Path, method: str, then_run: bool
) -> tuple[dict[str, Any], dict[str, Any], int]:
    ledger = tmp_path / "ledger.sqlite"
    slow = fleet.slow_fleet.by_id()[SLOW]
    old = fleet.states()
    entered, release, restore = _block(slow, method, then_run)
    child = _child(fleet, tmp_path, ledger, _slot(0))
    try:
        _wait(lambda: _pushing_sequence(ledger) is not None, 60, child)
        sequence = _pushing_sequence(ledger)
        assert sequence is not None
        _wait(entered.is_set, 30, child)
        # the four fast controllers have done the step the slow one is stuck in
        fast = [t for t in IDS if t != SLOW]
        if method == "stage":
            _wait(lambda: all(fleet.states()[t][1] == sequence for t in fast), 10, child)
        else:
            _wait(lambda: all(fleet.states()[t][0] == sequence for t in fast), 10, child)
        os.kill(child.pid, signal.SIGKILL)
        child.communicate(timeout=10)  # reaps it and closes its pipes
        assert child.returncode == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate(timeout=10)
        release.set()
        restore()
    # the slow controller finishes what it had received (a late stage lands)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and fleet.states()[SLOW][1] != sequence:
        time.sleep(0.05)
    assert fleet.states()[SLOW][1] == sequence, fleet.states()
    with Ledger.open(ledger, readonly=True) as view:
        assert view.find("deployment") == []  # the crash left 'pushing' without a deployment
    # restart: a fresh process settles the interrupted push, then runs the next cycle
    again = _child(fleet, tmp_path, ledger, _slot(4))
    out, err = again.communicate(timeout=90)
    assert again.returncode == 0, err[-4000:]
    report = json.loads(out.strip().splitlines()[-1])
    _verify(ledger, fleet.signer)
    with Ledger.open(ledger, readonly=True) as view:
        deployments = [r.body for r in view.find("deployment")]
        cycles = [r.body for r in view.find("cycle")]
    assert [d["sequence"] for d in deployments] == [sequence, sequence + 1]  # none reused
    assert len({d["envelope"]["payload"] for d in deployments}) == 2
    assert [c["outcome"] for c in cycles] == ["pushing", "pushing"]
    recovered, deployed = deployments
    assert recovered["recovered"] is True and recovered["cycle_index"] is not None
    assert deployed["result"] == "deployed" and report["deployed"] is True
    assert report["sequence"] == sequence + 1
    # every controller now runs the next plan and nothing is left staged
    fleet.wait_settled()
    assert fleet.states() == {t: (sequence + 1, None) for t in IDS}
    assert max(a for a, _ in old.values()) < sequence
    return recovered, deployed, sequence


def test_kill_9_after_staging_is_settled_at_restart_without_a_repush(
    fleet: Fleet, tmp_path: Path
) -> None:
    """Killed while the slow controller is still staging: the plan is aborted everywhere."""
    recovered, _, sequence = _kill_restart_and_check(fleet, tmp_path, "stage", then_run=True)
    assert recovered["result"] == "recovered-aborted"
    rows = _rows(recovered)
    assert {r["state"] for r in rows.values()} == {"aborted"}
    assert all(r["staged_sequence"] == sequence for r in rows.values())
    assert all(r["abort"]["status"] == 0 for r in rows.values())
    assert all(r["active_sequence"] < sequence for r in rows.values())


def test_kill_9_during_activation_is_settled_as_partial_at_restart(
    fleet: Fleet, tmp_path: Path
) -> None:
    """Killed while activating: four run the plan, the slow one only staged it (aborted)."""
    recovered, _, sequence = _kill_restart_and_check(fleet, tmp_path, "activate", then_run=False)
    assert recovered["result"] == "recovered-partial"
    rows = _rows(recovered)
    assert rows[SLOW]["state"] == "aborted" and rows[SLOW]["active_sequence"] < sequence
    assert all(rows[t]["state"] == "activated" for t in IDS if t != SLOW)
    assert all(rows[t]["readback"]["sequence"] == sequence for t in IDS if t != SLOW)


def test_a_fresh_ledger_signs_above_what_the_controllers_run(fleet: Fleet, tmp_path: Path) -> None:
    """A ledger restored from an old backup: the next sequence is above the controllers'."""
    if max(a for a, _ in fleet.states().values()) == 0:
        # alone (or first): the controllers run a plan from another ledger first
        earlier = build_runner(tmp_path / "earlier.sqlite", fleet.actuator, fleet.signer, IDS)
        assert earlier.run_cycle(_slot(7), threading.Event()).deployed
        earlier.close()
    running = max(a for a, _ in fleet.states().values())
    assert running > 0
    runner = build_runner(tmp_path / "ledger.sqlite", fleet.actuator, fleet.signer, IDS)
    assert runner.sequence >= running
    report = runner.run_cycle(_slot(8), threading.Event())
    assert report.deployed and report.sequence == running + 1
    runner.close()
