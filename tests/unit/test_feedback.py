"""The measured-delta record, the feedback store's reward, calibration, truth, the hold.

Real ledger and feedback store in tmp; the field, estimator, calibration and
truth fork are fakes (tests/unit/test_feedback_windows.py has the field).
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from controller.contracts import Observation
from controller.cycle import CycleRunner
from controller.feedback import QUANTITY, FeedbackCollector
from controller.ledger import Ledger, verify_ledger
from controller.ledger.records import MeasuredDeltaRecord, parse_body
from controller.ledger.report import build_report
from controller.ledger.report_deltas import summarise_deltas
from controller.prediction import changed_intersections, predicted_from_cycle
from hsm.verify import load_public_key
from rl.features import build_observations, layouts_from_network
from rl.feedback import FeedbackStore
from tests.support.cycle_ports import (
    BASE,
    NET,
    FakeField,
    FakeProposer,
    FakeTwin,
    cycle_settings,
)
from tests.support.ledgerdata import add_cycle
from tests.support.rl_fakes import fake_network, two_phase_light
from tests.support.softkeys import SoftwareSigner
from tests.unit.test_feedback_windows import (
    BASE_PLANS,
    Counterfactual,
    Field,
    Proposer,
    _observe,
    config,
    settings_for,
)


def _cycle_with_prediction(ledger: Ledger, wait: float, nox: float) -> int:
    """A cycle record whose what-if predicted the approach totals' change for 'policy'."""
    change = {"mean": wait, "ci": [wait - 0.05, wait + 0.05], "per_seed": [wait]}
    nox_change = {"mean": nox, "ci": [nox - 0.01, nox + 0.01], "per_seed": [nox]}
    ref = ledger.append(
        "cycle",
        {
            "cycle_id": "c1",
            "outcome": "pushing",
            "gate": {"chosen": "policy", "decision": "pass"},
            "whatif": {
                "result": {
                    "outcomes": [
                        {
                            "name": "policy",
                            "changes": {"approach_wait": change, "approach_nox": nox_change},
                        }
                    ]
                }
            },
            "current": {t: p.model_dump(mode="json") for t, p in BASE_PLANS.items()},
        },
    )
    return ref.index


class Truth:
    """A fork that has finished: the field's true change."""

    class Delta:
        asked: list[tuple[float | None, frozenset[str] | None]] = []

        def wait_change(
            self, horizon_s: float | None = None, only: frozenset[str] | None = None
        ) -> float:
            self.asked.append((horizon_s, only))
            return -0.18

        def nox_change(
            self, horizon_s: float | None = None, only: frozenset[str] | None = None
        ) -> float:
            return -0.02

        def to_dict(self) -> dict[str, Any]:
            return {"wait_change": -0.18, "nox_change": -0.02, "seeds": [7]}

    class Pending:
        def done(self) -> bool:
            return True

        def result(self) -> Truth.Delta:
            return Truth.Delta()

    def __init__(self) -> None:
        self.started: list[dict[str, Any]] = []

    def start(self, **kwargs: Any) -> Truth.Pending:
        self.started.append(kwargs)
        return Truth.Pending()


class Calibration:
    def __init__(self, step: float) -> None:
        self.demand_scale = 1.0
        self.step = step
        self.seen: list[Any] = []

    def update_from_estimate(self, estimate: Any) -> float:
        self.seen.append(estimate)
        self.demand_scale *= 1.0 + self.step
        return self.demand_scale

    def to_dict(self) -> dict[str, Any]:
        return {"demand_scale": self.demand_scale, "history": [{"n": len(self.seen)}]}


