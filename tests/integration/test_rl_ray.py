"""Training on a real two-node Ray cluster (``signaltwin train --backend ray``, issue 17).

One cluster serves the module: starting it costs ~15 s on the 2-core CI machine.
Each node has one CPU and every simulation reserves one, so two simulations run
one on each node.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from configs.errors import ConfigError, SimulationError
from configs.settings import ComputeSettings
from rl.env import EnvConfig, IntersectionVecEnv
from rl.features import ACT_DIM
from rl.policy import TorchPolicy
from rl.train import TrainProgress, train
from rl.train_manifest import manifest_path
from tests.support.ray_cluster import RayCluster
from tests.support.twin_scenarios import GridScenario, build_grid, training_config

pytestmark = [pytest.mark.integration, pytest.mark.ray, pytest.mark.slow]

DISTRICT = Path(__file__).resolve().parents[2] / "configs" / "district"


@pytest.fixture
def cluster(ray_cluster: RayCluster) -> RayCluster:
    """The session's cluster (tests/integration/conftest.py)."""
    return ray_cluster


@pytest.fixture(scope="module")
def grid(tmp_path_factory: pytest.TempPathFactory) -> GridScenario:
    return build_grid(tmp_path_factory.mktemp("ray-train-grid"), size=2, end_s=1500.0)


def _compute(cluster: RayCluster) -> ComputeSettings:
    return ComputeSettings(backend="ray", address=cluster.address, connect_timeout_s=60)


def _district(steps: int) -> EnvConfig:
    return EnvConfig(
        net_file=DISTRICT / "district.net.xml",
        detectors_file=DISTRICT / "district.det.add.xml",
        route_files=(DISTRICT / "district.rou.xml",),
        episode_steps=steps,
        mode="actuated",
    )


def _rollout(env: IntersectionVecEnv, steps: int) -> list[Any]:
    """Observations, rewards, dones and per-slot infos of ``steps`` random steps."""
    rng = np.random.default_rng(0)
    seen: list[Any] = [env.reset()]
    for _ in range(steps):
        env.step_async(rng.uniform(-1.0, 1.0, (env.num_envs, ACT_DIM)).astype(np.float32))
        obs, rewards, dones, infos = env.step_wait()
        episodes = [i.get("episode") for i in infos]
        seen += [obs, rewards, dones, [(i["queue_veh"], i["nox_mg"]) for i in infos], episodes]
    return seen


def test_the_district_gives_the_same_observations_and_rewards_on_ray_as_locally(
    cluster: RayCluster,
) -> None:
    # three steps of two-step episodes: the automatic reset (a new seed) is compared too
    config = _district(steps=2)
    local = IntersectionVecEnv(config, n_sims=2, seed=3)
    try:
        expected = _rollout(local, 3)
    finally:
        local.close()
    ray_env = IntersectionVecEnv(config, n_sims=2, seed=3, backend="ray", compute=_compute(cluster))
    try:
        assert ray_env.num_envs == local.num_envs
        got = _rollout(ray_env, 3)
    finally:
        ray_env.close()
    assert len(got) == len(expected)
    for ours, theirs in zip(got, expected, strict=True):
        if isinstance(ours, np.ndarray):
            np.testing.assert_array_equal(ours, theirs)
        else:
            assert ours == theirs
    second_dones = got[1 + 5 + 2]
    assert second_dones.all()  # so the third step ran on the episodes reset with new seeds


def test_train_with_backend_ray_writes_the_files_and_policy_of_a_local_run(
    cluster: RayCluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from controller.cli import run
    from controller.exit_codes import ExitCode

    def argv(out: Path) -> list[str]:
        # one rollout: 2 simulations x 47 lights x 4 intervals
        return [
            *("train", "--timesteps", "1", "--envs", "2", "--episode-steps", "2"),
            *("--seed", "3", "--no-progress", "--out", str(out)),
        ]

    on_ray = tmp_path / "ray" / "policy.pt"
    assert run([*argv(on_ray), "--backend", "ray", "--ray-address", cluster.address]) == 0
    captured = capsys.readouterr()
    assert f"simulations on the Ray cluster at {cluster.address}" in captured.err
    local = tmp_path / "local" / "policy.pt"
    assert run(argv(local)) == ExitCode.OK
    capsys.readouterr()

    policy = TorchPolicy.load(on_ray)  # checks the .sha256 beside it
    sha_file = on_ray.with_name(on_ray.name + ".sha256")
    assert sha_file.is_file() and policy.sha256 in sha_file.read_text()
    # the same seeds gave the same rollout, so the same update: the same policy
    assert policy.sha256 == TorchPolicy.load(local).sha256
    ours, theirs = (json.loads(manifest_path(p).read_text()) for p in (on_ray, local))
    assert ours["schema"] == "signaltwin.train-run/v1"
    assert ours["samples"] == 376 and ours["checkpoint"] == "policy-000000376.zip"
    assert (on_ray.parent / "checkpoints" / ours["checkpoint"]).is_file()
    for manifest in (ours, theirs):
        for key in ("updated_at", "wall_s", "checkpoint_sha256"):
            manifest.pop(key)
    assert ours == theirs


def test_more_simulations_than_the_cluster_has_room_for_are_a_config_error(
    cluster: RayCluster, grid: GridScenario
) -> None:
    compute = ComputeSettings(backend="ray", address=cluster.address, connect_timeout_s=3)
    with pytest.raises(ConfigError, match=r"of 3 training simulations did not start") as e:
        IntersectionVecEnv(training_config(grid), n_sims=3, backend="ray", compute=compute)
    message = str(e.value)
    assert "ask for 3 x 1 CPUs, the cluster has 2 CPUs" in message
    assert "use fewer simulations (--envs)" in message
    # the actors that were placed are gone again: a run that fits starts
    env = IntersectionVecEnv(
        training_config(grid), n_sims=2, backend="ray", compute=_compute(cluster)
    )
    env.close()


def test_a_lost_node_stops_training_with_a_resumable_checkpoint(
    cluster: RayCluster, grid: GridScenario, tmp_path: Path
) -> None:
    config = training_config(grid)
    out = tmp_path / "p.pt"
    rollout = 32  # 2 simulations x 4 lights x 4 steps

    def lose_the_second_node(progress: TrainProgress) -> None:
        if progress.samples == rollout:
            # its actor notices within a few seconds, a few rollouts later
            cluster.kill_node()

    try:
        lost = r"training simulation [01] was lost on the Ray cluster"
        with pytest.raises(SimulationError, match=lost):
            train(
                config,
                out,
                timesteps=100 * rollout,
                n_sims=2,
                seed=2,
                progress_bar=False,
                on_progress=lose_the_second_node,
                backend="ray",
                compute=_compute(cluster),
            )
    finally:
        cluster.start_node()
    # what was trained is saved, and the run goes on (here on this machine)
    manifest = json.loads(manifest_path(out).read_text())
    samples = manifest["samples"]
    assert rollout <= samples < 100 * rollout and samples % rollout == 0
    assert manifest["checkpoint"] == f"p-{samples:09d}.zip"
    target = samples + rollout
    resumed = train(
        config, out, timesteps=target, n_sims=2, seed=2, progress_bar=False, resume=True
    )
    assert resumed.resumed_from == samples and resumed.timesteps == target
