"""Measured deltas after a deployment (real ledger in tmp, fake controller readings)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from configs.settings import Settings, SimulationSettings
from configs.timing import (
    Evidence,
    IntersectionTiming,
    NetworkRef,
    Prediction,
    TimingConfiguration,
)
from controller.cycle import Observation
from controller.feedback import FeedbackCollector
from controller.ledger import Ledger
from rl.features import build_observations, layouts_from_network
from rl.feedback import FeedbackStore
from rl.measured import measure_delta
from tests.support.rl_fakes import fake_network, two_phase_light
from tests.support.timings import two_stage_base

BASE = two_stage_base()


def _config(sequence: int = 1) -> TimingConfiguration:
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
        intersections={"J1": IntersectionTiming.from_base(BASE)},
    )


class Proposer:
    policy = None
    policy_path = None
    last_observations: dict[str, object] = {}


def test_measured_delta_recorded_after_the_window_with_prediction_error(tmp_path: Path) -> None:
    settings = Settings(
        simulation=SimulationSettings(network=tmp_path / "n.net.xml"), state_dir=tmp_path
    )
    clock = {"t": 1000.0}
    readings = {"J1": (30.0, 2000.0), "J2": (10.0, 1000.0)}

    def read() -> tuple[float, dict[str, tuple[float, float]]]:
        return clock["t"], dict(readings)

    with Ledger.open(tmp_path / "ledger.sqlite") as ledger:
        ref = ledger.append(
            "deployment", {"sequence": 1, "config_digest": "c" * 64, "envelope": {}}
        )
        collector = FeedbackCollector(settings, ledger, read, Proposer())
        observation = Observation(
            field_time_s=1000.0,
            counts={},
            interval_s=240.0,
            active={},
            measurements={"J1": (40.0, 2100.0), "J2": (10.0, 1000.0)},
        )
        collector.deployed(ref.index, _config(), observation, activate_at_field_time_s=1010.0)

        # the plan has not run long enough: nothing measured yet
        clock["t"] = 1010.0 + settings.schedule.measure_after_s - 1
        assert collector.collect().measured == 0
        assert ledger.find("measured_delta") == []

        clock["t"] = 1010.0 + settings.schedule.measure_after_s
        report = collector.collect()
        assert report.measured == 1
        (record,) = ledger.find("measured_delta")
        assert record.body["deployment"] == ref.index
        measured = record.body["measured"]
        # mean wait (40 + 10) / 2 = 25 s before, (30 + 10) / 2 = 20 s after: -20 %
        assert measured["wait_change"] == pytest.approx(-0.2)
        assert measured["nox_change"] == pytest.approx((3000 - 3100) / 3100, abs=1e-6)
        assert record.body["wait_error"] == pytest.approx(0.0, abs=1e-9)
        assert report.prediction_error_ratios == pytest.approx((0.0,), abs=1e-6)
        # measured once only
        assert collector.collect().measured == 0


def test_ledger_and_feedback_store_state_the_same_measured_delta(tmp_path: Path) -> None:
    """One definition: pooled mean wait per vehicle, in the ledger and in the RL store."""
    settings = Settings(
        simulation=SimulationSettings(network=tmp_path / "n.net.xml"), state_dir=tmp_path
    )
    net = fake_network(two_phase_light("J1"), two_phase_light("J2"))
    layouts = layouts_from_network(net)
    timings = {t: IntersectionTiming.from_base(lay.base) for t, lay in layouts.items()}
    observations = build_observations(layouts, {"e1_n_J1_0": 30}, 240.0, timings)
    # J1's wait falls by a quarter, J2's (short) wait is unchanged: pooled -20 %,
    # while the mean of per-intersection ratios would say -12.5 %
    before = {"J1": (40.0, 2100.0), "J2": (10.0, 1000.0)}
    after = {"J1": (30.0, 2000.0), "J2": (10.0, 1000.0)}

    class Holder:
        policy = None
        policy_path = None
        last_observations = observations

    config = _config().model_copy(update={"intersections": timings})
    with (
        Ledger.open(tmp_path / "ledger.sqlite") as ledger,
        FeedbackStore(tmp_path / "feedback.sqlite") as store,
    ):
        ref = ledger.append(
            "deployment", {"sequence": 1, "config_digest": "c" * 64, "envelope": {}}
        )
        collector = FeedbackCollector(settings, ledger, lambda: (1e6, dict(after)), Holder(), store)
        observation = Observation(
            field_time_s=1000.0, counts={}, interval_s=240.0, active={}, measurements=before
        )
        collector.deployed(ref.index, config, observation, activate_at_field_time_s=1000.0)
        assert collector.collect().measured == 1
        (record,) = ledger.find("measured_delta")
        stored = store.record_measurement(config.digest(), before, after)
    change = measure_delta(before, after)
    assert change is not None
    assert change.wait_change == pytest.approx(-0.2)
    assert record.body["measured"]["wait_change"] == pytest.approx(stored.wait_change, abs=1e-6)
    assert stored.wait_change == pytest.approx(change.wait_change)
    assert stored.nox_change == pytest.approx(record.body["measured"]["nox_change"], abs=1e-6)
