"""``signaltwin evaluate``: closed-loop comparison of controllers on the field emulator.

Each controller runs the field emulator (a SUMO of the network, its own seed,
hidden demand) for ``--hours`` of field time at full speed, once per seed, and
is judged on ground-truth trips (delay = timeLoss + departDelay, counting
vehicles that never departed; waiting time; trip time; NOx; throughput).

``fixed`` (the network's own plans), ``actuated`` (actuated plans, run by the
controllers without recall: rest in green, maximum green against a call),
``adaptive`` (adaptive plans with the default parameters: the controllers' own
second-by-second pressure logic, no policy) and ``max-pressure`` (real-time
phase selection, a reference controller that invents transitions, so not
deployable) run inside the simulation. ``webster`` and ``policy`` deploy plans every interval
through the daemon's own decision: the interval's detector counts -> demand
estimate -> candidate (projected onto the safe set) -> what-if on the twin
against the plan in force (paired seeds) -> gate (wait and NOx thresholds from
the settings) -> applied only when it passes. ``--no-gate`` deploys every
proposal directly (faster; shows the proposer alone).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shutil
import sys
import tempfile
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from configs.errors import ConfigError
from configs.settings import Settings
from configs.settings_file import load_settings
from configs.timing import IntersectionTiming
from controller.exit_codes import ExitCode

logger = logging.getLogger(__name__)

EPILOG = """\
--json prints one JSON object per line, per controller: controller, delay_s,
wait_s, trip_time_s, nox_g, throughput_veh (means over seeds) and, for each,
<metric>_ci95 (half-width of the 95 % confidence interval), plus seeds and
per_seed. Exit codes: 0 done; 2 bad arguments; 3 SUMO failed.
"""

CONTROLLERS = ("fixed", "webster", "actuated", "adaptive", "max-pressure", "policy")
METRICS = ("delay_s", "wait_s", "trip_time_s", "nox_g", "throughput_veh")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``evaluate`` sub-command."""
    parser = subparsers.add_parser(
        "evaluate",
        help="closed-loop comparison: fixed, Webster, actuated, adaptive, max-pressure, the policy",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--network", type=Path, help="SUMO .net.xml (default: the demo district)")
    parser.add_argument("--detectors", type=Path, help="E1 detectors (generated when absent)")
    parser.add_argument(
        "--routes",
        type=Path,
        nargs="+",
        help="the field's demand: SUMO routes file(s) (default: the demo's demand profile, "
        "expanded with each seed)",
    )
    parser.add_argument(
        "--compare",
        default=",".join(CONTROLLERS),
        help="comma-separated controllers (default: %(default)s)",
    )
    parser.add_argument("--policy", type=Path, help="policy weights (default: the shipped one)")
    parser.add_argument(
        "--policy-b",
        type=Path,
        help="a second policy's weights (e.g. fine-tuned), evaluated as 'policy-b' on the same "
        "seeds: before/after in one table",
    )
    parser.add_argument("--hours", type=float, default=1.5, help="field hours per run")
    parser.add_argument("--seeds", type=int, default=5, help="seeds 1..S (default 5)")
    parser.add_argument(
        "--config",
        type=Path,
        help="settings for the safety limits, gate and twin (default: configs/demo.toml)",
    )
    parser.add_argument(
        "--no-gate", action="store_true", help="deploy proposals without the twin and gate"
    )
    parser.add_argument(
        "--begin-s",
        type=float,
        help="field start time (default: the --routes' first departure, else profile-based)",
    )
    parser.add_argument("--json", action="store_true", help="JSON lines instead of a table")
    parser.set_defaults(func=_run)


def _settings(args: argparse.Namespace, state_dir: Path) -> Settings:
    from controller.demo import default_demo_config

    settings = load_settings(args.config or default_demo_config())
    settings = settings.with_state_dir(state_dir)
    network = args.network or settings.simulation.network
    return settings.model_copy(
        update={
            "simulation": settings.simulation.model_copy(
                update={"network": Path(network), "detectors": args.detectors}
            ),
            "video": settings.video.model_copy(update={"enabled": False}),
        }
    )


def gated_decide(
    settings: Settings,
    network: Any,
    propose: Callable[[Mapping[str, Any]], dict[str, IntersectionTiming]],
    label: str,
) -> Callable[[Mapping[str, Any]], dict[str, IntersectionTiming] | None]:
    """A ``decide`` callback that goes through the daemon's twin and gate."""
    from controller.cycle import Observation
    from controller.gate import decide
    from controller.wiring import TwinAdapter

    twin = TwinAdapter(settings, network, {d.id: d.lane_id for d in network.detectors})
    cancel = threading.Event()
    counter = {"intervals": 0, "deployed": 0}

    def decide_now(observations: Mapping[str, Any]) -> dict[str, IntersectionTiming] | None:
        counter["intervals"] += 1
        first = next(iter(observations.values()), None)
        if first is None:
            return None
        current = {t: o.timing for t, o in observations.items()}
        observation = Observation(
            field_time_s=0.0,
            counts=dict(first.counts_veh),
            interval_s=float(first.interval_s),
            active={},
            measurements={},
        )
        try:
            demand, _ = twin.estimate(observation)
            candidate = propose(observations)
            summary = twin.whatif(demand, current, {label: candidate}, cancel)
        except Exception as e:  # noqa: BLE001 - a failed what-if keeps the plan in force
            logger.warning("%s: what-if failed, plan kept: %s", label, e)
            return None
        decision = decide(summary.outcomes, settings.gate)
        if decision.chosen is None:
            return None
        counter["deployed"] += 1
        return candidate

    decide_now.twin = twin  # type: ignore[attr-defined]
    decide_now.counter = counter  # type: ignore[attr-defined]
    return decide_now


def _run(args: argparse.Namespace) -> int:
    from rl import evaluate as ev
    from rl.features import layouts_from_network
    from simulators.netbuild import DemandProfile, expand_demand
    from simulators.network import ensure_detectors, load_network
    from simulators.routes import read_routes_window, traffic_start

    kinds = [k.strip() for k in args.compare.split(",") if k.strip()]
    if args.policy_b is not None and "policy-b" not in kinds:
        kinds.append("policy-b")
    unknown = sorted(set(kinds) - set(CONTROLLERS) - ({"policy-b"} if args.policy_b else set()))
    if unknown or not kinds:
        raise ConfigError(f"--compare: unknown {unknown}; choose from {', '.join(CONTROLLERS)}")
    if args.seeds < 1 or args.hours <= 0:
        raise ConfigError("--seeds must be >= 1 and --hours > 0")
    work = Path(tempfile.mkdtemp(prefix="signaltwin-evaluate-"))
    try:
        settings = _settings(args, work)
        net_path = settings.simulation.network
        detectors = args.detectors or ensure_detectors(net_path, work / "detectors.add.xml")
        network = load_network(net_path, detectors)
        settings = settings.model_copy(
            update={
                "simulation": settings.simulation.model_copy(update={"detectors": Path(detectors)})
            }
        )
        layouts = layouts_from_network(network)
        # the settings' safety section: every light is projected within its own limits
        limits = settings.safety
        begin = 0.0 if args.begin_s is None else float(args.begin_s)
        horizon = args.hours * 3600.0
        routes: Any
        if args.routes:
            routes = list(args.routes)
            # the field starts where the routes' traffic is (a 7:00 file departs at 25200 s)
            begin = float(
                traffic_start(
                    read_routes_window(routes),
                    args.begin_s,
                    horizon,
                    len(network.intersections),
                    "--routes",
                    "--begin-s",
                )
            )
        else:
            profile_path = net_path.with_name(net_path.name.replace(".net.xml", ".demand.json"))
            if not profile_path.is_file():
                raise ConfigError(f"--routes is required: {net_path} has no demand profile")
            profile = DemandProfile.load(profile_path)
            if args.begin_s is None:
                begin = float(max(0, profile.peak_begin_s - 900))

            def routes(seed: int) -> list[Path]:
                out = work / f"field-demand-{seed}.rou.xml"
                if not out.is_file():
                    expand_demand(
                        profile, seed, out, begin_s=int(begin), end_s=int(begin + horizon)
                    )
                return [out]

        results = []
        for kind in kinds:
            decide: Any = None
            start_mode = "fixed"
            if kind == "webster":
                webster = ev.webster_decide(layouts, limits)
                decide = webster if args.no_gate else gated_decide(settings, network, webster, kind)
            elif kind in ("policy", "policy-b"):
                from controller.wiring import load_policy, policy_path

                weights = args.policy_b if kind == "policy-b" else args.policy
                policy_settings = settings.model_copy(
                    update={"rl": settings.rl.model_copy(update={"policy_path": weights})}
                )
                policy = load_policy(policy_settings)
                if policy is None:
                    raise ConfigError(f"no policy at {policy_path(policy_settings)}; give --policy")
                start_mode = ev.policy_start_mode(str(policy.mode), not args.no_gate)
                via_policy = ev.policy_decide(policy, layouts, limits)
                decide = (
                    via_policy
                    if args.no_gate
                    else gated_decide(settings, network, via_policy, kind)
                )
            print(
                f"evaluating {kind} on {args.seeds} seed(s) x {args.hours:g} h ...", file=sys.stderr
            )
            results.append(
                ev.evaluate_controller(
                    network,
                    routes,
                    "policy" if kind == "policy-b" else kind,  # type: ignore[arg-type]
                    seeds=list(range(1, args.seeds + 1)),
                    horizon_s=horizon,
                    begin_s=begin,
                    decide=decide,
                    limits=limits,
                    start_mode=start_mode,  # type: ignore[arg-type]
                )
            )
            results[-1].controller = kind  # policy-b runs as a policy, reported as itself
            twin = getattr(decide, "twin", None)
            if twin is not None:
                twin.close()
                counter = decide.counter
                print(
                    f"  {kind}: the gate let {counter['deployed']} of {counter['intervals']} "
                    "proposals through",
                    file=sys.stderr,
                )
        _print(results, args.json)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return ExitCode.OK


def _print(results: list[Any], as_json: bool) -> None:
    if as_json:
        for r in results:
            summary = r.summary()
            row: dict[str, Any] = {"controller": r.controller}
            for metric in METRICS:
                row[metric] = round(summary[metric][0], 3)
                row[f"{metric}_ci95"] = round(summary[metric][1], 3)
            row["seeds"] = list(r.seeds)
            row["per_seed"] = r.per_seed
            print(json.dumps(row))
        return
    fixed = next((r for r in results if r.controller == "fixed"), None)
    ref = fixed.summary()["delay_s"][0] if fixed else math.nan
    print(
        "| controller | delay s (±95% CI) | vs fixed | wait s | trip time s | NOx g | throughput |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in results:
        s = r.summary()
        d, dci = s["delay_s"]
        change = f"{(d / ref - 1.0) * 100.0:+.1f} %" if ref == ref and ref > 0 else "n/a"
        print(
            f"| {r.controller} | {d:.1f} ± {dci:.1f} | {change} | {s['wait_s'][0]:.1f} | "
            f"{s['trip_time_s'][0]:.1f} | {s['nox_g'][0]:.0f} ± {s['nox_g'][1]:.0f} | "
            f"{s['throughput_veh'][0]:.0f} |"
        )
