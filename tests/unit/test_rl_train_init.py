"""Fine-tuning starts from existing weights (issue 15): no SUMO, a stand-in env."""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.vec_env import DummyVecEnv

from configs.errors import ConfigError
from rl.features import ACT_DIM, OBS_DIM
from rl.policy import ActorNet, TorchPolicy, save_weights
from rl.train import (
    EnvConfig,
    TrainProgress,
    actor_from_sb3,
    actor_into_sb3,
    build_ppo,
    train,
)
from rl.train_manifest import RunArgs, differences

POLICIES = Path(__file__).resolve().parents[2] / "rl" / "policies"


class _Spaces(gym.Env[np.ndarray, np.ndarray]):  # type: ignore[type-arg]
    """Only the spaces of IntersectionVecEnv's slots; never stepped."""

    observation_space = gym.spaces.Box(-2.0, 4.0, shape=(OBS_DIM,), dtype=np.float32)
    action_space = gym.spaces.Box(-1.0, 1.0, shape=(ACT_DIM,), dtype=np.float32)


def _model() -> PPO:
    return build_ppo(DummyVecEnv([_Spaces, _Spaces]), learning_rate=3e-4, n_steps=4, seed=3)


def test_init_copies_the_actor_exactly_into_sb3() -> None:
    policy = TorchPolicy.load(POLICIES / "district.pt")
    model = _model()
    before = {k: v.clone() for k, v in model.policy.mlp_extractor.value_net.state_dict().items()}
    actor_into_sb3(policy.net, model)
    obs = np.random.default_rng(0).uniform(-2.0, 4.0, size=(32, OBS_DIM)).astype(np.float32)
    sb3_actions, _ = model.policy.predict(obs, deterministic=True)
    np.testing.assert_array_equal(sb3_actions, policy.act(obs))
    back = actor_from_sb3(model)
    for key, value in policy.net.state_dict().items():
        assert torch.equal(back.state_dict()[key], value), key
    # the value net stays fresh (the critic is learnt on the new network)
    after = model.policy.mlp_extractor.value_net.state_dict()
    assert all(torch.equal(after[k], before[k]) for k in before)


def test_init_refuses_an_actor_of_another_width() -> None:
    with pytest.raises(ConfigError, match="hidden"):
        actor_into_sb3(ActorNet(hidden=32), _model())


def test_init_from_refuses_weights_of_another_plan_mode(tmp_path: Path) -> None:
    config = EnvConfig(
        net_file=tmp_path / "absent.net.xml",
        detectors_file=tmp_path / "absent.det.xml",
        route_files=(tmp_path / "absent.rou.xml",),
        mode="fixed",
    )
    # the shipped district.pt is an actuated policy: refused before any simulation starts
    with pytest.raises(ConfigError, match="actuated.*--mode"):
        train(config, tmp_path / "p.pt", init_from=POLICIES / "district.pt")


def test_init_from_checks_the_digest(tmp_path: Path) -> None:
    path = tmp_path / "init.pt"
    save_weights(ActorNet(), path, "fixed")
    path.write_bytes(path.read_bytes() + b"x")
    config = EnvConfig(
        net_file=tmp_path / "a.net.xml",
        detectors_file=tmp_path / "a.det.xml",
        route_files=(tmp_path / "a.rou.xml",),
    )
    with pytest.raises(ConfigError, match="refusing to load"):
        train(config, tmp_path / "p.pt", init_from=path)


def _args(**changes: object) -> RunArgs:
    base: dict[str, object] = {
        "network_sha256": "a" * 64,
        "detectors_sha256": "b" * 64,
        "routes_sha256": ("c" * 64,),
        "environment": {"mode": "actuated", "interval_s": 240.0},
        "n_sims": 2,
        "seed": 11,
        "learning_rate": 3e-4,
        "n_steps": 4,
        "value_warmup_rollouts": 2,
        "init_sha256": "d" * 64,
    }
    base.update(changes)
    return RunArgs.model_validate(base)


def test_run_args_differences_name_each_changed_key() -> None:
    assert differences(_args(), _args()) == []
    found = differences(_args(), _args(seed=12, environment={"mode": "fixed", "interval_s": 240.0}))
    assert any(d.startswith("seed:") and "11" in d and "12" in d for d in found)
    assert any(d.startswith("environment.mode:") for d in found)
    with pytest.raises(ValueError, match="extra"):
        RunArgs.model_validate({**_args().model_dump(), "typo": 1})


def test_progress_line_has_samples_percent_elapsed_eta_and_reward() -> None:
    line = TrainProgress(
        samples=1000, total=4000, elapsed_s=65.0, eta_s=195.0, mean_reward=-1.25
    ).line()
    assert "1000/4000" in line and "25.0 %" in line
    assert "0:01:05" in line and "ETA 0:03:15" in line and "-1.250" in line
