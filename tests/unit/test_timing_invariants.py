"""Safety invariants and the projection (pure logic, hypothesis)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from configs.errors import ConfigError, SafetyViolation
from configs.safety import Proposal, check_configuration, check_intersection, project, require_safe
from configs.timing import (
    INVARIANTS,
    AdaptiveLogic,
    BaseProgram,
    Evidence,
    IntersectionTiming,
    NetworkRef,
    Prediction,
    SafetyLimits,
    TimingConfiguration,
    classify_state,
)

GREEN_STATES = ["GGgrrrGGgrrr", "rrrGGgrrrGGg", "GrGrGrGrGrGr", "rGrGrGrGrGrG"]


@st.composite
def base_programs(draw: st.DrawFn) -> BaseProgram:
    n_greens = draw(st.integers(2, 4))
    mode = draw(st.sampled_from(["fixed", "actuated"]))
    phases: list[tuple[str, float, float | None, float | None]] = []
    for i in range(n_greens):
        g = GREEN_STATES[i]
        phases.append((g, draw(st.integers(5, 60)), 5.0, 60.0))
        phases.append((g.replace("G", "y").replace("g", "y"), draw(st.integers(3, 5)), None, None))
        if draw(st.booleans()):
            phases.append(("r" * len(g), draw(st.integers(1, 3)), None, None))
    ped = draw(st.sets(st.sampled_from([i for i, p in enumerate(phases) if "G" in p[0]])))
    return BaseProgram.from_sumo(
        "J", "0", phases, offset_s=draw(st.integers(0, 200)), mode=mode, pedestrian_phases=ped
    )


@st.composite
def limits(draw: st.DrawFn) -> SafetyLimits:
    min_cycle = draw(st.integers(30, 80))
    return SafetyLimits(
        min_green_s=draw(st.integers(4, 10)),
        min_yellow_s=draw(st.integers(3, 5)),
        min_red_clearance_s=draw(st.integers(0, 2)),
        ped_walk_s=draw(st.integers(4, 7)),
        ped_clearance_s=draw(st.integers(5, 12)),
        min_cycle_s=min_cycle,
        max_cycle_s=draw(st.integers(min_cycle + 60, 200)),
        max_cycle_change_s=draw(st.integers(0, 30)),
        max_split_change_s=draw(st.integers(0, 20)),
    )


reals = st.floats(-50, 400, allow_nan=False, allow_infinity=False)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(base=base_programs(), lim=limits(), data=st.data())
def test_projection_output_satisfies_every_invariant(
    base: BaseProgram, lim: SafetyLimits, data: st.DataObject
) -> None:
    n = len(base.green_indices)
    proposal = Proposal(
        green_s=data.draw(st.lists(reals, min_size=n, max_size=n)),
        cycle_s=data.draw(st.none() | reals),
        offset_s=data.draw(st.none() | reals),
    )
    try:
        first = project("J", proposal, base, lim)
    except SafetyViolation as e:
        # only contradictory limits may refuse, and then the reason is named
        assert e.invariants == {"cycle_range"}
        return
    assert check_intersection("J", first, base, lim) == []
    # a second deployment from the first honours the change limits too
    second_proposal = Proposal(
        green_s=data.draw(st.lists(reals, min_size=n, max_size=n)),
        cycle_s=data.draw(st.none() | reals),
    )
    try:
        second = project("J", second_proposal, base, lim, previous=first)
    except SafetyViolation as e:
        assert e.invariants == {"cycle_range"}
        return
    assert check_intersection("J", second, base, lim, previous=first) == []


def _simple_base(mode: str = "fixed") -> BaseProgram:
    return BaseProgram.from_sumo(
        "J1",
        "0",
        [
            ("GGrr", 30, 10, 50),
            ("yyrr", 3, None, None),
            ("rrrr", 2, None, None),
            ("rrGG", 25, 10, 50),
            ("rryy", 3, None, None),
            ("rrrr", 2, None, None),
        ],
        mode=mode,  # type: ignore[arg-type]
        pedestrian_phases=[3],
    )


LIMITS = SafetyLimits()


def _with(plan: IntersectionTiming, index: int, **changes: object) -> IntersectionTiming:
    phases = list(plan.phases)
    phases[index] = phases[index].model_copy(update=changes)
    total = sum(p.duration_s for p in phases)
    return plan.model_copy(update={"phases": tuple(phases), "cycle_s": total})


def _broken_plans() -> dict[str, tuple[IntersectionTiming, IntersectionTiming | None]]:
    base = _simple_base()
    ok = project("J1", Proposal([40, 30]), base, LIMITS)
    act = project("J1", Proposal([40, 30]), _simple_base("actuated"), LIMITS)
    swapped = ok.model_copy(
        update={"phases": (ok.phases[3], *ok.phases[1:3], ok.phases[0], *ok.phases[4:])}
    )
    return {
        "phase_states": (swapped, None),
        "min_green": (_with(ok, 0, duration_s=5), None),
        "pedestrian_green": (_with(ok, 3, duration_s=12), None),
        "min_yellow": (_with(ok, 1, duration_s=2), None),
        "min_red_clearance": (_with(ok, 2, duration_s=1), None),  # checked with 2 s limit
        "cycle_sum": (ok.model_copy(update={"cycle_s": ok.cycle_s + 1}), None),
        "cycle_range": (_with(_with(ok, 0, duration_s=120), 3, duration_s=60), None),
        "offset_range": (ok.model_copy(update={"offset_s": ok.cycle_s}), None),
        "max_cycle_change": (_with(ok, 0, duration_s=70), ok),
        "max_split_change": (_with(_with(ok, 0, duration_s=56), 3, duration_s=14 + 4), ok),
        "actuated_bounds": (_with(act, 0, min_s=3), None),
        # an actuated plan carrying adaptive parameters
        "adaptive_logic": (act.model_copy(update={"adaptive": AdaptiveLogic.default(2)}), None),
    }


@pytest.mark.parametrize("invariant", INVARIANTS)
def test_every_broken_invariant_is_reported_by_name(invariant: str) -> None:
    plans = _broken_plans()
    base = _simple_base(
        "actuated" if invariant in ("actuated_bounds", "adaptive_logic") else "fixed"
    )
    limits = LIMITS
    if invariant == "min_red_clearance":
        limits = SafetyLimits(min_red_clearance_s=2)
    plan, previous = plans[invariant]
    found = check_intersection("J1", plan, base, limits, previous)
    assert invariant in {v.invariant for v in found}, found
    assert all(v.intersection == "J1" for v in found)


@settings(max_examples=200, deadline=None)
@given(
    index=st.integers(0, 5),
    delta=st.integers(-40, 40),
    offset=st.integers(-10, 400),
)
def test_mutated_plans_are_refused_with_a_named_invariant(
    index: int, delta: int, offset: int
) -> None:
    base = _simple_base()
    ok = project("J1", Proposal([40, 30]), base, LIMITS)
    duration = ok.phases[index].duration_s + delta
    assume(duration >= 1 and (delta != 0 or not 0 <= offset < ok.cycle_s))
    plan = _with(ok, index, duration_s=duration).model_copy(update={"offset_s": max(0, offset)})
    found = check_intersection("J1", plan, base, LIMITS, previous=ok)
    expected_ok = (
        LIMITS.min_cycle_s <= plan.cycle_s <= LIMITS.max_cycle_s
        and 0 <= plan.offset_s < plan.cycle_s
        and all(
            p.duration_s
            >= (
                LIMITS.min_green_s
                if r.kind == "green"
                else LIMITS.min_yellow_s
                if r.kind == "yellow"
                else LIMITS.min_red_clearance_s
            )
            and (not r.serves_pedestrians or p.duration_s >= LIMITS.ped_green_s)
            for p, r in zip(plan.phases, base.phases, strict=True)
        )
        and abs(plan.cycle_s - ok.cycle_s) <= LIMITS.max_cycle_change_s
        and all(
            abs(plan.phases[i].duration_s - ok.phases[i].duration_s) <= LIMITS.max_split_change_s
            for i in base.green_indices
        )
    )
    assert (found == []) == expected_ok
    for v in found:
        assert v.invariant in INVARIANTS


def test_projection_keeps_states_and_moves_only_durations() -> None:
    base = _simple_base()
    plan = project("J1", Proposal([80.4, 5.0], cycle_s=None, offset_s=17.6), base, LIMITS)
    assert [p.state for p in plan.phases] == [p.state for p in base.phases]
    assert plan.phases[3].duration_s >= LIMITS.ped_green_s  # pedestrian phase raised
    assert plan.offset_s == 18
    assert plan.cycle_s == sum(p.duration_s for p in plan.phases)


def test_projection_refuses_contradictory_limits_by_name() -> None:
    base = _simple_base()
    tight = SafetyLimits(min_green_s=60, min_cycle_s=40, max_cycle_s=100)
    with pytest.raises(SafetyViolation) as info:
        project("J1", Proposal([60, 60]), base, tight)
    assert "cycle_range" in info.value.invariants


def test_projection_rejects_wrong_arity_and_nan() -> None:
    base = _simple_base()
    with pytest.raises(ConfigError, match="greens"):
        project("J1", Proposal([30.0]), base, LIMITS)
    with pytest.raises(ConfigError, match="finite"):
        project("J1", Proposal([float("nan"), 30.0]), base, LIMITS)


def test_classify_state() -> None:
    assert classify_state("GGrr") == "green"
    assert classify_state("yyGG") == "yellow"
    assert classify_state("rrrr") == "red"
    assert classify_state("uurr") == "yellow"


def _config(plan: IntersectionTiming) -> TimingConfiguration:
    now = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
    return TimingConfiguration(
        network=NetworkRef(id="district", sha256="a" * 64),
        sequence=7,
        issued_at=now,
        valid_from=now,
        valid_until=now + timedelta(minutes=10),
        predicted=Prediction(
            wait_change=-0.15,
            wait_change_ci=(-0.2, -0.1),
            nox_change=0.001,
            nox_change_ci=(-0.002, 0.004),
            horizon_s=900,
            seeds=(1, 2, 3),
        ),
        evidence=Evidence(demand_sha256="b" * 64),
        intersections={"J1": plan},
    )


def test_canonical_bytes_are_stable_and_round_trip() -> None:
    base = _simple_base()
    config = _config(project("J1", Proposal([40, 30]), base, LIMITS))
    data = config.canonical_bytes()
    assert b" " not in data and data.startswith(b'{"evidence"')
    again = TimingConfiguration.parse(data)
    assert again == config
    assert again.canonical_bytes() == data
    assert again.digest() == config.digest()


@pytest.mark.parametrize(
    "payload",
    [b"", b"[]", b"{", b'{"schema": "other"}', b'{"x": NaN}', b"\xff\xfe"],
)
def test_parse_refuses_malformed_documents(payload: bytes) -> None:
    with pytest.raises(ConfigError):
        TimingConfiguration.parse(payload)


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=2000))
def test_parse_never_crashes_on_random_bytes(data: bytes) -> None:
    with pytest.raises(ConfigError):
        TimingConfiguration.parse(data)


@settings(max_examples=300, deadline=None)
@given(position=st.integers(0, 10_000), byte=st.integers(0, 255))
def test_parse_mutated_documents_parse_or_fail_cleanly(position: int, byte: int) -> None:
    data = bytearray(
        _config(project("J1", Proposal([40, 30]), _simple_base(), LIMITS)).canonical_bytes()
    )
    data[position % len(data)] = byte
    try:
        TimingConfiguration.parse(bytes(data))
    except ConfigError:
        pass


def test_check_configuration_names_missing_base_and_require_safe_raises() -> None:
    base = _simple_base()
    plan = project("J1", Proposal([40, 30]), base, LIMITS)
    config = _config(plan)
    assert check_configuration(config, {"J1": base}, LIMITS) == []
    found = check_configuration(config, {}, LIMITS)
    assert [v.invariant for v in found] == ["phase_states"]
    unsafe = _config(_with(plan, 1, duration_s=2))
    with pytest.raises(SafetyViolation) as info:
        require_safe(unsafe, {"J1": base}, LIMITS)
    assert "min_yellow" in info.value.invariants


@settings(max_examples=300, deadline=None)
@given(data=st.data(), n=st.integers(1, 8))
def test_water_fill_is_the_clipped_shift_that_meets_the_total(data: st.DataObject, n: int) -> None:
    from configs.safety import _water_fill

    want = data.draw(st.lists(st.floats(0, 200), min_size=n, max_size=n))
    lo = data.draw(st.lists(st.floats(1, 30), min_size=n, max_size=n))
    hi = [a + data.draw(st.floats(0, 100)) for a in lo]
    total = data.draw(st.floats(sum(lo), sum(hi)))
    got = _water_fill(want, lo, hi, total)
    assert sum(got) == pytest.approx(total, abs=1e-6)
    assert all(a - 1e-9 <= x <= b + 1e-9 for x, a, b in zip(got, lo, hi, strict=True))

    # reference: bisection on the shift
    def filled(shift: float) -> list[float]:
        return [min(max(w + shift, a), b) for w, a, b in zip(want, lo, hi, strict=True)]

    low, high = -1000.0, 1000.0
    for _ in range(200):
        mid = (low + high) / 2
        if sum(filled(mid)) < total:
            low = mid
        else:
            high = mid
    assert got == pytest.approx(filled(high), abs=1e-6)


def test_documents_without_intent_parse_as_deploy_and_intent_is_signed() -> None:
    config = _config(project("J1", Proposal([40, 30]), _simple_base(), LIMITS))
    raw = config.to_dict()
    assert raw["intent"] == "deploy"
    del raw["intent"]  # a document written before the field existed
    old = TimingConfiguration.parse(json.dumps(raw).encode())
    assert old.intent == "deploy"
    shadow = config.model_copy(update={"intent": "shadow"})
    assert shadow.digest() != config.digest()
    assert TimingConfiguration.parse(shadow.canonical_bytes()).intent == "shadow"
    with pytest.raises(ConfigError):
        TimingConfiguration.parse(json.dumps({**raw, "intent": "production"}).encode())


def test_parse_refuses_duplicate_keys_as_controllers_do() -> None:
    """The daemon and an auditor read a document as the controller does (no last-wins keys)."""
    from configs.digests import strict_json_loads

    with pytest.raises(ValueError, match="duplicate key 'sequence'"):
        strict_json_loads(b'{"sequence": 1, "sequence": 2}')
    with pytest.raises(ConfigError, match="duplicate key 'schema'"):
        TimingConfiguration.parse(b'{"schema": "signaltwin.timing/v1", "schema": "x"}')
    with pytest.raises(ConfigError, match="NaN"):
        TimingConfiguration.parse(b'{"sequence": NaN}')
