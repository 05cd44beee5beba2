"""Measured deltas over windows attributed to the plan in force (fake field and estimator).

The field here is a few lines of arithmetic: each plan in force sets a halting
rate per intersection, the controllers' cumulative totals integrate it, and the
fake counterfactual reports ``after / before - 1`` of the windows it is handed,
so every assertion checks which field seconds were attributed to which plan.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from configs.settings import FeedbackSettings, Settings, SimulationSettings
from configs.timing import (
    Evidence,
    IntersectionTiming,
    NetworkRef,
    Prediction,
    TimingConfiguration,
)
from controller.contracts import Observation, Plans
from controller.counter_log import CounterLog
from controller.feedback import FeedbackCollector, changed_intersections
from controller.ledger import Ledger
from simulators.field.records import FieldCounters, WindowTotals
from tests.support.timings import two_stage_base

BASE = two_stage_base()
TLS = ("J1", "J2")


def _plan(green_s: int) -> IntersectionTiming:
    base = IntersectionTiming.from_base(BASE)
    phases = list(base.phases)
    delta = green_s - phases[0].duration_s
    phases[0] = phases[0].model_copy(update={"duration_s": green_s})
    return base.model_copy(update={"phases": tuple(phases), "cycle_s": base.cycle_s + delta})


def settings_for(tmp_path: Path, **feedback: Any) -> Settings:
    return Settings(
        simulation=SimulationSettings(network=tmp_path / "n.net.xml", horizon_s=600),
        state_dir=tmp_path,
        feedback=FeedbackSettings(**feedback),
    )


def config(sequence: int, green_s: int) -> TimingConfiguration:
    now = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)
    return TimingConfiguration(
        network=NetworkRef(id="n", sha256="a" * 64),
        sequence=sequence,
        issued_at=now,
        valid_from=now,
        valid_until=now + timedelta(minutes=12),
        predicted=Prediction(
            wait_change=-0.2,
            wait_change_ci=(-0.25, -0.15),
            nox_change=-0.01,
            nox_change_ci=(-0.02, 0.0),
            horizon_s=600,
            seeds=(1, 2, 3),
        ),
        evidence=Evidence(demand_sha256="b" * 64),
        intersections={t: _plan(green_s) for t in TLS},
    )


class Field:
    """Halting accumulates at the rate of the plan in force; a restart zeroes one controller."""

    def __init__(self) -> None:
        #: (from field time, {tls: halting vehicles}) in order
        self.rates: list[tuple[float, dict[str, float]]] = [(0.0, {"J1": 1.0, "J2": 2.0})]
        #: tls -> field time its controller restarted (totals start from zero there)
        self.restarts: dict[str, float] = {}

    def plan(self, at_s: float, rates: Mapping[str, float]) -> None:
        self.rates.append((at_s, dict(rates)))

    def total(self, tls: str, t: float, since: float = 0.0) -> float:
        out = 0.0
        for i, (start, rates) in enumerate(self.rates):
            end = self.rates[i + 1][0] if i + 1 < len(self.rates) else float("inf")
            lo, hi = max(start, since), min(end, t)
            if hi > lo:
                out += rates[tls] * (hi - lo)
        return out

    def counters(self, t: float) -> FieldCounters:
        halting = {tls: self.total(tls, t, self._since(tls, t)) for tls in TLS}
        return FieldCounters(
            field_time_s=t,
            halting_veh_s=halting,
            nox_mg={tls: 10.0 * v for tls, v in halting.items()},
            detector_counts={"d1": int(t)},
        )

    def _since(self, tls: str, t: float) -> float:
        at = self.restarts.get(tls)
        return at if at is not None and t >= at else 0.0

    def observation(self, t: float) -> Observation:
        return Observation(
            field_time_s=t,
            counts={"d1": 100.0},
            interval_s=100.0,
            active={},
            measurements={},
            counters=self.counters(t),
        )


@dataclass(frozen=True)
class Estimate:
    wait_change: float
    wait_ci: tuple[float, float]
    nox_change: float
    nox_ci: tuple[float, float]
    gap_before: float
    model_change: float
    field_before_veh_s: float
    twin_before_veh_s: float
    method: str = "fake/v1"

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method}


class Counterfactual:
    """``after / before - 1`` of the windows handed in (what the field did, no model)."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def estimate(
        self,
        *,
        before: WindowTotals,
        after: WindowTotals,
        previous: Plans,
        deployed: Plans,
        only: frozenset[str],
        demand_scale: float,
    ) -> Estimate:
        self.calls.append({"before": before, "after": after, "only": only})
        change = after.wait_veh_s(only) / before.wait_veh_s(only) - 1
        return Estimate(
            change,
            (change - 0.01, change + 0.01),
            change,
            (change, change),
            0.0,
            change,
            before.wait_veh_s(only),
            before.wait_veh_s(only),
        )


