"""Closed-loop evaluation of one controller type on the field emulator.

:func:`evaluate_controller` runs a controller on the field emulator
(:class:`simulators.field.FieldEmulator`, through :class:`rl.field_session.FieldSession`)
for a horizon of field time at full speed over several seeds, and returns
ground-truth trip statistics (the field's tripinfo summary) per seed with means
and 95 % confidence intervals. The field runs as in the demo: no teleporting,
detector counts as the controllers report them (each vehicle once).

Plan deployers (``webster``, ``policy``) are asked at every plan-interval
boundary (multiples of ``interval_s`` in field time) through a
``decide(observations) -> plans | None`` callback, which the daemon can replace
by its own gate logic; ``fixed`` keeps the base plans, ``actuated`` switches
every light to an actuated plan once (run without recall), and ``max-pressure`` selects phases
in real time through a per-step hook on the field.

Run ``python -m rl.evaluate --help`` for the command line.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from configs.timing import IntersectionTiming, SafetyLimits, project
from rl.baselines import (
    MaxPressureController,
    PlanMode,
    actuated_plan,
    as_mode,
    fixed_plans,
    webster_proposal,
)
from rl.features import (
    IntersectionLayout,
    IntersectionObservation,
    build_observations,
    layouts_from_network,
)
from rl.field_session import FieldSession, TripStats
from simulators.netbuild import DemandProfile, expand_demand
from simulators.network import NetworkModel, ensure_detectors, load_network
from simulators.stats import t_interval

__all__ = [
    "CONTROLLERS",
    "ControllerKind",
    "Decide",
    "EvaluationResult",
    "evaluate_controller",
    "main",
    "mean_ci",
    "policy_decide",
    "run_once",
    "webster_decide",
]

logger = logging.getLogger(__name__)

ControllerKind = Literal["fixed", "webster", "actuated", "max-pressure", "policy"]
CONTROLLERS: tuple[ControllerKind, ...] = (
    "fixed",
    "webster",
    "actuated",
    "max-pressure",
    "policy",
)
Decide = Callable[[Mapping[str, IntersectionObservation]], Mapping[str, IntersectionTiming] | None]
"""Given each light's observation, the plans to deploy now (None = keep the current)."""

_METRICS = ("delay_s", "wait_s", "trip_time_s", "nox_g", "throughput_veh")


@dataclass
class EvaluationResult:
    """Per-seed trip statistics and their means with 95 % confidence intervals."""

    controller: str
    seeds: tuple[int, ...]
    per_seed: list[dict[str, float]] = field(default_factory=list)
    wall_s: float = 0.0

    def summary(self) -> dict[str, tuple[float, float]]:
        """Metric -> (mean, half-width of the 95 % confidence interval)."""
        return {m: mean_ci([r[m] for r in self.per_seed]) for m in _METRICS}

    def to_dict(self) -> dict[str, object]:
        """Plain data."""
        return {
            "controller": self.controller,
            "seeds": list(self.seeds),
            "per_seed": self.per_seed,
            "mean": {m: v[0] for m, v in self.summary().items()},
            "ci95": {m: v[1] for m, v in self.summary().items()},
            "wall_s": self.wall_s,
        }


