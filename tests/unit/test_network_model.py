"""Network model, detectors, demand profile and plan phase maths (no SUMO run needed)."""

from __future__ import annotations

import gzip
import re
import shutil
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from configs.errors import ConfigError
from configs.safety import check_intersection
from configs.timing import IntersectionTiming, PhasePlan, SafetyLimits
from simulators.netbuild import (
    DISTRICT_DIR,
    DemandProfile,
    check_district,
    district_paths,
    expand_demand,
    strip_generated_header,
)
from simulators.network import (
    NetworkModel,
    ensure_detectors,
    load_network,
    read_detectors,
    write_detectors,
)
from simulators.signal_program import phase_at
from simulators.sumo import sumo_home

DISTRICT = district_paths()
FOREIGN_NET = sumo_home() / "tools" / "game" / "grid6" / "grid6.net.xml"


@pytest.fixture(scope="module")
def district() -> NetworkModel:
    return load_network(DISTRICT["net"], DISTRICT["det"])


def test_district_has_about_47_signalised_intersections(district: NetworkModel) -> None:
    assert 40 <= len(district.intersections) <= 60
    assert len(district.intersections) == 47
    assert district.id == "district"
    assert len(district.sha256) == 64


def test_district_base_programs_are_safe_with_yellow_and_all_red(district: NetworkModel) -> None:
    limits = SafetyLimits()
    ped_phases = 0
    for tls_id, inter in district.intersections.items():
        base = inter.base
        kinds = [p.kind for p in base.phases]
        assert "yellow" in kinds and "red" in kinds, tls_id
        assert all(p.duration_s >= 3 for p in base.phases if p.kind == "yellow")
        assert all(p.duration_s >= 1 for p in base.phases if p.kind == "red")
        plan = IntersectionTiming.from_base(base)
        assert check_intersection(tls_id, plan, base, limits) == []
        ped_phases += sum(p.serves_pedestrians for p in base.phases)
        # every pedestrian phase gives a crossing link green
        for p in base.phases:
            if p.serves_pedestrians:
                assert any(p.state[i] in "Gg" for i in inter.pedestrian_links)
    assert ped_phases > 0


def test_arterials_have_two_lanes_and_collectors_one(district: NetworkModel) -> None:
    def vehicle_lanes(edge: str) -> int:
        return sum(district.lanes[lane].vehicles for lane in district.edges[edge])

    assert vehicle_lanes("n21_n22") == 2  # column 2 is an arterial
    assert vehicle_lanes("n01_n11") == 2  # row 1 is an arterial
    assert vehicle_lanes("n30_n31") == 1  # collector
    assert district.lanes["n21_n22_1"].speed_mps > district.lanes["n30_n31_0"].speed_mps


def test_every_incoming_vehicle_lane_has_a_loop_30m_before_the_stop_line(
    district: NetworkModel,
) -> None:
    by_tls = district.detectors_by_intersection()
    for tls_id, inter in district.intersections.items():
        lanes = {d.lane_id for d in by_tls[tls_id]}
        assert lanes == set(inter.incoming_lanes), tls_id
        for det in by_tls[tls_id]:
            length = district.lanes[det.lane_id].length_m
            assert det.pos_m == pytest.approx(length - 30.0, abs=0.01)
    assert all(not district.lanes[d.lane_id].id.startswith(":") for d in district.detectors)


def test_geometry_covers_every_lane_within_bounds(district: NetworkModel) -> None:
    geometry = district.geometry()
    xmin, ymin, xmax, ymax = district.bounds
    assert set(geometry) == set(district.lanes)
    for shape in geometry.values():
        assert len(shape) >= 2
        for x, y in shape:
            assert xmin - 5 <= x <= xmax + 5 and ymin - 5 <= y <= ymax + 5
    assert set(district.edge_geometry()) == set(district.edges)