class Proposer:
    def __init__(self, last_observations: Mapping[str, Any] | None = None) -> None:
        self.policy: Any | None = None
        self.policy_path: Path | None = None
        self.last_observations: Mapping[str, Any] = last_observations or {}


def _deploy(
    collector: FeedbackCollector,
    ledger: Ledger,
    field: Field,
    sequence: int,
    at_s: float,
    green_s: int,
    previous: Plans,
    *,
    reports_totals: bool = True,
) -> TimingConfiguration:
    cfg = config(sequence, green_s)
    ref = ledger.append(
        "deployment", {"sequence": sequence, "config_digest": cfg.digest(), "envelope": {}}
    )
    # the deploying cycle observed a few seconds before the common activation time
    observation = field.observation(at_s - 5)
    if not reports_totals:
        observation = replace(observation, counters=None)
    collector.deployed(
        ref.index,
        cfg,
        observation,
        activate_at_field_time_s=at_s,
        previous=previous,
    )
    return cfg


def _observe(
    collector: FeedbackCollector, field: Field, until_s: float, every_s: float = 100.0
) -> None:
    t = 0.0
    while t <= until_s:
        collector.observed(field.observation(t))
        t += every_s


def _records(ledger: Ledger) -> dict[int, Mapping[str, Any]]:
    return {int(r.body["sequence"]): r.body for r in ledger.find("measured_delta")}


BASE_PLANS = {t: _plan(30) for t in TLS}


def test_two_deployments_in_a_row_each_measured_over_its_own_window(tmp_path: Path) -> None:
    """Plan 2 cuts plan 1's window at 400 s (>= half): each is measured over its own seconds."""
    field = Field()
    estimator = Counterfactual()
    with Ledger.open(tmp_path / "ledger.sqlite") as ledger:
        collector = FeedbackCollector(
            settings_for(tmp_path),
            ledger,
            lambda: field.counters(2200.0),
            Proposer(),
            counterfactual=estimator,
        )
        _observe(collector, field, 995.0)
        first = _deploy(collector, ledger, field, 1, 1000.0, 40, BASE_PLANS)
        field.plan(1000.0, {"J1": 0.8, "J2": 1.6})
        for t in (1100.0, 1200.0, 1300.0):
            collector.observed(field.observation(t))
        _deploy(collector, ledger, field, 2, 1400.0, 50, dict(first.intersections))
        field.plan(1400.0, {"J1": 0.5, "J2": 1.0})
        for t in (1500.0, 1600.0, 1700.0, 1800.0):
            collector.observed(field.observation(t))
        report = collector.collect()
        records = _records(ledger)

    assert report.measured == 2
    one, two = records[1], records[2]
    # plan 1: after window [1000, 1400] (cut by plan 2), before of the same length
    assert one["status"] == "measured"
    assert one["window"] == {"begin_s": 1000.0, "end_s": 1400.0}
    assert one["superseded_by"] == 2
    assert one["plan_in_force"] == 1
    assert one["measured"]["before_window"] == {"begin_s": 600.0, "end_s": 1000.0}
    # the activation edge is interpolated between the readings at 995 s and 1100 s
    # (0.5 % here), not snapped to the reading at 995 s
    assert one["measured"]["wait_before_veh_s"] == pytest.approx(400 * 3.0, rel=0.01)
    assert one["measured"]["wait_after_veh_s"] == pytest.approx(400 * 2.4, rel=0.01)
    assert one["estimated"]["wait_change"] == pytest.approx(-0.2, abs=0.01)
    # plan 2: its before window lies under plan 1 only, its after window under plan 2
    assert two["status"] == "measured"
    assert two["window"] == {"begin_s": 1400.0, "end_s": 1800.0}
    assert two["measured"]["wait_before_veh_s"] == pytest.approx(400 * 2.4, rel=0.01)
    assert two["measured"]["wait_after_veh_s"] == pytest.approx(400 * 1.5, rel=0.01)
    assert two["estimated"]["wait_change"] == pytest.approx(-0.375, abs=0.01)
    assert two["superseded_by"] is None
    # errors against the prediction, in percentage points
    assert one["errors"]["estimated_minus_predicted_pp"] == pytest.approx(
        100 * (one["estimated"]["wait_change"] - one["predicted"]["wait_change"]), abs=1e-3
    )
    assert two["errors"]["estimated_minus_predicted_pp"] == pytest.approx(-17.5, abs=1.0)


