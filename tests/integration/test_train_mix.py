"""Training on a mix of scenarios from the adaptive defaults (issue 15: a policy that transfers)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from configs.errors import ConfigError
from rl.env import EnvConfig, IntersectionVecEnv
from rl.policy import TorchPolicy, zero_actor
from rl.scenarios import build_scenario

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


def test_zero_actor_proposes_the_defaults() -> None:
    net = zero_actor()
    obs = np.random.default_rng(0).uniform(0, 1, size=(5, net.body[0].in_features))
    policy = TorchPolicy(net, "0" * 64, "zero", "adaptive")
    assert not policy.act(obs.astype(np.float32)).any()


def test_a_mix_gives_every_light_of_every_network_a_slot(tmp_path: Path) -> None:
    configs = []
    for name in ("grid6", "cross"):
        built = build_scenario(name, tmp_path, level="low", seed=0, hours=0.5)
        configs.append(
            EnvConfig(
                net_file=built.net,
                detectors_file=built.detectors,
                route_files=(built.routes,),
                interval_s=120.0,
                episode_steps=2,
                warmup_s=120.0,
                begin_range_s=(0.0, 600.0),
                mode="adaptive",
            )
        )
    env = IntersectionVecEnv(configs[0], n_sims=1, others=configs[1:])
    try:
        assert env.num_envs == 6 + 1  # grid6's six lights and the one crossing
        obs = env.reset()
        assert obs.shape == (7, env.observation_space.shape[0])
    finally:
        env.close()
    fixed = EnvConfig(**{**configs[1].__dict__, "mode": "fixed"})
    with pytest.raises(ConfigError, match="same plan mode"):
        IntersectionVecEnv(configs[0], others=[fixed])


def test_train_mix_cli_starts_from_the_defaults(tmp_path: Path) -> None:
    out = tmp_path / "mix" / "policy.pt"
    run = subprocess.run(
        [
            sys.executable,
            "-c",
            "from controller.cli import main; main()",
            "train",
            "--mix",
            "grid6,cross",
            "--level",
            "low",
            "--from",
            "defaults",
            "--timesteps",
            "60",
            "--episode-steps",
            "2",
            "--envs",
            "2",
            "--out",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert TorchPolicy.load(out).mode == "adaptive"
    assert TorchPolicy.load(out.parent / "defaults.pt").mode == "adaptive"
    assert "bench.control" in run.stdout
