"""The feedback store's counterfactual estimates (real SQLite in tmp, no SUMO)."""

from __future__ import annotations

import math
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from configs.errors import ConfigError
from configs.timing import IntersectionTiming
from rl.features import build_observations, encode, layouts_from_network
from rl.feedback import FeedbackStore
from tests.support.rl_fakes import fake_network, three_phase_light, two_phase_light

# the samples table as the first schema created it (before source and the interval)
_OLD_SCHEMA = """
CREATE TABLE samples (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    deployment TEXT NOT NULL,
    tls_id TEXT NOT NULL,
    created_at TEXT NOT NULL,
    policy_sha256 TEXT,
    obs BLOB NOT NULL,
    action BLOB NOT NULL,
    predicted_wait_change REAL,
    predicted_nox_change REAL,
    before_wait_s REAL,
    before_nox_mg REAL,
    after_wait_s REAL,
    after_nox_mg REAL,
    wait_change REAL,
    nox_change REAL,
    reward REAL,
    measured_at TEXT,
    UNIQUE (deployment, tls_id)
);
CREATE INDEX samples_measured ON samples (reward);
"""


def _deployed():
    net = fake_network(two_phase_light("J1"), three_phase_light("J2"))
    layouts = layouts_from_network(net)
    timings = {t: IntersectionTiming.from_base(lay.base) for t, lay in layouts.items()}
    obs = build_observations(layouts, {"e1_n_J1_0": 40, "e1_n_J2_0": 25}, 240.0, timings)
    return obs, timings


def test_estimate_rewards_each_intersection_and_falls_back_to_the_deployment(
    tmp_path: Path,
) -> None:
    obs, plans = _deployed()
    with FeedbackStore(tmp_path / "fb.sqlite", nox_weight=0.5) as store:
        store.record_deployment("d1", obs, plans, predicted_wait_change=-0.15)
        delta = store.record_estimate(
            "d1",
            -0.10,
            0.02,
            per_intersection={"J1": (-0.30, 0.04), "J9": (5.0, 5.0)},  # J9: not deployed
            predicted_nox_change=-0.01,
            wait_change_ci=(-0.14, -0.06),
        )
        assert delta.source == "counterfactual"
        assert delta.intersections == 2
        assert (delta.wait_change, delta.nox_change) == (-0.10, 0.02)
        assert delta.wait_change_ci == (-0.14, -0.06)
        assert delta.predicted_wait_change == -0.15  # kept from record_deployment
        assert delta.predicted_nox_change == -0.01
        assert delta.wait_error == pytest.approx(0.05)
        samples = store.samples()
        assert store.count() == 2
    # rows ordered J1, J2 (record_deployment sorts): J1 its own change, J2 the deployment's
    assert samples.rewards == pytest.approx([0.30 - 0.5 * 0.04, 0.10 - 0.5 * 0.02])
    assert samples.deployments == ("d1", "d1")
    assert samples.predicted_rewards is not None and samples.reward_se is not None
    assert samples.predicted_rewards == pytest.approx([0.15 + 0.5 * 0.01] * 2)
    assert samples.reward_se == pytest.approx([0.08 / (2 * 1.959964)] * 2, rel=1e-5)
    assert np.array_equal(samples.obs[0], encode(obs["J1"]))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"wait_change": math.nan}, "wait_change is nan"),
        ({"nox_change": math.inf}, "nox_change is inf"),
        ({"predicted_wait_change": math.nan}, "predicted_wait_change"),
        ({"wait_change_ci": (-0.1, math.inf)}, r"wait_change_ci\[1\]"),
        ({"wait_change_ci": (0.1, -0.1)}, "reversed"),
        ({"per_intersection": {"J1": (math.nan, 0.0)}}, "per_intersection\\['J1'\\]"),
        ({"source": ""}, "source is empty"),
    ],
)
def test_estimate_refuses_non_finite_or_malformed_inputs(
    tmp_path: Path, kwargs: dict[str, object], match: str
) -> None:
    obs, plans = _deployed()
    args: dict[str, object] = {"wait_change": -0.1, "nox_change": 0.0, **kwargs}
    with FeedbackStore(tmp_path / "fb.sqlite") as store:
        store.record_deployment("d1", obs, plans)
        with pytest.raises(ConfigError, match=match):
            store.record_estimate("d1", **args)  # type: ignore[arg-type]
        assert store.count() == 0  # nothing half-written


def test_estimate_of_an_unknown_deployment_is_refused(tmp_path: Path) -> None:
    with (
        FeedbackStore(tmp_path / "fb.sqlite") as store,
        pytest.raises(ConfigError, match="never recorded"),
    ):
        store.record_estimate("nope", -0.1, 0.0)


def test_sources_are_kept_apart_and_the_old_measurement_still_works(tmp_path: Path) -> None:
    obs, plans = _deployed()
    with FeedbackStore(tmp_path / "fb.sqlite") as store:
        store.record_deployment("old", obs, plans, predicted_wait_change=-0.2)
        old = store.record_measurement(
            "old", {"J1": (10.0, 100.0), "J2": (10.0, 100.0)}, {"J1": (8.0, 100.0)}
        )
        assert old.source == "interval" and old.wait_change_ci is None
        store.record_deployment("new", obs, plans)
        store.record_estimate("new", -0.05, 0.0)
        assert len(store.samples()) == 3
        assert store.samples(source="interval").deployments == ("old",)
        assert store.samples(source="counterfactual").deployments == ("new", "new")
        # the before/after way leaves no interval: its standard error is unknown
        interval = store.samples(source="interval")
        assert interval.reward_se is not None and np.isnan(interval.reward_se).all()


def test_a_store_of_the_first_schema_opens_keeps_its_rows_and_takes_estimates(
    tmp_path: Path,
) -> None:
    obs, plans = _deployed()
    path = tmp_path / "fb.sqlite"
    vec = encode(obs["J1"]).astype(np.float32).tobytes()
    with sqlite3.connect(path) as db:
        db.executescript(_OLD_SCHEMA)
        db.execute(
            "INSERT INTO samples (deployment, tls_id, created_at, obs, action,"
            " predicted_wait_change, wait_change, nox_change, reward)"
            " VALUES ('d0', 'J1', '2026-11-30T08:00:00Z', ?, ?, -0.1, -0.2, 0.0, 0.2)",
            (vec, np.zeros(10, dtype=np.float32).tobytes()),
        )
    db.close()
    with FeedbackStore(path) as store:
        assert store.count() == 1
        kept = store.samples(source="interval")  # a first-schema row counts as interval
        assert kept.deployments == ("d0",)
        assert kept.rewards == pytest.approx([0.2])
        assert kept.predicted_rewards == pytest.approx([0.1])
        store.record_deployment("d1", obs, plans)
        store.record_estimate("d1", -0.1, 0.0, wait_change_ci=(-0.2, 0.0))
        assert store.count() == 3
    with FeedbackStore(path) as again:  # reopening a migrated file changes nothing
        assert again.count() == 3
        assert again.samples(source="counterfactual").deployments == ("d1", "d1")
    with sqlite3.connect(path) as db:
        columns = {row[1] for row in db.execute("PRAGMA table_info(samples)")}
    db.close()
    assert {"source", "wait_ci_low", "wait_ci_high"} <= columns