def test_a_plan_replaced_within_half_its_window_is_superseded_not_measured(
    tmp_path: Path,
) -> None:
    field = Field()
    estimator = Counterfactual()
    with Ledger.open(tmp_path / "ledger.sqlite") as ledger:
        collector = FeedbackCollector(
            settings_for(tmp_path),
            ledger,
            lambda: field.counters(2500.0),
            Proposer(),
            counterfactual=estimator,
        )
        _observe(collector, field, 995.0)
        first = _deploy(collector, ledger, field, 1, 1000.0, 40, BASE_PLANS)
        field.plan(1000.0, {"J1": 0.8, "J2": 1.6})
        collector.observed(field.observation(1100.0))
        _deploy(collector, ledger, field, 2, 1200.0, 50, dict(first.intersections))
        field.plan(1200.0, {"J1": 0.5, "J2": 1.0})
        report = collector.collect()
        records = _records(ledger)

    assert report.superseded == 1
    one = records[1]
    assert one["status"] == "superseded"
    assert one["superseded_by"] == 2
    assert one["window"] == {"begin_s": 1000.0, "end_s": 1200.0}
    assert one["estimated"] is None
    assert "wait_change" not in one["measured"]
    # plan 2's before window would hold only 200 s of plan 1: not measured either
    assert records[2]["status"] == "not_measurable"
    assert "previous plan span 200 s" in records[2]["measured"]["reason"]
    assert estimator.calls == []


def test_only_a_later_plan_supersedes_one_activated_at_a_later_field_time_does_not(
    tmp_path: Path,
) -> None:
    """A field clock that started again (a new day of evaluation, a reset emulator):
    plan 1, activated at 1200 s of the old clock, does not cut plan 2's window."""
    field = Field()
    estimator = Counterfactual()
    with Ledger.open(tmp_path / "ledger.sqlite") as ledger:
        collector = FeedbackCollector(
            settings_for(tmp_path),
            ledger,
            lambda: field.counters(1700.0),
            Proposer(),
            counterfactual=estimator,
        )
        _deploy(collector, ledger, field, 1, 1200.0, 40, BASE_PLANS)
        _observe(collector, field, 995.0)
        _deploy(collector, ledger, field, 2, 1000.0, 50, BASE_PLANS)
        field.plan(1000.0, {"J1": 0.5, "J2": 1.0})
        for t in (1100.0, 1200.0, 1300.0, 1400.0, 1500.0, 1600.0):
            collector.observed(field.observation(t))
        collector.collect()
        two = _records(ledger)[2]
    assert two["status"] == "measured", two["measured"]
    assert two["superseded_by"] is None
    assert two["window"] == {"begin_s": 1000.0, "end_s": 1600.0}


def test_hold_refuses_while_a_window_is_open(tmp_path: Path) -> None:
    field = Field()
    with Ledger.open(tmp_path / "ledger.sqlite") as ledger:
        collector = FeedbackCollector(settings_for(tmp_path), ledger, lambda: None, Proposer())
        assert collector.holding(900.0) is None
        _deploy(collector, ledger, field, 7, 1000.0, 40, BASE_PLANS)
        assert collector.holding(1000.0) == "measuring plan 7 until t=1600 s"
        assert collector.holding(1599.0) == "measuring plan 7 until t=1600 s"
        assert collector.holding(1600.0) is None
        free = FeedbackCollector(
            settings_for(tmp_path, hold_deployments=False), ledger, lambda: None, Proposer()
        )
        _deploy(free, ledger, field, 8, 1000.0, 40, BASE_PLANS)
        assert free.holding(1100.0) is None


def test_hold_waits_for_one_full_before_window_after_start_up(tmp_path: Path) -> None:
    """A plan activated right after start-up would have no before window to measure."""
    field = Field()
    with Ledger.open(tmp_path / "ledger.sqlite") as ledger:
        collector = FeedbackCollector(
            settings_for(tmp_path), ledger, lambda: field.counters(100.0), Proposer()
        )
        collector.read_baseline()
        assert collector.holding(340.0) == (
            "collecting the before window: counter readings span 240 s of the 600 s window"
        )
        collector.observed(field.observation(340.0))
        assert collector.holding(699.0) is not None
        assert collector.holding(700.0) is None
        # controllers that report no totals: nothing to wait for
        blind = FeedbackCollector(settings_for(tmp_path), ledger, lambda: None, Proposer())
        blind.read_baseline()
        assert blind.holding(10.0) is None
        free = FeedbackCollector(
            settings_for(tmp_path, hold_deployments=False),
            ledger,
            lambda: field.counters(100.0),
            Proposer(),
        )
        free.read_baseline()
        assert free.holding(200.0) is None


