"""PPO training of the shared policy (stable-baselines3) on SUMO, from scratch or fine-tuning.

Every light of every simulation is one slot of :class:`rl.env.IntersectionVecEnv`,
so one PPO actor learns from all intersections at once. The result is saved as
weights only (the actor's ``state_dict``, see :mod:`rl.policy`) with its sha256.

A run can start from existing weights (``init_from``, e.g. the shipped policy on
a bureau's own network): the actor is copied into SB3's policy, the value net
starts fresh and is warmed up for a few rollouts with the actor frozen (a fresh
critic's advantages would otherwise push a good actor around), and the default
learning rate is lower. A run stops cleanly at a wall-clock budget and saves
what it has learnt; it writes SB3 checkpoints and a manifest
(:mod:`rl.train_manifest`) to ``<out dir>/checkpoints`` and can be resumed from
them. The daemon never loads checkpoints, only the weights.

The simulations run on this machine or, with ``backend="ray"``, as Ray actors
on a cluster (:mod:`rl.ray_env`); the same seeds give the same rollouts, so the
backend is not one of the run's arguments: a run may be resumed on the other one.
A simulation that fails (SUMO, or a Ray node lost) stops the run with
:class:`SimulationError` after saving what was trained, as Ctrl-C does.

A resumed run continues the sample count and the learnt parameters; it is not
bit-identical to an uninterrupted run (SB3 checkpoints hold no rollout or
random-generator state, so the resumed episodes are drawn with a seed offset by
the samples done).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import cast

import torch
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import configure as sb3_logger
from stable_baselines3.common.vec_env import VecEnv
from torch import nn

from configs.digests import sha256_file
from configs.errors import ConfigError, SimulationError
from configs.settings import ComputeSettings
from rl.env import ComputeBackend, EnvConfig, IntersectionVecEnv
from rl.policy import HIDDEN, ActorNet, TorchPolicy, save_weights
from rl.train_manifest import (
    RunArgs,
    TrainManifest,
    checkpoint_dir,
    differences,
    manifest_path,
    read_manifest,
    run_args,
    write_manifest,
)

__all__ = [
    "FINETUNE_LEARNING_RATE",
    "FINETUNE_VALUE_WARMUP_ROLLOUTS",
    "SCRATCH_LEARNING_RATE",
    "EnvConfig",
    "TrainProgress",
    "TrainResult",
    "actor_from_sb3",
    "actor_into_sb3",
    "build_ppo",
    "train",
]

logger = logging.getLogger(__name__)

SCRATCH_LEARNING_RATE = 1e-3
"""PPO's learning rate from scratch (the shipped policy's)."""
FINETUNE_LEARNING_RATE = 3e-4
"""PPO's learning rate when starting from existing weights: small steps away from them."""
FINETUNE_VALUE_WARMUP_ROLLOUTS = 2
"""Rollouts that train only the fresh value net when starting from existing weights."""


@dataclass(frozen=True)
class TrainProgress:
    """Where a run stands after a rollout (one progress line).

    Attributes:
        samples: samples collected so far in the run (all invocations).
        total: the run's target.
        elapsed_s: wall seconds of this invocation.
        eta_s: estimated wall seconds to the target or the budget, whichever is
            first; None before the rate is known.
        mean_reward: mean reward per light-interval of the last rollout.
        actor_frozen: the rollout trains the value net only (warm-up).
    """

    samples: int
    total: int
    elapsed_s: float
    eta_s: float | None
    mean_reward: float
    actor_frozen: bool = False

    def line(self) -> str:
        """``samples 1000/4000 (25.0 %), elapsed 0:01:05, ETA 0:03:15, mean reward -1.250``."""
        percent = 100.0 * self.samples / self.total if self.total else 100.0
        eta = "?" if self.eta_s is None else str(timedelta(seconds=round(self.eta_s)))
        warm = ", value warm-up (actor frozen)" if self.actor_frozen else ""
        return (
            f"samples {self.samples}/{self.total} ({percent:.1f} %), "
            f"elapsed {timedelta(seconds=round(self.elapsed_s))}, ETA {eta}, "
            f"mean reward {self.mean_reward:.3f}{warm}"
        )


