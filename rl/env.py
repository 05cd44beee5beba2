"""Gymnasium environment and shared-policy vectorised environment over the field emulator.

Episodes run on :class:`rl.field_session.FieldSession`, i.e. the field emulator
(:class:`simulators.field.FieldEmulator`) with the training demand, a random
demand scale, and teleporting after ``teleport_s`` so that a gridlocked episode
still ends. One step is one plan interval (240 s of field time by default, and
episodes begin on multiples of it, the field's measurement grid): every light
gets a new plan from its action (through :func:`configs.safety.project`, so
every plan the simulation runs is safe), then the field advances one interval
and each light is rewarded for its own approaches:

``r = -(queue / REF_QUEUE_VEH) - nox_weight * (nox / REF_NOX_MG_S)``

where ``queue`` is the mean number of halting vehicles per incoming lane during
the interval and ``nox`` the NOx emitted per incoming lane per second.

Two views of the same simulation (:class:`SignalSimulation`):

* :class:`SignalTimingEnv` — a plain :class:`gymnasium.Env` whose observation is
  the ``(n_lights, OBS_DIM)`` matrix and whose action is ``(n_lights, ACT_DIM)``;
  its reward is the mean over lights. It passes gymnasium's ``check_env``.
* :class:`IntersectionVecEnv` — an SB3 ``VecEnv`` in which every light of every
  simulation is one slot, so one shared PPO policy learns from every
  intersection as a separate sample (parameter sharing). Simulations beyond the
  first run in worker processes (libsumo allows one per process), or, with the
  ``ray`` backend, every simulation runs in a Ray actor (:mod:`rl.ray_env`).
"""

from __future__ import annotations

import logging
import multiprocessing as mp
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

import gymnasium as gym
import numpy as np
import numpy.typing as npt
from stable_baselines3.common.vec_env.base_vec_env import (
    VecEnv,
    VecEnvIndices,
    VecEnvObs,
    VecEnvStepReturn,
)

from configs.errors import ConfigError
from configs.safety import project_plans
from configs.settings import ComputeBackend, ComputeSettings
from configs.timing import IntersectionTiming, LimitsSource, SafetyLimits
from rl.baselines import actuated_plans, adaptive_plans, as_mode, fixed_plans
from rl.features import (
    ACT_DIM,
    OBS_DIM,
    IntersectionLayout,
    action_to_proposal,
    build_observations,
    encode_batch,
    layouts_from_network,
)
from rl.field_session import FieldSession, IntervalMeasurements
from simulators.network import NetworkModel, load_network

if TYPE_CHECKING:
    from rl.ray_env import TrainingActors

__all__ = [
    "REF_NOX_MG_S",
    "REF_QUEUE_VEH",
    "ComputeBackend",
    "EnvConfig",
    "IntersectionVecEnv",
    "PlanMode",
    "SignalSimulation",
    "SignalTimingEnv",
    "SimulationHandle",
    "StepResult",
]

logger = logging.getLogger(__name__)

PlanMode = Literal["fixed", "actuated", "adaptive"]
REF_QUEUE_VEH = 2.0
"""Halting vehicles per lane that count as one unit of (negative) reward."""
REF_NOX_MG_S = 0.5
"""NOx per lane (mg/s) that counts as one unit of (negative) reward."""

FloatArray = npt.NDArray[np.float32]
StepResult = tuple[FloatArray, FloatArray, bool, dict[str, Any]]
"""One step of one simulation: observations, rewards, done, info."""


