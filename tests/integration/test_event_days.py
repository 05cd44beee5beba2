"""Event days on real SUMO: closures, pulses and faulty loops in the field, and a fork's restart.

Each test compares the same day (same demand files, same seed) with and without
one event, so the difference is the event's. Fields run one at a time on the
libsumo backend (one simulation per process). The kuehne network (the wheel's
``tools/game/kuehne``) steps a whole day in a few seconds; the district's
tests play a shortened peak.
"""

from __future__ import annotations

import pickle
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from simulators.field import FieldConfig, FieldCounters, FieldEmulator
from simulators.field.event_day import EventDay, load_event_day
from simulators.field.events import Closure, DayEvents

pytestmark = pytest.mark.integration

SCENARIOS = Path(__file__).resolve().parents[2] / "configs" / "scenarios"


def _play(
    config: FieldConfig, marks: tuple[float, ...], at_mark: Callable[[FieldEmulator], None] = print
) -> tuple[list[FieldCounters], FieldEmulator]:
    """Run ``config`` to each mark in turn; the counters read there and the closed field."""
    seen = []
    with FieldEmulator(config) as field:
        for mark in marks:
            field.step_until(mark)
            seen.append(field.counters())
            at_mark(field)
    return seen, field


def _nothing(field: FieldEmulator) -> None:
    del field


def _district_day(closure: Closure, end_s: int) -> EventDay:
    day = load_event_day(SCENARIOS / "district-incident.toml")
    return replace(day, begin_s=4200, duration_s=end_s - 4200, closures=(closure,))


@pytest.mark.slow
def test_a_lane_closure_lowers_its_flow_and_raises_halting_upstream(tmp_path: Path) -> None:
    day = _district_day(Closure("n24_n34", ("n24_n34_1",), False, 4500.0, 5400.0), 5400)
    marks = (4500.0, 5400.0)
    closed, _ = _play(day.field_config(tmp_path / "closed"), marks, _nothing)
    plain, _ = _play(replace(day, closures=()).field_config(tmp_path / "open"), marks, _nothing)
    with_incident = closed[1].window_since(closed[0])
    without = plain[1].window_since(plain[0])
    # before the closure the two days are the same city
    assert closed[0].halting_veh_s == plain[0].halting_veh_s
    lane, other = "e1_n24_n34_1", "e1_n24_n34_2"
    assert with_incident.detector_counts[lane] < 0.1 * without.detector_counts[lane]
    assert without.detector_counts[lane] > 25
    assert with_incident.detector_counts[other] > without.detector_counts[other]
    # the queue behind the breakdown: halting on the approach the closed lane is part of
    # (minus the broken-down vehicle's own 900 s) at least doubles
    approach = frozenset({"n34"})
    assert with_incident.wait_veh_s(approach) - 900 > 2 * without.wait_veh_s(approach)


@pytest.mark.slow
def test_an_edge_closure_reroutes_and_the_city_recovers(tmp_path: Path) -> None:
    # both lanes of a main approach closed for eight minutes of the peak
    lanes = ("n24_n34_1", "n24_n34_2")
    day = _district_day(Closure("n24_n34", lanes, True, 4500.0, 4980.0), 5580)
    marks = (4560.0, 4980.0, 5280.0, 5580.0)
    counts: list[tuple[int, int]] = []
    closed, _ = _play(
        day.field_config(tmp_path / "closed"), marks, lambda f: counts.append(f.vehicle_counts())
    )
    plain_counts: list[tuple[int, int]] = []
    plain, _ = _play(
        replace(day, closures=()).field_config(tmp_path / "open"),
        marks,
        lambda f: plain_counts.append(f.vehicle_counts()),
    )
    during = closed[1].window_since(closed[0]).detector_counts
    after = closed[3].window_since(closed[1]).detector_counts
    plain_after = plain[3].window_since(plain[1]).detector_counts
    loops = [f"e1_{lane}" for lane in lanes]
    assert sum(during[d] for d in loops) <= 5  # nothing enters a closed edge
    # and traffic uses it again once it reopens
    assert sum(plain_after[d] for d in loops) > 20
    assert sum(after[d] for d in loops) > 0.6 * sum(plain_after[d] for d in loops)
    # no gridlock: 10 minutes after reopening the district holds about what it
    # holds without the incident, and nobody is stuck waiting to enter
    (running, pending), (plain_running, _) = counts[-1], plain_counts[-1]
    assert running < 1.25 * plain_running + 20
    assert pending < 20


def test_faulty_loops_change_the_reports_not_the_truth(tmp_path: Path) -> None:
    day = load_event_day(SCENARIOS / "kuehne-event.toml")
    assert day.faults
    marks = (2400.0, 3600.0, 5400.0)
    faulty, _ = _play(day.field_config(tmp_path / "faulty"), marks, _nothing)
    clean, _ = _play(replace(day, faults=()).field_config(tmp_path / "clean"), marks, _nothing)
    bad = {d for f in day.faults for d in f.detector_ids}
    for got, true in zip(faulty, clean, strict=True):
        assert got.halting_veh_s == true.halting_veh_s
        assert got.nox_mg == true.nox_mg
        for det, count in true.detector_counts.items():
            if det not in bad:
                assert got.detector_counts[det] == count
    differ = [d for d in bad if faulty[-1].detector_counts[d] != clean[-1].detector_counts[d]]
    assert len(differ) >= len(bad) - 1


