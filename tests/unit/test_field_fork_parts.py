"""The pure parts of field forks: checkpoints, shadow configuration, true deltas, files."""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest

from configs.errors import ConfigError, SimulationError
from configs.timing import IntersectionTiming
from simulators.field.emulator import _route_files
from simulators.field.fork import (
    IN_FORCE,
    PREVIOUS,
    ShadowResult,
    TrueDelta,
    _check_plans,
    checkpoint_times,
    merge_additional,
    reading_plan,
    shadow_config,
)
from simulators.field.programs import logic_element
from simulators.field.records import FieldCounters
from simulators.field.scenario import FieldConfig
from tests.support.timings import two_stage_base


def test_checkpoints_every_period_then_the_window_end() -> None:
    assert checkpoint_times(4200.0, 300.0, 60.0) == (4260.0, 4320.0, 4380.0, 4440.0, 4500.0)
    assert checkpoint_times(0.0, 150.0, 60.0) == (60.0, 120.0, 150.0)
    assert checkpoint_times(10.0, 30.0, 60.0) == (40.0,)


@pytest.mark.parametrize(
    ("window_s", "checkpoint_s"), [(0, 60), (-5, 60), (300, 0), (math.inf, 60)]
)
def test_checkpoints_refuse_a_bad_window_or_period(window_s: float, checkpoint_s: float) -> None:
    with pytest.raises(ConfigError, match="fork"):
        checkpoint_times(0.0, window_s, checkpoint_s)


def _shadow(config: FieldConfig, fork_s: float = 4500.0) -> FieldConfig:
    return shadow_config(
        config,
        fork_s=fork_s,
        route_files=(Path("w/field-demand-7.rou.xml"),),
        additional_path=Path("w/in_force/field.add.xml"),
        state_path=Path("w/state.xml"),
        work_dir=Path("w/in_force"),
    )


def test_a_shadow_of_a_profile_field_loads_the_expanded_routes_unscaled() -> None:
    field = FieldConfig(
        net_path=Path("n.net.xml"),
        demand_profile_path=Path("d.json"),
        demand_scale=1.3,
        seed=7,
        begin_s=3600,
        backend="traci",
        extra_args=("--lateral-resolution", "0.8"),
    )
    shadow = _shadow(field)
    assert shadow.demand_profile_path is None
    assert shadow.routes_path == (Path("w/field-demand-7.rou.xml"),)
    assert shadow.demand_scale == 1.0  # the scale is in the expanded file already
    assert shadow.begin_s == 4500 and isinstance(shadow.begin_s, int)
    assert shadow.seed == 7 and shadow.backend == "libsumo"
    assert shadow.detectors_path == Path("w/in_force/field.add.xml")
    assert shadow.work_dir == Path("w/in_force")
    assert shadow.extra_args == ("--lateral-resolution", "0.8", "--load-state", "w/state.xml")


def test_a_shadow_of_a_routes_field_keeps_its_scale() -> None:
    field = FieldConfig(net_path=Path("n.net.xml"), routes_path=Path("r.rou.xml"), demand_scale=1.5)
    assert _shadow(field).demand_scale == 1.5


def test_a_shadow_of_an_empty_city_has_no_routes() -> None:
    field = FieldConfig(net_path=Path("n.net.xml"))
    shadow = shadow_config(
        field,
        fork_s=60.0,
        route_files=(),
        additional_path=Path("a.xml"),
        state_path=Path("s.xml"),
        work_dir=Path("w"),
    )
    assert shadow.routes_path is None


def test_a_fork_between_whole_seconds_is_refused() -> None:
    with pytest.raises(ConfigError, match="whole-second"):
        _shadow(FieldConfig(net_path=Path("n.net.xml")), fork_s=4500.5)


def _counters(t: float, wait: dict[str, float], nox: dict[str, float]) -> FieldCounters:
    return FieldCounters(t, wait, nox, {})


