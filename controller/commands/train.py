"""``signaltwin train``: train the shared signal-timing policy with PPO on SUMO.

With ``--network`` (a bureau's own network) the run fine-tunes the shipped
policy by default (``--from shipped``), within a wall-clock budget (``--budget-min``,
30 min by default when fine-tuning), writing checkpoints it can be resumed from
(``--resume``); at the end it prints the ``signaltwin evaluate`` command that
compares the policy before and after (``--policy`` and ``--policy-b``).

With ``--backend ray`` the simulations run as Ray actors on the cluster at
``--ray-address`` (default: the settings' ``[compute]`` section); the output
files, the manifest and, for the same seeds, the policy are those of a local run.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
import typing
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import ValidationError

from configs.errors import ConfigError
from configs.settings import ComputeSettings
from configs.settings_file import load_settings
from configs.timing import Mode
from controller.exit_codes import ExitCode

if TYPE_CHECKING:
    from configs.settings import Settings
    from rl.env import ComputeBackend, EnvConfig

# rl (torch, stable-baselines3, gymnasium) and simulators (SUMO) are imported when
# the command runs, so that registering it at every `signaltwin` start stays cheap.

logger = logging.getLogger(__name__)

_DISTRICT = Path("configs/district")
_DISTRICT_OUT = Path("rl/policies/district.pt")
FINETUNE_BUDGET_MIN = 30.0
"""Default wall-clock budget when fine-tuning (the 2-core target of issue 15)."""

EPILOG = """\
Fine-tuning on your own network:
  signaltwin train --network city.net.xml --routes city.rou.xml
starts from the shipped policy, stops after 30 min (--budget-min), writes
runs/city/policy.pt and its checkpoints in runs/city/checkpoints/; run the same
command with --resume to continue (the options must be the same; --timesteps and
--budget-min may change).

On a Ray cluster:
  signaltwin train --backend ray --ray-address 10.0.0.5:6379 --envs 8
runs the 8 simulations as Ray actors (each reserving [compute] cpus_per_worker
CPUs; the network and route files are shipped to the nodes). The results are
those of --backend local with the same seeds, and a run may be resumed on either.