@dataclass(frozen=True)
class EnvConfig:
    """How episodes are drawn.

    Attributes:
        net_file: the SUMO network.
        detectors_file: its E1 detectors.
        route_files: the demand.
        interval_s: simulated seconds per step (one plan interval; whole seconds).
        episode_steps: steps per episode.
        warmup_s: simulated seconds before the first observation (a multiple of
            ``interval_s``).
        begin_range_s: episode start times are drawn uniformly from this range
            and rounded to a multiple of ``interval_s``.
        scale_range: demand scale factors are drawn uniformly from this range.
        nox_weight: weight of the NOx term in the reward.
        mode: plans deployed as ``fixed`` or ``actuated`` timing.
        teleport_s: SUMO ``--time-to-teleport`` in training (a gridlocked episode
            still ends; evaluation never teleports).
    """

    net_file: Path
    detectors_file: Path
    route_files: tuple[Path, ...]
    interval_s: float = 240.0
    episode_steps: int = 10
    warmup_s: float = 240.0
    begin_range_s: tuple[float, float] = (0.0, 6000.0)
    scale_range: tuple[float, float] = (0.8, 1.2)
    nox_weight: float = 0.1
    mode: PlanMode = "fixed"
    teleport_s: float = 300.0


class SignalSimulation:
    """One field run seen as a sequence of plan intervals for every light."""

    def __init__(
        self, config: EnvConfig, limits: SafetyLimits | LimitsSource | None = None
    ) -> None:
        """Load the network and check the episode timing; the field starts in :meth:`reset`.

        ``limits`` may be the settings' safety section (per-intersection overrides apply).

        Raises:
            ConfigError: an interval that is not a whole number of seconds, a
                warm-up that is not a positive multiple of it, or a network
                without traffic lights.
        """
        interval = config.interval_s
        if interval <= 0 or interval != int(interval):
            raise ConfigError(
                f"EnvConfig.interval_s must be a whole number of seconds, got {interval}"
            )
        if config.warmup_s <= 0 or config.warmup_s % interval:
            raise ConfigError(
                f"EnvConfig.warmup_s ({config.warmup_s:g}) must be a positive multiple of "
                f"interval_s ({interval:g}): measurements end at multiples of the interval"
            )
        self.config = config
        self.limits: SafetyLimits | LimitsSource = limits if limits is not None else SafetyLimits()
        self.network: NetworkModel = load_network(config.net_file, config.detectors_file)
        self.layouts: dict[str, IntersectionLayout] = layouts_from_network(self.network)
        self.tls_ids = tuple(sorted(self.layouts))
        if not self.tls_ids:
            raise ConfigError(f"{config.net_file} has no traffic lights to control")
        self.bases = {t: as_mode(self.layouts[t].base, config.mode) for t in self.tls_ids}
        self._lanes = {
            t: max(1, len(self.network.intersections[t].incoming_lanes)) for t in self.tls_ids
        }
        self._session: FieldSession | None = None
        self._current: dict[str, IntersectionTiming] = {}
        self._obs: FloatArray = np.zeros((len(self.tls_ids), OBS_DIM), dtype=np.float32)
        self._last_measure: IntervalMeasurements | None = None
        self._steps = 0
        self._rng = np.random.default_rng(0)

    @property
    def n(self) -> int:
        """Number of lights."""
        return len(self.tls_ids)

    def reset(self, seed: int | None = None) -> FloatArray:
        """Start a new episode (a new field run) and return the first observations."""
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        self.close()
        lo, hi = self.config.begin_range_s
        begin = float(self._rng.uniform(lo, hi)) if hi > lo else lo
        interval = int(self.config.interval_s)
        begin_s = max(0, round(begin / interval)) * interval  # on the measurement grid
        slo, shi = self.config.scale_range
        scale = float(self._rng.uniform(slo, shi)) if shi > slo else slo
        self._session = FieldSession(
            self.network,
            self.config.route_files,
            seed=int(self._rng.integers(0, 2**31 - 1)),
            begin_s=begin_s,
            interval_s=interval,
            scale=scale,
            teleport_s=self.config.teleport_s,
        )
        self._current = fixed_plans({t: self.layouts[t].base for t in self.tls_ids})
        if self.config.mode != "fixed":
            start = adaptive_plans if self.config.mode == "adaptive" else actuated_plans
            started = start({t: self.layouts[t].base for t in self.tls_ids}, self.limits)
            for t, plan in started.items():
                self._current[t] = plan
                self._session.apply(t, plan)
        self._steps = 0
        measured = self._session.run_until(self._session.time_s + self.config.warmup_s)
        self._obs = self._observe(measured)
        return self._obs

    def _observe(self, measured: IntervalMeasurements) -> FloatArray:
        self._last_measure = measured
        obs = build_observations(
            self.layouts,
            measured.counts_veh,
            measured.interval_s,
            self._current,
            measured.occupancy,
        )
        self._observations = obs
        return encode_batch([obs[t] for t in self.tls_ids])

    def step(self, actions: npt.ArrayLike) -> StepResult:
        """Apply one action per light, run one interval; return obs, rewards, done, info."""
        if self._session is None:
            raise ConfigError("reset() the environment before step()")
        acts = np.asarray(actions, dtype=np.float64).reshape(self.n, ACT_DIM)
        proposals = {
            tls_id: action_to_proposal(acts[i], self._observations[tls_id])
            for i, tls_id in enumerate(self.tls_ids)
        }
        plans = project_plans(proposals, self.bases, self.limits, self._current, skip_unsafe=True)
        for tls_id, plan in plans.items():
            self._current[tls_id] = plan
            self._session.apply(tls_id, plan)
        measured = self._session.run_until(self._session.time_s + self.config.interval_s)
        self._obs = self._observe(measured)
        rewards = self.rewards(measured)
        self._steps += 1
        done = self._steps >= self.config.episode_steps
        info = {
            "queue_veh": float(np.mean(list(measured.wait_veh_s.values()))) / measured.interval_s,
            "nox_mg": float(sum(measured.nox_mg.values())),
        }
        return self._obs, rewards, done, info

    def rewards(self, measured: IntervalMeasurements) -> FloatArray:
        """Per-light reward of one interval (see the module docstring)."""
        out = np.zeros(self.n, dtype=np.float32)
        span = max(float(measured.interval_s), 1.0)
        for i, t in enumerate(self.tls_ids):
            queue = measured.wait_veh_s.get(t, 0.0) / span / self._lanes[t]
            nox = measured.nox_mg.get(t, 0.0) / span / self._lanes[t]
            out[i] = -(queue / REF_QUEUE_VEH) - self.config.nox_weight * (nox / REF_NOX_MG_S)
        return out

    def close(self) -> None:
        """Stop the field run, if any."""
        if self._session is not None:
            self._session.close()
            self._session = None