def _result(label: str, per_minute: dict[str, float], nox: float) -> ShadowResult:
    """Two checkpoints a minute apart after a fork at t=1000, constant rates per light."""
    readings = tuple(
        _counters(
            1000.0 + 60.0 * k,
            {t: v * k for t, v in per_minute.items()},
            {t: nox * k for t in per_minute},
        )
        for k in range(3)
    )
    return ShadowResult(label, readings[-1].window_since(readings[0]), readings, None)


def test_true_delta_changes_over_the_window_a_horizon_and_some_lights() -> None:
    delta = TrueDelta(
        1000.0,
        1120.0,
        in_force=_result(IN_FORCE, {"a": 90.0, "b": 30.0}, 9.0),
        previous=_result(PREVIOUS, {"a": 100.0, "b": 20.0}, 10.0),
    )
    assert delta.wait_change() == pytest.approx(120 / 120 - 1)
    assert delta.wait_change(only=frozenset({"a"})) == pytest.approx(-0.1)
    assert delta.wait_change(horizon_s=60.0, only=frozenset({"b"})) == pytest.approx(0.5)
    assert delta.nox_change(horizon_s=120.0) == pytest.approx(-0.1)
    with pytest.raises(ConfigError, match="horizons available: 0, 60, 120"):
        delta.wait_change(horizon_s=90.0)


def test_a_horizon_between_checkpoints_comes_from_the_per_second_readings() -> None:
    # a window the next deployment cut to 90 s: no checkpoint there, a reading every second
    seconds = tuple(_counters(1000.0 + k, {"a": 2.0 * k}, {"a": 0.5 * k}) for k in range(121))
    shadow = replace(_result(IN_FORCE, {"a": 120.0}, 30.0), seconds=seconds)
    assert shadow.window(90.0).wait_veh_s() == pytest.approx(180.0)
    assert shadow.window(90.0).total_nox_mg() == pytest.approx(45.0)
    assert shadow.window(60.0).wait_veh_s() == pytest.approx(120.0)  # the checkpoint
    with pytest.raises(ConfigError, match="every whole second up to 120"):
        shadow.window(90.5)


def test_a_shadow_reads_every_whole_second_and_each_checkpoint_once() -> None:
    plan = reading_plan(1000.0, 130.5, 60.0)
    times = [t for t, _, _ in plan]
    assert times == sorted(set(times)) and times[0] == 1001.0 and times[-1] == 1130.5
    assert [t for t, checkpoint, _ in plan if checkpoint] == [1060.0, 1120.0, 1130.5]
    assert [t for t, _, second in plan if second] == [1000.0 + k for k in range(1, 131)]


def test_true_delta_to_dict_is_plain_json_with_totals_per_checkpoint() -> None:
    delta = TrueDelta(
        1000.0,
        1120.0,
        in_force=_result(IN_FORCE, {"a": 5.0}, 1.0),
        previous=_result(PREVIOUS, {"a": 0.0}, 1.0),  # nothing halted: no finite change
    )
    record = json.loads(json.dumps(delta.to_dict(), allow_nan=False))
    assert record["wait_change"] is None
    assert record["nox_change"] == 0.0
    shadow = record["shadows"][IN_FORCE]
    assert shadow["wait_veh_s"] == 10.0 and shadow["halting_veh_s"] == {"a": 10.0}
    assert [c["t_s"] for c in shadow["checkpoints"]] == [1000.0, 1060.0, 1120.0]
    assert [c["wait_veh_s"] for c in shadow["checkpoints"]] == [0.0, 5.0, 10.0]


def test_no_change_when_nothing_halted_under_either_plan() -> None:
    zero = {"a": 0.0}
    delta = TrueDelta(1000.0, 1120.0, _result(IN_FORCE, zero, 0.0), _result(PREVIOUS, zero, 0.0))
    assert delta.wait_change() == 0.0 and delta.nox_change() == 0.0


