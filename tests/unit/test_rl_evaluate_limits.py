"""Evaluation projects every plan within its own light's limits (per-intersection overrides)."""

from __future__ import annotations

from configs.safety import Proposal, project_plans
from configs.settings import SafetySettings
from configs.timing import IntersectionTiming
from rl.baselines import actuated_plans
from rl.evaluate import start_plans, webster_decide
from rl.features import IntersectionLayout, IntersectionObservation
from tests.support.timings import two_stage_base

# J1's engineer asked for a longer minimum green than the district's 7 s
SAFETY = SafetySettings.model_validate({"intersections": {"J1": {"min_green_s": 25}}})


def _greens(plan: IntersectionTiming) -> list[int]:
    return [p.duration_s for p in plan.phases if "G" in p.state]


def test_project_plans_applies_the_override_of_the_settings_safety_section() -> None:
    bases = {t: two_stage_base(t) for t in ("J1", "J2")}
    proposals = {t: Proposal(green_s=(8.0, 60.0)) for t in bases}
    plans = project_plans(proposals, bases, SAFETY)
    assert min(_greens(plans["J1"])) >= 25
    assert min(_greens(plans["J2"])) < 25


def test_webster_decide_respects_a_per_intersection_minimum_green() -> None:
    layouts = {
        t: IntersectionLayout(t, two_stage_base(t, green_s=20), ((f"{t}-a",), (f"{t}-b",)))
        for t in ("J1", "J2")
    }
    # nearly all traffic on the second stage: Webster shortens the first green
    counts = {"J1-a": 1.0, "J1-b": 30.0, "J2-a": 1.0, "J2-b": 30.0}
    obs = {
        t: IntersectionObservation(lay, 240.0, counts, IntersectionTiming.from_base(lay.base))
        for t, lay in layouts.items()
    }
    plans = webster_decide(layouts, SAFETY)(obs)
    assert _greens(plans["J1"])[0] >= 25
    assert _greens(plans["J2"])[0] < 25  # the same demand, the district's limits


def test_the_actuated_start_respects_a_per_intersection_minimum_green() -> None:
    bases = {t: two_stage_base(t, green_s=10) for t in ("J1", "J2")}
    plans, changed = start_plans(bases, "actuated", SAFETY)
    assert changed
    assert plans == actuated_plans(bases, SAFETY)
    j1 = [p for p in plans["J1"].phases if p.min_s is not None]
    j2 = [p for p in plans["J2"].phases if p.min_s is not None]
    assert j1 and all(p.min_s is not None and p.min_s >= 25 for p in j1)
    assert j2 and all(p.min_s is not None and p.min_s < 25 for p in j2)


def test_fixed_start_keeps_the_base_programs() -> None:
    bases = {"J1": two_stage_base("J1")}
    plans, changed = start_plans(bases, "fixed", SAFETY)
    assert not changed
    assert plans == {"J1": IntersectionTiming.from_base(bases["J1"])}
