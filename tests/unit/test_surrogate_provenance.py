"""A screening surrogate says what made its rows, and the daemon refuses one another twin made."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from configs.errors import ConfigError
from configs.settings import Settings
from configs.settings_file import load_settings
from controller.wiring import load_policy, load_screening_surrogate, surrogate_made_by
from edge_accel.surrogate import (
    FEATURES_VERSION,
    SurrogateModel,
    SurrogateRow,
    describe_surrogate,
    load_surrogate,
    rows_made_by,
    save_surrogate,
    train_surrogate,
)
from simulators.twin import TWIN_REVISION

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "configs" / "demo.toml"


def _rows(made_by: dict[str, object] | None, n: int = 40) -> list[SurrogateRow]:
    rng = np.random.default_rng(0)
    return [
        SurrogateRow(tuple(rng.uniform(-1, 1, 4)), float(rng.normal()), 0.0, f"g{i % 5}", made_by)
        for i in range(n)
    ]


def _settings_with(path: Path) -> Settings:
    settings = load_settings(DEMO)
    sim = settings.simulation.model_copy(update={"surrogate": path})
    return settings.model_copy(update={"simulation": sim})


def _saved(tmp_path: Path, made_by: dict[str, object] | None, input_dim: int = 4) -> Path:
    model = SurrogateModel(input_dim, (8,))
    model.made_by = made_by
    path = tmp_path / "surrogate.pt"
    save_surrogate(model, path)
    return path


def test_rows_made_by_one_setting_or_refused() -> None:
    made = {"twin": "t", "network_sha256": "n", "policy_sha256": None, "features": "f"}
    assert rows_made_by(_rows(made)) == made
    assert rows_made_by(_rows(None)) is None
    mixed = _rows(made, 20) + _rows({**made, "twin": "other"}, 20)
    with pytest.raises(ConfigError, match="different twins"):
        rows_made_by(mixed)
    with pytest.raises(ConfigError, match="different twins"):
        train_surrogate(mixed, epochs=1)


def test_training_records_what_made_the_rows_and_loading_keeps_it(tmp_path: Path) -> None:
    made = {"twin": "t", "network_sha256": "n", "policy_sha256": "p", "features": "f"}
    model, _ = train_surrogate(_rows(made), hidden=(8,), epochs=2)
    assert model.made_by == made
    path = tmp_path / "m.pt"
    save_surrogate(model, path)
    assert load_surrogate(path).made_by == made
    assert describe_surrogate(path)["made_by"] == made


def test_a_surrogate_of_the_previous_format_is_refused_with_how_to_retrain(
    tmp_path: Path,
) -> None:
    old = tmp_path / "old.pt"
    torch.save({"format": "signaltwin.surrogate/v1", "input_dim": 4, "hidden": [8]}, old)
    with pytest.raises(ConfigError, match="surrogate/v1.*retrain"):
        load_surrogate(old)


def test_the_daemon_loads_a_surrogate_made_by_its_own_twin_and_policy(tmp_path: Path) -> None:
    settings = _settings_with(tmp_path / "surrogate.pt")
    policy = load_policy(settings)
    made = surrogate_made_by(settings, policy)
    assert made["twin"].startswith(f"signaltwin twin r{TWIN_REVISION}, SUMO ")
    assert made["features"] == FEATURES_VERSION
    assert made["policy_sha256"] == (policy.sha256 if policy is not None else None)
    _saved(tmp_path, made)
    model, _ = load_screening_surrogate(settings, policy)
    assert model is not None and model.made_by == made


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"twin": "signaltwin twin r1, SUMO 1.28.0, microscopic"}, "twin"),
        ({"policy_sha256": "0" * 64}, "policy_sha256"),
        ({"network_sha256": "f" * 64}, "network_sha256"),
        ({"features": "signaltwin.features/v1"}, "features"),
        (None, "not recorded"),
    ],
)
def test_a_surrogate_from_another_twin_or_policy_is_refused(
    tmp_path: Path, change: dict[str, str] | None, named: str
) -> None:
    settings = _settings_with(tmp_path / "surrogate.pt")
    policy = load_policy(settings)
    made = None if change is None else {**surrogate_made_by(settings, policy), **change}
    _saved(tmp_path, made)
    with pytest.raises(ConfigError, match=named) as refused:
        load_screening_surrogate(settings, policy)
    assert "signaltwin surrogate collect" in str(refused.value)
    assert "screen_candidates = 0" in str(refused.value)


def test_the_shipped_surrogate_matches_the_shipped_twin_and_policy() -> None:
    settings = load_settings(DEMO)
    model, _ = load_screening_surrogate(settings, load_policy(settings))
    assert model is not None
