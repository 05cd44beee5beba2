"""ControllerCore: every acceptance check, activation, abort and expiry, without OPC UA."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta

import pytest

from actuation._verify import TrustedKeys
from actuation.contract import PLAN_STATUS_TEXT, PlanStatus
from actuation.core import ControllerCore, ControllerProvisioning, SignalField
from configs.timing import NetworkRef
from hsm.envelope import sign_envelope
from tests.support.actuation_fleet import (
    LIMITS,
    NETWORK,
    FakeField,
    base_program,
    configuration,
    signed,
    timing,
)
from tests.support.softkeys import SoftwareSigner


@pytest.fixture(scope="module")
def signer() -> SoftwareSigner:
    return SoftwareSigner()


def make_core(signer: SoftwareSigner, ttl_s: float = 120.0) -> tuple[ControllerCore, FakeField]:
    field = FakeField(speed=0.0)
    prov = ControllerProvisioning(
        tls_id="J1",
        base=base_program("J1"),
        limits=LIMITS,
        network=NETWORK,
        trusted_keys=TrustedKeys.from_pem([signer.public_key_pem()]),
        staged_ttl_s=ttl_s,
    )
    return ControllerCore(prov, field), field


def test_fake_field_satisfies_the_port() -> None:
    assert isinstance(FakeField(), SignalField)


def test_every_status_has_a_meaning() -> None:
    assert set(PLAN_STATUS_TEXT) == set(PlanStatus)


def test_stage_activate_read_state(signer: SoftwareSigner) -> None:
    core, field = make_core(signer)
    config = configuration(5, {"J1": timing(), "J2": timing()})
    result = core.stage(signed(signer, config))
    assert result.ok, result.message
    assert core.state.staged is not None and core.state.staged.digest == config.digest()
    assert core.state.active_sequence == 0
    assert field.applied == []
    result = core.activate(5, field.field_time_s() + 30)
    assert result.ok, result.message
    assert core.state.active_sequence == 5
    assert core.state.active_digest == config.digest()
    assert core.state.staged is None
    assert field.applied == [("J1", timing(), field.field_time_s() + 30)]


def _tamper_signature(envelope: bytes) -> bytes:
    doc = json.loads(envelope)
    sig = bytearray(base64.b64decode(doc["signatures"][0]["sig"]))
    sig[-1] ^= 0x01
    doc["signatures"][0]["sig"] = base64.b64encode(bytes(sig)).decode()
    return json.dumps(doc).encode()


def _tamper_payload(envelope: bytes) -> bytes:
    doc = json.loads(envelope)
    payload = base64.b64decode(doc["payload"]).replace(b'"cycle_s":64', b'"cycle_s":65', 1)
    doc["payload"] = base64.b64encode(payload).decode()
    return json.dumps(doc).encode()


def test_each_rejection_has_its_status(signer: SoftwareSigner) -> None:
    core, field = make_core(signer)
    ok_config = configuration(3, {"J1": timing()})
    good = signed(signer, ok_config)
    past = datetime.now(UTC) - timedelta(hours=2)
    future = datetime.now(UTC) + timedelta(hours=2)
    cases: list[tuple[bytes, PlanStatus]] = [
        (b"\x00\xffnot json", PlanStatus.MALFORMED_ENVELOPE),
        (b"{}", PlanStatus.MALFORMED_ENVELOPE),
        (_tamper_signature(good), PlanStatus.BAD_SIGNATURE),
        (_tamper_payload(good), PlanStatus.BAD_SIGNATURE),
        (signed(SoftwareSigner(), ok_config), PlanStatus.UNKNOWN_KEY),
        (
            sign_envelope(signer, ok_config.canonical_bytes(), "application/json").to_json(),
            PlanStatus.WRONG_PAYLOAD_TYPE,
        ),
        (sign_envelope(signer, b'{"schema": "nope"}').to_json(), PlanStatus.SCHEMA_INVALID),
        (
            signed(
                signer,
                configuration(3, {"J1": timing()}, network=NetworkRef(id="x", sha256="0" * 64)),
            ),
            PlanStatus.OTHER_NETWORK,
        ),
        (signed(signer, configuration(3, {"J9": timing()})), PlanStatus.INTERSECTION_MISSING),
        (
            signed(
                signer,
                configuration(
                    3, {"J1": timing()}, valid_from=past, valid_until=past + timedelta(hours=1)
                ),
            ),
            PlanStatus.VALIDITY_PASSED,
        ),
        (
            signed(
                signer,
                configuration(
                    3, {"J1": timing()}, valid_from=future, valid_until=future + timedelta(hours=1)
                ),
            ),
            PlanStatus.VALIDITY_NOT_YET,
        ),
        (signed(signer, configuration(3, {"J1": timing(green1=3)})), PlanStatus.UNSAFE_TIMING),
    ]
    for data, expected in cases:
        result = core.stage(data)
        assert result.status is expected, (expected, result)
        assert core.state.staged is None
    assert field.applied == []
    # A replay: the active plan's own envelope again, and an older one.
    assert core.stage(good).ok
    assert core.activate(3, field.field_time_s() + 10).ok
    assert core.stage(good).status is PlanStatus.SEQUENCE_NOT_ABOVE_ACTIVE
    older = signed(signer, configuration(2, {"J1": timing()}))
    assert core.stage(older).status is PlanStatus.SEQUENCE_NOT_ABOVE_ACTIVE


def test_unsafe_message_names_invariants(signer: SoftwareSigner) -> None:
    core, _ = make_core(signer)
    result = core.stage(signed(signer, configuration(1, {"J1": timing(green1=3, green2=90)})))
    assert result.status is PlanStatus.UNSAFE_TIMING
    assert "min_green" in result.message
    assert "max_split_change" in result.message


def test_split_change_is_checked_against_the_active_plan(signer: SoftwareSigner) -> None:
    core, field = make_core(signer)
    assert core.stage(signed(signer, configuration(1, {"J1": timing(40, 20)}))).ok
    assert core.activate(1, field.field_time_s() + 5).ok
    # 40 -> 25 is 15 s: allowed; 40 -> 24 is 16 s: refused (max_split_change_s = 15).
    assert core.stage(signed(signer, configuration(2, {"J1": timing(24, 20)}))).status is (
        PlanStatus.UNSAFE_TIMING
    )
    assert core.stage(signed(signer, configuration(2, {"J1": timing(25, 20)}))).ok


def test_activation_errors(signer: SoftwareSigner) -> None:
    core, field = make_core(signer)
    assert core.activate(1, field.field_time_s() + 5).status is PlanStatus.NOTHING_STAGED
    assert core.stage(signed(signer, configuration(1, {"J1": timing()}))).ok
    assert core.activate(2, field.field_time_s() + 5).status is PlanStatus.SEQUENCE_MISMATCH
    assert core.activate(1, field.field_time_s() - 1).status is PlanStatus.ACTIVATION_IN_PAST
    assert core.activate(1, float("nan")).status is PlanStatus.ACTIVATION_IN_PAST
    assert core.state.active_sequence == 0 and field.applied == []


def test_abort(signer: SoftwareSigner) -> None:
    core, field = make_core(signer)
    assert core.abort(1).status is PlanStatus.NOTHING_STAGED
    assert core.stage(signed(signer, configuration(1, {"J1": timing()}))).ok
    assert core.abort(7).status is PlanStatus.SEQUENCE_MISMATCH
    assert core.abort(1).ok
    assert core.state.staged is None
    assert core.activate(1, field.field_time_s() + 5).status is PlanStatus.NOTHING_STAGED


def test_staged_plan_expires(signer: SoftwareSigner) -> None:
    core, field = make_core(signer, ttl_s=120)
    assert core.stage(signed(signer, configuration(1, {"J1": timing()}))).ok
    field.advance(121)
    result = core.activate(1, field.field_time_s() + 5)
    assert result.status is PlanStatus.STAGED_EXPIRED
    assert core.state.staged is None and field.applied == []


def test_field_failure_is_internal_error(signer: SoftwareSigner) -> None:
    core, field = make_core(signer)

    def broken(*args: object) -> None:
        raise RuntimeError("SUMO gone")

    field.apply = broken  # type: ignore[method-assign]
    assert core.stage(signed(signer, configuration(1, {"J1": timing()}))).ok
    result = core.activate(1, field.field_time_s() + 5)
    assert result.status is PlanStatus.INTERNAL_ERROR
    assert core.state.active_sequence == 0
