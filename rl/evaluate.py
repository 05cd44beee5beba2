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
every light to an actuated plan once (run without recall), ``adaptive`` switches every
light once to an adaptive plan with the default real-time parameters (the controller's
own pressure logic, :mod:`simulators.adaptive`), and ``max-pressure`` selects phases
in real time through a per-step hook on the field.

Every plan is made within its own light's limits: ``limits`` may be the
settings' safety section, whose per-intersection overrides then apply
(:func:`configs.safety.project_plans`).

The command line is ``signaltwin evaluate`` (:mod:`controller.commands.evaluate`).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from configs.safety import project_plans
from configs.timing import BaseProgram, IntersectionTiming, LimitsSource, SafetyLimits
from rl.baselines import (
    MaxPressureController,
    PlanMode,
    actuated_plans,
    adaptive_plans,
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
from simulators.network import NetworkModel
from simulators.stats import t_interval

__all__ = [
    "CONTROLLERS",
    "ControllerKind",
    "Decide",
    "EvaluationResult",
    "evaluate_controller",
    "mean_ci",
    "policy_decide",
    "policy_start_mode",
    "run_once",
    "start_plans",
    "webster_decide",
]

logger = logging.getLogger(__name__)

ControllerKind = Literal["fixed", "webster", "actuated", "adaptive", "max-pressure", "policy"]
CONTROLLERS: tuple[ControllerKind, ...] = (
    "fixed",
    "webster",
    "actuated",
    "adaptive",
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


def _running(obs: Mapping[str, IntersectionObservation]) -> dict[str, IntersectionTiming]:
    return {t: o.timing for t, o in obs.items()}


def webster_decide(
    layouts: Mapping[str, IntersectionLayout],
    limits: SafetyLimits | LimitsSource,
) -> Callable[[Mapping[str, IntersectionObservation]], dict[str, IntersectionTiming]]:
    """A ``decide`` that deploys Webster's fixed-time plan everywhere.

    Each plan is projected onto its light's safe set (``limits.limits_for`` when
    ``limits`` is the settings' safety section), bounded by the plan in force.
    """
    bases = {t: as_mode(lay.base, "fixed") for t, lay in layouts.items()}

    def decide(obs: Mapping[str, IntersectionObservation]) -> dict[str, IntersectionTiming]:
        proposals = {t: webster_proposal(o) for t, o in obs.items()}
        return project_plans(proposals, bases, limits, _running(obs), skip_unsafe=True)

    return decide


def policy_decide(
    policy: object,
    layouts: Mapping[str, IntersectionLayout],
    limits: SafetyLimits | LimitsSource,
) -> Callable[[Mapping[str, IntersectionObservation]], dict[str, IntersectionTiming]]:
    """A ``decide`` that deploys the policy's proposals, projected as :func:`webster_decide`'s."""
    from rl.policy import Policy

    if not isinstance(policy, Policy):
        raise TypeError("policy must implement rl.policy.Policy")
    # an actuated policy's proposals are projected onto the base switched to actuated
    bases = {t: as_mode(lay.base, policy.mode) for t, lay in layouts.items()}

    def decide(obs: Mapping[str, IntersectionObservation]) -> dict[str, IntersectionTiming]:
        return project_plans(policy.propose(obs), bases, limits, _running(obs), skip_unsafe=True)

    return decide


def policy_start_mode(policy_mode: str, gated: bool) -> PlanMode:
    """The plans the lights run before a policy's first decision.

    Ungated, the lights start on the policy's own mode (an adaptive policy alone:
    adaptive plans from the first second). Through the gate an adaptive policy
    starts from what a bureau runs before signaltwin, actuated control, so the
    gate itself decides whether switching to the controller's adaptive logic
    pays (the 12 % margin against the plans in force).
    """
    if policy_mode == "adaptive":
        return "actuated" if gated else "adaptive"
    return "actuated" if policy_mode == "actuated" else "fixed"


def start_plans(
    bases: Mapping[str, BaseProgram],
    controller: ControllerKind,
    limits: SafetyLimits | LimitsSource,
    start_mode: PlanMode = "fixed",
) -> tuple[dict[str, IntersectionTiming], bool]:
    """The plans the lights run when a :func:`run_once` begins.

    Returns:
        (plans, whether they differ from the base programs and must be applied).
    """
    if controller == "adaptive" or start_mode == "adaptive":
        return adaptive_plans(bases, limits), True
    if controller == "actuated" or start_mode == "actuated":
        return actuated_plans(bases, limits), True
    return fixed_plans(bases), False


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
    limits: SafetyLimits | LimitsSource | None = None,
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
    ``actuated`` controller always does. ``limits`` may be the settings' safety
    section (per-intersection overrides apply).
    """
    source: SafetyLimits | LimitsSource = limits if limits is not None else SafetyLimits()
    layouts = layouts_from_network(network)
    if controller in ("webster", "policy") and decide is None:
        raise ValueError(f"controller {controller!r} needs a decide callback")
    session = FieldSession(
        network, route_files, seed=seed, begin_s=begin_s, interval_s=interval_s, scale=scale
    )
    try:
        current, changed = start_plans(network.base_programs(), controller, source, start_mode)
        hook = None
        if changed:
            for tls_id, plan in current.items():
                session.apply(tls_id, plan)
        elif controller == "max-pressure":
            hook = MaxPressureController(network, source)
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
    limits: SafetyLimits | LimitsSource | None = None,
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