def test_merge_additional_puts_the_programs_next_to_the_loops(tmp_path: Path) -> None:
    det = tmp_path / "det.add.xml"
    det.write_text(
        '<additional><inductionLoop id="e1" lane="a_0" pos="5" period="60" file="NUL"/>'
        "</additional>",
        encoding="utf-8",
    )
    programs = tmp_path / "programs.add.xml"
    programs.write_text(
        '<additional><tlLogic id="J1" programID="signaltwin-1" type="static" offset="0">'
        '<phase duration="30" state="GGrr"/></tlLogic></additional>',
        encoding="utf-8",
    )
    out = merge_additional(det, programs, tmp_path / "merged.add.xml")
    tags = [e.tag for e in ET.parse(out).getroot()]
    assert tags == ["inductionLoop", "tlLogic"]


def test_merge_additional_names_an_unreadable_file(tmp_path: Path) -> None:
    (tmp_path / "det.add.xml").write_text("<additional>", encoding="utf-8")
    with pytest.raises(SimulationError, match="det.add.xml"):
        merge_additional(tmp_path / "det.add.xml", tmp_path / "p.xml", tmp_path / "out.xml")


def test_route_files_come_from_the_command_line() -> None:
    assert _route_files(["sumo", "-n", "x.net.xml", "-r", "a.rou.xml,b.rou.xml", "-a", "d"]) == (
        Path("a.rou.xml"),
        Path("b.rou.xml"),
    )
    assert _route_files(["sumo", "-n", "x.net.xml"]) == ()


def _phase(duration: float, state: str, lo: float, hi: float, nxt: tuple[int, ...] = ()) -> object:
    return SimpleNamespace(duration=duration, state=state, minDur=lo, maxDur=hi, next=nxt)


def test_a_program_is_written_as_sumo_reads_it() -> None:
    logic = SimpleNamespace(
        programID="signaltwin-3",
        type=3,
        phases=[_phase(30, "GGrr", 5, 50, (0, 1)), _phase(3, "yyrr", 3, 3)],
        subParameter={"linkMaxDur:1": "40"},
    )
    elem = logic_element("J1", logic)
    assert elem.attrib == {
        "id": "J1",
        "programID": "signaltwin-3",
        "type": "actuated",
        "offset": "0",
    }
    first, second = elem.findall("phase")
    assert first.attrib == {
        "duration": "30",
        "state": "GGrr",
        "minDur": "5",
        "maxDur": "50",
        "next": "0 1",
    }
    assert "next" not in second.attrib
    assert elem.find("param").attrib == {"key": "linkMaxDur:1", "value": "40"}  # type: ignore[union-attr]


def test_a_program_of_a_type_a_fork_cannot_write_is_refused() -> None:
    logic = SimpleNamespace(programID="x", type=99, phases=[], subParameter={})
    with pytest.raises(SimulationError, match="type 99"):
        logic_element("J1", logic)


def _fake_field() -> object:
    base = two_stage_base("J1")
    return SimpleNamespace(
        network=SimpleNamespace(
            intersections={"J1": SimpleNamespace(base=base)}, path=Path("demo.net.xml")
        )
    )


def test_fork_plans_must_name_known_lights_fit_them_and_pair_up() -> None:
    field = _fake_field()
    plan = IntersectionTiming.from_base(two_stage_base("J1"))
    _check_plans(field, {"J1": plan}, {"J1": plan})  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"\['J9'\].*demo.net.xml"):
        _check_plans(field, {"J9": plan}, {"J9": plan})  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="same lights"):
        _check_plans(field, {"J1": plan}, {})  # type: ignore[arg-type]
    wide = IntersectionTiming.from_base(two_stage_base("J2")).model_copy(
        update={"phases": tuple(p.model_copy(update={"state": p.state + "r"}) for p in plan.phases)}
    )
    with pytest.raises(ConfigError, match="do not fit its 4 signals"):
        _check_plans(field, {"J1": plan}, {"J1": wide})  # type: ignore[arg-type]
