from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from configs.timing import SafetyLimits, check_intersection
from rl.env import EnvConfig, IntersectionVecEnv, SignalTimingEnv
from rl.evaluate import run_once, webster_decide
from rl.features import ACT_DIM, OBS_DIM, layouts_from_network
from rl.policy import TorchPolicy
from rl.train import train
from simulators.network import load_network
from tests.support.twin_scenarios import GridScenario, build_grid

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def grid(tmp_path_factory: pytest.TempPathFactory) -> GridScenario:
    return build_grid(tmp_path_factory.mktemp("rlgrid"), size=2, end_s=1500.0, period_s=3.0)


def _config(grid: GridScenario, mode: str = "fixed", steps: int = 2) -> EnvConfig:
    return EnvConfig(
        net_file=grid.net,
        detectors_file=grid.detectors,
        route_files=(grid.routes,),
        interval_s=120.0,
        episode_steps=steps,
        warmup_s=120.0,
        begin_range_s=(0.0, 300.0),
        mode=mode,  # type: ignore[arg-type]
    )


def test_env_passes_gymnasium_check_env(grid: GridScenario) -> None:
    env = SignalTimingEnv(_config(grid))
    try:
        check_env(env, skip_render_check=True)
        obs, _ = env.reset(seed=3)
        assert obs.shape == (4, OBS_DIM)
        obs2, reward, terminated, truncated, info = env.step(np.ones((4, ACT_DIM), np.float32))
        assert reward < 0.0 and not terminated and not truncated
        assert info["queue_veh"] >= 0.0
        # every plan the simulation now runs is safe against the base and the previous plan
        sim = env.sim
        for tls_id, plan in sim._current.items():
            assert check_intersection(tls_id, plan, sim.bases[tls_id], SafetyLimits()) == []
    finally:
        env.close()


def test_actuated_mode_runs_actuated_plans(grid: GridScenario) -> None:
    env = SignalTimingEnv(_config(grid, mode="actuated"))
    try:
        env.reset(seed=1)
        env.step(np.zeros((4, ACT_DIM), np.float32))
        assert {p.mode for p in env.sim._current.values()} == {"actuated"}
    finally:
        env.close()


def test_vec_env_slots_are_intersections_and_auto_reset(grid: GridScenario) -> None:
    venv = IntersectionVecEnv(_config(grid, steps=1), n_sims=1, seed=5)
    try:
        obs = venv.reset()
        assert venv.num_envs == 4 and obs.shape == (4, OBS_DIM)
        venv.step_async(np.zeros((4, ACT_DIM), np.float32))
        obs, rewards, dones, infos = venv.step_wait()
        assert dones.all() and rewards.shape == (4,)
        assert "terminal_observation" in infos[0] and "episode" in infos[0]
    finally:
        venv.close()


@pytest.mark.slow
def test_a_few_ppo_steps_write_verifiable_weights(grid: GridScenario, tmp_path: Path) -> None:
    started = time.monotonic()
    result = train(
        _config(grid, steps=2),
        tmp_path / "p.pt",
        timesteps=64,
        n_sims=1,
        seed=1,
        progress_bar=False,
    )
    assert time.monotonic() - started < 60
    policy = TorchPolicy.load(result.weights)
    assert policy.sha256 == result.sha256
    assert (tmp_path / "p.pt.sha256").is_file()


def test_closed_loop_run_reports_ground_truth_for_each_controller(grid: GridScenario) -> None:
    network = load_network(grid.net, grid.detectors)
    layouts = layouts_from_network(network)
    limits = SafetyLimits()
    delays = {}
    for kind in ("fixed", "webster", "actuated", "max-pressure"):
        decide = webster_decide(layouts, limits) if kind == "webster" else None
        stats = run_once(
            network,
            [grid.routes],
            kind,  # type: ignore[arg-type]
            seed=1,
            horizon_s=600.0,
            interval_s=120.0,
            decide=decide,
        )
        assert stats.vehicles > 50
        assert stats.delay_s > 0 and stats.nox_g > 0
        delays[kind] = stats.delay_s
    assert len(set(delays.values())) > 1  # the controllers really differ
