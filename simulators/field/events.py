"""An event day's runtime part: lane closures in SUMO and faulty loops in the reports.

:class:`DayEvents` implements :class:`simulators.field.scenario.FieldEvents`; an
event day file (:mod:`simulators.field.event_day`) builds one. It holds plain,
picklable data (a shadow fork of the field gets it in another process) and the
little state a run needs, which :meth:`DayEvents.start` resets.

Closures (:class:`Closure`):
    A closure of *some* lanes of an edge is a breakdown: from ``from_s`` a
    stopped vehicle (type ``signaltwin_incident``, no emissions) stands near
    the end of each closed lane until ``to_s``, when it is removed. Vehicles
    change lanes around it; those that must leave the edge from that lane
    (their turn is only reachable from it) queue behind it, as they would
    behind a broken-down truck. Its own halting counts in the approach's
    (one vehicle).

    A closure of *every* vehicle lane closes the edge: its lanes allow no
    vehicle class (``lane.setDisallowed(lane, ["all"])``) until ``to_s``, when
    each gets back the classes it allowed before; its travel time is raised
    for the closure (``edge.adaptTraveltime``), and every vehicle whose
    remaining route uses the edge is rerouted (``vehicle.rerouteTraveltime``):
    those in the network when it closes and every one that departs during the
    closure. A vehicle with no other way (its destination is the closed edge)
    waits in front of it until it reopens.

    No closure is open-ended, so none can hold the city for ever. A saved state
    carries the stopped vehicles but not lane permissions or travel times:
    :meth:`DayEvents.start` puts back what is missing.

Detector faults (:class:`DetectorFault`):
    Only what the loops *report* changes (:meth:`DayEvents.report`); the
    field's true counters stay untouched. A fault covers the intervals whose end
    ``e`` lies in ``(from_s, to_s]``. ``stuck``: such an interval reports the
    count and occupancy of the last interval that ended before the fault
    began; ``dead``: count 0, occupancy 0; ``noisy``: the true interval count
    times a lognormal factor of mean 1 and relative sd ``noise``, drawn from
    ``(seed, detector, e)`` alone, so every read and every fork agrees. A
    faulty loop's cumulative count grows only by what it reports, once per
    interval end: it is monotone and, between interval ends, constant while
    the interval in progress is faulty.
"""

from __future__ import annotations

__all__ = ["Closure", "DayEvents", "DetectorFault", "FaultKind", "noise_factor"]

import logging
import math
import random
from dataclasses import dataclass, field, replace
from typing import Any, Final, Literal

from configs.errors import SimulationError
from simulators.field.records import DetectorSnapshot

logger = logging.getLogger(__name__)

FaultKind = Literal["stuck", "dead", "noisy"]
"""What a faulty loop does (see the module docstring)."""

_VAR_VEHICLE_IDS: Final = 0x12
_VAR_OCCUPANCY: Final = 0x13
_CLOSED_TRAVEL_TIME_S: Final = 1.0e6
"""Travel time a fully closed edge gets for its closure, so that routers avoid it."""
_INCIDENT_VTYPE: Final = "signaltwin_incident"
_BLOCKER_SETBACK_M: Final = 8.0
"""How far before the lane's end a breakdown stands (before the stop line)."""


def _blocker_id(index: int, lane_id: str) -> str:
    return f"signaltwin_incident{index}_{lane_id}"


@dataclass(frozen=True)
class Closure:
    """Lanes closed to every vehicle class for ``[from_s, to_s)`` of field time.

    Attributes:
        edge_id: the edge.
        lane_ids: the closed lanes (every lane of the edge when ``whole_edge``).
        whole_edge: every lane of the edge is closed: vehicles reroute around it.
        from_s: field time the lanes close.
        to_s: field time they reopen.
    """

    edge_id: str
    lane_ids: tuple[str, ...]
    whole_edge: bool
    from_s: float
    to_s: float

    def active(self, time_s: float) -> bool:
        """True while the lanes are closed at ``time_s``."""
        return self.from_s <= time_s + 1e-9 and time_s + 1e-9 < self.to_s