class SignalTimingEnv(gym.Env[FloatArray, FloatArray]):
    """All lights of one simulation as one gymnasium environment (mean reward)."""

    metadata: dict[str, Any] = {"render_modes": []}  # noqa: RUF012 - gymnasium's convention

    def __init__(
        self, config: EnvConfig, limits: SafetyLimits | LimitsSource | None = None
    ) -> None:
        super().__init__()
        self.sim = SignalSimulation(config, limits)
        n = self.sim.n
        self.observation_space = gym.spaces.Box(-2.0, 4.0, shape=(n, OBS_DIM), dtype=np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, shape=(n, ACT_DIM), dtype=np.float32)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[FloatArray, dict[str, Any]]:
        """Start a new episode."""
        super().reset(seed=seed)
        if seed is None:
            seed = int(self.np_random.integers(0, 2**31 - 1))
        return self._clip(self.sim.reset(seed)), {}

    def step(self, action: FloatArray) -> tuple[FloatArray, float, bool, bool, dict[str, Any]]:
        """One plan interval for every light."""
        obs, rewards, done, info = self.sim.step(action)
        return self._clip(obs), float(np.mean(rewards)), False, done, info

    def _clip(self, obs: FloatArray) -> FloatArray:
        return np.clip(obs, -2.0, 4.0).astype(np.float32)

    def close(self) -> None:
        """Stop SUMO."""
        self.sim.close()


# --------------------------------------------------------------------------- vectorised


class SimulationHandle(Protocol):
    """One simulation as :class:`IntersectionVecEnv` drives it (here, a process, an actor)."""

    n: int
    """Number of lights."""

    def reset(self, seed: int | None) -> FloatArray:
        """Start a new episode; return the first observations."""
        ...

    def step_async(self, actions: FloatArray) -> None:
        """Start one step (one action per light)."""
        ...

    def step_wait(self) -> StepResult:
        """The started step's result."""
        ...

    def close(self) -> None:
        """Stop the simulation."""
        ...