Exit codes: 0 done (also when the budget stopped the run); 2 bad arguments, bad
initial weights, a resume with other options, or a Ray cluster that is
unreachable or has no room; 3 SUMO failed or a Ray simulation was lost;
130 interrupted (for 3 and 130 the last checkpoint stays resumable).
"""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``train`` command."""
    parser = subparsers.add_parser(
        "train",
        help="train or fine-tune the RL timing policy (PPO, shared over intersections)",
        description=(
            "Train the shared signal-timing policy with stable-baselines3 PPO on SUMO. Every "
            "traffic light of every simulation is one sample per 240 s plan interval; "
            "actions are bounded split/cycle/offset adjustments projected onto the safe set. "
            "Writes the actor's weights (torch state_dict, loaded with weights_only) and "
            "<out>.sha256; SB3 checkpoints and the run's manifest go to "
            "<out dir>/checkpoints. Options not given are taken from --config's [rl] and "
            "[simulation] sections, else the demo district."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
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
    parser.add_argument(
        "--from",
        dest="init",
        metavar="FILE|shipped|defaults|none",
        default=None,
        help="initial weights: a weights file (with its .sha256), 'shipped' (the policy the "
        "settings use: rl.policy_path, else the one shipped with signaltwin), 'defaults' (an "
        "actor whose every action is zero: the adaptive mode's default parameters) or 'none' "
        "(from scratch); default: shipped with --network, else none",
    )
    parser.add_argument(
        "--mix",
        default=None,
        metavar="NAMES",
        help="train on a mix of scenarios side by side (rl.scenarios: comma-separated names, "
        "or 'train' for every training scenario), each with randomTrips demand at --level, "
        "instead of --network/--routes",
    )
    parser.add_argument(
        "--level",
        choices=("low", "mid", "high"),
        default="mid",
        help="demand level of the --mix scenarios (default mid; episodes scale it by 0.6-1.5)",
    )
    parser.add_argument(
        "--budget-min",
        type=float,
        default=None,
        help=f"wall-clock minutes for this invocation; the run stops cleanly and saves what "
        f"it learnt (default: {FINETUNE_BUDGET_MIN:g} when fine-tuning, else no limit; "
        "0: no limit)",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the run of --out from its latest checkpoint (same options)",
    )
    parser.add_argument(
        "--timesteps", type=int, default=None, help="the run's target in samples (light-intervals)"
    )
    parser.add_argument(
        "--envs",
        type=int,
        default=None,
        help="parallel simulations (processes, or Ray actors with --backend ray)",
    )
    parser.add_argument(
        "--backend",
        choices=("local", "ray"),
        default=None,
        help="where the simulations run: 'local' processes on this machine, or 'ray' "
        "actors on the Ray cluster at --ray-address (the same seeds give the same policy); "
        "default: --config's [compute] backend, else local",
    )
    parser.add_argument(
        "--ray-address",
        default=None,
        metavar="ADDRESS",
        help="the Ray cluster for --backend ray: 'auto' (the cluster this machine belongs "
        "to), 'host:port' of its head, or 'ray://host:port' (Ray Client); default: "
        "--config's [compute] address, else auto. Waits [compute] connect_timeout_s "
        "(default 60 s) for it",
    )
    parser.add_argument("--seed", type=int, default=None, help="random seed")
    parser.add_argument(
        "--mode",
        choices=typing.get_args(Mode),
        default=None,
        help="plans the policy tunes (default: the initial weights' mode, else actuated)",
    )
    parser.add_argument("--episode-steps", type=int, default=10, help="intervals per episode")
    parser.add_argument(
        "--n-steps", type=int, default=4, help="intervals per slot in each PPO rollout (default 4)"
    )
    parser.add_argument(
        "--learning-rate",
        type=float,
        default=None,
        help="PPO learning rate (default: 3e-4 when fine-tuning; else [rl] learning_rate "
        "with --config, else 1e-3)",
    )
    parser.add_argument(
        "--value-warmup",
        type=int,
        default=None,
        metavar="ROLLOUTS",
        help="rollouts that train only the fresh value net (default: 2 when fine-tuning, else 0)",
    )
    parser.add_argument(
        "--checkpoint-every",
        type=int,
        default=5_000,
        metavar="SAMPLES",
        help="samples between checkpoints (default 5000; one is also written at the end)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help=f"weights file to write (default: runs/<network>/policy.pt with --network, "
        f"else {_DISTRICT_OUT})",
    )
    parser.add_argument(
        "--progress-bar", action="store_true", help="also show SB3's progress bar (rich)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress line per rollout")
    parser.set_defaults(func=_run)


def initial_weights(args: argparse.Namespace, settings: Settings | None) -> Path | None:
    """The weights ``--from`` names (None: from scratch).

    Raises:
        ConfigError: ``--from`` names a file that does not exist.
    """
    source = args.init
    if source is None:
        source = "shipped" if args.network is not None else "none"
    if source == "none":
        return None
    if source == "defaults":
        from rl.policy import save_weights, zero_actor

        path = output_path(args).parent / "defaults.pt"
        save_weights(zero_actor(), path, "adaptive")
        return path
    if source == "shipped":
        from controller.demo import default_demo_config
        from controller.wiring import policy_path

        return policy_path(settings or load_settings(default_demo_config()))
    path = Path(source)
    if not path.is_file():
        raise ConfigError(f"--from {path}: no such weights file (or give 'shipped' or 'none')")
    return path


def output_path(args: argparse.Namespace) -> Path:
    """Where the weights go: ``--out``, else a run directory named for the network."""
    if args.out is not None:
        return Path(args.out)
    if getattr(args, "mix", None):
        return Path("runs") / "mix" / "policy.pt"
    if args.network is None:
        return _DISTRICT_OUT
    name = Path(args.network).name.removesuffix(".gz").removesuffix(".xml")
    return Path("runs") / name.removesuffix(".net") / "policy.pt"


def evaluate_command(
    *,
    network: Path,
    routes: Sequence[Path],
    detectors: Path | None,
    config: Path | None,
    before: Path | None,
    after: Path,
) -> str:
    """The ``signaltwin evaluate`` command comparing ``before`` (if any) and ``after``.

    Both policies run on the same seeds, in one table (``policy`` and ``policy-b``).
    """
    words = ["signaltwin", "evaluate", "--network", str(network)]
    if detectors is not None:
        words += ["--detectors", str(detectors)]
    words += ["--routes", *(str(r) for r in routes)]
    if config is not None:
        words += ["--config", str(config)]
    words += ["--compare", "fixed,policy"]
    if before is None:
        words += ["--policy", str(after)]
    else:
        words += ["--policy", str(before), "--policy-b", str(after)]
    return shlex.join(words)


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


MIX_HOURS = 2.0
"""Hours of demand built per mix scenario (episodes start anywhere they fit)."""


def mix_configs(names: str, level: str, cache: Path, template: EnvConfig) -> list[EnvConfig]:
    """One environment per scenario of ``names`` (see ``--mix``), like ``template`` otherwise.

    Raises:
        ConfigError: an unknown scenario name.
    """
    from rl.scenarios import build_scenario, scenario, scenarios

    chosen = (
        [s.name for s in scenarios("train")]
        if names == "train"
        else [n.strip() for n in names.split(",") if n.strip()]
    )
    configs: list[EnvConfig] = []
    for name in chosen:
        scenario(name)  # raises ConfigError naming the known ones
        built = build_scenario(name, cache, level=level, seed=0, hours=MIX_HOURS)  # type: ignore[arg-type]
        length_s = template.warmup_s + template.episode_steps * template.interval_s
        last = max(built.begin_s, built.end_s - length_s)
        configs.append(
            replace(
                template,
                net_file=built.net,
                detectors_file=built.detectors,
                route_files=(built.routes,),
                begin_range_s=(built.begin_s, last),
                scale_range=(0.6, 1.5),
            )
        )
    if not configs:
        raise ConfigError("--mix names no scenario")
    return configs


def compute_settings(
    args: argparse.Namespace, settings: Settings | None
) -> tuple[ComputeBackend, ComputeSettings]:
    """The backend and ``[compute]`` section of the run: the options over ``--config``.

    Raises:
        ConfigError: ``--ray-address`` is malformed, or given without the Ray backend.
    """
    compute = settings.compute if settings is not None else ComputeSettings()
    backend: ComputeBackend = args.backend or compute.backend
    address: str | None = args.ray_address
    if address is None:
        return backend, compute
    if backend != "ray":
        raise ConfigError(
            f"--ray-address {address} needs the Ray backend: add --backend ray (or set "
            '[compute] backend = "ray" in --config)'
        )
    try:
        compute = ComputeSettings.model_validate({**compute.model_dump(), "address": address})
    except ValidationError as e:
        reason = "; ".join(str(err["msg"]) for err in e.errors())
        raise ConfigError(f"--ray-address {address!r}: {reason}") from None
    return backend, compute


def _run(args: argparse.Namespace) -> int:
    if args.budget_min is not None and args.budget_min < 0:
        raise ConfigError(f"--budget-min must be >= 0 (0: no limit), got {args.budget_min:g}")
    if args.timesteps is not None and args.timesteps < 1:
        raise ConfigError(f"--timesteps must be >= 1, got {args.timesteps}")

    from rl.env import EnvConfig
    from rl.policy import TorchPolicy
    from rl.train import FINETUNE_LEARNING_RATE, TrainProgress, train
    from simulators.network import ensure_detectors

    timesteps, n_envs, seed, lr = 40_000, 2, 11, 1e-3
    network: Path | None = args.network
    detectors: Path | None = args.detectors
    routes: list[Path] | None = args.routes
    settings: Settings | None = None
    if args.config is not None:
        settings = load_settings(args.config)
        timesteps = settings.rl.total_timesteps
        n_envs = settings.rl.n_envs
        seed = settings.rl.seed
        lr = settings.rl.learning_rate
        network = network or settings.simulation.network
        detectors = detectors or settings.simulation.detectors
    backend, compute = compute_settings(args, settings)
    init = initial_weights(args, settings)
    out = output_path(args)
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
    mode = args.mode
    if mode is None:
        # the initial weights say which plans they were trained for
        mode = TorchPolicy.load(init).mode if init is not None else "actuated"
    budget_min = args.budget_min
    if budget_min is None:
        budget_min = FINETUNE_BUDGET_MIN if init is not None else 0.0
    if args.learning_rate is not None:
        lr = args.learning_rate
    elif init is not None:
        lr = FINETUNE_LEARNING_RATE
    config = EnvConfig(
        net_file=network,
        detectors_file=detectors,
        route_files=tuple(routes),
        episode_steps=args.episode_steps,
        mode=mode,
    )
    if args.routes is not None:
        config = replace(config, begin_range_s=episode_begins(config))
    others: list[EnvConfig] = []
    if args.mix:
        config, *others = mix_configs(args.mix, args.level, out.parent / "scenarios", config)
        network = Path(f"the mix {args.mix!r} ({args.level})")
    total = args.timesteps or timesteps
    what = f"fine-tuning {init}" if init is not None else "training from scratch"
    limit = f"{budget_min:g} min" if budget_min > 0 else "no limit"
    where = f", simulations on the Ray cluster at {compute.address}" if backend == "ray" else ""
    print(
        f"{what} on {network} ({mode} plans): {total} samples, budget {limit}{where}, "
        f"checkpoints in {out.parent / 'checkpoints'}" + (" (resuming)" if args.resume else ""),
        file=sys.stderr,
    )

    def show(progress: TrainProgress) -> None:
        print(f"train: {progress.line()}", file=sys.stderr, flush=True)

    result = train(
        config,
        out,
        timesteps=total,
        n_sims=args.envs or n_envs,
        seed=args.seed if args.seed is not None else seed,
        learning_rate=lr,
        n_steps=args.n_steps,
        progress_bar=args.progress_bar,
        checkpoint_every=args.checkpoint_every,
        init_from=init,
        value_warmup_rollouts=args.value_warmup,
        budget_s=budget_min * 60.0 if budget_min > 0 else None,
        resume=args.resume,
        on_progress=None if args.no_progress else show,
        others=others,
        backend=backend,
        compute=compute,
    )
    print(f"weights: {result.weights}")
    print(f"sha256:  {result.sha256}")
    resumed = f" (resumed at {result.resumed_from})" if args.resume else ""
    print(
        f"samples: {result.timesteps} of {total}{resumed} in {result.wall_s:.0f} s wall "
        f"(run total {result.run_wall_s:.0f} s)"
    )
    if result.final_mean_reward is not None:
        print(f"mean reward per light-interval (last rollout): {result.final_mean_reward:.3f}")
    print(f"checkpoint: {result.checkpoint}")
    if result.stopped_by_budget:
        print(
            f"stopped at the {budget_min:g} min budget: run the same command with --resume "
            "to continue"
        )
    if args.mix:
        print(
            "compare on the scenarios: .venv/bin/python -m bench.control --networks all "
            f"--controllers adaptive,policy --policy {result.weights}"
        )
        return ExitCode.OK
    command = evaluate_command(
        network=network,
        routes=routes,
        detectors=args.detectors,
        config=args.config,
        before=init,
        after=result.weights,
    )
    if init is not None:
        print("compare before (policy) and after (policy-b) on the same seeds:")
    else:
        print("evaluate:")
    print(f"  {command}")
    return ExitCode.OK