def _measure_one(
    tmp_path: Path, ledger: Ledger, **ports: Any
) -> tuple[FeedbackCollector, dict[str, Any]]:
    """Deploy plan 1 at t=1000 s (J1 and J2 halting falls by 20 %), collect at 1700 s."""
    field = Field()
    collector = FeedbackCollector(
        settings_for(tmp_path),
        ledger,
        lambda: field.counters(1700.0),
        ports.pop("proposer", Proposer()),
        ports.pop("store", None),
        counterfactual=Counterfactual(),
        **ports,
    )
    _observe(collector, field, 995.0)
    cycle_index = _cycle_with_prediction(ledger, -0.23, -0.01)
    cfg = config(1, 40)
    dep = ledger.append(
        "deployment",
        {"sequence": 1, "config_digest": cfg.digest(), "envelope": {}, "cycle_index": cycle_index},
    )
    collector.deployed(dep.index, cfg, field.observation(995.0), activate_at_field_time_s=1000.0)
    field.plan(1000.0, {"J1": 0.8, "J2": 1.6})
    for t in range(1100, 1700, 100):
        collector.observed(field.observation(float(t)))
    report = collector.collect()
    assert report.measured == 1
    (record,) = ledger.find("measured_delta")
    return collector, dict(record.body)


def test_record_states_predicted_estimated_true_and_errors_of_one_quantity(
    tmp_path: Path,
) -> None:
    truth = Truth()
    with Ledger.open(tmp_path / "ledger.sqlite") as ledger:
        _, body = _measure_one(tmp_path, ledger, truth=truth)
    assert body["quantity"] == QUANTITY
    # the prediction is the what-if's approach_wait, not the configuration's mean wait
    assert body["predicted"]["quantity"] == QUANTITY
    assert body["predicted"]["wait_change"] == pytest.approx(-0.23)
    assert body["predicted"]["wait_ci"] == pytest.approx([-0.28, -0.18])
    estimated = body["estimated"]
    assert estimated["wait_change"] == pytest.approx(-0.2, abs=0.01)
    assert estimated["method"] == "fake/v1"
    assert set(estimated) >= {"wait_ci", "nox_change", "nox_ci", "gap_before", "model_change"}
    assert body["true"]["wait_change"] == pytest.approx(-0.18)
    errors = body["errors"]
    assert errors["estimated_minus_predicted_pp"] == pytest.approx(
        100 * (estimated["wait_change"] + 0.23), abs=1e-3
    )
    assert errors["true_minus_predicted_pp"] == pytest.approx(5.0)
    assert errors["true_minus_estimated_pp"] == pytest.approx(
        100 * (-0.18 - estimated["wait_change"]), abs=1e-3
    )
    # the true change is asked over the full window, on the intersections compared
    assert Truth.Delta.asked[-1] == (None, frozenset({"J1", "J2"}))
    # the fork was started at activation with the plan in force and the previous one
    (started,) = truth.started
    assert started["activate_at_field_time_s"] == 1000.0
    assert started["previous"] == BASE_PLANS
    assert started["window_s"] == 600.0


def test_the_estimate_is_the_feedback_store_reward(tmp_path: Path) -> None:
    net = fake_network(two_phase_light("J1"), two_phase_light("J2"))
    layouts = layouts_from_network(net)
    timings = {t: p for t, p in config(1, 40).intersections.items()}
    observations = build_observations(layouts, {"e1_n_J1_0": 30}, 240.0, timings)

    class Store(FeedbackStore):
        deltas: list[Any] = []

        def record_estimate(self, *args: Any, **kwargs: Any) -> Any:
            delta = super().record_estimate(*args, **kwargs)
            self.deltas.append(delta)
            return delta

    with (
        Ledger.open(tmp_path / "ledger.sqlite") as ledger,
        Store(tmp_path / "feedback.sqlite") as store,
    ):
        _, body = _measure_one(tmp_path, ledger, store=store, proposer=Proposer(observations))
        samples = store.samples()
        assert store.count() == len(samples.rewards) > 0
    (delta,) = Store.deltas
    assert delta.deployment == config(1, 40).digest()
    assert delta.source == "counterfactual"
    assert delta.wait_change == pytest.approx(body["estimated"]["wait_change"], abs=1e-5)
    assert delta.predicted_wait_change == pytest.approx(-0.23)


