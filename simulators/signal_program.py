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

``adaptive`` plans run as a static program of the plan's phases that SUMO holds
in whatever phase the controller's real-time logic (:mod:`simulators.adaptive`)
shows: an :class:`AdaptiveRunner` owns the lights on adaptive plans and, after
every simulation step, reads their queue detectors and switches their phases.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from configs.errors import ConfigError, SimulationError
from configs.timing import IntersectionTiming
from simulators.adaptive import AdaptiveLight, Crossing, Movement, QueueSensors

__all__ = [
    "PROGRAM_TYPE_ACTUATED",
    "PROGRAM_TYPE_STATIC",
    "ActuatedRules",
    "AdaptiveRunner",
    "LaneSensors",
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


HOLD_S = 1e6
"""Phase duration SUMO is given for a phase the adaptive logic holds."""


class LaneSensors:
    """:class:`~simulators.adaptive.QueueSensors` read from a running SUMO, once per lane per step.

    Args:
        tc: the ``libsumo`` or ``traci`` module (or a traci connection).
    """

    def __init__(self, tc: Any) -> None:
        self._lane = tc.lane
        self._edge = tc.edge
        self._persons: dict[str, int] = {}
        self._halting: dict[str, int] = {}
        self._vehicles: dict[str, int] = {}

    def vehicles(self, lane_id: str) -> int:
        """Vehicles on ``lane_id`` in the last step."""
        found = self._vehicles.get(lane_id)
        if found is None:
            found = self._vehicles[lane_id] = int(self._lane.getLastStepVehicleNumber(lane_id))
        return found

    def halting(self, lane_id: str) -> int:
        """Vehicles halting on ``lane_id`` in the last step."""
        found = self._halting.get(lane_id)
        if found is None:
            found = self._halting[lane_id] = int(self._lane.getLastStepHaltingNumber(lane_id))
        return found

    def pedestrians(self, lane_id: str) -> int:
        """Persons on the walking area ``lane_id`` (its edge) in the last step."""
        found = self._persons.get(lane_id)
        if found is None:
            edge = lane_id.rsplit("_", 1)[0]
            found = self._persons[lane_id] = len(self._edge.getLastStepPersonIDs(edge))
        return found


class AdaptiveRunner:
    """The real-time logic of every light that runs an adaptive plan in one simulation.

    :func:`install_program` hands it adaptive plans; the simulation's owner calls
    :meth:`step` after every simulation step.
    """

    def __init__(self) -> None:
        self._lights: dict[str, AdaptiveLight] = {}

    def __contains__(self, tls_id: object) -> bool:
        return tls_id in self._lights

    @property
    def active(self) -> bool:
        """Whether any light runs an adaptive plan."""
        return bool(self._lights)

    def shown(self, tls_id: str, timing: IntersectionTiming) -> int | None:
        """The phase ``tls_id`` shows, when it runs an adaptive plan with ``timing``'s states."""
        light = self._lights.get(tls_id)
        if light is None or [p.state for p in light.timing.phases] != [
            p.state for p in timing.phases
        ]:
            return None
        return light.phase

    def take(self, tc: Any, tls_id: str, timing: IntersectionTiming, index: int) -> None:
        """Run ``timing`` on ``tls_id`` from phase ``index`` (its program already installed).

        A light already on an adaptive plan with the same phase states keeps
        where it is (:meth:`simulators.adaptive.AdaptiveLight.retime`).
        """
        tl = tc.trafficlight
        light = self._lights.get(tls_id)
        if light is not None and self.shown(tls_id, timing) is not None:
            light.retime(timing)
            tl.setPhase(tls_id, light.phase)
            tl.setPhaseDuration(tls_id, HOLD_S)
            return
        moves: list[Movement] = []
        crossings: list[Crossing] = []
        for k, links in enumerate(tl.getControlledLinks(tls_id)):
            if not links:
                continue
            lane, to_lane = str(links[0][0]), str(links[0][1])
            if not lane or not to_lane:
                continue
            if tuple(tc.lane.getAllowed(lane)) == ("pedestrian",):
                crossings.append(Crossing(k, lane))  # walking area -> crossing: a push button
            else:
                moves.append(Movement(k, lane, to_lane))
        now = float(tc.simulation.getTime())
        light = AdaptiveLight(tls_id, timing, moves, crossings, index, now)
        self._lights[tls_id] = light
        tl.setPhase(tls_id, light.phase)
        tl.setPhaseDuration(tls_id, HOLD_S)

    def release(self, tls_id: str) -> None:
        """Stop running ``tls_id`` (another plan or a reference controller took over)."""
        self._lights.pop(tls_id, None)

    def step(self, tc: Any, now_s: float, sensors: QueueSensors | None = None) -> None:
        """Decide every adaptive light for the second starting at ``now_s``."""
        if not self._lights:
            return
        read = sensors if sensors is not None else LaneSensors(tc)
        tl = tc.trafficlight
        for tls_id, light in self._lights.items():
            phase = light.step(now_s, read)
            if phase is not None:
                tl.setPhase(tls_id, phase)
                tl.setPhaseDuration(tls_id, HOLD_S)


def install_program(
    tc: Any,
    tls_id: str,
    timing: IntersectionTiming,
    program_id: str,
    index: int,
    remaining_s: float | None = None,
    runner: AdaptiveRunner | None = None,
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
        runner: the simulation's :class:`AdaptiveRunner`; required for an
            adaptive plan, and told to let go of a light that gets another plan.

    Raises:
        SimulationError: SUMO refused the program, ``program_id`` is installed
            with another type, or an adaptive plan came without a runner.
    """
    tl = tc.trafficlight
    if timing.mode == "adaptive" and runner is None:
        raise SimulationError(
            f"traffic light {tls_id!r}: an adaptive plan needs the simulation's AdaptiveRunner"
        )
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
    if timing.mode == "adaptive" and runner is not None:
        index = _continuing_phase(tc, tls_id, timing, runner, index)
    try:
        logic = build_logic(tc, tls_id, timing, program_id, index)
        tl.setProgramLogic(tls_id, logic)
        tl.setProgram(tls_id, program_id)
        tl.setPhase(tls_id, index)
        if timing.mode == "fixed" and remaining_s is not None:
            tl.setPhaseDuration(tls_id, float(remaining_s))
        if runner is not None:
            if timing.mode == "adaptive":
                runner.take(tc, tls_id, timing, index)
            else:
                runner.release(tls_id)
    except SimulationError:
        raise
    except Exception as e:  # libsumo.TraCIException / traci.TraCIException
        raise SimulationError(
            f"SUMO refused the plan for traffic light {tls_id!r}: {e}; check that the plan's "
            "phase states match the network's signal groups"
        ) from e


def _continuing_phase(
    tc: Any, tls_id: str, timing: IntersectionTiming, runner: AdaptiveRunner, index: int
) -> int:
    """Where an adaptive plan takes over: the phase the light shows, when the plan has it.

    A controller that switches to an adaptive plan does not jump to the phase the
    offset would put a fixed plan in (the green shown would end without its
    yellow); it continues from the phase it shows when that phase, at the same
    index, is in the new plan.
    """
    shown = runner.shown(tls_id, timing)
    if shown is not None:
        return shown
    try:
        current = int(tc.trafficlight.getPhase(tls_id))
        state = str(tc.trafficlight.getRedYellowGreenState(tls_id))
    except Exception:  # libsumo.TraCIException / traci.TraCIException
        return index
    if current < len(timing.phases) and timing.phases[current].state == state:
        return current
    return index