def _tripinfo(path: Path) -> dict[str, tuple[str, str, bool]]:
    """Vehicle id -> (depart edge, arrival edge, arrived)."""
    out = {}
    for elem in ET.parse(path).getroot().iter("tripinfo"):
        depart = elem.get("departLane", "").rsplit("_", 1)[0]
        arrival = elem.get("arrivalLane", "").rsplit("_", 1)[0]
        out[elem.get("id", "")] = (depart, arrival, not elem.get("arrival", "-1").startswith("-"))
    return out


def test_a_pulse_adds_trips_between_its_zones(tmp_path: Path) -> None:
    day = replace(load_event_day(SCENARIOS / "kuehne-event.toml"), closures=(), faults=())
    (pulse,) = day.pulses
    _, with_pulse = _play(day.field_config(tmp_path / "pulse"), (float(day.end_s),), _nothing)
    _, without = _play(
        replace(day, pulses=()).field_config(tmp_path / "plain"), (float(day.end_s),), _nothing
    )
    trips = _tripinfo(tmp_path / "pulse" / "tripinfo.xml")
    extra = {v: t for v, t in trips.items() if v.startswith("pulse")}
    expected = pulse.veh_per_h * (pulse.to_s - pulse.from_s) / 3600.0
    assert abs(len(extra) - expected) < 3 * expected**0.5
    added = with_pulse.trip_statistics().vehicles - without.trip_statistics().vehicles
    assert added == len(extra)
    arrived = [t for t in extra.values() if t[2]]
    assert len(arrived) > 0.9 * len(extra)
    assert all(o in pulse.origins and d in pulse.destinations for o, d, _ in arrived)


def test_a_fork_from_a_saved_state_closes_the_lanes_again(tmp_path: Path) -> None:
    import libsumo

    day = replace(load_event_day(SCENARIOS / "kuehne-event.toml"), faults=())
    (closure,) = day.closures
    config = day.field_config(tmp_path / "field")
    assert isinstance(config.events, DayEvents)
    state = tmp_path / "state.xml.gz"
    with FieldEmulator(config) as field:
        field.step_until(3000.0)
        assert libsumo.lane.getAllowed(closure.lane_ids[0]) == ()
        field.save_state(state)
    events = pickle.loads(pickle.dumps(config.events))
    fork = replace(
        config,
        begin_s=3000,
        work_dir=tmp_path / "fork",
        extra_args=(*config.extra_args, "--load-state", str(state)),
        events=events,
    )
    with FieldEmulator(fork) as shadow:
        assert shadow.field_time_s == 3000.0
        assert shadow.vehicle_counts()[0] > 0  # the city's vehicles, not an empty net
        assert libsumo.lane.getAllowed(closure.lane_ids[0]) == ()
        before = shadow.counters().detector_counts["e1_A0B0_0"]
        shadow.step_until(closure.to_s - 1)
        assert shadow.counters().detector_counts["e1_A0B0_0"] - before <= 2
        shadow.step_until(closure.to_s + 600)
        assert libsumo.lane.getAllowed(closure.lane_ids[0]) != ()
        assert shadow.counters().detector_counts["e1_A0B0_0"] - before > 20


def test_a_fork_keeps_one_breakdown_and_removes_it_at_the_end(tmp_path: Path) -> None:
    import libsumo

    closure = Closure("n24_n34", ("n24_n34_1",), False, 4300.0, 4500.0)
    day = _district_day(closure, 4600)
    config = day.field_config(tmp_path / "field")
    state = tmp_path / "state.xml.gz"
    with FieldEmulator(config) as field:
        field.step_until(4400.0)
        blockers = [v for v in libsumo.vehicle.getIDList() if "incident" in v]
        assert len(blockers) == 1
        assert libsumo.vehicle.getLaneID(blockers[0]) == "n24_n34_1"
        assert libsumo.vehicle.getNOxEmission(blockers[0]) == 0.0  # it counts no NOx
        field.save_state(state)
    fork = replace(
        config,
        begin_s=4400,
        work_dir=tmp_path / "fork",
        extra_args=(*config.extra_args, "--load-state", str(state)),
        events=pickle.loads(pickle.dumps(config.events)),
    )
    with FieldEmulator(fork) as shadow:
        shadow.step()
        assert [v for v in libsumo.vehicle.getIDList() if "incident" in v] == blockers
        assert libsumo.vehicle.getSpeed(blockers[0]) == 0.0
        shadow.step_until(closure.to_s + 1)
        assert not [v for v in libsumo.vehicle.getIDList() if "incident" in v]