def test_calibration_record_when_the_scale_moves_and_none_when_it_does_not(
    tmp_path: Path,
) -> None:
    moving = Calibration(step=0.05)
    with Ledger.open(tmp_path / "a.sqlite") as ledger:
        _measure_one(tmp_path, ledger, calibration=moving)
        (record,) = ledger.find("calibration")
    assert record.body["demand_scale"] == pytest.approx(1.05)
    assert record.body["previous_demand_scale"] == pytest.approx(1.0)
    assert "history" not in record.body["calibration"]
    assert len(moving.seen) == 1
    with Ledger.open(tmp_path / "b.sqlite") as ledger:
        _measure_one(tmp_path, ledger, calibration=Calibration(step=0.0))
        assert ledger.find("calibration") == []


def test_old_measured_delta_records_still_read_verify_and_report(tmp_path: Path) -> None:
    """A ledger written by the interval collector: same records, new reader."""
    signer = SoftwareSigner()
    old_body = {
        "deployment": 0,
        "sequence": 1,
        "measured": {
            "wait_change": -0.2,
            "nox_change": -0.03,
            "wait_before_s": 25.0,
            "wait_after_s": 20.0,
            "nox_before_mg": 3100.0,
            "nox_after_mg": 3000.0,
            "intersections": 2,
            "field_time_s": 1250.0,
        },
        "predicted": {"wait_change": -0.2, "nox_change": -0.01},
        "wait_error": 0.0,
    }
    with Ledger.open(tmp_path / "ledger.sqlite") as ledger:
        ledger.enrol_key(signer)
        old_body["deployment"] = add_cycle(ledger, signer, 1, measured_wait=None)["deployment"]
        ledger.append("measured_delta", old_body)
        ledger.checkpoint(signer)
        (record,) = ledger.find("measured_delta")
        model = record.model()
        page = build_report(ledger, tmp_path / "report.html")
    result = verify_ledger(tmp_path / "ledger.sqlite", [load_public_key(signer.public_key_pem())])
    assert isinstance(model, MeasuredDeltaRecord)
    assert model.status is None and model.estimated is None
    assert parse_body("measured_delta", old_body) == model
    assert result.ok, result.first_problem
    assert "Measured deltas" in page
    assert "interval before/after (older record)" in page
    assert summarise_deltas([record]).measured == 1


def test_report_shows_the_delta_table_and_a_summary_line(tmp_path: Path) -> None:
    with Ledger.open(tmp_path / "ledger.sqlite") as ledger:
        _, body = _measure_one(tmp_path, ledger, truth=Truth())
        page = build_report(ledger, tmp_path / "report.html")
        summary = summarise_deltas(ledger.iter_records("measured_delta"))
    table = page[page.index("<h2>Measured deltas</h2>") :]
    assert "<table class='deltas'>" in table
    assert "-23.0 % (-28.0 … -18.0 %)" in table  # predicted with its interval
    assert "-18.0 %" in table  # the true change
    assert "1000–1600 s" in table  # the window
    assert "true − est" in table
    # about -0.2 estimated against -0.23 predicted: within 5 pp; truth -0.18 within 5 pp too
    assert summary.measured == 1 and summary.within_pp == 1 and summary.estimator_within_pp == 1
    assert (
        "1 of 1 deployments measured; 1 of them within 5 pp of the prediction; the estimate "
        "within 5 pp of the true change in 1 of 1 forked." in page
    )


