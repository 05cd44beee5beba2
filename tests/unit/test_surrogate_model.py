"""Surrogate features, training on a known monotone relation, save/load, screening."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from configs.errors import ConfigError
from configs.timing import IntersectionTiming, PhasePlan
from controller.cli import run
from edge_accel.surrogate import (
    SATURATION_FEATURES,
    PlanArrays,
    SurrogateRow,
    candidate_features,
    describe_surrogate,
    load_rows_jsonl,
    load_surrogate,
    plan_arrays,
    saturation_features,
    save_surrogate,
    screen,
    spearman,
    train_surrogate,
)


def _timing(g1: int, g2: int, offset: int = 0) -> IntersectionTiming:
    phases = (
        PhasePlan(state="GGrr", duration_s=g1),
        PhasePlan(state="yyrr", duration_s=3),
        PhasePlan(state="rrGG", duration_s=g2),
        PhasePlan(state="rryy", duration_s=3),
    )
    return IntersectionTiming(mode="fixed", cycle_s=g1 + g2 + 6, offset_s=offset, phases=phases)


def test_spearman_matches_known_values() -> None:
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # With ties (average ranks), as scipy.stats.spearmanr gives.
    assert spearman([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(0.9486832980505138)
    assert np.isnan(spearman([1, 1, 1], [1, 2, 3]))


def test_plan_arrays_and_features_have_a_fixed_size() -> None:
    current = {"A": _timing(30, 30), "B": _timing(20, 40)}
    candidates = [{"A": _timing(36, 24), "B": _timing(20, 40, 5)}, current]
    arrays = plan_arrays(candidates, ["A", "B"], max_greens=4)
    assert arrays.green_s.shape == (2, 2, 4)
    assert arrays.green_s[0, 0, :2].tolist() == [36.0, 24.0]
    cur = plan_arrays([current], ["A", "B"])
    feats = candidate_features([0.5, 0.2], arrays, cur)
    assert feats.shape == (2, 2 + 3 * (2 * 4 + 3))
    # The unchanged candidate has zero change features (cycle and split deltas).
    per = 2 * 4 + 3
    delta_cycle_mean = feats[1, 2 + 4 + 2]
    assert float(delta_cycle_mean) == 0.0
    assert float(feats[1, 2 + per - 4 : 2 + per].abs().sum()) == 0.0
    with pytest.raises(ConfigError, match="no timing for 'C'"):
        plan_arrays([current], ["A", "C"])


def _synthetic_rows(n: int, seed: int) -> list[SurrogateRow]:
    """Rows whose wait change is a known monotone function of the features."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1.0, 1.0, size=(n, 8)).astype(np.float32)
    wait = -0.2 * x[:, 0] + 0.1 * np.tanh(2 * x[:, 1]) + 0.01 * rng.normal(size=n)
    nox = 0.01 * x[:, 2] - 0.005 * x[:, 0] + 0.001 * rng.normal(size=n)
    return [
        SurrogateRow(tuple(float(v) for v in row), float(w), float(o), f"run{i % 25}")
        for i, (row, w, o) in enumerate(zip(x, wait, nox, strict=True))
    ]


def test_training_recovers_a_monotone_relation(tmp_path: Path) -> None:
    model, metrics = train_surrogate(_synthetic_rows(600, 0), epochs=60, seed=1)
    assert metrics.n_train + metrics.n_holdout == 600 and metrics.n_holdout > 50
    assert metrics.spearman_wait >= 0.8
    assert metrics.spearman_nox >= 0.8

    path = tmp_path / "s.pt"
    sha = save_surrogate(model, path, metrics)
    info = describe_surrogate(path)
    assert info["sha256"] == sha and info["input_dim"] == 8
    assert info["metrics"]["spearman_wait"] == pytest.approx(metrics.spearman_wait)
    loaded = load_surrogate(path)
    x = torch.rand(5, 8)
    with torch.no_grad():
        assert torch.allclose(loaded(x), model(x))


def test_screening_thousands_keeps_the_best_and_respects_nox(tmp_path: Path) -> None:
    model, _ = train_surrogate(_synthetic_rows(400, 2), epochs=40, seed=0)
    feats = torch.rand(5000, 8) * 2 - 1
    result = screen(model, feats, top_k=4)
    assert len(result.selected) == 4 and result.wait_change.shape == (5000,)
    best = np.sort(result.wait_change)[:4]
    assert np.allclose(np.sort(result.wait_change[list(result.selected)]), best)
    limited = screen(model, feats, top_k=4, max_nox_change=-0.005)
    assert all(result_nox <= -0.005 for result_nox in limited.nox_change[list(limited.selected)])


def test_training_rejects_too_few_rows() -> None:
    with pytest.raises(ConfigError, match=">= 10 rows"):
        train_surrogate(_synthetic_rows(5, 0))


def test_loading_refuses_files_that_are_not_surrogates(tmp_path: Path) -> None:
    other = tmp_path / "x.pt"
    torch.save({"format": "something else"}, other)
    with pytest.raises(ConfigError, match="not a signaltwin.surrogate/v2"):
        load_surrogate(other)
    with pytest.raises(ConfigError, match="do not exist"):
        load_surrogate(tmp_path / "missing.pt")