def _worker(conn: Connection, config: EnvConfig) -> None:
    sim = SignalSimulation(config)
    try:
        while True:
            cmd, arg = conn.recv()
            if cmd == "reset":
                conn.send(sim.reset(arg))
            elif cmd == "step":
                conn.send(sim.step(arg))
            elif cmd == "n":
                conn.send(sim.n)
            elif cmd == "close":
                break
    except EOFError:
        pass
    finally:
        sim.close()
        conn.close()


class _Remote:
    """A SignalSimulation in a worker process."""

    def __init__(self, config: EnvConfig) -> None:
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker, args=(child, config), daemon=True)
        self.proc.start()
        child.close()
        self.conn.send(("n", None))
        self.n: int = self.conn.recv()

    def reset(self, seed: int | None) -> FloatArray:
        self.conn.send(("reset", seed))
        result: FloatArray = self.conn.recv()
        return result

    def step_async(self, actions: FloatArray) -> None:
        self.conn.send(("step", actions))

    def step_wait(self) -> StepResult:
        result: StepResult = self.conn.recv()
        return result

    def close(self) -> None:
        try:
            self.conn.send(("close", None))
        except (BrokenPipeError, OSError):
            pass
        self.proc.join(timeout=10)
        if self.proc.is_alive():
            self.proc.terminate()


class _Local:
    """A SignalSimulation in this process."""

    def __init__(self, config: EnvConfig) -> None:
        self.sim = SignalSimulation(config)
        self.n = self.sim.n
        self._pending: StepResult | None = None

    def reset(self, seed: int | None) -> FloatArray:
        return self.sim.reset(seed)

    def step_async(self, actions: FloatArray) -> None:
        self._pending = self.sim.step(actions)

    def step_wait(self) -> StepResult:
        if self._pending is None:
            raise ConfigError("step_wait() without step_async()")
        out, self._pending = self._pending, None
        return out

    def close(self) -> None:
        self.sim.close()