@dataclass(frozen=True)
class TrainResult:
    """What a training run (one invocation) produced.

    Attributes:
        weights: the weights file written.
        sha256: its digest.
        timesteps: samples trained in the run, over all invocations.
        wall_s: wall seconds of this invocation.
        final_mean_reward: mean reward per light-interval of the last rollout.
        run_wall_s: wall seconds over all invocations of the run.
        resumed_from: samples the run had when this invocation started.
        stopped_by_budget: the wall-clock budget ended this invocation early.
        init_sha256: digest of the weights the run started from (None: scratch).
        checkpoint: the latest SB3 checkpoint (resume from it).
    """

    weights: Path
    sha256: str
    timesteps: int
    wall_s: float
    final_mean_reward: float | None
    run_wall_s: float = 0.0
    resumed_from: int = 0
    stopped_by_budget: bool = False
    init_sha256: str | None = None
    checkpoint: Path | None = None


def _linear(module: nn.Module) -> nn.Linear:
    if not isinstance(module, nn.Linear):
        raise ConfigError(f"SB3 policy layer {module} is not linear (net_arch changed?)")
    return module


def _actor_layers(model: PPO) -> dict[str, nn.Linear]:
    """SB3's actor layers under :class:`ActorNet`'s state_dict names."""
    body = model.policy.mlp_extractor.policy_net
    return {
        "body.0": _linear(body[0]),
        "body.2": _linear(body[2]),
        "head": _linear(model.policy.action_net),
    }


def actor_from_sb3(model: PPO) -> ActorNet:
    """Copy the actor of an SB3 PPO ``MlpPolicy`` (tanh, 2 x HIDDEN) into :class:`ActorNet`."""
    net = ActorNet()
    state = {}
    for name, layer in _actor_layers(model).items():
        state[f"{name}.weight"] = layer.weight.detach().cpu().clone()
        state[f"{name}.bias"] = layer.bias.detach().cpu().clone()
    net.load_state_dict(state)
    return net


def actor_into_sb3(net: ActorNet, model: PPO) -> None:
    """Copy ``net`` into SB3's actor (the reverse of :func:`actor_from_sb3`).

    The value net and ``log_std`` are left as they are (fresh for a new model).

    Raises:
        ConfigError: ``net`` has another shape than the SB3 actor (hidden width).
    """
    source = net.state_dict()
    layers = _actor_layers(model)
    for name, layer in layers.items():
        for part in ("weight", "bias"):
            value = source[f"{name}.{part}"]
            target = cast(torch.Tensor, getattr(layer, part))
            if value.shape != target.shape:
                raise ConfigError(
                    f"initial weights have {name}.{part} of shape {tuple(value.shape)}, the "
                    f"PPO actor {tuple(target.shape)} (hidden width {HIDDEN} expected)"
                )
    with torch.no_grad():
        for name, layer in layers.items():
            layer.weight.copy_(source[f"{name}.weight"])
            layer.bias.copy_(source[f"{name}.bias"])


