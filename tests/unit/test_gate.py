"""The deployment gate (pure logic)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from configs.settings import GateSettings
from controller.gate import CandidateOutcome, decide

POINT = GateSettings(decide_on="point")
BOUND = GateSettings(decide_on="confidence_bound")


def outcome(
    name: str, wait: float, nox: float, spread: float = 0.02, failed: str | None = None
) -> CandidateOutcome:
    return CandidateOutcome(
        name,
        wait,
        (wait - spread, wait + spread),
        nox,
        (nox - spread / 10, nox + spread / 10),
        failed,
    )


def test_thresholds_from_config_on_point_estimate() -> None:
    d = decide([outcome("a", -0.125, 0.0), outcome("b", -0.119, -0.05)], POINT)
    assert d.chosen == "a" and d.decision == "pass"
    assert [v.verdict for v in d.verdicts] == ["pass", "refuse_wait"]
    assert "12.0%" in d.verdicts[1].reasons[0]


def test_nox_increase_must_stay_strictly_below_limit() -> None:
    d = decide([outcome("a", -0.3, 0.008, spread=0.0)], POINT)
    assert d.chosen is None and d.decision == "refuse_nox"
    d = decide([outcome("a", -0.3, 0.0079, spread=0.0)], POINT)
    assert d.chosen == "a"


def test_confidence_bound_is_pessimistic() -> None:
    # point estimate passes, but the upper end of the wait CI is only -10 %
    cand = outcome("a", -0.13, 0.0, spread=0.03)
    assert decide([cand], POINT).chosen == "a"
    assert decide([cand], BOUND).decision == "refuse_wait"


def test_failed_simulation_never_passes() -> None:
    d = decide([outcome("a", -0.9, -0.5, failed="gridlock at 1200 s")], POINT)
    assert d.chosen is None and d.decision == "refuse_failed"
    assert "gridlock" in d.verdicts[0].reasons[0]


def test_best_passing_candidate_is_chosen_deterministically() -> None:
    cands = [outcome("b", -0.2, 0.0), outcome("a", -0.2, 0.0), outcome("c", -0.15, -0.1)]
    assert decide(cands, POINT).chosen == "a"
    assert decide(list(reversed(cands)), POINT).chosen == "a"


def test_no_candidates_deploys_nothing() -> None:
    d = decide([], POINT)
    assert d.chosen is None and d.to_dict()["verdicts"] == []


@given(
    wait=st.floats(-1, 1, allow_nan=False),
    nox=st.floats(-1, 1, allow_nan=False),
    min_red=st.floats(0, 0.5),
    max_nox=st.floats(0, 0.1),
)
def test_pass_iff_both_thresholds_hold(
    wait: float, nox: float, min_red: float, max_nox: float
) -> None:
    gate = GateSettings(decide_on="point", min_wait_reduction=min_red, max_nox_increase=max_nox)
    d = decide([outcome("x", wait, nox)], gate)
    assert (d.chosen == "x") == (-wait >= min_red and nox < max_nox)
