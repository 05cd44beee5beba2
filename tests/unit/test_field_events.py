"""Event days without SUMO: the file's validation, the demand it writes, faulty loops' reports.

The runtime's loop bookkeeping is driven by a fake SUMO that reports scripted
vehicle ids per step (pure logic); the network files are only read.
"""

from __future__ import annotations

import pickle
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from configs.errors import ConfigError
from simulators.field.event_day import (
    EventDay,
    OdShift,
    RoadGraph,
    load_event_day,
    shipped_event_days,
)
from simulators.field.events import Closure, DayEvents, DetectorFault, noise_factor
from simulators.field.records import DetectorReading, DetectorSnapshot
from simulators.netbuild import district_paths

SCENARIOS = Path(__file__).resolve().parents[2] / "configs" / "scenarios"

BASE = """\
schema = "signaltwin.event-day/v1"
name = "t"
[field]
network = "district"
seed = 3
begin_s = 3600
duration_s = 1800
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "day.toml"
    path.write_text(text, encoding="utf-8")
    return path


# ------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("extra", "key", "hint"),
    [
        ("[[incident]]\nedge = 'n24_n34'\nfrom_s = 4000\nto_s = 4200\nlane = [1]\n",
         "incident[0].lane", "unknown key"),
        ("[[incident]]\nedge = 'nope'\nfrom_s = 4000\nto_s = 4200\n",
         "incident[0].edge", "not an edge"),
        ("[[incident]]\nedge = 'n24_n34'\nlanes = [0]\nfrom_s = 4000\nto_s = 4200\n",
         "incident[0].lanes", "vehicle lanes with indices [1, 2]"),
        ("[[incident]]\nedge = 'n24_n34'\nfrom_s = 4200\nto_s = 4000\n",
         "incident[0]", "must be before to_s"),
        ("[[incident]]\nedge = 'n24_n34'\nfrom_s = 3000\nto_s = 4000\n",
         "incident[0].from_s/to_s", "outside the day [3600, 5400]"),
        ("[[pulse]]\norigins = ['n24_n34']\ndestinations = ['n66_fN6']\nveh_per_h = 100\n"
         "from_s = 4000\nto_s = 4200\n", "pulse[0].origins", "not an origin"),
        ("[[pulse]]\norigins = ['fW1_n01']\ndestinations = ['fW1_n01']\nveh_per_h = 100\n"
         "from_s = 4000\nto_s = 4200\n", "pulse[0].destinations", "not a destination"),
        ("[[detector_fault]]\nkind = 'dead'\nshare = 1.5\nfrom_s = 4000\nto_s = 4200\n",
         "detector_fault[0].share", "less than or equal to 1"),
        ("[[detector_fault]]\nkind = 'dead'\nshare = 0.1\ndetectors = ['x']\n"
         "from_s = 4000\nto_s = 4200\n", "detector_fault[0]", "exactly one of"),
        ("[[detector_fault]]\nkind = 'stuck'\ndetectors = ['e1_nope']\n"
         "from_s = 4000\nto_s = 4200\n", "detector_fault[0].detectors", "not loops"),
        ("[[detector_fault]]\nkind = 'dead'\nshare = 0.1\nnoise = 0.2\n"
         "from_s = 4000\nto_s = 4200\n", "detector_fault[0]", "noisy"),
        ("[[od_shift]]\nat_s = 4000\nkind = 'reweight'\n", "od_shift[0]", "needs origins"),
        ("[[od_shift]]\nat_s = 4000\nkind = 'reweight'\norigins = { nope = 2.0 }\n",
         "od_shift[0].origins", "not origins of the profile"),
        ("[[od_shift]]\nat_s = 4000\nkind = 'sideways'\n", "od_shift[0].kind", "reverse"),
    ],
)  # fmt: skip
def test_validation_errors_name_the_file_the_key_and_the_fix(
    tmp_path: Path, extra: str, key: str, hint: str
) -> None:
    path = _write(tmp_path, BASE + extra)
    with pytest.raises(ConfigError) as info:
        load_event_day(path)
    message = str(info.value)
    assert str(path) in message
    assert key in message
    assert hint in message


def test_file_level_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such event day file"):
        load_event_day(tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match=r"schema = 'v0': expected 'signaltwin.event-day/v1'"):
        load_event_day(_write(tmp_path, BASE.replace("signaltwin.event-day/v1", "v0")))
    with pytest.raises(ConfigError, match=r"field\.seeed = 1: unknown key"):
        load_event_day(_write(tmp_path, BASE + "seeed = 1\n"))
    with pytest.raises(ConfigError, match=r"field\.network"):
        load_event_day(_write(tmp_path, BASE.replace('"district"', '"no/such.net.xml"')))
    routes = BASE + "demand = 'routes.rou.xml'\n[[od_shift]]\nat_s = 4000\nkind = 'reverse'\n"
    (tmp_path / "routes.rou.xml").write_text("<routes/>\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"od_shift\[0\]: an OD shift redraws a profile"):
        load_event_day(_write(tmp_path, routes))


def test_the_shipped_days() -> None:
    names = {p.stem for p in shipped_event_days()}
    assert {"district-incident", "district-event", "district-pm-shift"} <= names
    assert any(not n.startswith("district") for n in names)  # a real-city network too


@pytest.mark.parametrize("path", shipped_event_days(), ids=lambda p: p.stem)
def test_every_shipped_day_loads(path: Path) -> None:
    day = load_event_day(path)
    assert day.name == path.stem
    assert 1800 <= day.duration_s <= 3600  # a day the fidelity benchmark can afford
    assert day.closures or day.pulses or day.od_shifts or day.faults


def test_whole_edge_means_every_vehicle_lane_and_share_picks_are_seeded(tmp_path: Path) -> None:
    text = BASE + (
        "[[incident]]\nedge = 'n24_n34'\nfrom_s = 4000\nto_s = 4200\n"
        "[[detector_fault]]\nkind = 'dead'\nshare = 0.05\nfrom_s = 4000\nto_s = 4200\n"
    )
    day = load_event_day(_write(tmp_path, text))
    assert day.closures == (Closure("n24_n34", ("n24_n34_1", "n24_n34_2"), True, 4000, 4200),)
    again = load_event_day(_write(tmp_path, text))
    other = load_event_day(_write(tmp_path, text.replace("seed = 3", "seed = 4")))
    assert len(day.faults[0].detector_ids) == round(0.05 * 244)
    assert day.faults == again.faults
    assert day.faults != other.faults


# ----------------------------------------------------------------- demand


def _trips(paths: tuple[Path, ...]) -> list[tuple[str, float, str, str]]:
    out = []
    for path in paths:
        for elem in ET.parse(path).getroot().iter("trip"):
            out.append((elem.get("id", ""), float(elem.get("depart", "0")),
                        elem.get("from", ""), elem.get("to", "")))  # fmt: skip
    return out


def _day(tmp_path: Path, extra: str = "") -> EventDay:
    return load_event_day(_write(tmp_path, BASE + extra))


def test_reverse_shift_turns_the_trips_after_it_around(tmp_path: Path) -> None:
    plain = _day(tmp_path)
    shifted = replace(plain, od_shifts=(OdShift("reverse", 4500.0, 0.0),))
    before = {t[0]: t for t in _trips(plain.write_demand(tmp_path / "a"))}
    after = {t[0]: t for t in _trips(shifted.write_demand(tmp_path / "b"))}
    assert before.keys() == after.keys()
    graph = RoadGraph.load(district_paths()["net"])
    for trip_id, (_, depart, origin, dest) in before.items():
        shifted_trip = after[trip_id]
        if depart < 4500:
            assert shifted_trip == before[trip_id]
        else:
            assert shifted_trip[2:] == (graph.opposite[dest], graph.opposite[origin])


def test_reweight_shift_changes_the_drawn_od_pattern(tmp_path: Path) -> None:
    west = {f"fW{j}_n0{j}": 5.0 for j in range(7)}
    shifted = replace(
        _day(tmp_path), od_shifts=(OdShift("reweight", 4500.0, 300.0, tuple(west.items())),)
    )
    trips = _trips(shifted.write_demand(tmp_path / "w"))

    def west_share(lo: float, hi: float) -> float:
        origins = Counter(o for _, t, o, _ in trips if lo <= t < hi)
        return sum(n for o, n in origins.items() if o in west) / sum(origins.values())

    # district weights: the 7 west entries hold 9 of 36 weight units (0.25); x5 -> 45/72
    assert west_share(3600, 4500) == pytest.approx(0.25, abs=0.06)
    assert west_share(4800, 5400) == pytest.approx(45 / 72, abs=0.06)
    assert 0.25 + 0.05 < west_share(4500, 4800) < 45 / 72  # phased in over 300 s
    assert shifted.write_demand(tmp_path / "w2")[0].read_bytes() == (
        (tmp_path / "w" / "t-s3.rou.xml").read_bytes()
    )


def test_pulse_adds_poisson_trips_between_its_zones(tmp_path: Path) -> None:
    extra = (
        "[[pulse]]\norigins = ['fW1_n01', 'fS2_n20']\ndestinations = ['n66_fN6', 'n65_fE5']\n"
        "veh_per_h = 1200\nfrom_s = 4200\nto_s = 4800\n"
    )
    trips = _trips(_day(tmp_path, extra).write_demand(tmp_path / "p"))
    pulse = [t for t in trips if t[0].startswith("pulse")]
    assert 200 - 3 * 200**0.5 < len(pulse) < 200 + 3 * 200**0.5
    assert all(4200 <= t < 4800 for _, t, _, _ in pulse)
    assert {o for _, _, o, _ in pulse} == {"fW1_n01", "fS2_n20"}
    assert {d for _, _, _, d in pulse} == {"n66_fN6", "n65_fE5"}
    departs = [t for _, t, _, _ in trips]
    assert departs == sorted(departs)  # SUMO reads a routes file in departure order


# ------------------------------------------------------------ faulty loops


class _Loops:
    """A fake ``inductionloop`` domain: scripted vehicle ids per loop and step."""

    def __init__(self) -> None:
        self.now: dict[str, tuple[list[str], float]] = {}

    def getSubscriptionResults(self, det_id: str) -> dict[int, Any]:  # noqa: N802 - SUMO's name
        ids, occ = self.now.get(det_id, ([], 0.0))
        return {0x12: ids, 0x13: occ}


class _Api:
    def __init__(self) -> None:
        self.inductionloop = _Loops()


class _Truth:
    """The field's own count of the same loops (the algorithm of FieldMeasurements)."""

    def __init__(self, dets: tuple[str, ...], interval_s: int, begin_s: float) -> None:
        self.dets, self.interval_s = dets, interval_s
        self.count = dict.fromkeys(dets, 0)
        self.interval = dict.fromkeys(dets, 0)
        self.occ = dict.fromkeys(dets, 0.0)
        self.prev: dict[str, frozenset[str]] = {d: frozenset() for d in dets}
        self.last: dict[str, tuple[int, float]] = {}
        self.last_end: float | None = None
        self.begin, self.steps = begin_s, 0

    def collect(self, now: dict[str, tuple[list[str], float]], time_s: float) -> None:
        for d in self.dets:
            ids, occ = now.get(d, ([], 0.0))
            new = len(frozenset(ids) - self.prev[d])
            self.prev[d] = frozenset(ids)
            self.count[d] += new
            self.interval[d] += new
            self.occ[d] += occ / 100.0
        self.steps += 1
        if time_s >= (self.begin // self.interval_s + 1) * self.interval_s:
            self.last = {d: (self.interval[d], self.occ[d] / self.steps) for d in self.dets}
            self.interval = dict.fromkeys(self.dets, 0)
            self.occ = dict.fromkeys(self.dets, 0.0)
            self.last_end, self.begin, self.steps = time_s, time_s, 0

    def snapshot(self, time_s: float) -> DetectorSnapshot:
        return DetectorSnapshot(
            field_time_s=time_s,
            interval_s=self.interval_s,
            interval_end_s=self.last_end,
            readings={
                d: DetectorReading(d, "lane", None, self.count[d], *self.last.get(d, (0, 0.0)))
                for d in self.dets
            },
        )


DETS = ("dead", "stuck", "noisy", "fine")


def _play(events: DayEvents, until_s: float) -> list[tuple[DetectorSnapshot, DetectorSnapshot]]:
    """Step a fake day from t=0; (truth, report) after every step."""
    api, truth = _Api(), _Truth(DETS, events.interval_s, 0.0)
    events.start(api, 0.0)
    out = []
    t = 0.0
    while t < until_s:
        t += 1.0
        step = int(t)
        # a vehicle every 3 s on each loop, every 2 s after t = 180
        period = 2 if step > 180 else 3
        api.inductionloop.now = {d: ([f"{d}{step // period}"], 40.0) for d in DETS}
        truth.collect(api.inductionloop.now, t)
        events.step(api, t)
        out.append((truth.snapshot(t), events.report(truth.snapshot(t))))
    return out


def _faults() -> DayEvents:
    return DayEvents(
        faults=(
            DetectorFault(("dead",), "dead", 120.0, 360.0),
            DetectorFault(("stuck",), "stuck", 120.0, 480.0),
            DetectorFault(("noisy",), "noisy", 60.0, 600.0, noise=0.5),
        ),
        interval_s=60,
        seed=7,
    )


def test_faulty_loops_report_as_specified_and_the_rest_is_true() -> None:
    played = _play(_faults(), 720.0)
    at = {int(true.field_time_s): (true, rep) for true, rep in played}
    true, rep = at[300]  # interval (240, 300]: inside every fault
    assert rep.readings["fine"] == true.readings["fine"]
    assert rep.readings["dead"].interval_count == 0
    assert rep.readings["dead"].occupancy == 0.0
    # dead since 120: its count stopped there
    assert rep.readings["dead"].count == at[120][0].readings["dead"].count
    # stuck: the interval that ended at 120 (20 vehicles, 3 s apart) repeats
    assert at[120][0].readings["stuck"].interval_count == 20
    assert rep.readings["stuck"].interval_count == 20
    assert true.readings["stuck"].interval_count == 30  # a vehicle every 2 s by now
    assert rep.readings["stuck"].count == at[120][0].readings["stuck"].count + 3 * 20
    factor = noise_factor(7, "noisy", 300.0, 0.5)
    assert rep.readings["noisy"].interval_count == round(30 * factor)
    # after the faults the loops count true again (from where they were)
    end_true, end_rep = at[720]
    for det in ("dead", "stuck", "noisy"):
        assert end_rep.readings[det].interval_count == end_true.readings[det].interval_count
        grew = end_rep.readings[det].count - at[660][1].readings[det].count
        assert grew == end_true.readings[det].count - at[660][0].readings[det].count


def test_fault_reports_are_monotone_and_repeatable() -> None:
    events = _faults()
    played = _play(events, 720.0)
    for det in DETS:
        counts = [rep.readings[det].count for _, rep in played]
        assert counts == sorted(counts), det
    # the same snapshot read twice, and the same day played by a pickled copy, agree
    last_true, last_rep = played[-1]
    assert events.report(last_true) == last_rep == events.report(last_true)
    copy = pickle.loads(pickle.dumps(_faults()))
    assert [rep for _, rep in _play(copy, 720.0)] == [rep for _, rep in played]


def test_noise_factor_is_deterministic_with_mean_one() -> None:
    assert noise_factor(1, "d", 120.0, 0.3) == noise_factor(1, "d", 120.0, 0.3)
    assert noise_factor(1, "d", 120.0, 0.3) != noise_factor(1, "d", 180.0, 0.3)
    factors = [noise_factor(1, "d", 60.0 * k, 0.3) for k in range(4000)]
    mean = sum(factors) / len(factors)
    sd = (sum((f - mean) ** 2 for f in factors) / len(factors)) ** 0.5
    assert mean == pytest.approx(1.0, abs=0.02)
    assert sd == pytest.approx(0.3, abs=0.02)
    assert noise_factor(1, "d", 60.0, 0.0) == 1.0


def test_report_refuses_another_interval() -> None:
    events = _faults()
    events.start(_Api(), 0.0)
    snapshot = DetectorSnapshot(0.0, 300, None, {})
    with pytest.raises(Exception, match="built for 60 s detector intervals"):
        events.report(snapshot)


def test_scenario_check_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from controller.cli import run

    assert run(["scenario", "check", str(SCENARIOS / "district-incident.toml")]) == 0
    out = capsys.readouterr().out
    assert "closure  n24_n34_1: 4500-5700 s" in out
    assert "closure  edge n31_n32: 5400-6300 s" in out
    bad = _write(tmp_path, BASE + "[[pulse]]\n")
    assert run(["scenario", "check", str(bad)]) == 2
    assert "pulse[0].origins = (missing): required key is missing" in capsys.readouterr().err
