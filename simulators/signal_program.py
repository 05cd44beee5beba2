"""How a traffic controller runs a timing plan, as a SUMO traffic-light program.

The field emulator (the city's controllers) and the twin (the daemon's model of
them) install plans through :func:`install_program`, so the twin predicts what
the controllers actually do.

``fixed`` plans run as SUMO static programs: every phase for its duration.

``actuated`` plans run as **fully actuated control without recall**, the usual
configuration of vehicle-actuated controllers:

* a green runs at least ``min_s`` and is extended while its approach detectors
  see vehicles closer together than the gap (SUMO's gap-based actuation, its own
  loops at the stop lines);
* when the green gaps out and no conflicting approach has a call, the light
  **rests in green** instead of cycling to empty phases;
* once a conflicting approach calls, the green ends at gap-out or at ``max_s``
  at the latest (the plan's maximum green is never exceeded while anybody
  waits);
* transitions (yellow, all-red) always run for their full durations, and the
  phase order is the plan's: no phase is skipped and no transition is invented,
  so the phase states are exactly those of the approved base program.

Resting needs two things of a green phase, checked per phase from the plan's
states and the light's links: the next green in the sequence must serve every
approach the resting green does not (otherwise a call on a later phase could
not end the rest, and that phase would starve), and the green must have at least
one link of its own (green in no other green phase), on which the maximum green
is enforced against conflicting calls (SUMO ``linkMaxDur``). A phase that fails
either check runs as plain actuated control: gap-out or max-out, then on to the
next phase, whether anybody waits there or not.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from configs.errors import ConfigError, SimulationError
from configs.timing import IntersectionTiming

__all__ = [
    "PROGRAM_TYPE_ACTUATED",
    "PROGRAM_TYPE_STATIC",
    "ActuatedRules",
    "actuated_rules",
    "build_logic",
    "install_program",
    "phase_at",
]

PROGRAM_TYPE_STATIC = 0
PROGRAM_TYPE_ACTUATED = 3


def phase_at(timing: IntersectionTiming, field_time_s: float) -> tuple[int, float]:
    """Phase index and remaining seconds of ``timing`` at ``field_time_s``.

    The plan's cycle starts (phase 0 begins) whenever
    ``(field_time_s - offset_s) mod cycle_s == 0``. The field emulator and the
    twin both enter a plan where this puts it, so their offsets agree.

    Raises:
        ConfigError: the plan has no duration (cycle 0).
    """
    cycle = sum(p.duration_s for p in timing.phases)
    if cycle <= 0:
        raise ConfigError("timing plan has no duration (cycle 0)")
    position = (field_time_s - timing.offset_s) % cycle
    start = 0.0
    for index, phase in enumerate(timing.phases):
        end = start + phase.duration_s
        if position < end - 1e-9:
            return index, end - position
        start = end
    return 0, float(timing.phases[0].duration_s)


def _green(signal: str) -> bool:
    return signal in "Gg"


@dataclass(frozen=True)
class ActuatedRules:
    """What :func:`actuated_rules` derived for one actuated plan.

    Attributes:
        next_phases: per phase, SUMO's ``next`` candidates (empty: the following
            phase, as in the plan's sequence).
        link_max_s: link index -> maximum green (s) enforced per link.
        resting: the green phases that may rest in green.
    """

    next_phases: tuple[tuple[int, ...], ...]
    link_max_s: dict[int, int]
    resting: tuple[int, ...]


def actuated_rules(timing: IntersectionTiming, link_lanes: Sequence[str | None]) -> ActuatedRules:
    """Derive rest-in-green successors and per-link maximum greens for ``timing``.

    Args:
        timing: an actuated plan (greens carry ``min_s``/``max_s``).
        link_lanes: for each signal index, the incoming vehicle lane it controls
            (``None`` for pedestrian crossings and other links without a loop).

    Returns:
        The rules; a plan with fewer than two actuated greens gets none.
    """
    phases = timing.phases
    n = len(phases)
    greens = [i for i, p in enumerate(phases) if p.max_s is not None and any(map(_green, p.state))]
    plain = ActuatedRules(tuple(() for _ in phases), {}, ())
    if len(greens) < 2:
        return plain

    def lanes(i: int) -> frozenset[str]:
        return frozenset(
            lane
            for k, signal in enumerate(phases[i].state)
            if _green(signal) and k < len(link_lanes) and (lane := link_lanes[k]) is not None
        )

    def following_green(i: int) -> int:
        j = (i + 1) % n
        while j not in greens:
            j = (j + 1) % n
        return j

    served = {g: lanes(g) for g in greens}
    everything = frozenset().union(*served.values())
    link_max: dict[int, int] = {}
    resting: list[int] = []
    for g in greens:
        if not (everything - served[g]) <= served[following_green(g)]:
            continue  # a later phase's call could not end the rest: it would starve
        own = [
            k
            for k, signal in enumerate(phases[g].state)
            if _green(signal)
            and k < len(link_lanes)
            and link_lanes[k] is not None
            and not any(_green(phases[h].state[k]) for h in greens if h != g)
        ]
        if not own:
            continue  # nothing to enforce the maximum green on
        max_s = phases[g].max_s
        assert max_s is not None  # greens are the phases with max_s
        for k in own:
            link_max[k] = int(max_s)
        resting.append(g)
    next_phases = tuple(((i, (i + 1) % n) if i in resting else ()) for i in range(n))
    return ActuatedRules(next_phases, link_max, tuple(resting))


def _link_lanes(tl: Any, tls_id: str) -> list[str | None]:
    """Incoming vehicle lane per signal index (``None`` for crossings)."""
    result: list[str | None] = []
    for links in tl.getControlledLinks(tls_id):
        lane = links[0][0] if links else ""
        result.append(lane if lane and not lane.startswith(":") else None)
    return result


def build_logic(
    tc: Any, tls_id: str, timing: IntersectionTiming, program_id: str, index: int
) -> Any:
    """The SUMO ``Logic`` that runs ``timing`` on ``tls_id`` (see the module docstring).

    Args:
        tc: the ``libsumo`` or ``traci`` module (or a traci connection).
        tls_id: the traffic light.
        timing: the plan.
        program_id: SUMO program id.
        index: the phase to start in.
    """
    tl = tc.trafficlight
    actuated = timing.mode == "actuated"
    rules = actuated_rules(timing, _link_lanes(tl, tls_id)) if actuated else None
    phases = []
    for i, p in enumerate(timing.phases):
        lo = p.min_s if actuated and p.min_s is not None else p.duration_s
        hi = p.max_s if actuated and p.max_s is not None else p.duration_s
        successors = rules.next_phases[i] if rules is not None else ()
        phases.append(tl.Phase(float(p.duration_s), p.state, float(lo), float(hi), successors))
    params = {f"linkMaxDur:{k}": str(v) for k, v in rules.link_max_s.items()} if rules else {}
    kind = PROGRAM_TYPE_ACTUATED if actuated else PROGRAM_TYPE_STATIC
    return tl.Logic(program_id, kind, index, phases, params)


def install_program(
    tc: Any,
    tls_id: str,
    timing: IntersectionTiming,
    program_id: str,
    index: int,
    remaining_s: float | None = None,
) -> None:
    """Install ``timing`` on ``tls_id`` as ``program_id`` and start it in phase ``index``.

    Args:
        tc: the ``libsumo`` or ``traci`` module (or a traci connection).
        tls_id: the traffic light.
        timing: the plan.
        program_id: SUMO program id. An id already installed is updated in place
            (SUMO keeps the program's type), so a plan of another mode needs a
            new id.
        index: phase to start in.
        remaining_s: for fixed plans, the time left in that phase.

    Raises:
        SimulationError: SUMO refused the program, or ``program_id`` is installed
            with another type.
    """
    tl = tc.trafficlight
    kind = PROGRAM_TYPE_ACTUATED if timing.mode == "actuated" else PROGRAM_TYPE_STATIC
    try:
        existing = {
            str(logic.programID): int(logic.type) for logic in tl.getAllProgramLogics(tls_id)
        }
    except Exception as e:  # libsumo.TraCIException / traci.TraCIException
        raise SimulationError(f"traffic light {tls_id!r} is not in the simulation: {e}") from e
    if existing.get(program_id, kind) != kind:
        # SUMO would update the program in place and keep its old type
        raise SimulationError(
            f"traffic light {tls_id!r} already has program {program_id!r} of another type; "
            f"install a {timing.mode} plan under a new program id"
        )
    try:
        logic = build_logic(tc, tls_id, timing, program_id, index)
        tl.setProgramLogic(tls_id, logic)
        tl.setProgram(tls_id, program_id)
        tl.setPhase(tls_id, index)
        if timing.mode == "fixed" and remaining_s is not None:
            tl.setPhaseDuration(tls_id, float(remaining_s))
    except SimulationError:
        raise
    except Exception as e:  # libsumo.TraCIException / traci.TraCIException
        raise SimulationError(
            f"SUMO refused the plan for traffic light {tls_id!r}: {e}; check that the plan's "
            "phase states match the network's signal groups"
        ) from e