def test_foreign_network_loads_and_gets_generated_detectors(tmp_path: Path) -> None:
    model = load_network(FOREIGN_NET)
    assert model.detectors == ()
    det = ensure_detectors(FOREIGN_NET, tmp_path / "loops.add.xml")
    with_dets = load_network(FOREIGN_NET, det)
    assert len(model.intersections) == 6
    for tls_id, inter in with_dets.intersections.items():
        assert {d.lane_id for d in with_dets.detectors_by_intersection()[tls_id]} == set(
            inter.incoming_lanes
        )
    # a second call keeps the existing file
    before = det.read_bytes()
    assert ensure_detectors(FOREIGN_NET, det) == det
    assert det.read_bytes() == before


def test_gzipped_network_loads(tmp_path: Path) -> None:
    gz = tmp_path / "grid.net.xml.gz"
    gz.write_bytes(gzip.compress(FOREIGN_NET.read_bytes()))
    model = load_network(gz)
    assert model.id == "grid"
    assert len(model.intersections) == 6


def test_missing_network_names_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.net.xml"
    with pytest.raises(ConfigError, match="nope.net.xml"):
        load_network(missing)


def test_corrupt_network_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.net.xml"
    bad.write_text("<net><edge id='a'>")
    with pytest.raises(ConfigError, match=r"bad\.net\.xml.*well-formed"):
        load_network(bad)


def test_not_a_network(tmp_path: Path) -> None:
    other = tmp_path / "routes.net.xml"
    other.write_text("<routes/>")
    with pytest.raises(ConfigError, match="not a SUMO network"):
        load_network(other)


def test_network_without_traffic_lights_is_refused(tmp_path: Path) -> None:
    plain = tmp_path / "plain.net.xml"
    plain.write_text(
        '<net version="1.20"><location convBoundary="0,0,10,0"/>'
        '<edge id="a" from="x" to="y"><lane id="a_0" index="0" speed="10" length="10" '
        'shape="0,0 10,0"/></edge></net>'
    )
    with pytest.raises(ConfigError, match=r"plain\.net\.xml has no traffic lights"):
        load_network(plain)


def test_detectors_of_another_network_are_refused(tmp_path: Path) -> None:
    foreign_dets = write_detectors(FOREIGN_NET, tmp_path / "g.add.xml")
    with pytest.raises(ConfigError, match="does not have"):
        read_detectors(foreign_dets, load_network(DISTRICT["net"]))


def test_cache_rereads_an_edited_file(tmp_path: Path) -> None:
    net = tmp_path / "g.net.xml"
    shutil.copy(FOREIGN_NET, net)
    first = load_network(net)
    assert load_network(net) is first
    net.write_bytes(net.read_bytes().replace(b'duration="', b'duration="1', 1))
    second = load_network(net)
    assert second.sha256 != first.sha256


def test_strip_generated_header_removes_build_comment() -> None:
    data = (
        b'<?xml version="1.0" encoding="UTF-8"?>\n\n<!-- generated on 2026-01-01 by '
        b"netconvert\n<configuration><input>/home/x</input></configuration>\n-->\n\n<net/>\n"
    )
    assert strip_generated_header(data) == b'<?xml version="1.0" encoding="UTF-8"?>\n\n<net/>\n'


def test_committed_district_matches_digests() -> None:
    assert check_district(DISTRICT_DIR) == []


def test_tampered_district_is_reported(tmp_path: Path) -> None:
    copy = tmp_path / "district"
    shutil.copytree(DISTRICT_DIR, copy)
    (copy / "district.rou.xml").write_text("<routes/>")
    (copy / "district.sumocfg").unlink()
    problems = check_district(copy)
    assert any("district.rou.xml: sha256 differs" in p for p in problems)
    assert any("district.sumocfg: missing" in p for p in problems)


def test_demand_profile_fleet_and_peak() -> None:
    profile = DemandProfile.load(DISTRICT["demand"])
    assert sum(f.share for f in profile.fleet) == pytest.approx(1.0)
    assert all(f.emission_class.startswith("HBEFA4/") for f in profile.fleet)
    assert {f.vclass for f in profile.fleet} >= {"passenger", "delivery", "truck"}
    peak = max(profile.shape)
    assert profile.shape[0] < peak and profile.shape[-1] < peak
    assert profile.duration_s >= 2 * 3600


