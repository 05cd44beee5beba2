"""Issue 14 at the controller core: strict documents, shadow intent, validity cap,
clock skew, activation lead and ordering, and the active plan kept across restarts."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from actuation._verify import TrustedKeys
from actuation.contract import PlanStatus
from actuation.core import ControllerCore, ControllerProvisioning
from actuation.documents import parse_strict
from configs.digests import canonical_json
from configs.errors import ConfigError
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


def make_core(
    state_dir: Path | None = None, field: FakeField | None = None, **kwargs: Any
) -> tuple[ControllerCore, FakeField]:
    field = field or FakeField(speed=0.0)
    prov = ControllerProvisioning(
        tls_id="J1",
        base=base_program("J1"),
        limits=LIMITS,
        network=NETWORK,
        trusted_keys=TrustedKeys.from_pem([SIGNER.public_key_pem()]),
        state_dir=state_dir,
        **kwargs,
    )
    return ControllerCore(prov, field), field


def sign_payload(payload: bytes) -> bytes:
    return sign_envelope(SIGNER, payload).to_json()


def good_doc(sequence: int = 3) -> dict[str, Any]:
    return json.loads(configuration(sequence, {"J1": timing()}).canonical_bytes())


# --------------------------------------------------------------------------- strict documents


def test_duplicate_keys_are_refused() -> None:
    core, _ = make_core()
    payload = canonical_json(good_doc())
    # The same sequence key twice: json keeps the last one (7), another reader the first.
    dup = payload.replace(b'"sequence":3', b'"sequence":3,"sequence":7')
    result = core.stage(sign_payload(dup))
    assert not result.ok, result
    assert result.status is PlanStatus.SCHEMA_INVALID
    assert "duplicate" in result.message


def test_non_canonical_bytes_are_refused() -> None:
    core, _ = make_core()
    pretty = json.dumps(good_doc(), indent=2, sort_keys=True).encode()
    result = core.stage(sign_payload(pretty))
    assert not result.ok, result
    assert result.status is PlanStatus.SCHEMA_INVALID
    assert "canonical" in result.message


@pytest.mark.parametrize("loose", ["30", 30.0, True])
def test_loose_types_are_refused(loose: object) -> None:
    core, _ = make_core()
    doc = good_doc()
    doc["intersections"]["J1"]["phases"][0]["duration_s"] = loose
    # Keep the cycle sum right for the numeric spellings of 30/34 so only the type is wrong.
    doc["intersections"]["J1"]["cycle_s"] = 60
    result = core.stage(sign_payload(canonical_json(doc)))
    assert not result.ok, result
    assert result.status is PlanStatus.SCHEMA_INVALID


def test_timestamp_spelt_otherwise_is_refused() -> None:
    core, _ = make_core()
    doc = good_doc()
    doc["valid_from"] = doc["valid_from"].replace("Z", "+00:00")
    result = core.stage(sign_payload(canonical_json(doc)))
    assert not result.ok, result
    assert result.status is PlanStatus.SCHEMA_INVALID


def test_the_canonical_document_is_accepted() -> None:
    core, _ = make_core()
    assert core.stage(sign_payload(canonical_json(good_doc()))).ok


_LOOSE = st.sampled_from(["7", 7.0, True, None, [7], {"v": 7}, 7.5, -1])


def _paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found: list[tuple[Any, ...]] = []
    if isinstance(doc, dict):
        for k, v in doc.items():
            found.extend(_paths(v, (*prefix, k)))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            found.extend(_paths(v, (*prefix, i)))
    else:
        found.append(prefix)
    return found


GOOD_DOC = good_doc(5)
LEAVES = _paths(GOOD_DOC)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(LEAVES),
    _LOOSE,
    st.sampled_from(["replace", "duplicate", "whitespace", "reorder"]),
)
def test_mutated_documents_are_never_read_differently(
    path: tuple[Any, ...], value: object, how: str
) -> None:
    """Any mutation is refused, or (only if it is a no-op) parses to the same document."""
    doc = json.loads(json.dumps(GOOD_DOC))
    if how == "replace":
        target = doc
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
        payload = canonical_json(doc)
    elif how == "duplicate":
        payload = canonical_json(doc).replace(b'{"', b'{"sequence":5,"', 1)
    elif how == "whitespace":
        payload = canonical_json(doc).replace(b",", b", ", 1)
    else:
        payload = json.dumps(dict(reversed(list(doc.items()))), separators=(",", ":")).encode()
    try:
        config = parse_strict(payload)
    except ConfigError:
        return
    # Accepted: then the bytes are exactly the canonical form of what was parsed.
    assert config.canonical_bytes() == payload


# --------------------------------------------------------------------------- intent, window, skew


def test_shadow_plans_are_refused() -> None:
    core, _ = make_core()
    shadow = configuration(3, {"J1": timing()}).model_copy(update={"intent": "shadow"})
    result = core.stage(signed(SIGNER, shadow))
    assert not result.ok, result
    assert result.status is PlanStatus.SHADOW_PLAN
    assert core.state.staged is None


def test_validity_window_is_capped() -> None:
    core, _ = make_core(max_validity_s=3600)
    now = datetime.now(UTC)
    long = configuration(3, {"J1": timing()}, valid_from=now, valid_until=now + timedelta(days=30))
    result = core.stage(signed(SIGNER, long))
    assert not result.ok, result
    assert result.status is PlanStatus.VALIDITY_TOO_LONG
    ok = configuration(3, {"J1": timing()}, valid_from=now, valid_until=now + timedelta(hours=1))
    assert core.stage(signed(SIGNER, ok)).ok


def test_valid_from_tolerates_small_clock_skew() -> None:
    core, _ = make_core(clock_skew_s=5.0)
    now = datetime.now(UTC)
    ahead = configuration(
        3,
        {"J1": timing()},
        valid_from=now + timedelta(seconds=3),
        valid_until=now + timedelta(hours=1),
    )
    assert core.stage(signed(SIGNER, ahead)).ok
    far = configuration(
        4,
        {"J1": timing()},
        valid_from=now + timedelta(seconds=30),
        valid_until=now + timedelta(hours=1),
    )
    assert core.stage(signed(SIGNER, far)).status is PlanStatus.VALIDITY_NOT_YET


# --------------------------------------------------------------------------- activation


def test_activation_beyond_the_lead_is_refused() -> None:
    core, field = make_core(max_activation_lead_s=300)
    assert core.stage(signed(SIGNER, configuration(9, {"J1": timing()}))).ok
    result = core.activate(9, 1e299)
    assert not result.ok, result
    assert result.status is PlanStatus.ACTIVATION_TOO_FAR
    assert field.applied == [] and core.state.active_sequence == 0
    assert core.activate(9, field.field_time_s() + 299).ok


def test_an_older_plan_never_overrides_a_newer_one() -> None:
    """Plan 9 far ahead, then plan 10 sooner: the newer plan wins, 9 never runs after it."""
    core, field = make_core()
    now = field.field_time_s()
    assert core.stage(signed(SIGNER, configuration(9, {"J1": timing()}))).ok
    assert core.activate(9, now + 500).ok
    assert core.stage(signed(SIGNER, configuration(10, {"J1": timing(36, 20)}))).ok
    assert core.activate(10, now + 110).ok
    assert core.state.active_sequence == 10
    # 10 from now+110, and handed again at now+500, after 9 (equal times: call order).
    assert [(t.phases[0].duration_s, at) for _, t, at in field.applied] == [
        (34, now + 500),
        (36, now + 110),
        (36, now + 500),
    ]
    last_at = max(at for _, _, at in field.applied)
    assert [t for _, t, at in field.applied if at == last_at][-1] == timing(36, 20)


def test_change_limits_are_checked_against_the_plan_running_at_activation() -> None:
    core, field = make_core()
    now = field.field_time_s()
    assert core.stage(signed(SIGNER, configuration(1, {"J1": timing(44, 20)}))).ok
    # Staged while the base program (30/26) runs: 44 is within 15 s of 30.
    staged = core.state.staged
    assert staged is not None
    assert core.stage(signed(SIGNER, configuration(2, {"J1": timing(40, 20)}))).ok
    assert core.activate(2, now + 10).ok
    # Plan 4 at 24 is 16 s from plan 2's 40: refused at stage; forced into the staged
    # slot, activate re-checks it against the plan running at its activation time.
    assert core.stage(signed(SIGNER, configuration(4, {"J1": timing(24, 20)}))).status is (
        PlanStatus.UNSAFE_TIMING
    )
    core.state.staged = replace(staged, sequence=4, timing=timing(24, 20))
    result = core.activate(4, now + 20)
    assert result.status is PlanStatus.UNSAFE_TIMING
    assert core.state.active_sequence == 2


def test_a_plan_activated_before_a_pending_one_is_checked_against_what_runs_then() -> None:
    core, field = make_core()
    now = field.field_time_s()
    # The base (30) runs; plan 1 (44) is pending at now+100.
    assert core.stage(signed(SIGNER, configuration(1, {"J1": timing(44, 20)}))).ok
    assert core.activate(1, now + 100).ok
    # A plan 2 of 50 is within 15 s of plan 1 (44) but takes over at now+50, from the base
    # (30): 20 s. Forced into the staged slot, activation refuses it.
    staged = core.stage(signed(SIGNER, configuration(2, {"J1": timing(44, 20)})))
    assert staged.ok
    core.state.staged = replace(core.state.staged, timing=timing(50, 20))  # type: ignore[arg-type]
    result = core.activate(2, now + 50)
    assert result.status is PlanStatus.UNSAFE_TIMING, result
    assert "running at" in result.message


# --------------------------------------------------------------------------- restart


def test_a_restarted_controller_refuses_a_replay(tmp_path: Path) -> None:
    state = tmp_path / "state"
    core, field = make_core(state)
    old = signed(SIGNER, configuration(3, {"J1": timing(40, 20)}))
    assert core.stage(old).ok
    assert core.activate(3, field.field_time_s() + 5).ok
    assert list(state.iterdir()), "the activation is persisted before it is acknowledged"

    restarted, _ = make_core(state, field)
    assert restarted.state.active_sequence == 3
    result = restarted.stage(old)
    assert not result.ok, result
    assert result.status is PlanStatus.SEQUENCE_NOT_ABOVE_ACTIVE
    # Change limits continue from the remembered plan (40), not the base (30).
    too_far = signed(SIGNER, configuration(4, {"J1": timing(24, 20)}))
    assert restarted.stage(too_far).status is PlanStatus.UNSAFE_TIMING


def test_a_failed_persist_acknowledges_nothing(tmp_path: Path) -> None:
    core, field = make_core(tmp_path / "state")
    (tmp_path / "state").write_text("a file where the state directory should be")
    assert core.stage(signed(SIGNER, configuration(3, {"J1": timing()}))).ok
    result = core.activate(3, field.field_time_s() + 5)
    assert result.status is PlanStatus.INTERNAL_ERROR
    assert field.applied == [] and core.state.active_sequence == 0
