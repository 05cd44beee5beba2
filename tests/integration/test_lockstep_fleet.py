"""The lockstep fleet (evaluation's controllers): real SUMO field, real controller cores.

The field is the demo district on the ``traci`` backend; each light is driven by
the same :class:`~actuation.core.ControllerCore` the OPC UA controllers run, so
signature, network and sequence checks, two-phase staging and aligned
activation are the controllers' own. Envelopes are signed with a software key
(the cores trust whichever key they are given; the HSM has its own tests).
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from actuation._verify import TrustedKeys
from configs.outcomes import PushOutcome
from configs.timing import NetworkRef, SafetyLimits
from controller.lockstep import LockstepFleet, controller_cores
from rl.baselines import actuated_plans
from simulators.field import FieldConfig, FieldEmulator
from tests.support.actuation_fleet import configuration, signed
from tests.support.softkeys import SoftwareSigner

pytestmark = pytest.mark.integration

LEAD_S = 10.0
ALIGN_S = 30


@pytest.fixture
def fleet(tmp_path: Path):  # type: ignore[no-untyped-def]
    signer = SoftwareSigner()
    field = FieldEmulator(
        FieldConfig.for_district(seed=3, backend="traci", work_dir=tmp_path / "field")
    ).start()
    ref = NetworkRef(id="district", sha256=field.network.sha256)
    cores = controller_cores(
        field,
        trusted=TrustedKeys.from_pem([signer.public_key_pem()]),
        limits_for=lambda _: SafetyLimits(),
        network=ref,
        state_dir=tmp_path / "controllers",
    )
    try:
        yield LockstepFleet(field, cores, LEAD_S), signer, ref
    finally:
        field.close()


def _plans(fleet: LockstepFleet, n: int):  # type: ignore[no-untyped-def]
    plans = actuated_plans(fleet.field.network.base_programs(), SafetyLimits())
    return dict(sorted(plans.items())[:n])


def test_deploy_stages_everywhere_then_activates_at_one_aligned_time(fleet) -> None:  # type: ignore[no-untyped-def]
    lockstep, signer, ref = fleet
    now = lockstep.field.step_until(lockstep.field.field_time_s + 95.0)
    plans = _plans(lockstep, 3)
    config = configuration(1, plans, network=ref)
    outcome = lockstep.deploy(signed(signer, config), config, ALIGN_S)
    assert outcome.outcome == PushOutcome.ACTIVATED, outcome.message
    assert outcome.running == frozenset(plans)
    at = outcome.activate_at_field_time_s
    assert at is not None and at % ALIGN_S == 0 and now + LEAD_S <= at < now + LEAD_S + ALIGN_S
    lockstep.field.step_until(at + 1)
    for tls, plan in plans.items():
        active = lockstep.field.active_plan(tls)
        assert active.timing == plan and active.applied_at_s == pytest.approx(at)
        assert lockstep.cores[tls].state.active_sequence == 1
    in_force = lockstep.plans_in_force()
    assert {t: in_force[t] for t in plans} == plans


def test_a_tampered_envelope_is_refused_and_nothing_changes(fleet) -> None:  # type: ignore[no-untyped-def]
    lockstep, signer, ref = fleet
    plans = _plans(lockstep, 2)
    config = configuration(2, plans, network=ref)
    doc = json.loads(signed(signer, config))
    sig = bytearray(base64.b64decode(doc["signatures"][0]["sig"]))
    sig[-1] ^= 0x01
    doc["signatures"][0]["sig"] = base64.b64encode(bytes(sig)).decode()
    before = {t: lockstep.field.active_plan(t).timing for t in plans}
    outcome = lockstep.deploy(json.dumps(doc).encode(), config, ALIGN_S)
    assert outcome.outcome == PushOutcome.ABORTED
    assert set(outcome.errors) == set(plans)
    lockstep.field.step_until(lockstep.field.field_time_s + LEAD_S + ALIGN_S + 1)
    for tls in plans:
        assert lockstep.cores[tls].state.active_sequence == 0
        assert lockstep.cores[tls].state.staged is None
        assert lockstep.field.active_plan(tls).timing == before[tls]


def test_one_light_without_a_controller_aborts_the_others(fleet) -> None:  # type: ignore[no-untyped-def]
    lockstep, signer, ref = fleet
    plans = _plans(lockstep, 2)
    missing = next(iter(plans))
    lockstep.cores.pop(missing)
    config = configuration(3, plans, network=ref)
    outcome = lockstep.deploy(signed(signer, config), config, ALIGN_S)
    assert outcome.outcome == PushOutcome.ABORTED
    assert missing in outcome.errors
    for tls in set(plans) - {missing}:
        core = lockstep.cores[tls]
        assert core.state.staged is None and core.state.active_sequence == 0


def test_observe_reports_the_count_increase_since_the_last_observation(fleet) -> None:  # type: ignore[no-untyped-def]
    lockstep, _, _ = fleet
    t0 = lockstep.field.step_until(lockstep.field.field_time_s + 60.0)
    lockstep.prime()
    start = {d: r.count for d, r in lockstep.field.detector_counts().readings.items()}
    lockstep.field.step_until(t0 + 180.0)
    observation = lockstep.observe()
    end = {d: r.count for d, r in lockstep.field.detector_counts().readings.items()}
    assert observation.interval_s == pytest.approx(180.0)
    assert observation.counts == {d: float(end[d] - start[d]) for d in end}
    assert sum(observation.counts.values()) > 0
    assert set(observation.active) == set(lockstep.cores)
    assert observation.counters is not None
