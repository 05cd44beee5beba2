"""PPO training of the shared policy (stable-baselines3) on SUMO.

Every light of every simulation is one slot of :class:`rl.env.IntersectionVecEnv`,
so one PPO actor learns from all intersections at once. The result is saved as
weights only (the actor's ``state_dict``, see :mod:`rl.policy`) with its sha256;
SB3 checkpoints (zip) are written to ``<out dir>/checkpoints`` for resuming
experiments but are never loaded by the daemon.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from rl.env import EnvConfig, IntersectionVecEnv
from rl.policy import HIDDEN, ActorNet, save_weights

__all__ = ["TrainResult", "actor_from_sb3", "train"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainResult:
    """What a training run produced."""

    weights: Path
    sha256: str
    timesteps: int
    wall_s: float
    final_mean_reward: float | None


def actor_from_sb3(model: object) -> ActorNet:
    """Copy the actor of an SB3 PPO ``MlpPolicy`` (tanh, 2 x HIDDEN) into :class:`ActorNet`."""
    policy = model.policy  # type: ignore[attr-defined]
    net = ActorNet()
    body = policy.mlp_extractor.policy_net
    head = policy.action_net
    state = {
        "body.0.weight": body[0].weight,
        "body.0.bias": body[0].bias,
        "body.2.weight": body[2].weight,
        "body.2.bias": body[2].bias,
        "head.weight": head.weight,
        "head.bias": head.bias,
    }
    net.load_state_dict({k: v.detach().cpu().clone() for k, v in state.items()})
    return net


def train(
    config: EnvConfig,
    out: Path,
    *,
    timesteps: int = 20_000,
    n_sims: int = 1,
    seed: int = 7,
    learning_rate: float = 1e-3,
    n_steps: int = 4,
    progress_bar: bool = True,
    checkpoint_every: int = 10_000,
) -> TrainResult:
    """Train PPO and save the actor's weights to ``out`` (plus ``out.sha256``).

    Args:
        config: the environment (network, demand, interval, plan mode).
        out: weights file to write.
        timesteps: samples to collect (one sample = one intersection-interval).
        n_sims: simulations in parallel (one process each).
        seed: seeds PPO and the simulations.
        learning_rate: PPO learning rate.
        n_steps: intervals per slot in each PPO rollout (rounded to a multiple of 4,
            so that 4 minibatches divide the rollout exactly).
        progress_bar: show SB3's progress bar (rich).
        checkpoint_every: samples between SB3 checkpoints.
    """
    from stable_baselines3 import PPO
    from stable_baselines3.common.callbacks import CheckpointCallback
    from stable_baselines3.common.logger import configure as sb3_logger

    torch.set_num_threads(1)
    env = IntersectionVecEnv(config, n_sims=n_sims, seed=seed)
    started = time.monotonic()
    try:
        # a multiple of 4 steps per rollout, so that 4 minibatches divide it exactly
        rollout = 4 * max(1, round(n_steps / 4))
        batch = env.num_envs * rollout
        model = PPO(
            "MlpPolicy",
            env,
            learning_rate=learning_rate,
            n_steps=rollout,
            batch_size=batch // 4,
            n_epochs=10,
            gamma=0.9,
            gae_lambda=0.9,
            ent_coef=0.0,
            clip_range=0.2,
            policy_kwargs={
                "net_arch": {"pi": [HIDDEN, HIDDEN], "vf": [HIDDEN, HIDDEN]},
                "log_std_init": -1.0,
            },
            seed=seed,
            device="cpu",
            verbose=0,
        )
        progress_log = sb3_logger(str(out.parent / "logs"), ["csv"])
        model.set_logger(progress_log)
        ckpt_dir = out.parent / "checkpoints"
        callback = CheckpointCallback(
            save_freq=max(1, checkpoint_every // env.num_envs),
            save_path=str(ckpt_dir),
            name_prefix=out.stem,
        )
        try:
            model.learn(total_timesteps=timesteps, progress_bar=progress_bar, callback=callback)
        finally:
            progress_log.close()
        buffer = model.ep_info_buffer
        final = None
        if buffer:
            final = float(sum(e["r"] for e in buffer) / len(buffer))
        buffer_now = model.rollout_buffer
        mean_reward = float(buffer_now.rewards.mean()) if buffer_now.full else final
        net = actor_from_sb3(model)
        digest = save_weights(net, out, config.mode)
    finally:
        env.close()
    wall = time.monotonic() - started
    logger.info("trained %d samples in %.0f s -> %s (%s)", timesteps, wall, out, digest[:12])
    return TrainResult(out, digest, timesteps, wall, mean_reward)