class IntersectionVecEnv(VecEnv):
    """Every light of ``n_sims`` simulations as one slot of an SB3 VecEnv.

    Args:
        config: how episodes are drawn.
        n_sims: simulations run side by side (the first in this process, the
            others in worker processes; with the ``ray`` backend each in a Ray actor).
        seed: seeds simulation ``k`` with ``seed + k`` at the first reset.
        others: further networks (a training mix): simulation ``k`` runs
            ``[config, *others][k % (1 + len(others))]``; all must share the plan
            mode, and ``n_sims`` is raised to cover each of them once.
        backend: ``local`` (this machine) or ``ray`` (actors on the cluster of
            ``compute``); the same seeds give the same results on either.
        compute: the settings' ``[compute]`` section for the ``ray`` backend
            (default: its defaults, i.e. the cluster this machine belongs to).

    Raises:
        ConfigError: mixed plan modes, an unknown backend, or (``ray``) a cluster
            that is unreachable or has no room for the simulations.
    """

    def __init__(
        self,
        config: EnvConfig,
        n_sims: int = 1,
        seed: int = 0,
        others: Sequence[EnvConfig] = (),
        *,
        backend: ComputeBackend = "local",
        compute: ComputeSettings | None = None,
    ) -> None:
        mix = [config, *others]
        if any(c.mode != config.mode for c in mix):
            raise ConfigError("every network of a training mix must use the same plan mode")
        n_sims = max(n_sims, len(mix))
        self._actors: TrainingActors | None = None
        self._sims: list[SimulationHandle]
        if backend == "ray":
            from rl.ray_env import TrainingActors

            configs = [mix[k % len(mix)] for k in range(n_sims)]
            self._actors = TrainingActors(configs, compute or ComputeSettings())
            self._sims = list(self._actors.sims)
        elif backend == "local":
            self._sims = [_Remote(mix[k % len(mix)]) for k in range(1, n_sims)]
            self._sims.insert(0, _Local(config))
        else:
            raise ConfigError(f'backend must be "local" or "ray", got {backend!r}')
        self._sizes = [s.n for s in self._sims]
        self._seed = seed
        self._episodes = 0
        self._returns = [np.zeros(n, dtype=np.float64) for n in self._sizes]
        self._lengths = [0] * len(self._sims)
        obs_space = gym.spaces.Box(-2.0, 4.0, shape=(OBS_DIM,), dtype=np.float32)
        act_space = gym.spaces.Box(-1.0, 1.0, shape=(ACT_DIM,), dtype=np.float32)
        super().__init__(sum(self._sizes), obs_space, act_space)

    def _next_seed(self, k: int) -> int:
        self._episodes += 1
        return self._seed + k + 1000 * self._episodes

    def reset(self) -> VecEnvObs:
        """Reset every simulation."""
        parts = [s.reset(self._next_seed(k)) for k, s in enumerate(self._sims)]
        return np.clip(np.concatenate(parts), -2.0, 4.0).astype(np.float32)

    def step_async(self, actions: np.ndarray) -> None:  # type: ignore[type-arg]
        """Send each simulation its lights' actions."""
        # remote simulations first, so that the local one overlaps with them
        offsets = np.cumsum([0, *self._sizes])
        order = list(range(1, len(self._sims))) + [0]
        for k in order:
            start = int(offsets[k])
            self._sims[k].step_async(np.asarray(actions[start : start + self._sizes[k]]))

    def step_wait(self) -> VecEnvStepReturn:
        """Collect the results; a finished simulation is reset at once (SB3 convention)."""
        obs_parts: list[FloatArray] = []
        rew_parts: list[FloatArray] = []
        done_parts: list[npt.NDArray[np.bool_]] = []
        infos: list[dict[str, Any]] = []
        for k, sim in enumerate(self._sims):
            obs, rewards, done, info = sim.step_wait()
            obs = np.clip(obs, -2.0, 4.0).astype(np.float32)
            slot_infos: list[dict[str, Any]] = [dict(info) for _ in range(sim.n)]
            self._returns[k] += rewards
            self._lengths[k] += 1
            if done:
                for i in range(sim.n):
                    slot_infos[i]["terminal_observation"] = obs[i]
                    slot_infos[i]["TimeLimit.truncated"] = True
                    # SB3 reads "episode" for ep_rew_mean (as a Monitor wrapper would add it)
                    slot_infos[i]["episode"] = {
                        "r": float(self._returns[k][i]),
                        "l": self._lengths[k],
                    }
                self._returns[k][:] = 0.0
                self._lengths[k] = 0
                obs = np.clip(sim.reset(self._next_seed(k)), -2.0, 4.0).astype(np.float32)
            obs_parts.append(obs)
            rew_parts.append(rewards.astype(np.float32))
            done_parts.append(np.full(sim.n, done, dtype=bool))
            infos.extend(slot_infos)
        return (
            np.concatenate(obs_parts),
            np.concatenate(rew_parts),
            np.concatenate(done_parts),
            infos,
        )

    def close(self) -> None:
        """Stop every simulation and worker (and the Ray connection this env opened)."""
        if self._actors is not None:
            self._actors.close()
            return
        for sim in self._sims:
            sim.close()

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        """No per-slot attributes."""
        return [None] * len(list(self._get_indices(indices)))

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        """No per-slot attributes."""

    def env_method(
        self,
        method_name: str,
        *method_args: Any,
        indices: VecEnvIndices = None,
        **method_kwargs: Any,
    ) -> list[Any]:
        """No per-slot methods."""
        return [None] * len(list(self._get_indices(indices)))

    def env_is_wrapped(
        self, wrapper_class: type[gym.Wrapper[Any, Any, Any, Any]], indices: VecEnvIndices = None
    ) -> list[bool]:
        """Slots are never wrapped."""
        return [False] * len(list(self._get_indices(indices)))
