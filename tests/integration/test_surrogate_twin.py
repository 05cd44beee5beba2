"""The screening surrogate on the real twin: collect rows, train, screen like the daemon."""

from __future__ import annotations

import json
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest

from configs.settings_file import load_settings
from configs.timing import IntersectionTiming
from controller.cli import run
from controller.commands.surrogate import CollectSpec, collect_rows
from controller.cycle import Observation
from controller.wiring import ProposerAdapter, load_policy, surrogate_made_by
from edge_accel.surrogate import (
    load_rows_jsonl,
    load_surrogate,
    screen,
)
from simulators.network import load_network

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "configs" / "demo.toml"
SHIPPED = REPO / "configs" / "district" / "surrogate.pt"
ROW_KEYS = {
    "features",
    "wait_change",
    "nox_change",
    "group",
    "candidate",
    "demand_scale",
    "probe_offset_s",
    "counted_vph",
    "made_by",
}


def test_collect_train_and_screen_on_the_demo_district(tmp_path: Path) -> None:
    settings = load_settings(DEMO)
    spec = CollectSpec(samples=12, snapshots=1, seeds=1, horizon_s=60, warmup_s=30, batch=12)
    lines: list[str] = []
    records = list(collect_rows(settings, spec, tmp_path / "work", lines.append))

    # one row per candidate, in the format train reads, with the shipped model's size
    shipped = load_surrogate(SHIPPED)
    assert len(records) == 12
    assert any("snapshot 1/1" in line for line in lines)
    names = [r["candidate"] for r in records]
    assert len(set(names)) == 12 and "webster" in names
    for record in records:
        assert set(record) == ROW_KEYS
        assert len(record["features"]) == shipped.input_dim
        assert np.isfinite(record["features"]).all()
        assert np.isfinite([record["wait_change"], record["nox_change"]]).all()
        assert record["group"] == records[0]["group"]
        assert record["made_by"] == surrogate_made_by(settings, load_policy(settings))
    # the twin measured real, different outcomes (not a constant)
    assert len({round(r["wait_change"], 6) for r in records}) > 1

    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    assert len(load_rows_jsonl(data)) == 12
    out = tmp_path / "model.pt"
    argv = ["surrogate", "train", "--data", str(data), "--out", str(out), "--epochs", "20"]
    code = run([*argv, "--min-spearman", "-1"])
    assert code == 0
    trained = load_surrogate(out)
    assert trained.input_dim == shipped.input_dim
    # what made the rows travels into the model: the daemon's check passes it
    assert trained.made_by == records[0]["made_by"] == shipped.made_by
    assert json.loads(out.with_name("model.pt.json").read_text())["n_train"] > 0


def test_shipped_model_screens_like_its_predictions() -> None:
    settings = load_settings(DEMO)
    sim = settings.simulation.model_copy(update={"screen_candidates": 64})
    settings = settings.model_copy(update={"simulation": sim})
    network = load_network(sim.network, sim.detectors)
    current = {t: IntersectionTiming.from_base(b) for t, b in network.base_programs().items()}
    model = load_surrogate(SHIPPED)
    proposer = ProposerAdapter(settings, network, surrogate=model)
    # a busy interval: every detector counted 30 vehicles in the cycle's 240 s
    counts = {d.id: 30.0 for d in network.detectors}
    observation = Observation(1000.0, counts, 240.0, {}, {})
    candidates, _ = proposer.propose(observation, {}, current)
    chosen = proposer.screen(candidates, keep=3)
    assert len(chosen) == 3

    # the same pool and features the adapter built, predicted directly
    pool = proposer.perturbation_pool(candidates, 64)
    order = sorted(current)
    features = proposer.features(pool.arrays(order))
    assert features.shape == (len(pool), model.input_dim)
    result = screen(model, features, top_k=len(pool))
    wait = result.wait_change
    # screen orders by predicted wait, best first, and the adapter kept the best allowed
    assert all(wait[a] <= wait[b] for a, b in pairwise(result.selected))
    # the proposals always reach the twin; the best screened perturbations fill the rest
    assert set(candidates) <= set(chosen)
    ranked = screen(
        model,
        features,
        top_k=3 + len(candidates),
        max_nox_change=settings.gate.max_nox_increase,
    )
    expected = dict.fromkeys(sorted(candidates))
    for i in ranked.selected:
        if len(expected) >= 3:
            break
        expected.setdefault(pool[i][0])
    assert set(chosen) == set(expected)
    limited = screen(model, features, top_k=3, max_nox_change=settings.gate.max_nox_increase)
    allowed = [
        i for i in range(len(pool)) if result.nox_change[i] <= settings.gate.max_nox_increase
    ]
    if len(allowed) >= 3:
        best = sorted(allowed, key=lambda i: wait[i])[:3]
        assert set(limited.selected) == set(best)