def test_jsonl_loader_names_the_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text(
        '{"features": [1, 2], "wait_change": -0.1, "nox_change": 0}\n{"features": [1]}\n'
    )
    with pytest.raises(ConfigError, match=r"d.jsonl:2: missing key 'wait_change'"):
        load_rows_jsonl(path)


def _write_jsonl(path: Path, rows: list[SurrogateRow]) -> None:
    path.write_text(
        "".join(
            json.dumps({"features": r.features, "wait_change": r.wait_change,
                        "nox_change": r.nox_change, "group": r.group}) + "\n"
            for r in rows
        )
    )  # fmt: skip


def test_cli_trains_writes_weights_and_metrics(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "rows.jsonl"
    _write_jsonl(data, _synthetic_rows(300, 3))
    out = tmp_path / "model.pt"
    code = run(["surrogate", "train", "--data", str(data), "--out", str(out), "--epochs", "40"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0
    assert report["spearman_wait"] >= 0.8
    assert json.loads((tmp_path / "model.pt.json").read_text())["sha256"] == report["sha256"]
    assert run(["surrogate", "info", str(out)]) == 0
    assert json.loads(capsys.readouterr().out)["sha256"] == report["sha256"]


def test_cli_exits_1_when_the_model_cannot_rank(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    rows = [
        SurrogateRow(tuple(float(v) for v in rng.normal(size=4)), float(rng.normal()), 0.0)
        for _ in range(60)
    ]
    data = tmp_path / "noise.jsonl"
    _write_jsonl(data, rows)
    code = run(["surrogate", "train", "--data", str(data), "--out", str(tmp_path / "m.pt"),
                "--epochs", "5"])  # fmt: skip
    assert code == 1


def test_cli_bad_data_is_a_usage_error(tmp_path: Path) -> None:
    data = tmp_path / "bad.jsonl"
    data.write_text("not json\n")
    assert run(["surrogate", "train", "--data", str(data), "--out", str(tmp_path / "m.pt")]) == 2


def test_plan_arrays_type() -> None:
    arrays = PlanArrays(
        np.zeros((1, 1, 4), np.float32), np.ones((1, 1), np.float32), np.zeros((1, 1), np.float32)
    )
    assert candidate_features(np.zeros((1, 3)), arrays, arrays).shape == (1, 3 + 33)


def test_saturation_features_show_which_plan_starves_the_busy_approach() -> None:
    y = torch.tensor([[0.3, 0.3, 0.0, 0.0], [0.4, 0.1, 0.0, 0.0]])
    green = torch.tensor(
        [
            [[30.0, 30.0, 0, 0], [30.0, 30.0, 0, 0]],  # even splits
            [[10.0, 50.0, 0, 0], [30.0, 30.0, 0, 0]],  # starves n0's first green
        ]
    )
    cycle = torch.full((2, 2), 60.0)
    got = saturation_features(y, green, cycle)
    # even: x = 0.3/0.5 = 0.6 and 0.4/0.5 = 0.8 critical; Webster's uniform delay
    # C (1-f)^2 / (2 (1 - x f)) = 60 * 0.25 / (2 * 0.7) for both greens of n0
    weight = torch.tensor([0.6, 0.5]) / 1.1
    assert got[0, 0].item() == pytest.approx((0.6 * weight[0] + 0.8 * weight[1]).item(), rel=1e-5)
    assert got[0, 1].item() == pytest.approx(0.8, rel=1e-5)
    n0 = 60 * 0.25 / (2 * (1 - 0.6 * 0.5)) / 60
    n1 = (0.4 * 15 / (2 * (1 - 0.4)) + 0.1 * 15 / (2 * (1 - 0.1))) / 0.5 / 60
    assert got[0, 2].item() == pytest.approx((n0 * weight[0] + n1 * weight[1]).item(), rel=1e-5)
    assert got[0, 3].item() == 0.0  # nothing oversaturated
    # starved: n0's first green at 10/60 carries x = 1.8, overflow 0.3 * 0.8
    assert got[1, 1].item() == pytest.approx(1.8, rel=1e-5)
    assert got[1, 3].item() == pytest.approx((0.3 * 0.8 * weight[0]).item(), rel=1e-5)
    assert got[1, 2].item() > got[0, 2].item()


def test_candidate_features_append_saturation_against_the_plan_in_force() -> None:
    current = {"A": _timing(30, 30), "B": _timing(20, 40)}
    candidates = [{"A": _timing(36, 24), "B": _timing(20, 40, 5)}, current]
    arrays = plan_arrays(candidates, ["A", "B"])
    cur = plan_arrays([current], ["A", "B"])
    y = np.array([[0.35, 0.2, 0, 0], [0.1, 0.3, 0, 0]], dtype=np.float32)
    feats = candidate_features([0.5, 0.2], arrays, cur, flow_ratios=y)
    base = 2 + 3 * (2 * 4 + 3)
    assert feats.shape == (2, base + SATURATION_FEATURES)
    # the plan in force against itself: its saturation, and no change
    assert float(feats[1, base + SATURATION_FEATURES // 2 :].abs().sum()) == 0.0
    assert float(feats[1, base]) > 0.0
    with pytest.raises(ConfigError, match="flow ratios of shape"):
        candidate_features([0.5, 0.2], arrays, cur, flow_ratios=y[:1])
