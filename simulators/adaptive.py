"""The adaptive mode's real-time logic: what a controller decides every second.

An ``adaptive`` plan (:class:`configs.timing.AdaptiveLogic`) does not fix when a
green ends; the controller decides it each second from its own queue detectors
(vehicles on each approach lane, vehicles halting on each exit lane), within
bounds that no parameter can move. The field emulator's controllers and the
twin both run this module through :mod:`simulators.signal_program`, so the twin
predicts what the field does. The contract a controller vendor implements is
docs/controller-contract.md ("Adaptive mode").

Each second, for a light showing green ``g`` for ``e`` seconds:

* a green ``k`` has a **call** when a vehicle is on one of the approach lanes
  that ``k`` gives green and ``g`` does not, or when a person waits at a
  crossing that ``k`` gives green (the crossing's push button: a person on the
  walking area the crossing starts from);
* while no other green has a call, the light **rests in green**;
* the **pressure** of a green is its weight times the sum, over the movements
  (approach lane -> exit lane) it gives green, of the vehicles on the approach
  lane minus ``downstream_weight`` times the vehicles halting on the exit lane;
  the **competing pressure** is the largest pressure of another green counted
  only on the lanes ``g`` does not serve;
* once somebody else waits, ``g`` ends when ``e >= min_s`` and either
  ``e >= max_s`` (the maximum green against a waiting call), or no vehicle is
  left on ``g``'s own approach lanes (gap-out), or the competing pressure
  exceeds ``g``'s own by more than ``switch_margin_veh``;
* with ``coordinated``, the plan's cycle and offset set a cycle clock: during
  the planned window of the first green (where ``offset_s`` and the planned
  durations put it), a green shown ends as soon as its ``min_s`` is served
  (force-off) on its way to the first green, which is then held until the
  window ends (at most ``max_s``); outside the window the rules below apply;
* a green that ends runs the base program's own transition after it (yellow,
  all-red, for their planned durations) and then shows, among the greens
  reachable from ``g`` (:func:`configs.safety.successor_paths`: directly, or by
  skipping greens whose own transitions then run instead) that have a call, the
  one with the highest pressure (the base successor on a tie); when none has a
  call, or ``skip`` is false, the base successor.

Everything is pure: :class:`AdaptiveLight` reads :class:`QueueSensors` and
returns the phase index to show, so it is tested without SUMO.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from configs.errors import ConfigError
from configs.safety import successor_paths
from configs.timing import AdaptiveLogic, IntersectionTiming, classify_state

__all__ = [
    "AdaptiveLight",
    "Crossing",
    "Movement",
    "QueueSensors",
]


class QueueSensors(Protocol):
    """What an adaptive controller's detectors report for the last second."""

    def vehicles(self, lane_id: str) -> int:
        """Vehicles on an approach lane (moving or queued)."""
        ...

    def halting(self, lane_id: str) -> int:
        """Vehicles halting on a lane (an exit lane: spill-back)."""
        ...

    def pedestrians(self, lane_id: str) -> int:
        """Persons waiting on a walking area (a crossing's push button)."""
        ...


@dataclass(frozen=True)
class Movement:
    """One signal index of the light: the lanes it connects."""

    index: int
    from_lane: str
    to_lane: str


@dataclass(frozen=True)
class Crossing:
    """One pedestrian signal index of the light: the walking area its push button is on."""

    index: int
    walking_area: str


def _green(signal: str) -> bool:
    return signal in "Gg"


def _serves(state: str, index: int) -> bool:
    return index < len(state) and _green(state[index])