@dataclass(frozen=True)
class DetectorFault:
    """Loops that report wrong for the intervals ending in ``(from_s, to_s]``.

    Attributes:
        detector_ids: the faulty loops.
        kind: ``stuck``, ``dead`` or ``noisy``.
        from_s: field time the fault begins.
        to_s: field time it ends.
        noise: relative sd of a ``noisy`` loop's factor (0 for the others).
    """

    detector_ids: tuple[str, ...]
    kind: FaultKind
    from_s: float
    to_s: float
    noise: float = 0.0

    def covers(self, interval_end_s: float) -> bool:
        """True when the interval ending at ``interval_end_s`` is faulty."""
        return self.from_s + 1e-9 < interval_end_s and interval_end_s <= self.to_s + 1e-9


def noise_factor(seed: int, detector_id: str, interval_end_s: float, noise: float) -> float:
    """A noisy loop's factor for one interval: lognormal, mean 1, relative sd ``noise``.

    Drawn from ``(seed, detector_id, interval_end_s)`` alone, so the same
    interval always gets the same factor.
    """
    if noise <= 0:
        return 1.0
    sigma2 = math.log1p(noise * noise)
    rng = random.Random(f"{int(seed)}:{detector_id}:{round(interval_end_s * 1000)}")
    return math.exp(math.sqrt(sigma2) * rng.gauss(0.0, 1.0) - sigma2 / 2.0)


@dataclass
class _Loop:
    """One faulty loop's bookkeeping since :meth:`DayEvents.start`."""

    prev_ids: frozenset[str] = frozenset()
    true_cum: int = 0
    reported_cum: int = 0
    interval_true: int = 0
    interval_occ_sum: float = 0.0
    last_end_s: float | None = None
    last_report: tuple[int, float] | None = None
    """What the loop reported for the interval ending at ``last_end_s`` (None: the truth)."""
    clean: tuple[float, int, float] | None = None
    """``(end, count, occupancy)`` of the last interval without a fault (a stuck loop's value)."""


