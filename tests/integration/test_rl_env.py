from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from configs.errors import ConfigError
from configs.safety import check_intersection
from configs.timing import IntersectionTiming, SafetyLimits
from rl.baselines import MaxPressureController
from rl.env import EnvConfig, IntersectionVecEnv, SignalSimulation, SignalTimingEnv
from rl.evaluate import run_once, webster_decide
from rl.features import ACT_DIM, OBS_DIM, IntersectionObservation, layouts_from_network
from rl.field_session import FieldSession
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


def test_field_session_measures_plan_intervals_on_the_field(grid: GridScenario) -> None:
    network = load_network(grid.net, grid.detectors)
    session = FieldSession(network, [grid.routes], seed=2, begin_s=60, interval_s=120)
    try:
        assert session.next_boundary_s() == 120.0
        first = session.run_until(120.0)  # the first interval starts at the begin time
        assert (first.start_s, first.end_s, first.interval_s) == (60.0, 120.0, 60.0)
        before = {d: r.count for d, r in session.field.detector_counts().readings.items()}
        second = session.run_until(240.0)
        assert (second.start_s, second.end_s) == (120.0, 240.0)
        after = session.field.detector_counts().readings
        # each vehicle counted once, as the controllers report it to the daemon
        assert second.counts_veh == {d: float(after[d].count - before[d]) for d in before}
        assert sum(second.counts_veh.values()) > 10
        assert all(0.0 <= o <= 1.0 for o in second.occupancy.values())
        assert set(second.wait_veh_s) == set(second.nox_mg) == set(network.tls_ids)
        assert sum(second.wait_veh_s.values()) > 0 and sum(second.nox_mg.values()) > 0
        with pytest.raises(ConfigError, match="multiples of the plan interval"):
            session.run_until(300.0)
        session.advance(300.0)
        assert session.time_s == 300.0
        stats = session.finish()
    finally:
        session.close()
    assert stats.vehicles >= stats.arrived > 0
    assert stats.trip_time_s > 0 and stats.delay_s > 0 and stats.nox_g > 0


def test_plan_deployers_decide_at_interval_boundaries(grid: GridScenario) -> None:
    network = load_network(grid.net, grid.detectors)
    webster = webster_decide(layouts_from_network(network), SafetyLimits())
    seen: list[tuple[float, int]] = []

    def decide(obs: dict[str, IntersectionObservation]) -> dict[str, IntersectionTiming]:
        first = next(iter(obs.values()))
        seen.append((first.interval_s, round(sum(first.counts_veh.values()))))
        return webster(obs)

    stats = run_once(
        network,
        [grid.routes],
        "webster",
        seed=1,
        horizon_s=400.0,
        begin_s=60.0,
        interval_s=120.0,
        decide=decide,  # type: ignore[arg-type]
    )
    # begin 60 s, end 460 s: decisions at 120, 240 and 360 s, none at the end
    assert [interval for interval, _ in seen] == [60.0, 120.0, 120.0]
    assert all(count > 0 for _, count in seen)
    assert stats.vehicles > 50


def test_max_pressure_drives_the_field_lights(grid: GridScenario) -> None:
    network = load_network(grid.net, grid.detectors)
    controller = MaxPressureController(network, SafetyLimits(), decision_s=5.0)
    session = FieldSession(network, [grid.routes], seed=3, begin_s=0, interval_s=120)
    shown: dict[str, set[str]] = {t: set() for t in network.tls_ids}

    def hook(sim: object) -> None:
        controller(session)
        for tls_id in network.tls_ids:
            shown[tls_id].add(session.field.signal_state(tls_id)[2])

    try:
        session.run_until(480.0, hook)  # type: ignore[arg-type]
        for tls_id in network.tls_ids:
            active = session.field.active_plan(tls_id)
            assert active.externally_controlled and active.program_id == "online"
            # greens, yellows and all-reds of its own: more than one state shown
            assert len(shown[tls_id]) >= 3, shown[tls_id]
        stats = session.finish()
    finally:
        session.close()
    assert stats.arrived > 0


def test_episodes_begin_on_the_measurement_grid_and_teleport(grid: GridScenario) -> None:
    config = replace(_config(grid), begin_range_s=(10.0, 290.0))
    sim = SignalSimulation(config)
    try:
        for seed in (1, 2, 3):
            sim.reset(seed)
            assert sim._session is not None
            field_config = sim._session.field.config
            assert field_config.begin_s % 120 == 0 and field_config.teleport_s == 300.0
            assert sim._session.time_s == field_config.begin_s + 120.0  # after the warm-up
    finally:
        sim.close()
    with pytest.raises(ConfigError, match="warmup_s"):
        SignalSimulation(replace(config, warmup_s=90.0))
    with pytest.raises(ConfigError, match="whole number"):
        SignalSimulation(replace(config, interval_s=120.5))
