"""The bureau's journey with its own network (issue 15), without starting SUMO.

``network info`` (summary, --json), ``config check`` and the daemon's wiring with
detectors that do not exist yet, ``simulate``/``evaluate``/``train`` on routes
whose traffic starts at 7:00, the twin request's ``begin_s`` and the worker default.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import types
from pathlib import Path
from typing import Any

import pytest

import configs.settings as settings_module
from configs.errors import ConfigError, SimulationError
from configs.settings import SimulationSettings
from configs.settings_file import check_environment, load_settings
from configs.timing import IntersectionTiming
from controller.cli import run
from simulators.netbuild import district_paths
from simulators.routes import read_routes_window, traffic_start
from simulators.twin import WhatIfRequest
from simulators.twin.run import RunTask, run_plan

DISTRICT_NET = district_paths()["net"]
_SUMO = importlib.util.find_spec("sumo")
SUMO_GAME = Path(_SUMO.origin or "").parent if _SUMO is not None else Path("/nonexistent")


def _am_routes(path: Path, begin_s: int = 25200, end_s: int = 28800, period_s: int = 2) -> Path:
    """A 7:00-8:00 routes file of flows (what a city's peak-hour file looks like)."""
    path.write_text(
        "<routes>\n"
        f'  <flow id="a" from="x" to="y" begin="{begin_s}" end="{end_s}" period="{period_s}"/>\n'
        "</routes>\n",
        encoding="utf-8",
    )
    return path


class _Stop(SimulationError):
    """Raised by the fake engine once it has seen the request."""


class _FakeEngine:
    seen: dict[str, Any] = {}

    def __init__(self, workers: int = 0, **_: Any) -> None:
        _FakeEngine.seen["workers"] = workers

    def __enter__(self) -> _FakeEngine:
        return self

    def __exit__(self, *_: object) -> None:
        return None

    def evaluate(self, request: WhatIfRequest, progress: Any = None) -> Any:
        _FakeEngine.seen["request"] = request
        raise _Stop("stopped before SUMO")


@pytest.fixture
def fake_engine(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    import simulators.twin

    _FakeEngine.seen = {}
    monkeypatch.setattr(simulators.twin, "LibsumoWhatIfEngine", _FakeEngine)
    return _FakeEngine.seen


# ------------------------------------------------------------------ simulate --routes


def test_simulate_starts_the_twin_at_the_routes_first_departure(
    tmp_path: Path, fake_engine: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    routes = _am_routes(tmp_path / "am.rou.xml")
    argv = ["simulate", "--network", str(DISTRICT_NET), "--routes", str(routes), "--seeds", "2"]
    assert run(argv) == 3  # the fake engine stops it
    request = fake_engine["request"]
    assert request.begin_s == 25200
    err = capsys.readouterr().err
    assert "07:00:00-08:00:00" in err and "starts at 07:00:00 (25200 s)" in err


def test_simulate_begin_option_is_used(tmp_path: Path, fake_engine: dict[str, Any]) -> None:
    routes = _am_routes(tmp_path / "am.rou.xml")
    vtypes = tmp_path / "vtypes.add.xml"
    vtypes.write_text('<additional><vType id="veh_car"/></additional>', encoding="utf-8")
    argv = ["simulate", "--network", str(DISTRICT_NET), "--routes", str(routes),
            "--begin", "27000", "--additional", str(vtypes)]  # fmt: skip
    assert run(argv) == 3
    assert fake_engine["request"].begin_s == 27000
    assert fake_engine["request"].additional == (str(vtypes),)


def test_simulate_an_empty_window_is_an_error_naming_both_windows(
    tmp_path: Path, fake_engine: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    routes = _am_routes(tmp_path / "am.rou.xml")
    argv = ["simulate", "--network", str(DISTRICT_NET), "--routes", str(routes),
            "--begin", "0", "--horizon-s", "900", "--warmup-s", "300"]  # fmt: skip
    assert run(argv) == 2
    err = capsys.readouterr().err
    assert "07:00:00-08:00:00 (25200-28800 s)" in err
    assert "00:00:00-00:20:00 (0-1200 s)" in err and "0 vehicles" in err
    assert "--begin 25200" in err
    assert "request" not in fake_engine  # nothing was simulated


def test_simulate_almost_no_traffic_is_an_error(
    tmp_path: Path, fake_engine: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    # 10 vehicles an hour for 47 lights: less than one per light in 20 minutes
    routes = _am_routes(tmp_path / "thin.rou.xml", period_s=360)
    argv = ["simulate", "--network", str(DISTRICT_NET), "--routes", str(routes)]
    assert run(argv) == 2
    err = capsys.readouterr().err
    assert "for 47 traffic lights" in err and "at least one per light" in err


def test_simulate_routes_without_any_departure(
    tmp_path: Path, fake_engine: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    routes = tmp_path / "none.rou.xml"
    routes.write_text('<routes><vType id="car"/></routes>', encoding="utf-8")
    assert run(["simulate", "--network", str(DISTRICT_NET), "--routes", str(routes)]) == 2
    assert "no vehicle, trip, person or flow" in capsys.readouterr().err


def test_simulate_workers_follow_the_cores(
    tmp_path: Path, fake_engine: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(settings_module, "available_cpus", lambda: 2)
    routes = _am_routes(tmp_path / "am.rou.xml")
    assert run(["simulate", "--network", str(DISTRICT_NET), "--routes", str(routes)]) == 3
    assert fake_engine["workers"] == 2
    argv = ["simulate", "--network", str(DISTRICT_NET), "--routes", str(routes), "--workers", "3"]
    assert run(argv) == 3
    assert fake_engine["workers"] == 3


def test_workers_setting_auto(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(settings_module, "available_cpus", lambda: 2)
    assert SimulationSettings(network=Path("n.net.xml")).workers == 2
    assert SimulationSettings(network=Path("n.net.xml"), workers="auto").workers == 2
    assert SimulationSettings(network=Path("n.net.xml"), workers=7).workers == 7
    assert settings_module.auto_workers(1) == 1 and settings_module.auto_workers(16) == 2
    monkeypatch.setattr(settings_module, "available_cpus", lambda: 64)
    assert SimulationSettings(network=Path("n.net.xml")).workers == 4
    with pytest.raises(ValueError, match='"auto"'):
        SimulationSettings(network=Path("n.net.xml"), workers="many")  # type: ignore[arg-type]


def test_the_example_settings_say_auto() -> None:
    example = Path(settings_module.__file__).parent / "production.example.toml"
    assert 'workers = "auto"' in example.read_text(encoding="utf-8")


# ------------------------------------------------------------ the twin's begin_s


def _timing() -> IntersectionTiming:
    return IntersectionTiming.model_validate(
        {"mode": "fixed", "cycle_s": 66, "offset_s": 0, "phases": [
            {"state": "GGrr", "duration_s": 30}, {"state": "yyrr", "duration_s": 3},
            {"state": "rrGG", "duration_s": 30}, {"state": "rryy", "duration_s": 3}]}
    )  # fmt: skip


def _request(tmp_path: Path, **kw: Any) -> WhatIfRequest:
    net, demand = tmp_path / "n.net.xml", tmp_path / "d.rou.xml"
    net.write_text("<net/>"), demand.write_text("<routes/>")
    return WhatIfRequest(
        network=str(net), demand=str(demand), current={"J": _timing()},
        candidates={"c": {"J": _timing()}}, **kw,
    )  # fmt: skip


def test_request_begin_s_round_trips_and_old_records_begin_at_zero(tmp_path: Path) -> None:
    request = _request(tmp_path, begin_s=25200)
    data = request.to_dict()
    assert data["begin_s"] == 25200
    assert WhatIfRequest.from_dict(data) == request
    del data["begin_s"]  # a ledger record from before begin_s
    assert WhatIfRequest.from_dict(data).begin_s == 0
    with pytest.raises(ConfigError, match="begin_s"):
        _request(tmp_path, begin_s=-1).validate()


def test_the_twin_starts_sumo_at_begin_s(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[str]] = []

    def start(cmd: list[str]) -> None:
        seen.append(cmd)
        raise RuntimeError("no SUMO in unit tests")

    monkeypatch.setitem(sys.modules, "libsumo", types.SimpleNamespace(start=start))
    request = _request(tmp_path, begin_s=25200, warmup_s=300, horizon_s=900)
    with pytest.raises(SimulationError, match="could not load"):
        run_plan(RunTask(request=request, plan="current", seed=1, record=False))
    cmd = seen[0]
    assert cmd[cmd.index("--begin") + 1] == "25200.0"
    assert cmd[cmd.index("--end") + 1] == "26400.0"


# ------------------------------------------------------------ evaluate and train


def test_evaluate_routes_start_the_field_at_their_window(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import rl.evaluate

    seen: dict[str, Any] = {}

    def fake(network: Any, routes: Any, kind: str, **kw: Any) -> Any:
        seen.update(kw)
        raise _Stop("stopped before SUMO")

    monkeypatch.setattr(rl.evaluate, "evaluate_controller", fake)
    routes = _am_routes(tmp_path / "am.rou.xml")
    argv = ["evaluate", "--network", str(DISTRICT_NET), "--routes", str(routes),
            "--compare", "fixed", "--seeds", "1", "--hours", "0.5"]  # fmt: skip
    assert run(argv) == 3
    assert seen["begin_s"] == 25200.0
    argv[-1:] = ["0.5", "--begin-s", "0"]
    assert run(argv) == 2  # nothing departs 0:00-0:30


def test_train_episodes_begin_within_the_routes_window(tmp_path: Path) -> None:
    from controller.commands.train import episode_begins
    from rl.env import EnvConfig

    routes = _am_routes(tmp_path / "am.rou.xml")
    config = EnvConfig(
        net_file=DISTRICT_NET, detectors_file=DISTRICT_NET, route_files=(routes,),
        episode_steps=5, interval_s=240.0, warmup_s=240.0,
    )  # fmt: skip
    assert episode_begins(config) == (25200.0, 28800.0 - 1440.0)
    empty = tmp_path / "empty.rou.xml"
    empty.write_text("<routes/>", encoding="utf-8")
    with pytest.raises(ConfigError, match="no vehicle"):
        episode_begins(EnvConfig(net_file=DISTRICT_NET, detectors_file=DISTRICT_NET,
                                 route_files=(empty,)))  # fmt: skip


def test_train_writes_the_detectors_of_a_gzipped_net_as_plain_xml(tmp_path: Path) -> None:
    from controller.commands.train import _sibling

    net = tmp_path / "fokr_bs.net.xml.gz"
    assert _sibling(net, ".det.add.xml") == tmp_path / "fokr_bs.det.add.xml"
    assert _sibling(tmp_path / "city.net.xml", ".rou.xml") == tmp_path / "city.rou.xml"


def test_traffic_start_with_a_begin_inside_the_window(tmp_path: Path) -> None:
    window = read_routes_window(_am_routes(tmp_path / "am.rou.xml"))
    assert traffic_start(window, 27000.7, 600, 10, "--routes") == 27000
    with pytest.raises(ConfigError, match="give --begin-s 25200"):
        traffic_start(window, 30000, 600, 10, "--routes", "--begin-s")


# -------------------------------------------------------------------- network info


def test_network_info_prints_a_summary_and_json_on_request(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(["network", "info", str(DISTRICT_NET)]) == 0
    out = capsys.readouterr().out
    assert out.lstrip()[0] != "{"
    assert "47 traffic lights (47 fixed)" in out and "352 lanes" in out and "224 edges" in out
    assert f"network   {DISTRICT_NET}" in out and "extent" in out
    assert "n01" in out and "greens" in out
    det = tmp_path / "district.det.xml"
    assert run(["network", "info", str(DISTRICT_NET), "--detectors", str(det), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["id"] == "district" and len(data["intersections"]) == 47
    assert data["detectors"] > 0 and det.is_file()
    assert run(["network", "info", str(tmp_path / "missing.net.xml")]) == 2


def test_network_info_warns_about_a_light_no_plan_fits(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    net = SUMO_GAME / "tools" / "game" / "fkk_in" / "ingolstadt.net.xml.gz"
    if not net.is_file():
        pytest.skip("the SUMO wheel has no tools/game/fkk_in")
    assert run(["network", "info", str(net)]) == 0
    out = capsys.readouterr().out
    assert "2 traffic lights" in out and "warnings (2)" in out
    assert "gneJ21: 10 greens in one program (more than 8)" in out
    assert "gneJ21: no plan fits the safety limits" in out
    config = tmp_path / "ingolstadt.toml"
    config.write_text(
        f'[simulation]\nnetwork = "{net}"\n[safety.intersections."gneJ21"]\nmax_cycle_s = 240\n',
        encoding="utf-8",
    )
    assert run(["network", "info", str(net), "--config", str(config)]) == 0
    assert "no plan fits" not in capsys.readouterr().out


# ---------------------------------------------------------- detectors, generated


def _settings_file(tmp_path: Path, detectors: str) -> Path:
    path = tmp_path / "city.toml"
    path.write_text(
        f'state_dir = "state"\n[simulation]\nnetwork = "{DISTRICT_NET}"\n'
        f'detectors = "{detectors}"\n',
        encoding="utf-8",
    )
    return path


def test_config_check_says_missing_detectors_will_be_generated(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = load_settings(_settings_file(tmp_path, "net/city.det.xml"))
    assert not any("detectors" in p for p in check_environment(settings))
    run(["config", "check", str(_settings_file(tmp_path, "net/city.det.xml"))])
    captured = capsys.readouterr()
    assert "detectors" not in captured.err
    assert f"{tmp_path / 'net' / 'city.det.xml'} will be generated" in captured.out


def test_config_check_flags_detectors_it_could_not_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import configs.settings_file

    monkeypatch.setattr(configs.settings_file.os, "access", lambda *_: False)  # type: ignore[attr-defined]
    settings = load_settings(_settings_file(tmp_path, "ro/city.det.xml"))
    problems = [p for p in check_environment(settings) if "detectors" in p]
    assert len(problems) == 1
    assert f"{tmp_path} is not writable" in problems[0] and "network info" in problems[0]


def test_the_daemon_writes_missing_detectors_where_the_settings_say(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import hsm
    from controller.wiring import build_runner

    class _NoHsm(SimulationError):
        pass

    def refuse(*_: Any, **__: Any) -> Any:
        raise _NoHsm("stop after the network")

    monkeypatch.setattr(hsm, "HsmSigner", refuse)
    settings = load_settings(_settings_file(tmp_path, "net/city.det.xml"))
    assert settings.simulation.detectors is not None
    with pytest.raises(_NoHsm):
        build_runner(settings)
    assert settings.simulation.detectors.is_file()
    assert "inductionLoop" in settings.simulation.detectors.read_text(encoding="utf-8")


def test_unfit_lights_from_the_base_program_honour_the_change_limits() -> None:
    from configs.timing import SafetyLimits
    from controller.commands.simulate import unfit_lights
    from simulators.network import load_network

    bases = load_network(DISTRICT_NET).base_programs()
    # greens of >= 40 s: a longer cycle than the base's 90 s, but within 150 s
    limits = SafetyLimits(min_green_s=40, max_cycle_s=150, max_cycle_change_s=0)
    assert unfit_lights({"n02": bases["n02"]}, limits) == {}
    unfit = unfit_lights({"n02": bases["n02"]}, limits, from_base=True)
    assert list(unfit) == ["n02"] and "no safe cycle" in unfit["n02"]