@dataclass
class DayEvents:
    """Closures and detector faults of one event day (a :class:`FieldEvents`).

    Args:
        closures: the day's lane and edge closures.
        faults: the day's detector faults.
        interval_s: the field's detector interval (intervals end at its multiples).
        seed: the day's seed (noisy loops' factors).
    """

    closures: tuple[Closure, ...] = ()
    faults: tuple[DetectorFault, ...] = ()
    interval_s: int = 60
    seed: int = 0
    _closed: dict[int, dict[str, list[str]]] = field(default_factory=dict, repr=False)
    _loops: dict[str, _Loop] = field(default_factory=dict, repr=False)
    _interval_begin_s: float = field(default=0.0, repr=False)
    _steps: int = field(default=0, repr=False)

    def __post_init__(self) -> None:
        if self.interval_s <= 0:
            raise SimulationError(f"event day: interval_s must be positive, got {self.interval_s}")

    # ----------------------------------------------------------- FieldEvents

    def start(self, api: Any, time_s: float) -> None:
        """SUMO started (or loaded a saved state) at ``time_s``: close what is closed then.

        A saved state carries no lane permissions, so a fork closes its lanes
        again here. Loop bookkeeping restarts with the field's counters (zero);
        a stuck loop keeps the value it had before ``time_s`` when this object
        has seen it (the field's own events, pickled into a fork).
        """
        self._closed = {}
        for index, closure in enumerate(self.closures):
            if closure.active(time_s):
                self._close(api, index, closure, time_s)
        kept = {
            d: loop.clean
            for d, loop in self._loops.items()
            if loop.clean is not None and loop.clean[0] <= time_s + 1e-9
        }
        self._loops = {d: _Loop(clean=kept.get(d)) for f in self.faults for d in f.detector_ids}
        self._interval_begin_s = float(time_s)
        self._steps = 0

    def step(self, api: Any, time_s: float) -> None:
        """The step ending at ``time_s`` was simulated: open and close lanes, count loops."""
        for index, closure in enumerate(self.closures):
            closed = index in self._closed
            if not closed and closure.active(time_s):
                self._close(api, index, closure, time_s)
            elif closed and not closure.active(time_s):
                self._reopen(api, index, closure, time_s)
        if any(self.closures[i].whole_edge for i in self._closed):
            self._reroute_departed(api)
        if self._loops:
            self._count(api, time_s)

    def report(self, snapshot: DetectorSnapshot) -> DetectorSnapshot:
        """What the loops report at the snapshot's time: faulty loops replaced.

        Raises:
            SimulationError: the snapshot's interval is not the one this day was
                built for (the loops would be counted on different intervals).
        """
        if not self._loops:
            return snapshot
        if snapshot.interval_s != self.interval_s:
            raise SimulationError(
                f"event day built for {self.interval_s} s detector intervals, the field "
                f"reports {snapshot.interval_s} s; build it with the field's interval_s"
            )
        readings = dict(snapshot.readings)
        for det_id, loop in self._loops.items():
            true = readings.get(det_id)
            if true is None:
                continue
            withheld = loop.true_cum - loop.reported_cum
            count = max(0, true.count - withheld)
            interval_count, occupancy = true.interval_count, true.occupancy
            if (
                loop.last_report is not None
                and snapshot.interval_end_s is not None
                and loop.last_end_s is not None
                and abs(snapshot.interval_end_s - loop.last_end_s) < 1e-6
            ):
                interval_count, occupancy = loop.last_report
            readings[det_id] = replace(
                true, count=count, interval_count=interval_count, occupancy=occupancy
            )
        return replace(snapshot, readings=readings)

    # --------------------------------------------------------------- queries

    def closed_lanes(self) -> frozenset[str]:
        """Lanes closed now (after :meth:`start` and the last :meth:`step`)."""
        return frozenset(lane for i in self._closed for lane in self.closures[i].lane_ids)

    def fault_of(self, detector_id: str, interval_end_s: float) -> DetectorFault | None:
        """The fault that covers ``detector_id``'s interval ending then (first listed wins)."""
        for fault in self.faults:
            if detector_id in fault.detector_ids and fault.covers(interval_end_s):
                return fault
        return None

    # -------------------------------------------------------------- closures

    def _close(self, api: Any, index: int, closure: Closure, time_s: float) -> None:
        saved: dict[str, list[str]] = {}
        try:
            if closure.whole_edge:
                for lane in closure.lane_ids:
                    saved[lane] = list(api.lane.getAllowed(lane))
                    api.lane.setDisallowed(lane, ["all"])
                api.edge.adaptTraveltime(
                    closure.edge_id, _CLOSED_TRAVEL_TIME_S, float(time_s), float(closure.to_s)
                )
            else:
                present = set(api.vehicle.getIDList()) | set(api.simulation.getPendingVehicles())
                for lane in closure.lane_ids:
                    blocker = _blocker_id(index, lane)
                    if blocker not in present:  # a fork's saved state already has it
                        self._add_blocker(api, blocker, closure, lane)
        except Exception as e:  # libsumo and traci raise their own TraCIException
            raise SimulationError(
                f"field could not close {', '.join(closure.lane_ids)} at t={time_s:g}: {e}"
            ) from e
        self._closed[index] = saved
        logger.info(
            "field t=%.0f: closed %s of %s until t=%.0f",
            time_s,
            "every lane" if closure.whole_edge else ", ".join(closure.lane_ids),
            closure.edge_id,
            closure.to_s,
        )
        if closure.whole_edge:
            self._reroute(api, api.vehicle.getIDList(), frozenset({closure.edge_id}))

    @staticmethod
    def _add_blocker(api: Any, blocker: str, closure: Closure, lane: str) -> None:
        if _INCIDENT_VTYPE not in api.vehicletype.getIDList():
            api.vehicletype.copy("DEFAULT_VEHTYPE", _INCIDENT_VTYPE)
            api.vehicletype.setEmissionClass(_INCIDENT_VTYPE, "Zero")
            api.vehicletype.setLength(_INCIDENT_VTYPE, 10.0)
        route = f"signaltwin_incident_{closure.edge_id}"
        if route not in api.route.getIDList():
            api.route.add(route, [closure.edge_id])
        lane_index = int(lane.rsplit("_", 1)[1])
        pos = max(1.0, float(api.lane.getLength(lane)) - _BLOCKER_SETBACK_M)
        api.vehicle.add(
            blocker,
            route,
            typeID=_INCIDENT_VTYPE,
            depart="now",
            departLane=str(lane_index),
            departPos=f"{pos:.2f}",
            departSpeed="0",
        )
        api.vehicle.setStop(
            blocker, closure.edge_id, pos=pos, laneIndex=lane_index, until=float(closure.to_s)
        )

    def _reopen(self, api: Any, index: int, closure: Closure, time_s: float) -> None:
        saved = self._closed.pop(index)
        try:
            for lane, allowed in saved.items():
                api.lane.setAllowed(lane, allowed)
            if not closure.whole_edge:
                present = set(api.vehicle.getIDList())
                pending = set(api.simulation.getPendingVehicles())
                for lane in closure.lane_ids:
                    blocker = _blocker_id(index, lane)
                    if blocker in present or blocker in pending:
                        api.vehicle.remove(blocker)
        except Exception as e:
            raise SimulationError(
                f"field could not reopen {', '.join(closure.lane_ids)} at t={time_s:g}: {e}"
            ) from e
        logger.info("field t=%.0f: reopened %s", time_s, closure.edge_id)

    def _closed_edges(self) -> frozenset[str]:
        return frozenset(
            self.closures[i].edge_id for i in self._closed if self.closures[i].whole_edge
        )

    def _reroute_departed(self, api: Any) -> None:
        departed = api.simulation.getDepartedIDList()
        if departed:
            self._reroute(api, departed, self._closed_edges())

    @staticmethod
    def _reroute(api: Any, vehicles: Any, edges: frozenset[str]) -> None:
        """Reroute each vehicle whose route still runs over one of ``edges`` ahead of it."""
        veh = api.vehicle
        for vid in vehicles:
            try:
                route = veh.getRoute(vid)
                ahead = route[int(veh.getRouteIndex(vid)) + 1 :]
                if edges.isdisjoint(ahead):
                    continue
                veh.rerouteTraveltime(vid, False)
            except Exception as e:  # a vehicle with no other way keeps its route
                logger.debug("vehicle %s keeps its route over a closed edge: %s", vid, e)

    # ----------------------------------------------------------------- loops

    def _count(self, api: Any, time_s: float) -> None:
        loops = self._loops
        induction = api.inductionloop
        end_s = (math.floor(self._interval_begin_s / self.interval_s + 1e-9) + 1) * self.interval_s
        for det_id, loop in loops.items():
            res = induction.getSubscriptionResults(det_id)
            if res and _VAR_VEHICLE_IDS in res:
                ids = frozenset(res[_VAR_VEHICLE_IDS])
                occ = float(res.get(_VAR_OCCUPANCY, 0.0)) / 100.0
            else:
                ids = frozenset(induction.getLastStepVehicleIDs(det_id))
                occ = float(induction.getLastStepOccupancy(det_id)) / 100.0
            new = len(ids - loop.prev_ids) if (ids or loop.prev_ids) else 0
            loop.prev_ids = ids
            loop.true_cum += new
            loop.interval_true += new
            loop.interval_occ_sum += occ
            if self.fault_of(det_id, end_s) is None:
                loop.reported_cum += new
        self._steps += 1
        if time_s + 1e-9 < end_s:
            return
        steps = max(1, self._steps)
        for det_id, loop in loops.items():
            true_count, true_occ = loop.interval_true, loop.interval_occ_sum / steps
            fault = self.fault_of(det_id, time_s)
            if fault is None:
                loop.last_report = None
                loop.clean = (time_s, true_count, true_occ)
            else:
                count, occ = self._faulty(fault, det_id, time_s, loop, true_count, true_occ)
                loop.last_report = (count, occ)
                loop.reported_cum += count
            loop.last_end_s = time_s
            loop.interval_true = 0
            loop.interval_occ_sum = 0.0
        self._interval_begin_s = time_s
        self._steps = 0

    def _faulty(
        self,
        fault: DetectorFault,
        det_id: str,
        end_s: float,
        loop: _Loop,
        true_count: int,
        true_occ: float,
    ) -> tuple[int, float]:
        if fault.kind == "dead":
            return 0, 0.0
        if fault.kind == "stuck":
            if loop.clean is None:
                # a fork started inside the fault, never having seen the loop clean:
                # it sticks at its first interval
                loop.clean = (end_s, true_count, true_occ)
            return loop.clean[1], loop.clean[2]
        factor = noise_factor(self.seed, det_id, end_s, fault.noise)
        return max(0, round(true_count * factor)), min(1.0, true_occ * factor)
