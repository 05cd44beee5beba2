"""The safe set of a timing plan: the invariants' checks, and projection onto them.

Three parties check a plan independently with these pure functions: the cycle
when it builds a plan, the signer before it signs, and every controller before it
accepts a plan (the invariants' names are listed in :mod:`configs.timing`).
:func:`project` turns any proposal (from the RL policy or a baseline) into the
nearest plan that satisfies all of them; proposals never bypass it, and
:func:`project_plans` does so for a whole district with each light's own limits.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from configs.errors import ConfigError, SafetyViolation, Violation
from configs.timing import (
    AdaptiveLogic,
    BaseProgram,
    IntersectionTiming,
    LimitsSource,
    Mode,
    PhaseKind,
    PhasePlan,
    SafetyLimits,
    TimingConfiguration,
    classify_state,
    intersection_limits,
)

logger = logging.getLogger(__name__)

__all__ = [
    "Proposal",
    "SafeBounds",
    "build_plan",
    "safe_bounds",
    "admissible_successors",
    "intergreen_after",
    "successor_paths",
    "check_configuration",
    "check_intersection",
    "project",
    "project_plans",
    "require_safe",
]


# --------------------------------------------------------------------------- invariants


def check_intersection(
    tls_id: str,
    plan: IntersectionTiming,
    base: BaseProgram,
    limits: SafetyLimits,
    previous: IntersectionTiming | None = None,
) -> list[Violation]:
    """Every safety invariant broken by ``plan``; an empty list means it is safe."""
    found: list[Violation] = []

    def bad(invariant: str, message: str, phase: int | None = None) -> None:
        found.append(Violation(invariant, tls_id, message, phase))

    states = [p.state for p in plan.phases]
    base_states = [p.state for p in base.phases]
    if states != base_states:
        bad(
            "phase_states",
            f"phase states {states} differ from the approved base program {base_states}",
        )
        return found  # the remaining checks need phases that line up with the base

    for index, (phase, ref) in enumerate(zip(plan.phases, base.phases, strict=True)):
        if ref.kind == "green":
            if phase.duration_s < limits.min_green_s:
                bad("min_green", f"green {phase.duration_s} s < {limits.min_green_s} s", index)
            if ref.serves_pedestrians and phase.duration_s < limits.ped_green_s:
                bad(
                    "pedestrian_green",
                    f"green {phase.duration_s} s < walk + clearance {limits.ped_green_s} s",
                    index,
                )
        elif ref.kind == "yellow":
            if phase.duration_s < limits.min_yellow_s:
                bad("min_yellow", f"yellow {phase.duration_s} s < {limits.min_yellow_s} s", index)
        elif phase.duration_s < limits.min_red_clearance_s:
            bad(
                "min_red_clearance",
                f"red clearance {phase.duration_s} s < {limits.min_red_clearance_s} s",
                index,
            )
        floor = limits.ped_green_s if ref.serves_pedestrians else 0
        _check_actuated(plan.mode, ref.kind, phase, max(limits.min_green_s, floor), index, bad)

    total = sum(p.duration_s for p in plan.phases)
    if plan.cycle_s != total:
        bad("cycle_sum", f"cycle {plan.cycle_s} s != sum of durations {total} s")
    if not limits.min_cycle_s <= plan.cycle_s <= limits.max_cycle_s:
        bad(
            "cycle_range",
            f"cycle {plan.cycle_s} s outside [{limits.min_cycle_s}, {limits.max_cycle_s}] s",
        )
    if not 0 <= plan.offset_s < plan.cycle_s:
        bad("offset_range", f"offset {plan.offset_s} s not in [0, {plan.cycle_s}) s")
    if plan.mode == "adaptive":
        greens = len(base.green_indices)
        if greens < 2:
            bad("adaptive_logic", f"an adaptive plan needs at least two greens, not {greens}")
        elif plan.adaptive is None:
            bad("adaptive_logic", "an adaptive plan needs its adaptive parameters")
        elif len(plan.adaptive.green_weights) != greens:
            bad(
                "adaptive_logic",
                f"{len(plan.adaptive.green_weights)} green weights for {greens} greens",
            )
    elif plan.adaptive is not None:
        bad("adaptive_logic", f"a {plan.mode} plan carries no adaptive parameters")
    if plan.mode != "fixed":
        longest = sum(
            (p.max_s or p.duration_s) if ref.kind == "green" else p.duration_s
            for p, ref in zip(plan.phases, base.phases, strict=True)
        )
        if longest > limits.max_cycle_s:
            bad("actuated_bounds", f"longest actuated cycle {longest} s > {limits.max_cycle_s} s")

    if previous is not None and [p.state for p in previous.phases] == base_states:
        change = abs(plan.cycle_s - previous.cycle_s)
        if change > limits.max_cycle_change_s:
            bad(
                "max_cycle_change",
                f"cycle changes by {change} s > {limits.max_cycle_change_s} s",
            )
        for index in base.green_indices:
            delta = abs(plan.phases[index].duration_s - previous.phases[index].duration_s)
            if delta > limits.max_split_change_s:
                bad(
                    "max_split_change",
                    f"green changes by {delta} s > {limits.max_split_change_s} s",
                    index,
                )
    return found


def _check_actuated(
    mode: Mode,
    kind: PhaseKind,
    phase: PhasePlan,
    min_green_s: int,
    index: int,
    bad: Any,
) -> None:
    """Check an actuated green's bounds; ``min_green_s`` includes walk + clearance.

    An actuated green can gap out at ``min_s``, so ``min_s`` itself must honour
    the pedestrian minimum of a green that serves a crossing, not only the
    nominal ``duration_s``.
    """
    has_bounds = phase.min_s is not None or phase.max_s is not None
    if mode == "fixed" or kind != "green":
        if has_bounds:
            bad("actuated_bounds", "min_s/max_s are only allowed on actuated greens", index)
        return
    if phase.min_s is None or phase.max_s is None:
        bad("actuated_bounds", "actuated greens need min_s and max_s", index)
        return
    if not min_green_s <= phase.min_s <= phase.duration_s <= phase.max_s:
        bad(
            "actuated_bounds",
            f"need {min_green_s} <= min_s ({phase.min_s}) <= duration "
            f"({phase.duration_s}) <= max_s ({phase.max_s})",
            index,
        )


def check_configuration(
    config: TimingConfiguration,
    bases: Mapping[str, BaseProgram],
    limits: SafetyLimits | LimitsSource,
    previous: Mapping[str, IntersectionTiming] | None = None,
) -> list[Violation]:
    """Every safety invariant broken anywhere in ``config``.

    An intersection without an approved base program is itself a violation
    (``phase_states``): nothing is deployed where the states cannot be checked.
    """
    found: list[Violation] = []
    for tls_id, plan in sorted(config.intersections.items()):
        base = bases.get(tls_id)
        if base is None:
            found.append(Violation("phase_states", tls_id, "no approved base program"))
            continue
        prior = previous.get(tls_id) if previous is not None else None
        found.extend(
            check_intersection(tls_id, plan, base, intersection_limits(limits, tls_id), prior)
        )
    return found


def require_safe(
    config: TimingConfiguration,
    bases: Mapping[str, BaseProgram],
    limits: SafetyLimits | LimitsSource,
    previous: Mapping[str, IntersectionTiming] | None = None,
) -> None:
    """Raise :class:`SafetyViolation` if ``config`` breaks any invariant."""
    found = check_configuration(config, bases, limits, previous)
    if found:
        raise SafetyViolation(found)


# --------------------------------------------------------------------------- adaptive successors


def _green_signal(signal: str) -> bool:
    return signal in "Gg"


def intergreen_after(states: Sequence[str], green: int) -> tuple[int, ...]:
    """The transition phases (yellow, all-red) between ``green`` and the next green.

    In the program's cyclic order; empty when the next phase is itself a green.
    """
    n = len(states)
    out: list[int] = []
    j = (green + 1) % n
    while j != green and classify_state(states[j]) != "green":
        out.append(j)
        j = (j + 1) % n
    return tuple(out)


def _safe_chained_step(before: str, after: str) -> bool:
    """Whether ``before`` -> ``after`` is safe where the base program never shows it.

    No signal starts a green on such a step (greens start only where the base
    program starts them, or on the step into the target green), no green ends
    without its yellow (green -> red), no yellow turns green, and only a green
    turns yellow (never a red).
    """
    for a, b in zip(before, after, strict=True):
        if b in "yY" and not (_green_signal(a) or a in "yY"):
            return False
        if _green_signal(b) and not _green_signal(a):
            return False
        if _green_signal(a) and b in "rRsO":
            return False
        if a in "yY" and _green_signal(b):
            return False
    return True


def _safe_into_green(last: str, target: str) -> bool:
    """Whether the end of a transition ``last`` may be followed by the green ``target``.

    Every signal still green or red-yellow at the end of the transition is green
    in the target, and no signal yellow at its end is green in the target.
    """
    return all(
        (_green_signal(t) if a in "GgUu" else True) and not (a in "yY" and _green_signal(t))
        for a, t in zip(last, target, strict=True)
    )


def successor_paths(states: Sequence[str], green: int, skip: bool) -> dict[int, tuple[int, ...]]:
    """The greens an adaptive controller may show after ``green``, with the phases between.

    A green always ends through the base program's own transition after it
    (:func:`intergreen_after`), so every signal that loses its green sees that
    transition's yellow and all-red. The base successor (the next green in
    program order) is always reachable that way. With ``skip``, a green ``k`` is
    also reachable when the end of the transition leads into it safely (every
    signal still green or red-yellow is green in ``k``; no yellow signal turns
    green), or by **skipping** greens in between: a skipped green is not shown,
    but its own transition is, right after the transition before it, on a step
    that starts no green, ends no green without yellow, turns no yellow green and
    no red yellow (so a permissive turn still green after the first transition gets its own
    yellow from the skipped phase's transition). Without a transition after a
    green (green directly followed by green) the same rules apply to the green's
    own state. Every phase shown is a phase of the base program.

    Returns:
        Target green -> the phase indices shown before it (transitions, in order);
        the base successor first, then the others in order of fewest skipped
        greens and program order.
    """
    n = len(states)
    greens = [i for i in range(n) if classify_state(states[i]) == "green"]
    if green not in greens or len(greens) < 2:
        return {}
    transition = intergreen_after(states, green)
    after = (transition[-1] if transition else green) + 1
    successor = after % n
    while successor not in greens:
        successor = (successor + 1) % n
    paths: dict[int, tuple[int, ...]] = {successor: transition}
    if not skip:
        return paths
    # breadth-first over chains of skipped greens, each adding that green's transition
    frontier: list[tuple[str, tuple[int, ...]]] = [
        (states[transition[-1]] if transition else states[green], transition)
    ]
    for _ in range(len(greens)):
        following: list[tuple[str, tuple[int, ...]]] = []
        for last, shown in frontier:
            for k in sorted(greens, key=lambda g: (g - successor) % n):
                if k == green:
                    continue
                if k not in paths and _safe_into_green(last, states[k]):
                    paths[k] = shown
                between = intergreen_after(states, k)
                if between and _safe_chained_step(last, states[between[0]]):
                    chained = shown + between
                    if len(set(chained)) == len(chained):  # never the same transition twice
                        following.append((states[between[-1]], chained))
        frontier = following
        if not frontier:
            break
    return paths


def admissible_successors(states: Sequence[str], green: int, skip: bool) -> tuple[int, ...]:
    """The greens an adaptive controller may show after ``green`` (:func:`successor_paths`).

    Returns:
        Phase indices, the base successor first.
    """
    return tuple(successor_paths(states, green, skip))


# --------------------------------------------------------------------------- projection


@dataclass(frozen=True)
class Proposal:
    """What a policy or baseline would like: greens, cycle and offset (any reals).

    ``green_s`` has one entry per green phase of the base program, in order.
    ``cycle_s=None`` keeps the sum of the proposed greens and fixed intervals;
    ``offset_s=None`` keeps the previous (or base) offset. ``adaptive`` are the
    real-time parameters of an adaptive plan (``None``: the defaults); other
    modes ignore them.
    """

    green_s: Sequence[float]
    cycle_s: float | None = None
    offset_s: float | None = None
    adaptive: AdaptiveLogic | None = None


def project(
    tls_id: str,
    proposal: Proposal,
    base: BaseProgram,
    limits: SafetyLimits,
    previous: IntersectionTiming | None = None,
) -> IntersectionTiming:
    """Return the plan nearest to ``proposal`` that satisfies every invariant.

    Yellow and red clearance intervals keep their base durations, raised to the
    minimums. Greens are bounded below by the minimum (pedestrian) green and, with
    a ``previous`` plan, to within ``max_split_change_s`` of it; the cycle is
    clamped to the range and the allowed change; the greens are then the
    least-squares nearest split of the available green time (water-filling),
    rounded to whole seconds without leaving their bounds.

    Raises:
        SafetyViolation: only when the limits themselves leave no safe plan
            (e.g. minimum greens that cannot fit within ``max_cycle_s``).
    """
    greens = base.green_indices
    if len(proposal.green_s) != len(greens):
        raise ConfigError(
            f"{tls_id}: proposal has {len(proposal.green_s)} greens, "
            f"the base program has {len(greens)}"
        )
    if not all(math.isfinite(g) for g in proposal.green_s):
        raise ConfigError(f"{tls_id}: proposal greens must be finite numbers")
    bounds = safe_bounds(tls_id, base, limits, previous)
    wanted = [max(0.0, float(g)) for g in proposal.green_s]
    target = proposal.cycle_s if proposal.cycle_s is not None else bounds.fixed_total + sum(wanted)
    if not math.isfinite(target):
        raise ConfigError(f"{tls_id}: proposal cycle must be a finite number")
    cycle = min(max(round(target), bounds.cycle_lo), bounds.cycle_hi)
    total = cycle - bounds.fixed_total
    split = _water_fill(wanted, [float(v) for v in bounds.lo], [float(v) for v in bounds.hi], total)
    green_s = _round_preserving_sum(split, list(bounds.lo), list(bounds.hi), total)
    return build_plan(
        tls_id, base, limits, bounds, cycle, green_s, proposal.offset_s, proposal.adaptive
    )


@dataclass(frozen=True)
class SafeBounds:
    """What the safe set of one intersection allows, whatever is proposed.

    Attributes:
        fixed: phase index -> duration of each yellow and red clearance interval.
        fixed_total: their sum (s).
        lo: per green phase, the shortest green allowed (s).
        hi: per green phase, the longest green allowed (s).
        cycle_lo: the shortest cycle allowed (s).
        cycle_hi: the longest cycle allowed (s).
        prior: the plan in force when it bounds the change (same phase states), else None.
    """

    fixed: Mapping[int, int]
    fixed_total: int
    lo: tuple[int, ...]
    hi: tuple[int, ...]
    cycle_lo: int
    cycle_hi: int
    prior: IntersectionTiming | None


def safe_bounds(
    tls_id: str,
    base: BaseProgram,
    limits: SafetyLimits,
    previous: IntersectionTiming | None = None,
) -> SafeBounds:
    """The bounds :func:`project` projects onto (they depend on no proposal).

    Raises:
        SafetyViolation: the limits themselves leave no safe plan.
    """
    greens = base.green_indices
    prior = previous
    if prior is not None and [p.state for p in prior.phases] != [p.state for p in base.phases]:
        prior = None

    fixed: dict[int, int] = {}
    for index, phase in enumerate(base.phases):
        if phase.kind == "yellow":
            fixed[index] = max(phase.duration_s, limits.min_yellow_s)
        elif phase.kind == "red":
            fixed[index] = max(phase.duration_s, limits.min_red_clearance_s, 1)
    fixed_total = sum(fixed.values())

    lo: list[int] = []
    hi: list[int] = []
    for index in greens:
        floor = limits.min_green_s
        if base.phases[index].serves_pedestrians:
            floor = max(floor, limits.ped_green_s)
        top = limits.max_cycle_s  # never binding beyond the cycle itself
        if prior is not None:
            before = prior.phases[index].duration_s
            floor = max(floor, before - limits.max_split_change_s)
            top = min(top, before + limits.max_split_change_s)
        lo.append(floor)
        hi.append(top)

    cycle_lo = max(limits.min_cycle_s, fixed_total + sum(lo))
    cycle_hi = min(limits.max_cycle_s, fixed_total + sum(hi))
    if prior is not None:
        cycle_lo = max(cycle_lo, prior.cycle_s - limits.max_cycle_change_s)
        cycle_hi = min(cycle_hi, prior.cycle_s + limits.max_cycle_change_s)
    if cycle_lo > cycle_hi or any(a > b for a, b in zip(lo, hi, strict=True)):
        raise SafetyViolation(
            [
                Violation(
                    "cycle_range",
                    tls_id,
                    f"no safe cycle: needs at least {cycle_lo} s but at most {cycle_hi} s "
                    "is allowed; check min greens, fixed intervals and the cycle limits",
                )
            ]
        )

    return SafeBounds(fixed, fixed_total, tuple(lo), tuple(hi), cycle_lo, cycle_hi, prior)


def build_plan(
    tls_id: str,
    base: BaseProgram,
    limits: SafetyLimits,
    bounds: SafeBounds,
    cycle: int,
    green_s: Sequence[int],
    offset_s: float | None,
    adaptive: AdaptiveLogic | None = None,
) -> IntersectionTiming:
    """The plan of a projected cycle and greens, checked against every invariant.

    Raises:
        SafetyViolation: the plan breaks an invariant (a bug in the projection).
    """
    greens = base.green_indices
    prior = bounds.prior
    fixed = bounds.fixed
    if offset_s is not None and math.isfinite(offset_s):
        offset = round(offset_s) % cycle
    else:
        offset = (prior.offset_s if prior is not None else base.offset_s) % cycle

    # actuated greens may extend into the headroom below max_cycle_s, shared evenly
    extension = (limits.max_cycle_s - cycle) // max(1, len(greens))
    phases: list[PhasePlan] = []
    green_iter = iter(green_s)
    for index, phase in enumerate(base.phases):
        if phase.kind == "green":
            duration = next(green_iter)
            if base.mode != "fixed":
                wanted_min = max(phase.min_s or limits.min_green_s, limits.min_green_s)
                if phase.serves_pedestrians:  # a gap-out at min_s must still clear the walk
                    wanted_min = max(wanted_min, limits.ped_green_s)
                phases.append(
                    PhasePlan(
                        state=phase.state,
                        duration_s=duration,
                        min_s=min(wanted_min, duration),
                        max_s=duration + extension,
                    )
                )
            else:
                phases.append(PhasePlan(state=phase.state, duration_s=duration))
        else:
            phases.append(PhasePlan(state=phase.state, duration_s=fixed[index]))
    logic = None
    if base.mode == "adaptive":
        logic = adaptive or AdaptiveLogic.default(len(greens))
        if len(logic.green_weights) != len(greens):
            raise ConfigError(
                f"{tls_id}: proposal has {len(logic.green_weights)} green weights, "
                f"the base program has {len(greens)} greens"
            )
    plan = IntersectionTiming(
        mode=base.mode, cycle_s=cycle, offset_s=offset, phases=tuple(phases), adaptive=logic
    )
    found = check_intersection(tls_id, plan, base, limits, prior)
    if found:  # a bug in the projection must never become an unsafe plan
        raise SafetyViolation(found)
    return plan


def project_plans(
    proposals: Mapping[str, Proposal],
    bases: Mapping[str, BaseProgram],
    limits: SafetyLimits | LimitsSource,
    current: Mapping[str, IntersectionTiming] | None = None,
    *,
    skip_unsafe: bool = False,
) -> dict[str, IntersectionTiming]:
    """Project a proposal per intersection onto its safe set (see :func:`project`).

    The one way proposals for several intersections become plans: each
    intersection gets its own limits (``limits.limits_for(tls_id)`` when given
    the settings' safety section, so per-intersection overrides apply) and is
    bounded by the plan it runs now, when ``current`` has one.

    Args:
        proposals: one proposal per intersection.
        bases: the approved base programs.
        limits: the limits (the settings' safety section applies its overrides).
        current: the plans in force.
        skip_unsafe: leave out (with a warning, once per light) the intersections
            whose limits admit no safe plan at all (e.g. ten minimum greens that
            do not fit the maximum cycle), so that they keep the plan they run;
            without it such an intersection raises.

    Raises:
        ConfigError: a proposal names an intersection without a base program.
        SafetyViolation: an intersection's limits admit no plan (without ``skip_unsafe``).
    """
    previous = current or {}
    plans: dict[str, IntersectionTiming] = {}
    for tls_id, proposal in proposals.items():
        base = bases.get(tls_id)
        if base is None:
            raise ConfigError(f"{tls_id}: proposal for an intersection without a base program")
        try:
            plans[tls_id] = project(
                tls_id, proposal, base, intersection_limits(limits, tls_id), previous.get(tls_id)
            )
        except SafetyViolation as e:
            if not skip_unsafe:
                raise
            if tls_id not in _WARNED:
                _WARNED.add(tls_id)
                logger.warning(
                    "%s keeps the plan it runs: its limits admit no safe plan (%s); give it "
                    "its own limits in [safety.intersections.%s]",
                    tls_id,
                    e,
                    tls_id,
                )
    return plans


_WARNED: set[str] = set()


def _water_fill(want: list[float], lo: list[float], hi: list[float], total: float) -> list[float]:
    """Least-squares nearest ``x`` to ``want`` with ``lo <= x <= hi`` and ``sum(x) == total``.

    The solution is ``clip(want + shift, lo, hi)`` for the shift at which the sum
    reaches ``total``; that sum is piecewise linear and non-decreasing in the
    shift, with breakpoints where an entry meets a bound, so the shift is found
    exactly by interpolating between the two breakpoints that straddle ``total``.
    """

    def filled(shift: float) -> list[float]:
        return [min(max(w + shift, a), b) for w, a, b in zip(want, lo, hi, strict=True)]

    points = sorted(
        {a - w for w, a in zip(want, lo, strict=True)}
        | {b - w for w, b in zip(want, hi, strict=True)}
    )
    before: tuple[float, float] | None = None
    for point in points:
        reached = sum(filled(point))
        if reached >= total:
            if before is None or reached == before[1]:
                return filled(point)
            shift = before[0] + (total - before[1]) * (point - before[0]) / (reached - before[1])
            return filled(shift)
        before = (point, reached)
    return filled(points[-1]) if points else []


def _round_preserving_sum(x: list[float], lo: list[int], hi: list[int], total: int) -> list[int]:
    """Round to integers within bounds so that they sum to ``total`` (largest remainder)."""
    out = [min(max(math.floor(v), a), b) for v, a, b in zip(x, lo, hi, strict=True)]
    remainder = total - sum(out)
    order = sorted(range(len(x)), key=lambda i: x[i] - math.floor(x[i]), reverse=True)
    while remainder != 0:
        moved = False
        for i in order:
            if remainder > 0 and out[i] < hi[i]:
                out[i] += 1
                remainder -= 1
                moved = True
            elif remainder < 0 and out[i] > lo[i]:
                out[i] -= 1
                remainder += 1
                moved = True
            if remainder == 0:
                break
        if not moved:
            break
    return out
