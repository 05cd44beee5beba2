"""How actuated plans become controller behaviour: rest in green, per-link maximum greens."""

from __future__ import annotations

from configs.timing import IntersectionTiming, PhasePlan
from simulators.signal_program import actuated_rules


def _plan(*phases: tuple[str, int, int | None, int | None]) -> IntersectionTiming:
    return IntersectionTiming(
        mode="actuated",
        cycle_s=sum(p[1] for p in phases),
        offset_s=0,
        phases=tuple(
            PhasePlan(state=s, duration_s=d, min_s=lo, max_s=hi) for s, d, lo, hi in phases
        ),
    )


def test_two_stage_plan_rests_in_both_greens_with_max_green_on_their_own_links() -> None:
    # links 0-1: north-south lanes, 2-3: east-west lanes
    plan = _plan(
        ("GGrr", 30, 7, 60),
        ("yyrr", 4, None, None),
        ("rrrr", 2, None, None),
        ("rrGG", 30, 7, 45),
        ("rryy", 4, None, None),
        ("rrrr", 2, None, None),
    )
    rules = actuated_rules(plan, ["ns0", "ns1", "ew0", "ew1"])
    assert rules.resting == (0, 3)
    assert rules.next_phases == ((0, 1), (), (), (3, 4), (), ())
    assert rules.link_max_s == {0: 60, 1: 60, 2: 45, 3: 45}


def test_four_stage_plan_never_rests_because_a_later_stage_would_starve() -> None:
    # through and left-turn stages on separate lanes: from north-south through,
    # the next stage (north-south left) does not serve the east-west approaches
    plan = _plan(
        ("Grrr", 20, 7, 40),
        ("yrrr", 3, None, None),
        ("rGrr", 10, 5, 20),
        ("ryrr", 3, None, None),
        ("rrGr", 20, 7, 40),
        ("rryr", 3, None, None),
        ("rrrG", 10, 5, 20),
        ("rrry", 3, None, None),
    )
    rules = actuated_rules(plan, ["nst", "nsl", "ewt", "ewl"])
    assert rules.resting == ()
    assert rules.next_phases == ((),) * 8
    assert rules.link_max_s == {}


def test_green_without_links_of_its_own_runs_plain_actuated() -> None:
    # phase 3 is phase 0 plus a pedestrian crossing (link 4 has no loop): it has no
    # vehicle link of its own to enforce a maximum green on
    plan = _plan(
        ("GGrrr", 30, 7, 60),
        ("yyrrr", 4, None, None),
        ("rrGGr", 30, 7, 60),
        ("rrGGG", 8, 6, 12),
        ("rryyr", 4, None, None),
    )
    rules = actuated_rules(plan, ["a", "b", "c", "d", None])
    # phase 0: the next green (2) serves c and d -> rests; phase 2: the next green
    # (3) shares every vehicle link with it and does not serve a/b -> no rest;
    # phase 3: no vehicle link of its own -> no rest
    assert rules.resting == (0,)
    assert rules.next_phases[0] == (0, 1)
    assert rules.link_max_s == {0: 60, 1: 60}


def test_a_single_actuated_green_gets_no_rules() -> None:
    plan = _plan(("GG", 30, 7, 60), ("yy", 4, None, None), ("rr", 30, None, None))
    rules = actuated_rules(plan, ["a", "b"])
    assert rules.resting == () and rules.link_max_s == {}
