"""The departure window of SUMO demand files (simulators.routes): pure parsing, no SUMO."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from configs.errors import ConfigError
from simulators.routes import clock, parse_time, read_routes_window


def _write(path: Path, body: str) -> Path:
    path.write_text(f"<routes>\n{body}\n</routes>\n", encoding="utf-8")
    return path


def test_vehicles_trips_and_persons_give_the_window(tmp_path: Path) -> None:
    routes = _write(
        tmp_path / "am.rou.xml",
        '<vType id="car"/>\n'
        '<vehicle id="a" depart="25200.00" route="r"/>\n'
        '<trip id="b" depart="7:30:00" from="e1" to="e2"/>\n'
        '<person id="p" depart="28799"><walk edges="e1 e2"/></person>\n'
        '<container id="c" depart="triggered"/>\n',
    )
    window = read_routes_window(routes)
    assert (window.begin_s, window.end_s) == (25200.0, 28799.0)
    assert window.vehicles == 3 and window.untimed == 1 and window.flows == 0
    assert window.expected_departures(0, 1200) == 0
    assert window.expected_departures(25200, 27000 + 1) == 2
    assert window.describe() == "07:00:00-07:59:59 (25200-28799 s)"


def test_flows_count_by_rate_and_number(tmp_path: Path) -> None:
    routes = _write(
        tmp_path / "flows.rou.xml",
        '<flow id="p" from="a" to="b" begin="25200" end="28800" period="30"/>\n'
        '<flow id="h" from="a" to="b" begin="25200" end="28800" vehsPerHour="360"/>\n'
        '<flow id="n" from="a" to="b" begin="27000" end="28800" number="90"/>\n'
        '<flow id="x" from="a" to="b" begin="25200" end="28800" period="exp(0.01)"/>\n'
        '<personFlow id="q" begin="25200" end="26200" probability="0.1"/>\n',
    )
    window = read_routes_window(routes)
    assert (window.begin_s, window.end_s) == (25200.0, 28800.0)
    assert window.flows == 5 and window.vehicles == 0
    # one hour: 120 + 360 + 90 + 36 + 100
    assert window.expected_departures(25200, 28800) == pytest.approx(706.0)
    assert window.expected_departures(0, 25200) == 0.0
    assert window.expected_departures(27000, 27900) == pytest.approx(30 + 90 + 45 + 9)


def test_flow_without_end_ends_when_its_number_is_out(tmp_path: Path) -> None:
    routes = _write(
        tmp_path / "n.rou.xml", '<flow id="n" from="a" to="b" begin="100" period="10" number="5"/>'
    )
    window = read_routes_window(routes)
    assert (window.begin_s, window.end_s) == (100.0, 150.0)
    assert window.expected_departures(0, 1000) == pytest.approx(5.0)


def test_gzip_and_several_files(tmp_path: Path) -> None:
    first = _write(tmp_path / "a.rou.xml", '<vehicle id="a" depart="3600" route="r"/>')
    second = tmp_path / "b.rou.xml.gz"
    with gzip.open(second, "wt", encoding="utf-8") as fh:
        fh.write('<routes><vehicle id="b" depart="7200" route="r"/></routes>')
    window = read_routes_window([first, second])
    assert (window.begin_s, window.end_s, window.vehicles) == (3600.0, 7200.0, 2)


def test_an_empty_file_has_no_window(tmp_path: Path) -> None:
    window = read_routes_window(_write(tmp_path / "e.rou.xml", '<vType id="car"/>'))
    assert window.empty and window.begin_s is None
    assert window.expected_departures(0, 10_000) == 0.0
    assert window.describe() == "no timed departures"


def test_the_ingolstadt_flows_of_the_sumo_wheel() -> None:
    sumo = pytest.importorskip("sumo")
    routes = Path(sumo.__file__).parent / "tools" / "game" / "fkk_in" / "fkk_in.rou.xml"
    if not routes.is_file():
        pytest.skip("the SUMO wheel has no tools/game/fkk_in")
    window = read_routes_window(routes)
    assert (window.begin_s, window.end_s, window.flows) == (0.0, 90000.0, 16)
    assert window.expected_departures(0, 900) > 100


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ('<flow id="f" begin="soon" end="10" period="1"/>', "'begin' is not a time"),
        ('<flow id="f" begin="10" end="5" period="1"/>', "before 'begin'"),
        ('<flow id="f" begin="0" end="5" period="x"/>', "malformed rate"),
        ('<flow id="f" begin="0" end="5" number="-1"/>', "'number' must be >= 0"),
    ],
)
def test_malformed_flows_name_the_file_and_flow(tmp_path: Path, body: str, needle: str) -> None:
    path = _write(tmp_path / "bad.rou.xml", body)
    with pytest.raises(ConfigError, match=needle) as info:
        read_routes_window(path)
    assert str(path) in str(info.value) and "'f'" in str(info.value)


def test_missing_malformed_and_entity_files_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        read_routes_window(tmp_path / "none.rou.xml")
    bad = tmp_path / "bad.rou.xml"
    bad.write_text("<routes><vehicle", encoding="utf-8")
    with pytest.raises(ConfigError, match="not well-formed"):
        read_routes_window(bad)
    bomb = tmp_path / "bomb.rou.xml"
    bomb.write_text(
        '<?xml version="1.0"?>\n<!DOCTYPE r [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;">]>\n'
        '<routes><vehicle id="&b;" depart="0"/></routes>',
        encoding="utf-8",
    )
    with pytest.raises(ConfigError, match="DTD"):
        read_routes_window(bomb)


def test_element_bound(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("simulators.routes.MAX_ELEMENTS", 3)
    path = _write(tmp_path / "big.rou.xml", '<vehicle id="a" depart="0"/>' * 5)
    with pytest.raises(ConfigError, match="more than 3 elements"):
        read_routes_window(path)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("0", 0.0), ("25200.5", 25200.5), ("7:00:00", 25200.0), ("1:00:00:10", 86410.0)],
)
def test_parse_time(text: str, seconds: float) -> None:
    assert parse_time(text) == seconds


@pytest.mark.parametrize("text", ["triggered", "begin", "", "-5", "nan", "1:2", "a:b:c"])
def test_parse_time_rejects_what_is_not_a_time(text: str) -> None:
    assert parse_time(text) is None


@given(st.text(max_size=40))
def test_parse_time_never_raises(text: str) -> None:
    value = parse_time(text)
    assert value is None or value >= 0


def test_clock() -> None:
    assert clock(25200) == "07:00:00" and clock(90061.7) == "25:01:01"
