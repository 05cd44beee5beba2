"""What the field's roadside equipment measures, step by step: loops and approaches.

:class:`FieldMeasurements` subscribes to SUMO's induction loops and to the lanes
every light serves or feeds, accumulates each step's results, and closes an
interval at every multiple of ``interval_s`` in field time: per-loop counts and
occupancy, per-intersection halting vehicle-seconds, vehicles and NOx.
"""

from __future__ import annotations

__all__ = ["FieldMeasurements"]

import math
from dataclasses import dataclass, field
from typing import Any, Final

from configs.errors import ConfigError
from simulators.field.records import (
    DetectorReading,
    DetectorSnapshot,
    FieldCounters,
    IntersectionMeasurement,
    MeasurementSnapshot,
)
from simulators.network import NetworkModel
from simulators.signal_program import LaneSensors

# traci.constants is a pure-Python table shared by libsumo and traci.
_VAR_VEHICLE_IDS: Final = 0x12
_VAR_OCCUPANCY: Final = 0x13
_VAR_HALTING: Final = 0x14
_VAR_NOX: Final = 0x63


@dataclass
class _TlsAcc:
    halting_veh_s: float = 0.0
    nox_mg: float = 0.0
    vehicles: set[str] = field(default_factory=set)


class FieldMeasurements:
    """Per-step accumulation of detector counts and approach measurements.

    Args:
        network: the field's network (detectors, intersections, lanes).
        interval_s: intervals end at multiples of it in field time.
        step_length_s: the simulation step (s).
        begin_s: field time at start (the first interval begins there).
    """

    def __init__(
        self, network: NetworkModel, interval_s: int, step_length_s: float, begin_s: float
    ) -> None:
        self.network = network
        self._interval_s = interval_s
        self._step_s = step_length_s
        # detectors
        self._det_ids = tuple(d.id for d in network.detectors)
        self._det_prev: dict[str, frozenset[str]] = {d: frozenset() for d in self._det_ids}
        self._det_count: dict[str, int] = dict.fromkeys(self._det_ids, 0)
        self._det_int_count: dict[str, int] = dict.fromkeys(self._det_ids, 0)
        self._det_int_occ: dict[str, float] = dict.fromkeys(self._det_ids, 0.0)
        self._det_last: dict[str, tuple[int, float]] = {}
        self._det_step_occ: dict[str, float] = {}
        # approaches
        self._lane_tls: dict[str, list[str]] = {}
        for tls_id, inter in network.intersections.items():
            for edge in inter.approaches:
                for lane in network.edges.get(edge, ()):
                    if network.lanes[lane].vehicles:
                        self._lane_tls.setdefault(lane, []).append(tls_id)
        # every vehicle lane a light serves or feeds (max-pressure reads both ends)
        self._halt_lanes: frozenset[str] = frozenset(
            lane
            for inter in network.intersections.values()
            for link in inter.links
            if not link.pedestrian
            for lane in (link.from_lane, link.to_lane)
            if lane in network.lanes
        ) | frozenset(self._lane_tls)
        self._lane_results: dict[str, dict[int, Any]] = {}
        self._tls_acc: dict[str, _TlsAcc] = {t: _TlsAcc() for t in network.intersections}
        # cumulative since the start (FieldCounters): windows of any length
        self._cum_halting: dict[str, float] = dict.fromkeys(network.intersections, 0.0)
        self._cum_nox: dict[str, float] = dict.fromkeys(network.intersections, 0.0)
        self._last_measure: MeasurementSnapshot | None = None
        self._interval_begin = float(begin_s)
        self._interval_steps = 0
        self._last_interval_end: float | None = None

    def subscribe(self, api: Any) -> None:
        """Subscribe to every loop and every tracked lane of a started SUMO."""
        for det in self._det_ids:
            api.inductionloop.subscribe(det, [_VAR_VEHICLE_IDS, _VAR_OCCUPANCY])
        for lane in sorted(self._halt_lanes):
            if lane in self._lane_tls:
                api.lane.subscribe(lane, [_VAR_HALTING, _VAR_VEHICLE_IDS, _VAR_NOX])
            else:  # an exit lane only: its queue, for lane_halting
                api.lane.subscribe(lane, [_VAR_HALTING])

    def collect(self, api: Any, time_s: float) -> None:
        """Take the step just simulated (field time ``time_s``) into the interval."""
        step_s = self._step_s
        dets = api.inductionloop.getAllSubscriptionResults()
        prev_all = self._det_prev
        step_occ: dict[str, float] = {}
        for det_id, res in dets.items():
            ids = res[_VAR_VEHICLE_IDS]
            prev = prev_all.get(det_id)
            if prev is None or (not ids and not prev):
                continue
            now = frozenset(ids)
            new = len(now - prev)
            prev_all[det_id] = now
            if new:
                self._det_count[det_id] += new
                self._det_int_count[det_id] += new
            occupancy = res[_VAR_OCCUPANCY]
            if occupancy:
                self._det_int_occ[det_id] += float(occupancy) / 100.0
                step_occ[det_id] = float(occupancy) / 100.0
        self._det_step_occ = step_occ
        lanes = api.lane.getAllSubscriptionResults()
        self._lane_results = lanes  # read by lane_halting until the next step
        lane_tls = self._lane_tls
        accs = self._tls_acc
        cum_halting, cum_nox = self._cum_halting, self._cum_nox
        for lane_id, res in lanes.items():
            vehicles = res.get(_VAR_VEHICLE_IDS)  # None on exit-only lanes
            if not vehicles:
                continue
            tls_ids = lane_tls.get(lane_id)
            if tls_ids is None:
                continue
            halting = res[_VAR_HALTING] * step_s
            nox = res[_VAR_NOX] * step_s
            for tls_id in tls_ids:
                acc = accs[tls_id]
                acc.halting_veh_s += halting
                acc.nox_mg += nox
                acc.vehicles.update(vehicles)
                cum_halting[tls_id] += halting
                cum_nox[tls_id] += nox
        self._interval_steps += 1
        interval = self._interval_s
        boundary = (math.floor(self._interval_begin / interval + 1e-9) + 1) * interval
        if time_s + 1e-9 >= boundary:
            self._close_interval(time_s)

    def _close_interval(self, time_s: float) -> None:
        steps = max(1, self._interval_steps)
        self._det_last = {
            d: (self._det_int_count[d], self._det_int_occ[d] / steps) for d in self._det_ids
        }
        self._last_measure = MeasurementSnapshot(
            field_time_s=time_s,
            interval_begin_s=self._interval_begin,
            interval_end_s=time_s,
            intersections={
                t: IntersectionMeasurement(
                    tls_id=t,
                    mean_wait_s=acc.halting_veh_s / len(acc.vehicles) if acc.vehicles else 0.0,
                    nox_mg=acc.nox_mg,
                    vehicles=len(acc.vehicles),
                    halting_veh_s=acc.halting_veh_s,
                )
                for t, acc in self._tls_acc.items()
            },
        )
        self._last_interval_end = time_s
        self._interval_begin = time_s
        self._interval_steps = 0
        self._det_int_count = dict.fromkeys(self._det_ids, 0)
        self._det_int_occ = dict.fromkeys(self._det_ids, 0.0)
        self._tls_acc = {t: _TlsAcc() for t in self.network.intersections}

    def detector_counts(self, time_s: float) -> DetectorSnapshot:
        """Cumulative counts and the last completed interval's count and occupancy."""
        readings = {}
        for det in self.network.detectors:
            last_count, last_occ = self._det_last.get(det.id, (0, 0.0))
            readings[det.id] = DetectorReading(
                detector_id=det.id,
                lane_id=det.lane_id,
                tls_id=det.tls_id,
                count=self._det_count[det.id],
                interval_count=last_count,
                occupancy=last_occ,
            )
        return DetectorSnapshot(
            field_time_s=time_s,
            interval_s=self._interval_s,
            interval_end_s=self._last_interval_end,
            readings=readings,
        )

    def counters(self, time_s: float) -> FieldCounters:
        """Cumulative approach halting, NOx and loop counts since the start."""
        return FieldCounters(
            field_time_s=time_s,
            halting_veh_s=dict(self._cum_halting),
            nox_mg=dict(self._cum_nox),
            detector_counts=dict(self._det_count),
        )

    def lane_halting(self, lane_id: str) -> int:
        """Vehicles halting on ``lane_id`` during the last step (0 before the first).

        Raises:
            ConfigError: ``lane_id`` is neither an approach nor an exit lane of a
                traffic light in the network.
        """
        res = self._lane_results.get(lane_id)
        if res is not None:
            return int(res[_VAR_HALTING])
        if lane_id not in self._halt_lanes:
            raise ConfigError(
                f"lane {lane_id!r} is not an approach or exit lane of a traffic light in "
                f"network {self.network.path.name}; the field tracks queues only there"
            )
        return 0

    def sensors(self, api: Any) -> LaneSensors:
        """The adaptive controllers' queue detectors for the step just collected.

        Read lazily from this step's lane subscription where it has the lane (no
        query to SUMO), else from SUMO.
        """
        return _SubscribedLanes(api, self._lane_results)

    def step_occupancy(self, detector_id: str) -> float:
        """Fraction of the last simulation step ``detector_id`` was occupied (0..1)."""
        return self._det_step_occ.get(detector_id, 0.0)

    def last_interval(self) -> MeasurementSnapshot | None:
        """The last completed interval's measurements (None before the first)."""
        return self._last_measure


class _SubscribedLanes(LaneSensors):
    """:class:`LaneSensors` that answer from a step's lane subscription first."""

    def __init__(self, api: Any, results: dict[str, dict[int, Any]]) -> None:
        super().__init__(api)
        self._results = results

    def vehicles(self, lane_id: str) -> int:
        """Vehicles on ``lane_id`` in the last step."""
        res = self._results.get(lane_id)
        ids = res.get(_VAR_VEHICLE_IDS) if res is not None else None
        return len(ids) if ids is not None else super().vehicles(lane_id)

    def halting(self, lane_id: str) -> int:
        """Vehicles halting on ``lane_id`` in the last step."""
        res = self._results.get(lane_id)
        return int(res[_VAR_HALTING]) if res is not None else super().halting(lane_id)
