"""Fuzz the controller's acceptance checks: random and mutated envelopes are all refused.

1000+ hypothesis examples go straight into :meth:`ControllerCore.check_envelope`
(the function StagePlan runs); a few hundred more go through the real OPC UA
method in tests/integration/test_actuation_fleet.py.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from actuation._verify import TrustedKeys
from actuation.contract import PlanStatus
from actuation.core import ControllerCore, ControllerProvisioning
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

SIGNER = SoftwareSigner()
STRANGER = SoftwareSigner()
CONFIG = configuration(7, {"J1": timing(), "J2": timing()})
GOOD = signed(SIGNER, CONFIG)
GOOD_OBJ = json.loads(GOOD)


def make_core() -> ControllerCore:
    prov = ControllerProvisioning(
        tls_id="J1",
        base=base_program("J1"),
        limits=LIMITS,
        network=NETWORK,
        trusted_keys=TrustedKeys.from_pem([SIGNER.public_key_pem()]),
    )
    return ControllerCore(prov, FakeField(speed=0.0))


CORE = make_core()

pytestmark = pytest.mark.slow


def test_the_unmutated_envelope_is_accepted() -> None:
    result, staged = CORE.check_envelope(GOOD)
    assert result.ok and staged is not None


def _refused(data: bytes) -> None:
    result, staged = CORE.check_envelope(data)
    assert result.status is not PlanStatus.OK, result
    assert result.status is not PlanStatus.INTERNAL_ERROR, result
    assert staged is None
    assert CORE.state.staged is None and CORE.state.active_sequence == 0


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=4096))
def test_random_bytes_are_refused(data: bytes) -> None:
    _refused(data)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(st.integers(0, len(GOOD) - 1), st.integers(0, 255), st.sampled_from("rid")),
        min_size=1,
        max_size=6,
    ),
    st.integers(0, len(GOOD)),
)
def test_mutated_envelopes_are_refused(edits: list[tuple[int, int, str]], cut: int) -> None:
    data = bytearray(GOOD)
    for position, byte, kind in edits:
        position = min(position, len(data) - 1) if data else 0
        if kind == "r" and data:
            data[position] = byte
        elif kind == "i":
            data.insert(position, byte)
        elif data:
            del data[position]
    if cut < len(GOOD) // 2:
        data = data[: len(data) - cut]
    try:
        same = json.loads(bytes(data)) == GOOD_OBJ
    except (ValueError, UnicodeDecodeError, RecursionError):
        same = False
    assume(not same)  # whitespace-only edits leave the very same signed document
    _refused(bytes(data))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(json_values)
def test_signed_garbage_documents_are_refused(doc: object) -> None:
    payload = json.dumps(doc).encode()
    _refused(sign_envelope(SIGNER, payload).to_json())


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(1, 200), st.integers(1, 200), st.integers(0, 300))
def test_valid_documents_by_a_stranger_are_refused(g1: int, g2: int, offset: int) -> None:
    config = configuration(9, {"J1": timing(g1, g2, offset_s=0)})
    result, _ = CORE.check_envelope(signed(STRANGER, config))
    assert result.status is PlanStatus.UNKNOWN_KEY