def build_ppo(env: VecEnv, *, learning_rate: float, n_steps: int, seed: int) -> PPO:
    """The PPO the project trains: MlpPolicy 2 x HIDDEN tanh, 4 minibatches per rollout.

    ``n_steps`` is the rollout length per slot (a multiple of 4 keeps the
    minibatches equal).
    """
    return PPO(
        "MlpPolicy",
        env,
        learning_rate=learning_rate,
        n_steps=n_steps,
        batch_size=max(1, env.num_envs * n_steps // 4),
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


def _set_actor_trainable(model: PPO, trainable: bool) -> None:
    policy = model.policy
    for module in (policy.mlp_extractor.policy_net, policy.action_net):
        for p in module.parameters():
            p.requires_grad_(trainable)
    policy.log_std.requires_grad_(trainable)


class _RunCallback(BaseCallback):  # type: ignore[misc]
    """Progress lines, the wall-clock budget, checkpoints and the value warm-up."""

    def __init__(
        self,
        model: PPO,
        *,
        total: int,
        budget_s: float | None,
        checkpoint_every: int,
        warmup_rollouts: int,
        started: float,
        save: Callable[[int], None],
        on_progress: Callable[[TrainProgress], None] | None,
    ) -> None:
        super().__init__()
        self._ppo = model
        self._total = total
        self._budget_s = budget_s
        self._every = max(1, checkpoint_every)
        self._warmup = warmup_rollouts
        self._started = started
        self._save = save
        self._on_progress = on_progress
        self._rollout_samples = model.n_envs * model.n_steps
        self.trained = model.num_timesteps
        self._at_start = model.num_timesteps
        self._saved_at = model.num_timesteps
        self._rollouts = self.trained // self._rollout_samples
        self._frozen = False
        self.stopped_by_budget = False
        self.last_mean_reward: float | None = None

    def _on_training_start(self) -> None:
        if self._rollouts < self._warmup:
            self._frozen = True
            _set_actor_trainable(self._ppo, False)

    def _on_rollout_start(self) -> None:
        # the previous rollout has been trained on: this is a consistent point to save
        self.trained = self._ppo.num_timesteps
        if self.trained - self._saved_at >= self._every:
            self._save(self.trained)
            self._saved_at = self.trained

    def _on_step(self) -> bool:
        budget = self._budget_s
        if budget is not None and time.monotonic() - self._started >= budget:
            self.stopped_by_budget = True
            return False
        return True

    def _on_rollout_end(self) -> None:
        self._rollouts += 1
        frozen_now = self._frozen
        if self._frozen and self._rollouts > self._warmup:
            self._frozen = False
            _set_actor_trainable(self._ppo, True)
        samples = self._ppo.num_timesteps
        elapsed = time.monotonic() - self._started
        done_now = samples - self._at_start
        eta: float | None = None
        if done_now > 0 and elapsed > 0:
            eta = max(0, self._total - samples) * elapsed / done_now
            if self._budget_s is not None:
                eta = min(eta, max(0.0, self._budget_s - elapsed))
        self.last_mean_reward = float(self._ppo.rollout_buffer.rewards.mean())
        progress = TrainProgress(
            samples=samples,
            total=self._total,
            elapsed_s=elapsed,
            eta_s=eta,
            mean_reward=self.last_mean_reward,
            # this rollout's update is still the warm-up when the actor stays frozen
            actor_frozen=frozen_now and self._frozen,
        )
        if self._on_progress is not None:
            self._on_progress(progress)
        else:
            logger.info("train: %s", progress.line())


def _checkpoint(
    model: PPO,
    out: Path,
    args: RunArgs,
    *,
    samples: int,
    total: int,
    wall_s: float,
) -> Path:
    """Save an SB3 zip of ``model`` at ``samples`` and then the manifest naming it."""
    directory = checkpoint_dir(out)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{out.stem}-{samples:09d}.zip"
    model.save(path)
    write_manifest(
        out,
        TrainManifest(
            run=out.stem,
            args=args,
            samples=samples,
            total_samples=total,
            wall_s=wall_s,
            checkpoint=path.name,
            checkpoint_sha256=sha256_file(path),
            updated_at=datetime.now(UTC).replace(microsecond=0),
        ),
    )
    logger.info("checkpoint at %d samples: %s", samples, path)
    return path


def _initial(init_from: Path | None, out: Path, mode: str) -> TorchPolicy | None:
    """The verified initial policy, refused when it cannot seed this run."""
    if init_from is None:
        return None
    if Path(init_from).resolve() == out.resolve():
        raise ConfigError(
            f"--out {out} is the initial weights file: write the fine-tuned policy elsewhere "
            "(the initial one is the 'before' of the comparison)"
        )
    policy = TorchPolicy.load(init_from)
    if policy.mode != mode:
        raise ConfigError(
            f"initial weights {init_from} are a {policy.mode} policy, but the run trains "
            f"{mode} plans: train with --mode {policy.mode} (or leave --mode out to take the "
            "weights' mode), or start from other weights"
        )
    return policy


def train(
    config: EnvConfig,
    out: Path,
    *,
    timesteps: int = 20_000,
    n_sims: int = 1,
    seed: int = 7,
    learning_rate: float | None = None,
    n_steps: int = 4,
    progress_bar: bool = True,
    checkpoint_every: int = 10_000,
    init_from: Path | None = None,
    value_warmup_rollouts: int | None = None,
    budget_s: float | None = None,
    resume: bool = False,
    on_progress: Callable[[TrainProgress], None] | None = None,
    others: Sequence[EnvConfig] = (),
    backend: ComputeBackend = "local",
    compute: ComputeSettings | None = None,
) -> TrainResult:
    """Train PPO and save the actor's weights to ``out`` (plus ``out.sha256``).

    Args:
        config: the environment (network, demand, interval, plan mode).
        out: weights file to write; the run's checkpoints and manifest go to
            ``<out dir>/checkpoints`` (one run per output file).
        timesteps: the run's target in samples (one sample = one
            intersection-interval), over all invocations when resuming.
        n_sims: simulations in parallel (one process each).
        seed: seeds PPO and the simulations.
        learning_rate: PPO learning rate (default: :data:`FINETUNE_LEARNING_RATE`
            with ``init_from``, else :data:`SCRATCH_LEARNING_RATE`).
        n_steps: intervals per slot in each PPO rollout (rounded to a multiple of 4,
            so that 4 minibatches divide the rollout exactly).
        progress_bar: show SB3's progress bar (rich).
        checkpoint_every: samples between SB3 checkpoints (one is always written
            at the end, also when the budget stops the run).
        init_from: start the actor from these weights (digest checked, their plan
            mode must be ``config.mode``); the value net starts fresh.
        value_warmup_rollouts: rollouts that train only the value net (default:
            :data:`FINETUNE_VALUE_WARMUP_ROLLOUTS` with ``init_from``, else 0).
        budget_s: wall seconds for this invocation; at the budget the run stops
            cleanly (the unfinished rollout is dropped) and saves what it learnt.
        resume: continue the run from its latest checkpoint; its arguments must be
            those recorded in the manifest (``timesteps`` and ``budget_s`` may differ).
        on_progress: called with a :class:`TrainProgress` after each rollout
            (default: one log line at INFO).
        others: further networks trained on side by side (a mix; see
            :class:`rl.env.IntersectionVecEnv`); the manifest records ``config`` only.
        backend: where the simulations run: ``local`` processes or ``ray`` actors
            (not recorded in the manifest: it does not change what is learnt).
        compute: the settings' ``[compute]`` section for the ``ray`` backend.

    Raises:
        ConfigError: bad initial weights (digest, shape, plan mode), a missing
            network/detector/route file, a budget that is not positive, nothing to
            resume, a resume with other arguments than the run's, or (``ray``) a
            cluster that is unreachable or has no room for the simulations.
        SimulationError: a simulation failed or was lost (a checkpoint of what was
            trained is written first, so the run can be resumed).
    """
    if timesteps < 1:
        raise ConfigError(f"timesteps must be >= 1, got {timesteps}")
    if budget_s is not None and budget_s <= 0:
        raise ConfigError(f"the wall-clock budget must be positive, got {budget_s:g} s")
    initial = _initial(init_from, out, config.mode)
    if learning_rate is None:
        learning_rate = SCRATCH_LEARNING_RATE if initial is None else FINETUNE_LEARNING_RATE
    if value_warmup_rollouts is None:
        value_warmup_rollouts = 0 if initial is None else FINETUNE_VALUE_WARMUP_ROLLOUTS
    rollout = 4 * max(1, round(n_steps / 4))
    args = run_args(
        config,
        n_sims=n_sims,
        seed=seed,
        learning_rate=learning_rate,
        n_steps=rollout,
        value_warmup_rollouts=value_warmup_rollouts,
        init_sha256=None if initial is None else initial.sha256,
    )
    done, wall_before, resume_zip = 0, 0.0, None
    if resume:
        manifest = read_manifest(out)
        changed = differences(manifest.args, args)
        if changed:
            raise ConfigError(
                f"cannot resume the run in {manifest_path(out)}: its arguments differ "
                f"({'; '.join(changed)}); give the options it was started with, or start "
                "a new run (without --resume, or with another --out)"
            )
        done, wall_before = manifest.samples, manifest.wall_s
        resume_zip = checkpoint_dir(out) / manifest.checkpoint
    elif manifest_path(out).is_file():
        logger.warning("starting a new run: the manifest %s is replaced", manifest_path(out))

    torch.set_num_threads(1)
    started = time.monotonic()
    # a resumed run draws new episodes (the seed moves on with the samples done)
    env = IntersectionVecEnv(
        config,
        n_sims=n_sims,
        seed=seed + done,
        others=others,
        backend=backend,
        compute=compute,
    )
    try:
        if resume_zip is not None:
            model = PPO.load(resume_zip, env=env, device="cpu")
            model.set_random_seed(seed + done)
        else:
            model = build_ppo(env, learning_rate=learning_rate, n_steps=rollout, seed=seed)
            if initial is not None:
                actor_into_sb3(initial.net, model)

        def save(samples: int) -> None:
            wall = wall_before + time.monotonic() - started
            _checkpoint(model, out, args, samples=samples, total=timesteps, wall_s=wall)

        callback = _RunCallback(
            model,
            total=timesteps,
            budget_s=budget_s,
            checkpoint_every=checkpoint_every,
            warmup_rollouts=value_warmup_rollouts,
            started=started,
            save=save,
            on_progress=on_progress,
        )
        if done < timesteps:
            progress_log = sb3_logger(str(out.parent / "logs"), ["csv"])
            model.set_logger(progress_log)
            try:
                model.learn(
                    total_timesteps=timesteps - done,
                    progress_bar=progress_bar,
                    callback=callback,
                    reset_num_timesteps=resume_zip is None,
                )
            except (KeyboardInterrupt, SimulationError):
                # Ctrl-C or a lost simulation: keep what was trained resumable, then let
                # the CLI report it
                model.num_timesteps = callback.trained
                save(callback.trained)
                raise
            finally:
                progress_log.close()
        if callback.stopped_by_budget:
            # the unfinished rollout was never trained on: it does not count
            model.num_timesteps = callback.trained
        samples = int(model.num_timesteps)
        wall = time.monotonic() - started
        checkpoint = _checkpoint(
            model, out, args, samples=samples, total=timesteps, wall_s=wall_before + wall
        )
        mean_reward = callback.last_mean_reward
        if mean_reward is None and model.ep_info_buffer:
            buffer = model.ep_info_buffer
            mean_reward = float(sum(e["r"] for e in buffer) / len(buffer))
        digest = save_weights(actor_from_sb3(model), out, config.mode)
    finally:
        env.close()
    wall = time.monotonic() - started
    logger.info(
        "trained %d samples in %.0f s%s -> %s (%s)",
        samples,
        wall,
        " (stopped by the budget)" if callback.stopped_by_budget else "",
        out,
        digest[:12],
    )
    return TrainResult(
        weights=out,
        sha256=digest,
        timesteps=samples,
        wall_s=wall,
        final_mean_reward=mean_reward,
        run_wall_s=wall_before + wall,
        resumed_from=done,
        stopped_by_budget=callback.stopped_by_budget,
        init_sha256=args.init_sha256,
        checkpoint=checkpoint,
    )