def test_demand_expansion_is_seeded(tmp_path: Path) -> None:
    profile = DemandProfile.load(DISTRICT["demand"])
    a = expand_demand(profile, 7, tmp_path / "a.rou.xml").read_bytes()
    b = expand_demand(profile, 7, tmp_path / "b.rou.xml").read_bytes()
    c = expand_demand(profile, 8, tmp_path / "c.rou.xml").read_bytes()
    assert a == b
    assert a != c
    assert a.count(b"<trip ") == pytest.approx(c.count(b"<trip "), rel=0.1)
    half = expand_demand(profile, 7, tmp_path / "h.rou.xml", scale=0.5).read_bytes()
    assert half.count(b"<trip ") == pytest.approx(a.count(b"<trip ") / 2, rel=0.1)


def test_malformed_profile_names_the_key(tmp_path: Path) -> None:
    bad = tmp_path / "p.json"
    bad.write_text('{"bin_s": 900}')
    with pytest.raises(ConfigError, match="p.json"):
        DemandProfile.load(bad)


def _plan(durations: list[int], offset: int) -> IntersectionTiming:
    states = ["GGrr", "yyrr", "rrrr", "rrGG", "rryy", "rrrr"][: len(durations)]
    return IntersectionTiming(
        mode="fixed",
        cycle_s=sum(durations),
        offset_s=offset,
        phases=tuple(
            PhasePlan(state=s, duration_s=d) for s, d in zip(states, durations, strict=True)
        ),
    )


def test_phase_at_honours_offset() -> None:
    plan = _plan([30, 4, 2, 30, 4, 2], offset=10)
    assert phase_at(plan, 10) == (0, 30)
    assert phase_at(plan, 9) == (5, 1)
    assert phase_at(plan, 45) == (2, 1)
    assert phase_at(plan, 47) == (3, 29)
    assert phase_at(plan, 10 + 72 * 5 + 34) == (2, 2)


@given(
    durations=st.lists(st.integers(1, 60), min_size=6, max_size=6),
    offset=st.integers(0, 359),
    t=st.floats(0, 1e6),
)
def test_phase_at_is_consistent(durations: list[int], offset: int, t: float) -> None:
    plan = _plan(durations, offset % sum(durations))
    index, remaining = phase_at(plan, t)
    assert 0 < remaining <= durations[index] + 1e-6
    # one step before the phase ends we are still in it; at its end we move on
    nxt, _ = phase_at(plan, t + remaining)
    assert nxt == (index + 1) % len(durations) or durations[(index + 1) % 6] == 0


def test_unusable_light_is_left_out_and_named(tmp_path: Path) -> None:
    text = FOREIGN_NET.read_text()
    head, sep, tail = text.partition("<tlLogic ")
    logic_end = tail.index("</tlLogic>")
    odd = tail[:logic_end].replace('duration="', 'duration="9999', 1)
    net = tmp_path / "odd.net.xml"
    net.write_text(head + sep + odd + tail[logic_end:])
    model = load_network(net)
    assert len(model.intersections) == 5
    (tls_id, reason), *_ = model.unsupported.items()
    assert tls_id not in model.intersections
    assert "cannot be a base program" in reason and "duration_s" in reason


def test_demand_repeats_the_profile_back_to_back(tmp_path: Path) -> None:
    profile = DemandProfile.load(DISTRICT["demand"])
    once = expand_demand(profile, 3, tmp_path / "1.rou.xml").read_text()
    twice = expand_demand(profile, 3, tmp_path / "2.rou.xml", repeat=2).read_text()
    assert twice.count("<trip ") == pytest.approx(2 * once.count("<trip "), rel=0.05)
    departs = [float(x) for x in re.findall(r'depart="([0-9.]+)"', twice)]
    assert max(departs) > profile.duration_s
    assert departs == sorted(departs)
    with pytest.raises(ConfigError, match="repeat"):
        expand_demand(profile, 3, tmp_path / "0.rou.xml", repeat=0)
