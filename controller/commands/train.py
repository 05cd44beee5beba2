"""``signaltwin train``: train the shared signal-timing policy with PPO on SUMO."""

from __future__ import annotations

import argparse
import logging
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from configs.errors import ConfigError
from configs.settings_file import load_settings
from controller.exit_codes import ExitCode

if TYPE_CHECKING:
    from rl.env import EnvConfig

# rl (torch, stable-baselines3, gymnasium) and simulators (SUMO) are imported when
# the command runs, so that registering it at every `signaltwin` start stays cheap.

logger = logging.getLogger(__name__)

_DISTRICT = Path("configs/district")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``train`` command."""
    parser = subparsers.add_parser(
        "train",
        help="train the RL timing policy (PPO, shared over intersections)",
        description=(
            "Train the shared signal-timing policy with stable-baselines3 PPO on SUMO. Every "
            "traffic light of every simulation is one sample per 240 s plan interval; "
            "actions are bounded split/cycle/offset adjustments projected onto the safe set. "
            "Writes the actor's weights (torch state_dict, loaded with weights_only) and "
            "<out>.sha256; SB3 checkpoints go to <out dir>/checkpoints. Options not given are "
            "taken from --config's [rl] and [simulation] sections, else the demo district."
        ),
    )
    parser.add_argument("--config", type=Path, default=None, help="signaltwin TOML settings")
    parser.add_argument("--network", type=Path, default=None, help="SUMO .net.xml")
    parser.add_argument(
        "--detectors",
        type=Path,
        default=None,
        help="E1 loops (generated next to the net if absent)",
    )
    parser.add_argument(
        "--routes", type=Path, nargs="+", default=None, help="SUMO route files (training demand)"
    )
    parser.add_argument("--timesteps", type=int, default=None, help="samples (light-intervals)")
    parser.add_argument("--envs", type=int, default=None, help="parallel simulations (processes)")
    parser.add_argument("--seed", type=int, default=None, help="random seed")
    parser.add_argument(
        "--mode",
        choices=("fixed", "actuated"),
        default="actuated",
        help="plans the policy tunes: fixed-time or actuated (default: actuated)",
    )
    parser.add_argument("--episode-steps", type=int, default=10, help="intervals per episode")
    parser.add_argument(
        "--n-steps", type=int, default=4, help="intervals per slot in each PPO rollout (default 4)"
    )
    parser.add_argument(
        "--learning-rate",
        type=float,
        default=None,
        help="PPO learning rate (default: [rl] learning_rate with --config, else 1e-3)",
    )
    parser.add_argument(
        "--out", type=Path, default=Path("rl/policies/district.pt"), help="weights file to write"
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.set_defaults(func=_run)


def _sibling(network: Path, suffix: str) -> Path:
    """``city.net.xml`` (or ``city.net.xml.gz``) -> ``city<suffix>`` next to it (not gzipped)."""
    return network.with_name(network.name.removesuffix(".gz").replace(".net.xml", suffix))


def episode_begins(config: EnvConfig) -> tuple[float, float]:
    """Episode start times within the routes' departure window (a 7:00 file: from 25200 s).

    Raises:
        ConfigError: the routes have no traffic in an episode's length from their start.
    """
    from simulators.routes import read_routes_window, traffic_start

    window = read_routes_window(config.route_files)
    length_s = config.warmup_s + config.episode_steps * config.interval_s
    first = float(traffic_start(window, None, length_s, 1, "--routes"))
    last = max(first, (window.end_s or first) - length_s)
    return first, last


def _run(args: argparse.Namespace) -> int:
    from rl.env import EnvConfig
    from rl.train import train
    from simulators.network import ensure_detectors

    timesteps, n_envs, seed, lr = 40_000, 2, 11, 1e-3
    network: Path | None = args.network
    detectors: Path | None = args.detectors
    routes: list[Path] | None = args.routes
    if args.config is not None:
        settings = load_settings(args.config)
        timesteps = settings.rl.total_timesteps
        n_envs = settings.rl.n_envs
        seed = settings.rl.seed
        lr = settings.rl.learning_rate
        network = network or settings.simulation.network
        detectors = detectors or settings.simulation.detectors
    network = network or _DISTRICT / "district.net.xml"
    if routes is None:
        sibling = _sibling(network, ".rou.xml")
        if not sibling.is_file():
            raise ConfigError(
                f"no training demand: pass --routes (no {sibling} next to the network)"
            )
        routes = [sibling]
    if detectors is None:
        detectors = ensure_detectors(network, _sibling(network, ".det.add.xml"))
    for path in (network, detectors, *routes):
        if not Path(path).is_file():
            raise ConfigError(f"file {path} does not exist (check --network/--detectors/--routes)")
    config = EnvConfig(
        net_file=network,
        detectors_file=detectors,
        route_files=tuple(routes),
        episode_steps=args.episode_steps,
        mode=args.mode,
    )
    if args.routes is not None:
        config = replace(config, begin_range_s=episode_begins(config))
    result = train(
        config,
        args.out,
        timesteps=args.timesteps or timesteps,
        n_sims=args.envs or n_envs,
        seed=args.seed if args.seed is not None else seed,
        learning_rate=args.learning_rate or lr,
        n_steps=args.n_steps,
        progress_bar=not args.no_progress,
    )
    print(f"weights: {result.weights}")
    print(f"sha256:  {result.sha256}")
    print(f"samples: {result.timesteps} in {result.wall_s:.0f} s wall")
    if result.final_mean_reward is not None:
        print(f"mean reward per light-interval (last rollout): {result.final_mean_reward:.3f}")
    return ExitCode.OK