def test_a_controller_restart_leaves_that_intersection_out_never_negative(
    tmp_path: Path,
) -> None:
    field = Field()
    estimator = Counterfactual()
    field.restarts["J2"] = 1250.0
    with Ledger.open(tmp_path / "ledger.sqlite") as ledger:
        collector = FeedbackCollector(
            settings_for(tmp_path),
            ledger,
            lambda: field.counters(1700.0),
            Proposer(),
            counterfactual=estimator,
        )
        _observe(collector, field, 995.0)
        _deploy(collector, ledger, field, 1, 1000.0, 40, BASE_PLANS)
        field.plan(1000.0, {"J1": 0.8, "J2": 1.6})
        for t in (1100.0, 1200.0, 1300.0, 1400.0, 1500.0, 1600.0):
            collector.observed(field.observation(t))
        collector.collect()
        (record,) = ledger.find("measured_delta")

    body = record.body
    assert body["status"] == "measured"
    assert body["measured"]["intersections"] == ["J1"]
    (call,) = estimator.calls
    assert call["only"] == frozenset({"J1"})
    assert set(call["before"].halting_veh_s) == set(call["after"].halting_veh_s) == {"J1"}
    assert call["after"].wait_veh_s() == pytest.approx(600 * 0.8, rel=0.01)


def test_counter_log_restarts_when_field_time_goes_back() -> None:
    field = Field()
    log = CounterLog(keep_s=10_000)
    for t in (0.0, 100.0, 200.0, 300.0):
        log.add(field.counters(t))
    assert log.window(50.0, 250.0, max_gap_s=150.0) is not None
    log.add(field.counters(50.0))  # the field restarted
    assert len(log) == 1
    assert log.window(0.0, 50.0, max_gap_s=150.0) is None


def test_counter_log_interpolates_edges_and_drops_a_decreasing_series() -> None:
    log = CounterLog(keep_s=10_000)
    log.add(FieldCounters(0.0, {"A": 0.0, "B": 0.0}, {"A": 0.0, "B": 0.0}, {"d": 0}))
    log.add(FieldCounters(100.0, {"A": 100.0, "B": 50.0}, {"A": 1.0, "B": 1.0}, {"d": 10}))
    log.add(FieldCounters(200.0, {"A": 300.0, "B": 5.0}, {"A": 2.0, "B": 0.1}, {"d": 20}))
    window = log.window(50.0, 150.0, max_gap_s=100.0)
    assert window is not None
    assert window.halting_veh_s == {"A": pytest.approx(200.0 - 50.0)}
    assert window.detector_counts == {"d": 10}
    assert log.window(50.0, 150.0, max_gap_s=99.0) is None


def test_counter_log_cuts_a_windows_loop_counts_at_the_readings_inside_it() -> None:
    log = CounterLog(keep_s=10_000)
    for t, d in ((0.0, 0), (100.0, 10), (200.0, 30), (300.0, 30), (400.0, 40)):
        log.add(FieldCounters(t, {"A": t}, {"A": t}, {"d": d}))
    window = log.window(50.0, 350.0, max_gap_s=100.0)
    assert window is not None and window.detector_counts == {"d": 30}
    # edges interpolated as the totals are; the loop counted nothing in 200-300 s
    assert window.detector_pieces == (
        (50.0, {"d": pytest.approx(5.0)}),
        (100.0, {"d": 20.0}),
        (100.0, {"d": 0.0}),
        (50.0, {"d": pytest.approx(5.0)}),
    )
    assert sum(c["d"] for _, c in window.detector_pieces) == pytest.approx(30.0)
    # a window with no reading inside it is one piece
    one = log.window(120.0, 180.0, max_gap_s=100.0)
    assert one is not None and one.detector_pieces == ()


def test_controllers_without_totals_make_the_delta_not_measurable(tmp_path: Path) -> None:
    field = Field()
    with Ledger.open(tmp_path / "ledger.sqlite") as ledger:
        collector = FeedbackCollector(
            settings_for(tmp_path),
            ledger,
            lambda: None,
            Proposer(),
            counterfactual=Counterfactual(),
        )
        _deploy(collector, ledger, field, 1, 1000.0, 40, BASE_PLANS, reports_totals=False)
        bare = Observation(
            field_time_s=2300.0, counts={}, interval_s=100.0, active={}, measurements={}
        )
        collector.observed(bare)
        assert collector.collect().not_measurable == 1
        (record,) = ledger.find("measured_delta")
    assert record.body["status"] == "not_measurable"
    assert "HaltingTotal" in record.body["measured"]["reason"]
    assert record.body["estimated"] is None


