"""The adaptive mode: its document, its safety checks and the controller's second-by-second logic.

The logic runs here on fake queue detectors (pure); tests/integration/test_adaptive_sumo.py
runs it in SUMO through the field emulator and the twin.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from pydantic import ValidationError

from configs.errors import ConfigError
from configs.safety import (
    Proposal,
    admissible_successors,
    check_intersection,
    intergreen_after,
    project,
)
from configs.timing import AdaptiveLogic, BaseProgram, IntersectionTiming, SafetyLimits
from rl.baselines import adaptive_plans, as_mode
from rl.features import ACT_DIM, IntersectionLayout, IntersectionObservation, action_to_proposal
from simulators.adaptive import AdaptiveLight, Crossing, Movement

# two greens, each ended by a yellow and an all-red
TWO = ["GGrr", "yyrr", "rrrr", "rrGG", "rryy", "rrrr"]
# three greens: a protected-turn continuation (0 -> 1 without transition), then a side street
THREE = ["GGrrr", "GGGrr", "yyyrr", "rrrGG", "rrryy"]


def _base(states: list[str], durations: list[int], mode: str = "fixed") -> BaseProgram:
    return (
        BaseProgram.from_sumo(
            "J", "0", [(s, d, None, None) for s, d in zip(states, durations, strict=True)]
        ).model_copy(update={"mode": mode})
        if mode == "fixed"
        else as_mode(
            _base(states, durations),
            mode,  # type: ignore[arg-type]
        )
    )


def _plan(states: list[str], durations: list[int], **logic: object) -> IntersectionTiming:
    base = _base(states, durations, "adaptive")
    greens = [float(base.phases[i].duration_s) for i in base.green_indices]
    adaptive = AdaptiveLogic.default(len(greens)).model_copy(update=logic)
    return project("J", Proposal(green_s=greens, adaptive=adaptive), base, SafetyLimits())


@dataclass
class Sensors:
    """Fake queue detectors: vehicles per approach lane, halting per exit lane."""

    on: dict[str, int] = field(default_factory=dict)
    halt: dict[str, int] = field(default_factory=dict)
    persons: dict[str, int] = field(default_factory=dict)

    def vehicles(self, lane_id: str) -> int:
        return self.on.get(lane_id, 0)

    def halting(self, lane_id: str) -> int:
        return self.halt.get(lane_id, 0)

    def pedestrians(self, lane_id: str) -> int:
        return self.persons.get(lane_id, 0)


MOVES = [Movement(0, "n_in", "s_out"), Movement(1, "s_in", "n_out")] + [
    Movement(2, "e_in", "w_out"),
    Movement(3, "w_in", "e_out"),
]


def _run(light: AdaptiveLight, sensors: Sensors, start: float, seconds: int) -> list[int]:
    shown = []
    for t in range(seconds):
        light.step(start + t, sensors)
        shown.append(light.phase)
    return shown


# ----------------------------------------------------------------- document and safety


def test_other_modes_serialise_as_before_the_adaptive_mode() -> None:
    fixed = project("J", Proposal([30, 25]), _base(TWO, [30, 3, 2, 25, 3, 2]), SafetyLimits())
    assert "adaptive" not in fixed.model_dump(mode="json")
    plan = _plan(TWO, [30, 3, 2, 25, 3, 2])
    data = plan.model_dump(mode="json")
    assert data["adaptive"]["green_weights"] == [1.0, 1.0]
    assert IntersectionTiming.model_validate(data) == plan


def test_adaptive_parameters_are_bounded() -> None:
    with pytest.raises(ValidationError):
        AdaptiveLogic(green_weights=(1.0, 9.0))
    with pytest.raises(ValidationError):
        AdaptiveLogic(green_weights=(1.0, 1.0), switch_margin_veh=-1)
    with pytest.raises(ValidationError):
        AdaptiveLogic(green_weights=(1.0, 1.0), downstream_weight=float("nan"))


def test_projected_adaptive_plan_is_safe_and_checked() -> None:
    base = _base(TWO, [30, 3, 2, 25, 3, 2], "adaptive")
    plan = _plan(TWO, [30, 3, 2, 25, 3, 2], green_weights=(2.0, 0.5))
    assert plan.mode == "adaptive" and plan.adaptive is not None
    assert check_intersection("J", plan, base, SafetyLimits()) == []
    assert all(p.min_s and p.max_s for i, p in enumerate(plan.phases) if i in (0, 3))
    no_logic = plan.model_copy(update={"adaptive": None})
    assert {v.invariant for v in check_intersection("J", no_logic, base, SafetyLimits())} == {
        "adaptive_logic"
    }
    wrong = plan.model_copy(update={"adaptive": AdaptiveLogic.default(3)})
    assert "adaptive_logic" in {
        v.invariant for v in check_intersection("J", wrong, base, SafetyLimits())
    }
    with pytest.raises(ConfigError, match="green weights"):
        project("J", Proposal([30, 25], adaptive=AdaptiveLogic.default(3)), base, SafetyLimits())


def test_a_light_with_one_green_stays_actuated() -> None:
    base = _base(["GG", "yy", "rr"], [30, 3, 2])
    assert as_mode(base, "adaptive").mode == "actuated"


def test_adaptive_plans_skip_lights_whose_limits_admit_no_plan() -> None:
    many = [
        s for g in range(10) for s in (f"{'r' * g}G{'r' * (9 - g)}", f"{'r' * g}y{'r' * (9 - g)}")
    ]
    bases = {"big": _base(many, [10, 3] * 10), "ok": _base(TWO, [30, 3, 2, 25, 3, 2])}
    plans = adaptive_plans(bases, SafetyLimits(min_green_s=14))
    assert set(plans) == {"ok"}  # ten greens of >= 14 s and their yellows exceed 150 s


# ----------------------------------------------------------------- admissible successors


def test_successors_follow_the_base_transitions() -> None:
    assert intergreen_after(TWO, 0) == (1, 2)
    assert admissible_successors(TWO, 0, skip=False) == (3,)
    assert admissible_successors(TWO, 0, skip=True) == (3,)
    # 0 -> 1 continues without a transition: only greens that keep 0's greens are admissible
    assert admissible_successors(THREE, 0, skip=True) == (1,)
    # after the side street's yellow the protected turn may be skipped (its links are red)
    assert admissible_successors(THREE, 3, skip=True) == (0, 1)
    assert admissible_successors(THREE, 3, skip=False) == (0,)


def test_a_yellow_link_never_turns_green_without_red() -> None:
    states = ["GGrr", "yGrr", "rGGr", "ryyr", "rrrG", "rrry"]
    # after green 0's yellow (link 0 yellow, link 1 still green) only greens keeping link 1 green
    # and not giving link 0 green are admissible: green 2; green 4 drops link 1 without yellow
    assert admissible_successors(states, 0, skip=True) == (2,)


# ----------------------------------------------------------------- second-by-second logic


def test_rests_in_green_while_nobody_else_waits() -> None:
    plan = _plan(TWO, [30, 3, 2, 25, 3, 2])
    light = AdaptiveLight("J", plan, MOVES, [], 0, 0.0)
    assert set(_run(light, Sensors(on={"n_in": 3}), 0, 300)) == {0}


def test_maximum_green_against_a_call_then_the_base_transition() -> None:
    plan = _plan(TWO, [30, 3, 2, 25, 3, 2], switch_margin_veh=30.0)
    light = AdaptiveLight("J", plan, MOVES, [], 0, 0.0)
    busy = Sensors(on={"n_in": 20, "s_in": 20, "e_in": 1})
    shown = _run(light, busy, 0, 120)
    max_s = plan.phases[0].max_s
    assert max_s is not None
    assert shown[:max_s].count(0) == max_s and shown[max_s] == 1  # ends at max_s exactly
    assert shown[max_s : max_s + 3] == [1, 1, 1]  # the base yellow, full duration
    assert shown[max_s + 3 : max_s + 5] == [2, 2]  # and its all-red
    assert shown[max_s + 5] == 3


def test_pressure_ends_a_green_after_its_minimum() -> None:
    plan = _plan(TWO, [30, 3, 2, 25, 3, 2], switch_margin_veh=2.0)
    light = AdaptiveLight("J", plan, MOVES, [], 0, 0.0)
    sensors = Sensors(on={"n_in": 1, "e_in": 6, "w_in": 6})
    shown = _run(light, sensors, 0, 30)
    min_s = plan.phases[0].min_s
    assert min_s is not None
    assert shown.index(1) == min_s  # competing 12 > own 1 + 2: ends as soon as allowed


def test_downstream_queue_and_weights_change_the_decision() -> None:
    sensors = Sensors(on={"n_in": 5, "e_in": 4}, halt={"s_out": 5})
    keep = AdaptiveLight(
        "J",
        _plan(TWO, [30, 3, 2, 25, 3, 2], switch_margin_veh=0.0, downstream_weight=0.0),
        MOVES,
        [],
        0,
        0.0,
    )
    assert keep.pressure(0, sensors) == 5 and keep.competing_pressure(sensors) == 4
    spill = AdaptiveLight(
        "J",
        _plan(TWO, [30, 3, 2, 25, 3, 2], switch_margin_veh=0.0, downstream_weight=1.0),
        MOVES,
        [],
        0,
        0.0,
    )
    assert spill.pressure(0, sensors) == 0  # its exit is full: serving it moves nobody
    heavy = AdaptiveLight(
        "J", _plan(TWO, [30, 3, 2, 25, 3, 2], green_weights=(1.0, 2.0)), MOVES, [], 0, 0.0
    )
    assert heavy.competing_pressure(sensors) == 8


def test_gap_out_when_the_green_is_empty() -> None:
    plan = _plan(TWO, [30, 3, 2, 25, 3, 2], switch_margin_veh=30.0)
    light = AdaptiveLight("J", plan, MOVES, [], 0, 0.0)
    shown = _run(light, Sensors(on={"e_in": 1}), 0, 20)
    assert shown.index(1) == plan.phases[0].min_s


def test_skips_a_green_without_a_call_only_when_allowed() -> None:
    moves = [
        Movement(0, "main_in", "o1"),
        Movement(1, "main2_in", "o2"),
        Movement(2, "turn_in", "o3"),
        Movement(3, "side_in", "o4"),
        Movement(4, "side2_in", "o5"),
    ]
    turn_only = Sensors(on={"turn_in": 2})
    shown = {}
    for skip in (True, False):
        plan = _plan(THREE, [20, 10, 3, 20, 3], skip=skip)
        light = AdaptiveLight("J", plan, moves, [], 3, 0.0)  # the side street, nobody on it
        shown[skip] = _run(light, turn_only, 0, 40)
        assert 4 in shown[skip]  # the side street ended through its own yellow
    after_yellow = shown[True][shown[True].index(4) + 3]
    assert after_yellow == 1  # the main green without a call is skipped: on to the turn
    assert shown[False][shown[False].index(4) + 3] == 0  # without skip: the base order


def test_a_push_button_calls_the_crossing_green() -> None:
    plan = _plan(TWO, [30, 3, 2, 25, 3, 2])
    light = AdaptiveLight("J", plan, MOVES[:2], [Crossing(2, ":J_w0_0")], 0, 0.0)
    assert set(_run(light, Sensors(on={"n_in": 1}), 0, 60)) == {0}  # nobody at the button
    shown = _run(light, Sensors(on={"n_in": 1}, persons={":J_w0_0": 1}), 60, 30)
    assert 3 in shown


def test_retime_keeps_the_green_and_its_elapsed_time() -> None:
    plan = _plan(TWO, [30, 3, 2, 25, 3, 2], switch_margin_veh=30.0)
    light = AdaptiveLight("J", plan, MOVES, [], 0, 0.0)
    busy = Sensors(on={"n_in": 20, "e_in": 1})
    _run(light, busy, 0, 20)
    light.retime(_plan(TWO, [30, 3, 2, 25, 3, 2], switch_margin_veh=29.0))
    shown = _run(light, busy, 20, 80)
    max_s = plan.phases[0].max_s
    assert max_s is not None
    assert shown.index(1) == max_s - 20  # the same green, its clock not restarted
    with pytest.raises(ConfigError, match="other phase states"):
        light.retime(_plan(["GGrr", "yyrr", "rrGG", "rryy"], [30, 3, 25, 3]))


def test_policy_zero_action_is_the_adaptive_default() -> None:
    base = _base(TWO, [30, 3, 2, 25, 3, 2], "adaptive")
    layout = IntersectionLayout("J", base, ((), ()))
    obs = IntersectionObservation(layout, 240.0, {}, IntersectionTiming.from_base(base))
    import numpy as np

    zero = project("J", action_to_proposal(np.zeros(ACT_DIM), obs), base, SafetyLimits())
    assert zero == adaptive_plans({"J": base}, SafetyLimits())["J"]
    action = np.zeros(ACT_DIM)
    action[0], action[8], action[9] = 1.0, 1.0, -1.0
    tuned = project("J", action_to_proposal(action, obs), base, SafetyLimits())
    assert tuned.adaptive is not None
    assert tuned.adaptive.green_weights == (2.0, 1.0)
    assert tuned.adaptive.switch_margin_veh == 8.0 and tuned.adaptive.downstream_weight == 0.0
    # a deployed adaptive plan reads back as the action that proposed it (feedback store)
    from rl.features import plan_to_action

    assert plan_to_action(tuned, obs)[[0, 1, 8, 9]].tolist() == [1.0, 0.0, 1.0, -1.0]


# netconvert's four-phase crossing: through + permissive left, protected left, per axis
CROSS = [
    "GGgrrrGGgrrr",
    "yygrrryygrrr",
    "rrGrrrrrGrrr",
    "rryrrrrryrrr",
    "rrrGGgrrrGGg",
    "rrryygrrryyg",
    "rrrrrGrrrrrG",
    "rrrrryrrrrry",
]


def test_an_empty_protected_turn_is_skipped_through_its_own_yellow() -> None:
    from configs.safety import successor_paths

    paths = successor_paths(CROSS, 0, skip=True)
    # the left turn is still green (permissive 'g') after the through yellow: skipping its
    # protected green means showing its own yellow next, then the crossing road
    assert paths == {2: (1,), 4: (1, 3), 6: (1, 3)}
    assert successor_paths(CROSS, 0, skip=False) == {2: (1,)}
    # after the protected turn's yellow the through green cannot follow: its left turn would
    # go yellow -> green
    assert 0 not in successor_paths(CROSS, 2, skip=True)
    # a red signal never turns yellow on a chained step
    assert 4 not in successor_paths(CROSS, 6, skip=True)


def test_a_skip_chain_shows_every_transition_for_its_full_duration() -> None:
    moves = [Movement(i, f"in{i}", f"out{i}") for i in range(12)]
    durations = [30, 3, 7, 3, 30, 3, 7, 3]
    plan = _plan(CROSS, durations)
    light = AdaptiveLight("J", plan, moves, [], 0, 0.0)
    shown = _run(light, Sensors(on={"in4": 5}), 0, 60)  # only the crossing road's through lane
    end = shown.index(1)
    assert shown[end : end + 6] == [1, 1, 1, 3, 3, 3] and shown[end + 6] == 4
    assert 2 not in shown


def test_coordination_calls_and_holds_the_first_green_in_its_window() -> None:
    # cycle 70 s, offset 0: the first green's window is [0, 30) of every cycle
    plan = _plan(TWO, [30, 3, 2, 25, 3, 7], coordinated=True)
    assert plan.adaptive is not None and plan.adaptive.coordinated
    assert plan.cycle_s == 70 and plan.offset_s == 0
    light = AdaptiveLight("J", plan, MOVES, [], 3, 40.0)  # the crossing road, busy
    busy_cross = Sensors(on={"e_in": 30, "w_in": 30, "n_in": 1})
    shown = _run(light, busy_cross, 40, 100)  # t = 40 .. 139
    # at t = 70 (the window opens) the crossing road is forced off, then green 0 is held
    # through its window [70, 100) although the crossing road's pressure is far higher
    assert shown[70 - 40 - 1] == 3 and shown[70 - 40] == 4  # yellow at 70
    first = shown.index(0)
    window_end = 100 - 40
    assert all(p == 0 for p in shown[first:window_end])
    assert shown[window_end] == 1  # pressure ends it right after the window
    free = AdaptiveLight("J", _plan(TWO, [30, 3, 2, 25, 3, 7]), MOVES, [], 3, 40.0)
    assert 0 not in _run(free, busy_cross, 40, 100)[:60]  # uncoordinated: the busy road keeps it
