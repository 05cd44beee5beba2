"""Reference controllers: fixed plans, Webster, actuated plans and max-pressure.

Plan deployers (fixed, Webster, actuated) produce :class:`configs.safety.Proposal`
objects or plans made by :func:`configs.safety.project`, exactly like the policy.
Max-pressure is different: a real-time phase selector that runs inside the
simulation every few seconds (a reference for what per-second control can do,
not something the daemon deploys). It switches through the base program's own
yellow and all-red durations and holds every green at least the minimum green.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from configs.errors import ConfigError, SafetyViolation
from configs.safety import Proposal, project, project_plans
from configs.timing import (
    BasePhase,
    BaseProgram,
    IntersectionTiming,
    LimitsSource,
    SafetyLimits,
    intersection_limits,
)
from rl.features import SATURATION_VPH_PER_LANE, IntersectionObservation
from rl.field_session import FieldSimulation
from simulators.network import NetworkModel

__all__ = [
    "MaxPressureController",
    "actuated_plan",
    "actuated_plans",
    "adaptive_plans",
    "as_mode",
    "fixed_plans",
    "lost_time_s",
    "stage_flow_ratios",
    "webster",
    "webster_proposal",
]

PlanMode = Literal["fixed", "actuated", "adaptive"]

_MAX_Y = 0.9
"""Cap on the sum of critical flow ratios (Webster's formula diverges at Y = 1)."""


def fixed_plans(bases: Mapping[str, BaseProgram]) -> dict[str, IntersectionTiming]:
    """The network's own fixed plans (each base program as a plan)."""
    return {tls_id: IntersectionTiming.from_base(base) for tls_id, base in bases.items()}


def lost_time_s(base: BaseProgram) -> float:
    """Lost time per cycle: the sum of the intergreens (yellow and all-red intervals)."""
    return float(sum(p.duration_s for p in base.phases if p.kind != "green"))


def webster(flow_ratios: Sequence[float], lost_s: float) -> tuple[float, list[float]]:
    """Webster's optimum cycle and effective greens.

    ``C0 = (1.5 L + 5) / (1 - Y)`` with ``Y`` the sum of the critical flow ratios
    (capped at 0.9); the effective green time ``C0 - L`` is shared in proportion
    to the critical flow ratios (equally when no flow was seen).

    Args:
        flow_ratios: critical flow ratio ``y = q / s`` of each phase.
        lost_s: total lost time per cycle ``L`` in seconds.

    Returns:
        ``(C0, [g_1, ..., g_n])`` in seconds (not rounded, not yet within limits).

    Raises:
        ConfigError: no phases, a negative ratio or a negative lost time.
    """
    if not flow_ratios:
        raise ConfigError("Webster needs at least one phase")
    if lost_s < 0 or any(y < 0 for y in flow_ratios):
        raise ConfigError("Webster needs non-negative flow ratios and lost time")
    total_y = min(sum(flow_ratios), _MAX_Y)
    cycle = (1.5 * lost_s + 5.0) / (1.0 - total_y)
    effective = max(cycle - lost_s, 0.0)
    raw = sum(flow_ratios)
    if raw <= 0:
        return cycle, [effective / len(flow_ratios)] * len(flow_ratios)
    return cycle, [effective * y / raw for y in flow_ratios]


def stage_flow_ratios(obs: IntersectionObservation) -> list[float]:
    """Critical flow ratios per green, counting each lane once per stage.

    A green that directly follows another green (no intergreen between them,
    e.g. a protected-turn continuation) extends that stage: its critical lane
    is taken only among the lanes the previous green did not already serve, so
    a lane's flow is not demanded twice in one cycle.
    """
    hours = max(obs.interval_s, 1.0) / 3600.0
    base = obs.layout.base
    greens = base.green_indices
    out: list[float] = []
    for slot, index in enumerate(greens):
        group = set(obs.layout.green_detectors[slot])
        if slot > 0 and greens[slot - 1] == index - 1:
            group -= set(obs.layout.green_detectors[slot - 1])
        flows = [max(0.0, float(obs.counts_veh.get(d, 0.0))) / hours for d in group]
        out.append(max(flows, default=0.0) / SATURATION_VPH_PER_LANE)
    return out


def webster_proposal(obs: IntersectionObservation) -> Proposal:
    """Webster's plan for one intersection from its detector flows (offset kept).

    Flow ratios come from :func:`stage_flow_ratios`.
    """
    base = obs.layout.base
    cycle, greens = webster(stage_flow_ratios(obs), lost_time_s(base))
    return Proposal(green_s=tuple(greens), cycle_s=cycle, offset_s=None)


def actuated_plan(
    tls_id: str,
    base: BaseProgram,
    limits: SafetyLimits,
    previous: IntersectionTiming | None = None,
) -> IntersectionTiming:
    """The base program as an actuated plan, bounded by :func:`project`.

    Controllers run actuated plans without recall (rest in green, maximum green
    against a conflicting call; :mod:`simulators.signal_program`).

    Greens keep their base durations as the nominal green, ``min_s`` is the
    minimum green (walk + clearance for a green that serves a crossing, since an
    actuated green may gap out at ``min_s``) and ``max_s`` extends into the
    headroom below the maximum cycle.
    """
    actuated_base = base.model_copy(
        update={
            "mode": "actuated",
            "phases": tuple(
                BasePhase(
                    state=p.state,
                    duration_s=p.duration_s,
                    kind=p.kind,
                    serves_pedestrians=p.serves_pedestrians,
                )
                for p in base.phases
            ),
        }
    )
    greens = [float(base.phases[i].duration_s) for i in base.green_indices]
    return project(tls_id, Proposal(green_s=greens), actuated_base, limits, previous)


def actuated_plans(
    bases: Mapping[str, BaseProgram], limits: SafetyLimits | LimitsSource
) -> dict[str, IntersectionTiming]:
    """Every base program as an actuated plan (:func:`actuated_plan`), each within its own limits.

    ``limits`` may be the settings' safety section: per-intersection overrides
    apply. A light whose limits admit no safe plan is left out (it keeps its own
    program; :func:`configs.safety.project_plans` warns).
    """
    return _mode_plans(bases, limits, "actuated")


def adaptive_plans(
    bases: Mapping[str, BaseProgram], limits: SafetyLimits | LimitsSource
) -> dict[str, IntersectionTiming]:
    """Every base program as an adaptive plan with the default real-time parameters.

    The bounds are :func:`actuated_plan`'s; lights with fewer than two greens
    (nothing to decide) get their actuated plan, and a light whose limits admit
    no safe plan is left out, as in :func:`actuated_plans`.
    """
    return _mode_plans(bases, limits, "adaptive")


def _mode_plans(
    bases: Mapping[str, BaseProgram], limits: SafetyLimits | LimitsSource, mode: PlanMode
) -> dict[str, IntersectionTiming]:
    proposals = {
        t: Proposal(green_s=[float(b.phases[i].duration_s) for i in b.green_indices])
        for t, b in bases.items()
    }
    moded = {t: as_mode(b, mode) for t, b in bases.items()}
    return project_plans(proposals, moded, limits, skip_unsafe=True)


def as_mode(base: BaseProgram, mode: PlanMode) -> BaseProgram:
    """The base program the plans of ``mode`` are projected onto.

    ``actuated`` plans keep the base's states and durations but run as SUMO
    actuated control (min green .. max green, see :func:`rl.baselines.actuated_plan`);
    ``adaptive`` plans carry the same bounds and run the controller's real-time
    logic. A light with fewer than two greens has nothing to decide and stays
    ``actuated`` when ``adaptive`` is asked for.
    """
    if mode == "adaptive" and len(base.green_indices) < 2:
        mode = "actuated"
    if mode == base.mode:
        return base
    if mode == "fixed":
        return base.model_copy(
            update={
                "mode": "fixed",
                "phases": tuple(
                    p.model_copy(update={"min_s": None, "max_s": None}) for p in base.phases
                ),
            }
        )
    try:
        bounds = [
            (q.min_s, q.max_s) for q in actuated_plan(base.tls_id, base, SafetyLimits()).phases
        ]
    except SafetyViolation:  # no safe plan under the default limits: plain bounds
        bounds = [
            (min(7, p.duration_s), p.duration_s) if p.kind == "green" else (None, None)
            for p in base.phases
        ]
    return base.model_copy(
        update={
            "mode": mode,
            "phases": tuple(
                p.model_copy(update={"min_s": lo, "max_s": hi})
                for p, (lo, hi) in zip(base.phases, bounds, strict=True)
            ),
        }
    )


# --------------------------------------------------------------------------- max-pressure


def _is_green(c: str) -> bool:
    return c in "Gg"


@dataclass
class _LightState:
    green: int
    """Index (into the light's greens) of the green shown or being switched to."""
    stage: str
    """"green", "yellow" or "red"."""
    until_s: float
    """End of the current transition interval, or when the green may end."""
    target: int = 0


class MaxPressureController:
    """Max-pressure phase selection, called after every simulation step.

    Every ``decision_s`` seconds, a light whose green has lasted at least the
    minimum green switches to the green phase with the highest pressure
    (halting vehicles on the lanes it serves minus those on their exit lanes),
    through a yellow and an all-red built from the base program's transition
    durations (links that lose green turn yellow; links green in both phases
    keep green).

    Args:
        network: the network model (links and base programs).
        limits: minimum green and minimum yellow/all-red durations; the settings'
            safety section applies its per-intersection overrides.
        decision_s: how often lights reconsider their phase.
    """

    def __init__(
        self,
        network: NetworkModel,
        limits: SafetyLimits | LimitsSource | None = None,
        decision_s: float = 5.0,
    ) -> None:
        source = limits if limits is not None else SafetyLimits()
        self.limits = {t: intersection_limits(source, t) for t in network.intersections}
        """Each light's limits."""
        self.decision_s = decision_s
        self._greens: dict[str, list[str]] = {}
        self._movements: dict[str, list[list[tuple[str, str]]]] = {}
        self._yellow_s: dict[str, float] = {}
        self._red_s: dict[str, float] = {}
        for tls_id, inter in network.intersections.items():
            base = inter.base
            states = [base.phases[i].state for i in base.green_indices]
            self._greens[tls_id] = states
            self._movements[tls_id] = [
                sorted(
                    {
                        (link.from_lane, link.to_lane)
                        for link in inter.links
                        if not link.pedestrian
                        and link.from_lane in network.lanes
                        and link.to_lane in network.lanes
                        and link.index < len(state)
                        and _is_green(state[link.index])
                    }
                )
                for state in states
            ]
            yellows = [p.duration_s for p in base.phases if p.kind == "yellow"]
            reds = [p.duration_s for p in base.phases if p.kind == "red"]
            lim = self.limits[tls_id]
            self._yellow_s[tls_id] = float(max(max(yellows, default=0), lim.min_yellow_s))
            self._red_s[tls_id] = float(
                max(max(reds, default=0), lim.min_red_clearance_s if reds else 0)
            )
        self._state: dict[str, _LightState] = {}
        self._next_decision_s = 0.0

    def pressure(self, sim: FieldSimulation, tls_id: str, green: int) -> float:
        """Pressure of one green phase: queued upstream minus queued downstream."""
        return float(
            sum(
                sim.lane_halting(src) - sim.lane_halting(dst)
                for src, dst in self._movements[tls_id][green]
            )
        )

    def __call__(self, sim: FieldSimulation) -> None:
        """The per-step hook: advance transitions and decide when due."""
        now = sim.time_s
        if not self._state:
            for tls_id, states in self._greens.items():
                min_green_s = self.limits[tls_id].min_green_s
                self._state[tls_id] = _LightState(0, "green", now + min_green_s)
                sim.set_signal_state(tls_id, states[0])
        decide = now >= self._next_decision_s
        if decide:
            self._next_decision_s = now + self.decision_s
        for tls_id, st in self._state.items():
            states = self._greens[tls_id]
            if st.stage == "yellow" and now >= st.until_s:
                red = _red_state(states[st.green], states[st.target])
                if self._red_s[tls_id] > 0 and red != states[st.target]:
                    st.stage, st.until_s = "red", now + self._red_s[tls_id]
                    sim.set_signal_state(tls_id, red)
                else:
                    self._enter_green(sim, tls_id, st, now)
            elif st.stage == "red" and now >= st.until_s:
                self._enter_green(sim, tls_id, st, now)
            elif st.stage == "green" and decide and now >= st.until_s and len(states) > 1:
                best = max(range(len(states)), key=lambda g: self.pressure(sim, tls_id, g))
                if best != st.green and self.pressure(sim, tls_id, best) > self.pressure(
                    sim, tls_id, st.green
                ):
                    st.target = best
                    yellow = _yellow_state(states[st.green], states[best])
                    if yellow == states[st.green]:  # nothing loses green: switch directly
                        self._enter_green(sim, tls_id, st, now)
                    else:
                        st.stage, st.until_s = "yellow", now + self._yellow_s[tls_id]
                        sim.set_signal_state(tls_id, yellow)

    def _enter_green(self, sim: FieldSimulation, tls_id: str, st: _LightState, now: float) -> None:
        st.green, st.stage = st.target, "green"
        st.until_s = now + self.limits[tls_id].min_green_s
        sim.set_signal_state(tls_id, self._greens[tls_id][st.green])


def _yellow_state(current: str, target: str) -> str:
    """Links green now and not green next turn yellow; everything else stays."""
    return "".join(
        "y" if _is_green(a) and not _is_green(b) else a
        for a, b in zip(current, target, strict=True)
    )


def _red_state(current: str, target: str) -> str:
    """All-red clearance: only links green in both phases keep their green."""
    return "".join(
        a if _is_green(a) and _is_green(b) else "r" for a, b in zip(current, target, strict=True)
    )
