from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from configs.errors import ConfigError
from configs.safety import check_intersection, project
from configs.timing import IntersectionTiming, SafetyLimits
from rl.baselines import (
    MaxPressureController,
    _red_state,
    _yellow_state,
    actuated_plan,
    as_mode,
    fixed_plans,
    lost_time_s,
    webster,
    webster_proposal,
)
from rl.features import build_observations, layouts_from_network
from tests.support.rl_fakes import fake_network, three_phase_light, two_phase_light


def test_webster_textbook_example() -> None:
    # Three phases, 4 s lost per phase (L = 12 s), critical flow ratios 0.25, 0.20, 0.15:
    # Y = 0.6, C0 = (1.5 * 12 + 5) / (1 - 0.6) = 57.5 s, effective green 45.5 s split
    # in proportion to y: 18.96, 15.17, 11.375 s.
    cycle, greens = webster([0.25, 0.20, 0.15], 12.0)
    assert cycle == pytest.approx(57.5)
    assert greens == pytest.approx([45.5 * 0.25 / 0.6, 45.5 * 0.20 / 0.6, 45.5 * 0.15 / 0.6])
    assert sum(greens) + 12.0 == pytest.approx(cycle)


def test_webster_two_phase_example() -> None:
    # y = 0.3 and 0.2, L = 10 s: C0 = 20 / 0.5 = 40 s, greens 18 and 12 s.
    cycle, greens = webster([0.3, 0.2], 10.0)
    assert cycle == pytest.approx(40.0)
    assert greens == pytest.approx([18.0, 12.0])


def test_webster_caps_oversaturation_and_splits_empty_demand_evenly() -> None:
    cycle, _ = webster([0.7, 0.6], 10.0)
    assert cycle == pytest.approx(20.0 / 0.1)  # Y capped at 0.9
    cycle, greens = webster([0.0, 0.0], 10.0)
    assert cycle == pytest.approx(20.0)
    assert greens == [5.0, 5.0]
    with pytest.raises(ConfigError):
        webster([], 10.0)
    with pytest.raises(ConfigError):
        webster([-0.1], 10.0)


def test_webster_proposal_projects_to_a_safe_plan_favouring_the_busy_phase() -> None:
    net = fake_network(two_phase_light("J1"))
    layouts = layouts_from_network(net)
    base = layouts["J1"].base
    assert lost_time_s(base) == 10.0
    timings = fixed_plans({"J1": base})
    # 900 veh/h north-south (y = 0.5), 360 veh/h east-west (y = 0.2)
    obs = build_observations(layouts, {"e1_n_J1_0": 60, "e1_e_J1_0": 24}, 240.0, timings)["J1"]
    plan = project("J1", webster_proposal(obs), base, SafetyLimits(), timings["J1"])
    assert check_intersection("J1", plan, base, SafetyLimits(), timings["J1"]) == []
    ns, ew = plan.green_durations(base)
    assert ns > ew


def test_actuated_plan_is_safe_and_bounded() -> None:
    for inter in (two_phase_light("J1", ped=True), three_phase_light("J2")):
        limits = SafetyLimits()
        plan = actuated_plan(inter.tls_id, inter.base, limits)
        assert plan.mode == "actuated"
        assert check_intersection(inter.tls_id, plan, inter.base, limits) == []
        for index in inter.base.green_indices:
            phase = plan.phases[index]
            assert phase.min_s is not None and phase.max_s is not None
            assert limits.min_green_s <= phase.min_s <= phase.duration_s <= phase.max_s
        actuated_base = as_mode(inter.base, "actuated")
        assert actuated_base.mode == "actuated"
        assert as_mode(actuated_base, "fixed").mode == "fixed"


def test_transition_states_yellow_then_all_red() -> None:
    assert _yellow_state("GGrr", "rrGG") == "yyrr"
    assert _red_state("GGrr", "rrGG") == "rrrr"
    # a link green in both phases keeps its green through the transition
    assert _yellow_state("GGgr", "rrgG") == "yyg" + "r"
    assert _red_state("GGgr", "rrgG") == "rrgr"


@dataclass
class _FakeSim:
    halting: dict[str, int]
    time_s: float = 0.0
    states: dict[str, list[tuple[float, str]]] = field(default_factory=dict)

    def lane_halting(self, lane_id: str) -> int:
        return self.halting.get(lane_id, 0)

    def set_signal_state(self, tls_id: str, state: str) -> None:
        self.states.setdefault(tls_id, []).append((self.time_s, state))

    def apply(self, tls_id: str, timing: IntersectionTiming) -> None:  # pragma: no cover
        raise AssertionError("max-pressure never deploys plans")


def test_max_pressure_switches_to_the_loaded_phase_through_yellow_and_red() -> None:
    net = fake_network(two_phase_light("J1"))
    controller = MaxPressureController(net, SafetyLimits(min_green_s=7), decision_s=1.0)
    sim = _FakeSim(halting={"e_J1_0": 10, "w_J1_0": 5})
    for t in range(0, 30):
        sim.time_s = float(t)
        controller(sim)  # type: ignore[arg-type]
    shown = [s for _, s in sim.states["J1"]]
    assert shown[0] == "GGrrr"  # starts in the first green
    assert shown[1:4] == ["yyrrr", "rrrrr", "rrGGr"]
    times = [t for t, _ in sim.states["J1"]]
    assert times[1] >= 7.0  # the first green is held for the minimum green
    assert times[2] - times[1] == 3.0  # base yellow
    assert times[3] - times[2] == 2.0  # base all-red
    # with no pressure left on the other phase it stays
    assert len(shown) == 4


def test_a_green_continuing_another_counts_only_its_new_lanes() -> None:
    from configs.timing import BaseProgram
    from rl.baselines import stage_flow_ratios
    from rl.features import IntersectionLayout, IntersectionObservation

    base = BaseProgram.from_sumo(
        "J",
        "0",
        [
            ("GGrr", 30, None, None),
            ("GGrG", 8, None, None),  # continues the first green, adds a turn lane
            ("yyry", 3, None, None),
            ("rrGr", 30, None, None),
            ("rryr", 3, None, None),
        ],
    )
    layout = IntersectionLayout("J", base, (("a", "b"), ("a", "b", "t"), ("c",)))
    counts = {"a": 60.0, "b": 30.0, "t": 12.0, "c": 24.0}
    obs = IntersectionObservation(layout, 240.0, counts, IntersectionTiming.from_base(base))
    assert stage_flow_ratios(obs) == pytest.approx([0.5, 0.1, 0.2])