def mean_ci(values: Sequence[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95 % Student-t confidence interval (0 for n < 2)."""
    if not values:
        return math.nan, math.nan
    mean, _, high = t_interval(values, 0.95)
    return mean, high - mean


def webster_decide(
    layouts: Mapping[str, IntersectionLayout],
    limits: SafetyLimits,
) -> Callable[[Mapping[str, IntersectionObservation]], dict[str, IntersectionTiming]]:
    """A ``decide`` that deploys Webster's plan everywhere (projected onto the safe set)."""

    def decide(obs: Mapping[str, IntersectionObservation]) -> dict[str, IntersectionTiming]:
        return {
            t: project(t, webster_proposal(o), layouts[t].base, limits, o.timing)
            for t, o in obs.items()
        }

    return decide


def policy_decide(
    policy: object,
    layouts: Mapping[str, IntersectionLayout],
    limits: SafetyLimits,
) -> Callable[[Mapping[str, IntersectionObservation]], dict[str, IntersectionTiming]]:
    """A ``decide`` that deploys the policy's proposals (projected onto the safe set)."""
    from rl.policy import Policy

    if not isinstance(policy, Policy):
        raise TypeError("policy must implement rl.policy.Policy")
    # an actuated policy's proposals are projected onto the base switched to actuated
    bases = {t: as_mode(lay.base, policy.mode) for t, lay in layouts.items()}

    def decide(obs: Mapping[str, IntersectionObservation]) -> dict[str, IntersectionTiming]:
        proposals = policy.propose(obs)
        return {t: project(t, p, bases[t], limits, obs[t].timing) for t, p in proposals.items()}

    return decide


def run_once(
    network: NetworkModel,
    route_files: Sequence[Path],
    controller: ControllerKind,
    *,
    seed: int,
    horizon_s: float,
    begin_s: float = 0.0,
    interval_s: float = 240.0,
    decide: Decide | None = None,
    limits: SafetyLimits | None = None,
    scale: float = 1.0,
    start_mode: PlanMode = "fixed",
) -> TripStats:
    """Run one controller closed-loop for ``horizon_s`` on one seed; return trip stats.

    The run is a :class:`~rl.field_session.FieldSession` (the field emulator,
    never teleporting) from ``begin_s`` to ``begin_s + horizon_s``. Plan
    deployers decide at every multiple of ``interval_s`` in field time from the
    interval's detector counts and occupancy (the first interval is shorter
    when ``begin_s`` is not on that grid); the last stretch, after which nothing
    is decided, is not measured.

    ``start_mode="actuated"`` starts every light on its base program switched to
    actuated control (what an actuated policy was trained from); the
    ``actuated`` controller always does.
    """
    limits = limits or SafetyLimits()
    layouts = layouts_from_network(network)
    if controller in ("webster", "policy") and decide is None:
        raise ValueError(f"controller {controller!r} needs a decide callback")
    session = FieldSession(
        network, route_files, seed=seed, begin_s=begin_s, interval_s=interval_s, scale=scale
    )
    try:
        current = fixed_plans(network.base_programs())
        hook = None
        if controller == "actuated" or start_mode == "actuated":
            for tls_id, base in network.base_programs().items():
                current[tls_id] = actuated_plan(tls_id, base, limits)
                session.apply(tls_id, current[tls_id])
        elif controller == "max-pressure":
            hook = MaxPressureController(network, limits)
        end = begin_s + horizon_s
        deciding = decide is not None and controller in ("webster", "policy")
        while deciding and session.next_boundary_s() < end - 1e-6:
            measured = session.run_until(session.next_boundary_s(), hook)
            obs = build_observations(
                layouts, measured.counts_veh, measured.interval_s, current, measured.occupancy
            )
            plans = decide(obs) if decide is not None else None
            for tls_id, plan in (plans or {}).items():
                session.apply(tls_id, plan)
                current[tls_id] = plan
        session.advance(end, hook)
        return session.finish()
    finally:
        session.close()


RouteSource = Sequence[Path] | Callable[[int], Sequence[Path]]
"""Fixed route files, or a function giving each seed its own demand."""


def evaluate_controller(
    network: NetworkModel,
    route_files: RouteSource,
    controller: ControllerKind,
    *,
    seeds: Sequence[int],
    horizon_s: float,
    begin_s: float = 0.0,
    interval_s: float = 240.0,
    decide: Decide | None = None,
    limits: SafetyLimits | None = None,
    start_mode: PlanMode = "fixed",
) -> EvaluationResult:
    """Run :func:`run_once` for every seed and collect the results."""
    result = EvaluationResult(controller=controller, seeds=tuple(seeds))
    started = time.monotonic()
    for seed in seeds:
        routes = route_files(seed) if callable(route_files) else route_files
        stats = run_once(
            network,
            routes,
            controller,
            seed=seed,
            horizon_s=horizon_s,
            begin_s=begin_s,
            interval_s=interval_s,
            decide=decide,
            limits=limits,
            start_mode=start_mode,
        )
        result.per_seed.append(stats.as_dict())
        logger.info("%s seed %d: delay %.1f s", controller, seed, stats.delay_s)
    result.wall_s = time.monotonic() - started
    return result


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m rl.evaluate",
        description="Closed-loop evaluation of controllers on a SUMO network (ground-truth trips).",
    )
    p.add_argument("--network", type=Path, default=Path("configs/district/district.net.xml"))
    p.add_argument(
        "--detectors", type=Path, default=None, help="E1 detector file (generated if absent)"
    )
    p.add_argument(
        "--routes",
        type=Path,
        nargs="+",
        default=None,
        help="route files (same for every seed); default: --demand-profile",
    )
    p.add_argument(
        "--demand-profile",
        type=Path,
        default=Path("configs/district/district.demand.json"),
        help="demand profile expanded with each seed (hidden demand, as in the field)",
    )
    p.add_argument("--controllers", nargs="+", default=list(CONTROLLERS), choices=CONTROLLERS)
    p.add_argument("--policy", type=Path, default=Path("rl/policies/district.pt"))
    p.add_argument("--seeds", type=int, default=5, help="number of seeds (1..N)")
    p.add_argument("--hours", type=float, default=1.5)
    p.add_argument(
        "--begin",
        type=float,
        default=None,
        help="simulation start time (s); default: 15 min before the profile's peak, else 0",
    )
    p.add_argument("--interval", type=float, default=240.0)
    p.add_argument("--json", type=Path, default=None, help="write the full results here")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Evaluate the chosen controllers and print a Markdown table."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    # the field logs every plan it applies; the table is what this command reports
    logging.getLogger("simulators.field").setLevel(logging.WARNING)
    detectors = args.detectors
    if detectors is None:
        sibling = args.network.with_name(args.network.name.replace(".net.xml", ".det.add.xml"))
        detectors = ensure_detectors(args.network, sibling)
    network = load_network(args.network, detectors)
    layouts = layouts_from_network(network)
    limits = SafetyLimits()
    seeds = list(range(1, args.seeds + 1))
    begin = 0.0 if args.begin is None else float(args.begin)
    horizon = args.hours * 3600.0
    workdir = Path(tempfile.mkdtemp(prefix="signaltwin-eval-"))
    routes: RouteSource
    if args.routes is not None:
        routes = list(args.routes)
    else:
        profile = DemandProfile.load(args.demand_profile)
        if args.begin is None:
            begin = float(max(0, profile.peak_begin_s - 900))

        def routes(seed: int) -> list[Path]:
            out = workdir / f"demand-{seed}.rou.xml"
            if not out.is_file():
                expand_demand(profile, seed, out, begin_s=int(begin), end_s=int(begin + horizon))
            return [out]

    results: list[EvaluationResult] = []
    for kind in args.controllers:
        decide: Decide | None = None
        start_mode: PlanMode = "fixed"
        if kind == "webster":
            decide = webster_decide(layouts, limits)
        elif kind == "policy":
            from rl.policy import TorchPolicy

            policy = TorchPolicy.load(args.policy)
            decide = policy_decide(policy, layouts, limits)
            start_mode = policy.mode
        results.append(
            evaluate_controller(
                network,
                routes,
                kind,
                seeds=seeds,
                horizon_s=horizon,
                begin_s=begin,
                interval_s=args.interval,
                decide=decide,
                limits=limits,
                start_mode=start_mode,
            )
        )
    fixed = next((r for r in results if r.controller == "fixed"), None)
    ref = fixed.summary()["delay_s"][0] if fixed else math.nan
    out = sys.stdout
    out.write(
        "| controller | delay_s (±95% CI) | vs fixed | wait_s | trip_time_s | NOx g "
        "| throughput |\n"
    )
    out.write("|---|---|---|---|---|---|---|\n")
    for r in results:
        s = r.summary()
        d, dci = s["delay_s"]
        change = (d / ref - 1.0) * 100.0 if ref == ref and ref > 0 else math.nan
        out.write(
            f"| {r.controller} | {d:.1f} ± {dci:.1f} | {change:+.1f} % | {s['wait_s'][0]:.1f} | "
            f"{s['trip_time_s'][0]:.1f} | {s['nox_g'][0]:.0f} ± {s['nox_g'][1]:.0f} | "
            f"{s['throughput_veh'][0]:.0f} |\n"
        )
    if args.json is not None:
        args.json.write_text(json.dumps([r.to_dict() for r in results], indent=1) + "\n")
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