def test_changed_intersections_are_those_whose_plan_moved() -> None:
    previous = {"J1": _plan(30), "J2": _plan(30)}
    assert changed_intersections(previous, {"J1": _plan(40), "J2": _plan(30)}) == {"J1"}


def test_a_restarted_daemon_measures_the_window_it_had_open(tmp_path: Path) -> None:
    """Counter readings and the open deployment come back from the cycle records."""
    field = Field()
    with Ledger.open(tmp_path / "ledger.sqlite") as ledger:
        for t in range(0, 1000, 100):
            obs = field.observation(float(t)).to_dict()
            ledger.append("cycle", {"cycle_id": f"c{t}", "outcome": "refused", "observation": obs})
        cfg = config(1, 40)
        cycle = ledger.append(
            "cycle",
            {
                "cycle_id": "c995",
                "outcome": "pushing",
                "observation": field.observation(995.0).to_dict(),
                "current": {t: p.model_dump(mode="json") for t, p in BASE_PLANS.items()},
            },
        )
        ledger.append(
            "deployment",
            {
                "sequence": 1,
                "config_digest": cfg.digest(),
                "envelope": {},
                "configuration": cfg.to_dict(),
                "cycle_index": cycle.index,
                "result": "deployed",
                "push": {"ok": True, "results": {"activate_at_field_time_s": 1000.0}},
            },
        )
        field.plan(1000.0, {"J1": 0.8, "J2": 1.6})
        for later in (1100.0, 1200.0, 1300.0):  # the daemon stopped after these
            obs = field.observation(later).to_dict()
            ledger.append(
                "cycle", {"cycle_id": f"c{later}", "outcome": "refused", "observation": obs}
            )

        estimator = Counterfactual()
        collector = FeedbackCollector(
            settings_for(tmp_path),
            ledger,
            lambda: field.counters(1700.0),
            Proposer(),
            counterfactual=estimator,
        )
        assert collector.resume_from_ledger() == 1
        assert collector.holding(1400.0) == "measuring plan 1 until t=1600 s"
        for now in (1400.0, 1500.0, 1600.0):  # the restarted daemon's cycles
            collector.observed(field.observation(now))
        assert collector.collect().measured == 1
        (record,) = ledger.find("measured_delta")
        # measured once: a second resume finds nothing open
        assert collector.resume_from_ledger() == 0
    assert record.body["window"] == {"begin_s": 1000.0, "end_s": 1600.0}
    assert record.body["measured"]["intersections"] == ["J1", "J2"]
    (call,) = estimator.calls
    assert call["before"].begin_s == 400.0
    assert call["after"].wait_veh_s() == pytest.approx(600 * 2.4, rel=0.01)


def test_a_window_after_the_field_clock_went_back_is_measured_not_declared_overdue(
    tmp_path: Path,
) -> None:
    """A new day (or a restarted field) starts at an earlier field time than the last one seen.

    Before, the collector kept the old clock's latest time (3000 s here) and, at
    the first collect after a deployment at 1000 s, found its window "overdue"
    (3000 > 1000 + 600 + 600) and recorded it not measurable: the multi-day
    benchmark lost the truth of every day that began before the previous one ended.
    """
    earlier, field = Field(), Field()
    estimator = Counterfactual()
    with Ledger.open(tmp_path / "ledger.sqlite") as ledger:
        collector = FeedbackCollector(
            settings_for(tmp_path, window_s=600),
            ledger,
            lambda: field.counters(1300.0),
            Proposer(),
            counterfactual=estimator,
        )
        _observe(collector, earlier, 3000.0)  # the day before, up to 3000 s
        _observe(collector, field, 995.0)  # today, from 0 s
        _deploy(collector, ledger, field, 1, 1000.0, 40, BASE_PLANS)
        field.plan(1000.0, {"J1": 0.5, "J2": 1.0})
        for t in (1100.0, 1200.0, 1300.0):
            collector.observed(field.observation(t))
        early = collector.collect()
        assert early.not_measurable == 0 and early.measured == 0  # still open
        collector.read_counters = lambda: field.counters(1700.0)
        for t in (1400.0, 1500.0, 1600.0):
            collector.observed(field.observation(t))
        report = collector.collect()
        records = _records(ledger)
    assert report.measured == 1
    assert records[1]["status"] == "measured"
    assert records[1]["window"] == {"begin_s": 1000.0, "end_s": 1600.0}
    assert records[1]["estimated"]["wait_change"] == pytest.approx(-0.5, abs=0.01)