class AdaptiveLight:
    """One light running an adaptive plan (see the module docstring).

    Args:
        tls_id: the light.
        timing: its adaptive plan.
        movements: its vehicle movements (signal index -> approach and exit lane).
        crossings: its pedestrian crossings (signal index -> walking area).
        phase: the phase the light shows when the plan takes over.
        now_s: field time at take-over.

    Raises:
        ConfigError: the plan is not adaptive or has fewer than two greens.
    """

    def __init__(
        self,
        tls_id: str,
        timing: IntersectionTiming,
        movements: Sequence[Movement],
        crossings: Sequence[Crossing],
        phase: int,
        now_s: float,
    ) -> None:
        self.tls_id = tls_id
        self._movements = tuple(movements)
        self._crossings = tuple(crossings)
        self._configure(timing)
        states = self._states
        n = len(states)
        self.phase = phase
        """The phase shown now."""
        self._green = phase
        self._since_s = now_s
        self._queue: list[int] = []
        self._target = phase
        self._phase_end_s = now_s
        if phase not in self.greens:  # taking over in a transition: finish it first
            self._queue = [phase]
            j = (phase + 1) % n
            while j not in self.greens:
                self._queue.append(j)
                j = (j + 1) % n
            self._target = self._green = j
            self._show(phase, now_s)

    def _configure(self, timing: IntersectionTiming) -> None:
        logic = timing.adaptive
        if timing.mode != "adaptive" or logic is None:
            raise ConfigError(f"{self.tls_id}: not an adaptive plan")
        states = [p.state for p in timing.phases]
        greens = tuple(i for i, s in enumerate(states) if classify_state(s) == "green")
        if len(greens) < 2:
            raise ConfigError(f"{self.tls_id}: an adaptive plan needs at least two greens")
        if len(logic.green_weights) != len(greens):
            raise ConfigError(
                f"{self.tls_id}: {len(logic.green_weights)} green weights for {len(greens)} greens"
            )
        self.timing = timing
        self.logic: AdaptiveLogic = logic
        self._states = states
        self.greens = greens
        self._weight = {g: logic.green_weights[n] for n, g in enumerate(greens)}
        self._moves = {
            g: tuple(
                m
                for m in self._movements
                if m.index < len(states[g]) and _green(states[g][m.index])
            )
            for g in greens
        }
        self._lanes = {g: frozenset(m.from_lane for m in self._moves[g]) for g in greens}
        self._walk = {
            g: tuple(c.walking_area for c in self._crossings if _serves(states[g], c.index))
            for g in greens
        }
        self._paths = {g: successor_paths(states, g, logic.skip) for g in greens}

    def retime(self, timing: IntersectionTiming) -> None:
        """Take a new adaptive plan with the same phase states, keeping where the light is.

        The green shown keeps its elapsed time (its new ``min_s``/``max_s`` apply
        to it), a transition runs to its end.

        Raises:
            ConfigError: the plan is not adaptive or its phase states differ.
        """
        if [p.state for p in timing.phases] != self._states:
            raise ConfigError(f"{self.tls_id}: a new plan with other phase states must take over")
        self._configure(timing)

    # ------------------------------------------------------------------ decision

    def pressure(self, green: int, sensors: QueueSensors) -> float:
        """Weighted pressure of ``green`` (see the module docstring)."""
        beta = self.logic.downstream_weight
        total = 0.0
        for m in self._moves[green]:
            total += sensors.vehicles(m.from_lane) - beta * sensors.halting(m.to_lane)
        return self._weight[green] * total

    def _called(self, green: int, sensors: QueueSensors) -> bool:
        """Whether ``green`` serves somebody the green shown does not."""
        if green != self._green and any(sensors.pedestrians(w) > 0 for w in self._walk[green]):
            return True
        own = self._lanes[self._green]
        return any(sensors.vehicles(lane) > 0 for lane in self._lanes[green] - own)

    def competing_pressure(self, sensors: QueueSensors) -> float:
        """The strongest pressure of another green, on the lanes the green shown does not serve."""
        beta = self.logic.downstream_weight
        own = self._lanes[self._green]
        best = 0.0
        for green in self.greens:
            if green == self._green:
                continue
            total = 0.0
            for m in self._moves[green]:
                if m.from_lane not in own:
                    total += sensors.vehicles(m.from_lane) - beta * sensors.halting(m.to_lane)
            best = max(best, self._weight[green] * total)
        return best

    def step(self, now_s: float, sensors: QueueSensors) -> int | None:
        """Decide for the second that starts at ``now_s``; the phase to show if it changes."""
        if self._queue:  # in a transition
            if now_s + 1e-9 < self._phase_end_s:
                return None
            self._queue.pop(0)
            if self._queue:
                return self._show(self._queue[0], now_s)
            self._green, self._since_s = self._target, now_s
            return self._show(self._target, now_s)
        green = self._green
        elapsed = now_s - self._since_s
        phase = self.timing.phases[green]
        min_s = float(phase.min_s or phase.duration_s)
        max_s = float(phase.max_s or phase.duration_s)
        if elapsed + 1e-9 < min_s:
            return None
        coordinated = self.greens[0]
        if self.logic.coordinated and self._in_window(now_s):
            if green == coordinated:
                if elapsed + 1e-9 < max_s:
                    return None  # held for its planned green
            else:  # force-off: on towards the coordinated green
                paths = self._paths[green]
                target = coordinated if coordinated in paths else next(iter(paths))
                return self._end_green(target, now_s)
        if not any(self._called(k, sensors) for k in self.greens if k != green):
            return None  # nobody else waits: rest in green
        if elapsed + 1e-9 < max_s:
            own_demand = any(sensors.vehicles(lane) > 0 for lane in self._lanes[green])
            if own_demand and self.competing_pressure(sensors) <= self.pressure(green, sensors) + (
                self.logic.switch_margin_veh
            ):
                return None  # extend
        successors = list(self._paths[green])
        called = [k for k in successors if self._called(k, sensors)] if self.logic.skip else []
        if called:
            scores = {k: self.pressure(k, sensors) for k in called}
            target = max(called, key=lambda k: (scores[k], -called.index(k)))
        else:  # on towards whoever waits, in the base order
            target = successors[0]
        return self._end_green(target, now_s)

    def _in_window(self, now_s: float) -> bool:
        """Whether ``now_s`` lies in the coordinated green's planned window of the cycle."""
        timing = self.timing
        first = self.greens[0]
        start = float(sum(p.duration_s for p in timing.phases[:first]))
        position = (now_s - timing.offset_s) % timing.cycle_s
        return start <= position < start + timing.phases[first].duration_s

    def _end_green(self, target: int, now_s: float) -> int:
        self._target = target
        self._queue = list(self._paths[self._green][target])
        if not self._queue:
            self._green, self._since_s = target, now_s
            return self._show(target, now_s)
        return self._show(self._queue[0], now_s)

    def _show(self, phase: int, now_s: float) -> int:
        self.phase = phase
        self._phase_end_s = now_s + float(self.timing.phases[phase].duration_s)
        return phase
