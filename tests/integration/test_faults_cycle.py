"""Faults inside the cycle: the HSM goes away, the ledger's disk is full.

Each uses the real component where the fault lives (a SoftHSM2 token through
``HsmSigner``; the SQLite ledger), with fakes for the field, twin and proposer.
A failed cycle must push nothing, record what happened (where it can), and the
next cycle after the fault is gone must work without a restart.

python-pkcs11 loads SoftHSM once per process with one ``SOFTHSM2_CONF``: the
token here is module-scoped and every signer is closed when the module ends, so
the other SoftHSM test module can switch the configuration afterwards.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import threading
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from configs.outcomes import PushOutcome
from configs.safety import Proposal, project
from configs.timing import IntersectionTiming, NetworkRef, SafetyLimits, TimingConfiguration
from controller.cycle import CycleRunner, DeployOutcome, Observation, WhatIfSummary
from controller.gate import CandidateOutcome
from controller.ledger import Ledger, verify_ledger
from hsm import HsmSigner, ProvisionResult, provision_softhsm
from hsm.token import acquire_module
from hsm.verify import load_public_key
from tests.support.cycle_ports import make_runner as support_runner
from tests.support.softkeys import SoftwareSigner
from tests.support.timings import two_stage_base

SOFTHSM = Path("/usr/lib/softhsm/libsofthsm2.so")

pytestmark = [pytest.mark.integration]

BASE = two_stage_base()
NET = NetworkRef(id="faults", sha256="f" * 64)


class RecordingField:
    """A field that records pushes and checks the 'pushing' record is already in the ledger."""

    def __init__(self) -> None:
        self.ledger: Ledger | None = None
        self.pushed: list[int] = []
        self.active = 0

    def observe(self) -> Observation:
        return Observation(
            field_time_s=1000.0,
            counts={"d1": 12.0},
            interval_s=240.0,
            active={"J1": (self.active, "")},
            measurements={"J1": (20.0, 1500.0)},
        )

    def deploy(self, envelope: bytes, config: TimingConfiguration, align_s: int) -> DeployOutcome:
        assert self.ledger is not None
        last = self.ledger.latest("cycle")
        # the ordering the crash recovery relies on: recorded first, pushed second
        assert last is not None and last.body["outcome"] == "pushing"
        assert last.body["configuration"]["sequence"] == config.sequence
        self.pushed.append(config.sequence)
        self.active = config.sequence
        return DeployOutcome(PushOutcome.ACTIVATED)


class PassingTwin:
    def estimate(self, observation: Observation) -> tuple[Mapping[str, Any], str]:
        return {"routes": []}, "d" * 64

    def whatif(
        self, demand: Any, current: Any, candidates: Mapping[str, Any], cancel: threading.Event
    ) -> WhatIfSummary:
        outcomes = tuple(
            CandidateOutcome(n, -0.2, (-0.22, -0.18), 0.0, (0.0, 0.0)) for n in candidates
        )
        return WhatIfSummary(outcomes, {"plans": sorted(candidates)}, 600, (1, 2, 3))


class Proposer:
    def __init__(self) -> None:
        self.calls = 0

    def propose(
        self, observation: Observation, demand: Any, current: Any
    ) -> tuple[dict[str, dict[str, IntersectionTiming]], str | None]:
        self.calls += 1
        greens = [33.0, 27.0] if self.calls % 2 else [31.0, 29.0]
        return {"policy": {"J1": project("J1", Proposal(greens), BASE, SafetyLimits())}}, None

    def screen(self, candidates: Any, keep: int) -> Any:
        return candidates


def make_runner(tmp_path: Path, signer: Any) -> tuple[CycleRunner, RecordingField]:
    field = RecordingField()
    runner, ledger, _ = support_runner(
        tmp_path, field, PassingTwin(), Proposer(), signer=signer, enrol=True
    )
    field.ledger = ledger
    return runner, field


def slot(minute: int) -> datetime:
    return datetime(2026, 11, 23, 9, minute, tzinfo=UTC)


def verify(runner: CycleRunner, signer: Any) -> None:
    result = verify_ledger(runner.ledger.path, [load_public_key(signer.public_key_pem())])
    assert result.ok, result.first_problem


# --------------------------------------------------------------------------- HSM


@pytest.fixture(scope="module")
def token(tmp_path_factory: pytest.TempPathFactory) -> ProvisionResult:
    if not SOFTHSM.is_file():
        pytest.skip("SoftHSM2 (Debian softhsm2) not installed")
    return provision_softhsm(tmp_path_factory.mktemp("faults-hsm"))


@pytest.fixture()
def hsm_signer(token: ProvisionResult) -> Iterator[HsmSigner]:
    with HsmSigner(token.params) as signer:
        yield signer


def _assert_failed_at_sign(runner: CycleRunner, field: RecordingField, minute: int) -> str:
    pushed = list(field.pushed)
    report = runner.run_cycle(slot(minute), threading.Event())
    assert not report.deployed and report.failed_stage == "sign", report.error
    assert report.hsm_errors >= 1  # signaltwin_hsm_errors_total
    assert field.pushed == pushed  # nothing pushed
    body = runner.ledger.latest("cycle").body  # type: ignore[union-attr]
    assert body["outcome"] == "failed" and body["report"]["failed_stage"] == "sign"
    assert "envelope" not in body
    return str(body["report"]["error"])


def test_token_removed_fails_at_sign_and_the_next_cycle_signs_again(
    hsm_signer: HsmSigner, token: ProvisionResult, tmp_path: Path
) -> None:
    runner, field = make_runner(tmp_path, hsm_signer)
    assert runner.run_cycle(slot(0), threading.Event()).deployed
    tokens = token.params.softhsm_conf.parent / "tokens"  # type: ignore[union-attr]
    away = tokens.with_name("tokens.removed")
    shutil.move(tokens, away)
    try:
        error = _assert_failed_at_sign(runner, field, 4)
        assert "TokenUnavailableError" in error and "unavailable" in error
    finally:
        shutil.move(away, tokens)
    report = runner.run_cycle(slot(8), threading.Event())  # no restart: the signer reopens
    assert report.deployed and report.sequence == 2 and field.pushed == [1, 2]
    verify(runner, hsm_signer)
    runner.close()


def test_lost_session_is_reopened_within_the_cycle(
    hsm_signer: HsmSigner, token: ProvisionResult, tmp_path: Path
) -> None:
    """A module error that drops every session: the signer reopens and the cycle deploys."""
    runner, field = make_runner(tmp_path, hsm_signer)
    lease = acquire_module(token.params.module, token.params.softhsm_conf)
    try:
        lease.reinitialize()  # every session of the process is gone now
    finally:
        lease.release()
    report = runner.run_cycle(slot(0), threading.Event())
    assert report.deployed and field.pushed == [1]
    verify(runner, hsm_signer)
    runner.close()


def test_wrong_pin_at_run_time_fails_at_sign_until_it_is_fixed(
    token: ProvisionResult, tmp_path: Path
) -> None:
    pin = tmp_path / "pin"
    good = Path(token.params.pin_file).read_text()
    pin.write_text(good)
    params = dataclasses.replace(token.params, pin_file=pin)
    with HsmSigner(params) as signer:
        runner, field = make_runner(tmp_path, signer)
        pin.write_text("000000\n")  # an operator rotated the PIN file wrongly
        lease = acquire_module(params.module, params.softhsm_conf)
        try:
            lease.reinitialize()  # the session is lost: the signer must log in again
        finally:
            lease.release()
        error = _assert_failed_at_sign(runner, field, 0)
        assert "Pin" in error or "PIN" in error
        pin.write_text(good)
        report = runner.run_cycle(slot(4), threading.Event())
        assert report.deployed and field.pushed == [report.sequence]
        verify(runner, signer)
        runner.close()


# --------------------------------------------------------------------------- ledger disk full


def test_full_ledger_disk_pushes_nothing_and_keeps_stored_records(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    signer = SoftwareSigner()
    runner, field = make_runner(tmp_path, signer)
    assert runner.run_cycle(slot(0), threading.Event()).deployed
    ledger = runner.ledger
    before = list(ledger.raw_records())
    root = ledger.root()
    checkpoints = len(ledger.raw_checkpoints())
    conn = ledger._conn  # noqa: SLF001 - a full disk, simulated on the ledger's own connection
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count = {pages}")
    with caplog.at_level(logging.ERROR, logger="controller.cycle"):
        report = runner.run_cycle(slot(4), threading.Event())
    assert not report.ok and not report.deployed
    assert report.failed_stage == "record"  # the 'pushing' record could not be written ...
    assert field.pushed == [1]  # ... so nothing was pushed
    assert "full" in (report.error or "")
    assert any("could not record cycle" in r.getMessage() for r in caplog.records)
    assert list(ledger.raw_records()) == before and ledger.root() == root
    assert len(ledger.raw_checkpoints()) == checkpoints
    assert not ledger.integrity_problems()
    verify(runner, signer)
    # space again: the next cycle deploys and records
    conn.execute("PRAGMA max_page_count = 1073741823")
    again = runner.run_cycle(slot(8), threading.Event())
    assert again.deployed and field.pushed == [1, again.sequence]
    verify(runner, signer)
    runner.close()


def test_disk_full_after_the_push_records_the_deployment_first_thing_next_cycle(
    tmp_path: Path,
) -> None:
    signer = SoftwareSigner()
    runner, field = make_runner(tmp_path, signer)
    ledger = runner.ledger
    conn = ledger._conn  # noqa: SLF001 - a full disk, simulated on the ledger's own connection
    deploy = field.deploy

    def deploy_then_fill(envelope: bytes, config: TimingConfiguration, align_s: int) -> Any:
        out = deploy(envelope, config, align_s)
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        conn.execute(f"PRAGMA max_page_count = {pages}")  # full right after the push
        return out

    field.deploy = deploy_then_fill  # type: ignore[method-assign]
    report = runner.run_cycle(slot(0), threading.Event())
    assert report.failed_stage == "record" and not report.ok and field.pushed == [1]
    assert ledger.find("deployment") == []  # the push happened; its record could not land
    # still full: the next cycle pushes nothing while it cannot record
    field.deploy = deploy  # type: ignore[method-assign]
    blocked = runner.run_cycle(slot(4), threading.Event())
    assert blocked.failed_stage == "record" and field.pushed == [1]
    # space again: the missing deployment record is written first, then the cycle runs
    conn.execute("PRAGMA max_page_count = 1073741823")
    again = runner.run_cycle(slot(8), threading.Event())
    assert again.deployed and field.pushed == [1, 2]
    deployments = [r.body for r in ledger.find("deployment")]
    assert [(d["sequence"], d["result"]) for d in deployments] == [(1, "deployed"), (2, "deployed")]
    assert (
        runner.current["J1"]
        == TimingConfiguration.model_validate(deployments[-1]["configuration"]).intersections["J1"]
    )
    verify(runner, signer)
    runner.close()
