from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from configs.errors import ConfigError
from configs.safety import check_intersection, project
from configs.timing import IntersectionTiming, SafetyLimits
from rl.features import (
    ACT_DIM,
    MAX_GREENS,
    OBS_DIM,
    PER_GREEN,
    action_to_proposal,
    build_observations,
    critical_flow_ratios,
    encode,
    encode_batch,
    layouts_from_network,
    plan_to_action,
)
from tests.support.rl_fakes import fake_network, three_phase_light, two_phase_light


def _observations(counts: dict[str, float] | None = None, occ: dict[str, float] | None = None):
    net = fake_network(two_phase_light("J1"), three_phase_light("J2"))
    layouts = layouts_from_network(net)
    timings = {t: IntersectionTiming.from_base(lay.base) for t, lay in layouts.items()}
    return layouts, build_observations(layouts, counts or {}, 240.0, timings, occ)


def test_layout_maps_detectors_to_the_greens_that_serve_them() -> None:
    layouts, _ = _observations()
    j1 = layouts["J1"]
    assert j1.green_detectors == (
        ("e1_n_J1_0", "e1_s_J1_0"),
        ("e1_e_J1_0", "e1_w_J1_0"),
    )
    assert len(layouts["J2"].green_detectors) == 3


def test_critical_flow_ratio_is_the_busiest_lane_over_saturation() -> None:
    # 60 vehicles in 240 s = 900 veh/h on the busiest north-south lane -> y = 0.5
    _, obs = _observations({"e1_n_J1_0": 60, "e1_s_J1_0": 20, "e1_e_J1_0": 12})
    ratios = critical_flow_ratios(obs["J1"])
    assert ratios == pytest.approx([0.5, 0.1])


def test_encoding_pads_and_masks_lights_with_different_phase_counts() -> None:
    _, obs = _observations({"e1_n_J2_0": 30}, {"e1_n_J2_0": 0.4})
    batch = encode_batch([obs["J1"], obs["J2"]])
    assert batch.shape == (2, OBS_DIM)
    mask = batch[:, MAX_GREENS * PER_GREEN : MAX_GREENS * PER_GREEN + MAX_GREENS]
    assert mask[0].tolist() == [1, 1] + [0] * (MAX_GREENS - 2)
    assert mask[1].tolist() == [1, 1, 1] + [0] * (MAX_GREENS - 3)
    # padded slots are all zero
    assert not batch[0, 2 * PER_GREEN : MAX_GREENS * PER_GREEN].any()
    # green shares of a light sum to its green time over its cycle
    shares = batch[1, 3 : 3 * PER_GREEN : PER_GREEN]
    assert shares.sum() == pytest.approx(60 / 70)
    assert batch[1, 1] == pytest.approx(0.2)  # mean occupancy of the first green's loops
    assert batch[1, 2] == pytest.approx(0.4)  # its max occupancy (queue proxy)
    assert np.isfinite(batch).all()


def test_missing_occupancy_is_zero_not_an_error() -> None:
    _, obs = _observations({"e1_n_J1_0": 10})
    vec = encode(obs["J1"])
    assert vec[1] == 0.0 and vec[2] == 0.0


def test_zero_action_proposes_the_base_program() -> None:
    layouts, obs = _observations()
    proposal = action_to_proposal(np.zeros(ACT_DIM), obs["J2"])
    plan = project("J2", proposal, layouts["J2"].base, SafetyLimits(), obs["J2"].timing)
    assert plan == IntersectionTiming.from_base(layouts["J2"].base)


def test_proposals_do_not_drift_with_the_plan_in_force() -> None:
    # scheme 2: an action adjusts the base program, so the same action gives the
    # same proposal whatever plan runs now (repeating it cannot accumulate)
    layouts, obs = _observations()
    o = obs["J1"]
    action = np.zeros(ACT_DIM)
    action[0], action[MAX_GREENS] = 0.8, 0.5
    limits = SafetyLimits()
    first = project("J1", action_to_proposal(action, o), layouts["J1"].base, limits, o.timing)
    assert first != o.timing
    moved = build_observations(layouts, {}, 240.0, {"J1": first})["J1"]
    assert action_to_proposal(action, moved) == action_to_proposal(action, o)
    again = project("J1", action_to_proposal(action, moved), layouts["J1"].base, limits, first)
    assert again == first


def test_action_moves_green_towards_the_favoured_phase() -> None:
    layouts, obs = _observations()
    action = np.zeros(ACT_DIM)
    action[0] = 1.0
    plan = project(
        "J1",
        action_to_proposal(action, obs["J1"]),
        layouts["J1"].base,
        SafetyLimits(),
        obs["J1"].timing,
    )
    greens = plan.green_durations(layouts["J1"].base)
    assert greens[0] > 30 > greens[1]
    assert plan.cycle_s == 70


def test_action_with_wrong_size_is_refused() -> None:
    _, obs = _observations()
    with pytest.raises(ConfigError, match="expected"):
        action_to_proposal(np.zeros(3), obs["J1"])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-5, 5) | st.just(float("nan")), min_size=ACT_DIM, max_size=ACT_DIM))
def test_any_action_projects_to_a_safe_plan(values: list[float]) -> None:
    layouts, obs = _observations()
    limits = SafetyLimits()
    for tls_id in ("J1", "J2"):
        o = obs[tls_id]
        plan = project(
            tls_id, action_to_proposal(values, o), layouts[tls_id].base, limits, o.timing
        )
        assert check_intersection(tls_id, plan, layouts[tls_id].base, limits, o.timing) == []


def test_plan_to_action_inverts_the_proposal_of_a_deployed_plan() -> None:
    layouts, obs = _observations()
    o = obs["J2"]
    action = np.zeros(ACT_DIM, dtype=np.float32)
    action[0], action[2], action[MAX_GREENS] = 0.6, -0.6, 0.5
    plan = project(
        "J2", action_to_proposal(action, o), layouts["J2"].base, SafetyLimits(), o.timing
    )
    back = plan_to_action(plan, o)
    replay = project(
        "J2", action_to_proposal(back, o), layouts["J2"].base, SafetyLimits(), o.timing
    )
    assert replay == plan