def test_the_cycle_holds_a_passing_plan_while_a_window_is_open(tmp_path: Path) -> None:
    """Cycle 1 deploys; cycle 2's gate passes too, but the plan is held and recorded why."""
    settings = cycle_settings(tmp_path)
    field = FakeField()
    with Ledger.open(tmp_path / "ledger.sqlite") as ledger:
        collector = FeedbackCollector(settings, ledger, lambda: None, Proposer())
        runner = CycleRunner(
            settings,
            network=NET,
            bases={"J1": BASE},
            fleet=field,
            twin=FakeTwin(wait=-0.3),
            proposer=FakeProposer(),
            signer=SoftwareSigner(),
            ledger=ledger,
            closers=[],
            feedback=collector,
        )
        cancel = threading.Event()
        first = runner.run_cycle(datetime(2026, 11, 23, 8, 0, tzinfo=UTC), cancel)
        second = runner.run_cycle(datetime(2026, 11, 23, 8, 4, tzinfo=UTC), cancel)
        cycles = ledger.find("cycle")
    assert first.deployed and first.decision == "pass"
    assert not second.deployed and second.ok
    assert second.decision == "held"
    assert second.held == "measuring plan 1 until t=1900 s"
    assert len(field.pushed) == 1
    held = cycles[-1].body
    # FakeField's clock stands at 1000 s; the window is simulation.horizon_s = 900 s
    assert held["reason"] == "measuring plan 1 until t=1900 s"
    assert held["gate"]["decision"] == "pass"
    assert held["gate"]["held"] == held["reason"]
    assert held["outcome"] == "refused"


def test_observation_counters_are_recorded_with_the_cycle() -> None:
    field = Field()
    data = field.observation(100.0).to_dict()
    assert data["counters"]["halting_veh_s"] == {"J1": 100.0, "J2": 200.0}
    bare = Observation(field_time_s=1.0, counts={}, interval_s=1.0, active={}, measurements={})
    assert "counters" not in bare.to_dict()


def test_prediction_is_restricted_to_the_intersections_the_deployment_changed() -> None:
    """J1 changed (-20 % halting on the twin), J2 did not (0 %): predicted -20 %, not -10 %."""
    from simulators.twin.request import WhatIfRequest
    from simulators.twin.results import RunMetrics, WhatIfResult, aggregate

    def run(plan: str, seed: int, j1: float) -> RunMetrics:
        return RunMetrics(
            plan=plan,
            seed=seed,
            failed=None,
            vehicles=100,
            wait_veh_s=j1 + 100.0,
            delay_veh_s=j1 + 100.0,
            backlog_veh_s=0.0,
            arrived=90,
            nox_mg=j1 + 100.0,
            per_intersection={"J1": (j1, 50, j1), "J2": (100.0, 50, 100.0)},
            simulated_veh_s=1000.0,
            wall_s=0.1,
        )

    seeds = (1, 2, 3)
    request = WhatIfRequest(
        network="n.net.xml",
        demand="d.rou.xml",
        current=BASE_PLANS,
        candidates={"policy": {**BASE_PLANS, "J1": config(1, 40).intersections["J1"]}},
        horizon_s=600,
        warmup_s=60,
        seeds=seeds,
    )
    runs = {("current", s): run("current", s, 100.0 + s) for s in seeds}
    runs |= {("policy", s): run("policy", s, 0.8 * (100.0 + s)) for s in seeds}
    result = WhatIfResult(aggregate(request, runs), 600, 60, seeds, 0.95)
    cycle = {"gate": {"chosen": "policy"}, "whatif": {"result": result.to_dict()}}
    cfg = config(1, 40)
    only = changed_intersections(BASE_PLANS, {**BASE_PLANS, "J1": cfg.intersections["J1"]})
    assert only == {"J1"}
    predicted = predicted_from_cycle(cfg, cycle, only)
    assert predicted.quantity == QUANTITY
    assert predicted.wait_change == pytest.approx(-0.2)
    assert predicted.wait_ci == pytest.approx((-0.2, -0.2))  # every seed says -20 %
    # over both intersections (what the what-if's own approach_wait says) it would be -10 %
    whole = result.outcome("policy").changes["approach_wait"].mean
    assert whole == pytest.approx(-0.1, abs=0.01)
    assert predicted_from_cycle(cfg, {}, only).quantity.startswith("mean wait per vehicle")
